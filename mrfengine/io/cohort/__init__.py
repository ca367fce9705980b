"""The cohort store: a zarr v3 hierarchy holding the MRF series, reference
images, ground truth, annotations and derived maps of many subjects.

The layout, attributes and rules are specified in ``docs/cohort-format.md``;
this package is their one implementation, by concept:

* :mod:`.schema` -- keys, attribute names, the schema version, the layout, the
  rules a node must meet (no store access);
* :mod:`.store` -- where a cohort lives: a folder, a ``.zip``, an fsspec URL or
  any zarr store object, reached only through zarr's API; the root opened and
  checked; whether a store can be written (asked, never probed by writing);
* :mod:`.read` -- :class:`Cohort` (``Cohort.open(path_or_store)``),
  :class:`Subject`, derived groups (:func:`derived_attrs`, :func:`derived_complete`);
* :mod:`.write` -- :func:`create_cohort`, :func:`open_cohort_for_writing`,
  :func:`register_subjects`, :class:`SubjectWriter` and its crash-safe completion,
  slices stored shard by shard (:class:`PlaneWriter`, :func:`write_planes`), the
  consolidated metadata (:func:`consolidate`, :func:`drop_consolidated`);
* :mod:`.validate` -- which subjects are complete and why the others are not,
  checked array reads (:class:`StoreArray`), :func:`validate_cohort`.

A subject counts only once its ``complete`` attribute is true; that attribute
is written after every array, so an interrupted writer leaves a subject that
readers treat as absent and writers rewrite.
"""

from .read import Cohort, Subject, derived_attrs, derived_complete, read_cohort_attrs, subject_complete
from .schema import (_GROUPS_OF_SUBJECT, _SUBJECT_RE, CHUNKS_KEY, DERIVED_KEY, DIMENSION_NAMES, GROUPS, REQUIRED_TRUTH,
                     REVISION_KEY, ROOT_KEY, SCHEMA_VERSION, SHARD_BYTES, SPLITS, SUBJECT_KEY, TRUTH_SPECS, SiteEntry,
                     SubjectEntry, array_layout, array_write_config, check_name, default_compressor, dimension_names,
                     expected_dtype, json_equal, normalize_subject_id)
from .store import open_store, require_writable, stored_chunk_count, stored_chunk_keys
from .validate import StoreArray, ValidationReport, validate_cohort
from .write import (PlaneWriter, SubjectWriter, consolidate, create_cohort, delete_node, drop_consolidated,
                    open_cohort_for_writing, register_subjects, write_planes)

__all__ = [
    # the schema
    "SCHEMA_VERSION", "ROOT_KEY", "SUBJECT_KEY", "DERIVED_KEY", "CHUNKS_KEY", "SPLITS", "GROUPS", "TRUTH_SPECS",
    "REQUIRED_TRUTH", "SiteEntry", "SubjectEntry", "normalize_subject_id", "check_name", "default_compressor",
    "expected_dtype", "array_write_config", "json_equal", "REVISION_KEY", "DIMENSION_NAMES", "SHARD_BYTES",
    "array_layout", "dimension_names",
    # the store
    "open_store", "require_writable", "stored_chunk_keys", "stored_chunk_count",
    # reading
    "Cohort", "Subject", "read_cohort_attrs", "subject_complete", "derived_attrs", "derived_complete",
    # writing
    "SubjectWriter", "create_cohort", "open_cohort_for_writing", "register_subjects", "delete_node",
    "PlaneWriter", "write_planes", "consolidate", "drop_consolidated",
    # checking
    "validate_cohort", "ValidationReport", "StoreArray",
]

# Private names other modules of mrfengine import (the importer's name check).
_ = (_GROUPS_OF_SUBJECT, _SUBJECT_RE)
