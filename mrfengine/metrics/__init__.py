"""Metrics for segmentation and quantitative maps, as the MRF-EPI paper defines them.

The contract::

    from mrfengine import metrics
    metrics.dice(pred, ref, threshold=None)
    metrics.lesion_detection_rate(pred, ref, threshold=0.33, min_size=10, connectivity=26, rule="paper")
    metrics.relative_deviation(pred, ref, mask=None)
    metrics.evaluate_subject(pred_maps, ref_maps, lesion_threshold=metrics.LESION_THRESHOLD, ...)

The paper's operating points are named constants (:mod:`.definitions`):
``LESION_THRESHOLD`` (0.33, a predicted lesion probability),
``TISSUE_THRESHOLD`` (0.8, NAWM/GM maps), ``REFERENCE_LESION_THRESHOLD``
(0.5, a true lesion fraction map to the reference annotation) and
``CORE_FRACTION`` (0.9, the tissue cores of the per-tissue deviations).

Conventions, the same in every function:

* a bool array is a mask, any other array a map that is positive where
  ``value >= threshold`` (inclusive, as the authors' code);
* Dice of an empty prediction against an empty reference is NaN by default
  (``empty=`` chooses another value); a detection rate without reference
  lesions is NaN; summaries average with NaN-aware means and report counts;
* volumes use ``voxel_size`` in mm (default 1 mm isotropic);
* lesions are connected components from ``scipy.ndimage.label``
  (26-connectivity by default).

Modules: :mod:`.overlap` (Dice), :mod:`.lesions` (detection, lesion-wise F1,
per-lesion Dice), :mod:`.quantitative` (relative deviation),
:mod:`.calibration` (reliability, ECE), :mod:`.sweep` (curves over
thresholds), :mod:`.definitions` (thresholds, reference lesion mask, tissue
cores), :mod:`.subject` (everything for one subject: the one definition of
each figure that evaluation, training validation and the demo print).
"""

from __future__ import annotations

from .calibration import ReliabilityCurve, brier_score, expected_calibration_error, reliability_curve
from .definitions import (
    CORE_FRACTION,
    LESION_THRESHOLD,
    REFERENCE_LESION_THRESHOLD,
    TISSUE_THRESHOLD,
    core_masks,
    reference_lesion_mask,
)
from .lesions import (
    RULES,
    LesionEvaluation,
    LesionRule,
    Lesions,
    connectivity_structure,
    label_lesions,
    lesion_detection_rate,
    lesion_rule,
    lesion_wise,
)
from .overlap import TissueDice, binarize_map, dice, dice_per_slice, tissue_dice
from .quantitative import relative_deviation, relative_deviation_by_tissue, relative_deviations
from .subject import evaluate_subject
from .sweep import ThresholdSweep, default_thresholds, detection_sweep, dice_sweep, threshold_sweep

__all__ = [
    "LESION_THRESHOLD",
    "TISSUE_THRESHOLD",
    "REFERENCE_LESION_THRESHOLD",
    "CORE_FRACTION",
    "reference_lesion_mask",
    "core_masks",
    "dice",
    "dice_per_slice",
    "tissue_dice",
    "TissueDice",
    "binarize_map",
    "lesion_detection_rate",
    "lesion_wise",
    "LesionEvaluation",
    "lesion_rule",
    "LesionRule",
    "label_lesions",
    "Lesions",
    "connectivity_structure",
    "RULES",
    "relative_deviation",
    "relative_deviations",
    "relative_deviation_by_tissue",
    "reliability_curve",
    "ReliabilityCurve",
    "expected_calibration_error",
    "brier_score",
    "dice_sweep",
    "detection_sweep",
    "threshold_sweep",
    "ThresholdSweep",
    "default_thresholds",
    "evaluate_subject",
]
