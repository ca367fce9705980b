"""What every MP-PCA backend shares: the window geometry, the Marchenko-Pastur
classifier and the bookkeeping that turns per-window results into voxel maps.

The *definition* of the denoiser lives here and in :mod:`._reference`; the fast
backends must reproduce it (the tests hold them to it).

Geometry
--------
Spatial axes are ``(A, B, C)`` (any order of the user's axes), frames last.
A window has extent ``w_i = min(2 r_i + 1, S_i)`` along axis ``i`` (``r_i`` is
the patch radius; a volume thinner than the window gets a window as thick as
the volume) and is identified by its start ``s_i in [0, S_i - w_i]``.  Every
start position is a window, so every voxel lies in at least one full window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from ..errors import ValidationError

__all__ = [
    "Accumulate",
    "ESTIMATORS",
    "parse_patch_radius",
    "window_extent",
    "window_any",
    "own_window_start",
    "classify",
    "classify_one",
    "single_threaded_blas",
    "EPS64",
    "EXACT_BITS",
]

ESTIMATORS = ("mp", "exp2")
"""``mp``: Veraart et al. 2016 (gamma = k / q); ``exp2``: Cordero-Grande et al.
2019 (gamma = k / (q - r + k)), MRtrix3's default."""

ESTIMATOR_CODE = {"mp": 0, "exp2": 1}

EPS64 = float(np.finfo(np.float64).eps)

EXACT_BITS = 8
"""A window covariance whose trace is below ``2**EXACT_BITS * eps`` times the
window's mean square (the scale of the rounding in one-pass sums) carries
fewer than that many significant bits: constant or zero regions.  The fast
backends recompute such windows exactly (two-pass, float64)."""


class Accumulate(Protocol):
    """What every backend's window loop does (``accumulate_<backend>``).

    ``accumulate(x, out, window, estimator, active)`` adds every window's
    weighted estimate to ``out``; :func:`._reference.accumulate_reference` is
    its definition, the others reproduce it.

    Parameters
    ----------
    x : array, (A, B, C, M)
        The data, frames last, any strides, the compute dtype (the reference
        computes in float64).
    out : array, (A, B, C, M), zero-initialised
        Receives ``sum_w theta_w * xhat_w(v)`` over the windows ``w`` holding
        voxel ``v``, where ``xhat_w = m_w + P_w (x_v - m_w)`` is the window's
        rank-``p_w`` PCA estimate and ``theta_w = 1 / (1 + p_w)``.
    window : (wa, wb, wc)
    estimator : {"mp", "exp2"}
    active : ndarray of bool, (A - wa + 1, B - wb + 1, C - wc + 1), or None
        Windows to compute; the others are skipped (None: all).

    Returns
    -------
    theta_sum : array, (A, B, C)
        ``sum_w theta_w``.
    var_sum : array, (A, B, C)
        ``sum_w theta_w sigma_w^2``.
    n_components : ndarray of int16, window-start shape
        ``p_w`` per window, -1 where skipped.
    """

    def __call__(self, x: Any, out: Any, window: tuple[int, int, int], estimator: str, active: Any = None,
                 **options: Any) -> tuple[Any, Any, Any]: ...


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """BLAS limited to one thread, where threadpoolctl is installed.

    Batched LAPACK on 35 x 35 matrices spends ~95% of its time waking
    OpenBLAS threads when BLAS may use several (measured: 1.8 ms instead of
    0.13 ms per ``eigh``); the batch is better run on one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def parse_patch_radius(patch_radius: int | Sequence[int]) -> tuple[int, int, int]:
    """``patch_radius`` as three non-negative ints (one per spatial axis, input order)."""
    if isinstance(patch_radius, (bool, np.bool_)):
        raise ValidationError(f"patch_radius must be an int or 3 ints >= 0; got {patch_radius!r}")
    if isinstance(patch_radius, (int, np.integer)):
        radius = (int(patch_radius),) * 3
    else:
        try:
            radius = tuple(patch_radius)
        except TypeError:
            raise ValidationError(f"patch_radius must be an int or 3 ints >= 0; got {patch_radius!r}") from None
        if len(radius) != 3 or not all(
            isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)) for r in radius
        ):
            raise ValidationError(f"patch_radius must be an int or 3 ints >= 0; got {patch_radius!r}")
        radius = tuple(int(r) for r in radius)
    if min(radius) < 0:
        raise ValidationError(f"patch_radius must be >= 0; got {patch_radius!r}")
    return radius  # type: ignore[return-value]


def window_extent(spatial_shape: Sequence[int], radius: Sequence[int]) -> tuple[int, int, int]:
    """Window extent per axis: ``2 r + 1``, shrunk to the axis length where the volume is thinner."""
    return tuple(min(2 * r + 1, int(s)) for s, r in zip(spatial_shape, radius))  # type: ignore[return-value]


def window_any(mask: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """For each window start, whether the window holds at least one True voxel.

    Exact integer box sums (summed-area table), shape ``S - w + 1``.
    """
    m = np.asarray(mask, dtype=np.int32)
    table = np.zeros(tuple(s + 1 for s in m.shape), dtype=np.int64)
    table[1:, 1:, 1:] = m.cumsum(0).cumsum(1).cumsum(2)
    wa, wb, wc = window
    A, B, C = (s - w + 1 for s, w in zip(m.shape, window))
    t = table
    total = (
        t[wa : wa + A, wb : wb + B, wc : wc + C]
        - t[:A, wb : wb + B, wc : wc + C]
        - t[wa : wa + A, :B, wc : wc + C]
        - t[wa : wa + A, wb : wb + B, :C]
        + t[:A, :B, wc : wc + C]
        + t[:A, wb : wb + B, :C]
        + t[wa : wa + A, :B, :C]
        - t[:A, :B, :C]
    )
    return total > 0


def own_window_start(n: int, radius: int, extent: int) -> np.ndarray:
    """Start of the window *centred* on each voxel along one axis, shifted
    inwards at the volume edges (MRtrix3's convention): ``clip(v - r, 0, n - w)``."""
    return np.clip(np.arange(n) - radius, 0, n - extent)


def _ranks(n_frames: int, n_samples: int) -> tuple[int, int, int]:
    n_eff = n_samples - 1  # the window mean costs one degree of freedom
    return n_eff, min(n_frames, n_eff), max(n_frames, n_eff)


def classify(
    eigenvalues, n_samples: int, estimator: str, xp: ModuleType = np, *, eps: float = EPS64, energy=None
):
    """Marchenko-Pastur classification of many windows at once.

    Parameters
    ----------
    eigenvalues : array, (..., M), ascending
        Eigenvalues of the centred window covariance ``Xc^T Xc / (N - 1)``
        (``xp.linalg.eigh`` order).
    n_samples : int
        Voxels per window ``N``.
    estimator : {"mp", "exp2"}
    eps : float
        Machine epsilon of the eigen-solver.
    energy : array (...,), optional
        The window's mean square ``E = sum_t mean_v x_vt^2`` (uncentred).
        Eigenvalues at or below ``M (eps lambda_max + eps64 E)`` are zero to
        working precision (constant windows, exact low-rank signals) and are
        set to 0, as are negative ones.

    Returns
    -------
    sigma2 : array (...,), float64
        Noise variance: the mean of the noise eigenvalues.
    n_signal : array (...,), int64
        Retained (signal) components ``p``: eigenvalues above the
        Marchenko-Pastur upper edge of the estimated noise.

    Notes
    -----
    With ``N' = N - 1``, ``r = min(M, N')`` and ``q = max(M, N')``, only the
    ``r`` largest eigenvalues can be non-zero; call them ``l_1 <= ... <= l_r``.
    For a candidate number of noise components ``k`` (1..r),
    ``sigma1^2(k) = mean(l_1..l_k)`` and the spread of the Marchenko-Pastur
    law gives ``sigma2^2(k) = (l_k - l_1) / (4 sqrt(gamma_k))`` with
    ``gamma_k = k / q`` ("mp") or ``k / (q - r + k)`` ("exp2").  The largest
    ``k`` with ``l_k - l_1 <= 4 sqrt(gamma_k) sigma1^2(k)`` is the noise
    count (k = 1 always qualifies) and ``sigma^2 = sigma1^2(k)``.  The
    retained components are the eigenvalues above the upper edge of the
    Marchenko-Pastur law of that noise, ``sigma^2 (1 + sqrt(r / q))^2``
    (the threshold dipy also applies): on MRF data it removes ~1% more of
    the error than keeping ``r - k`` components (MRtrix3's choice).  All
    arithmetic is float64.
    """
    lam = xp.asarray(eigenvalues).astype(xp.float64)
    m = lam.shape[-1]
    n_eff, r, q = _ranks(m, n_samples)
    floor = m * eps * lam[..., -1:]
    if energy is not None:
        floor = floor + m * EPS64 * xp.asarray(energy, dtype=xp.float64)[..., None]
    lam = lam[..., m - r :]
    lam = xp.where(lam > floor, lam, 0.0)
    k = xp.arange(1, r + 1, dtype=xp.float64)
    csum = xp.cumsum(lam, axis=-1)
    gamma = k / q if estimator == "mp" else k / (q - r + k)
    accept = (lam - lam[..., :1]) <= 4.0 * xp.sqrt(gamma) * (csum / k)
    # Largest accepted k: first True scanning from the top.
    k_star = r - xp.argmax(accept[..., ::-1], axis=-1)
    sigma2 = xp.take_along_axis(csum, (k_star - 1)[..., None], axis=-1)[..., 0] / k_star
    edge = sigma2 * (1.0 + (r / q) ** 0.5) ** 2
    return sigma2, xp.sum(lam > edge[..., None], axis=-1).astype(xp.int64)


def classify_one(
    eigenvalues: np.ndarray, n_samples: int, estimator: str, *, eps: float = EPS64, energy: float = 0.0
) -> tuple[float, int]:
    """The same rule as :func:`classify` for one window, written as the loop it is."""
    m = len(eigenvalues)
    n_eff, r, q = _ranks(m, n_samples)
    floor = m * (eps * float(eigenvalues[-1]) + EPS64 * energy)
    lam = [float(v) if float(v) > floor else 0.0 for v in eigenvalues[m - r :]]  # ascending
    csum = np.cumsum(lam)
    for k in range(r, 0, -1):
        gamma = k / q if estimator == "mp" else k / (q - r + k)
        if lam[k - 1] - lam[0] <= 4.0 * np.sqrt(gamma) * (csum[k - 1] / k):
            sigma2 = float(csum[k - 1] / k)
            edge = sigma2 * (1.0 + (r / q) ** 0.5) ** 2
            return sigma2, sum(1 for v in lam if v > edge)
    raise AssertionError("unreachable: k = 1 always qualifies")  # pragma: no cover
