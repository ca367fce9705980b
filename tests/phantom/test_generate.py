"""Cohort generation: content, ground truth, determinism, resumption."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mrfengine.phantom.generate as gen
from mrfengine.dictionary import SliceDictionaries
from mrfengine.errors import StoreError
from mrfengine.io import Cohort, validate_cohort
from mrfengine.matching import match_slices
from mrfengine.phantom import SiteConfig, cohort_preset, simulate_cohort


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_tiny_cohort_content(tiny_cohort):
    c = tiny_cohort
    assert len(c.subjects) == 6 and not c.incomplete
    assert validate_cohort(c.path, deep=True).ok
    assert set(c.split.values()) == {"train", "validation", "test"}
    assert c.sequence("1").n_slices == 12 and c.sequence("2").sms_factor == 3
    groups = {c[s].group for s in c.subjects}
    assert groups == {"healthy", "patient"}
    for sub in c:
        assert sub.mrf.shape == (35, 12, 64, 64) and sub.mrf.dtype == np.float32
        assert sub.mrf.chunks == (35, 1, 64, 64)
        assert set(sub.truth) >= {"T1", "T2star", "B1", "PD", "GM", "WM", "CSF", "lesion", "DGM", "lesion_id"}
        assert "T2w" in sub.reference and "lesion" in sub.annotations
        np.testing.assert_allclose(np.diag(sub.affine)[:3], (3.5, 3.5, 6.0))
        les = np.asarray(sub.truth["lesion"][...])
        if sub.group == "healthy":
            assert les.max() == 0 and not np.asarray(sub.annotations["lesion"][...]).any()
            assert sub.attrs["n_lesions"] == 0
        else:
            assert sub.attrs["n_lesions"] >= 3 and les.max() > 0.5
            assert np.asarray(sub.annotations["lesion"][...]).sum() > 0
            # Lesions raise T1 above the white matter around them.
            t1 = np.asarray(sub.truth["T1"][...])
            wm = np.asarray(sub.truth["WM"][...])
            assert np.median(t1[les > 0.5]) > 1.2 * np.median(t1[wm > 0.9])
        b1 = np.asarray(sub.truth["B1"][...])
        assert 0.7 <= b1.min() and b1.max() <= 1.3
    assert any("lesion_repeat" in c[s].annotations for s in c.subjects)


def test_deep_grey_matter_is_distinguishable(tiny_cohort):
    sub = tiny_cohort[tiny_cohort.subjects[0]]
    t2 = np.asarray(sub.truth["T2star"][...])
    dgm = np.asarray(sub.truth["DGM"][...])
    gm = np.asarray(sub.truth["GM"][...])
    assert dgm.max() > 0.5
    assert np.median(t2[dgm > 0.5]) < 0.8 * np.median(t2[(gm - dgm) > 0.7])


def test_background_noise_matches_the_recorded_sigma(tiny_cohort):
    sub = tiny_cohort[tiny_cohort.subjects[1]]
    brain = np.asarray(sub.truth["PD"][...]) == 0
    mrf = np.asarray(sub.mrf[...])
    sigma = sub.attrs["noise_sigma"]
    assert sigma > 0
    assert mrf[:, brain].mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)


def test_same_seed_same_bytes(tmp_path):
    cfg = cohort_preset("tiny", n_subjects=2)
    simulate_cohort(tmp_path / "a.zarr", config=cfg, seed=11)
    simulate_cohort(tmp_path / "b.zarr", config=cfg, seed=11)
    simulate_cohort(tmp_path / "c.zarr", config=cfg, seed=12)
    a, b, c = (_digest(tmp_path / n) for n in ("a.zarr", "b.zarr", "c.zarr"))
    assert a == b and len(a) > 50
    assert a["subjects/sub-01/mrf/c/0/0/0/0"] != c["subjects/sub-01/mrf/c/0/0/0/0"]


def test_interrupted_simulation_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    cfg = cohort_preset("tiny", n_subjects=3)
    clean = tmp_path / "clean.zarr"
    simulate_cohort(clean, config=cfg, seed=5)
    path = tmp_path / "broken.zarr"
    real = gen.add_rician_noise
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13 + 6:  # 13 calls per subject (T2w, 12 slices): sub-02, slice 5
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "add_rician_noise", crash)
    with pytest.raises(KeyboardInterrupt):
        simulate_cohort(path, config=cfg, seed=5)
    monkeypatch.undo()
    c = Cohort.open(path)
    assert c.subjects == ["sub-01"] and c.incomplete == ["sub-02", "sub-03"]
    with pytest.raises(StoreError, match="incomplete"):
        c["sub-02"]
    rep = validate_cohort(path)
    assert not rep.ok and any("sub-02: incomplete" in p for p in rep.problems)
    assert validate_cohort(path, allow_incomplete=True).ok
    done = []
    simulate_cohort(path, config=cfg, seed=5, progress=lambda sid, what: done.append((sid, what)))
    assert done == [("sub-01", "skipped"), ("sub-02", "done"), ("sub-03", "done")]
    assert _digest(path) == _digest(clean)


def test_resume_refuses_other_settings(tmp_path):
    cfg = cohort_preset("tiny", n_subjects=1)
    simulate_cohort(tmp_path / "x.zarr", config=cfg, seed=1)
    with pytest.raises(StoreError, match=r"other settings \(seed: 1 \(asked: 2\)\)"):
        simulate_cohort(tmp_path / "x.zarr", config=cfg, seed=2)
    # The message names each setting that differs, nested ones by their path.
    other = replace(cfg, anatomy=replace(cfg.anatomy, tissue_fractions="population"))
    with pytest.raises(StoreError, match=r"config\.anatomy\.tissue_fractions: 'subject' \(asked: 'population'\)"):
        simulate_cohort(tmp_path / "x.zarr", config=other, seed=1)
    # An imported cohort is not resumed as a simulation either.
    from mrfengine.io.cohort import SiteEntry, create_cohort
    from mrfengine.sequence import hermann2021

    create_cohort(tmp_path / "imported.zarr", sites={"1": SiteEntry(hermann2021(1, n_slices=12))})
    with pytest.raises(StoreError, match="imported.zarr: was not simulated"):
        simulate_cohort(tmp_path / "imported.zarr", config=cfg, seed=1)
    os.makedirs(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a cohort"):
        simulate_cohort(tmp_path / "plain", config=cfg, seed=1)
    # overwrite starts afresh
    c = simulate_cohort(tmp_path / "x.zarr", config=cfg, seed=2, overwrite=True)
    assert c.generator["seed"] == 2


def test_noise_free_subject_matches_its_truth(tmp_path):
    from dataclasses import replace

    cfg = cohort_preset("tiny", n_subjects=1)
    cfg = replace(cfg, n_healthy=0, sites=(SiteConfig("1", snr=None), SiteConfig("2", snr=None)), quantize=False)
    c = simulate_cohort(tmp_path / "nf.zarr", config=cfg, seed=2)
    sub = c[c.subjects[0]]
    zs = slice(4, 8)
    mrf = np.asarray(sub.mrf[:, zs])
    wm = np.asarray(sub.truth["WM"][zs])
    pure = wm > 0.97
    assert pure.sum() > 20
    dicts = SliceDictionaries(sub.sequence, cache=False)
    r = match_slices(mrf, lambda z: dicts.for_slice(z + 4), slice_axis=1, channel_axis=0, mask=pure, backend="numpy")
    for key in ("T1", "T2star"):
        truth = np.asarray(sub.truth[key][zs])[pure]
        err = np.abs(r.params[key][pure] / truth - 1)
        assert np.median(err) < 0.03, key
    assert np.median(np.abs(r.params["B1"][pure] - np.asarray(sub.truth["B1"][zs])[pure])) <= 0.05 + 1e-6


@pytest.mark.slow
def test_parallel_workers_give_the_same_bytes(tmp_path):
    cfg = cohort_preset("tiny", n_subjects=2)
    simulate_cohort(tmp_path / "one.zarr", config=cfg, seed=9)
    simulate_cohort(tmp_path / "two.zarr", config=cfg, seed=9, workers=2)
    assert _digest(tmp_path / "one.zarr") == _digest(tmp_path / "two.zarr")


def test_distortion_moves_the_mrf_only(tmp_path):
    cfg = cohort_preset("tiny", n_subjects=1)
    plain = simulate_cohort(tmp_path / "p.zarr", config=cfg, seed=3)
    warped = simulate_cohort(tmp_path / "d.zarr", config=cfg, seed=3, distortion=True)
    a, b = plain["sub-01"], warped["sub-01"]
    assert "distortion" not in a.truth and "distortion" in b.truth
    for name in ("T1", "lesion", "GM"):
        np.testing.assert_array_equal(a.truth[name][...], b.truth[name][...])
    np.testing.assert_array_equal(a.reference["T2w"][...], b.reference["T2w"][...])
    d = np.asarray(b.truth["distortion"][...])
    assert 0.3 < np.abs(d).max() * 3.5 <= cfg.distortion.max_mm + 5 * cfg.distortion.random_sd_mm
    ma, mb = np.asarray(a.mrf[...]), np.asarray(b.mrf[...])
    assert not np.array_equal(ma, mb)
    # Intensity is conserved along y (the Jacobian), up to the edges and noise.
    brain = np.asarray(a.truth["PD"][...]).sum(axis=1) > 0
    ra, rb = ma[20].sum(axis=2), mb[20].sum(axis=2)  # sum over x: (Z, Y) profiles, frame 20
    assert abs(ra.sum() - rb.sum()) / ra.sum() < 0.02 and brain.any()
