"""Numba CPU backend: a fused, parallel brute-force match.

One voxel per iteration of a ``prange`` loop; each atom's inner product is a
35-element dot product kept in registers and compared with the running best,
so no score matrix is formed.  Slower than the C++ kernel (no register
blocking over voxels), but needs no compiler at install time.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["best_atoms_numba"]

_KERNEL = None


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        try:
            import numba
        except ImportError as exc:  # pragma: no cover - probed before
            raise BackendUnavailableError("backend 'numba' needs numba (pip install mrfengine[numba])") from exc

        @numba.njit(parallel=True, fastmath=True, cache=True)
        def kernel(x, atoms, out):  # pragma: no cover - compiled
            n, t = x.shape
            k = atoms.shape[0]
            for i in numba.prange(n):
                best = -1.0
                arg = 0
                for a in range(k):
                    s = np.float32(0.0)
                    for j in range(t):
                        s += x[i, j] * atoms[a, j]
                    s = abs(s)
                    if s > best:
                        best = s
                        arg = a
                out[i] = arg

        _KERNEL = kernel
    return _KERNEL


def best_atoms_numba(x: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Same contract as :func:`mrfengine.matching._numpy.best_atoms_numpy`; real data, float32."""
    if np.iscomplexobj(x) or np.iscomplexobj(atoms):
        raise BackendUnavailableError("backend 'numba' matches real data only; use backend='numpy' for complex data")
    xs = np.ascontiguousarray(x, dtype=np.float32)
    at = np.ascontiguousarray(atoms, dtype=np.float32)
    out = np.empty(xs.shape[0], dtype=np.int64)
    if xs.shape[0]:
        _kernel()(xs, at, out)
    return out
