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
from . import definitions
from .definitions import CORE_FRACTION, LESION_THRESHOLD, TISSUE_THRESHOLD, core_masks, reference_lesion_mask
from .lesions import evaluate_lesions, lesion_rule, reference_lesions
from .overlap import binarize_map, dice, dice_per_slice, tissue_dice
from .quantitative import relative_deviation, relative_deviation_by_tissue, relative_deviations
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
    tissue_fractions: Mapping[str, ArrayLike] | None = None,
    core_fraction: float = CORE_FRACTION,
    voxel_size: float | Sequence[float] | None = None,
    lesion_threshold: float = LESION_THRESHOLD,
    tissue_threshold: float = TISSUE_THRESHOLD,
    thresholds: ArrayLike | None = None,
    slice_axis: int = -1,
    calibration_bins: int = 10,
    extras: bool = True,
) -> dict[str, Any]:
    """All metrics of one subject: lesions, tissue maps, quantitative maps.

    The one definition of every figure ``mrfengine evaluate``, the training
    validation and the demo print (:mod:`.definitions` holds the thresholds).

    Parameters
    ----------
    pred, ref : mapping of str to array_like, all of one 3D shape
        Maps by key: ``"T1"``, ``"T2star"`` (any unit, the same on both
        sides), ``"NAWM"``, ``"GM"`` (probabilities or fractions in [0, 1])
        and ``"lesion"``: a probability map in ``pred``; in ``ref`` a binary
        annotation or a true lesion volume-fraction map, which is the
        annotation ``>= REFERENCE_LESION_THRESHOLD`` (0.5,
        :func:`~mrfengine.metrics.definitions.reference_lesion_mask`).  A key
        is evaluated when both sides have it; other keys are an error.
    second_annotation : array_like, bool, optional
        A second annotation of the same lesions (same rater, later): its
        Dice with ``ref["lesion"]`` is the intra-observer Dice.
    mask : array_like, bool, optional
        Brain mask for the relative deviations and the calibration.
    tissues : mapping of str to array_like bool, optional
        Tissue masks by name for per-tissue relative deviations
        (``<map>_relative_deviation_<name>``), used as given.
    tissue_fractions : mapping of str to array_like, optional
        True tissue fractions by tissue (e.g. ``{"WM": ..., "GM": ...,
        "lesion": ...}``): the relative deviations are also reported in each
        tissue's *core*, the voxels whose fraction is ``>= core_fraction``
        (keys ``T1_relative_deviation_WM_core``, ...; the paper's "in WM, GM
        and lesions").
    core_fraction : float
        :data:`~mrfengine.metrics.definitions.CORE_FRACTION` (0.9) by default.
    voxel_size : float or sequence of 3 floats, optional
        mm; lesion volumes and the MSSEG 3 mm^3 floor use it (default 1 mm).
    lesion_threshold : float
        Operating threshold of the lesion probability map (0.33 in the paper).
    tissue_threshold : float
        NAWM/GM binarising threshold of both maps (0.8 in the paper).
    thresholds : array_like, optional
        The sweep's thresholds (default 0, 0.01, ..., 1).
    slice_axis : int
        Slice axis for per-slice Dice.
    calibration_bins : int
    extras : bool
        False: the paper's measures only (no MSSEG-2016 rule, threshold sweep
        or calibration), as the per-epoch training validation needs them.

    Returns
    -------
    dict
        ``{"summary": {name: float or None}, "lesion": {...}, "NAWM": {...},
        ...}``: ``summary`` holds the headline scalars (NaN written as None)
        that the tables aggregate; the other entries hold the details (sweep
        curves, per-lesion volumes and Dice, reliability curve, per-slice Dice,
        voxel counts).

        Summary keys name their definition: ``lesion_dice`` is one Dice over
        the whole volume; ``NAWM_dice_volume`` and ``GM_dice_volume`` are
        whole-volume Dice, ``NAWM_dice_slice_mean`` and ``GM_dice_slice_mean``
        the mean of the per-slice Dice over the slices where either mask is
        non-empty (the paper's figure); ``T1_relative_deviation`` is over the
        brain, ``T1_relative_deviation_<tissue>_core`` over a tissue core.

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
        ann = reference_lesion_mask(arrays["ref['lesion']"], "ref['lesion']")
        axis = parse_axis(slice_axis, 3, "slice_axis")
        paper = lesion_rule("paper", voxel_size=voxel_size)
        ref_paper = reference_lesions(ann, paper)
        pred_mask = binarize_map(prob, lesion_threshold, name="pred['lesion']")
        at_paper = evaluate_lesions(pred_mask, ref_paper, paper, float(lesion_threshold))
        d = dice(pred_mask, ann)
        n_pred, n_ref = int(np.count_nonzero(pred_mask)), int(np.count_nonzero(ann))
        record["lesion"] = {
            "threshold": float(lesion_threshold),
            "reference_threshold": definitions.REFERENCE_LESION_THRESHOLD,
            "dice": d,
            "dice_per_slice": dice_per_slice(pred_mask, ann, axis=axis).tolist(),
            "paper": at_paper.to_dict(),
            "n_pred_voxels": n_pred,
            "n_ref_voxels": n_ref,
            "n_overlap_voxels": int(np.count_nonzero(pred_mask & ann)),
            "ref_volume_ml": float(n_ref * np.prod(vsize) / 1000.0),
            "pred_volume_ml": float(n_pred * np.prod(vsize) / 1000.0),
        }
        summary.update(lesion_dice=d, lesion_detection_rate=at_paper.detection_rate, lesion_n_ref=float(at_paper.n_ref))
        if extras:
            msseg = lesion_rule("msseg", voxel_size=voxel_size)  # warns when voxel_size is None
            at_msseg = evaluate_lesions(pred_mask, reference_lesions(ann, msseg), msseg, float(lesion_threshold))
            sweep = threshold_sweep(prob, ann, thr, rule="paper", voxel_size=vsize, ref_lesions=ref_paper)
            calib = reliability_curve(prob, ann, n_bins=calibration_bins, mask=brain, clip=True)
            best_t, best_d = sweep.best_dice()
            record["lesion"].update(msseg=at_msseg.to_dict(), sweep=sweep.to_dict(), calibration=calib.to_dict())
            summary.update(
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
        first = reference_lesion_mask(as_array(ref["lesion"], "ref['lesion']", min_ndim=3), "ref['lesion']")
        second = binary_mask(as_array(second_annotation, "second_annotation", min_ndim=3), "second_annotation")
        same_shape(first, second, "ref['lesion']", "second_annotation")
        summary["intra_observer_dice"] = dice(first, second)

    for key in TISSUE_KEYS:
        if key in keys:
            td = tissue_dice(arrays[f"pred[{key!r}]"], arrays[f"ref[{key!r}]"], threshold=tissue_threshold, axis=slice_axis)
            record[key] = {
                "threshold": td.threshold,
                "dice_volume": td.volume,
                "dice_slice_mean": td.slice_mean,
                "dice_per_slice": td.per_slice.tolist(),
            }
            summary[f"{key}_dice_volume"] = td.volume
            summary[f"{key}_dice_slice_mean"] = td.slice_mean

    by_name: dict[str, ArrayLike] = dict(tissues or {})
    if tissue_fractions:
        cores = core_masks(tissue_fractions, core_fraction=core_fraction)
        clash = sorted(set(cores) & set(by_name))
        if clash:
            raise ValidationError(f"tissues and tissue_fractions both name {clash}")
        by_name.update(cores)
    for key in QUANTITATIVE_KEYS:
        if key in keys:
            p, r = arrays[f"pred[{key!r}]"], arrays[f"ref[{key!r}]"]
            rd = relative_deviation(p, r, brain)
            # n_voxels: how many voxels the mean is over (callers that pool subjects weight by it)
            entry: dict[str, Any] = {"relative_deviation": rd, "n_voxels": int(relative_deviations(p, r, brain).size)}
            summary[f"{key}_relative_deviation"] = rd
            if by_name:
                by_tissue = relative_deviation_by_tissue(p, r, by_name, mask=brain)
                entry["by_tissue"] = by_tissue
                if tissue_fractions:
                    entry["core_fraction"] = float(core_fraction)
                for name, value in by_tissue.items():
                    summary[f"{key}_relative_deviation_{name}"] = value
            record[key] = entry

    record["summary"] = {k: _nan_to_none(v) for k, v in summary.items()}
    return record

