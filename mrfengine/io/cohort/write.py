"""Writing a cohort: :func:`create_cohort`, :func:`open_cohort_for_writing`,
:func:`register_subjects` and :class:`SubjectWriter`, whose subjects count only once
complete.

Crash safety (decided here; ``docs/cohort-format.md``, *Completion and resumption*):

* **Completion is an attribute, written last.**  A subject group is created with
  ``attributes["mrfengine_subject"]["complete"]`` false, every array is written, and
  only then are the attributes rewritten with the array list, the chunks stored per
  array and ``complete: true`` (:meth:`SubjectWriter.finish`).  Readers go by that
  record alone (through zarr's attributes), so on any store an interrupted writer
  leaves a subject that readers treat as absent and the next writer rewrites.
* **Replacing a complete subject** (``staging=True``, ``import --force``) writes the
  new copy, complete, into a hidden group ``subjects/.staging-<id>-<random>`` and
  then puts it in place.  On a local folder that is two renames (the old folder
  aside, the staging folder in; the old one deleted after), an optimisation that
  never leaves the subject absent for longer than between two renames.  A store
  without renames (an object store, a ``MemoryStore``) first deletes the old
  subject's completion record, then the rest of it, then copies the staging group's
  keys into place with the subject's own metadata (its completion record) last, and
  deletes the staging group: an interruption leaves the subject absent or
  incomplete, never a half-written subject marked complete, and the complete new
  copy stays under its hidden name.
* **Deleting only what we wrote.**  Replacing a store, an incomplete subject, a
  replaced subject or a derived group deletes the node's own metadata first (its
  completion record), then the chunks of its arrays and the metadata of its nodes,
  listed through the store (:func:`delete_node`).  Keys zarr and mrfengine did not
  write stay (and a store holding any is not replaced at all); on a local folder,
  links are never followed or deleted, and folders left empty are removed.

The local-folder specifics are confined to :func:`_rename_in`, :func:`_local_links` and
:func:`_prune`; every other access goes through zarr.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..._validate import NAME_RE, check_name
from ...errors import StoreError, ValidationError
from ...sequence import Sequence
from .schema import (
    _GROUPS_OF_SUBJECT,
    CHUNKS_KEY,
    REPLACED_PREFIX,
    REVISION_KEY,
    ROOT_KEY,
    SCHEMA_VERSION,
    STAGING_PREFIX,
    SUBJECT_KEY,
    SUBJECTS,
    SiteEntry,
    SubjectEntry,
    array_layout,
    array_write_config,
    default_compressor,
    is_complete,
    normalize_subject_id,
)
from .store import (
    consolidated_root,
    has_keys,
    is_local_path,
    join,
    list_keys,
    local_folder,
    location,
    open_root,
    open_store,
    require_writable,
    stored_chunk_count,
)
from .validate import subject_state

__all__ = ["create_cohort", "open_cohort_for_writing", "register_subjects", "SubjectWriter", "PlaneWriter",
           "write_planes", "delete_node", "consolidate", "drop_consolidated", "new_revision"]

log = logging.getLogger(__name__)

#: Files an older mrfengine's batch created to probe writability (ours to delete).
_OLD_PROBE = ".mrfengine-write-test-"


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


# --------------------------------------------------------------------------- the cohort
def create_cohort(
    path: Any,
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
    path : path or zarr store
        A new folder (``.zarr`` by convention), or a writable zarr store (object or
        URL) with nothing at its root.
    sites : mapping of str to SiteEntry
    subjects : mapping of str to SubjectEntry, optional
        Subjects planned (simulation) or known so far (import).
    kind : {"simulated", "imported"}
    generator : mapping, optional
        JSON-compatible description of how the data are made (preset, seed,
        configuration); a resumed simulation must match it.
    overwrite : bool
        Replace an existing cohort store at ``path`` (see :func:`_remove`:
        only a store whose root group carries the cohort attribute, and only if
        it holds nothing but the store's own keys); otherwise an existing path is
        an error.

    Returns
    -------
    zarr.Group
        The root group, open for writing.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is false, or it is no cohort store
        (nothing is deleted then), or the store cannot be written.
    """
    import zarr

    from ... import __version__

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
    local = is_local_path(path)
    if local:
        path = Path(path)
        exists = os.path.lexists(path)
    else:
        exists = has_keys(open_store(path), "")
    if exists:
        if not overwrite:
            raise StoreError(f"{path if local else location(open_store(path))}: already exists; choose a new path "
                             "or overwrite it")
        _remove(path)
    sp = open_store(path, writable=True)
    require_writable(sp, action="create the cohort")
    # Mode "a", never "w": zarr's "w" empties the whole store.
    tmp_root = zarr.open_group(store=sp.store, path=sp.path, mode="a", zarr_format=3)
    tmp_root.require_group(SUBJECTS)
    # The root attributes last: until they exist the store is not a cohort.
    tmp_root.attrs.update({ROOT_KEY: attrs})
    return tmp_root


def open_cohort_for_writing(path: Any, *, drop_consolidated_now: bool = True):
    """Open an existing cohort for writing (schema version checked, the store asked
    whether it can be written); returns ``(root group, root attributes)``.

    The consolidated metadata is removed at once (a writer is about to change the
    hierarchy) unless ``drop_consolidated_now`` is false: then the caller checks its
    inputs first and calls :func:`drop_consolidated` before its first write, so a
    refused call leaves the store byte for byte as it was."""
    group, attrs, sp = open_root(path, writable=True)
    if drop_consolidated_now:
        drop_consolidated(sp)
    return group, attrs


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


# --------------------------------------------------------------------------- deleting our own keys
def _classify(sp: Any, rel: str) -> tuple[list[str], list[str]]:
    """The keys under ``rel`` (relative to ``sp``) that zarr and mrfengine wrote, in the
    order to delete them, and all others (not ours to delete).

    Ours: every node's ``zarr.json``, the chunks of an array (keys its chunk-key
    encoding decodes to a chunk inside the array), and an older batch's write probes.
    The node's own ``zarr.json`` (its completion record) comes first, then chunks, then
    array metadata, then group metadata from the deepest up.
    """
    import zarr

    from zarr.core.common import ZARR_JSON

    keys = list_keys(sp, rel)
    base = join(rel)
    links = set(_local_links(local_folder(sp), base))
    metas = [k for k in keys if k.rsplit("/", 1)[-1] == ZARR_JSON]
    nodes = {k[: -len(ZARR_JSON)].rstrip("/"): k for k in metas}
    arrays: dict[str, Any] = {}
    for node in nodes:
        try:
            arr = zarr.open_array(store=sp.store, path=join(sp.path, node), mode="r", zarr_format=3)
        except Exception:  # noqa: BLE001 - a group, or metadata zarr cannot read: its keys are not chunks
            continue
        arrays[node] = arr
    chunks: list[str] = []
    probes: list[str] = []
    foreign: list[str] = []
    for k in keys:
        if k in links:
            foreign.append(k)
        elif k in nodes.values():
            continue
        elif k.rsplit("/", 1)[-1].startswith(_OLD_PROBE):
            probes.append(k)
        elif _is_chunk(k, arrays):
            chunks.append(k)
        else:
            foreign.append(k)
    foreign.extend(link for link in links if link not in keys)
    own = nodes.get(base)
    rest = [m for m in metas if m != own and m not in links]
    array_meta = [m for m in rest if m[: -len(ZARR_JSON)].rstrip("/") in arrays]
    group_meta = sorted((m for m in rest if m not in array_meta), key=lambda m: m.count("/"), reverse=True)
    ordered = ([own] if own is not None and own not in links else []) + probes + chunks + array_meta + group_meta
    return ordered, sorted(set(foreign))


def _is_chunk(key: str, arrays: Mapping[str, Any]) -> bool:
    """Whether ``key`` is a chunk (or shard) of one of ``arrays`` (node path -> zarr array):
    the key its chunk-key encoding gives a stored object inside the array."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        node = "/".join(parts[:i])
        arr = arrays.get(node)
        if arr is None:
            continue
        rel = "/".join(parts[i:])
        enc = arr.metadata.chunk_key_encoding
        sep = getattr(enc, "separator", "/")
        body = rel[2:] if getattr(enc, "name", "default") == "default" and rel.startswith("c" + sep) else rel
        try:
            coords = tuple(int(c) for c in body.split(sep))
        except ValueError:  # not a chunk key of this array
            return False
        grid = tuple(-(-n // c) for n, c in zip(arr.shape, arr.shards or arr.chunks))  # shards, or chunks
        return (len(coords) == len(grid) and all(0 <= c < n for c, n in zip(coords, grid))
                and arr.metadata.encode_chunk_key(coords) == rel)
    return False


def _local_links(folder: Path | None, rel: str) -> list[str]:
    """Keys (relative to the store path) of the links under ``rel`` of a local folder:
    zarr lists a linked file as a key and skips a linked folder; neither is ours."""
    if folder is None:
        return []
    top = folder / rel if rel else folder
    found = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                found.append(p.relative_to(folder).as_posix())
    return found


def _prune(folder: Path | None, rel: str, deleted: list[str], *, keep_top: bool) -> None:
    """Remove the local folders that ``deleted`` keys leave empty (deepest first)."""
    if folder is None:
        return
    top = (folder / rel) if rel else folder
    dirs: set[Path] = set()
    for key in deleted:
        d = (folder / key).parent
        while d == top or top in d.parents:
            dirs.add(d)
            d = d.parent
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        if keep_top and d == top:
            continue
        try:
            d.rmdir()
        except OSError:  # not empty (foreign files), or gone
            pass


def delete_node(sp: Any, rel: str, *, keep_top: bool = False) -> list[str]:
    """Delete the node at ``rel`` (a subject, a derived group, a staging copy): its own
    metadata first, then the chunks and metadata below it (see :func:`_classify`).

    Returns
    -------
    list of str
        The keys left because they are not ours (empty: the node is gone).
    """
    ours, foreign = _classify(sp, rel)
    store = sp.store
    for key in ours:
        _sync(store.delete(join(sp.path, key)))
    _prune(local_folder(sp), join(rel), ours, keep_top=keep_top)
    return foreign


def _remove(path: Any) -> None:
    """Delete the cohort store at ``path``, and nothing that is not provably its own.

    Raises
    ------
    StoreError
        ``path`` is a link or a file, its root group lacks the ``mrfengine_cohort``
        attribute (not a cohort: refused), or the store holds keys that zarr and
        mrfengine did not write (refused, named).  Nothing is deleted then.
    """
    import zarr

    local = isinstance(path, Path)
    if local and (path.is_symlink() or not path.is_dir()):
        raise StoreError(f"{path}: is not an mrfengine cohort (not a folder); refusing to delete it")
    sp = open_store(path)
    where = path if local else location(sp)
    try:
        group = zarr.open_group(store=sp.store, path=sp.path, mode="r", zarr_format=3, use_consolidated=False)
        ok = isinstance(group.attrs.get(ROOT_KEY), dict)
    except Exception:  # noqa: BLE001 - no group, or unreadable metadata: not provably a cohort
        ok = False
    if not ok:
        raise StoreError(f"{where}: is not an mrfengine cohort (no {ROOT_KEY!r} attribute in its zarr.json); "
                         "refusing to delete it")
    try:
        ours, foreign = _classify(sp, "")
    except OSError as exc:
        raise StoreError(f"{where}: cannot read the store to replace it ({exc.strerror or exc})") from exc
    if foreign:
        names = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise StoreError(f"{where}: holds {len(foreign)} file(s) that are not the cohort's ({names}); refusing to "
                         "delete the store: move them out first")
    wsp = open_store(path, writable=True)
    require_writable(wsp, action="replace the store")
    try:
        for key in ours:
            _sync(wsp.store.delete(join(wsp.path, key)))
    except OSError as exc:
        raise StoreError(f"{where}: cannot delete the old store ({exc.strerror or exc})") from exc
    _prune(local_folder(wsp), "", ours, keep_top=True)


# --------------------------------------------------------------------------- writing slices
def _plane_axis(array: Any) -> int:
    return array.ndim - 3


def _planes_per_shard(array: Any) -> int:
    axis = _plane_axis(array)
    return int((array.shards or array.chunks)[axis])


def write_planes(array: Any, lo: int, data: np.ndarray) -> None:
    """Write slices ``[lo, lo + n)`` of a cohort array (``n``: ``data``'s extent along the
    slice axis, ``z``), which must be whole shards.

    A shard is stored read-modify-write as a whole, so two writers of different slices of
    one shard lose each other's data; a slab that covers whole shards has the shards to
    itself, and any number of tasks (threads, processes, machines) can write disjoint
    slabs of one array at once.  Slab bounds must be multiples of the shard's slices
    (``array.shards``; the chunk's for an unsharded array), or the array's end.

    Raises
    ------
    ValidationError
        Bounds that split a shard, or data of another shape.
    """
    axis = _plane_axis(array)
    data = np.asarray(data)
    n_planes = int(array.shape[axis])
    hi = lo + (data.shape[axis] if data.ndim == array.ndim else -1)
    expect = tuple(hi - lo if i == axis else n for i, n in enumerate(array.shape))
    if data.shape != expect or lo < 0 or hi > n_planes:
        raise ValidationError(f"{array.name}: slices [{lo}, {hi}) of shape {expect} do not fit data of shape "
                              f"{data.shape} in an array of shape {tuple(array.shape)}")
    step = _planes_per_shard(array)
    if lo % step or (hi % step and hi != n_planes):
        raise ValidationError(f"{array.name}: slices [{lo}, {hi}) split a shard of {step} slices; a writer must own "
                              f"whole shards (bounds multiples of {step}, or {n_planes})")
    array[tuple(slice(lo, hi) if i == axis else slice(None) for i in range(array.ndim))] = data


class PlaneWriter:
    """A new array written slice by slice and stored shard by shard.

    Assign whole slices (``w[:, z] = frames`` for the MRF series, ``w[z] = plane`` for a
    map, ``w[...] = volume`` for all); each shard is written once, when all of its slices
    are given, so memory holds at most the shards being filled and no shard is rewritten.
    :meth:`flush` writes the slices of shards left partly filled (and only those slices:
    a slice never given stays absent, which the writer's chunk check then reports).
    Other attributes are the zarr array's.
    """

    def __init__(self, array: Any) -> None:
        self.array = array
        self._axis = _plane_axis(array)
        self._step = _planes_per_shard(array)
        self._pending: dict[int, tuple[np.ndarray, set[int]]] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "array":
            raise AttributeError(name)
        return getattr(self.array, name)

    def __repr__(self) -> str:
        return f"PlaneWriter({self.array.name}, shape={tuple(self.array.shape)})"

    def _planes(self, key: Any) -> tuple[int, int] | None:
        """``(lo, hi)`` of the slices a key selects, None for the whole array."""
        key = key if isinstance(key, tuple) else (key,)
        if key in ((Ellipsis,), (slice(None),)):
            return None
        lead, rest = key[:self._axis], key[self._axis:]
        if all(k == slice(None) for k in lead) and len(rest) == 1:
            (k,) = rest
            n = int(self.array.shape[self._axis])
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                z = int(k) + (n if k < 0 else 0)
                if 0 <= z < n:
                    return z, z + 1
            elif isinstance(k, slice) and k.step in (None, 1):
                lo, hi, _ = k.indices(n)
                if lo < hi:
                    return lo, hi
        raise ValidationError(f"{self.array.name}: assign whole slices (e.g. [:, z] for the MRF series, [z] for a "
                              f"map, [...] for all); got the selection {key!r}")

    def __setitem__(self, key: Any, value: Any) -> None:
        planes = self._planes(key)
        if planes is None:
            self._pending.clear()
            self.array[...] = value
            return
        lo, hi = planes
        shape = tuple(hi - lo if i == self._axis else n for i, n in enumerate(self.array.shape))
        value = np.asarray(value, dtype=self.array.dtype)
        if value.ndim == len(shape) - 1 and hi - lo == 1:  # one slice, given without its axis
            value = np.expand_dims(value, self._axis)
        if value.shape != shape:
            raise ValidationError(f"{self.array.name}: slices [{lo}, {hi}) have shape {shape}; got data of shape "
                                  f"{value.shape}")
        n = int(self.array.shape[self._axis])
        for z in range(lo, hi):
            s = z // self._step
            s_lo, s_hi = s * self._step, min(n, (s + 1) * self._step)
            if s not in self._pending:
                buf_shape = tuple(s_hi - s_lo if i == self._axis else m for i, m in enumerate(self.array.shape))
                self._pending[s] = (np.zeros(buf_shape, dtype=self.array.dtype), set())
            buf, given = self._pending[s]
            buf[self._index(z - s_lo)] = value[self._index(z - lo)]
            given.add(z)
            if len(given) == s_hi - s_lo:
                del self._pending[s]
                write_planes(self.array, s_lo, buf)

    def _index(self, z: int) -> tuple[Any, ...]:
        return (slice(None),) * self._axis + (z,)

    def flush(self) -> None:
        """Write the given slices of every partly filled shard (one writer: safe)."""
        pending, self._pending = self._pending, {}
        for s, (buf, given) in sorted(pending.items()):
            s_lo = s * self._step
            for z in sorted(given):
                self.array[self._index(z)] = buf[self._index(z - s_lo)]


# --------------------------------------------------------------------------- consolidated metadata
def new_revision() -> str:
    """A new random token for a subject's ``revision`` attribute (:data:`~.schema.REVISION_KEY`)."""
    return uuid.uuid4().hex


def drop_consolidated(cohort: Any) -> bool:
    """Remove the consolidated metadata of a cohort's root (a writer is about to change
    the hierarchy): the root's ``zarr.json`` is rewritten, with its attributes, without
    it, so no zarr reader sees a listing older than the store.  Returns whether there
    was any.  :func:`consolidate` writes it again once the writing is done."""
    import zarr

    sp = open_store(cohort, writable=True)
    if consolidated_root(sp) is None:
        return False
    group = zarr.open_group(store=sp.store, path=sp.path, mode="r+", zarr_format=3, use_consolidated=False)
    group.attrs.put(dict(group.attrs))  # the metadata, without the consolidated copy (not read)
    return True


def consolidate(cohort: Any) -> bool:
    """Write the consolidated metadata of a cohort: every node's metadata in the root's
    ``zarr.json`` (zarr-python's v3 extension, :func:`zarr.consolidate_metadata`), so a
    reader on a remote store opens every array of every subject without a request each.

    Called at the end of ``simulate``, ``import`` and ``batch``, with no other writer at
    work (it rewrites the root's ``zarr.json``).  Readers use it only where it is current
    (:class:`~.read.Cohort` compares each subject's attributes with its copy), and every
    writer removes it first (:func:`drop_consolidated`).  It is an optimisation: a
    failure is logged, never raised.  Returns whether it was written.
    """
    import warnings

    import zarr

    try:
        sp = open_store(cohort, writable=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(sp.store, path=sp.path or None, zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - an optimisation; readers fall back to node-by-node reads
        log.warning("%s: could not write consolidated metadata (%s: %s); readers read node by node",
                    cohort, type(exc).__name__, exc)
        return False
    return True


# --------------------------------------------------------------------------- subjects
class SubjectWriter:
    """Writes one subject; the subject counts only after :meth:`finish`.

    On creation an existing incomplete group of that id is deleted (its own keys,
    :func:`delete_node`); an existing complete one is an error unless
    ``overwrite``.  The group is created with ``complete: false``; :meth:`finish`
    writes the array list and ``complete: true`` last.

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
        in :meth:`finish`, put it in place of the existing subject (module
        docstring: two renames on a local folder, a copy completed last
        elsewhere).  Until then the existing subject stays complete and
        untouched; :meth:`abort` deletes the staging group.  ``overwrite`` must
        be given to replace a complete subject.
    revision : str, optional
        The subject's ``revision`` token (:data:`~.schema.REVISION_KEY`), which
        tells readers whether the consolidated metadata's copy of the subject is
        current; default a new random one.  A writer whose output is a function of
        its inputs gives one derived from them (the simulator: same seed, same bytes).
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
        revision: str | None = None,
    ) -> None:
        sid = normalize_subject_id(subject_id)
        # The subject's revision token (a new random one by default); a writer whose output is
        # a function of its inputs (the simulator: same seed, same bytes) gives one derived from them.
        self._revision = revision
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValidationError(f"affine must be a finite, invertible 4x4 matrix; got\n{affine}")
        if len(shape_zyx) != 3 or min(shape_zyx) < 1:
            raise ValidationError(f"shape_zyx must be three positive ints; got {shape_zyx}")
        subjects = root.require_group(SUBJECTS)
        self._root = root
        self._sp = root.store_path
        self._staging: str | None = None
        old, _ = subject_state(self._sp, sid)
        if is_complete(old) and not overwrite:
            raise StoreError(f"subject {sid} is already complete in the cohort; pass overwrite to replace it")
        if not staging and has_keys(self._sp, join(SUBJECTS, sid)):
            left = delete_node(self._sp, join(SUBJECTS, sid))
            if left:
                log.warning("%s: %s held %d file(s) mrfengine did not write; they are kept (%s)",
                            location(self._sp), sid, len(left), ", ".join(left[:3]))
        self.id = sid
        self.shape = tuple(int(s) for s in shape_zyx)
        self.n_frames = int(n_frames)
        if staging:
            self._staging = f"{STAGING_PREFIX}{sid}-{uuid.uuid4().hex[:12]}"
        drop_consolidated(self._sp)
        self._group = subjects.create_group(self._staging or sid)
        self._arrays: list[str] = []
        self._writers: dict[str, PlaneWriter] = {}
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

    def create(self, path: str, *, dtype: str, frames: bool = False,
               attrs: Mapping[str, Any] | None = None) -> PlaneWriter:
        """Create an empty array at ``path`` (e.g. ``truth/T1``): one chunk per slice, whole
        slices per shard, its ``dimension_names`` (:func:`~.schema.array_layout`).

        ``frames`` gives it the MRF shape (n_frames, Z, Y, X); otherwise (Z, Y, X).
        Returns a :class:`PlaneWriter`: assign slices to it (``mrf[:, z] = ...``) in any
        order; each shard is stored once all its slices are given (:meth:`finish` stores
        the rest and refuses a subject with a slice never given).
        """
        head, _, name = path.rpartition("/")
        if head and not NAME_RE.match(head):
            raise ValidationError(
                f"arrays live at the subject level or one group deep (e.g. {_GROUPS_OF_SUBJECT}); got {path!r}")
        check_name(name, "array name")
        z, y, x = self.shape
        shape = (self.n_frames, z, y, x) if frames else (z, y, x)
        parent = self._group.require_group(head) if head else self._group
        arr = parent.create_array(
            name, shape=shape, dtype=dtype, compressors=default_compressor(), fill_value=0,
            attributes=dict(attrs or {}), config=array_write_config(), **array_layout(shape, dtype),
        )
        if path not in self._arrays:
            self._arrays.append(path)
        self._writers[path] = PlaneWriter(arr)
        return self._writers[path]

    def write(self, path: str, data: np.ndarray, *, attrs: Mapping[str, Any] | None = None):
        """Create ``path`` and write a whole (Z, Y, X) or (n_frames, Z, Y, X) array."""
        data = np.asarray(data)
        frames = data.ndim == 4
        expect = ((self.n_frames,) if frames else ()) + self.shape
        if data.shape != expect:
            raise ValidationError(f"{path} must have shape {expect}; got {data.shape}")
        dtype = "uint8" if data.dtype == bool else str(data.dtype)
        writer = self.create(path, dtype=dtype, frames=frames, attrs=attrs)
        writer[...] = data.astype(dtype, copy=False)
        return writer.array

    def finish(self, **attrs: Any) -> None:
        """Mark the subject complete: the array list, the chunks stored per array
        (``stored_chunks``, checked: every chunk of every array), a new ``revision``
        and ``complete: true``, last."""
        if self._finished:
            return
        if "mrf" not in self._arrays:
            raise StoreError(f"{self.id}: cannot finish a subject without its 'mrf' array")
        for writer in self._writers.values():
            writer.flush()
        counts = {}
        for path in sorted(self._arrays):
            arr = self._group[path]
            n = stored_chunk_count(arr)
            if n != arr.nchunks:
                raise StoreError(f"{self.id}: array {path!r} has {n} of its {arr.nchunks} chunks stored; every "
                                 "slice must be written before the subject is finished")
            counts[path] = n
        self._attrs.update(attrs)
        self._attrs["arrays"] = sorted(self._arrays)
        self._attrs[CHUNKS_KEY] = counts
        self._attrs[REVISION_KEY] = self._revision or new_revision()
        self._attrs["complete"] = True
        self._group.attrs.update({SUBJECT_KEY: self._attrs})
        if self._staging is not None:
            self._swap_in()
        self._finished = True

    def _swap_in(self) -> None:
        """Put the complete staging group in place of ``subjects/<id>`` (module docstring)."""
        folder = local_folder(self._sp)
        if folder is not None:
            self._rename_in(folder / SUBJECTS)
        else:
            self._copy_in()
        self._staging = None

    def _rename_in(self, folder: Path) -> None:
        """Local folder: the old subject renamed aside, the staging folder renamed in,
        then the old one deleted."""
        new, target = folder / self._staging, folder / self.id
        aside = folder / f"{REPLACED_PREFIX}{self.id}-{uuid.uuid4().hex[:12]}"
        if os.path.lexists(target):
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except OSError:
                os.rename(aside, target)  # the old subject back in place
                raise
            self._discard_replaced(join(SUBJECTS, aside.name))
        else:
            os.rename(new, target)

    def _copy_in(self) -> None:
        """A store without renames: the old subject deleted (its completion record first),
        the staging group's keys copied into place with the subject's own metadata last,
        the staging group deleted."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.common import ZARR_JSON

        target, source = join(SUBJECTS, self.id), join(SUBJECTS, self._staging)
        if has_keys(self._sp, target):
            left = delete_node(self._sp, target)
            if left:
                raise StoreError(f"{location(self._sp)}: {self.id} holds {len(left)} key(s) mrfengine did not write "
                                 f"({', '.join(left[:3])}); the new copy stays in {source}")
        keys = list_keys(self._sp, source)
        own = f"{source}/{ZARR_JSON}"
        store, proto = self._sp.store, default_buffer_prototype()
        # Node metadata before chunks (a partial copy stays recognisably ours, see _classify),
        # the subject's own metadata, its completion record, last.
        for key in sorted(keys, key=lambda k: (k == own, not k.endswith("/" + ZARR_JSON))):
            data = _sync(store.get(join(self._sp.path, key), prototype=proto))
            if data is None:
                raise StoreError(f"{location(self._sp)}: {key} vanished while {self.id} was put in place; the new "
                                 f"copy stays in {source}")
            _sync(store.set(join(self._sp.path, target + key[len(source):]), data))
        delete_node(self._sp, source)

    def _discard_replaced(self, aside: str) -> None:
        """Delete the replaced subject's own keys; anything else found in it stays (logged)."""
        try:
            foreign = delete_node(self._sp, aside)
        except OSError as exc:  # the new subject is in place; a leftover hidden folder is harmless
            log.warning("%s: could not delete the replaced subject's folder %s (%s)", self.id, aside, exc)
            return
        if foreign:
            log.warning("%s: the replaced subject %s held %d file(s) mrfengine did not write; they are kept "
                        "in %s", location(self._sp), self.id, len(foreign), aside)

    def abort(self) -> None:
        """Delete the staging group of an unfinished writer (nothing else is touched)."""
        if self._finished or self._staging is None:
            return
        try:
            delete_node(self._sp, join(SUBJECTS, self._staging))
        except OSError as exc:
            log.warning("%s: could not delete the staging group %s (%s)", self.id, self._staging, exc)
        self._staging = None
