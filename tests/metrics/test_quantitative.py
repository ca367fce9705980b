"""Relative deviation of quantitative maps, known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrfengine import metrics
from mrfengine.errors import ValidationError


def test_known_relative_deviation():
    ref = np.array([100.0, 200.0, 400.0, 0.0])
    pred = np.array([105.0, 180.0, 400.0, 50.0])  # 5%, 10%, 0%; the ref = 0 voxel is not counted
    assert metrics.relative_deviation(pred, ref) == pytest.approx(0.05)
    assert metrics.relative_deviation(pred, ref, statistic="median") == pytest.approx(0.05)
    np.testing.assert_allclose(metrics.relative_deviations(pred, ref), [0.05, 0.1, 0.0])


def test_mask_and_non_finite_reference():
    ref = np.array([100.0, 200.0, np.nan, -3.0])
    pred = np.array([110.0, 200.0, 1.0, 1.0])
    assert metrics.relative_deviation(pred, ref) == pytest.approx(0.05)
    assert metrics.relative_deviation(pred, ref, mask=np.array([1, 0, 1, 1])) == pytest.approx(0.1)
    assert math.isnan(metrics.relative_deviation(pred, ref, mask=np.zeros(4, bool)))


def test_nan_prediction_where_counted_is_an_error():
    ref = np.array([100.0, 200.0])
    with pytest.raises(ValidationError, match="NaN"):
        metrics.relative_deviation(np.array([np.nan, 1.0]), ref)
    # outside the mask it does not matter
    assert metrics.relative_deviation(np.array([np.nan, 220.0]), ref, mask=np.array([False, True])) == pytest.approx(0.1)


def test_by_tissue():
    ref = np.full((2, 3), 1000.0)
    pred = np.array([[1010.0, 1010.0, 1010.0], [900.0, 900.0, 900.0]])
    wm = np.array([[True, True, True], [False, False, False]])
    got = metrics.relative_deviation_by_tissue(pred, ref, {"WM": wm, "GM": ~wm, "none": np.zeros_like(wm)})
    assert list(got) == ["WM", "GM", "none"]
    assert got["WM"] == pytest.approx(0.01) and got["GM"] == pytest.approx(0.1)
    assert math.isnan(got["none"])
    brain = np.array([[True, False, False], [True, False, False]])
    assert metrics.relative_deviation_by_tissue(pred, ref, {"WM": wm}, mask=brain)["WM"] == pytest.approx(0.01)


def test_checks():
    with pytest.raises(ValidationError, match="same shape"):
        metrics.relative_deviation(np.ones(3), np.ones(4))
    with pytest.raises(ValidationError, match="mask"):
        metrics.relative_deviation(np.ones(3), np.ones(3), mask=np.ones(4, bool))
    with pytest.raises(ValidationError, match="statistic"):
        metrics.relative_deviation(np.ones(3), np.ones(3), statistic="max")
