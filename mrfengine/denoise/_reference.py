"""The slow, obviously correct MP-PCA: one window at a time, float64, LAPACK ``eigh``.

This is the definition the fast backends are tested against.  Use it on small
inputs only (a 24 x 24 x 12 x 35 volume takes a few seconds).
"""

from __future__ import annotations

import itertools

import numpy as np

from ._common import classify_one

__all__ = ["accumulate_reference"]


def accumulate_reference(
    x: np.ndarray,
    out: np.ndarray,
    window: tuple[int, int, int],
    estimator: str,
    active: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add every window's weighted estimate to ``out``.

    Parameters
    ----------
    x : ndarray, (A, B, C, M)
        The data, frames last, any float dtype (computed in float64).
    out : ndarray, (A, B, C, M), zero-initialised
        Receives ``sum_w theta_w * xhat_w(v)`` over the windows ``w`` holding
        voxel ``v``, where ``xhat_w = m_w + P_w (x_v - m_w)`` is the window's
        rank-``p_w`` PCA estimate and ``theta_w = 1 / (1 + p_w)``.
    window : (wa, wb, wc)
    estimator : {"mp", "exp2"}
    active : ndarray of bool, (A - wa + 1, B - wb + 1, C - wc + 1), optional
        Windows to compute; the others are skipped (None: all).

    Returns
    -------
    theta_sum : ndarray, (A, B, C), float64
        ``sum_w theta_w``.
    var_sum : ndarray, (A, B, C), float64
        ``sum_w theta_w sigma_w^2``.
    n_components : ndarray of int16, window-start shape
        ``p_w`` per window, -1 where skipped.
    """
    A, B, C, M = x.shape
    wa, wb, wc = window
    n = wa * wb * wc
    starts = (range(A - wa + 1), range(B - wb + 1), range(C - wc + 1))
    theta_sum = np.zeros((A, B, C))
    var_sum = np.zeros((A, B, C))
    n_components = np.full(tuple(len(s) for s in starts), -1, dtype=np.int16)
    for a, b, c in itertools.product(*starts):
        if active is not None and not active[a, b, c]:
            continue
        region = (slice(a, a + wa), slice(b, b + wb), slice(c, c + wc))
        patch = x[region].astype(np.float64).reshape(n, M)
        mean = patch.mean(axis=0)
        centred = patch - mean
        cov = centred.T @ centred / (n - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)  # ascending
        energy = float(np.sum(patch**2)) / n
        sigma2, p = classify_one(eigenvalues, n, estimator, energy=energy)
        signal = eigenvectors[:, M - p :]
        estimate = mean + centred @ signal @ signal.T
        theta = 1.0 / (1.0 + p)
        out[region] += (theta * estimate).reshape(wa, wb, wc, M).astype(out.dtype)
        theta_sum[region] += theta
        var_sum[region] += theta * sigma2
        n_components[a, b, c] = p
    return theta_sum, var_sum, n_components
