"""Calibration of probability maps: reliability curve, expected calibration error, Brier score.

A lesion probability map is calibrated when, among voxels predicted at
probability ``p``, a share ``p`` is lesion.  The reliability curve bins the
voxels by predicted probability (``n_bins`` equal-width bins on [0, 1]; bin
``b`` holds ``edges[b] <= p < edges[b + 1]``, the last bin also ``p == 1``)
and compares the mean prediction with the observed lesion frequency in each
bin.  The expected calibration error weighs the gaps by bin population.

Over a whole head almost every voxel is background at probability ~0, which
makes any map look calibrated: pass ``mask`` (the brain, or the white matter)
to measure where it matters.

References
----------
Naeini, Cooper, Hauskrecht. Obtaining well calibrated probabilities using
Bayesian binning. AAAI 2015.  Guo, Pleiss, Sun, Weinberger. On calibration of
modern neural networks. ICML 2017.  Brier. Verification of forecasts expressed
in terms of probability. Mon Weather Rev 78:1-3, 1950.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ._validate import as_array, binary_mask, check_finite, parse_mask, parse_positive_int, same_shape

__all__ = ["ReliabilityCurve", "reliability_curve", "expected_calibration_error", "brier_score"]


@dataclass(frozen=True)
class ReliabilityCurve:
    """Binned predicted probability against observed frequency.

    Attributes
    ----------
    edges : ndarray, float64, (n_bins + 1,)
    mean_predicted : ndarray, float64, (n_bins,)
        Mean predicted probability in each bin (NaN for an empty bin).
    observed : ndarray, float64, (n_bins,)
        Share of reference-positive voxels in each bin (NaN for an empty bin).
    counts : ndarray, int64, (n_bins,)
    ece : float
        ``sum_b counts_b / N * |observed_b - mean_predicted_b|`` (NaN if N = 0).
    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    ece: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges.tolist(),
            "mean_predicted": self.mean_predicted.tolist(),
            "observed": self.observed.tolist(),
            "counts": self.counts.tolist(),
            "ece": self.ece,
        }


def _prepare(prob: ArrayLike, ref: ArrayLike, mask: ArrayLike | None, clip: bool) -> tuple[np.ndarray, np.ndarray]:
    p = as_array(prob, "prob", min_ndim=0)
    r = as_array(ref, "ref", min_ndim=0)
    same_shape(p, r, "prob", "ref")
    rb = binary_mask(r, "ref")
    m = parse_mask(mask, p.shape)
    if m is not None:
        p, rb = p[m], rb[m]
    check_finite(p, "prob")
    p = p.astype(np.float64, copy=False).ravel()
    if clip:
        p = np.clip(p, 0.0, 1.0)
    elif p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValidationError(
            f"prob must lie in [0, 1]; got values from {p.min()!r} to {p.max()!r} (pass clip=True to clip a "
            "network's unbounded output)"
        )
    return p, rb.ravel()


def reliability_curve(
    prob: ArrayLike,
    ref: ArrayLike,
    *,
    n_bins: int = 10,
    mask: ArrayLike | None = None,
    clip: bool = False,
) -> ReliabilityCurve:
    """Reliability curve and expected calibration error of a probability map.

    Parameters
    ----------
    prob : array_like, float, values in [0, 1]
        Predicted probability per voxel.
    ref : array_like, bool or 0/1, same shape
        Reference mask.
    n_bins : int
        Equal-width bins on [0, 1].
    mask : array_like, bool, same shape, optional
        Only these voxels count.
    clip : bool
        Clip ``prob`` to [0, 1] first (a regression network's output can
        leave it); without it values outside raise.

    Returns
    -------
    ReliabilityCurve

    Raises
    ------
    ValidationError
        Shapes differ, NaN/Inf, or values outside [0, 1] without ``clip``.
    """
    nb = parse_positive_int(n_bins, "n_bins")
    p, r = _prepare(prob, ref, mask, clip)
    edges = np.linspace(0.0, 1.0, nb + 1)
    b = np.searchsorted(edges[1:-1], p, side="right")  # edges[b] <= p < edges[b + 1]
    counts = np.bincount(b, minlength=nb)
    sum_p = np.bincount(b, weights=p, minlength=nb)
    pos = np.bincount(b[r], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        observed = np.where(counts > 0, pos / counts, np.nan)
    n = int(counts.sum())
    ece = float(np.nansum(counts * np.abs(observed - mean_p)) / n) if n else float("nan")
    return ReliabilityCurve(edges=edges, mean_predicted=mean_p, observed=observed, counts=counts.astype(np.int64), ece=ece)


def expected_calibration_error(
    prob: ArrayLike,
    ref: ArrayLike,
    *,
    n_bins: int = 10,
    mask: ArrayLike | None = None,
    clip: bool = False,
) -> float:
    """Expected calibration error (see :func:`reliability_curve`); NaN with no voxel."""
    return reliability_curve(prob, ref, n_bins=n_bins, mask=mask, clip=clip).ece


def brier_score(prob: ArrayLike, ref: ArrayLike, *, mask: ArrayLike | None = None, clip: bool = False) -> float:
    """Mean squared difference between probability and the 0/1 reference; NaN with no voxel."""
    p, r = _prepare(prob, ref, mask, clip)
    if p.size == 0:
        return float("nan")
    return float(np.mean((p - r) ** 2))
