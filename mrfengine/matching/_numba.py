"""Numba CPU backend: fused, parallel brute-force matches, real and complex.

Real data: one voxel per iteration of a ``prange`` loop; each atom's inner
product is a dot product kept in registers and compared with the running
best, so no score matrix is formed.

Complex data (``|<x, d>|`` with ``<x, d> = sum_t x_t conj(d_t)``): the atoms
are stored frame-major in separate real and imaginary planes, so that one
frame of a tile of atoms is a contiguous run the compiler vectorises; each
``prange`` iteration takes a block of voxels and sweeps the atom tiles once
(a tile stays in cache while the block's voxels use it), comparing
``|<x, d>|^2``.  complex64 data are computed as float32 pairs, complex128 as
float64 pairs.  Slower than the C++ kernels (no register blocking over
voxels), but needs no compiler at install time.
"""

from __future__ import annotations

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["best_atoms_numba"]

_KERNEL = None
_COMPLEX_KERNEL = None
_VOXEL_BLOCK = 64  # voxels per prange iteration of the complex kernel


def _numba():
    try:
        import numba
    except ImportError as exc:  # pragma: no cover - probed before
        raise BackendUnavailableError("backend 'numba' needs numba (pip install mrfengine[numba])") from exc
    return numba


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        numba = _numba()

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


def _complex_kernel():
    global _COMPLEX_KERNEL
    if _COMPLEX_KERNEL is None:
        numba = _numba()

        @numba.njit(parallel=True, fastmath=True, cache=True)
        def kernel(xr, xi, dr, di, ta, block, out):  # pragma: no cover - compiled
            # xr, xi: (n, T) planes of the signals; dr, di: (n_tiles, T, ta)
            # planes of the atoms, tile by tile, zero-padded (a zero atom
            # scores 0 and never wins over a real one: strict >, first wins).
            n, t_len = xr.shape
            n_tiles = dr.shape[0]
            n_blocks = (n + block - 1) // block
            for b in numba.prange(n_blocks):
                v0 = b * block
                v1 = min(n, v0 + block)
                nv = v1 - v0
                best = np.full(nv, -1.0, dtype=dr.dtype)
                arg = np.zeros(nv, dtype=np.int64)
                re = np.empty(ta, dtype=dr.dtype)
                im = np.empty(ta, dtype=dr.dtype)
                for tile in range(n_tiles):
                    for v in range(nv):
                        re[:] = 0.0
                        im[:] = 0.0
                        for t in range(t_len):
                            s = xr[v0 + v, t]
                            q = xi[v0 + v, t]
                            for a in range(ta):  # x conj(d)
                                re[a] += s * dr[tile, t, a] + q * di[tile, t, a]
                                im[a] += q * dr[tile, t, a] - s * di[tile, t, a]
                        bv = best[v]
                        ba = arg[v]
                        for a in range(ta):
                            score = re[a] * re[a] + im[a] * im[a]
                            if score > bv:
                                bv = score
                                ba = tile * ta + a
                        best[v] = bv
                        arg[v] = ba
                for v in range(nv):
                    out[v0 + v] = arg[v]

        _COMPLEX_KERNEL = kernel
    return _COMPLEX_KERNEL


def _atom_tile(n_frames: int, n_atoms: int, itemsize: int) -> int:
    """Atoms per tile: both planes of a tile in ~128 KiB (L2), a multiple of 16, at most the padded atom count."""
    ta = (128 * 1024) // (2 * itemsize * max(1, n_frames))
    ta = max(16, (ta // 16) * 16)
    return int(min(ta, -(-n_atoms // 16) * 16))


def _complex_planes(atoms: np.ndarray, real: np.dtype) -> tuple[np.ndarray, np.ndarray, int]:
    """The atoms as (n_tiles, T, ta) real and imaginary planes, zero-padded to whole tiles."""
    k, t = atoms.shape
    ta = _atom_tile(t, k, np.dtype(real).itemsize)
    n_tiles = -(-k // ta)
    dr = np.zeros((n_tiles * ta, t), dtype=real)
    di = np.zeros((n_tiles * ta, t), dtype=real)
    dr[:k] = atoms.real
    di[:k] = atoms.imag
    dr = np.ascontiguousarray(dr.reshape(n_tiles, ta, t).transpose(0, 2, 1))
    di = np.ascontiguousarray(di.reshape(n_tiles, ta, t).transpose(0, 2, 1))
    return dr, di, ta


def best_atoms_numba(x: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Same contract as :func:`mrfengine.matching._numpy.best_atoms_numpy`.

    Real data are matched in float32; complex data in float32 pairs
    (complex64), or float64 pairs where signals or atoms are complex128.
    """
    out = np.empty(x.shape[0], dtype=np.int64)
    if np.iscomplexobj(x) or np.iscomplexobj(atoms):
        wide = np.complex128 in (np.asarray(x).dtype, np.asarray(atoms).dtype)
        real = np.float64 if wide else np.float32
        xs = np.asarray(x)
        xr = np.ascontiguousarray(xs.real, dtype=real)
        xi = np.ascontiguousarray(xs.imag, dtype=real) if np.iscomplexobj(xs) else np.zeros_like(xr)
        if xs.shape[0]:
            dr, di, ta = _complex_planes(np.asarray(atoms), real)
            _complex_kernel()(xr, xi, dr, di, ta, _VOXEL_BLOCK, out)
        return out
    xs = np.ascontiguousarray(x, dtype=np.float32)
    at = np.ascontiguousarray(atoms, dtype=np.float32)
    if xs.shape[0]:
        _kernel()(xs, at, out)
    return out
