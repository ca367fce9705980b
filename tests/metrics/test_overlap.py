"""Dice on hand-built volumes whose answer is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrfengine import metrics
from mrfengine.errors import MRFEngineError, ValidationError


def cube(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_two_cubes_known_overlap():
    # 4x4x4 cubes shifted by 2 along x: 64 voxels each, 2x4x4 = 32 shared.
    a = cube((10, 10, 10), (1, 1, 1), (5, 5, 5))
    b = cube((10, 10, 10), (3, 1, 1), (7, 5, 5))
    assert metrics.dice(a, b) == pytest.approx(2 * 32 / (64 + 64))
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(a, ~a) == 0.0


def test_probability_maps_are_binarised_inclusive_on_both_sides():
    ref = np.array([0.0, 0.5, 0.8, 0.9, 1.0])
    pred = np.array([0.8, 0.79, 0.8, 0.2, 0.95])
    # at 0.8 (inclusive): pred -> [1,0,1,0,1], ref -> [0,0,1,1,1]: 2 shared of 3 + 3
    assert metrics.dice(pred, ref, threshold=0.8) == pytest.approx(4 / 6)


def test_threshold_equal_to_value_counts_as_positive_in_float32():
    pred = np.array([0.33, 0.3299], dtype=np.float32)
    ref = np.array([True, False])
    assert metrics.dice(pred, ref, threshold=0.33) == 1.0


def test_empty_against_empty_is_nan_by_default_and_configurable():
    z = np.zeros((4, 4, 4), dtype=bool)
    assert math.isnan(metrics.dice(z, z))
    assert metrics.dice(z, z, empty=1.0) == 1.0
    one = z.copy()
    one[0, 0, 0] = True
    assert metrics.dice(one, z) == 0.0
    assert metrics.dice(z, one) == 0.0


def test_bool_inputs_ignore_the_threshold():
    a = cube((6, 6, 6), (0, 0, 0), (3, 3, 3))
    assert metrics.dice(a, a, threshold=0.99) == 1.0


def test_non_binary_map_without_threshold_is_rejected():
    with pytest.raises(ValidationError, match="threshold"):
        metrics.dice(np.array([0.2, 0.7]), np.array([0, 1]))
    # 0/1 numbers are fine
    assert metrics.dice(np.array([0.0, 1.0]), np.array([0, 1])) == 1.0


def test_shape_mismatch_and_nan_are_rejected():
    with pytest.raises(ValidationError, match="same shape"):
        metrics.dice(np.zeros((2, 3), bool), np.zeros((3, 2), bool))
    with pytest.raises(MRFEngineError, match="NaN"):
        metrics.dice(np.array([np.nan, 0.5]), np.array([0, 1]), threshold=0.5)
    with pytest.raises(ValidationError, match="real number"):
        metrics.dice(np.array([0.5]), np.array([1]), threshold="0.5")


def test_dice_per_slice():
    a = np.zeros((4, 4, 3), dtype=bool)
    b = np.zeros((4, 4, 3), dtype=bool)
    a[:2, :2, 0] = True  # slice 0: identical squares
    b[:2, :2, 0] = True
    a[:2, :, 1] = True  # slice 1: 8 and 4 voxels, 4 shared
    b[:2, :2, 1] = True
    # slice 2: both empty
    got = metrics.dice_per_slice(a, b)
    assert got[0] == 1.0
    assert got[1] == pytest.approx(2 * 4 / 12)
    assert math.isnan(got[2])
    # another slice axis gives the slices of that axis
    along0 = metrics.dice_per_slice(a, b, axis=0)
    assert along0.shape == (4,)
    assert math.isnan(along0[3])


def test_tissue_dice_at_eighty_percent():
    ref = np.zeros((4, 4, 2))
    pred = np.zeros((4, 4, 2))
    ref[:, :2, 0] = 0.9  # 8 voxels above 0.8
    pred[:, :2, 0] = 0.85
    pred[:, 2, 0] = 0.8  # 4 more, inclusive
    ref[:, :2, 1] = 0.79  # below the threshold: slice 1 is empty on both sides
    td = metrics.tissue_dice(pred, ref)
    assert td.volume == pytest.approx(2 * 8 / (12 + 8))
    assert td.per_slice[0] == pytest.approx(td.volume)
    assert math.isnan(td.per_slice[1])
    assert td.slice_mean == pytest.approx(td.volume)  # the empty slice is not averaged
    assert td.threshold == 0.8
