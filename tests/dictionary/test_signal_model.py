"""The signal model against closed forms derived by hand.

Model (shared/mrf-epi/README.md): S = M0 sin(b a) Mz exp(-TE/T2*), then
Mz <- Mz cos(b a); relaxation Mz <- 1 - (1 - Mz) exp(-t/T1); inversion Mz <- -Mz.
"""

import numpy as np
import pytest

from mrfengine.dictionary import fingerprints, longitudinal_magnetisation, slot_timeline
from mrfengine.sequence import Sequence, hermann2021

T1 = np.array([300.0, 830.0, 1330.0, 3000.0])
T2 = np.array([20.0, 53.0, 66.0, 400.0])
B1 = np.array([0.7, 1.0, 1.1, 1.3])


def one_measurement(inversion_slot, n_slices=4, tr=1000.0, fa=40.0, te=20.0):
    return Sequence((fa,), (te,), (tr,), (inversion_slot,), n_slices=n_slices)


@pytest.mark.parametrize("slot", [0, 1, 3])
def test_single_excitation_from_equilibrium(slot):
    seq = one_measurement(None)
    s = fingerprints(seq, slot, T1, T2, B1, 0.8, magnitude=False)[:, 0]
    expect = 0.8 * np.sin(np.deg2rad(40.0) * B1) * np.exp(-20.0 / T2)
    np.testing.assert_allclose(s, expect, rtol=1e-12)


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_inversion_recovery_then_one_excitation(slot):
    # Inversion before slot 0; slot k is excited k * TR / n_slots later.
    seq = one_measurement(0, tr=2000.0)
    ti = slot * 2000.0 / 4
    mz = longitudinal_magnetisation(seq, slot, T1, B1)[:, 0]
    np.testing.assert_allclose(mz, 1 - 2 * np.exp(-ti / T1), rtol=1e-12, atol=1e-15)
    s = fingerprints(seq, slot, T1, T2, B1)[:, 0]
    np.testing.assert_allclose(s, np.abs(np.sin(np.deg2rad(40) * B1) * (1 - 2 * np.exp(-ti / T1)) * np.exp(-20 / T2)))


def test_inversion_after_the_slice_acts_on_the_next_measurement():
    # Two measurements, TR 1200 ms in 4 slots of 300 ms; the inversion of the
    # first is played before slot 2, i.e. after slot 1's excitation.
    fa = np.deg2rad(30.0)
    seq = Sequence((30.0, 30.0), (10.0, 10.0), (1200.0, 1200.0), (2, None), n_slices=4)
    mz = longitudinal_magnetisation(seq, 1, T1, 1.0)
    assert np.allclose(mz[:, 0], 1.0)
    after = np.cos(fa)                                    # t = 300 ms (slot 1 of meas. 1)
    at_inv = 1 - (1 - after) * np.exp(-300.0 / T1)        # t = 600 ms: inversion
    inverted = -at_inv
    expect = 1 - (1 - inverted) * np.exp(-900.0 / T1)     # t = 1500 ms: slot 1 of meas. 2
    np.testing.assert_allclose(mz[:, 1], expect, rtol=1e-12)
    # Slot 2 sees the inversion immediately before its own excitation: TI = 0.
    mz2 = longitudinal_magnetisation(seq, 2, T1, 1.0)
    np.testing.assert_allclose(mz2[:, 0], -1.0)


def test_steady_state_of_repeated_excitations():
    n, tr, fa = 300, 500.0, 50.0
    seq = Sequence((fa,) * n, (10.0,) * n, (tr,) * n, (None,) * n, n_slices=2)
    e1 = np.exp(-tr / T1)
    c = np.cos(np.deg2rad(fa) * B1)
    mz_ss = (1 - e1) / (1 - c * e1)
    mz = longitudinal_magnetisation(seq, 1, T1, B1)
    np.testing.assert_allclose(mz[:, -1], mz_ss, rtol=1e-9)
    s = fingerprints(seq, 1, T1, T2, B1)[:, -1]
    np.testing.assert_allclose(s, np.sin(np.deg2rad(fa) * B1) * mz_ss * np.exp(-10.0 / T2), rtol=1e-9)


def test_dummy_measurements_drive_towards_steady_state():
    n = 5
    base = dict(flip_angle_deg=(50.0,) * n, echo_time_ms=(10.0,) * n, repetition_time_ms=(500.0,) * n,
                inversion_slot=(None,) * n, n_slices=2)
    plain = longitudinal_magnetisation(Sequence(**base), 0, T1, 1.0)
    dummy = longitudinal_magnetisation(Sequence(**base, dummy_measurements=3), 0, T1, 1.0)
    longer = Sequence(**{**base, "flip_angle_deg": (50.0,) * (n + 3), "echo_time_ms": (10.0,) * (n + 3),
                         "repetition_time_ms": (500.0,) * (n + 3), "inversion_slot": (None,) * (n + 3)})
    np.testing.assert_allclose(dummy, longitudinal_magnetisation(longer, 0, T1, 1.0)[:, 3:], rtol=1e-12)
    assert not np.allclose(plain, dummy)


def test_slot_dictionaries_differ_exactly_where_inversion_timing_differs():
    # Constant TR, one inversion in measurement 3 (index 2) before slot 2.
    n, slots = 6, 4
    seq = Sequence((40.0,) * n, (15.0,) * n, (800.0,) * n, (None, None, 2, None, None, None), n_slices=slots)
    mz = np.stack([longitudinal_magnetisation(seq, k, T1, B1) for k in range(slots)])
    # Before the inversion every slot has the same history (time-shifted).
    for k in range(1, slots):
        np.testing.assert_allclose(mz[k, :, :2], mz[0, :, :2], rtol=1e-13)
    # Measurement 3: slots 0 and 1 are excited before the inversion, 2 and 3 after it.
    np.testing.assert_allclose(mz[1, :, 2], mz[0, :, 2], rtol=1e-13)
    np.testing.assert_allclose(mz[2, :, 2], -mz[0, :, 2], rtol=1e-13)  # TI = 0
    assert np.all(np.abs(mz[3, :, 2] - mz[2, :, 2]) > 1e-6)
    # From then on each slot has its own inversion delay: all differ.
    for j in range(3, n):
        for a in range(slots):
            for b in range(a + 1, slots):
                assert np.all(np.abs(mz[a, :, j] - mz[b, :, j]) > 1e-9), (a, b, j)


def test_hermann2021_timeline():
    seq = hermann2021(1)
    tl = slot_timeline(seq, 5)
    assert (tl.kind == 1).sum() == 35 and (tl.kind == 0).sum() == 15
    assert np.all(tl.delay_ms >= 0)
    assert sorted(tl.frame[tl.frame >= 0].tolist()) == list(range(35))
    # Slot 4 of measurement 3 receives its inversion right before its excitation.
    tl4 = slot_timeline(seq, 4)
    i = np.flatnonzero(tl4.frame == 2)[0]
    assert tl4.kind[i - 1] == 0 and tl4.delay_ms[i] == 0.0


def test_t2star_only_scales_the_fingerprint():
    seq = hermann2021(1)
    a = fingerprints(seq, 7, 900.0, 40.0, 1.0)
    b = fingerprints(seq, 7, 900.0, 80.0, 1.0)
    te = np.asarray(seq.echo_time_ms)
    np.testing.assert_allclose(a / b, np.exp(-te / 40.0 + te / 80.0)[None], rtol=1e-12)


def test_rejects_bad_parameters():
    from mrfengine.errors import SequenceError, ValidationError

    seq = hermann2021(1)
    with pytest.raises(ValidationError):
        fingerprints(seq, 0, -1.0, 50.0)
    with pytest.raises(ValidationError):
        fingerprints(seq, 0, [800.0, 900.0], [50.0, 60.0, 70.0])
    with pytest.raises(SequenceError):
        fingerprints(seq, 60, 800.0, 50.0)
