"""Numba MP-PCA: the array-module pipeline with a compiled, thread-parallel eigen-analysis.

The window sums and the recombination are :mod:`._xp`'s (numpy); the
per-window work -- LAPACK ``eigh`` in float64, the Marchenko-Pastur rule of
:func:`._common.classify_one`, the weighted projector -- runs in a
``numba.prange`` loop over the windows of a plane.  It is the CPU fallback
when the C++ extension was not built (numba is the ``mrfengine[numba]``
extra); the C++ kernel is several times faster.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import BackendUnavailableError
from ._common import EPS64, ESTIMATOR_CODE, single_threaded_blas
from ._xp import accumulate_xp

__all__ = ["accumulate_numba"]


@lru_cache(maxsize=None)
def _kernel():
    try:
        import numba
    except ImportError as exc:  # pragma: no cover - probed before
        raise BackendUnavailableError("backend 'numba' needs numba (pip install mrfengine[numba])") from exc

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

    return analyse


def _analyse_numba(cov, mean, energy, n: int, estimator: str, dtype):
    k, m = cov.shape[0], cov.shape[-1]
    f = np.empty((k, m, m))
    g = np.empty((k, m))
    theta = np.empty(k)
    sigma2 = np.empty(k)
    p = np.empty(k, dtype=np.int64)
    with single_threaded_blas():  # the parallelism is numba's, across windows
        _kernel()(np.ascontiguousarray(cov, dtype=np.float64), np.ascontiguousarray(mean, dtype=np.float64),
                  np.ascontiguousarray(energy, dtype=np.float64), n, ESTIMATOR_CODE[estimator], f, g, theta, sigma2,
                  p)
    return f.astype(dtype, copy=False), g.astype(dtype, copy=False), theta, sigma2, p


def accumulate_numba(x, out, window: tuple[int, int, int], estimator: str, active=None):
    """Same contract as :func:`mrfengine.denoise._reference.accumulate_reference` (numpy arrays)."""
    return accumulate_xp(x, out, window, estimator, active, analyse=_analyse_numba)
