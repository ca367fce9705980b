"""The cohort store: a zarr v3 hierarchy holding the MRF series, reference
images, ground truth and annotations of many subjects.

The layout, attributes and rules are specified in ``docs/cohort-format.md``;
this module is its one implementation.  In short::

    COHORT.zarr/                      group; attrs["mrfengine_cohort"]: schema version,
                                      sites (serialised sequences), subjects (site, split, group)
      subjects/<sub-ID>/              group; attrs["mrfengine_subject"]: affine, voxel size, ...,
                                      and ``complete``, written last
        mrf                           (n_frames, Z, Y, X) float32, one chunk per slice
        brain_mask                    (Z, Y, X) uint8                      [optional]
        reference/<name>              (Z, Y, X) float32, e.g. T2w           [optional]
        truth/<name>                  (Z, Y, X) T1, T2star (ms), B1, PD, GM, WM, CSF, lesion, ...
        annotations/<name>            (Z, Y, X) uint8, e.g. lesion, lesion_repeat

Array index ``[..., z, y, x]`` maps to world millimetres through the
subject's NIfTI-style ``affine`` applied to ``(x, y, z, 1)``.

A subject counts only once its ``complete`` attribute is true; that attribute
is written after every array, so an interrupted writer leaves a subject that
readers treat as absent and writers rewrite.

Reading: :class:`Cohort` (``Cohort.open(path)``) and :class:`Subject`.
Writing: :func:`create_cohort`, :func:`open_cohort_for_writing`,
:class:`SubjectWriter`.  Checking: :func:`validate_cohort`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, ValidationError
from ..maps import TRUTH_MAPS
from ..sequence import Sequence

__all__ = [
    "SCHEMA_VERSION",
    "ROOT_KEY",
    "SUBJECT_KEY",
    "SPLITS",
    "GROUPS",
    "TRUTH_SPECS",
    "REQUIRED_TRUTH",
    "SiteEntry",
    "SubjectEntry",
    "Cohort",
    "Subject",
    "SubjectWriter",
    "create_cohort",
    "open_cohort_for_writing",
    "register_subjects",
    "validate_cohort",
    "normalize_subject_id",
    "default_compressor",
    "read_cohort_attrs",
    "subject_complete",
    "json_equal",
    "ValidationReport",
    "CHUNKS_KEY",
    "StoreArray",
    "expected_dtype",
    "stored_chunk_keys",
    "array_write_config",
]

log = logging.getLogger(__name__)

#: Version of the layout and attributes described in ``docs/cohort-format.md``.
#: Readers refuse any other version.
SCHEMA_VERSION = 1
ROOT_KEY = "mrfengine_cohort"
SUBJECT_KEY = "mrfengine_subject"
SPLITS = ("train", "validation", "test", "none")
GROUPS = ("patient", "healthy", "unknown")

#: truth array name -> (unit, description), from the one map registry
#: (:data:`mrfengine.maps.TRUTH_MAPS`).
TRUTH_SPECS: dict[str, tuple[str, str]] = {name: (spec.unit, spec.description) for name, spec in TRUTH_MAPS.items()}
REQUIRED_TRUTH = ("T1", "T2star", "B1", "PD", "GM", "WM", "CSF", "lesion")

# ``\Z``, not ``$``: ``$`` also matches before a trailing newline ("sub-01\n").
_SUBJECT_RE = re.compile(r"sub-[A-Za-z0-9]+\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_GROUPS_OF_SUBJECT = ("reference", "truth", "annotations")

#: Subject attribute (and derived-group attribute) written with the completion record:
#: array path -> number of chunks the writer stored.  Writers store every chunk, empty
#: ones included (:func:`array_write_config`), so a reader of a recorded array treats an
#: absent chunk as damage (``StoreError``), never as zeros.  Arrays without a record
#: (stores written before it existed, where all-zero chunks are legitimately absent) are
#: read as before, with a warning once per store.
CHUNKS_KEY = "stored_chunks"

_legacy_warned: set[str] = set()
_NO_FOLDER = "missing (its folder is not in the store)"


def array_write_config() -> dict[str, Any]:
    """zarr's per-array configuration of every array mrfengine writes: every chunk is
    stored, even one equal to the fill value, so an absent chunk always means damage."""
    return {"write_empty_chunks": True}


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


def stored_chunk_keys(array: Any) -> set[str]:
    """Keys (relative to the array, e.g. ``c/0/3/0/0``) of the chunks stored for a zarr array:
    one listing of its prefix in the store."""
    from zarr.core.sync import sync

    store_path = array.store_path
    prefix = f"{store_path.path}/" if store_path.path else ""

    async def collect() -> list[str]:
        return [k async for k in store_path.store.list_prefix(prefix)]

    return {k[len(prefix):] for k in sync(collect())}


def _chunk_coords(array: Any) -> Iterator[tuple[int, ...]]:
    import itertools

    return itertools.product(*(range(n) for n in array.cdata_shape))


def _schema_problem(path: str, array: Any, shape_zyx: tuple[int, ...], n_frames: int | None) -> str | None:
    """What is wrong with an array's metadata against the schema (dtype, shape), or None."""
    zarr = _zarr()
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


class StoreArray:
    """One array of a subject, opened for reading and checked.

    Behaves like the :class:`zarr.Array` it wraps (``shape``, ``dtype``,
    ``chunks``, ``attrs``; index it to read) with two guarantees:

    * an array whose writer recorded its chunks (``recorded``, from the
      subject's ``stored_chunks``) is read only when every chunk is stored: a
      missing chunk is a :class:`StoreError` naming the subject, the array and
      the chunk (slice), never zeros;
    * a chunk that cannot be decoded (truncated, corrupt, unreadable) is a
      :class:`StoreError` naming the same.

    Parameters
    ----------
    array : zarr.Array
    subject_id, path : str
        Named in every error.
    recorded : int or None
        Chunks the writer recorded; None for arrays of older stores (no check
        of missing chunks: an all-zero chunk there is legitimately absent).
    """

    def __init__(self, array: Any, subject_id: str, path: str, *, recorded: int | None) -> None:
        self._array = array
        self.subject_id = subject_id
        self.path = path
        self.recorded = recorded
        self._complete = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_array":
            raise AttributeError(name)
        return getattr(self._array, name)

    def __repr__(self) -> str:
        return f"StoreArray({self.subject_id}/{self.path}, shape={tuple(self._array.shape)}, dtype={self._array.dtype})"

    def __len__(self) -> int:
        return int(self._array.shape[0])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    @property
    def zarr_array(self) -> Any:
        """The wrapped :class:`zarr.Array` (unchecked reads)."""
        return self._array

    def where(self, coords: tuple[int, ...]) -> str:
        """``chunk c/0/3/0/0 (slice 3)``: a chunk by its key and the planes it holds."""
        key = self._array.metadata.encode_chunk_key(coords)
        axis = self._array.ndim - 3 if self._array.ndim >= 3 else 0
        size = self._array.chunks[axis]
        lo = coords[axis] * size
        hi = min(lo + size, self._array.shape[axis])
        planes = f"slice {lo}" if hi - lo == 1 else f"slices {lo}-{hi - 1}"
        return f"chunk {key} ({planes})"

    def missing_chunks(self) -> list[tuple[int, ...]]:
        """Coordinates of the chunks not stored (one listing of the store)."""
        present = stored_chunk_keys(self._array)
        encode = self._array.metadata.encode_chunk_key
        return [c for c in _chunk_coords(self._array) if encode(c) not in present]

    def _missing_message(self, missing: list[tuple[int, ...]]) -> str:
        names = ", ".join(self.where(c) for c in missing[:4])
        names += f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        return (f"{self.subject_id}: array {self.path!r} is missing {len(missing)} of its {self._array.nchunks} "
                f"chunk(s): {names}; the store is damaged (a missing chunk would read as zeros)")

    def check_chunks(self) -> None:
        """Raise :class:`StoreError` if a recorded array lacks a chunk (checked once)."""
        if self._complete or self.recorded is None:
            return
        missing = self.missing_chunks()
        if missing:
            raise StoreError(self._missing_message(missing))
        if self.recorded != self._array.nchunks:
            raise StoreError(f"{self.subject_id}: array {self.path!r} has {self._array.nchunks} chunks but its writer "
                             f"recorded {self.recorded}; the store was altered")
        self._complete = True

    def read_chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """One chunk, decoded; :class:`StoreError` naming it when it cannot be."""
        try:
            return self._array.get_block_selection(coords)
        except (IndexError, TypeError):
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a damaged chunk
            raise StoreError(self._undecodable(coords, exc)) from exc

    def _undecodable(self, coords: tuple[int, ...] | None, exc: BaseException) -> str:
        where = self.where(coords) if coords is not None else "a chunk"
        return (f"{self.subject_id}: array {self.path!r}: {where} cannot be read (truncated or corrupt: "
                f"{type(exc).__name__}: {exc})")

    def __getitem__(self, selection: Any) -> Any:
        self.check_chunks()
        try:
            return self._array[selection]
        except (IndexError, TypeError):
            raise
        except Exception as exc:  # noqa: BLE001 - locate the damaged chunk for the message
            bad = None
            for coords in _chunk_coords(self._array):
                try:
                    self._array.get_block_selection(coords)
                except Exception:  # noqa: BLE001
                    bad = coords
                    break
            raise StoreError(self._undecodable(bad, exc)) from exc

    def verify(self, check: Any = None) -> list[str]:
        """Read every chunk; the problems found (missing and undecodable chunks, and
        whatever ``check(chunk_data)`` returns for a chunk, a string or None)."""
        problems: list[str] = []
        missing = set(self.missing_chunks())
        if missing and self.recorded is not None:
            problems.append(self._missing_message(sorted(missing)))
        flagged: list[tuple[tuple[int, ...], str]] = []
        for coords in _chunk_coords(self._array):
            if coords in missing:
                continue
            try:
                data = self.read_chunk(coords)
            except StoreError as exc:
                problems.append(str(exc))
                continue
            if check is not None:
                found = check(data)
                if found:
                    flagged.append((coords, found))
        if flagged:
            more = f" (and {len(flagged) - 1} more chunk(s))" if len(flagged) > 1 else ""
            first, found = flagged[0]
            problems.append(f"{self.subject_id}: array {self.path!r} {self.where(first)}: {found}{more}")
        return problems


def default_compressor():
    """Blosc-zstd (level 1) with bit shuffling: the codec of every array in the store."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


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
        if not isinstance(self.site, str) or not _NAME_RE.fullmatch(self.site):
            raise ValidationError(f"site must be a short name such as '1'; got {self.site!r}")
        if self.split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {self.split!r}")
        if self.group not in GROUPS:
            raise ValidationError(f"group must be one of {GROUPS}; got {self.group!r}")

    def to_dict(self) -> dict[str, str]:
        return {"site": self.site, "split": self.split, "group": self.group}


# --------------------------------------------------------------------------- open
def _zarr():
    import zarr

    return zarr


def read_cohort_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a cohort, checked: a zarr v3 group holding a
    cohort of this schema version.

    Raises
    ------
    StoreError
        Missing path, not a zarr v3 group, not a cohort, other schema version.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such cohort (the path does not exist)")
    meta = path / "zarr.json"
    if not path.is_dir() or not meta.is_file():
        hint = " (a zarr v2 store?)" if (path / ".zgroup").exists() else ""
        raise StoreError(f"{path}: not a cohort: not a zarr v3 group (no zarr.json){hint}")
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a cohort: unreadable zarr.json ({exc})") from exc
    if doc.get("node_type") != "group" or doc.get("zarr_format") != 3:
        raise StoreError(f"{path}: not a cohort: zarr.json does not describe a zarr v3 group")
    attrs = doc.get("attributes", {}).get(ROOT_KEY)
    if not isinstance(attrs, dict):
        raise StoreError(f"{path}: a zarr group but not an mrfengine cohort (no {ROOT_KEY!r} attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: cohort schema version {version!r} is not supported: this mrfengine reads version "
            f"{SCHEMA_VERSION} (docs/cohort-format.md)"
        )
    return attrs


def _parse_sites(path: Path, attrs: Mapping[str, Any]) -> dict[str, SiteEntry]:
    sites = {}
    for name, entry in dict(attrs.get("sites", {})).items():
        try:
            sites[name] = SiteEntry.from_dict(entry)
        except (ValidationError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: site {name!r} has no valid sequence: {exc}") from exc
    return sites


def _parse_subjects(path: Path, attrs: Mapping[str, Any]) -> dict[str, SubjectEntry]:
    out, bad = _parse_subjects_lenient(path, attrs)
    if bad:
        raise StoreError(f"{path}: {next(iter(bad.values()))}")
    return out


def _parse_subjects_lenient(path: Path, attrs: Mapping[str, Any]) -> tuple[dict[str, SubjectEntry], dict[str, str]]:
    """The well-formed subject entries, and why each other one is malformed (one bad
    subject must not make the whole cohort unreadable)."""
    subjects = attrs.get("subjects", {})
    if not isinstance(subjects, dict):
        raise StoreError(f"{path}: the root attribute 'subjects' is not an object; the store is damaged")
    out, bad = {}, {}
    for sid, entry in subjects.items():
        try:
            if not isinstance(entry, dict):
                raise TypeError("not an object")
            out[sid] = SubjectEntry(**entry)
        except (ValidationError, TypeError) as exc:
            bad[sid] = f"subject {sid!r} has a malformed entry in the root attributes {entry!r}: {exc}"
    return out, bad


def _subject_state(path: Path, sid: str) -> tuple[dict[str, Any] | None, str | None]:
    """A subject's attributes, and why it is not complete (None when it is)."""
    folder = path / "subjects" / sid
    meta = folder / "zarr.json"
    if not folder.is_dir():
        return None, _NO_FOLDER
    try:
        doc = json.loads(meta.read_bytes())
    except FileNotFoundError:
        return None, "incomplete (no zarr.json: its writer was interrupted)"
    except OSError as exc:
        return None, f"its zarr.json cannot be read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"its zarr.json is not valid JSON ({type(exc).__name__}); the store is damaged"
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None, "its zarr.json does not describe a zarr group; the store is damaged"
    attrs = doc.get("attributes", {}).get(SUBJECT_KEY) if isinstance(doc.get("attributes"), dict) else None
    if not isinstance(attrs, dict):
        return None, f"its zarr.json has no {SUBJECT_KEY!r} attributes; the store is damaged"
    if attrs.get("complete") is not True:
        return attrs, "incomplete (no completion marker: its writer was interrupted)"
    return attrs, None


def _subject_folders(sub_dir: Path) -> list[str]:
    """Names of the subject folders (hidden ones, e.g. an import's staging copy, excluded)."""
    if not sub_dir.is_dir():
        return []
    return sorted(p.name for p in sub_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _subject_attrs(path: Path, sid: str) -> dict[str, Any] | None:
    return _subject_state(path, sid)[0]


def _is_complete(attrs: Mapping[str, Any] | None) -> bool:
    return bool(attrs) and attrs.get("complete") is True


def subject_complete(path: str | os.PathLike, subject_id: str) -> bool:
    """Whether the subject group exists and carries its completion marker."""
    return _is_complete(_subject_attrs(Path(path), subject_id))


class Subject:
    """One complete subject of a cohort (read-only view).

    Arrays are :class:`zarr.Array` objects: index them (``subject.mrf[:, z]``)
    to read only what is needed.

    Attributes
    ----------
    id : str
        ``sub-XX``.
    site, split, group : str
    sequence : Sequence
        The site's acquisition.
    affine : ndarray, float64, (4, 4)
        Maps ``(x, y, z, 1)`` voxel indices to world mm; arrays are indexed
        ``[..., z, y, x]``.
    voxel_size_mm : tuple of float
        ``(dx, dy, dz)``.
    shape : tuple of int
        ``(Z, Y, X)``.
    attrs : dict
        All subject attributes (``docs/cohort-format.md``).
    """

    def __init__(self, group: Any, entry: SubjectEntry, site: SiteEntry, attrs: dict[str, Any], *,
                 store: str | os.PathLike | None = None) -> None:
        self._group = group
        self._store = str(store) if store is not None else None
        problem = _attrs_problem(attrs, getattr(group, "basename", None) or attrs.get("id"))
        if problem:
            raise StoreError(f"{attrs.get('id', '?')}: {problem}")
        self.id: str = attrs["id"]
        self.site = entry.site
        self.split = entry.split
        self.group = entry.group
        self.sequence: Sequence = site.sequence
        self.attrs = attrs
        self.affine = np.asarray(attrs["affine"], dtype=np.float64)
        self.voxel_size_mm = tuple(float(v) for v in attrs["voxel_size_mm"])
        self.shape = tuple(int(v) for v in attrs["shape_zyx"])
        self._opened: dict[str, StoreArray] = {}

    def __repr__(self) -> str:
        return (f"Subject({self.id!r}, site={self.site!r}, split={self.split!r}, group={self.group!r}, "
                f"shape={self.shape})")

    def _open(self, path: str) -> StoreArray:
        """The array at ``path``, its dtype and shape checked against the schema."""
        if path in self._opened:
            return self._opened[path]
        try:
            arr = self._group[path]
        except KeyError:
            raise StoreError(f"{self.id}: array {path!r} is listed but missing from the store") from None
        except Exception as exc:  # noqa: BLE001 - unreadable or malformed array metadata
            raise StoreError(f"{self.id}: array {path!r} has unreadable metadata "
                             f"({type(exc).__name__}: {exc})") from exc
        problem = _schema_problem(path, arr, self.shape, self.sequence.n_measurements)
        if problem:
            raise StoreError(f"{self.id}: {problem}; the store was altered (run mrfengine validate)")
        record = self.attrs.get(CHUNKS_KEY)
        recorded = record.get(path) if isinstance(record, dict) else None
        if recorded is None:
            key = self._store or self.id
            if key not in _legacy_warned:
                _legacy_warned.add(key)
                log.warning("%s: %s/%s has no record of its stored chunks (written by an older mrfengine): a missing "
                            "chunk there reads as zeros and cannot be told from an empty one; `mrfengine validate "
                            "--deep` lists absent chunks, re-simulating or re-importing adds the record",
                            key, self.id, path)
        wrapped = StoreArray(arr, self.id, path, recorded=None if recorded is None else int(recorded))
        self._opened[path] = wrapped
        return wrapped

    @property
    def mrf(self) -> StoreArray:
        """The MRF magnitudes, array (n_frames, Z, Y, X) float32."""
        return self._open("mrf")

    @property
    def brain_mask(self) -> StoreArray | None:
        """Brain mask, array (Z, Y, X) uint8, or None."""
        return self._open("brain_mask") if "brain_mask" in self.arrays else None

    def _sub(self, name: str) -> dict[str, Any]:
        prefix = name + "/"
        return {p[len(prefix):]: self._open(p) for p in self.arrays if p.startswith(prefix)}

    @property
    def truth(self) -> dict[str, Any]:
        """Ground-truth arrays by name (empty for imported subjects)."""
        return self._sub("truth")

    @property
    def annotations(self) -> dict[str, Any]:
        """Annotation masks by name (e.g. ``lesion``, ``lesion_repeat``)."""
        return self._sub("annotations")

    @property
    def reference(self) -> dict[str, Any]:
        """Reference images by name (e.g. ``T2w``)."""
        return self._sub("reference")

    @property
    def arrays(self) -> tuple[str, ...]:
        """Paths of all arrays of the subject, as listed at completion."""
        return tuple(self.attrs.get("arrays", ()))

    def array(self, path: str):
        """An array by its path inside the subject group, e.g. ``truth/T1``."""
        if path not in self.arrays:
            raise StoreError(f"{self.id} has no array {path!r}; it has {list(self.arrays)}")
        return self._open(path)


def _attrs_problem(attrs: Mapping[str, Any], name: str | None) -> str | None:
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


class Cohort:
    """A cohort store opened for reading.

    Use :meth:`open`.  Only complete subjects are visible through
    :attr:`subjects`, iteration and indexing; :attr:`incomplete` lists the
    rest.

    Examples
    --------
    >>> cohort = Cohort.open("cohort.zarr")            # doctest: +SKIP
    >>> for sub in cohort.subjects_in("test"):         # doctest: +SKIP
    ...     frames = cohort[sub].mrf[:, 30]            # (35, Y, X)
    """

    def __init__(self, path: Path, attrs: dict[str, Any], group: Any) -> None:
        self.path = path
        self.attrs = attrs
        self._group = group
        self.schema_version: int = attrs["schema_version"]
        self.sites: dict[str, SiteEntry] = _parse_sites(path, attrs)
        self.entries, malformed = _parse_subjects_lenient(path, attrs)
        sub_dir = path / "subjects"
        on_disk = _subject_folders(sub_dir)
        states = {sid: _subject_state(path, sid) for sid in on_disk}
        self._attrs_of = {sid: a for sid, (a, _) in states.items()}
        self.subjects: list[str] = sorted(
            sid for sid, (a, why) in states.items() if why is None and sid in self.entries
        )
        self._opened: dict[str, Subject] = {}
        self.incomplete: list[str] = sorted((set(self.entries) | set(malformed)) - set(self.subjects))
        #: Why each listed subject is not readable: its folder is missing, its ``zarr.json``
        #: is damaged, its writer was interrupted, or its root entry is malformed.
        self.absent: dict[str, str] = {
            sid: malformed.get(sid) or (states[sid][1] if sid in states else _NO_FOLDER) or "incomplete"
            for sid in self.incomplete
        }

    @classmethod
    def open(cls, path: str | os.PathLike) -> Cohort:
        """Open a cohort read-only.

        Raises
        ------
        StoreError
            The path does not exist, is not a zarr v3 group, is not a cohort,
            or has another schema version.
        """
        path = Path(path)
        attrs = read_cohort_attrs(path)
        group = _zarr().open_group(str(path), mode="r")
        return cls(path, attrs, group)

    def __repr__(self) -> str:
        return (f"Cohort({str(self.path)!r}, {len(self.subjects)} complete subjects, "
                f"{len(self.incomplete)} incomplete, sites {sorted(self.sites)})")

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return (self[s] for s in self.subjects)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self.subjects

    def __getitem__(self, subject_id: str) -> Subject:
        if subject_id not in self.entries and subject_id not in self.absent:
            raise StoreError(f"{self.path}: no subject {subject_id!r}; subjects: {self.subjects}")
        if subject_id not in self.subjects:
            raise StoreError(f"{self.path}: subject {subject_id!r} is not readable: {self.absent[subject_id]}; "
                             "rerun the command that writes it")
        entry = self.entries[subject_id]
        if entry.site not in self.sites:
            raise StoreError(f"{self.path}: subject {subject_id!r} names site {entry.site!r}, which the cohort lacks")
        if subject_id in self._opened:  # its arrays' chunk checks are done once
            return self._opened[subject_id]
        attrs = self._attrs_of[subject_id]
        try:
            sub = Subject(self._group[f"subjects/{subject_id}"], entry, self.sites[entry.site], attrs,
                          store=self.path)
        except StoreError as exc:
            raise StoreError(f"{self.path}: subject {subject_id!r} has malformed attributes ({exc}); "
                             "run `mrfengine validate` on the cohort") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: subject {subject_id!r} has malformed attributes ({exc!r}); "
                             "run `mrfengine validate` on the cohort") from exc
        self._opened[subject_id] = sub
        return sub

    @property
    def split(self) -> dict[str, str]:
        """Split of every listed subject (complete or not)."""
        return {sid: e.split for sid, e in self.entries.items()}

    def subjects_in(self, split: str) -> list[str]:
        """Complete subjects of one split (``train``, ``validation``, ``test``, ``none``)."""
        if split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {split!r}")
        return [s for s in self.subjects if self.entries[s].split == split]

    def select(self, subject_ids: Iterable[str] | None, *, incomplete: bool = False) -> list[str]:
        """The complete subjects named in ``subject_ids`` (all of them for none),
        in the order given, without repeats.

        With ``incomplete``, subjects the root attributes list but that are not
        complete (:attr:`absent`: a missing folder, a damaged ``zarr.json``, an
        interrupted writer) are selected too, so a caller can report each as a
        failure instead of silently using fewer subjects.

        A name may leave out ``sub-`` and, for a store with zero-padded numbers,
        the padding: ``7``, ``sub-7``, ``07`` and ``sub-07`` all name ``sub-07``.

        Raises
        ------
        ValidationError
            A name that is no BIDS subject id.
        StoreError
            A subject the store lacks or has incomplete (names the store).
        """
        known = sorted(set(self.entries) | set(self.absent)) if incomplete else self.subjects
        if not subject_ids:
            return list(known)
        wanted: list[str] = []
        for name in subject_ids:
            sid = normalize_subject_id(name)
            if sid not in known and sid[4:].isdigit():
                same = [c for c in known if c[4:].isdigit() and int(c[4:]) == int(sid[4:])]
                sid = same[0] if len(same) == 1 else sid
            if sid not in known:
                why = "its writer was interrupted; rerun the command that writes it" if sid in self.entries \
                    else "not in the store"
                raise StoreError(f"{self.path}: no complete subject {sid!r} ({why}); it has {len(self.subjects)} "
                                 f"complete subjects: {', '.join(self.subjects[:6])}"
                                 f"{', ...' if len(self.subjects) > 6 else ''}")
            if sid not in wanted:
                wanted.append(sid)
        return wanted

    def sequence(self, site: str) -> Sequence:
        """The acquisition of ``site``."""
        if site not in self.sites:
            raise StoreError(f"{self.path}: no site {site!r}; sites: {sorted(self.sites)}")
        return self.sites[site].sequence

    @property
    def generator(self) -> dict[str, Any] | None:
        """How the cohort was simulated (preset, seed, configuration), or None."""
        return self.attrs.get("generator")


# --------------------------------------------------------------------------- write
def create_cohort(
    path: str | os.PathLike,
    *,
    sites: Mapping[str, SiteEntry],
    subjects: Mapping[str, SubjectEntry] | None = None,
    kind: str = "imported",
    generator: Mapping[str, Any] | None = None,
    overwrite: bool = False,
):
    """Create an empty cohort (root group, attributes, ``subjects/``).

    Parameters
    ----------
    path : path
        A new folder (``.zarr`` by convention).
    sites : mapping of str to SiteEntry
    subjects : mapping of str to SubjectEntry, optional
        Subjects planned (simulation) or known so far (import).
    kind : {"simulated", "imported"}
    generator : mapping, optional
        JSON-compatible description of how the data are made (preset, seed,
        configuration); a resumed simulation must match it.
    overwrite : bool
        Replace an existing cohort store at ``path`` (see :func:`_remove`:
        only a folder whose root ``zarr.json`` carries the cohort attribute,
        and only if it holds nothing but the store's own files); otherwise an
        existing path is an error.

    Returns
    -------
    zarr.Group
        The root group, open for writing.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is false, or it is no cohort store
        (nothing is deleted then).
    """
    from .. import __version__

    path = Path(path)
    if kind not in ("simulated", "imported"):
        raise ValidationError(f"kind must be 'simulated' or 'imported'; got {kind!r}")
    frames = {s.sequence.n_measurements for s in sites.values()}
    if len(frames) > 1:
        raise ValidationError(f"all sites must have the same number of measurements; got {sorted(frames)}")
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"mrfengine {__version__}",
        "kind": kind,
        "n_frames": frames.pop() if frames else None,
        "sites": {name: s.to_dict() for name, s in sorted(sites.items())},
        "subjects": {sid: e.to_dict() for sid, e in sorted((subjects or {}).items())},
        "generator": None if generator is None else dict(generator),
    }
    if os.path.lexists(path):
        if not overwrite:
            raise StoreError(f"{path}: already exists; choose a new path or overwrite it")
        _remove(path)
    zarr = _zarr()
    # Mode "a", never "w": zarr's "w" empties the whole folder.
    tmp_root = zarr.open_group(str(path), mode="a", zarr_format=3)
    tmp_root.require_group("subjects")
    # The root attributes last: until they exist the folder is not a cohort.
    tmp_root.attrs.update({ROOT_KEY: attrs})
    return tmp_root


def open_cohort_for_writing(path: str | os.PathLike):
    """Open an existing cohort for writing (schema version checked); returns
    ``(root group, root attributes)``."""
    path = Path(path)
    attrs = read_cohort_attrs(path)
    return _zarr().open_group(str(path), mode="r+"), attrs


def register_subjects(
    root: Any,
    *,
    subjects: Mapping[str, SubjectEntry] | None = None,
    sites: Mapping[str, SiteEntry] | None = None,
) -> None:
    """Add or replace subject entries and sites in the root attributes.

    A site already present must keep its sequence (checked by digest).
    """
    attrs = dict(root.attrs[ROOT_KEY])
    site_map = dict(attrs.get("sites", {}))
    for name, entry in (sites or {}).items():
        if name in site_map:
            old = Sequence.from_dict(site_map[name]["sequence"])
            if old.digest() != entry.sequence.digest():
                raise StoreError(
                    f"site {name!r} already has sequence {old.name!r} with another timing; one site, one sequence"
                )
            continue
        if attrs.get("n_frames") not in (None, entry.sequence.n_measurements):
            raise StoreError(f"site {name!r} has {entry.sequence.n_measurements} measurements; the cohort has "
                             f"{attrs['n_frames']}")
        attrs["n_frames"] = entry.sequence.n_measurements
        site_map[name] = entry.to_dict()
    subj = dict(attrs.get("subjects", {}))
    for sid, entry in (subjects or {}).items():
        if entry.site not in site_map:
            raise StoreError(f"subject {sid!r} names site {entry.site!r}, which the cohort lacks")
        subj[sid] = entry.to_dict()
    attrs["sites"] = dict(sorted(site_map.items()))
    attrs["subjects"] = dict(sorted(subj.items()))
    root.attrs.update({ROOT_KEY: attrs})


def _remove(path: Path) -> None:
    """Delete the cohort store at ``path``, and nothing that is not provably its own.

    Raises
    ------
    StoreError
        ``path`` is a link or a file, its root ``zarr.json`` lacks the
        ``mrfengine_cohort`` attribute (not a cohort: refused), or the store
        holds files that zarr and mrfengine did not write (refused, named).
        Nothing is deleted then.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise StoreError(f"{path}: is not an mrfengine cohort (not a folder); refusing to delete it")
    try:
        doc = json.loads((path / "zarr.json").read_text())
        ok = isinstance(doc, dict) and isinstance(doc.get("attributes", {}).get(ROOT_KEY), dict)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{path}: is not an mrfengine cohort (no {ROOT_KEY!r} attribute in its zarr.json); "
                         "refusing to delete it")
    try:
        ours, foreign = _zarr_files(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store to replace it ({exc.strerror or exc})") from exc
    if foreign:
        names = ", ".join(str(p.relative_to(path)) for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise StoreError(f"{path}: holds {len(foreign)} file(s) that are not the cohort's ({names}); refusing to "
                         "delete the store: move them out first")
    try:
        _delete_files(path, ours)
    except OSError as exc:
        raise StoreError(f"{path}: cannot delete the old store ({exc.strerror or exc})") from exc


def _zarr_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The files under ``root`` that zarr and mrfengine wrote (every node's
    ``zarr.json``, the chunks under an array's ``c/``, a batch's write probes),
    and all others (files and links: not ours to delete)."""
    ours: list[Path] = []
    foreign: list[Path] = []

    def is_array(folder: Path) -> bool:
        try:
            return json.loads((folder / "zarr.json").read_text()).get("node_type") == "array"
        except (OSError, ValueError, AttributeError):
            return False

    def walk(folder: Path, in_chunks: bool) -> None:
        array = not in_chunks and is_array(folder)
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                foreign.append(entry)
            elif entry.is_dir():
                walk(entry, in_chunks or (array and entry.name == "c"))
            elif entry.name == "zarr.json" or in_chunks or entry.name.startswith(".mrfengine-write-test-"):
                ours.append(entry)
            else:
                foreign.append(entry)

    walk(root, False)
    return ours, foreign


def _delete_files(root: Path, files: Iterable[Path]) -> None:
    """Delete ``files`` (under ``root``), then every folder under ``root`` they leave empty."""
    files = list(files)
    for f in files:
        f.unlink()
    for folder in sorted({d for f in files for d in f.parents if root in d.parents or d == root},
                         key=lambda d: len(d.parts), reverse=True):
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()


class SubjectWriter:
    """Writes one subject; the subject counts only after :meth:`finish`.

    On creation an existing incomplete group of that id is deleted; an
    existing complete one is an error unless ``overwrite``.  The group is
    created with ``complete: false``; :meth:`finish` writes the array list and
    ``complete: true`` last.

    Parameters
    ----------
    root : zarr.Group
        The cohort's root group (writable).
    subject_id : str
    shape_zyx : (int, int, int)
    affine : ndarray, (4, 4)
        Voxel ``(x, y, z, 1)`` to world mm.
    n_frames : int
    attrs : mapping, optional
        Further subject attributes (qform/sform codes, units, provenance).
    overwrite : bool
    staging : bool
        Write into a new hidden group ``subjects/.staging-<id>-<random>`` and,
        in :meth:`finish`, swap it in place of the existing subject (a local
        store: two folder renames, then the old folder is deleted).  Until
        then the existing subject stays complete and untouched; :meth:`abort`
        deletes the staging group.  ``overwrite`` must be given to replace a
        complete subject.
    """

    def __init__(
        self,
        root: Any,
        subject_id: str,
        *,
        shape_zyx: tuple[int, int, int],
        affine: np.ndarray,
        n_frames: int,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        staging: bool = False,
    ) -> None:
        sid = normalize_subject_id(subject_id)
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValidationError(f"affine must be a finite, invertible 4x4 matrix; got\n{affine}")
        if len(shape_zyx) != 3 or min(shape_zyx) < 1:
            raise ValidationError(f"shape_zyx must be three positive ints; got {shape_zyx}")
        subjects = root.require_group("subjects")
        self._root = root
        self._staging: str | None = None
        if sid in subjects:
            try:
                old = subjects[sid].attrs.get(SUBJECT_KEY)
            except Exception:  # noqa: BLE001 - an unreadable group is an incomplete one
                old = None
            if _is_complete(old) and not overwrite:
                raise StoreError(f"subject {sid} is already complete in the cohort; pass overwrite to replace it")
            if not staging:
                del subjects[sid]
        self.id = sid
        self.shape = tuple(int(s) for s in shape_zyx)
        self.n_frames = int(n_frames)
        if staging:
            import uuid

            self._staging = f".staging-{sid}-{uuid.uuid4().hex[:12]}"
        self._group = subjects.create_group(self._staging or sid)
        self._arrays: list[str] = []
        voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        self._attrs: dict[str, Any] = {
            "id": sid,
            "shape_zyx": list(self.shape),
            "affine": affine.tolist(),
            "voxel_size_mm": [float(v) for v in voxel],
            "qform_code": 1,
            "sform_code": 1,
            "xyzt_units": ["mm", "sec"],
            **dict(attrs or {}),
            "complete": False,
        }
        self._group.attrs.update({SUBJECT_KEY: self._attrs})
        self._finished = False

    def create(self, path: str, *, dtype: str, frames: bool = False, attrs: Mapping[str, Any] | None = None):
        """Create an empty array at ``path`` (e.g. ``truth/T1``), one chunk per slice.

        ``frames`` gives it the MRF shape (n_frames, Z, Y, X); otherwise (Z, Y, X).
        """
        head, _, name = path.rpartition("/")
        if head and not _NAME_RE.fullmatch(head):
            raise ValidationError(
                f"arrays live at the subject level or one group deep (e.g. {_GROUPS_OF_SUBJECT}); got {path!r}")
        if not _NAME_RE.fullmatch(name):
            raise ValidationError(f"array name must be letters, digits, '_', '.', '-'; got {name!r}")
        z, y, x = self.shape
        shape = (self.n_frames, z, y, x) if frames else (z, y, x)
        chunks = (self.n_frames, 1, y, x) if frames else (1, y, x)
        parent = self._group.require_group(head) if head else self._group
        arr = parent.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, compressors=default_compressor(), fill_value=0,
            attributes=dict(attrs or {}), config=array_write_config(),
        )
        if path not in self._arrays:
            self._arrays.append(path)
        return arr

    def write(self, path: str, data: np.ndarray, *, attrs: Mapping[str, Any] | None = None):
        """Create ``path`` and write a whole (Z, Y, X) or (n_frames, Z, Y, X) array."""
        data = np.asarray(data)
        frames = data.ndim == 4
        expect = ((self.n_frames,) if frames else ()) + self.shape
        if data.shape != expect:
            raise ValidationError(f"{path} must have shape {expect}; got {data.shape}")
        dtype = "uint8" if data.dtype == bool else str(data.dtype)
        arr = self.create(path, dtype=dtype, frames=frames, attrs=attrs)
        arr[...] = data.astype(dtype, copy=False)
        return arr

    def finish(self, **attrs: Any) -> None:
        """Mark the subject complete: the array list, the chunks stored per array
        (``stored_chunks``, checked: every chunk of every array) and ``complete: true``, last."""
        if self._finished:
            return
        if "mrf" not in self._arrays:
            raise StoreError(f"{self.id}: cannot finish a subject without its 'mrf' array")
        counts = {}
        for path in sorted(self._arrays):
            arr = self._group[path]
            n = len(stored_chunk_keys(arr) & {arr.metadata.encode_chunk_key(c) for c in _chunk_coords(arr)})
            if n != arr.nchunks:
                raise StoreError(f"{self.id}: array {path!r} has {n} of its {arr.nchunks} chunks stored; every "
                                 "slice must be written before the subject is finished")
            counts[path] = n
        self._attrs.update(attrs)
        self._attrs["arrays"] = sorted(self._arrays)
        self._attrs[CHUNKS_KEY] = counts
        self._attrs["complete"] = True
        self._group.attrs.update({SUBJECT_KEY: self._attrs})
        if self._staging is not None:
            self._swap_in()
        self._finished = True

    def _subjects_dir(self) -> Path:
        store_root = getattr(self._root.store, "root", None)
        if store_root is None:
            raise StoreError(f"{self.id}: staging a subject needs a local (folder) store")
        return Path(str(store_root)) / (self._root.path or "") / "subjects"

    def _swap_in(self) -> None:
        """Put the complete staging group in place of ``subjects/<id>``: the old folder is
        renamed aside, the staging folder renamed in, then the old folder deleted."""
        import uuid

        folder = self._subjects_dir()
        new, target = folder / self._staging, folder / self.id
        aside = folder / f".replaced-{self.id}-{uuid.uuid4().hex[:12]}"
        if target.exists():
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(aside, target)  # the old subject back in place
                raise
            self._discard_replaced(aside)
        else:
            os.rename(new, target)
        self._staging = None

    def _discard_replaced(self, aside: Path) -> None:
        """Delete the replaced subject's own files; anything else found in it stays (logged)."""
        try:
            ours, foreign = _zarr_files(aside)
            _delete_files(aside, ours)
            if foreign:
                log.warning("%s: the replaced subject %s held %d file(s) mrfengine did not write; they are kept "
                            "in %s", self._subjects_dir().parent, self.id, len(foreign), aside)
            else:
                aside.rmdir()
        except OSError as exc:  # the new subject is in place; a leftover hidden folder is harmless
            log.warning("%s: could not delete the replaced subject's folder %s (%s)", self.id, aside, exc)

    def abort(self) -> None:
        """Delete the staging group of an unfinished writer (nothing else is touched)."""
        if self._finished or self._staging is None:
            return
        folder = self._subjects_dir() / self._staging
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        self._staging = None


# --------------------------------------------------------------------------- validate
@dataclass
class ValidationReport:
    """Problems found by :func:`validate_cohort` (empty ``problems``: valid)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_complete: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_cohort(path: str | os.PathLike, *, deep: bool = False, allow_incomplete: bool = False) -> ValidationReport:
    """Check a cohort against ``docs/cohort-format.md``; name every problem.

    Parameters
    ----------
    path : path
    deep : bool
        Also read the data: finite MRF values, fractions in [0, 1] summing to
        at most 1, binary masks.  Slow for paper-sized cohorts.
    allow_incomplete : bool
        Report incomplete subjects as warnings instead of problems (a
        generation still running).

    Returns
    -------
    ValidationReport

    Raises
    ------
    StoreError
        Only when the path is not a cohort of this schema version at all (the
        message says why); every other finding goes into the report.
    """
    path = Path(path)
    attrs = read_cohort_attrs(path)
    rep = ValidationReport(path)
    try:
        sites = _parse_sites(path, attrs)
        entries, malformed = _parse_subjects_lenient(path, attrs)
    except StoreError as exc:
        rep.problems.append(str(exc))
        return rep
    rep.problems.extend(f"{sid}: {why}" for sid, why in sorted(malformed.items()))
    n_frames = attrs.get("n_frames")
    for name, site in sites.items():
        if n_frames is not None and site.sequence.n_measurements != n_frames:
            rep.problems.append(f"site {name}: sequence has {site.sequence.n_measurements} measurements, cohort "
                                f"n_frames is {n_frames}")
    for sid, e in entries.items():
        if not isinstance(sid, str) or not _SUBJECT_RE.fullmatch(sid):
            rep.problems.append(f"subject id {sid!r} is not BIDS-like ('sub-' + letters/digits)")
        if e.site not in sites:
            rep.problems.append(f"{sid}: site {e.site!r} is not among the cohort's sites {sorted(sites)}")
    sub_dir = path / "subjects"
    on_disk = _subject_folders(sub_dir)
    for sid in sorted(set(on_disk) - set(entries) - set(malformed)):
        rep.problems.append(f"{sid}: a subject group that the root attributes do not list")
    zarr = _zarr()
    for sid in sorted(entries):
        a, why = _subject_state(path, sid)
        if why is not None:
            interrupted = why.startswith("incomplete") or why == _NO_FOLDER
            (rep.warnings if allow_incomplete and interrupted else rep.problems).append(f"{sid}: {why}")
            continue
        rep.n_complete += 1
        site = sites.get(entries[sid].site)
        found, legacy = _check_subject(zarr, path, sid, a, site, deep=deep)
        rep.problems.extend(p if p.startswith(f"{sid}:") else f"{sid}: {p}" for p in found)
        rep.warnings.extend(f"{sid}: {w}" for w in legacy)
    return rep


def _binary(data: np.ndarray) -> str | None:
    vals = np.unique(data)
    return None if np.all(np.isin(vals, (0, 1))) else f"not binary: values {vals[:8].tolist()}"


def _finite(data: np.ndarray) -> str | None:
    return None if np.all(np.isfinite(data)) else "has NaN or Inf values"


def _check_subject(zarr: Any, path: Path, sid: str, a: Mapping[str, Any], site: SiteEntry | None, *,
                   deep: bool) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one complete subject."""
    problems: list[str] = []
    warnings: list[str] = []
    problem = _attrs_problem(a, sid)
    if problem:
        return [problem], warnings
    shape = tuple(a["shape_zyx"])
    vox = np.sqrt((np.asarray(a["affine"], dtype=float)[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(vox, a["voxel_size_mm"], rtol=1e-4):
        problems.append(f"voxel_size_mm {a['voxel_size_mm']} disagrees with the affine's {vox.round(4).tolist()}")
    try:
        group = zarr.open_group(str(path / "subjects" / sid), mode="r")
    except Exception as exc:  # noqa: BLE001
        return problems + [f"its group cannot be opened ({type(exc).__name__}: {exc})"], warnings
    if "mrf" not in a["arrays"]:
        problems.append("no 'mrf' array listed")
    record = a.get(CHUNKS_KEY) or {}
    if CHUNKS_KEY not in a:
        warnings.append("no record of stored chunks (written by an older mrfengine): an absent chunk reads as "
                        "zeros and cannot be told from an all-zero one; re-simulate or re-import for the check")
    n_frames = site.sequence.n_measurements if site else None
    for p in a["arrays"]:
        try:
            arr = group[p]
        except KeyError:
            problems.append(f"array {p!r} is listed but missing")
            continue
        except Exception as exc:  # noqa: BLE001 - unreadable metadata
            problems.append(f"array {p!r} has unreadable metadata ({type(exc).__name__}: {exc})")
            continue
        found = _schema_problem(p, arr, shape, n_frames)
        if found:
            problems.append(found)
            continue
        if p == "mrf":
            if arr.chunks != (arr.shape[0], 1) + shape[1:]:
                problems.append(f"mrf chunks {arr.chunks} are not one slice each {(arr.shape[0], 1) + shape[1:]}")
            if site and shape[0] != site.sequence.n_slices:
                problems.append(f"{shape[0]} slices but the site's sequence has {site.sequence.n_slices}")
        recorded = record.get(p)
        checked = StoreArray(arr, sid, p, recorded=recorded)
        if recorded is None and p not in record:
            missing = checked.missing_chunks()
            if missing:
                names = ", ".join(checked.where(c) for c in missing[:4]) + (" ..." if len(missing) > 4 else "")
                warnings.append(f"array {p!r}: {len(missing)} chunk(s) absent ({names}); they read as zeros "
                                "(no chunk record: cannot be told from all-zero slices)")
        if deep:
            check = _finite if p == "mrf" else _binary if (p.startswith("annotations/") or p == "brain_mask") \
                else None
            problems.extend(checked.verify(check))
        else:
            try:
                checked.check_chunks()
            except StoreError as exc:
                problems.append(str(exc))
    truth = [p[len("truth/"):] for p in a["arrays"] if p.startswith("truth/")]
    if truth:
        missing_truth = [t for t in REQUIRED_TRUTH if t not in truth]
        if missing_truth:
            problems.append(f"truth lacks {missing_truth}")
        elif deep and not problems:
            total = np.zeros(shape, dtype=np.float64)
            for t in ("GM", "WM", "CSF", "lesion"):
                v = np.asarray(group[f"truth/{t}"][...], dtype=np.float64)
                if v.min() < -1e-6 or v.max() > 1 + 1e-5:
                    problems.append(f"truth/{t} leaves [0, 1]: range {v.min():.4g} .. {v.max():.4g}")
                total += v
            if total.max() > 1 + 1e-4:
                problems.append(f"tissue fractions sum to {total.max():.4g} > 1 somewhere")
    return problems, warnings


def json_equal(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples and lists alike, floats exact)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

