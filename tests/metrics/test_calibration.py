"""Reliability curve, ECE and Brier score on constructed probability maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrfengine import metrics
from mrfengine.errors import ValidationError


def test_perfectly_calibrated_bins_give_zero_ece():
    # 20 voxels at 0.25 of which 5 are lesion, 20 at 0.75 of which 15 are
    prob = np.r_[np.full(20, 0.25), np.full(20, 0.75)]
    ref = np.r_[np.arange(20) < 5, np.arange(20) < 15]
    curve = metrics.reliability_curve(prob, ref, n_bins=4)
    assert curve.ece == pytest.approx(0.0)
    assert curve.counts.tolist() == [0, 20, 0, 20]  # bins [0, .25), [.25, .5), [.5, .75), [.75, 1]
    np.testing.assert_allclose(curve.observed[[1, 3]], [0.25, 0.75])
    assert math.isnan(curve.observed[0]) and math.isnan(curve.mean_predicted[2])


def test_overconfident_map_has_known_ece_and_brier():
    prob = np.full(10, 0.9)
    ref = np.arange(10) < 5  # half are lesion
    assert metrics.expected_calibration_error(prob, ref) == pytest.approx(0.4)
    assert metrics.brier_score(prob, ref) == pytest.approx((5 * 0.1**2 + 5 * 0.9**2) / 10)


def test_bin_edges_are_half_open_and_one_is_in_the_last_bin():
    prob = np.array([0.0, 0.1, 0.5, 0.99, 1.0])
    curve = metrics.reliability_curve(prob, np.zeros(5, bool), n_bins=10)
    assert curve.counts.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]


def test_mask_range_and_clip():
    prob = np.array([0.2, 0.2, 1.3, -0.1])
    ref = np.array([0, 1, 1, 0])
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        metrics.reliability_curve(prob, ref)
    clipped = metrics.reliability_curve(prob, ref, n_bins=5, clip=True)
    assert clipped.counts.tolist() == [1, 2, 0, 0, 1]
    masked = metrics.reliability_curve(prob, ref, n_bins=5, mask=np.array([1, 1, 0, 0]))
    assert masked.counts.sum() == 2 and masked.ece == pytest.approx(0.3)
    assert math.isnan(metrics.expected_calibration_error(prob, ref, mask=np.zeros(4, bool)))
