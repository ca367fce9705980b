"""C++/OpenMP MP-PCA (``csrc/mppca.cpp``): SIMD across windows, GIL released.

This wrapper only chooses the kernel's axis roles and hands over arrays; the
checks on user input live in :mod:`.api`.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_ext
from ..errors import BackendUnavailableError
from ._common import ESTIMATOR_CODE

__all__ = ["accumulate_cpp", "kernel_roles"]


def kernel_roles(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Spatial axes as the kernel's (a, b, c).

    ``c`` (the SIMD lanes: consecutive windows) is the longest axis, so the
    lane groups are full; ``a`` (the parallel work items) the next longest;
    ``b`` (the sequential sweep) the shortest.
    """
    order = sorted(range(3), key=lambda i: (-shape[i], i))
    return order[1], order[2], order[0]


def accumulate_cpp(x, out, window, estimator, active=None, *, n_threads: int = 0):
    """:class:`._common.Accumulate` in C++ on ``n_threads`` (0: OpenMP's default).

    ``x`` and ``out`` are numpy arrays of one dtype (float32 or float64), the
    compute dtype; both may have any strides (no copy is made).
    """
    ext = get_ext()
    if ext is None or not hasattr(ext, "mppca_accumulate_f32"):
        raise BackendUnavailableError("backend 'cpp' needs the compiled extension mrfengine._ext with MP-PCA")
    kernel = ext.mppca_accumulate_f32 if out.dtype == np.float32 else ext.mppca_accumulate_f64
    a, b, c = kernel_roles(x.shape[:3])
    perm = (a, b, c, 3)
    inverse = tuple(int(i) for i in np.argsort(perm[:3]))
    xr = x.transpose(perm)
    outr = out.transpose(perm)
    shape = xr.shape[:3]
    win = tuple(window[i] for i in (a, b, c))
    starts = tuple(s - w + 1 for s, w in zip(shape, win))
    theta_sum = np.zeros(shape, dtype=out.dtype)
    var_sum = np.zeros(shape, dtype=out.dtype)
    n_components = np.full(starts, -1, dtype=np.int16)
    act = None if active is None else np.ascontiguousarray(active.transpose(a, b, c), dtype=np.uint8)
    kernel(xr, outr, theta_sum, var_sum, act, n_components, win, ESTIMATOR_CODE[estimator], int(n_threads))
    return theta_sum.transpose(inverse), var_sum.transpose(inverse), n_components.transpose(inverse)
