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
    assert summ["NAWM_dice"] == 1.0 and summ["GM_dice"] == 1.0
    assert summ["T1_relative_deviation_WM"] == pytest.approx(0.05)
    assert summ["T1_relative_deviation_GM"] == pytest.approx(0.02)
    assert summ["T1_relative_deviation"] == pytest.approx(0.035)  # half the voxels each
    assert summ["T2star_relative_deviation"] == pytest.approx(0.1)
    sweep = rec["lesion"]["sweep"]
    assert len(sweep["thresholds"]) == 101 and sweep["detection_rate"][80] == 1.0 and sweep["detection_rate"][81] == 0.0
    json.dumps(summ, allow_nan=False)  # headline values are JSON-safe


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
