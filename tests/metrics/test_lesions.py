"""Lesion-wise metrics on hand-built lesions whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrfengine import metrics
from mrfengine.errors import ValidationError


def box(mask, lo, hi, value=True):
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = value
    return mask


def test_diagonal_touch_is_one_lesion_under_26_connectivity():
    m = np.zeros((8, 8, 8), dtype=bool)
    box(m, (0, 0, 0), (2, 2, 2))  # 8 voxels
    box(m, (2, 2, 2), (4, 4, 4))  # touches the first by one corner only
    assert metrics.label_lesions(m, connectivity=26).n == 1
    assert metrics.label_lesions(m, connectivity=18).n == 2
    assert metrics.label_lesions(m, connectivity=6).n == 2
    les = metrics.label_lesions(m)
    assert les.sizes.tolist() == [16]


def test_edge_touch_joins_under_18_not_6():
    m = np.zeros((6, 6, 6), dtype=bool)
    m[1, 1, 1] = m[2, 2, 1] = True
    assert metrics.label_lesions(m, connectivity=18).n == 1
    assert metrics.label_lesions(m, connectivity=6).n == 2


def test_nine_voxel_lesion_is_ignored_by_the_paper_rule():
    ref = np.zeros((20, 20, 20), dtype=bool)
    box(ref, (1, 1, 1), (4, 4, 2))  # 3x3x1 = 9 voxels
    box(ref, (10, 10, 10), (12, 11, 15))  # 2x1x5 = 10 voxels
    pred = np.zeros(ref.shape, dtype=np.float32)
    pred[11, 10, 12] = 0.5  # one voxel inside the 10-voxel lesion
    assert metrics.lesion_detection_rate(pred, ref) == 1.0
    ev = metrics.lesion_wise(pred, ref)
    assert ev.n_ref == 1
    pred[2, 2, 1] = 0.9  # hitting the 9-voxel lesion changes nothing
    pred[11, 10, 12] = 0.0
    assert metrics.lesion_detection_rate(pred, ref) == 0.0
    assert metrics.lesion_detection_rate(pred, ref, min_size=9) == 0.5


def test_one_voxel_at_the_threshold_detects_and_below_does_not():
    ref = box(np.zeros((10, 10, 10), dtype=bool), (2, 2, 2), (5, 5, 5))
    ref = box(ref, (6, 6, 6), (9, 9, 9))
    pred = np.zeros(ref.shape, dtype=np.float32)
    pred[3, 3, 3] = 0.33
    pred[7, 7, 7] = np.nextafter(np.float32(0.33), np.float32(0))
    assert metrics.lesion_detection_rate(pred, ref, threshold=0.33) == 0.5


def test_no_reference_lesions_gives_nan():
    ref = np.zeros((6, 6, 6), dtype=bool)
    pred = np.ones((6, 6, 6))
    assert math.isnan(metrics.lesion_detection_rate(pred, ref))
    ref[0, 0, 0] = True  # one voxel: still no lesion of 10 voxels
    assert math.isnan(metrics.lesion_detection_rate(pred, ref))
    ev = metrics.lesion_wise(pred, ref)
    assert ev.n_ref == 0 and ev.n_pred == 1
    assert math.isnan(ev.detection_rate)
    assert ev.precision == 0.0  # the predicted lesion touches no counted lesion
    assert ev.f1 == 0.0


def test_empty_prediction_and_empty_reference():
    z = np.zeros((5, 5, 5), dtype=bool)
    ev = metrics.lesion_wise(z, z)
    assert ev.n_ref == ev.n_pred == 0
    assert math.isnan(ev.detection_rate) and math.isnan(ev.precision) and math.isnan(ev.f1)
    ref = box(z.copy(), (0, 0, 0), (3, 3, 3))
    ev = metrics.lesion_wise(z, ref)
    assert ev.detection_rate == 0.0 and math.isnan(ev.precision) and ev.f1 == 0.0
    assert ev.lesion_dice.tolist() == [0.0] and ev.pred_volume_ml.tolist() == [0.0]


def test_msseg_drops_lesions_of_3_mm3_or_less_using_voxel_size():
    ref = np.zeros((20, 20, 20), dtype=bool)
    ref[1, 1, 1:4] = True  # 3 voxels
    ref[5, 5, 1:5] = True  # 4 voxels
    ref[10, 10, 1:3] = True  # 2 voxels
    ref[15, 15, 1] = True  # 1 voxel
    pred = ref.astype(np.float32)
    # 1 mm isotropic: 3 mm^3 is not more than 3 -> only the 4-voxel lesion counts (Anima: floor(3/1)+1 = 4)
    ev = metrics.lesion_wise(pred, ref, rule="msseg", voxel_size=1.0)
    assert ev.n_ref == 1
    # 1 x 1 x 2 mm (the study's voxels): 2 voxels = 4 mm^3 counts, 1 voxel = 2 mm^3 does not
    ev = metrics.lesion_wise(pred, ref, rule="msseg", voxel_size=(1, 1, 2))
    assert ev.n_ref == 3
    assert ev.n_pred == 3 and ev.precision == 1.0
    # the paper rule counts none of these small lesions
    assert metrics.lesion_wise(pred, ref, rule="paper").n_ref == 0


def test_msseg_needs_more_than_ten_percent_covered():
    ref = box(np.zeros((10, 10, 10), dtype=bool), (0, 0, 0), (4, 5, 1))  # 20 voxels
    pred = np.zeros(ref.shape, dtype=np.float32)
    pred[0, 0:2, 0] = 1.0  # 2 of 20 = 10%: not more than 10%
    # the predicted part itself must survive the 3 mm^3 floor: make it 2 voxels of 2 mm^3
    assert metrics.lesion_detection_rate(pred, ref, rule="msseg", voxel_size=(1, 1, 2)) == 0.0
    pred[0, 2, 0] = 1.0  # 3 of 20 = 15%
    assert metrics.lesion_detection_rate(pred, ref, rule="msseg", voxel_size=(1, 1, 2)) == 1.0
    # the paper's rule detects it from one voxel on
    pred[:] = 0
    pred[0, 0, 0] = 1.0
    assert metrics.lesion_detection_rate(pred, ref, min_size=1) == 1.0


def test_msseg_ignores_predicted_specks_below_the_floor():
    ref = box(np.zeros((10, 10, 10), dtype=bool), (0, 0, 0), (2, 2, 1))  # 4 voxels of 1 mm^3
    pred = np.zeros(ref.shape, dtype=np.float32)
    pred[0, 0, 0] = pred[1, 1, 0] = 1.0  # two single-voxel predicted lesions under 6-connectivity
    assert metrics.lesion_detection_rate(pred, ref, rule="msseg", connectivity=6) == 0.0
    # under 26-connectivity they form one 2-voxel lesion: still under 3 mm^3
    assert metrics.lesion_detection_rate(pred, ref, rule="msseg") == 0.0
    pred[0, 1, 0] = pred[1, 0, 0] = 1.0
    assert metrics.lesion_detection_rate(pred, ref, rule="msseg") == 1.0


def test_lesion_wise_precision_f1_and_per_lesion_figures():
    ref = np.zeros((30, 30, 30), dtype=bool)
    box(ref, (1, 1, 1), (5, 5, 5))  # A: 64 voxels
    box(ref, (10, 10, 10), (13, 13, 13))  # B: 27 voxels, missed
    pred = np.zeros(ref.shape, dtype=bool)
    box(pred, (3, 1, 1), (7, 5, 5))  # overlaps A by 32, 64 voxels
    box(pred, (20, 20, 20), (22, 22, 22))  # a false positive of 8 voxels
    ev = metrics.lesion_wise(pred, ref, voxel_size=(1, 1, 2))
    assert (ev.n_ref, ev.n_detected, ev.n_pred, ev.n_pred_true) == (2, 1, 2, 1)
    assert ev.detection_rate == 0.5 and ev.precision == 0.5 and ev.f1 == pytest.approx(0.5)
    assert ev.detected.tolist() == [True, False]
    assert ev.covered_voxels.tolist() == [32, 0]
    assert ev.lesion_dice == pytest.approx([2 * 32 / 128, 0.0])
    assert ev.ref_volume_ml == pytest.approx([64 * 2 / 1000, 27 * 2 / 1000])
    assert ev.pred_volume_ml == pytest.approx([64 * 2 / 1000, 0.0])
    d = ev.to_dict()
    assert d["per_lesion"]["dice"] == pytest.approx([0.5, 0.0])
    assert d["threshold"] is None  # a bool prediction is not thresholded


def test_predicted_lesion_touching_two_reference_lesions_counts_for_both():
    ref = np.zeros((12, 12, 3), dtype=bool)
    box(ref, (0, 0, 0), (3, 3, 3))  # 27
    box(ref, (6, 0, 0), (9, 3, 3))  # 27
    pred = box(np.zeros(ref.shape, dtype=bool), (2, 1, 1), (7, 2, 2))  # 5-voxel bar joining both
    ev = metrics.lesion_wise(pred, ref)
    assert ev.n_detected == 2 and ev.n_pred == 1 and ev.precision == 1.0
    assert ev.pred_volume_ml == pytest.approx([0.005, 0.005])
    assert ev.lesion_dice == pytest.approx([2 * 1 / 32, 2 * 1 / 32])


def test_two_dimensional_masks_and_bad_options():
    ref = np.zeros((10, 10), dtype=bool)
    ref[1:5, 1:5] = True
    pred = ref.astype(float)
    assert metrics.lesion_detection_rate(pred, ref, connectivity=8) == 1.0
    with pytest.raises(ValidationError, match="connectivity"):
        metrics.lesion_detection_rate(pred, ref)  # 26 does not exist in 2D
    with pytest.raises(ValidationError, match="rule"):
        metrics.lesion_detection_rate(pred, ref, connectivity=8, rule="brats")
    with pytest.raises(ValidationError, match="voxel_size"):
        metrics.lesion_wise(pred, ref, connectivity=8, voxel_size=(1, 1, 1))
    with pytest.raises(ValidationError, match="min_overlap"):
        metrics.lesion_wise(pred, ref, connectivity=8, min_overlap=1.0)
    with pytest.raises(ValidationError, match="other than 0 and 1"):
        metrics.lesion_detection_rate(pred, ref * 0.5, connectivity=8)


def test_label_lesions_volumes_and_dropping():
    m = np.zeros((10, 10, 10), dtype=bool)
    box(m, (0, 0, 0), (2, 2, 3))  # 12
    box(m, (6, 6, 6), (7, 7, 9))  # 3
    les = metrics.label_lesions(m, min_size=4, voxel_size=(1, 1, 2))
    assert les.n == 1 and les.n_dropped == 1
    assert les.volumes_ml.tolist() == pytest.approx([0.024])
    assert set(np.unique(les.labels).tolist()) == {0, 1}
