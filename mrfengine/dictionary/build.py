"""Per-slot dictionary simulation and the on-disk dictionary cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .._atomic import atomic_write_text, temp_pattern
from ..errors import DictionaryError, InputFileError
from ..sequence import Sequence
from .core import Dictionary, Separable
from .grid import ParameterGrid, paper_grid
from .simulate import SIGNAL_MODEL_VERSION, longitudinal_magnetisation, transverse_factor

__all__ = ["simulate_dictionary", "SliceDictionaries", "DictionaryCache", "default_cache_dir"]

log = logging.getLogger(__name__)

# Bump when what a cache entry holds changes (2: separable factors added).
CACHE_FORMAT = 2


def simulate_dictionary(
    sequence: Sequence,
    slot: int,
    grid: ParameterGrid | None = None,
    *,
    dtype: type = np.float32,
) -> Dictionary:
    """Simulate the magnitude dictionary of one excitation slot.

    The Mz recursion runs once per (T1, B1) pair; each atom is then that pair's
    ``|sin(b a_i) Mz_i|`` times ``exp(-TE_i / T2*)``, so the cost is one
    multiply per atom sample.

    Parameters
    ----------
    sequence : Sequence
    slot : int
        Excitation slot (0-based); see :meth:`Sequence.slot_of_slice`.
    grid : ParameterGrid, optional
        Defaults to :func:`paper_grid`.
    dtype : float32 or float64

    Returns
    -------
    Dictionary
        Atoms (n_atoms, n_measurements) with parameters T1 (ms), T2star (ms),
        B1, and metadata naming the sequence, slot, grid and signal model.
    """
    grid = paper_grid() if grid is None else grid
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise DictionaryError(f"dtype must be float32 or float64; got {dtype}")
    t1 = np.asarray(grid.t1_ms)
    b1 = np.asarray(grid.b1)
    nb, nt1 = b1.size, t1.size
    mz = longitudinal_magnetisation(sequence, slot, np.tile(t1, nb), np.repeat(b1, nt1))
    fa = np.deg2rad(np.asarray(sequence.flip_angle_deg))
    amp = np.abs(np.sin(np.repeat(b1, nt1)[:, None] * fa[None, :]) * mz).astype(dtype)
    amp = amp.reshape(nb, nt1, -1)
    decay = transverse_factor(sequence, grid.t2star_ms).astype(dtype)
    keep = grid.keep_mask()
    counts = keep.sum(axis=1)
    n_per_b1 = int(counts.sum())
    atoms = np.empty((nb, n_per_b1, sequence.n_measurements), dtype=dtype)
    start = 0
    for i in range(nt1):
        stop = start + int(counts[i])
        if stop > start:
            np.multiply(amp[:, i, None, :], decay[keep[i]][None, :, :], out=atoms[:, start:stop, :])
        start = stop
    meta = {
        "signal_model": SIGNAL_MODEL_VERSION,
        "sequence": sequence.to_dict(),
        "slot": int(slot),
        "grid": grid.to_dict(),
    }
    i1, i2 = np.nonzero(keep)  # row-major: the atom order within one B1
    separable = Separable(
        amplitude=amp.reshape(nb * nt1, -1),
        decay=decay,
        pair=(np.arange(nb)[:, None] * nt1 + i1[None, :]).ravel(),
        decay_index=np.tile(i2, nb),
    )
    return Dictionary(atoms.reshape(nb * n_per_b1, -1), grid.atom_parameters(dtype), metadata=meta,
                      separable=separable)


def default_cache_dir() -> Path:
    """``$MRFENGINE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mrfengine``, else ``~/.cache/mrfengine``."""
    env = os.environ.get("MRFENGINE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mrfengine"


class DictionaryCache:
    """Simulated dictionaries on disk, keyed by a hash of what made them.

    The key covers the signal-model version, the entry format, the sequence
    (not its name), the slot, the grid and the dtype, so a changed input never returns a stale
    dictionary.  Entries are written to a temporary name and renamed: a crash
    never leaves a half-written entry under a valid key.

    The folder carries a ``CACHEDIR.TAG`` (the Cache Directory Tagging
    specification, https://bford.info/cachedir/) naming mrfengine, written
    when the cache creates the folder or finds it empty (or holding only
    cache entries, as caches made before the tag did).  :meth:`clear`
    deletes only the cache's own entries, and only in a tagged folder.
    """

    TAG = "CACHEDIR.TAG"
    SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
    _OWNER = "# mrfengine dictionary cache"
    _CREATED = "# mrfengine created this folder"
    _ENTRY = re.compile(r"[0-9a-f]{32}\.npz")
    # Temporaries of entries and of the tag that a killed process left: as written now
    # (mrfengine._atomic), and as written before (".<name>.tmp<pid>").
    _TEMP = re.compile("|".join((temp_pattern(r"[0-9a-f]{32}\.npz"), temp_pattern(re.escape(TAG)),
                                 r"\.[0-9a-f]{32}\.npz\.tmp[0-9]+", rf"\.{re.escape(TAG)}\.tmp[0-9]+")))

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir() / "dictionaries"

    @classmethod
    def is_own_file(cls, name: str) -> bool:
        """Whether ``name`` is a file the cache writes: an entry (``<32 hex>.npz``) or a temporary (entry's, tag's)."""
        return bool(cls._ENTRY.fullmatch(name) or cls._TEMP.fullmatch(name))

    def is_tagged(self) -> bool:
        """Whether the folder carries mrfengine's ``CACHEDIR.TAG``."""
        try:
            lines = (self.root / self.TAG).read_text(errors="replace").splitlines()
        except OSError:
            return False
        return bool(lines) and lines[0].strip() == self.SIGNATURE and self._OWNER in lines

    def _tag(self, created: bool) -> None:
        text = (f"{self.SIGNATURE}\n{self._OWNER}\n" + (f"{self._CREATED}\n" if created else "")
                + "# This file is a cache directory tag: backup tools may skip this folder.\n"
                  "# For information about cache directory tags, see https://bford.info/cachedir/\n"
                  "# mrfengine dictionary clear-cache deletes only the <key>.npz entries here.\n")
        atomic_write_text(self.root / self.TAG, text)

    def _prepare(self) -> bool:
        """Create and tag the folder; False if it is someone else's (untagged, other files): not written to."""
        if self.is_tagged():
            return True
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        if created or all(self.is_own_file(p.name) and p.is_file() and not p.is_symlink()
                          for p in self.root.iterdir()):
            self._tag(created)
            return True
        return False

    def clear(self) -> tuple[int, list[str], bool]:
        """Delete the cache's entries.

        Returns
        -------
        n : int
            Entries deleted.
        left : list of str
            Other files left in the folder (not the cache's).
        removed : bool
            Whether the folder itself was removed (empty then, and made by the cache).

        Raises
        ------
        StoreError
            The folder does not carry mrfengine's ``CACHEDIR.TAG``: nothing is deleted.
        """
        from ..errors import StoreError

        if not self.is_tagged():
            raise StoreError(
                f"{self.root}: not an mrfengine dictionary cache (no mrfengine {self.TAG} in it); refusing to delete "
                "anything in it (a cache made before mrfengine tagged its caches holds <32 hex digits>.npz files: "
                "delete those by hand)")
        n, left = 0, []
        for p in sorted(self.root.iterdir()):
            if p.name == self.TAG:
                continue
            if self.is_own_file(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()
                n += 1
            else:
                left.append(p.name)
        created = self._CREATED in (self.root / self.TAG).read_text(errors="replace").splitlines()
        removed = False
        if created and not left:
            (self.root / self.TAG).unlink()
            try:
                self.root.rmdir()
                removed = True
            except OSError:  # something appeared meanwhile: keep the folder, and its tag
                self._tag(created)
        return n, left, removed

    @staticmethod
    def key(sequence: Sequence, slot: int, grid: ParameterGrid, dtype: np.dtype) -> str:
        blob = json.dumps(
            {
                "signal_model": SIGNAL_MODEL_VERSION,
                "format": CACHE_FORMAT,
                "sequence": sequence.digest(),
                "slot": int(slot),
                "grid": grid.to_dict(),
                "dtype": np.dtype(dtype).str,
            },
            sort_keys=True,
        ).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> Dictionary | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return Dictionary.load(path)
        except (InputFileError, DictionaryError) as exc:
            log.warning("ignoring unreadable dictionary cache entry %s (%s)", path, exc)
            return None

    def put(self, key: str, dictionary: Dictionary) -> None:
        try:
            if not self._prepare():
                log.warning("not writing dictionary cache entries into %s: it holds other files and no mrfengine "
                            "%s (choose an empty or new --cache-dir)", self.root, self.TAG)
                return
            dictionary.save(self.path(key))
        except OSError as exc:  # a read-only or full cache must not stop the work
            log.warning("could not write dictionary cache entry to %s (%s)", self.root, exc)


class SliceDictionaries:
    """The dictionaries of every excitation slot of a sequence, built on demand.

    Slices excited in the same slot (simultaneous multi-slice) share one
    dictionary.  Each slot's dictionary is simulated once, then kept in memory
    and, unless ``cache=False``, on disk.

    Parameters
    ----------
    sequence : Sequence
    grid : ParameterGrid, optional
        Defaults to :func:`paper_grid`.
    cache : DictionaryCache, path, None or False
        None uses :func:`default_cache_dir`; False disables the disk cache.
    dtype : float32 or float64
    """

    def __init__(
        self,
        sequence: Sequence,
        grid: ParameterGrid | None = None,
        *,
        cache: DictionaryCache | str | os.PathLike | None | bool = None,
        dtype: type = np.float32,
    ) -> None:
        self.sequence = sequence
        self.grid = paper_grid() if grid is None else grid
        self.dtype = np.dtype(dtype)
        if cache is False:
            self.cache: DictionaryCache | None = None
        elif cache is None or cache is True:
            self.cache = DictionaryCache()
        elif isinstance(cache, DictionaryCache):
            self.cache = cache
        else:
            self.cache = DictionaryCache(cache)
        self._slots: dict[int, Dictionary] = {}

    @property
    def n_slots(self) -> int:
        return self.sequence.n_slots

    def __len__(self) -> int:
        return self.n_slots

    def __getitem__(self, slot: int) -> Dictionary:
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.n_slots:
            raise DictionaryError(f"slot must be an integer in [0, {self.n_slots}); got {slot!r}")
        slot = int(slot)
        if slot not in self._slots:
            self._slots[slot] = self._load_or_build(slot)
        return self._slots[slot]

    def __iter__(self) -> Iterator[Dictionary]:
        return (self[s] for s in range(self.n_slots))

    def for_slice(self, position: int) -> Dictionary:
        """The dictionary of slice ``position`` (0-based along the slice axis)."""
        return self[int(self.sequence.slot_of_slice(position))]

    def _load_or_build(self, slot: int) -> Dictionary:
        key = DictionaryCache.key(self.sequence, slot, self.grid, self.dtype) if self.cache else ""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        d = simulate_dictionary(self.sequence, slot, self.grid, dtype=self.dtype)
        if self.cache is not None:
            self.cache.put(key, d)
        return d
