"""The Marchenko-Pastur rule: vectorised vs loop, and answers known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.denoise._common import classify, classify_one, own_window_start, window_any, window_extent


def _covariance_eigenvalues(x: np.ndarray) -> np.ndarray:
    c = x - x.mean(axis=0)
    return np.linalg.eigvalsh(c.T @ c / (x.shape[0] - 1))


@pytest.mark.parametrize("estimator", ["mp", "exp2"])
def test_vectorised_rule_equals_the_loop(estimator):
    rng = np.random.default_rng(0)
    spectra = []
    for _ in range(300):
        rank = rng.integers(0, 8)
        n = rng.choice([27, 125, 343])
        signal = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, 35)) * rng.uniform(0, 8)
        spectra.append(_covariance_eigenvalues(signal + rng.normal(size=(n, 35)))[None])
        s2, p = classify(spectra[-1], n, estimator)
        s2_one, p_one = classify_one(spectra[-1][0], n, estimator)
        assert p[0] == p_one
        assert s2[0] == s2_one


def test_pure_noise_keeps_no_component_and_finds_sigma():
    rng = np.random.default_rng(1)
    lam = _covariance_eigenvalues(2.0 * rng.normal(size=(4000, 35)))
    sigma2, p = classify_one(lam, 4000, "mp")
    assert p == 0
    assert sigma2 == pytest.approx(4.0, rel=0.02)


@pytest.mark.parametrize("estimator", ["mp", "exp2"])
def test_strong_low_rank_signal_is_counted(estimator):
    """Strong components are never missed; the top noise eigenvalue straying
    above the Marchenko-Pastur edge can add one (MP-PCA's known bias)."""
    rng = np.random.default_rng(2)
    counts = []
    for trial in range(120):
        rank = 1 + trial % 6
        signal = rng.normal(size=(125, rank)) @ rng.normal(size=(rank, 35)) * 30
        lam = _covariance_eigenvalues(signal + 0.5 * rng.normal(size=(125, 35)))
        sigma2, p = classify_one(lam, 125, estimator)
        assert rank <= p <= rank + 1
        assert sigma2 == pytest.approx(0.25, rel=0.15)
        counts.append(p == rank)
    assert np.mean(counts) > 0.7


def test_zero_and_constant_windows():
    assert classify_one(np.zeros(35), 125, "mp") == (0.0, 0)
    s2, p = classify(np.zeros((3, 35)), 125, "exp2")
    assert (p == 0).all() and (s2 == 0).all()


def test_rank_deficient_windows_use_only_the_top_eigenvalues():
    # 27 samples, 35 frames: only 26 eigenvalues can be non-zero; the 9 zeros must not count as noise.
    rng = np.random.default_rng(3)
    lam = _covariance_eigenvalues(rng.normal(size=(27, 35)))
    assert np.sum(lam > 1e-10) == 26
    sigma2, p = classify_one(lam, 27, "mp")
    assert sigma2 == pytest.approx(lam[-26:][: 26 - p].mean())
    assert sigma2 > 0.5


def test_exp2_never_keeps_more_components_than_mp():
    # exp2's gamma is larger, so its noise test accepts at least as many noise components.
    rng = np.random.default_rng(4)
    for _ in range(200):
        x = rng.normal(size=(125, 3)) @ rng.normal(size=(3, 35)) * rng.uniform(0, 1) + rng.normal(size=(125, 35))
        lam = _covariance_eigenvalues(x)
        assert classify_one(lam, 125, "exp2")[1] <= classify_one(lam, 125, "mp")[1]


def test_window_geometry_helpers():
    assert window_extent((10, 3, 1), (2, 2, 2)) == (5, 3, 1)
    np.testing.assert_array_equal(own_window_start(7, 2, 5), [0, 0, 0, 1, 2, 2, 2])
    mask = np.zeros((6, 5, 4), bool)
    mask[5, 0, 3] = True
    act = window_any(mask, (3, 2, 2))
    assert act.shape == (4, 4, 3)
    expected = np.zeros((4, 4, 3), bool)
    expected[3, 0, 2] = True
    np.testing.assert_array_equal(act, expected)
