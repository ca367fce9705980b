"""What a cohort store holds: keys, attribute names, the schema version, the layout and
the rules every node must meet (specified in ``docs/cohort-format.md``).

Nothing here touches a store; :mod:`.store` opens one, :mod:`.read`, :mod:`.write` and
:mod:`.validate` use these definitions.  The layout, in short::

    COHORT.zarr/                      group; attrs["mrfengine_cohort"]: schema version,
                                      sites (serialised sequences), subjects (site, split, group)
      subjects/<sub-ID>/              group; attrs["mrfengine_subject"]: affine, voxel size, ...,
                                      and ``complete``, written last
        mrf                           (n_frames, Z, Y, X) float32, one chunk per slice
        brain_mask                    (Z, Y, X) uint8                      [optional]
        reference/<name>              (Z, Y, X) float32, e.g. T2w           [optional]
        truth/<name>                  (Z, Y, X) T1, T2star (ms), B1, PD, GM, WM, CSF, lesion, ...
        annotations/<name>            (Z, Y, X) uint8, e.g. lesion, lesion_repeat
        derived/<pipeline>/<name>     (Z, Y, X) float32; attrs["mrfengine_derived"]

Array index ``[..., z, y, x]`` maps to world millimetres through the subject's
NIfTI-style ``affine`` applied to ``(x, y, z, 1)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..._validate import NAME_RE, check_name
from ...errors import StoreError, ValidationError
from ...maps import TRUTH_MAPS
from ...sequence import Sequence

__all__ = [
    "SCHEMA_VERSION",
    "ROOT_KEY",
    "SUBJECT_KEY",
    "DERIVED_KEY",
    "CHUNKS_KEY",
    "SUBJECTS",
    "DERIVED",
    "SPLITS",
    "GROUPS",
    "TRUTH_SPECS",
    "REQUIRED_TRUTH",
    "SiteEntry",
    "SubjectEntry",
    "array_write_config",
    "array_layout",
    "dimension_names",
    "DIMENSION_NAMES",
    "SHARD_BYTES",
    "REVISION_KEY",
    "default_compressor",
    "expected_dtype",
    "normalize_subject_id",
    "check_name",
    "json_equal",
]

#: Version of the layout and attributes described in ``docs/cohort-format.md``.
#: Readers refuse any other version.
SCHEMA_VERSION = 1
#: Attribute of the root group (the cohort), of a subject group and of a derived group.
ROOT_KEY = "mrfengine_cohort"
SUBJECT_KEY = "mrfengine_subject"
DERIVED_KEY = "mrfengine_derived"
#: Subject attribute (and derived-group attribute) written with the completion record:
#: array path -> number of chunks the writer stored.  Writers store every chunk, empty
#: ones included (:func:`array_write_config`), so a reader of a recorded array treats an
#: absent chunk as damage (``StoreError``), never as zeros.  Arrays without a record
#: (stores written before it existed, where all-zero chunks are legitimately absent) are
#: read as before, with a warning once per store.
CHUNKS_KEY = "stored_chunks"
#: Subject attribute rewritten, with a new random token, whenever the subject's arrays
#: change (its completion record, a derived group listed or de-listed): a reader compares
#: the subject's attributes in the consolidated metadata with the subject's own, so a
#: consolidated copy older than the subject's last write is never used.
REVISION_KEY = "revision"
#: Axis names of every array (zarr v3 ``dimension_names``): the MRF series is
#: (frame, z, y, x), every map (z, y, x); index ``[..., z, y, x]`` maps to world
#: millimetres through the subject's affine applied to ``(x, y, z, 1)``.
DIMENSION_NAMES = {4: ("frame", "z", "y", "x"), 3: ("z", "y", "x")}
#: Most uncompressed bytes one shard holds: an array up to this size is one shard (one
#: file), a larger one (a paper subject's MRF series: 35 x 60 x 240 x 240 float32,
#: 484 MB) is cut into the fewest slabs of whole slices under it, so a writer that
#: produces the series slice by slice buffers one shard, not the whole series.
SHARD_BYTES = 128 * 2**20
#: The group of the subjects under the root, and of a subject's derived maps.
SUBJECTS = "subjects"
DERIVED = "derived"
#: Hidden names under ``subjects/`` (a name starting with ``.`` is never a subject):
#: a replacement being written, and a replaced subject being deleted.
STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"

SPLITS = ("train", "validation", "test", "none")
GROUPS = ("patient", "healthy", "unknown")

#: truth array name -> (unit, description), from the one map registry
#: (:data:`mrfengine.maps.TRUTH_MAPS`).
TRUTH_SPECS: dict[str, tuple[str, str]] = {name: (spec.unit, spec.description) for name, spec in TRUTH_MAPS.items()}
REQUIRED_TRUTH = ("T1", "T2star", "B1", "PD", "GM", "WM", "CSF", "lesion")

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("sub-01\n").
_SUBJECT_RE = re.compile(r"sub-[A-Za-z0-9]+\Z")
_GROUPS_OF_SUBJECT = ("reference", "truth", "annotations")


def array_write_config() -> dict[str, Any]:
    """zarr's per-array configuration of every array mrfengine writes: every chunk is
    stored, even one equal to the fill value, so an absent chunk always means damage."""
    return {"write_empty_chunks": True}


def dimension_names(ndim: int) -> tuple[str, ...]:
    """The ``dimension_names`` of a subject's array of ``ndim`` axes (:data:`DIMENSION_NAMES`)."""
    try:
        return DIMENSION_NAMES[ndim]
    except KeyError:
        raise ValidationError(f"cohort arrays have 3 (z, y, x) or 4 (frame, z, y, x) axes; got {ndim}") from None


def array_layout(shape: tuple[int, ...], dtype: Any, *, shard_bytes: int = SHARD_BYTES) -> dict[str, Any]:
    """How mrfengine lays out an array of a subject: the keywords of
    :meth:`zarr.Group.create_array` ``chunks``, ``shards`` and ``dimension_names``.

    Chunks (the unit of compression and of reading) are one slice each: ``(n_frames, 1, Y, X)``
    or ``(1, Y, X)``.  Shards (the unit of storage: one file or object each) hold whole
    slices, ``planes`` of them: all of them when the array is at most ``shard_bytes``, else
    the fewest equal slabs under it (:data:`SHARD_BYTES`).  An array of one slice per shard
    is stored unsharded (a shard would only add its index).

    A shard is written read-modify-write as a whole: two writers of different slices of
    one shard lose each other's data.  So a shard has one writer: mrfengine writes every
    array whole once, or shard by shard (:func:`mrfengine.io.cohort.write.write_planes`).
    """
    shape = tuple(int(v) for v in shape)
    names = dimension_names(len(shape))
    axis = len(shape) - 3
    chunks = tuple(1 if i == axis else n for i, n in enumerate(shape))
    plane_bytes = int(np.prod(chunks)) * np.dtype(dtype).itemsize
    n_planes = shape[axis]
    n_shards = max(1, -(-plane_bytes * n_planes // max(1, int(shard_bytes))))
    planes = -(-n_planes // n_shards)
    shards = None if planes <= 1 else tuple(planes if i == axis else n for i, n in enumerate(shape))
    return {"chunks": chunks, "shards": shards, "dimension_names": names}


def default_compressor():
    """Blosc-zstd (level 1) with bit shuffling: the codec of every array in the store."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def expected_dtype(path: str) -> str | None:
    """The dtype the schema gives the array at ``path`` of a subject (None: not fixed)."""
    if path == "mrf":
        return "float32"
    if path == "brain_mask" or path.startswith("annotations/"):
        return "uint8"
    if path == "truth/lesion_id":
        return "uint16"
    if path.startswith(("truth/", "reference/", "derived/")):
        return "float32"
    return None


def normalize_subject_id(subject_id: str) -> str:
    """``sub-01`` from ``sub-01`` or ``01``; raises ValidationError for anything else.

    Subject ids follow BIDS: ``sub-`` and letters or digits only.
    """
    if not isinstance(subject_id, str):
        raise ValidationError(f"subject id must be a string; got {subject_id!r}")
    sid = subject_id if subject_id.startswith("sub-") else f"sub-{subject_id}"
    if not _SUBJECT_RE.fullmatch(sid):
        raise ValidationError(f"subject id must be 'sub-' followed by letters or digits (BIDS); got {subject_id!r}")
    return sid


def json_equal(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples and lists alike, floats exact)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class SiteEntry:
    """What the cohort records about one acquisition site.

    Attributes
    ----------
    sequence : Sequence
        The site's acquisition; its ``n_slices`` equals Z of the site's subjects.
    snr : float or None
        Simulated SNR relative to the white-matter signal (None: real data or
        noise-free).
    extra : dict
        Further JSON-compatible site facts (e.g. the simulated B1 field).
    """

    sequence: Sequence
    snr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence.to_dict(), "snr": self.snr, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteEntry:
        data = dict(data)
        seq = Sequence.from_dict(data.pop("sequence"))
        snr = data.pop("snr", None)
        return cls(seq, None if snr is None else float(snr), data)


@dataclass(frozen=True)
class SubjectEntry:
    """A subject as listed in the cohort's root attributes."""

    site: str
    split: str = "none"
    group: str = "unknown"

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not NAME_RE.match(self.site):
            raise ValidationError(f"site must be a short name such as '1'; got {self.site!r}")
        if self.split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {self.split!r}")
        if self.group not in GROUPS:
            raise ValidationError(f"group must be one of {GROUPS}; got {self.group!r}")

    def to_dict(self) -> dict[str, str]:
        return {"site": self.site, "split": self.split, "group": self.group}


def parse_sites(where: Any, attrs: Mapping[str, Any]) -> dict[str, SiteEntry]:
    """The sites of a cohort's root attributes; StoreError naming ``where`` for a bad one."""
    sites = {}
    for name, entry in dict(attrs.get("sites", {})).items():
        try:
            sites[name] = SiteEntry.from_dict(entry)
        except (ValidationError, KeyError, TypeError) as exc:
            raise StoreError(f"{where}: site {name!r} has no valid sequence: {exc}") from exc
    return sites


def parse_subjects_lenient(where: Any, attrs: Mapping[str, Any]) -> tuple[dict[str, SubjectEntry], dict[str, str]]:
    """The well-formed subject entries, and why each other one is malformed (one bad
    subject must not make the whole cohort unreadable)."""
    subjects = attrs.get("subjects", {})
    if not isinstance(subjects, dict):
        raise StoreError(f"{where}: the root attribute 'subjects' is not an object; the store is damaged")
    out, bad = {}, {}
    for sid, entry in subjects.items():
        try:
            if not isinstance(entry, dict):
                raise TypeError("not an object")
            out[sid] = SubjectEntry(**entry)
        except (ValidationError, TypeError) as exc:
            bad[sid] = f"subject {sid!r} has a malformed entry in the root attributes {entry!r}: {exc}"
    return out, bad


# --------------------------------------------------------------------------- node rules
def attrs_problem(attrs: Mapping[str, Any], name: str | None) -> str | None:
    """What makes a subject's attributes unusable (types of the keys readers need), or None."""
    for key in ("id", "shape_zyx", "affine", "voxel_size_mm", "arrays"):
        if key not in attrs:
            return f"attribute {key!r} is missing"
    if not isinstance(attrs["id"], str) or (name is not None and attrs["id"] != name):
        return f"attribute id is {attrs['id']!r}, not the group name {name!r}"
    shape = attrs["shape_zyx"]
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        return f"attribute shape_zyx must be three positive integers; got {shape!r}"
    try:
        aff = np.asarray(attrs["affine"], dtype=np.float64)
        vox = np.asarray(attrs["voxel_size_mm"], dtype=np.float64)
    except (TypeError, ValueError):
        return "attributes affine / voxel_size_mm are not numbers"
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        return f"attribute affine is not a finite invertible 4x4 matrix: {attrs['affine']!r}"
    if vox.shape != (3,) or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        return f"attribute voxel_size_mm must be three positive numbers; got {attrs['voxel_size_mm']!r}"
    arrays = attrs["arrays"]
    if not isinstance(arrays, list) or not all(isinstance(p, str) for p in arrays):
        return f"attribute arrays must be a list of array paths; got {arrays!r}"
    record = attrs.get(CHUNKS_KEY)
    if record is not None and not (isinstance(record, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in record.values())):
        return f"attribute {CHUNKS_KEY} must map array paths to chunk counts; got {record!r}"
    return None


def array_problem(path: str, array: Any, shape_zyx: tuple[int, ...], n_frames: int | None) -> str | None:
    """What is wrong with an array's metadata against the schema (dtype, shape), or None."""
    import zarr

    if not isinstance(array, zarr.Array):
        return f"{path!r} is not an array"
    want = expected_dtype(path)
    if want is not None and str(array.dtype) != want:
        return f"array {path!r} has dtype {array.dtype}; the schema says {want}"
    if path == "mrf":
        expect = ((n_frames,) if n_frames is not None else tuple(array.shape[:1])) + tuple(shape_zyx)
        if len(array.shape) != 4 or tuple(array.shape) != expect:
            return f"array 'mrf' has shape {tuple(array.shape)}; expected {expect} (frames, Z, Y, X)"
    elif tuple(array.shape) != tuple(shape_zyx):
        return f"array {path!r} has shape {tuple(array.shape)}; expected {tuple(shape_zyx)} (Z, Y, X)"
    return None


def is_complete(attrs: Mapping[str, Any] | None) -> bool:
    """Whether a subject's (or derived group's) attributes carry the completion marker."""
    return bool(attrs) and attrs.get("complete") is True
