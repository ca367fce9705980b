"""Every metric of one subject in one call, as the cohort evaluation needs them.

:func:`evaluate_subject` takes plain arrays (one subject's predicted and
reference maps) and returns a JSON-ready dict; ``mrfengine evaluate`` calls
it per subject and hands the records to :mod:`mrfengine.report.tables` and
:mod:`mrfengine.report.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ._validate import as_array, binary_mask, parse_axis, parse_mask, parse_thresholds, parse_voxel_size, same_shape
from .calibration import reliability_curve
from .lesions import evaluate_lesions, lesion_rule, reference_lesions
from .overlap import binarize_map, dice, dice_per_slice, tissue_dice
from .quantitative import relative_deviation, relative_deviation_by_tissue
from .sweep import threshold_sweep

__all__ = ["MAP_KEYS", "QUANTITATIVE_KEYS", "TISSUE_KEYS", "evaluate_subject"]

QUANTITATIVE_KEYS = ("T1", "T2star")
TISSUE_KEYS = ("NAWM", "GM")
MAP_KEYS = QUANTITATIVE_KEYS + TISSUE_KEYS + ("lesion",)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def evaluate_subject(
    pred: Mapping[str, ArrayLike],
    ref: Mapping[str, ArrayLike],
    *,
    second_annotation: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    tissues: Mapping[str, ArrayLike] | None = None,
    voxel_size: float | Sequence[float] | None = None,
    lesion_threshold: float = 0.33,
    tissue_threshold: float = 0.8,
    thresholds: ArrayLike | None = None,
    slice_axis: int = -1,
    calibration_bins: int = 10,
) -> dict[str, Any]:
    """All metrics of one subject: lesions, tissue maps, quantitative maps.

    Parameters
    ----------
    pred, ref : mapping of str to array_like, all of one 3D shape
        Maps by key: ``"T1"``, ``"T2star"`` (any unit, the same on both
        sides), ``"NAWM"``, ``"GM"`` (probabilities in [0, 1]) and
        ``"lesion"`` (a probability map in ``pred``, the binary annotation in
        ``ref``).  A key is evaluated when both sides have it; other keys are
        an error.
    second_annotation : array_like, bool, optional
        A second annotation of the same lesions (same rater, later): its
        Dice with ``ref["lesion"]`` is the intra-observer Dice.
    mask : array_like, bool, optional
        Brain mask for the relative deviations and the calibration.
    tissues : mapping of str to array_like bool, optional
        Tissue masks (e.g. true WM, GM, lesion) for per-tissue relative deviations.
    voxel_size : float or sequence of 3 floats, optional
        mm; lesion volumes and the MSSEG 3 mm^3 floor use it (default 1 mm).
    lesion_threshold : float
        Operating threshold of the lesion probability map (0.33 in the paper).
    tissue_threshold : float
        NAWM/GM binarising threshold (0.8 in the paper).
    thresholds : array_like, optional
        The sweep's thresholds (default 0, 0.01, ..., 1).
    slice_axis : int
        Slice axis for per-slice Dice.
    calibration_bins : int

    Returns
    -------
    dict
        ``{"summary": {name: float or None}, "lesion": {...}, "NAWM": {...},
        ...}``: ``summary`` holds the headline scalars (NaN written as None)
        that the tables aggregate; the other entries hold the details (sweep
        curves, per-lesion volumes and Dice, reliability curve, per-slice Dice).

    Raises
    ------
    ValidationError
        Unknown keys, shapes that differ, or any metric's own checks.
    """
    for side, maps in (("pred", pred), ("ref", ref)):
        unknown = sorted(set(maps) - set(MAP_KEYS))
        if unknown:
            raise ValidationError(f"{side} has unknown map keys {unknown}; expected some of {list(MAP_KEYS)}")
    keys = [k for k in MAP_KEYS if k in pred and k in ref]
    if not keys and second_annotation is None:
        raise ValidationError(f"pred and ref share no map key; pred has {sorted(pred)}, ref has {sorted(ref)}")
    arrays = {f"{side}[{k!r}]": as_array(m[k], f"{side}[{k!r}]", min_ndim=3) for side, m in (("pred", pred), ("ref", ref)) for k in keys}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) > 1:
        raise ValidationError(f"all maps must have one shape; got {', '.join(f'{n}: {a.shape}' for n, a in arrays.items())}")
    shape = next(iter(shapes)) if shapes else None
    if shape is not None and len(shape) != 3:
        raise ValidationError(f"maps must be 3D volumes; got shape {shape}")
    brain = parse_mask(mask, shape) if (mask is not None and shape is not None) else None
    vsize = parse_voxel_size(voxel_size, 3)
    thr = parse_thresholds(thresholds)

    record: dict[str, Any] = {}
    summary: dict[str, float | None] = {}

    if "lesion" in keys:
        prob = arrays["pred['lesion']"]
        ann = binary_mask(arrays["ref['lesion']"], "ref['lesion']")
        axis = parse_axis(slice_axis, 3, "slice_axis")
        paper = lesion_rule("paper", voxel_size=voxel_size)
        msseg = lesion_rule("msseg", voxel_size=voxel_size)  # warns when voxel_size is None
        ref_paper = reference_lesions(ann, paper)
        pred_mask = binarize_map(prob, lesion_threshold, name="pred['lesion']")
        at_paper = evaluate_lesions(pred_mask, ref_paper, paper, float(lesion_threshold))
        at_msseg = evaluate_lesions(pred_mask, reference_lesions(ann, msseg), msseg, float(lesion_threshold))
        sweep = threshold_sweep(prob, ann, thr, rule="paper", voxel_size=vsize, ref_lesions=ref_paper)
        calib = reliability_curve(prob, ann, n_bins=calibration_bins, mask=brain, clip=True)
        d = dice(pred_mask, ann)
        best_t, best_d = sweep.best_dice()
        record["lesion"] = {
            "threshold": float(lesion_threshold),
            "dice": d,
            "dice_per_slice": dice_per_slice(pred_mask, ann, axis=axis).tolist(),
            "paper": at_paper.to_dict(),
            "msseg": at_msseg.to_dict(),
            "sweep": sweep.to_dict(),
            "calibration": calib.to_dict(),
            "ref_volume_ml": float(np.count_nonzero(ann) * np.prod(vsize) / 1000.0),
            "pred_volume_ml": float(np.count_nonzero(pred_mask) * np.prod(vsize) / 1000.0),
        }
        summary.update(
            lesion_dice=d,
            lesion_detection_rate=at_paper.detection_rate,
            lesion_n_ref=float(at_paper.n_ref),
            lesion_msseg_detection_rate=at_msseg.detection_rate,
            lesion_msseg_precision=at_msseg.precision,
            lesion_msseg_f1=at_msseg.f1,
            lesion_ece=calib.ece,
            lesion_best_threshold=best_t,
            lesion_best_dice=best_d,
        )

    if second_annotation is not None:
        if "lesion" not in ref:
            raise ValidationError("second_annotation needs ref['lesion'] to compare with")
        first = binary_mask(as_array(ref["lesion"], "ref['lesion']", min_ndim=3), "ref['lesion']")
        second = binary_mask(as_array(second_annotation, "second_annotation", min_ndim=3), "second_annotation")
        same_shape(first, second, "ref['lesion']", "second_annotation")
        summary["intra_observer_dice"] = dice(first, second)

    for key in TISSUE_KEYS:
        if key in keys:
            td = tissue_dice(arrays[f"pred[{key!r}]"], arrays[f"ref[{key!r}]"], threshold=tissue_threshold, axis=slice_axis)
            record[key] = {
                "threshold": td.threshold,
                "dice": td.volume,
                "dice_slice_mean": td.slice_mean,
                "dice_per_slice": td.per_slice.tolist(),
            }
            summary[f"{key}_dice"] = td.volume
            summary[f"{key}_dice_slice_mean"] = td.slice_mean

    for key in QUANTITATIVE_KEYS:
        if key in keys:
            p, r = arrays[f"pred[{key!r}]"], arrays[f"ref[{key!r}]"]
            rd = relative_deviation(p, r, brain)
            entry: dict[str, Any] = {"relative_deviation": rd}
            summary[f"{key}_relative_deviation"] = rd
            if tissues:
                by_tissue = relative_deviation_by_tissue(p, r, tissues, mask=brain)
                entry["by_tissue"] = by_tissue
                for name, value in by_tissue.items():
                    summary[f"{key}_relative_deviation_{name}"] = value
            record[key] = entry

    record["summary"] = {k: _nan_to_none(v) for k, v in summary.items()}
    return record
