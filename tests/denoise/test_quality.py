"""Denoising quality on data with known noise: sigma within 5% in the brain, RMSE no worse than dipy's."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mrfengine.denoise import mppca
from mrfengine.denoise._synthetic import lowrank_rician, mrf_phantom


def _rmse(a, b, where):
    return float(np.sqrt(np.mean((a[where] - b[where]) ** 2)))


@pytest.fixture(scope="module")
def lowrank():
    clean, noisy, sigma = lowrank_rician((24, 24, 12), snr=20, seed=21)
    return {"clean": clean, "noisy": noisy, "sigma": sigma, "brain": np.ones(clean.shape[:3], bool)}


@pytest.fixture(scope="module")
def mrf():
    return mrf_phantom((40, 40, 10), snr=50, seed=22)


@pytest.mark.parametrize("case", ["lowrank", "mrf"])
@pytest.mark.parametrize("estimator", ["mp", "exp2"])
def test_sigma_within_5_percent_in_the_brain(case, estimator, request):
    data = request.getfixturevalue(case)
    r = mppca(data["noisy"], estimator=estimator)
    brain = data["brain"]
    assert np.median(r.sigma[brain]) == pytest.approx(data["sigma"], rel=0.05)
    assert np.mean(r.sigma[brain]) == pytest.approx(data["sigma"], rel=0.05)


@pytest.mark.parametrize("case", ["lowrank", "mrf"])
def test_denoising_removes_most_of_the_noise(case, request):
    data = request.getfixturevalue(case)
    brain = data["brain"]
    before = _rmse(data["noisy"], data["clean"], brain)
    after = _rmse(mppca(data["noisy"]).denoised, data["clean"], brain)
    assert after < 0.5 * before


@pytest.mark.parametrize("case", ["lowrank", "mrf"])
def test_rmse_no_worse_than_dipy(case, request):
    localpca = pytest.importorskip("dipy.denoise.localpca")
    data = request.getfixturevalue(case)
    brain = data["brain"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = localpca.mppca(data["noisy"], patch_radius=2)
    ours = mppca(data["noisy"], patch_radius=2).denoised
    assert _rmse(ours, data["clean"], brain) < _rmse(theirs, data["clean"], brain)
