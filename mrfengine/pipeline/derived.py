"""Writing a pipeline's maps into ``subjects/<sub>/derived/<pipeline>/`` so a crash never looks finished.

Order of a write (``docs/cohort-format.md``, section *Derived maps*):

1. an existing ``derived/<pipeline>/`` (incomplete, or complete and
   ``force``d) is first removed from the subject's ``arrays`` attribute, then
   deleted;
2. the group is created with ``attributes["mrfengine_derived"]["complete"]``
   false, and every array is written (float32, one chunk per slice, Blosc-zstd
   like the rest of the store);
3. the group's attributes are rewritten with timings, provenance, the array
   list and ``complete: true``;
4. **last**, the subject's ``arrays`` attribute is rewritten to list
   ``derived/<pipeline>/<array>``, which is what readers
   (:class:`mrfengine.io.Subject`, ``evaluate --pred derived:<pipeline>``) go by.

:func:`derived_complete` requires both records (3 and 4), so an interruption
anywhere leaves an output that readers ignore and the next run replaces.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._validate import check_name
from ..errors import StoreError, ValidationError
from ..io.cohort import (
    CHUNKS_KEY,
    DERIVED_KEY,
    REVISION_KEY,
    SUBJECT_KEY,
    array_layout,
    array_write_config,
    default_compressor,
    delete_node,
    derived_attrs,
    derived_complete,
    normalize_subject_id,
    open_cohort_for_writing,
)
from ..io.cohort.schema import DERIVED, SUBJECTS
from ..io.cohort.store import has_keys, join, stored_chunk_count
from ..io.cohort.write import new_revision
from ..maps import MATCH_MAPS, derived_spec
from ..masking import NOT_ESTIMATED_VALUE

__all__ = ["DERIVED_KEY", "DERIVED_ARRAYS", "derived_complete", "derived_attrs", "remove_derived", "write_derived"]

log = logging.getLogger(__name__)

#: array name -> (units, description) of dictionary matching's maps as the
#: ``write`` stage stores them, from the one map registry (:data:`mrfengine.maps.MATCH_MAPS`),
#: each saying the one rule for voxels without an estimate (0, as outside the brain:
#: :data:`mrfengine.masking.NOT_ESTIMATED_VALUE`);
#: other arrays (the network's maps, their uncertainty, the physics consistency)
#: take theirs from :func:`mrfengine.maps.derived_spec`.
DERIVED_ARRAYS: dict[str, tuple[str, str]] = {
    name: (spec.unit, f"{spec.description} ({NOT_ESTIMATED_VALUE:g} where not matched)")
    for name, spec in MATCH_MAPS.items()
}


def _array_attributes(name: str) -> dict[str, str]:
    """``units`` and ``description`` of a derived array (empty for a name the registry lacks)."""
    if name in DERIVED_ARRAYS:
        units, description = DERIVED_ARRAYS[name]
        return {"units": units, "description": description}
    spec = derived_spec(name)
    return {"units": spec.unit, "description": spec.description} if spec else {"units": "", "description": ""}


def _open_subject(cohort_path: str | os.PathLike, sid: str):
    root, _ = open_cohort_for_writing(cohort_path)  # StoreError: not a cohort / wrong schema / not writable
    try:
        group = root[join(SUBJECTS, sid)]
    except KeyError:
        raise StoreError(f"{cohort_path}: no subject group {sid!r}") from None
    attrs = dict(group.attrs.get(SUBJECT_KEY) or {})
    if attrs.get("complete") is not True:
        raise StoreError(f"{sid} is incomplete in {cohort_path}; derived maps need a complete subject")
    return group, attrs


def _set_listed(group: Any, attrs: dict[str, Any], pipeline: str, names: list[str],
                chunks: Mapping[str, int] | None = None) -> None:
    """Rewrite the subject's ``arrays``: drop ``derived/<pipeline>/*`` and list ``names`` there,
    with their stored chunk counts (``chunks``) in the subject's ``stored_chunks``."""
    prefix = f"derived/{pipeline}/"
    kept = [p for p in attrs.get("arrays", []) if not p.startswith(prefix)]
    attrs["arrays"] = sorted(kept + [prefix + n for n in names])
    record = attrs.get(CHUNKS_KEY)
    record = {k: v for k, v in record.items() if not k.startswith(prefix)} if isinstance(record, dict) else {}
    record.update({prefix + n: int(c) for n, c in (chunks or {}).items()})
    if record or CHUNKS_KEY in attrs:
        attrs[CHUNKS_KEY] = dict(sorted(record.items()))
    attrs[REVISION_KEY] = new_revision()  # the subject's arrays changed: no consolidated copy of it is current
    group.attrs.update({SUBJECT_KEY: attrs})


def remove_derived(cohort_path: str | os.PathLike, subject: str, pipeline: str) -> bool:
    """Delete ``derived/<pipeline>/`` of a subject: de-list its arrays first, then
    delete the group.  Returns whether anything was there."""
    sid = normalize_subject_id(subject)
    check_name(pipeline, "pipeline name")
    group, attrs = _open_subject(cohort_path, sid)
    prefix = f"derived/{pipeline}/"
    listed = any(p.startswith(prefix) for p in attrs.get("arrays", []))
    if listed:
        _set_listed(group, attrs, pipeline, [])
    where = join(DERIVED, pipeline)
    present = has_keys(group.store_path, where)
    if present:
        left = delete_node(group.store_path, where)
        if left:
            log.warning("%s: derived/%s/ of %s held %d file(s) mrfengine did not write; they are kept (%s)",
                        cohort_path, pipeline, sid, len(left), ", ".join(left[:3]))
    return listed or present


def _write_array(group: Any, name: str, data: np.ndarray) -> int:
    """Write one map whole (one writer per shard), every chunk (empty ones too); returns the
    chunks stored, checked."""
    arr = group.create_array(name, shape=data.shape, dtype="float32", compressors=default_compressor(),
                             fill_value=0.0, attributes=_array_attributes(name), config=array_write_config(),
                             **array_layout(data.shape, "float32"))
    arr[...] = data
    n = stored_chunk_count(arr)
    if n != arr.nchunks:
        raise StoreError(f"derived array {name!r}: {n} of its {arr.nchunks} chunks were stored")
    return n


def write_derived(
    cohort_path: str | os.PathLike,
    subject: str,
    pipeline: str,
    arrays: Mapping[str, np.ndarray],
    *,
    attrs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write a pipeline's maps into ``subjects/<subject>/derived/<pipeline>/``, atomically
    in the sense of the module docstring (completion recorded last).

    Whatever was there before is replaced (callers decide whether to skip a
    complete group, see :func:`derived_complete`).

    Parameters
    ----------
    cohort_path : path
    subject : str
        ``sub-XX`` (or ``XX``); must be complete.
    pipeline : str
        Name of the derived group.
    arrays : mapping of str to ndarray
        Name -> (Z, Y, X) map on the subject's grid; stored as float32.
    attrs : mapping, optional
        JSON-compatible facts for the group's attributes (timings, provenance).

    Returns
    -------
    list of str
        The array paths now listed in the subject, ``derived/<pipeline>/<name>``.

    Raises
    ------
    StoreError
        Not a cohort, no such or an incomplete subject.
    ValidationError
        A bad pipeline or array name, a map not of shape (Z, Y, X).
    """
    sid = normalize_subject_id(subject)
    check_name(pipeline, "pipeline name")
    if not arrays:
        raise ValidationError(f"{sid}: nothing to write into derived/{pipeline}/")
    group, sub_attrs = _open_subject(cohort_path, sid)
    shape = tuple(int(v) for v in sub_attrs["shape_zyx"])
    data = {}
    for name, value in arrays.items():
        check_name(name, "derived array name")
        value = np.asarray(value, dtype=np.float32)
        if value.shape != shape:
            raise ValidationError(f"{sid}: derived/{pipeline}/{name} must have the subject's shape {shape} "
                                  f"(Z, Y, X); got {value.shape}")
        data[name] = value
    extra = dict(attrs or {})
    json.dumps(extra)  # fail before touching the store if the attributes are not JSON

    if remove_derived(cohort_path, sid, pipeline):
        log.info("%s: removed the previous derived/%s/", sid, pipeline)
        group, sub_attrs = _open_subject(cohort_path, sid)
    out = group.require_group(DERIVED).create_group(pipeline)
    record = {"pipeline": pipeline, **extra, "complete": False}
    out.attrs.update({DERIVED_KEY: record})
    chunks = {name: _write_array(out, name, data[name]) for name in sorted(data)}
    record.update({"arrays": sorted(data), CHUNKS_KEY: chunks, "complete": True})
    out.attrs.update({DERIVED_KEY: record})
    _set_listed(group, sub_attrs, pipeline, sorted(data), chunks)  # last: readers go by this list
    return [f"derived/{pipeline}/{n}" for n in sorted(data)]
