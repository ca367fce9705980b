"""Reference matcher: chunked brute force in numpy.  Readable first, then fast."""

from __future__ import annotations

import numpy as np

__all__ = ["best_atoms_numpy", "default_chunk"]


def default_chunk(n_atoms: int, budget_bytes: int = 128 * 2**20) -> int:
    """Voxels per chunk so the (chunk x atoms) score matrix stays within ``budget_bytes``."""
    return int(max(1, min(65536, budget_bytes // (8 * max(n_atoms, 1)))))


def best_atoms_numpy(x: np.ndarray, atoms: np.ndarray, *, chunk: int | None = None) -> np.ndarray:
    """Index of the atom maximising ``|<x, atom>|`` for each row of ``x``.

    Parameters
    ----------
    x : ndarray, (n, T)
        Signals (any real or complex dtype).
    atoms : ndarray, (K, T)
        Unit-norm atoms (or compressed coordinates of unit-norm atoms).
    chunk : int, optional
        Voxels per block; bounds the (chunk x K) intermediate.

    Returns
    -------
    ndarray of int64, (n,)
        ``numpy.argmax`` semantics: the first index on ties.
    """
    chunk = default_chunk(atoms.shape[0]) if chunk is None else chunk
    at = atoms.conj().T
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        scores = np.abs(x[start : start + chunk] @ at)
        out[start : start + chunk] = np.argmax(scores, axis=1)
    return out
