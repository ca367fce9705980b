"""Dice and lesion detection rate over many binarising thresholds (the paper's Fig. 3).

Binarising and labelling the volume once per threshold costs 101 passes for
the usual 0, 1, ..., 100% grid.  Both curves need one pass instead:

* **Dice.** A voxel is positive at threshold ``t_j`` when ``value >= t_j``,
  i.e. when its bin index ``k = #{j : t_j <= value}`` (one
  ``np.searchsorted``) exceeds ``j``.  Histograms of ``k`` over all voxels
  and over reference voxels (``np.bincount``), summed from the top, give
  ``|P_j|`` and ``|P_j & R|`` for every threshold at once.
* **Detection rate.** A reference lesion of ``n`` voxels is detected at
  ``t`` when more than ``f * n`` of its voxels reach ``t``, i.e. when its
  ``k``-th largest value, ``k = floor(f * n) + 1``, is ``>= t`` (the maximum
  for the paper's rule, ``f = 0``).  One sort of the lesion voxels gives that
  score per lesion; the curve is then a comparison per threshold.
  Conventions that drop small *predicted* lesions (``rule="msseg"``) change
  the predicted components with the threshold, so they fall back to
  labelling once per threshold (correct, slower).

Thresholds are compared in the map's dtype, exactly as the single-threshold
functions do, and the tests hold every fast path to the per-threshold
reference (:func:`dice_sweep_reference`, :func:`detection_sweep_reference`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ._validate import (
    as_array,
    binary_mask,
    check_finite,
    parse_thresholds,
    same_shape,
    threshold_in_dtype,
)
from .lesions import Lesions, LesionRule, evaluate_lesions, lesion_detection_rate, lesion_rule, reference_lesions
from .overlap import dice, dice_from_counts

__all__ = [
    "default_thresholds",
    "dice_sweep",
    "detection_sweep",
    "ThresholdSweep",
    "threshold_sweep",
    "dice_sweep_reference",
    "detection_sweep_reference",
]

log = logging.getLogger(__name__)


def default_thresholds() -> np.ndarray:
    """0, 0.01, ..., 1 (101 thresholds, float64)."""
    return np.linspace(0.0, 1.0, 101)


def _prepare(pred: ArrayLike, ref: ArrayLike, min_ndim: int = 1) -> tuple[np.ndarray, np.ndarray]:
    p = as_array(pred, "pred", min_ndim=min_ndim)
    r = as_array(ref, "ref", min_ndim=min_ndim)
    same_shape(p, r, "pred", "ref")
    check_finite(p, "pred")
    return p, binary_mask(r, "ref")


def _counts_at_or_above(pred: np.ndarray, ref: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``#(pred >= t_j)`` and ``#(pred >= t_j & ref)`` for every threshold, in one pass."""
    t = threshold_in_dtype(thresholds, pred.dtype)
    k = np.searchsorted(t, pred.ravel(), side="right")  # thresholds <= value
    n_t = t.size
    hist_all = np.bincount(k, minlength=n_t + 1)
    hist_ref = np.bincount(k[ref.ravel()], minlength=n_t + 1)
    # voxels with k > j reach threshold j: a suffix sum of the histogram
    at_or_above = np.cumsum(hist_all[::-1])[::-1][1:]
    at_or_above_ref = np.cumsum(hist_ref[::-1])[::-1][1:]
    return at_or_above, at_or_above_ref


def dice_sweep(
    pred: ArrayLike,
    ref: ArrayLike,
    thresholds: ArrayLike | None = None,
    *,
    empty: float = float("nan"),
) -> np.ndarray:
    """Whole-volume Dice of ``pred >= t`` against ``ref`` for every threshold ``t``.

    Equal, threshold by threshold, to ``dice(pred, ref_mask, t)``.

    Parameters
    ----------
    pred : array_like, float or integer (bool: the same mask at every threshold)
        Probability map; any shape.
    ref : array_like, bool or 0/1 numbers, same shape
        Reference mask (not thresholded).
    thresholds : array_like, 1D, strictly increasing, optional
        Default 0, 0.01, ..., 1.
    empty : float
        Dice where both masks are empty (default NaN).

    Returns
    -------
    ndarray, float64, (n_thresholds,)

    Raises
    ------
    ValidationError
    """
    p, r = _prepare(pred, ref)
    return _dice_curve(p, r, parse_thresholds(thresholds), empty)


def _dice_curve(p: np.ndarray, r: np.ndarray, t: np.ndarray, empty: float = float("nan")) -> np.ndarray:
    if p.dtype == bool:
        return np.full(t.size, dice(p, r, empty=empty))
    n_pred, inter = _counts_at_or_above(p, r, t)
    return dice_from_counts(inter, n_pred, np.full(t.size, np.count_nonzero(r)), empty=empty)


def _lesion_scores(pred: np.ndarray, lesions: Lesions, rule: LesionRule) -> np.ndarray:
    """Per lesion, the value the threshold must not exceed for a detection:
    the k-th largest ``pred`` inside, ``k = floor(min_overlap * size) + 1``."""
    flat = lesions.labels.ravel()
    inside = np.flatnonzero(flat)
    labs = flat[inside]
    vals = pred.ravel()[inside]
    order = np.lexsort((vals, labs))  # by lesion, then by value ascending
    vals = vals[order]
    ends = np.cumsum(lesions.sizes)  # lesion i occupies [ends[i] - size_i, ends[i])
    return vals[ends - rule.required_overlap(lesions.sizes)]


def _rule(
    ndim: int,
    rule: str,
    min_size: int | None,
    min_volume_mm3: float | None,
    min_overlap: float | None,
    connectivity: int,
    voxel_size: float | Sequence[float] | None,
) -> LesionRule:
    return lesion_rule(
        rule,  # type: ignore[arg-type]
        min_size=min_size,
        min_volume_mm3=min_volume_mm3,
        min_overlap=min_overlap,
        connectivity=connectivity,
        voxel_size=voxel_size,
        ndim=ndim,
    )


def _detection_curve(pred: np.ndarray, ref_les: Lesions, spec: LesionRule, t: np.ndarray) -> np.ndarray:
    if ref_les.n == 0:
        return np.full(t.size, np.nan)
    if pred.dtype == bool:
        rate = evaluate_lesions(pred, ref_les, spec).detection_rate
        return np.full(t.size, rate)
    if spec.filters_prediction:
        log.info("detection sweep: rule %r filters predicted lesions; labelling once per threshold", spec.name)
        tt = threshold_in_dtype(t, pred.dtype)
        return np.array([evaluate_lesions(pred >= tj, ref_les, spec).detection_rate for tj in tt])
    scores = np.sort(_lesion_scores(pred, ref_les, spec))
    # lesions with score >= t_j = n - #(scores < t_j)
    below = np.searchsorted(scores, threshold_in_dtype(t, pred.dtype), side="left")
    return (ref_les.n - below) / ref_les.n


def detection_sweep(
    pred: ArrayLike,
    ref: ArrayLike,
    thresholds: ArrayLike | None = None,
    *,
    rule: Literal["paper", "msseg"] = "paper",
    min_size: int | None = None,
    connectivity: int = 26,
    voxel_size: float | Sequence[float] | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
) -> np.ndarray:
    """Lesion detection rate for every threshold.

    Equal, threshold by threshold, to ``lesion_detection_rate(pred, ref, threshold=t,
    ...)``; the reference is labelled once.  See :func:`lesion_detection_rate`
    for the rule options.

    Returns
    -------
    ndarray, float64, (n_thresholds,)
        All NaN when the reference has no lesion that the rule counts.
    """
    p, r = _prepare(pred, ref, min_ndim=2)
    t = parse_thresholds(thresholds)
    spec = _rule(p.ndim, rule, min_size, min_volume_mm3, min_overlap, connectivity, voxel_size)
    return _detection_curve(p, reference_lesions(r, spec), spec, t)


@dataclass(frozen=True)
class ThresholdSweep:
    """Dice and detection rate of one subject over thresholds.

    Attributes
    ----------
    thresholds, dice, detection_rate : ndarray, float64, (n_thresholds,)
    n_ref_lesions : int
        Reference lesions counted by the rule.
    rule : str
    """

    thresholds: np.ndarray
    dice: np.ndarray
    detection_rate: np.ndarray
    n_ref_lesions: int
    rule: str

    def best_dice(self) -> tuple[float, float]:
        """(threshold, Dice) at the highest Dice; (NaN, NaN) if all NaN."""
        if not np.isfinite(self.dice).any():
            return float("nan"), float("nan")
        j = int(np.nanargmax(self.dice))
        return float(self.thresholds[j]), float(self.dice[j])

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "n_ref_lesions": self.n_ref_lesions,
            "thresholds": self.thresholds.tolist(),
            "dice": self.dice.tolist(),
            "detection_rate": self.detection_rate.tolist(),
        }


def threshold_sweep(
    pred: ArrayLike,
    ref: ArrayLike,
    thresholds: ArrayLike | None = None,
    *,
    rule: Literal["paper", "msseg"] = "paper",
    min_size: int | None = None,
    connectivity: int = 26,
    voxel_size: float | Sequence[float] | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
    ref_lesions: Lesions | None = None,
) -> ThresholdSweep:
    """Both curves of Fig. 3 for one subject: :func:`dice_sweep` and :func:`detection_sweep`.

    ``ref_lesions`` (from :func:`~mrfengine.metrics.lesions.reference_lesions`
    with the same rule) skips labelling the reference again.
    """
    p, r = _prepare(pred, ref, min_ndim=2)
    t = parse_thresholds(thresholds)
    spec = _rule(p.ndim, rule, min_size, min_volume_mm3, min_overlap, connectivity, voxel_size)
    les = reference_lesions(r, spec) if ref_lesions is None else ref_lesions
    return ThresholdSweep(
        thresholds=t,
        dice=_dice_curve(p, r, t),
        detection_rate=_detection_curve(p, les, spec, t),
        n_ref_lesions=les.n,
        rule=spec.name,
    )


def dice_sweep_reference(pred: ArrayLike, ref: ArrayLike, thresholds: ArrayLike | None = None) -> np.ndarray:
    """:func:`dice_sweep` the slow, obvious way: one :func:`dice` per threshold."""
    r = binary_mask(np.asarray(ref), "ref")
    return np.array([dice(pred, r, t) for t in parse_thresholds(thresholds)])


def detection_sweep_reference(
    pred: ArrayLike,
    ref: ArrayLike,
    thresholds: ArrayLike | None = None,
    *,
    rule: Literal["paper", "msseg"] = "paper",
    min_size: int | None = None,
    connectivity: int = 26,
    voxel_size: float | Sequence[float] | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
) -> np.ndarray:
    """:func:`detection_sweep` the slow, obvious way: one
    :func:`lesion_detection_rate` per threshold."""
    return np.array(
        [
            lesion_detection_rate(
                pred,
                ref,
                threshold=t,
                min_size=min_size,
                connectivity=connectivity,
                rule=rule,
                voxel_size=voxel_size,
                min_volume_mm3=min_volume_mm3,
                min_overlap=min_overlap,
            )
            for t in parse_thresholds(thresholds)
        ]
    )
