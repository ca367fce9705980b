"""Lesion-wise metrics: detection rate, lesion-wise precision and F1, per-lesion Dice.

A lesion is a connected component of a binary mask (``scipy.ndimage.label``;
26-connectivity by default in 3D, i.e. voxels touching by a face, an edge or
a corner belong to one lesion).  Two conventions are built in:

``rule="paper"`` (Hermann et al. 2021)
    Reference lesions are components of at least ``min_size`` = 10 voxels.
    A reference lesion is detected when any predicted voxel (``pred >=
    threshold``) lies inside it.  The prediction is not size-filtered.
``rule="msseg"`` (MSSEG-2016, Commowick et al. 2018)
    Reference *and* predicted lesions of 3 mm^3 or less are dropped; as in
    ``animaSegPerfAnalyzer`` a lesion is kept when its volume is strictly
    above ``min_volume_mm3``, i.e. it has at least
    ``floor(min_volume_mm3 / voxel_volume) + 1`` voxels, so ``voxel_size``
    (mm) matters.  A reference lesion is detected when more than
    ``min_overlap`` = 10% of its voxels are covered by (kept) predicted
    lesions; a predicted lesion is a true positive when more than 10% of it
    lies inside (kept) reference lesions.  Not implemented: Anima's
    additional guard against over-segmentation (the beta/gamma test that
    rejects a detection made by predicted lesions lying mostly outside the
    reference lesion); Anima also uses face connectivity by default (pass
    ``connectivity=6`` for that).

Every threshold option can be overridden; the rule only supplies defaults.
A predicted voxel is positive when ``pred >= threshold`` (inclusive; see
:mod:`mrfengine.metrics.overlap`).

Undefined values are NaN, never a silent 0: the detection rate (recall)
without reference lesions, the precision without predicted lesions; F1 is NaN
when both are absent and 0 when exactly one side has lesions.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from .definitions import LESION_THRESHOLD
from ._validate import (
    as_array,
    binarize,
    binary_mask,
    parse_positive_int,
    parse_threshold,
    parse_voxel_size,
    same_shape,
)

__all__ = [
    "RULES",
    "LesionRule",
    "lesion_rule",
    "connectivity_structure",
    "Lesions",
    "label_lesions",
    "LesionEvaluation",
    "lesion_wise",
    "lesion_detection_rate",
    "evaluate_lesions",
    "reference_lesions",
    "f1_score",
]

log = logging.getLogger(__name__)

RULES = ("paper", "msseg")

# connectivity (neighbours) -> scipy's rank argument of generate_binary_structure
_CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


def connectivity_structure(connectivity: int, ndim: int) -> np.ndarray:
    """The ``scipy.ndimage.label`` structure for 4/8 (2D) or 6/18/26 (3D) neighbours.

    Raises
    ------
    ValidationError
        Not 2 or 3 axes, or a connectivity that does not exist for them.
    """
    from scipy import ndimage  # deferred: keeps `import mrfengine` light

    if ndim not in _CONNECTIVITY:
        raise ValidationError(f"lesion masks must have 2 or 3 axes; got {ndim}")
    allowed = _CONNECTIVITY[ndim]
    if isinstance(connectivity, bool) or connectivity not in allowed:
        raise ValidationError(
            f"connectivity must be one of {sorted(allowed)} for {ndim}D masks; got {connectivity!r}"
        )
    return ndimage.generate_binary_structure(ndim, allowed[connectivity])


@dataclass(frozen=True)
class LesionRule:
    """How lesions are counted (build it with :func:`lesion_rule`).

    Attributes
    ----------
    name : str
        ``"paper"`` or ``"msseg"``.
    ref_min_voxels : int
        Reference lesions with fewer voxels are dropped.
    pred_min_voxels : int
        Predicted lesions with fewer voxels are dropped (1: none).
    min_overlap : float
        A lesion is detected when more than ``min_overlap`` of its voxels are
        covered (0.0: any voxel).
    connectivity : int
    voxel_size : tuple of float
        Edge lengths in mm.
    """

    name: str
    ref_min_voxels: int
    pred_min_voxels: int
    min_overlap: float
    connectivity: int
    voxel_size: tuple[float, ...]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.voxel_size))

    def required_overlap(self, sizes: np.ndarray) -> np.ndarray:
        """Smallest number of covered voxels that detects a lesion of each size.

        ``covered > min_overlap * size`` for whole voxel counts is the same as
        ``covered >= floor(min_overlap * size) + 1``; computed once here so the
        single-threshold functions and the sweeps agree to the voxel.
        """
        return np.floor(self.min_overlap * np.asarray(sizes, dtype=np.float64)).astype(np.int64) + 1

    @property
    def filters_prediction(self) -> bool:
        return self.pred_min_voxels > 1


def _min_voxels_for_volume(min_volume_mm3: float, voxel_volume_mm3: float) -> int:
    # Strictly more than min_volume_mm3, Anima's floor(V / v) + 1.
    return int(math.floor(min_volume_mm3 / voxel_volume_mm3)) + 1


def lesion_rule(
    rule: Literal["paper", "msseg"] = "paper",
    *,
    min_size: int | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
    connectivity: int = 26,
    voxel_size: float | Sequence[float] | None = None,
    ndim: int = 3,
) -> LesionRule:
    """Resolve a named convention and its overrides into a :class:`LesionRule`.

    Parameters
    ----------
    rule : {"paper", "msseg"}
        Supplies the defaults (see the module notes).
    min_size : int, optional
        Minimum voxels of a reference lesion.  Default 10 for ``"paper"``,
        none (1) for ``"msseg"``.
    min_volume_mm3 : float, optional
        Reference and predicted lesions must be strictly larger.  Default
        none for ``"paper"``, 3.0 for ``"msseg"``.
    min_overlap : float in [0, 1), optional
        Detected when more than this fraction is covered.  Default 0.0 (any
        voxel) for ``"paper"``, 0.1 for ``"msseg"``.
    connectivity : int
        6, 18 or 26 in 3D; 4 or 8 in 2D.
    voxel_size : float or sequence of float, optional
        Voxel edge lengths in mm (one per axis, or one number if isotropic).
        Default 1 mm isotropic, with a warning when a volume floor uses it.
    ndim : int
        Axes of the masks (2 or 3).

    Raises
    ------
    ValidationError
        Unknown rule or an option out of range.
    """
    if rule not in RULES:
        raise ValidationError(f"rule must be one of {', '.join(map(repr, RULES))}; got {rule!r}")
    connectivity_structure(connectivity, ndim)  # validates
    sizes = parse_voxel_size(voxel_size, ndim)
    if rule == "paper":
        d_size, d_volume, d_overlap = 10, None, 0.0
    else:
        d_size, d_volume, d_overlap = None, 3.0, 0.1
    size = d_size if min_size is None else parse_positive_int(min_size, "min_size")
    volume = d_volume if min_volume_mm3 is None else min_volume_mm3
    overlap = d_overlap if min_overlap is None else min_overlap
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0.0 <= overlap < 1.0:
        raise ValidationError(f"min_overlap must be a fraction in [0, 1); got {min_overlap!r}")
    ref_min = 1 if size is None else size
    pred_min = 1
    if volume is not None:
        if isinstance(volume, bool) or not isinstance(volume, numbers.Real) or not (volume >= 0 and math.isfinite(volume)):
            raise ValidationError(f"min_volume_mm3 must be a finite number >= 0; got {min_volume_mm3!r}")
        if voxel_size is None:
            log.warning("rule %r: no voxel_size given, lesion volumes assume 1 mm isotropic voxels", rule)
        floor = _min_voxels_for_volume(float(volume), float(np.prod(sizes)))
        ref_min = max(ref_min, floor)
        pred_min = floor
    return LesionRule(
        name=rule,
        ref_min_voxels=ref_min,
        pred_min_voxels=pred_min,
        min_overlap=float(overlap),
        connectivity=int(connectivity),
        voxel_size=sizes,
    )


@dataclass(frozen=True)
class Lesions:
    """Connected components of a mask, small ones dropped.

    Attributes
    ----------
    labels : ndarray, int32, the mask's shape
        0 for background and dropped components, 1..n for kept lesions
        (numbered in scipy's scan order).
    sizes : ndarray, int64, (n,)
        Voxels of lesion ``i + 1``.
    n_dropped : int
        Components smaller than the floor.
    voxel_volume_mm3 : float
    """

    labels: np.ndarray
    sizes: np.ndarray
    n_dropped: int
    voxel_volume_mm3: float

    @property
    def n(self) -> int:
        return int(self.sizes.size)

    @property
    def volumes_ml(self) -> np.ndarray:
        """Lesion volumes in ml (1 ml = 1000 mm^3), float64, (n,)."""
        return self.sizes * (self.voxel_volume_mm3 / 1000.0)

    @property
    def mask(self) -> np.ndarray:
        """Bool mask of the kept lesions."""
        return self.labels > 0


def _label(mask: np.ndarray, structure: np.ndarray, min_voxels: int, voxel_volume_mm3: float) -> Lesions:
    from scipy import ndimage

    labels, n_all = ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=n_all + 1)[1:]
    keep = sizes >= min_voxels
    n_dropped = int(n_all - np.count_nonzero(keep))
    if n_dropped:
        lut = np.zeros(n_all + 1, dtype=labels.dtype)
        lut[1:][keep] = np.arange(1, np.count_nonzero(keep) + 1, dtype=labels.dtype)
        labels = lut[labels]
        sizes = sizes[keep]
    return Lesions(labels=labels, sizes=sizes.astype(np.int64), n_dropped=n_dropped, voxel_volume_mm3=voxel_volume_mm3)


def label_lesions(
    mask: ArrayLike,
    *,
    connectivity: int = 26,
    min_size: int = 1,
    voxel_size: float | Sequence[float] | None = None,
) -> Lesions:
    """Lesions of a binary mask: connected components of at least ``min_size`` voxels.

    Parameters
    ----------
    mask : array_like, bool (or 0/1 numbers), 2 or 3 axes
    connectivity : int
        6, 18 or 26 (3D); 4 or 8 (2D).  26 joins lesions touching diagonally.
    min_size : int
        Components with fewer voxels are dropped (10 in the paper).
    voxel_size : float or sequence of float, optional
        mm per axis, for :attr:`Lesions.volumes_ml` (default 1 mm isotropic).

    Returns
    -------
    Lesions

    Raises
    ------
    ValidationError
    """
    m = binary_mask(as_array(mask, "mask", min_ndim=2), "mask")
    structure = connectivity_structure(connectivity, m.ndim)
    vv = float(np.prod(parse_voxel_size(voxel_size, m.ndim)))
    return _label(m, structure, parse_positive_int(min_size, "min_size"), vv)


@dataclass(frozen=True)
class LesionEvaluation:
    """Lesion-wise comparison of a prediction with a reference at one threshold.

    Scalars
    -------
    n_ref, n_detected, detection_rate
        Reference lesions kept by the rule, how many are detected, and their
        ratio (NaN without reference lesions).  Under ``"msseg"`` this is the
        lesion-wise true-positive rate (recall).
    n_pred, n_pred_true, precision
        Predicted lesions kept by the rule, how many are true positives, and
        their ratio (NaN without predicted lesions).
    f1
        ``2 P R / (P + R)``; NaN when neither side has lesions, 0 when only one has.

    Per reference lesion (arrays of length ``n_ref``, scipy's label order)
    -----------------------------------------------------------------------
    ref_volume_ml
    covered_voxels
        Reference voxels covered by (kept) predicted lesions.
    detected
    pred_volume_ml
        Volume of the union of the (kept) predicted lesions that touch it
        (0 when none does); Fig. S1B of the paper plots it against
        ``ref_volume_ml``.
    lesion_dice
        Dice between the lesion and that union (Fig. S1A).  A predicted
        lesion touching two reference lesions counts for both.
    """

    rule: LesionRule
    threshold: float | None
    n_ref: int
    n_detected: int
    detection_rate: float
    n_pred: int
    n_pred_true: int
    precision: float
    f1: float
    ref_volume_ml: np.ndarray
    covered_voxels: np.ndarray
    detected: np.ndarray
    pred_volume_ml: np.ndarray
    lesion_dice: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists for arrays; NaN stays float NaN)."""
        return {
            "rule": self.rule.name,
            "threshold": self.threshold,
            "n_ref": self.n_ref,
            "n_detected": self.n_detected,
            "detection_rate": self.detection_rate,
            "n_pred": self.n_pred,
            "n_pred_true": self.n_pred_true,
            "precision": self.precision,
            "f1": self.f1,
            "per_lesion": {
                "ref_volume_ml": self.ref_volume_ml.tolist(),
                "pred_volume_ml": self.pred_volume_ml.tolist(),
                "dice": self.lesion_dice.tolist(),
                "detected": self.detected.tolist(),
                "covered_voxels": self.covered_voxels.tolist(),
            },
        }


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den > 0 else float("nan")


def f1_score(precision: float, recall: float, n_ref: int, n_pred: int) -> float:
    """Lesion-wise F1 with mrfengine's conventions for empty sides."""
    if n_ref == 0 and n_pred == 0:
        return float("nan")
    if n_ref == 0 or n_pred == 0:
        return 0.0
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _prepare(pred: ArrayLike, ref: ArrayLike, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    p = as_array(pred, "pred", min_ndim=2)
    r = as_array(ref, "ref", min_ndim=2)
    same_shape(p, r, "pred", "ref")
    if p.ndim not in (2, 3):
        raise ValidationError(f"pred and ref must have 2 or 3 axes; got shape {p.shape}")
    t = None if threshold is None else parse_threshold(threshold)
    return binarize(p, t, "pred"), binary_mask(r, "ref")


def _masks_and_rule(pred: ArrayLike, ref: ArrayLike, threshold: float | None, rule: str,
                    **options: Any) -> tuple[np.ndarray, np.ndarray, LesionRule]:
    """The binary prediction and reference (:func:`_prepare`) and the :func:`lesion_rule` of
    ``rule`` with ``options`` on their number of axes: the start of every lesion-wise measure."""
    pm, rm = _prepare(pred, ref, threshold)
    return pm, rm, lesion_rule(rule, ndim=pm.ndim, **options)


def evaluate_lesions(pred_mask: np.ndarray, ref_lesions: Lesions, rule: LesionRule, threshold: float | None = None) -> LesionEvaluation:
    """:func:`lesion_wise` on a binarised prediction and already labelled
    reference lesions (reuse the labelling across thresholds or metrics)."""
    structure = connectivity_structure(rule.connectivity, pred_mask.ndim)
    pred_les = _label(pred_mask, structure, rule.pred_min_voxels, rule.voxel_volume_mm3)
    rl, pl = ref_lesions.labels, pred_les.labels
    n_ref, n_pred = ref_lesions.n, pred_les.n
    both = (rl > 0) & (pl > 0)
    r_in, p_in = rl[both], pl[both]

    covered = np.bincount(r_in, minlength=n_ref + 1)[1:].astype(np.int64)
    detected = covered >= rule.required_overlap(ref_lesions.sizes)
    inside = np.bincount(p_in, minlength=n_pred + 1)[1:].astype(np.int64)
    pred_true = inside >= rule.required_overlap(pred_les.sizes)

    # Union of the predicted lesions touching each reference lesion.
    pairs = np.unique(r_in.astype(np.int64) * (n_pred + 1) + p_in)
    pair_ref, pair_pred = np.divmod(pairs, n_pred + 1)
    union = np.bincount(pair_ref, weights=pred_les.sizes[pair_pred - 1].astype(np.float64), minlength=n_ref + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        lesion_dice = 2.0 * covered / (ref_lesions.sizes + union)

    n_detected = int(np.count_nonzero(detected))
    n_pred_true = int(np.count_nonzero(pred_true))
    recall = _ratio(n_detected, n_ref)
    precision = _ratio(n_pred_true, n_pred)
    return LesionEvaluation(
        rule=rule,
        threshold=threshold,
        n_ref=n_ref,
        n_detected=n_detected,
        detection_rate=recall,
        n_pred=n_pred,
        n_pred_true=n_pred_true,
        precision=precision,
        f1=f1_score(precision, recall, n_ref, n_pred),
        ref_volume_ml=ref_lesions.volumes_ml,
        covered_voxels=covered,
        detected=detected,
        pred_volume_ml=union * (rule.voxel_volume_mm3 / 1000.0),
        lesion_dice=lesion_dice.astype(np.float64),
    )


def reference_lesions(ref_mask: np.ndarray, rule: LesionRule) -> Lesions:
    """The reference lesions a rule counts (binary ``ref_mask``)."""
    return _label(ref_mask, connectivity_structure(rule.connectivity, ref_mask.ndim), rule.ref_min_voxels, rule.voxel_volume_mm3)


def lesion_wise(
    pred: ArrayLike,
    ref: ArrayLike,
    *,
    threshold: float | None = LESION_THRESHOLD,
    rule: Literal["paper", "msseg"] = "paper",
    min_size: int | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
    connectivity: int = 26,
    voxel_size: float | Sequence[float] | None = None,
) -> LesionEvaluation:
    """Lesion-wise detection, precision, F1 and per-lesion Dice and volumes.

    Parameters
    ----------
    pred : array_like, 2 or 3 axes
        Lesion probability map (positive where ``>= threshold``) or a bool mask.
    ref : array_like, bool or 0/1 numbers, same shape
        Reference lesion mask (e.g. the manual annotation).
    threshold : float or None
        Binarising threshold for a non-bool ``pred`` (0.33 in the paper).
    rule, min_size, min_volume_mm3, min_overlap, connectivity, voxel_size
        See :func:`lesion_rule` and the module notes.

    Returns
    -------
    LesionEvaluation

    Raises
    ------
    ValidationError

    References
    ----------
    Hermann et al., BMC Med Imaging 21:107, 2021.  Commowick et al.,
    Objective evaluation of multiple sclerosis lesion segmentation using a
    data management and processing infrastructure, Sci Rep 8:13650, 2018.
    """
    pm, rm, spec = _masks_and_rule(pred, ref, threshold, rule, min_size=min_size, min_volume_mm3=min_volume_mm3,
                                   min_overlap=min_overlap, connectivity=connectivity, voxel_size=voxel_size)
    t = None if threshold is None or np.asarray(pred).dtype == bool else float(threshold)
    return evaluate_lesions(pm, reference_lesions(rm, spec), spec, t)


def lesion_detection_rate(
    pred: ArrayLike,
    ref: ArrayLike,
    *,
    threshold: float | None = LESION_THRESHOLD,
    min_size: int | None = None,
    connectivity: int = 26,
    rule: Literal["paper", "msseg"] = "paper",
    voxel_size: float | Sequence[float] | None = None,
    min_volume_mm3: float | None = None,
    min_overlap: float | None = None,
) -> float:
    """Share of reference lesions that the prediction detects.

    With the defaults this is the paper's lesion detection rate: reference
    lesions are 3D connected components (26-connectivity) of at least 10
    voxels, and one is detected when any voxel of it has ``pred >= 0.33``.
    ``rule="msseg"`` gives MSSEG-2016's lesion-wise true-positive rate
    (lesions of 3 mm^3 or less dropped from both sides, more than 10% of the
    lesion covered); give ``voxel_size`` in mm with it.

    Parameters
    ----------
    pred : array_like, float or bool, 2 or 3 axes
        Lesion probability map, or a bool mask (then ``threshold`` is ignored).
    ref : array_like, bool or 0/1 numbers, same shape
        Reference lesion mask.
    threshold : float
        Inclusive binarising threshold of ``pred``.
    min_size : int, optional
        Minimum voxels of a reference lesion (default 10 for ``"paper"``,
        no voxel floor for ``"msseg"``).
    connectivity : int
        26 (default), 18 or 6 in 3D; 8 or 4 in 2D.
    rule : {"paper", "msseg"}
    voxel_size, min_volume_mm3, min_overlap
        See :func:`lesion_rule`.

    Returns
    -------
    float in [0, 1]; NaN when the reference has no lesion that the rule counts.

    Raises
    ------
    ValidationError
        Shapes differ, non-binary ``ref``, a non-bool ``pred`` without a
        threshold that is not 0/1, unknown rule or bad option.
    """
    pm, rm, spec = _masks_and_rule(pred, ref, threshold, rule, min_size=min_size, min_volume_mm3=min_volume_mm3,
                                   min_overlap=min_overlap, connectivity=connectivity, voxel_size=voxel_size)
    ref_les = reference_lesions(rm, spec)
    if spec.filters_prediction:
        return evaluate_lesions(pm, ref_les, spec).detection_rate
    if ref_les.n == 0:
        return float("nan")
    covered = np.bincount(ref_les.labels[pm], minlength=ref_les.n + 1)[1:]
    return float(np.count_nonzero(covered >= spec.required_overlap(ref_les.sizes))) / ref_les.n
