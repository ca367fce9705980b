"""Checking a cohort: which subjects are complete and why the others are not, checked
reads of arrays (a missing or undecodable chunk is an error, never zeros), and
:func:`validate_cohort`, the whole store against ``docs/cohort-format.md``.

Every check goes through zarr (groups, attributes, the store's listing), so it holds for
any store :mod:`.store` opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StoreError
from .schema import (
    _SUBJECT_RE,
    CHUNKS_KEY,
    DIMENSION_NAMES,
    REQUIRED_TRUTH,
    REVISION_KEY,
    SUBJECT_KEY,
    SUBJECTS,
    SiteEntry,
    array_problem,
    attrs_problem,
    is_complete,
    json_equal,
    parse_sites,
    parse_subjects_lenient,
)
from .store import (chunk_coords, chunk_presence, chunk_selection, consolidated_root, join, key_exists, list_dir,
                    local_folder, location, open_root)

__all__ = ["StoreArray", "ValidationReport", "validate_cohort", "subject_state", "subject_names", "NO_FOLDER",
           "NO_METADATA", "NO_MARKER"]


#: Why a listed subject is absent: nothing of it is in the store; its group has no
#: metadata; its group lacks the completion marker (both: an interrupted writer).
NO_FOLDER = "missing (its folder is not in the store)"
NO_METADATA = "incomplete (no zarr.json: its writer was interrupted)"
NO_MARKER = "incomplete (no completion marker: its writer was interrupted)"


def interrupted(why: str) -> bool:
    """Whether a reason of :func:`subject_state` is an unfinished writer (not damage)."""
    return why.startswith("incomplete") or why == NO_FOLDER


def subject_names(root: Any) -> list[str]:
    """Names under the root's ``subjects/`` that may be subject groups: hidden names (a
    replacement being staged) and plain keys (files) excluded."""
    from zarr.core.common import ZARR_JSON

    names = [n for n in list_dir(root, SUBJECTS) if n and not n.startswith(".") and n != ZARR_JSON]
    return [n for n in names if not key_exists(root, join(SUBJECTS, n))]


def subject_state(root: Any, sid: str, *, listed: bool | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """A subject's attributes, and why it is not complete (None when it is).

    Parameters
    ----------
    root : zarr.storage.StorePath
        The cohort's root.
    sid : str
    listed : bool, optional
        Whether the store holds anything under the subject's name (from
        :func:`subject_names`); asked of the store when not given.
    """
    import json

    import zarr
    from zarr.errors import ContainsArrayError, NodeNotFoundError

    try:
        group = zarr.open_group(store=root.store, path=join(root.path, SUBJECTS, sid), mode="r", zarr_format=3,
                                use_consolidated=False)
    except ContainsArrayError:
        return None, "its zarr.json does not describe a zarr group; the store is damaged"
    except (NodeNotFoundError, FileNotFoundError):
        if listed is None:
            listed = bool(list_dir(root, join(SUBJECTS, sid)))
        return None, NO_METADATA if listed else NO_FOLDER
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"its zarr.json is not valid JSON ({type(exc).__name__}); the store is damaged"
    except OSError as exc:
        return None, f"its zarr.json cannot be read ({exc.strerror or exc})"
    except Exception as exc:  # noqa: BLE001 - metadata zarr cannot parse
        return None, (f"its zarr.json is not valid zarr group metadata ({type(exc).__name__}: {exc}); "
                      "the store is damaged")
    attrs = group.attrs.get(SUBJECT_KEY)
    if not isinstance(attrs, dict):
        return None, f"its zarr.json has no {SUBJECT_KEY!r} attributes; the store is damaged"
    if not is_complete(attrs):
        return attrs, NO_MARKER
    return attrs, None


# --------------------------------------------------------------------------- checked arrays
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

    def where(self, coords: tuple[int, ...]) -> str:
        """``chunk c/0/3/0/0 (slice 3)``: a chunk by its key and the planes it holds; in a
        sharded array, ``slice 3 in shard c/0/0/0/0``."""
        arr = self._array
        axis = arr.ndim - 3 if arr.ndim >= 3 else 0
        size = arr.chunks[axis]
        lo = coords[axis] * size
        hi = min(lo + size, arr.shape[axis])
        planes = f"slice {lo}" if hi - lo == 1 else f"slices {lo}-{hi - 1}"
        if arr.shards is None:
            return f"chunk {arr.metadata.encode_chunk_key(coords)} ({planes})"
        return f"{planes} in shard {arr.metadata.encode_chunk_key(self._shard_of(coords))}"

    def _shard_of(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        arr = self._array
        return tuple(c // (s // k) for c, s, k in zip(coords, arr.shards, arr.chunks))

    def _unreadable_shards(self, unreadable: Mapping[tuple[int, ...], str]) -> str:
        encode = self._array.metadata.encode_chunk_key
        names = "; ".join(f"shard {encode(c)}: {why}" for c, why in list(unreadable.items())[:3])
        return (f"{self.subject_id}: array {self.path!r}: {len(unreadable)} shard(s) cannot be read (truncated or "
                f"corrupt index: {names})")

    def missing_chunks(self) -> list[tuple[int, ...]]:
        """Coordinates of the (inner) chunks not stored: one listing of the store, and for a
        sharded array each shard's index.  A shard whose index cannot be read (truncated,
        corrupt) is a :class:`StoreError`."""
        present, unreadable = chunk_presence(self._array)
        if unreadable:
            raise StoreError(self._unreadable_shards(unreadable))
        return [c for c in chunk_coords(self._array) if not present[c]]

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
            return self._array[chunk_selection(self._array, coords)]
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
            for coords in chunk_coords(self._array):
                try:
                    self._array[chunk_selection(self._array, coords)]
                except Exception:  # noqa: BLE001
                    bad = coords
                    break
            raise StoreError(self._undecodable(bad, exc)) from exc

    def verify(self, check: Any = None) -> list[str]:
        """Read every chunk; the problems found (missing and undecodable chunks, and
        whatever ``check(chunk_data)`` returns for a chunk, a string or None)."""
        problems: list[str] = []
        try:
            missing = set(self.missing_chunks())
        except StoreError as exc:  # an unreadable shard index
            return [str(exc)]
        if missing and self.recorded is not None:
            problems.append(self._missing_message(sorted(missing)))
        flagged: list[tuple[tuple[int, ...], str]] = []
        for coords in chunk_coords(self._array):
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


# --------------------------------------------------------------------------- the whole store
@dataclass
class ValidationReport:
    """Problems found by :func:`validate_cohort` (empty ``problems``: valid).

    ``path`` is the cohort's folder or zip file, or the store's URL for other stores.
    """

    path: Path | str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_complete: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_cohort(cohort: Any, *, deep: bool = False, allow_incomplete: bool = False) -> ValidationReport:
    """Check a cohort against ``docs/cohort-format.md``; name every problem.

    Parameters
    ----------
    cohort : path, URL or zarr store
        Any store :func:`mrfengine.io.cohort.store.open_store` opens (a folder, a ``.zip``,
        an fsspec URL, a store object).
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
        Only when the store is not a cohort of this schema version at all (the
        message says why); every other finding goes into the report.
    """
    group, attrs, sp = open_root(cohort)
    where = location(sp)
    rep = ValidationReport(local_folder(sp) or _zip_path(sp) or where)
    try:
        sites = parse_sites(where, attrs)
        entries, malformed = parse_subjects_lenient(where, attrs)
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
    in_store = set(subject_names(sp))
    for sid in sorted(in_store - set(entries) - set(malformed)):
        rep.problems.append(f"{sid}: a subject group that the root attributes do not list")
    consolidated = consolidated_root(sp)
    flat = consolidated.metadata.consolidated_metadata.flattened_metadata if consolidated is not None else None
    stale: list[str] = []
    for sid in sorted(entries):
        a, why = subject_state(sp, sid, listed=sid in in_store) if sid in in_store else (None, NO_FOLDER)
        if why is not None:
            (rep.warnings if allow_incomplete and interrupted(why) else rep.problems).append(f"{sid}: {why}")
            continue
        rep.n_complete += 1
        site = sites.get(entries[sid].site)
        copy = None
        if flat is not None:
            entry = flat.get(join(SUBJECTS, sid))
            if entry is not None and isinstance(a.get(REVISION_KEY), str) and json_equal(
                    entry.attributes.get(SUBJECT_KEY), a):
                copy = {k[len(sid) + len(SUBJECTS) + 2:]: v for k, v in flat.items()
                        if k.startswith(join(SUBJECTS, sid) + "/")}
            else:
                stale.append(sid)
        found, legacy = _check_subject(group, sid, a, site, deep=deep, consolidated=copy)
        rep.problems.extend(p if p.startswith(f"{sid}:") else f"{sid}: {p}" for p in found)
        rep.warnings.extend(f"{sid}: {w}" for w in legacy)
    if stale:
        names = ", ".join(stale[:4]) + (", ..." if len(stale) > 4 else "")
        rep.warnings.append(f"the consolidated metadata is not current for {len(stale)} subject(s) ({names}): "
                            "readers read their metadata from the store (slower on remote stores); the next "
                            "simulate, import or batch writes it anew")
    return rep


def _zip_path(sp: Any) -> Path | None:
    from zarr.storage import ZipStore

    return Path(sp.store.path) if isinstance(sp.store, ZipStore) and not sp.path else None


def _binary(data: np.ndarray) -> str | None:
    vals = np.unique(data)
    return None if np.all(np.isin(vals, (0, 1))) else f"not binary: values {vals[:8].tolist()}"


def _finite(data: np.ndarray) -> str | None:
    return None if np.all(np.isfinite(data)) else "has NaN or Inf values"


def _layout_problem(p: str, arr: Any) -> str | None:
    """What is wrong with an array's chunks, shards or axis names (None: nothing)."""
    axis = arr.ndim - 3
    whole = tuple(1 if i == axis else n for i, n in enumerate(arr.shape))
    if tuple(arr.chunks) != whole:
        return f"array {p!r} has chunks {tuple(arr.chunks)}, not one slice each {whole}"
    if arr.shards is not None and any(s != n for i, (s, n) in enumerate(zip(arr.shards, arr.shape)) if i != axis):
        return f"array {p!r} has shards {tuple(arr.shards)}, not whole slices of {tuple(arr.shape)}"
    names = arr.metadata.dimension_names
    want = DIMENSION_NAMES.get(arr.ndim)
    if names is not None and tuple(names) != want:
        return f"array {p!r} has dimension_names {tuple(names)}; the schema says {want}"
    return None


def _check_subject(root: Any, sid: str, a: Mapping[str, Any], site: SiteEntry | None, *,
                   deep: bool, consolidated: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of one complete subject (``root``: the cohort's root group;
    ``consolidated``: its nodes' metadata in the consolidated metadata, path -> metadata,
    where that copy is current: each array's must equal the array's own)."""
    problems: list[str] = []
    warnings: list[str] = []
    problem = attrs_problem(a, sid)
    if problem:
        return [problem], warnings
    shape = tuple(a["shape_zyx"])
    vox = np.sqrt((np.asarray(a["affine"], dtype=float)[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(vox, a["voxel_size_mm"], rtol=1e-4):
        problems.append(f"voxel_size_mm {a['voxel_size_mm']} disagrees with the affine's {vox.round(4).tolist()}")
    try:
        group = root[join(SUBJECTS, sid)]
    except Exception as exc:  # noqa: BLE001
        return problems + [f"its group cannot be opened ({type(exc).__name__}: {exc})"], warnings
    if "mrf" not in a["arrays"]:
        problems.append("no 'mrf' array listed")
    record = a.get(CHUNKS_KEY) or {}
    unnamed: list[str] = []
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
        found = array_problem(p, arr, shape, n_frames) or _layout_problem(p, arr)
        if found:
            problems.append(found)
            continue
        if arr.metadata.dimension_names is None:
            unnamed.append(p)
        if consolidated is not None:
            copy = consolidated.get(p)
            if copy is None or copy.to_dict() != arr.metadata.to_dict():
                problems.append(f"array {p!r}: the consolidated metadata, current by the subject's revision, "
                                f"{'lacks it' if copy is None else 'describes it otherwise'}; readers would "
                                "use it: run simulate, import or batch again to rewrite it")
        if p == "mrf":
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
    if unnamed:
        warnings.append(f"{len(unnamed)} array(s) without dimension_names (written by an older mrfengine; read "
                        f"alike): {', '.join(unnamed[:3])}{', ...' if len(unnamed) > 3 else ''}")
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

