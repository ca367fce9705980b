"""The mask stage: a subject without a brain mask is masked from its series (stored, used, exported,
named in the provenance); ``source = "none"`` keeps the whole field of view, ``"series"`` ignores the
stored mask; slabs get the whole subject's mask.  Two subjects of the tiny simulated cohort."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from mrfengine.io import Cohort
from mrfengine.io.cohort import SUBJECT_KEY
from mrfengine.io.exporter import export_array
from mrfengine.masking import BRAIN_MASK_SOURCE, MASK_METHOD
from mrfengine.metrics import dice
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import Pipeline, run_subject
from mrfengine.pipeline.batch import finalize_subject, plan_slabs, prepare_task, run_slab
from mrfengine.pipeline.derived import derived_attrs

BARE = "sub-01"  # its brain_mask is taken off the subject's array list: an imported subject without one
MASKED = "sub-02"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mask") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", n_subjects=2, seed=0)
    group = zarr.open_group(path / "subjects" / BARE, mode="r+")
    attrs = dict(group.attrs[SUBJECT_KEY])
    attrs["arrays"] = [a for a in attrs["arrays"] if a != "brain_mask"]
    group.attrs[SUBJECT_KEY] = attrs
    assert Cohort.open(path)[BARE].brain_mask is None
    return path


def _truth_brain(path: Path, sid: str) -> np.ndarray:
    return np.asarray(zarr.open_array(path / "subjects" / sid / "brain_mask")[...]) > 0


def _derived(path: Path, sid: str, pipeline: str, name: str) -> np.ndarray:
    return np.asarray(Cohort.open(path)[sid].array(f"derived/{pipeline}/{name}")[...])


@pytest.fixture(scope="module")
def auto(cohort: Path) -> Path:
    """The default pipeline (no mask stage named: source "auto") on the subject without a mask."""
    result = run_subject(cohort, BARE, "match")
    assert result.status == "ok", result.error
    assert "derived/match/brain_mask" in result.arrays and result.timings_s["mask"] > 0
    return cohort


def test_a_subject_without_a_mask_is_masked_from_its_series(auto):
    made = _derived(auto, BARE, "match", "brain_mask")
    assert made.dtype == np.float32 and set(np.unique(made)) == {0.0, 1.0}
    made = made > 0
    # the phantom's brain (the truth the import left out): the made mask fits it
    assert dice(made, _truth_brain(auto, BARE)) >= 0.95
    t1, corr = _derived(auto, BARE, "match", "T1"), _derived(auto, BARE, "match", "correlation")
    assert np.all(t1[~made] == 0) and np.all(corr[~made] == 0)  # the outside rule, with the made mask
    assert np.mean(t1[made] > 0) > 0.99  # matched inside it
    prov = derived_attrs(auto, BARE, "match")["provenance"]
    assert prov["stages"]["mask"] == {"source": MASK_METHOD, "option": "auto", "voxels": int(made.sum()),
                                      "fraction": round(float(made.mean()), 6)}
    assert prov["stages"]["write"] == {"brain_mask": MASK_METHOD, "outside_brain_value": 0.0}
    assert prov["stages"]["match"]["n_matched"] <= made.sum()


def test_export_applies_and_names_the_made_mask(auto, tmp_path):
    image = export_array(auto, BARE, "derived/match/T1", tmp_path)
    sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["BrainMaskSource"] == MASK_METHOD and sidecar["OutsideBrainValue"] == 0.0
    mask_image = export_array(auto, BARE, "derived/match/brain_mask", tmp_path)
    assert mask_image.name == f"{BARE}_label-brain_desc-match_mask.nii.gz"
    assert sidecar["BrainMask"] == f"bids::{BARE}/anat/{mask_image.name}"
    mask_sidecar = json.loads(mask_image.with_name(mask_image.name.replace(".nii.gz", ".json")).read_text())
    assert mask_sidecar["Units"] == "1" and "BrainMaskSource" not in mask_sidecar  # a mask is no estimate
    assert mask_sidecar["Type"] == "Brain" and "SkullStripped" not in mask_sidecar


def test_source_none_keeps_the_whole_field_of_view(auto):
    pipe = Pipeline.from_stages("mask,match", name="whole", options={"mask": {"source": "none"}})
    prepared = prepare_task(str(auto), BARE, pipe)
    assert prepared.outputs == {"mask": None, "mask_source": "none"}
    assert prepared.info["mask"] == {"source": "none", "option": "none"}
    slab = plan_slabs(Cohort.open(auto)[BARE].shape[0], pipe, slab_planes=4)[0]  # one slab is enough (fast)
    outcome = run_slab(str(auto), BARE, pipe, slab, prepared)
    assert outcome.failure is None and "brain_mask" not in outcome.derived
    assert outcome.info["write"]["brain_mask"] == "none"
    made = _derived(auto, BARE, "match", "brain_mask")[slab.keep_lo:slab.keep_hi] > 0
    t1 = outcome.derived["T1"]
    assert np.mean(t1[~made] > 0) > 0.5  # the background is matched too (noise fits some atom)


def test_source_series_ignores_the_stored_mask_and_slabs_share_it(cohort):
    pipe = Pipeline.from_stages("mask,match", name="series", options={"mask": {"source": "series"}})
    # the batch's way, without a cluster: one prepare task, three slabs, a finalize
    prepared = prepare_task(str(cohort), MASKED, pipe)
    assert prepared.failure is None and prepared.info["mask"]["source"] == MASK_METHOD
    slabs = plan_slabs(Cohort.open(cohort)[MASKED].shape[0], pipe, slab_planes=4)
    assert len(slabs) == 3
    outcomes = [run_slab(str(cohort), MASKED, pipe, slab, prepared) for slab in slabs]
    result = finalize_subject(str(cohort), MASKED, pipe, outcomes)
    assert result.status == "ok", result.error
    made = _derived(cohort, MASKED, "series", "brain_mask") > 0
    np.testing.assert_array_equal(made, prepared.outputs["mask"])  # every slab used the whole subject's mask
    stored = _truth_brain(cohort, MASKED)
    assert not np.array_equal(made, stored) and dice(made, stored) >= 0.95
    assert np.all(_derived(cohort, MASKED, "series", "T1")[~made] == 0)
    stages = derived_attrs(cohort, MASKED, "series")["provenance"]["stages"]
    assert stages["mask"]["source"] == MASK_METHOD and stages["mask"]["option"] == "series"
    # "auto" on a subject with a mask takes the store's and stores no copy of it
    auto = prepare_task(str(cohort), MASKED, Pipeline.from_stages("match"))
    assert auto.info["mask"]["source"] == BRAIN_MASK_SOURCE
    np.testing.assert_array_equal(auto.outputs["mask"], stored)
