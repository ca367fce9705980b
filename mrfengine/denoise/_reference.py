"""The slow, obviously correct MP-PCA: one window at a time, float64, LAPACK ``eigh``.

This is the definition the fast backends are tested against.  Use it on small
inputs only (a 24 x 24 x 12 x 35 volume takes a few seconds).
"""

from __future__ import annotations

import itertools

import numpy as np

from ._common import classify_one

__all__ = ["accumulate_reference"]


def accumulate_reference(x, out, window, estimator, active=None):
    """The definition of :class:`._common.Accumulate`: one window at a time, in float64.

    ``x`` and ``out`` are numpy arrays; ``theta_sum`` and ``var_sum`` come
    back in float64.
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
