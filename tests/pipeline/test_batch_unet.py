"""The U-net as a batch stage: a tiny network trained a few steps on the tiny cohort,
then run through ``mrfengine batch`` (slabs, both sites), read back by evaluate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.io import Cohort
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import Pipeline, derived_complete, run_subject
from mrfengine.pipeline.batch import batch_client, run_batch
from mrfengine.pipeline.derived import derived_attrs

_TOML = """\
cohort = "{cohort}"
network = "MSE-5"
output_dir = "{out}"
epochs = 1
batch_size = 16
patches_per_slice = 1
patch_size = 32
depth = 2
base_filters = 4
seed = 3
threads = 1
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("unet-batch") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", seed=1)
    return path


@pytest.fixture(scope="module")
def model(cohort, tmp_path_factory) -> Path:
    """A tiny MSE-5 network trained for one short epoch (seconds)."""
    from mrfengine.nn.train import load_settings, train

    root = tmp_path_factory.mktemp("unet-train")
    toml = root / "run.toml"
    toml.write_text(_TOML.format(cohort=cohort, out="out"))
    result = train(load_settings(toml))
    return result.model_path


@pytest.fixture(scope="module")
def client():
    with batch_client(n_workers=2, processes=False, dashboard=False) as c:
        yield c


def test_unet_stage_in_a_batch(cohort, model, client, tmp_path):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(cohort, path)
    pipe = Pipeline.from_dict({"pipeline": {"name": "unet", "stages": ["unet"]},
                               "unet": {"model": str(model), "precision": "float32"}})
    report = run_batch(path, pipe, client, slab_planes=4)
    assert report.ok, [r.error for r in report.results]
    c = Cohort.open(path)
    assert {c[s].site for s in c.subjects} == {"1", "2"}  # both sequences of the cohort
    for sid in c.subjects:
        assert derived_complete(path, sid, "unet")
        sub = c[sid]
        brain = np.asarray(sub.brain_mask[:]) > 0
        for name in ("T1", "T2star", "NAWM", "GM", "lesion"):
            arr = np.asarray(sub.array(f"derived/unet/{name}")[:])
            assert arr.shape == sub.shape
            # the outside rule: every map, quantitative or probability, 0 outside the brain mask
            assert (arr[~brain] == 0).all() and np.isfinite(arr).all()
        write = derived_attrs(path, sid, "unet")["provenance"]["stages"]["write"]
        assert write == {"brain_mask": "cohort store (brain_mask)", "outside_brain_value": 0.0}
        info = derived_attrs(path, sid, "unet")["provenance"]["stages"]["unet"]
        assert info["network"] == "MSE-5" and info["device"] == "cpu" and len(info["sha256"]) == 64
        assert info["tta"] == "none"
    # The slabs change nothing for a slice-wise network: a whole-volume run gives the same bytes.
    whole = tmp_path / "whole.zarr"
    shutil.copytree(cohort, whole)
    assert run_subject(whole, "sub-04", pipe).status == "ok"
    for name in ("T1", "lesion"):
        a = np.asarray(c["sub-04"].array(f"derived/unet/{name}")[:])
        b = np.asarray(Cohort.open(whole)["sub-04"].array(f"derived/unet/{name}")[:])
        np.testing.assert_array_equal(a, b)
    # evaluate reads the stage's maps as a prediction source
    from mrfengine.report.evaluate import evaluate_cohort

    result = evaluate_cohort(path, pred="derived:unet", ref="truth", figures=False)
    assert set(result["subjects"]) == set(c.subjects)
    for rec in result["subjects"].values():
        assert sorted(rec["maps"]) == ["GM", "NAWM", "T1", "T2star", "lesion"]
        assert np.isfinite(rec["summary"]["T1_relative_deviation"])


def test_unet_with_match_needs_a_prefix(cohort, model, client, tmp_path):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(cohort, path)
    clash = Pipeline.from_dict({"stages": ["match", "unet"], "unet": {"model": str(model)}})
    report = run_batch(path, clash, client, subjects=["1"])
    assert report.results[0].status == "failed" and "prefix" in report.results[0].error
    both = Pipeline.from_dict({"name": "both", "stages": ["match", "unet"],
                               "unet": {"model": str(model), "prefix": "unet_"}})
    report = run_batch(path, both, client, subjects=["1"])
    assert report.ok, report.results[0].error
    listed = Cohort.open(path)["sub-01"].arrays
    assert "derived/both/T1" in listed and "derived/both/unet_T1" in listed and "derived/both/unet_lesion" in listed


def test_unet_stage_refuses_a_missing_model(cohort, client, tmp_path):
    path = tmp_path / "tiny.zarr"
    shutil.copytree(cohort, path)
    pipe = Pipeline.from_dict({"stages": ["unet"], "unet": {"model": str(tmp_path / "nope.pt")}})
    report = run_batch(path, pipe, client, subjects=["2"])
    assert report.results[0].status == "failed" and "nope.pt" in report.results[0].error
    with pytest.raises(ValidationError, match="has no option"):
        Pipeline.from_dict({"stages": ["unet"], "unet": {"modle": "x.pt"}})
