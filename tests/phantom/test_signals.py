"""MRF signals of phantom voxels: mixing, noise, distortion, and matching them."""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.dictionary import SliceDictionaries, fingerprints
from mrfengine.matching import match
from mrfengine.phantom.signals import (
    add_rician_noise,
    distort_slice,
    noise_sigma,
    quantization_step,
    slice_signals,
)
from mrfengine.phantom.tissues import Compartment
from mrfengine.sequence import hermann2021
from mrfengine.tissue import TISSUES


def _compartments(shape, specs):
    """specs: name -> (fraction, t1, t2, pd), constants over the volume."""
    return {n: Compartment(*(np.full(shape, v, np.float32) for v in vals)) for n, vals in specs.items()}


@pytest.mark.parametrize("site", [1, 2])
def test_pure_voxel_is_its_fingerprint_with_the_slice_timing(site):
    seq = hermann2021(site, n_slices=12)
    shape = (12, 3, 4)
    comps = _compartments(shape, {"WM": (1.0, 812.0, 55.5, 0.69)})
    b1 = np.full(shape, 0.93, np.float32)
    for z in (0, 5, 11):
        got = slice_signals(seq, z, comps, b1)
        want = fingerprints(seq, int(seq.slot_of_slice(z)), 812.0, 55.5, 0.93, 0.69)[0]
        np.testing.assert_allclose(got[:, 1, 2], want, rtol=2e-6)
    # Different slots, different fingerprints (the slice timing matters).
    assert not np.allclose(slice_signals(seq, 0, comps, b1), slice_signals(seq, 1, comps, b1))


def test_partial_volumes_mix_as_signed_signals():
    seq = hermann2021(1, n_slices=12)
    shape = (12, 2, 2)
    comps = _compartments(shape, {"WM": (0.6, 830.0, 53.0, 0.69), "CSF": (0.4, 4000.0, 400.0, 1.0)})
    b1 = np.ones(shape, np.float32)
    slot = int(seq.slot_of_slice(4))
    s_wm = fingerprints(seq, slot, 830.0, 53.0, 1.0, 0.6 * 0.69, magnitude=False)[0]
    s_csf = fingerprints(seq, slot, 4000.0, 400.0, 1.0, 0.4 * 1.0, magnitude=False)[0]
    got = slice_signals(seq, 4, comps, b1)[:, 0, 0]
    np.testing.assert_allclose(got, np.abs(s_wm + s_csf), rtol=2e-6)
    # After an inversion the two can cancel: magnitude mixing would be wrong.
    assert np.any(np.abs(s_wm + s_csf) < np.abs(s_wm) + np.abs(s_csf) - 1e-3)


def test_noise_free_pure_tissue_matches_back():
    seq = hermann2021(1, n_slices=12)
    dicts = SliceDictionaries(seq, cache=False)
    names = ["WM", "GM", "DGM"]
    shape = (12, 1, len(names))
    t1 = np.array([[[TISSUES[n].t1_ms * 1.013 for n in names]]], np.float32).repeat(12, 0)
    t2 = np.array([[[TISSUES[n].t2star_ms * 0.987 for n in names]]], np.float32).repeat(12, 0)
    comps = {"t": Compartment(np.ones(shape, np.float32), t1, t2, np.full(shape, 0.8, np.float32))}
    b1 = np.full(shape, 1.04, np.float32)
    for z in (2, 9):
        sig = slice_signals(seq, z, comps, b1)  # (35, 1, 3)
        r = match(sig[:, 0, :].T, dicts.for_slice(z), backend="numpy")
        # The grid steps by 5%: the nearest atom is within half a step.
        np.testing.assert_array_less(np.abs(r.params["T1"] / t1[z, 0] - 1), 0.026)
        np.testing.assert_array_less(np.abs(r.params["T2star"] / t2[z, 0] - 1), 0.026)
        np.testing.assert_allclose(r.params["B1"], 1.0, atol=1e-6)
        assert np.all(r.correlation > 0.9995)


def test_rician_noise_statistics_and_quantisation():
    rng = np.random.default_rng(0)
    sigma = 0.01
    zero = add_rician_noise(np.zeros((200, 500), np.float32), sigma, rng)
    assert zero.dtype == np.float32
    assert zero.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)  # Rayleigh
    big = add_rician_noise(np.full((200, 500), 0.5, np.float32), sigma, rng)
    assert big.mean() == pytest.approx(0.5 + sigma**2 / (2 * 0.5), abs=2e-4)  # Rician bias sigma^2 / (2 A)
    assert big.std() == pytest.approx(sigma, rel=0.02)
    step = quantization_step(sigma)
    assert step <= sigma / 32 < 2 * step and np.log2(step) == int(np.log2(step))
    np.testing.assert_array_equal(np.mod(big / np.float32(step), 1), 0)
    clean = np.full((3, 3), 0.2, np.float32)
    np.testing.assert_array_equal(add_rician_noise(clean, 0.0, rng), clean)


def test_sigma_follows_the_wm_snr_definition():
    seq = hermann2021(1)
    wm = TISSUES["WM"]
    level = fingerprints(seq, 0, wm.t1_ms, wm.t2star_ms, 1.0, wm.pd).mean()
    assert noise_sigma(seq, 40.0) == pytest.approx(level / 40)
    assert noise_sigma(seq, None) == 0.0


def test_distortion_shifts_along_y():
    rng = np.random.default_rng(0)
    img = rng.random((35, 20, 6)).astype(np.float32)
    np.testing.assert_allclose(distort_slice(img, np.zeros((20, 6), np.float32)), img)
    shifted = distort_slice(img, np.full((20, 6), 2.0, np.float32))
    np.testing.assert_allclose(shifted[:, 2:], img[:, :-2], rtol=1e-6)
