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
from ._common import ESTIMATOR_CODE, single_threaded_blas
from ._xp import accumulate_xp

__all__ = ["accumulate_numba"]


@lru_cache(maxsize=None)
def _kernel():
    try:
        import numba  # noqa: F401
    except ImportError as exc:  # pragma: no cover - probed before
        raise BackendUnavailableError("backend 'numba' needs numba (pip install mrfengine[numba])") from exc
    from ._numba_kernels import analyse

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


def accumulate_numba(x, out, window, estimator, active=None):
    """:class:`._common.Accumulate` with a Numba-parallel eigen-analysis (numpy arrays)."""
    return accumulate_xp(x, out, window, estimator, active, analyse=_analyse_numba)
