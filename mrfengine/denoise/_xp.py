"""Array-module MP-PCA: one body of code for numpy (CPU, tests) and CuPy (GPU).

One plane of windows (fixed start ``a``) at a time:

1. window sums ``S1 = sum x`` and ``S2 = sum x x^T`` by box sums of the
   per-voxel outer products (each product is formed once per plane and shared
   by the 25 windows of a 5 x 5 footprint), in float64;
2. one batched ``eigh`` of the (Bw * Cw, M, M) covariances (cuSOLVER on a GPU);
3. the Marchenko-Pastur classification, vectorised (:func:`._common.classify`);
4. the weighted projectors ``F_w = theta_w U_w U_w^T`` and offsets
   ``g_w = theta_w m_w - F_w m_w`` are box-*scattered* to the voxels they
   cover, so voxel ``v`` receives ``(sum_w F_w) x_v + sum_w g_w`` from the
   plane: the same sum as adding 125 patch estimates, at the cost of one
   matrix-vector product per voxel and window plane.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ._common import EPS64, EXACT_BITS, classify, single_threaded_blas

__all__ = ["accumulate_xp"]


def _box2(arr, wb: int, wc: int):
    """``out[i, j] = sum(arr[i:i+wb, j:j+wc])`` over the first two axes."""
    nb = arr.shape[0] - wb + 1
    nc = arr.shape[1] - wc + 1
    rows = arr[0:nb].copy()
    for db in range(1, wb):
        rows += arr[db : db + nb]
    out = rows[:, 0:nc].copy()
    for dc in range(1, wc):
        out += rows[:, dc : dc + nc]
    return out


def _scatter2(arr, wb: int, wc: int, xp):
    """Transpose of :func:`_box2`: ``out[i, j] = sum of arr[s, t]`` over windows ``(s, t)`` covering ``(i, j)``."""
    nb, nc = arr.shape[:2]
    rows = xp.zeros((nb + wb - 1, nc) + arr.shape[2:], dtype=arr.dtype)
    for db in range(wb):
        rows[db : db + nb] += arr
    out = xp.zeros((nb + wb - 1, nc + wc - 1) + arr.shape[2:], dtype=arr.dtype)
    for dc in range(wc):
        out[:, dc : dc + nc] += rows
    return out


def _exact_where_imprecise(cov, s2, slab, window, xp) -> None:
    """Recompute, two-pass, the covariances that one-pass sums left at rounding level."""
    wa, wb, wc = window
    n = wa * wb * wc
    trace = xp.trace(cov, axis1=-2, axis2=-1)
    energy = xp.trace(s2, axis1=-2, axis2=-1) / n
    flagged = xp.argwhere(trace <= 2.0**EXACT_BITS * EPS64 * energy)
    for b, c in flagged.tolist():
        patch = slab[:, b : b + wb, c : c + wc].reshape(n, -1)
        centred = patch - patch.mean(axis=0)
        cov[b, c] = centred.T @ centred / (n - 1)


def analyse_xp(cov, mean, energy, n: int, estimator: str, dtype):
    """Eigen-analysis of a batch of windows: batched ``eigh`` (cuSOLVER on a GPU).

    Parameters
    ----------
    cov : array, (K, M, M), float64
        Centred window covariances.
    mean : array, (K, M)
    energy : array, (K,)
        Window mean squares (see :func:`._common.classify`).
    n : int
        Voxels per window.

    Returns
    -------
    f : (K, M, M) ``theta U U^T`` over the retained components, ``dtype``
    g : (K, M) ``theta m - f m``
    theta, sigma2 : (K,) float64
    p : (K,) int64
    """
    xp = get_array_module(cov)
    m_frames = cov.shape[-1]
    if xp is np:
        with single_threaded_blas():
            eigenvalues, eigenvectors = np.linalg.eigh(cov.astype(dtype))
    else:
        eigenvalues, eigenvectors = xp.linalg.eigh(cov.astype(dtype))
    eps = float(np.finfo(np.dtype(str(dtype))).eps)
    sigma2, p = classify(eigenvalues, n, estimator, xp=xp, eps=eps, energy=energy)
    theta = 1.0 / (1.0 + p)
    keep = xp.arange(m_frames)[None, :] >= (m_frames - p)[:, None]  # the p largest
    u = eigenvectors * keep[:, None, :].astype(dtype)
    f = (theta[:, None, None] * (u @ u.swapaxes(-1, -2))).astype(dtype)
    m = mean.astype(dtype)
    g = theta[:, None].astype(dtype) * m - (f @ m[..., None])[..., 0]
    return f, g, theta, sigma2, p


def accumulate_xp(x, out, window, estimator, active=None, *, analyse=analyse_xp):
    """:class:`._common.Accumulate` on the array module of ``out``.

    ``x`` and ``out`` are numpy or CuPy arrays (the same module); the window
    sums are float64, ``analyse`` (:func:`analyse_xp`, or the Numba
    backend's) does the per-window eigen-analysis.
    """
    xp = get_array_module(out)
    A, B, C, M = x.shape
    wa, wb, wc = window
    n = wa * wb * wc
    nb, nc = B - wb + 1, C - wc + 1
    dtype = out.dtype
    theta_sum = xp.zeros((A, B, C), dtype=dtype)
    var_sum = xp.zeros((A, B, C), dtype=dtype)
    n_components = xp.full((A - wa + 1, nb, nc), -1, dtype=xp.int16)
    for a in range(A - wa + 1):
        sel = None if active is None else xp.asarray(active[a])
        if sel is not None and not bool(sel.any()):
            continue
        slab = x[a : a + wa].astype(xp.float64)
        s1 = _box2(slab.sum(axis=0), wb, wc)
        s2 = _box2(xp.einsum("abcm,abcn->bcmn", slab, slab), wb, wc)
        mean = s1 / n
        cov = (s2 - s1[..., :, None] * mean[..., None, :]) / (n - 1)
        _exact_where_imprecise(cov, s2, slab, window, xp)
        if sel is None:
            sel = xp.ones((nb, nc), dtype=bool)
        energy = xp.trace(s2[sel], axis1=-2, axis2=-1) / n
        f, g, theta, sigma2, p = analyse(cov[sel], mean[sel], energy, n, estimator, dtype)

        def plane(values, fill_shape):
            full = xp.zeros((nb, nc) + fill_shape, dtype=dtype)
            full[sel] = values
            return _scatter2(full, wb, wc, xp)

        f_vox = plane(f, (M, M))
        g_vox = plane(g, (M,))
        t_vox = plane(theta.astype(dtype), ())
        v_vox = plane((theta * sigma2).astype(dtype), ())
        for da in range(wa):
            out[a + da] += xp.einsum("bcmn,bcn->bcm", f_vox, x[a + da].astype(dtype)) + g_vox
            theta_sum[a + da] += t_vox
            var_sum[a + da] += v_vox
        n_components[a][sel] = p.astype(xp.int16)
    return theta_sum, var_sum, n_components


