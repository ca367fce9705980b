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
    ROOT_KEY,
    SCHEMA_VERSION,
    STAGING_PREFIX,
    SUBJECT_KEY,
    SUBJECTS,
    SiteEntry,
    SubjectEntry,
    array_write_config,
    default_compressor,
    is_complete,
    normalize_subject_id,
)
from .store import (
    chunk_coords,
    has_keys,
    is_local_path,
    join,
    list_keys,
    local_folder,
    location,
    open_root,
    open_store,
    require_writable,
    stored_chunk_keys,
)
from .validate import subject_state

__all__ = ["create_cohort", "open_cohort_for_writing", "register_subjects", "SubjectWriter", "delete_node"]

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


def open_cohort_for_writing(path: Any):
    """Open an existing cohort for writing (schema version checked, the store asked
    whether it can be written); returns ``(root group, root attributes)``."""
    group, attrs, _ = open_root(path, writable=True)
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
    """Whether ``key`` is a chunk of one of ``arrays`` (node path -> zarr array): the key
    its chunk-key encoding gives a chunk inside the array."""
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
        return (len(coords) == len(arr.cdata_shape) and all(0 <= c < n for c, n in zip(coords, arr.cdata_shape))
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
        if head and not NAME_RE.match(head):
            raise ValidationError(
                f"arrays live at the subject level or one group deep (e.g. {_GROUPS_OF_SUBJECT}); got {path!r}")
        check_name(name, "array name")
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
            n = len(stored_chunk_keys(arr) & {arr.metadata.encode_chunk_key(c) for c in chunk_coords(arr)})
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
