"""evaluate_subject on a hand-built subject, and the public contract."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest

import mrfengine
from mrfengine import metrics
from mrfengine.errors import ValidationError


def hand_built_subject():
    shape = (16, 16, 4)
    wm = np.zeros(shape, dtype=bool)
    wm[:8] = True
    gm = ~wm
    t1_ref = np.where(wm, 830.0, 1330.0)
    t1_pred = np.where(wm, 830.0 * 1.05, 1330.0 * 0.98)  # 5% in WM, 2% in GM
    t2_ref = np.where(wm, 53.0, 66.0)
    t2_pred = t2_ref * 1.1
    lesion = np.zeros(shape, dtype=bool)
    lesion[2:5, 2:5, 1:3] = True  # 18 voxels
    prob = np.where(lesion, 0.8, 0.05)
    prob[2, 2, 1] = 0.2  # one lesion voxel below 33%
    second = lesion.copy()
    second[2:5, 2:5, 2] = False  # the second reading misses one slice: 9 of 18
    return {
        "pred": {"T1": t1_pred, "T2star": t2_pred, "NAWM": wm * 0.9, "GM": gm * 0.85, "lesion": prob},
        "ref": {"T1": t1_ref, "T2star": t2_ref, "NAWM": wm * 0.95, "GM": gm * 0.9, "lesion": lesion},
        "second": second,
        "tissues": {"WM": wm, "GM": gm},
    }


def test_evaluate_subject_known_values():
    s = hand_built_subject()
    rec = metrics.evaluate_subject(s["pred"], s["ref"], second_annotation=s["second"], tissues=s["tissues"])
    summ = rec["summary"]
    assert summ["lesion_dice"] == pytest.approx(2 * 17 / (17 + 18))
    assert summ["lesion_detection_rate"] == 1.0
    assert summ["lesion_n_ref"] == 1
    assert summ["intra_observer_dice"] == pytest.approx(2 * 9 / 27)
    assert summ["NAWM_dice_volume"] == 1.0 and summ["GM_dice_volume"] == 1.0
    assert summ["NAWM_dice_slice_mean"] == 1.0 and summ["GM_dice_slice_mean"] == 1.0
    assert "NAWM_dice" not in summ and "GM_dice" not in summ  # every Dice key names its definition
    assert summ["T1_relative_deviation_WM"] == pytest.approx(0.05)
    assert summ["T1_relative_deviation_GM"] == pytest.approx(0.02)
    assert summ["T1_relative_deviation"] == pytest.approx(0.035)  # half the voxels each
    assert summ["T2star_relative_deviation"] == pytest.approx(0.1)
    sweep = rec["lesion"]["sweep"]
    assert len(sweep["thresholds"]) == 101 and sweep["detection_rate"][80] == 1.0 and sweep["detection_rate"][81] == 0.0
    json.dumps(summ, allow_nan=False)  # headline values are JSON-safe
    les = rec["lesion"]
    assert (les["n_pred_voxels"], les["n_ref_voxels"], les["n_overlap_voxels"]) == (17, 18, 17)
    assert rec["T1"]["n_voxels"] == 16 * 16 * 4


def test_extras_off_keeps_the_paper_measures_and_their_values():
    s = hand_built_subject()
    full = metrics.evaluate_subject(s["pred"], s["ref"], voxel_size=1.0)
    quick = metrics.evaluate_subject(s["pred"], s["ref"], voxel_size=1.0, extras=False)
    assert "sweep" not in quick["lesion"] and "lesion_ece" not in quick["summary"]
    assert quick["summary"] == {k: v for k, v in full["summary"].items() if k in quick["summary"]}
    assert {"lesion_dice", "lesion_detection_rate", "NAWM_dice_slice_mean", "T1_relative_deviation"} <= set(
        quick["summary"])


def test_a_true_lesion_fraction_is_the_reference_at_one_half_whatever_the_operating_threshold():
    """The reference annotation of a fraction map is fraction >= 0.5, not the prediction's 0.33."""
    shape = (8, 8, 3)
    frac = np.zeros(shape, np.float32)
    frac[2:6, 2:6, :] = 1.0
    frac[1, 2:6, :] = 0.4  # partial-volume rim: lesion in a 0.33 reference, not in the 0.5 one
    prob = (frac >= 0.5).astype(np.float32) * 0.9
    for t in (0.33, 0.6):
        rec = metrics.evaluate_subject({"lesion": prob}, {"lesion": frac}, lesion_threshold=t, extras=False)
        assert rec["summary"]["lesion_dice"] == 1.0
        assert rec["lesion"]["n_ref_voxels"] == 48 and rec["lesion"]["reference_threshold"] == 0.5
    assert metrics.reference_lesion_mask(frac).sum() == 48
    binary = frac >= 0.5
    np.testing.assert_array_equal(metrics.reference_lesion_mask(binary.astype(np.uint8)), binary)
    with pytest.raises(ValidationError, match=r"in \[0, 1\]"):
        metrics.reference_lesion_mask(frac * 3)


def test_tissue_deviations_are_over_cores_of_the_true_fractions():
    """T1/T2* deviation in a tissue: voxels whose true fraction of it is >= CORE_FRACTION (0.9)."""
    shape = (10, 4, 2)
    column = np.ones(shape, np.float32)
    wm = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], np.float32)[:, None, None] * column
    gm = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], np.float32)[:, None, None] * column
    t1_ref = np.full(shape, 1000.0)
    t1_pred = t1_ref * (1 + 0.1 * wm)  # deviation = the WM fraction / 10
    rec = metrics.evaluate_subject({"T1": t1_pred}, {"T1": t1_ref},
                                   tissue_fractions={"WM": wm, "GM": gm})
    summ = rec["summary"]
    core_wm = wm >= metrics.CORE_FRACTION  # inclusive: the row at 0.9 (float32) is a core
    assert core_wm[:, 0, 0].tolist() == [False] * 9 + [True]
    assert summ["T1_relative_deviation_WM_core"] == pytest.approx(0.1 * 0.9, rel=1e-6)
    assert summ["T1_relative_deviation_GM_core"] == pytest.approx(0.1 * 0.05, rel=1e-6)  # rows 0 and 1
    assert rec["T1"]["core_fraction"] == 0.9
    masks = metrics.core_masks({"WM": wm}, core_fraction=0.5)
    assert list(masks) == ["WM_core"] and masks["WM_core"].sum() == 5 * 8  # 0.5 ... 0.9
    with pytest.raises(ValidationError, match="core_fraction"):
        metrics.core_masks({"WM": wm}, core_fraction=0.0)
    with pytest.raises(ValidationError, match="both name"):
        metrics.evaluate_subject({"T1": t1_pred}, {"T1": t1_ref}, tissues={"WM_core": core_wm},
                                 tissue_fractions={"WM": wm})


def test_the_paper_thresholds_are_named_once():
    assert (metrics.LESION_THRESHOLD, metrics.TISSUE_THRESHOLD) == (0.33, 0.8)
    assert (metrics.REFERENCE_LESION_THRESHOLD, metrics.CORE_FRACTION) == (0.5, 0.9)
    sig = inspect.signature(metrics.evaluate_subject)
    assert sig.parameters["lesion_threshold"].default is metrics.LESION_THRESHOLD
    assert sig.parameters["tissue_threshold"].default is metrics.TISSUE_THRESHOLD
    assert inspect.signature(metrics.tissue_dice).parameters["threshold"].default is metrics.TISSUE_THRESHOLD


def test_lesion_free_subject_gives_undefined_not_zero():
    s = hand_built_subject()
    z = np.zeros_like(s["ref"]["lesion"])
    rec = metrics.evaluate_subject({"lesion": np.zeros(z.shape)}, {"lesion": z})
    assert rec["summary"]["lesion_dice"] is None
    assert rec["summary"]["lesion_detection_rate"] is None


def test_evaluate_subject_checks():
    s = hand_built_subject()
    with pytest.raises(ValidationError, match="unknown map keys"):
        metrics.evaluate_subject({"T1map": s["pred"]["T1"]}, s["ref"])
    with pytest.raises(ValidationError, match="one shape"):
        metrics.evaluate_subject({"T1": s["pred"]["T1"][:8]}, {"T1": s["ref"]["T1"]})
    with pytest.raises(ValidationError, match="share no map key"):
        metrics.evaluate_subject({"T1": s["pred"]["T1"]}, {"GM": s["ref"]["GM"]})


def test_contract_names_and_defaults():
    assert mrfengine.metrics is metrics and "metrics" in mrfengine.__all__
    sig = inspect.signature(metrics.dice)
    assert list(sig.parameters)[:3] == ["pred", "ref", "threshold"] and sig.parameters["threshold"].default is None
    sig = inspect.signature(metrics.lesion_detection_rate)
    assert list(sig.parameters)[:6] == ["pred", "ref", "threshold", "min_size", "connectivity", "rule"]
    assert sig.parameters["threshold"].default == 0.33
    assert sig.parameters["connectivity"].default == 26 and sig.parameters["rule"].default == "paper"
    sig = inspect.signature(metrics.relative_deviation)
    assert list(sig.parameters)[:3] == ["pred", "ref", "mask"]
    # min_size=None means the rule's default: 10 voxels for the paper
    ref = np.zeros((6, 6, 6), bool)
    ref[:3, :3, :1] = True  # 9 voxels
    assert math.isnan(metrics.lesion_detection_rate(ref, ref))
    assert metrics.lesion_detection_rate(ref, ref, threshold=0.33, min_size=9, connectivity=26, rule="paper") == 1.0
