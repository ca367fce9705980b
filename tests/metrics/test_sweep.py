"""The one-pass sweeps held to the per-threshold reference on random volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from mrfengine import metrics
from mrfengine.errors import ValidationError
from mrfengine.metrics.sweep import detection_sweep_reference, dice_sweep_reference


def random_case(seed: int, shape=(40, 40, 12), dtype=np.float32):
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.56
    prob = ndimage.gaussian_filter(ref.astype(np.float64), 1.0) + 0.3 * ndimage.gaussian_filter(rng.random(shape), 1.0)
    prob = np.clip(prob, 0, 1).astype(dtype)
    # put values exactly on thresholds, where inclusive/exclusive would differ
    flat = prob.reshape(-1)
    idx = rng.choice(flat.size, 200, replace=False)
    flat[idx] = rng.integers(0, 101, idx.size) / 100
    return prob, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dice_sweep_equals_reference(seed, dtype):
    prob, ref = random_case(seed, dtype=dtype)
    fast = metrics.dice_sweep(prob, ref)
    slow = dice_sweep_reference(prob, ref)
    np.testing.assert_array_equal(fast, slow)
    assert fast.shape == (101,)


@pytest.mark.parametrize("seed", [0, 1])
def test_detection_sweep_equals_reference_paper_rule(seed):
    prob, ref = random_case(seed)
    assert metrics.label_lesions(ref, min_size=10).n >= 3  # the case has lesions to detect
    fast = metrics.detection_sweep(prob, ref)
    slow = detection_sweep_reference(prob, ref)
    np.testing.assert_array_equal(fast, slow)
    assert fast[0] == 1.0  # everything reaches threshold 0


def test_detection_sweep_equals_reference_with_coverage_and_msseg():
    prob, ref = random_case(3)
    t = np.linspace(0, 1, 21)
    for options in ({"min_overlap": 0.25}, {"rule": "msseg", "voxel_size": (1, 1, 2)}, {"connectivity": 6, "min_size": 3}):
        fast = metrics.detection_sweep(prob, ref, t, **options)
        slow = detection_sweep_reference(prob, ref, t, **options)
        np.testing.assert_array_equal(fast, slow, err_msg=str(options))


def test_threshold_sweep_combines_both_and_finds_the_best_dice():
    prob, ref = random_case(4)
    sw = metrics.threshold_sweep(prob, ref)
    np.testing.assert_array_equal(sw.dice, metrics.dice_sweep(prob, ref))
    np.testing.assert_array_equal(sw.detection_rate, metrics.detection_sweep(prob, ref))
    t, d = sw.best_dice()
    assert d == np.nanmax(sw.dice) and metrics.dice(prob, ref, t) == d
    assert sw.to_dict()["thresholds"][50] == 0.5


def test_known_curve_on_a_hand_built_case():
    ref = np.zeros((6, 6, 6), dtype=bool)
    ref[:2, :2, :3] = True  # 12 voxels, one lesion
    prob = np.zeros(ref.shape)
    prob[ref] = 0.6
    prob[0, 0, 0] = 0.9
    t = [0.0, 0.5, 0.6, 0.7, 0.9, 0.95]
    # >= t: all 216 voxels, 12, 12, 1, 1, none
    np.testing.assert_allclose(metrics.dice_sweep(prob, ref, t), [24 / 228, 1, 1, 2 / 13, 2 / 13, 0])
    np.testing.assert_array_equal(metrics.detection_sweep(prob, ref, t), [1, 1, 1, 1, 1, 0])


def test_empty_reference_and_bool_prediction():
    z = np.zeros((5, 5, 5), dtype=bool)
    prob = np.linspace(0, 1, 125).reshape(5, 5, 5)
    d = metrics.dice_sweep(prob, z)
    assert (d[:-1] == 0).all()  # something predicted, nothing to find
    assert math.isnan(metrics.dice_sweep(np.zeros((5, 5, 5)), z, [0.5])[0])
    assert np.isnan(metrics.detection_sweep(prob, z)).all()
    ref = z.copy()
    ref[:3, :3, :3] = True
    mask = ref.copy()
    np.testing.assert_array_equal(metrics.dice_sweep(mask, ref, [0.1, 0.9]), [1.0, 1.0])
    np.testing.assert_array_equal(metrics.detection_sweep(mask, ref, [0.1, 0.9]), [1.0, 1.0])


def test_thresholds_are_checked():
    prob, ref = random_case(0, shape=(8, 8, 4))
    with pytest.raises(ValidationError, match="increasing"):
        metrics.dice_sweep(prob, ref, [0.5, 0.2])
    with pytest.raises(ValidationError, match="1D"):
        metrics.dice_sweep(prob, ref, [])
    with pytest.raises(ValidationError, match="finite"):
        metrics.dice_sweep(prob, ref, [0.1, np.nan])
