"""Randomised training cohorts and the held-apart cohort (issue 18, parts 2 and 3)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.noise import wm_signal_level
from mrfengine.phantom import (
    RandomisationConfig,
    SiteConfig,
    cohort_preset,
    draw_subject,
    plan_cohort,
    simulate_cohort,
)
from mrfengine.phantom.config import GridConfig
from mrfengine.phantom.randomise import INT16_MAX


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def randomised(tmp_path_factory):
    path = tmp_path_factory.mktemp("rand") / "r.zarr"
    return simulate_cohort(path, config=cohort_preset("tiny", randomise=True), seed=3)


def test_a_regular_cohort_describes_itself_as_before():
    d = cohort_preset("paper").to_dict()
    assert "randomisation" not in d and "held_apart" not in d
    assert "pd_sd" not in d["tissue"] and "t1_offset" not in d["tissue"]
    assert cohort_preset("paper", randomise=True).to_dict()["randomisation"]["enabled"] is True


def test_each_subject_draws_its_own_acquisition(randomised):
    draws = {sid: randomised[sid].attrs["randomisation"] for sid in randomised.subjects}
    gains = np.array([d["gain"] for d in draws.values()])
    snrs = np.array([randomised[sid].attrs["snr"] for sid in randomised.subjects])
    assert np.log10(gains).max() - np.log10(gains).min() > 2  # 6 draws over five decades
    assert ((gains >= 1e-2) & (gains <= 1e3)).all()
    assert ((snrs >= 15) & (snrs <= 80)).all() and len(set(snrs.round(3))) == len(snrs)
    assert {d["int16"] for d in draws.values()} == {True, False}
    for sid, d in draws.items():
        subject = randomised[sid]
        mrf = np.asarray(subject.mrf[:, 6], dtype=np.float64)
        brain = np.asarray(subject.brain_mask[6]).astype(bool)
        level = np.median(mrf.mean(axis=0)[brain])
        # The stored scale follows the gain (the brain's signal is about 0.1-0.4 before it).
        assert 0.05 * d["gain"] < level < 0.6 * d["gain"], (sid, level, d["gain"])
        # the recorded noise is in stored units: the drawn SNR's sigma times the gain
        sigma = wm_signal_level(randomised.sequence(subject.site)) / d["snr"] * d["gain"]
        assert subject.attrs["noise_sigma"] == pytest.approx(sigma, rel=1e-9)
        if d["int16"]:
            counts = mrf / d["int16_slope"]
            assert np.abs(counts - np.rint(counts)).max() < 1e-3 * counts.max()  # multiples of the slope
            assert counts.max() <= INT16_MAX + 0.5
            assert subject.attrs["quantization_step"] == d["int16_slope"]


def test_randomised_cohorts_are_deterministic_per_seed(tmp_path):
    cfg = cohort_preset("tiny", n_subjects=2, randomise=True)
    simulate_cohort(tmp_path / "a.zarr", config=cfg, seed=9)
    simulate_cohort(tmp_path / "b.zarr", config=cfg, seed=9, workers=2)
    a, b = _digest(tmp_path / "a.zarr"), _digest(tmp_path / "b.zarr")
    assert a == b and len(a) > 50


def test_switching_a_range_off_keeps_the_other_draws():
    cfg = cohort_preset("tiny", randomise=True)
    site = cfg.sites[0]
    full = draw_subject(cfg, site, 0.3, np.random.default_rng(5))
    fewer = replace(cfg, randomisation=replace(cfg.randomisation, snr=None, tissue_fractions=None))
    part = draw_subject(fewer, site, 0.3, np.random.default_rng(5))
    assert part.site.snr == site.snr and full.site.snr != site.snr
    assert part.gain == full.gain and part.int16_slope == full.int16_slope
    assert part.record["lesion"] == full.record["lesion"] and part.site.b1_center == full.site.b1_center


def test_int16_storage_rounds_and_saturates():
    cfg = replace(cohort_preset("tiny"), randomisation=RandomisationConfig(enabled=True, int16_share=1.0))
    d = draw_subject(cfg, cfg.sites[0], 0.3, np.random.default_rng(0))
    x = np.array([0.0, 0.3, 1e9], dtype=np.float32)
    stored = d.store(x)
    counts = stored / np.float32(d.int16_slope)
    assert counts[0] == 0 and counts[2] == pytest.approx(INT16_MAX)
    assert counts[1] == pytest.approx(d.record["int16_wm_counts"], abs=0.51)


@pytest.mark.parametrize("bad", [
    dict(gain_log10=(3.0, 1.0)), dict(int16_share=1.5), dict(snr=(0.0, 10.0)), dict(tissue_fractions=("neither",)),
    dict(int16_wm_counts=(100.0, 40000.0)), dict(lesion_elongation_max=(0.5, 2.0)),
])
def test_bad_randomisation_settings_are_named(bad):
    key = next(iter(bad))
    with pytest.raises(ValidationError, match=key):
        RandomisationConfig(enabled=True, **bad)


def test_the_held_apart_cohort_is_test_only_and_unlike_training():
    cfg = cohort_preset("heldout")
    plans = plan_cohort(cfg, 0)
    assert {p.split for p in plans} == {"test"}
    patients = [p for p in plans if p.group == "patient"]
    assert len(patients) >= 4 and {p.site for p in patients} == {"1", "2"}
    assert sum(p.group == "healthy" for p in plans) >= 1
    train = RandomisationConfig(enabled=True)  # the training ranges
    snrs = [s.snr for s in cfg.sites]
    assert all(not train.snr[0] <= s <= train.snr[1] for s in snrs)
    assert cfg.randomisation.gain_log10[0] > train.gain_log10[1]
    assert cfg.randomisation.int16_wm_counts[0] > train.int16_wm_counts[1]
    assert cfg.anatomy.tissue_fractions not in train.tissue_fractions
    assert cfg.lesion.elongation[1] > train.lesion_elongation_max[1]
    assert cfg.lesion.irregularity > train.lesion_irregularity[1]
    assert cfg.tissue.pd_sd > train.tissue_pd_sd[1] and cfg.tissue.t1_offset != 0
    with pytest.raises(ValidationError, match="heldout"):
        cohort_preset("heldout", randomise=True)


def test_held_apart_subjects_are_other_brains(tmp_path):
    grid = GridConfig(shape_zyx=(12, 64, 64), voxel_size_mm=(3.5, 3.5, 6.0), slab_center_mm=17.0)
    regular = replace(cohort_preset("tiny", n_subjects=1), grid=grid)
    held = replace(cohort_preset("heldout", n_subjects=1), grid=grid,
                   sites=(SiteConfig("1", snr=13.0), SiteConfig("2", snr=100.0)))
    a = simulate_cohort(tmp_path / "a.zarr", config=regular, seed=0)
    b = simulate_cohort(tmp_path / "b.zarr", config=held, seed=0)
    da = a[a.subjects[0]].attrs["deformation"]
    db = b[b.subjects[0]].attrs["deformation"]
    assert da != db
    sb = b[b.subjects[0]]
    assert sb.attrs["randomisation"]["int16"] is True and sb.attrs["randomisation"]["gain"] > 10 ** 3.5
    assert b.split[b.subjects[0]] == "test"


def test_mixed_fractions_lie_between_the_two_models():
    from mrfengine.phantom.anatomy import load_template

    one, pop, mixed = (load_template((3.5, 3.5, 6.0), f) for f in ("subject", "population", "mixed"))
    np.testing.assert_allclose(mixed.gm, 0.5 * (one.gm + pop.gm), atol=1e-5)
    assert 0 < np.abs(mixed.wm - one.wm).mean() < np.abs(pop.wm - one.wm).mean()
