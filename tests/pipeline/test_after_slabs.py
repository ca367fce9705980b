"""The stages that run once per subject after the slabs: ``register`` (distortion correction onto the
T2w reference) and ``segment`` (tissue probability maps), alone and through the batch's slab tasks.
Two subjects of the tiny simulated cohort with EPI distortion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from mrfengine.io import Cohort
from mrfengine.io.cohort import SUBJECT_KEY
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import Pipeline, run_subject
from mrfengine.pipeline.batch import finalize_subject, plan_slabs, prepare_task, run_slab
from mrfengine.pipeline.derived import derived_attrs
from mrfengine.registration import Registration

pytest.importorskip("ants")

REGISTER = Pipeline.from_stages("match,register", name="mr")
NO_T2W = "sub-02"  # its reference/T2w is taken off the subject's array list


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("after") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", n_subjects=2, seed=1, distortion=True)
    group = zarr.open_group(path / "subjects" / NO_T2W, mode="r+")
    attrs = dict(group.attrs[SUBJECT_KEY])
    attrs["arrays"] = [a for a in attrs["arrays"] if a != "reference/T2w"]
    group.attrs[SUBJECT_KEY] = attrs
    return path


@pytest.fixture(scope="module")
def registered(cohort: Path) -> Path:
    result = run_subject(cohort, "sub-01", REGISTER)
    assert result.status == "ok", result.error
    assert result.timings_s["register"] > 0
    return cohort


def _arrays(path: Path, sid: str, pipeline: str) -> dict[str, np.ndarray]:
    s = Cohort.open(path)[sid]
    prefix = f"derived/{pipeline}/"
    return {a[len(prefix):]: np.asarray(s.array(a)[...]) for a in s.arrays if a.startswith(prefix)}


def test_register_stores_the_correction_and_the_corrected_maps(registered):
    maps = _arrays(registered, "sub-01", REGISTER.name)
    assert {"T1", "T2star", "M0", "B1", "correlation", "displacement", "brain_mask"} <= set(maps)
    record = derived_attrs(registered, "sub-01", REGISTER.name)["provenance"]["stages"]["register"]
    assert record["reference"] == "reference/T2w" and record["phase_encoding"] == "j" and record["phase_axis"] == 1
    assert record["method"].startswith("ANTs rigid + SyN") and record["itk_threads"] == 1
    matrix = np.asarray(record["matrix"])
    assert matrix.shape == (4, 4) and record["rotation_deg"] < 2.0  # the phantom has no head motion
    # the stored correction applies without ANTs, and the maps obey the outside rule on the moved mask
    stored = Registration(matrix, maps["displacement"], record["phase_axis"])
    brain = np.asarray(Cohort.open(registered)["sub-01"].brain_mask[...]) > 0
    moved = stored.resample(brain.astype(np.float32), order=0) > 0.5
    np.testing.assert_array_equal(maps["brain_mask"] > 0, moved)  # stored with the maps: export applies it
    assert np.all(maps["T1"][~moved] == 0) and np.mean(maps["T1"][moved] > 0) > 0.95
    assert np.all((maps["correlation"] >= 0) & (maps["correlation"] <= 1))
    # against the truth (undistorted): the corrected T1 is as close as the uncorrected one, or closer
    truth = np.asarray(Cohort.open(registered)["sub-01"].array("truth/T1")[...])
    plain = run_subject(registered, "sub-01", "match")
    assert plain.status == "ok"
    before = _arrays(registered, "sub-01", "match")["T1"]
    core = (np.asarray(Cohort.open(registered)["sub-01"].array("truth/WM")[...]) >= 0.9) & (before > 0) & (maps["T1"] > 0)
    dev = lambda t1: np.median(np.abs(t1[core] - truth[core]) / truth[core])  # noqa: E731
    assert dev(maps["T1"]) < dev(before) + 0.01


def test_the_batch_path_gives_the_same_bytes(registered):
    """Slab tasks, then the finalize task runs register on the gathered subject: as run_subject."""
    prepared = prepare_task(str(registered), "sub-01", REGISTER)
    slabs = plan_slabs(12, REGISTER, slab_planes=4)
    assert len(slabs) == 3
    outcomes = [run_slab(str(registered), "sub-01", REGISTER, slab, prepared) for slab in slabs]
    whole = _arrays(registered, "sub-01", REGISTER.name)
    result = finalize_subject(str(registered), "sub-01", REGISTER, outcomes, prepared=prepared)
    assert result.status == "ok", result.error
    again = _arrays(registered, "sub-01", REGISTER.name)
    assert set(again) == set(whole)
    for name in whole:
        np.testing.assert_array_equal(again[name], whole[name], err_msg=name)
    assert "register" in derived_attrs(registered, "sub-01", REGISTER.name)["provenance"]["stages"]


def test_a_subject_without_the_reference_fails_alone_with_a_clear_message(cohort):
    result = run_subject(cohort, NO_T2W, REGISTER)
    assert result.status == "failed" and result.error_kind == "stage"
    assert "reference/T2w" in result.error and "--reference T2w=" in result.error and NO_T2W in result.error
    assert not any(a.startswith(f"derived/{REGISTER.name}/") for a in Cohort.open(cohort)[NO_T2W].arrays)
    other = Pipeline.from_stages("match,register", name="mr-none", options={"register": {"reference": "FLAIR"}})
    assert "reference/FLAIR" in run_subject(cohort, "sub-01", other).error


def test_register_and_segment_options_are_checked():
    with pytest.raises(Exception, match="phase_encoding"):
        Pipeline.from_stages("match,register", options={"register": {"phase_encoding": "y"}})
    with pytest.raises(Exception, match="grid_mm"):
        Pipeline.from_stages("match,register", options={"register": {"grid_mm": 0}})
    with pytest.raises(Exception, match="priors"):
        Pipeline.from_stages("match,segment", options={"segment": {"priors": "spm"}})
