import json

import numpy as np
import pytest

from mrfengine.errors import InputFileError, SequenceError
from mrfengine.sequence import (
    Sequence,
    even_odd_order,
    hermann2021,
    load_sequence,
    preset,
    repetition_time_from_echo_time,
    resolve_sequence,
    save_sequence,
)


def small(**kw):
    args = dict(
        flip_angle_deg=(30.0, 40.0, 50.0),
        echo_time_ms=(10.0, 12.0, 14.0),
        repetition_time_ms=(400.0, 400.0, 400.0),
        inversion_slot=(0, None, 2),
        n_slices=4,
    )
    args.update(kw)
    return Sequence(**args)


def test_hermann2021_site1_matches_the_paper():
    s = hermann2021(1)
    assert s.n_measurements == 35 and s.n_slices == 60 and s.n_slots == 60 and s.sms_factor == 1
    assert sum(s.inversion) == 15
    # Inversions before the odd measurements 1..29, played before slots 1, 5, ..., 57 (1-based).
    assert [i + 1 for i, f in enumerate(s.inversion) if f] == list(range(1, 30, 2))
    assert [k for k in s.inversion_slot if k is not None] == list(range(0, 57, 4))
    assert min(s.flip_angle_deg) == 34 and max(s.flip_angle_deg) == 86
    assert min(s.echo_time_ms) == 16.0 and max(s.echo_time_ms) == 76.5
    assert min(s.repetition_time_ms) == pytest.approx(3530.0)
    assert max(s.repetition_time_ms) == pytest.approx(6370.0)
    # Even slice positions are acquired first, then the odd ones.
    assert s.slot_order == even_odd_order(60)
    assert s.slot_of_slice(0) == 0 and s.slot_of_slice(2) == 1 and s.slot_of_slice(1) == 30


def test_hermann2021_site2_uses_sms3_and_wraps_inversion_slots():
    s = hermann2021(2)
    assert s.n_slots == 20 and s.sms_factor == 3
    assert [k for k in s.inversion_slot if k is not None] == [(4 * i) % 20 for i in range(15)]
    assert s.slices_of_slot(0) == (0, 20, 40)
    z = np.arange(60)
    slots = s.slot_of_slice(z)
    assert np.array_equal(slots[:20], slots[20:40]) and np.array_equal(slots[:20], slots[40:])
    for k in range(20):
        assert all(s.slot_of_slice(p) == k for p in s.slices_of_slot(k))


def test_tr_rule():
    assert repetition_time_from_echo_time(16.0) == pytest.approx(3530.0)
    assert repetition_time_from_echo_time(76.5) == pytest.approx(6370.0)


@pytest.mark.parametrize(
    "kw, text",
    [
        (dict(echo_time_ms=(10.0, -1.0, 14.0)), "echo_time_ms must be positive"),
        (dict(repetition_time_ms=(400.0, 0.0, 400.0)), "repetition_time_ms must be positive"),
        (dict(flip_angle_deg=(30.0, 0.0, 50.0)), "flip angles must lie in (0, 180]"),
        (dict(flip_angle_deg=(30.0, 181.0, 50.0)), "flip angles must lie in (0, 180]"),
        (dict(echo_time_ms=(10.0, 12.0)), "echo_time_ms must have one entry per measurement (3"),
        (dict(inversion_slot=(0, None)), "inversion_slot must have one entry per measurement"),
        (dict(inversion_slot=(0, None, 4)), "inversion_slot of measurement 3"),
        (dict(n_slices=6, sms_factor=4), "multiple of sms_factor"),
        (dict(slot_order=(0, 1, 1, 3)), "slot_order must be a permutation"),
        (dict(echo_time_ms=(10.0, 120.0, 14.0)), "does not fit in its slot"),
        (dict(flip_angle_deg=(30.0, float("nan"), 50.0)), "must be finite"),
        (dict(n_slices=0), "n_slices and sms_factor must be >= 1"),
    ],
)
def test_nonsense_is_rejected(kw, text):
    with pytest.raises(SequenceError) as err:
        small(**kw)
    assert text in str(err.value)


def test_sequence_error_is_a_value_error():
    with pytest.raises(ValueError):
        small(n_slices=0)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_round_trip(tmp_path, suffix):
    for s in (hermann2021(1), hermann2021(2), small(dummy_measurements=2, slot_order=(3, 2, 1, 0))):
        path = save_sequence(s, tmp_path / f"seq{suffix}")
        assert load_sequence(path) == s
        assert load_sequence(path).digest() == s.digest()


def test_csv_schedule_loads_like_the_preset(tmp_path):
    from importlib import resources

    text = resources.files("mrfengine.sequence").joinpath("data/hermann2021_schedule.csv").read_text()
    path = tmp_path / "schedule.csv"
    path.write_text(text)
    s = load_sequence(path)
    ref = hermann2021(1)
    assert s.digest() == ref.digest()


def test_digest_ignores_name_but_not_physics():
    a = small()
    b = small(name="renamed")
    c = small(echo_time_ms=(10.0, 12.0, 14.5))
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="missing.json"):
        load_sequence(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="bad.json"):
        load_sequence(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**small().to_dict(), "echo_time_ms": [1, 2]}))
    with pytest.raises(SequenceError, match="wrong.json"):
        load_sequence(wrong)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({**small().to_dict(), "colour": "blue"}))
    with pytest.raises(SequenceError, match="unknown sequence fields"):
        load_sequence(extra)


def test_resolve_and_preset():
    assert resolve_sequence("hermann2021-site2") == hermann2021(2)
    assert preset("HERMANN2021") == hermann2021(1)
    with pytest.raises(SequenceError, match="unknown sequence preset"):
        preset("fisp")
