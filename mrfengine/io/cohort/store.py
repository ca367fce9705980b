"""Where a cohort lives: any zarr store, reached only through zarr's API.

A cohort is named by

* a local path: a folder (:class:`zarr.storage.LocalStore`), or a ``.zip`` file holding
  the hierarchy with paths relative to its root (:class:`zarr.storage.ZipStore`,
  read-only);
* a URL with a protocol (``s3://bucket/c.zarr``, ``memory://...``;
  :class:`zarr.storage.FsspecStore`, through fsspec);
* a zarr store object (``ZipStore``, ``FsspecStore``, ``MemoryStore``, ...), a
  :class:`zarr.storage.StorePath` (a cohort inside a larger hierarchy) or an open
  :class:`zarr.Group` of the cohort's root.

Every read goes through zarr (groups, attributes, the store's key listing); nothing here
parses a ``zarr.json`` or walks a folder.  :func:`open_root` opens and checks the root
group; :func:`require_writable` asks the store, without writing anything, whether it
can take writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import StoreError
from .schema import ROOT_KEY, SCHEMA_VERSION

__all__ = ["open_store", "open_root", "location", "local_folder", "is_local_path", "require_writable",
           "stored_chunk_keys", "chunk_coords", "storage_coords", "chunk_presence", "stored_chunk_count",
           "chunk_selection", "consolidated_root", "list_dir", "list_keys", "has_keys", "key_exists", "join"]

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


def is_local_path(cohort: Any) -> bool:
    """Whether ``cohort`` names a store by a local path (not a URL, not a store object)."""
    return isinstance(cohort, os.PathLike) or (isinstance(cohort, str) and not _URL_RE.match(cohort))


def join(*parts: str) -> str:
    """A store key from its parts (empty parts skipped): ``join("", "subjects", "sub-01")``."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def open_store(cohort: Any, *, writable: bool = False) -> Any:
    """The :class:`zarr.storage.StorePath` of a cohort named by a path, URL, store,
    store path or group (see the module docstring).  Nothing is created or opened yet;
    a local folder is opened read-only unless ``writable``."""
    from zarr.abc.store import Store
    from zarr.storage import LocalStore, StorePath, ZipStore

    sp = getattr(cohort, "store_path", None)  # a zarr.Group, or a Cohort
    if isinstance(sp, StorePath):
        return sp
    if isinstance(cohort, StorePath):
        return cohort
    if isinstance(cohort, Store):
        return StorePath(cohort, "")
    if isinstance(cohort, str) and _URL_RE.match(cohort):
        from zarr.storage import FsspecStore

        try:
            # fsspec's local file system makes no parent folders unless asked (object stores have none).
            options = {"auto_mkdir": True} if cohort.lower().startswith(("file:", "local:")) else None
            return StorePath(FsspecStore.from_url(cohort, read_only=not writable, storage_options=options), "")
        except (ImportError, ValueError, TypeError, OSError) as exc:
            raise StoreError(f"{cohort}: cannot open the store ({type(exc).__name__}: {exc})") from exc
    if not isinstance(cohort, (str, os.PathLike)):
        raise StoreError(f"a cohort is a path, a URL or a zarr store; got {type(cohort).__name__}")
    path = Path(cohort)
    if path.suffix.lower() == ".zip" and path.is_file():
        return StorePath(ZipStore(path, mode="r"), "")
    return StorePath(LocalStore(path, read_only=not writable), "")


def location(sp: Any) -> str:
    """How messages name a store: the folder or zip file, else the store's URL."""
    from zarr.storage import LocalStore, ZipStore

    store = sp.store
    if isinstance(store, LocalStore):
        return str(store.root / sp.path) if sp.path else str(store.root)
    base = str(store.path) if isinstance(store, ZipStore) else str(store)
    return f"{base}/{sp.path}" if sp.path else base


def local_folder(sp: Any) -> Path | None:
    """The folder of a store path on a local disk (a :class:`zarr.storage.LocalStore`), else None."""
    from zarr.storage import LocalStore

    if isinstance(sp.store, LocalStore):
        return Path(sp.store.root) / sp.path if sp.path else Path(sp.store.root)
    return None


def list_dir(sp: Any, rel: str = "") -> list[str]:
    """Names directly under ``rel`` (keys and key prefixes), through the store's listing."""
    prefix = join(sp.path, rel)

    async def collect() -> list[str]:
        return [k async for k in sp.store.list_dir(prefix + "/" if prefix else "")]

    return sorted(set(_sync(collect())))


def list_keys(sp: Any, rel: str = "") -> list[str]:
    """Every key under ``rel``, relative to the store path ``sp``."""
    base = join(sp.path, rel)
    prefix = base + "/" if base else ""
    strip = len(sp.path) + 1 if sp.path else 0

    async def collect() -> list[str]:
        return [k async for k in sp.store.list_prefix(prefix)]

    return sorted(k[strip:] for k in _sync(collect()) if k.startswith(prefix))


def has_keys(sp: Any, rel: str) -> bool:
    """Whether the store holds anything under ``rel``."""
    return bool(list_dir(sp, rel))


def key_exists(sp: Any, rel: str) -> bool:
    """Whether ``rel`` is a key of the store (an object, not a prefix)."""
    from zarr.storage import FsspecStore

    key = join(sp.path, rel)
    if not _sync(sp.store.exists(key)):
        return False
    if not isinstance(sp.store, FsspecStore):
        return True

    # fsspec also says that a folder (file://) or a prefix (s3://, gs://) exists: an object has nothing under it.
    async def has_children() -> bool:
        async for _ in sp.store.list_prefix(key + "/"):
            return True
        return False

    return not _sync(has_children())


def chunk_coords(array: Any) -> Iterator[tuple[int, ...]]:
    """Coordinates of every chunk of a zarr array."""
    import itertools

    return itertools.product(*(range(n) for n in array.cdata_shape))


def storage_coords(array: Any) -> Iterator[tuple[int, ...]]:
    """Coordinates of every stored object of a zarr array: its shards, or its chunks when
    it is not sharded (the coordinates ``array.metadata.encode_chunk_key`` takes)."""
    import itertools

    outer = array.shards or array.chunks
    return itertools.product(*(range(-(-n // s)) for n, s in zip(array.shape, outer)))


def chunk_selection(array: Any, coords: tuple[int, ...]) -> tuple[slice, ...]:
    """The region of the array one (inner) chunk covers."""
    return tuple(slice(c * s, min((c + 1) * s, n)) for c, s, n in zip(coords, array.chunks, array.shape))


def stored_chunk_keys(array: Any) -> set[str]:
    """Keys (relative to the array, e.g. ``c/0/3/0/0``) of the objects stored for a zarr
    array, its chunks or (sharded) its shards: one listing of its prefix (a store that
    cannot list is asked about each)."""
    import asyncio

    store_path = array.store_path
    store = store_path.store
    prefix = f"{store_path.path}/" if store_path.path else ""
    if not store.supports_listing:
        keys = [array.metadata.encode_chunk_key(c) for c in storage_coords(array)]

        async def probe() -> list[bool]:
            return list(await asyncio.gather(*(store.exists(prefix + k) for k in keys)))

        return {k for k, there in zip(keys, _sync(probe())) if there}

    async def collect() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    return {k[len(prefix):] for k in _sync(collect())}


def _sharding_codec(array: Any) -> Any:
    from zarr.codecs import ShardingCodec

    for codec in getattr(array.metadata, "codecs", ()):
        if isinstance(codec, ShardingCodec):
            return codec
    raise StoreError(f"{array.name}: a sharded array without a sharding codec")


def chunk_presence(array: Any) -> tuple[Any, dict[tuple[int, ...], str]]:
    """Which (inner) chunks of a zarr array are stored.

    An unsharded array's chunks are the store's keys (one listing).  A sharded array's are
    the chunks each stored shard's index lists (zarr's sharding codec reads and checks it:
    a CRC32C over the index, which sits at the shard's end, so a truncated shard fails the
    check); a shard not stored holds none.

    Returns
    -------
    present : ndarray of bool, shape ``array.cdata_shape``
    unreadable : dict
        Shard coordinates -> why its index cannot be read (truncated or corrupt shard).
    """
    import asyncio

    import numpy as np
    from zarr.storage import StorePath

    grid = tuple(array.cdata_shape)
    present = np.zeros(grid, dtype=bool)
    keys = stored_chunk_keys(array)
    encode = array.metadata.encode_chunk_key
    if array.shards is None:
        for c in chunk_coords(array):
            present[c] = encode(c) in keys
        return present, {}
    codec = _sharding_codec(array)
    per = tuple(s // c for s, c in zip(array.shards, array.chunks))
    sp = array.store_path
    stored = [c for c in storage_coords(array) if encode(c) in keys]

    async def index(c: tuple[int, ...]) -> Any:
        try:
            return await codec._load_shard_index_maybe(StorePath(sp.store, join(sp.path, encode(c))), per)
        except Exception as exc:  # noqa: BLE001 - a damaged index (CRC mismatch, short object)
            return exc

    async def indexes() -> list[Any]:
        return list(await asyncio.gather(*(index(c) for c in stored)))

    unreadable: dict[tuple[int, ...], str] = {}
    for c, idx in zip(stored, _sync(indexes())):
        if isinstance(idx, BaseException):
            unreadable[c] = f"{type(idx).__name__}: {idx}"
            continue
        if idx is None:  # deleted since the listing
            continue
        region = tuple(slice(k * p, min((k + 1) * p, g)) for k, p, g in zip(c, per, grid))
        found = idx.get_full_chunk_map()
        present[region] = found[tuple(slice(0, r.stop - r.start) for r in region)]
    return present, unreadable


def stored_chunk_count(array: Any) -> int:
    """How many (inner) chunks of an array are stored (:func:`chunk_presence`); a shard
    whose index cannot be read is a :class:`StoreError`."""
    present, unreadable = chunk_presence(array)
    if unreadable:
        (c, why), = list(unreadable.items())[:1]
        raise StoreError(f"{array.name}: shard {array.metadata.encode_chunk_key(c)} cannot be read ({why})")
    return int(present.sum())


def consolidated_root(sp: Any) -> Any:
    """The cohort's root group opened through its consolidated metadata, or None when it
    has none (or it cannot be read): a node it lists opens with no read of the store, a
    node written after it is missing from it (callers check it is fresh, see
    :mod:`.read`)."""
    import warnings

    import zarr

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            group = zarr.open_group(store=sp.store, path=sp.path, mode="r", zarr_format=3, use_consolidated=True)
    except Exception:  # noqa: BLE001 - none, or unreadable: the store is read node by node
        return None
    return group if group.metadata.consolidated_metadata is not None else None


# --------------------------------------------------------------------------- the root
def open_root(cohort: Any, *, writable: bool = False) -> tuple[Any, dict[str, Any], Any]:
    """Open a cohort's root group, checked: a zarr v3 group holding a cohort of this
    schema version.

    Parameters
    ----------
    cohort : path, URL, zarr store, StorePath or Group
    writable : bool
        Open for writing (the store is asked first, :func:`require_writable`).

    Returns
    -------
    group : zarr.Group
    attrs : dict
        The root attributes ``mrfengine_cohort``.
    store_path : zarr.storage.StorePath

    Raises
    ------
    StoreError
        Missing path, not a zarr v3 group, not a cohort, other schema version, a store
        that cannot be read (or, ``writable``, written).
    """
    import zarr
    from zarr.errors import ContainsArrayError, NodeNotFoundError

    if is_local_path(cohort):
        if not os.path.lexists(cohort):
            raise StoreError(f"{Path(cohort)}: no such cohort (the path does not exist)")
    sp = open_store(cohort)
    where = location(sp)
    try:
        group = zarr.open_group(store=sp.store, path=sp.path, mode="r", zarr_format=3, use_consolidated=False)
    except (NodeNotFoundError, FileNotFoundError):
        hint = " (a zarr v2 store?)" if _v2(sp) else ""
        raise StoreError(f"{where}: not a cohort: not a zarr v3 group (no zarr.json){hint}") from None
    except ContainsArrayError:
        raise StoreError(f"{where}: not a cohort: zarr.json does not describe a zarr v3 group") from None
    except OSError as exc:
        raise StoreError(f"{where}: cannot read the store ({exc.strerror or exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any other failure to parse the root metadata
        raise StoreError(f"{where}: not a cohort: unreadable zarr.json ({type(exc).__name__}: {exc})") from exc
    attrs = group.attrs.get(ROOT_KEY)
    if not isinstance(attrs, dict):
        raise StoreError(f"{where}: a zarr group but not an mrfengine cohort (no {ROOT_KEY!r} attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{where}: cohort schema version {version!r} is not supported: this mrfengine reads version "
            f"{SCHEMA_VERSION} (docs/cohort-format.md)"
        )
    if writable:
        sp = open_store(cohort, writable=True)
        require_writable(sp)
        group = zarr.open_group(store=sp.store, path=sp.path, mode="r+", zarr_format=3, use_consolidated=False)
    return group, dict(attrs), sp


def _v2(sp: Any) -> bool:
    try:
        return key_exists(sp, ".zgroup")
    except Exception:  # noqa: BLE001 - only a hint
        return False


# --------------------------------------------------------------------------- writability
#: Less free space than this on a local store's file system counts as full.
_MIN_FREE_BYTES = 4096


def require_writable(cohort: Any, *, action: str = "write into the store", because: str | None = None) -> None:
    """Check, without writing anything, that a cohort's store can take writes and deletes.

    The store is asked what zarr knows of it (``read_only``, ``supports_writes``,
    ``supports_deletes``: replacing a subject or a derived group deletes keys); a local
    folder is also asked of its permissions (``os.access``: a read-only mount or folder,
    no permission) and of its file system's free space (``os.statvfs``).  A remote store
    cannot say more: a permission it lacks shows at the first write, which fails that
    subject without marking it complete.

    Raises
    ------
    StoreError
        ``<store>: cannot <action> (<why>)[; <because>]``.
    """
    sp = open_store(cohort, writable=True)
    store = sp.store
    kind = type(store).__name__
    reason = None
    if store.read_only:
        reason = f"the store is read-only (a {kind} opened for reading)"
    elif not store.supports_writes:
        reason = f"a {kind} does not support writes"
    elif not store.supports_deletes:
        reason = f"a {kind} cannot delete keys, which replacing a subject or derived maps needs"
    else:
        reason = _local_problem(local_folder(sp))
    if reason:
        raise StoreError(f"{location(sp)}: cannot {action} ({reason})" + (f"; {because}" if because else ""))


def _local_problem(folder: Path | None) -> str | None:
    if folder is None:
        return None
    existing = [f for f in (folder, folder / "subjects") if f.is_dir()]
    for f in existing:
        if not os.access(f, os.W_OK | os.X_OK):
            return f"{f} is not writable: permission denied or a read-only file system"
    if existing:
        try:
            st = os.statvfs(existing[-1])
        except (OSError, AttributeError):  # no statvfs (Windows): the first write will tell
            return None
        if st.f_bavail * st.f_frsize < _MIN_FREE_BYTES:
            return "no space left on its file system"
    return None
