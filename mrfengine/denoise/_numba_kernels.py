"""The compiled kernels of :mod:`._numba`, at module level so numba's on-disk
cache (``cache=True``) is reused across processes (kernels defined inside a
function were compiled anew in every process: ~15-25 s on 2 cores).

Imported only when the numba backend runs (numba is optional).
"""

from __future__ import annotations

import numba
import numpy as np

from ._common import EPS64

__all__ = ["analyse", "classify_one"]


@numba.njit(cache=True)
def classify_one(lam, n_samples, estimator, energy):
    """_common.classify_one, same operations in the same order."""
    m = lam.shape[0]
    n_eff = n_samples - 1
    r = min(m, n_eff)
    q = max(m, n_eff)
    floor = m * (EPS64 * lam[m - 1] + EPS64 * energy)
    top = np.empty(r)
    for i in range(r):
        v = lam[m - r + i]
        top[i] = v if v > floor else 0.0
    csum = np.cumsum(top)
    for k in range(r, 0, -1):
        gamma = k / q if estimator == 0 else k / (q - r + k)
        if top[k - 1] - top[0] <= 4.0 * np.sqrt(gamma) * (csum[k - 1] / k):
            sigma2 = csum[k - 1] / k
            edge = sigma2 * (1.0 + (r / q) ** 0.5) ** 2
            p = 0
            for v in top:
                if v > edge:
                    p += 1
            return sigma2, p
    return csum[0], r - 1  # not reached: k = 1 always qualifies

@numba.njit(parallel=True, cache=True)
def analyse(cov, mean, energy, n_samples, estimator, f, g, theta, sigma2, p):
    for k in numba.prange(cov.shape[0]):
        lam, vec = np.linalg.eigh(cov[k])
        s2, pk = classify_one(lam, n_samples, estimator, energy[k])
        m = cov.shape[1]
        th = 1.0 / (1.0 + pk)
        u = np.ascontiguousarray(vec[:, m - pk :])
        fk = th * (u @ u.T)
        f[k] = fk
        g[k] = th * mean[k] - fk @ mean[k]
        theta[k] = th
        sigma2[k] = s2
        p[k] = pk
