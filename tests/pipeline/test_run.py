"""run_subject on the tiny simulated cohort: maps, resume, force, crashes, corrupt subjects, evaluate."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from mrfengine.io import Cohort, validate_cohort
from mrfengine.io.cohort import SUBJECT_KEY
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import DERIVED_ARRAYS, Pipeline, derived_complete, run_subject
from mrfengine.pipeline import derived as derived_mod
from mrfengine.pipeline.derived import derived_attrs

PIPE = Pipeline.from_stages("denoise,match")  # derived/denoise-match/


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipeline") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def ran(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the cohort with the pipeline run on every subject once."""
    path = tmp_path_factory.mktemp("ran") / "tiny.zarr"
    shutil.copytree(pristine, path)
    results = {sid: run_subject(path, sid, PIPE) for sid in Cohort.open(path).subjects}
    return path, results


def _chunk_bytes(path: Path, sid: str, name: str) -> dict[str, bytes]:
    root = path / "subjects" / sid / "derived" / name
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def test_run_writes_complete_accurate_maps(ran):
    path, results = ran
    assert set(results) == {f"sub-0{i}" for i in range(1, 7)}
    assert all(r.status == "ok" and r.error is None for r in results.values()), results
    cohort = Cohort.open(path)
    for sid in cohort.subjects:
        assert derived_complete(path, sid, PIPE.name)
        sub = cohort[sid]
        for name in DERIVED_ARRAYS:
            arr = sub.array(f"derived/{PIPE.name}/{name}")  # listed in the subject's arrays
            assert arr.dtype == np.float32 and arr.shape == sub.shape and arr.chunks == (1,) + sub.shape[1:]
        t1 = np.asarray(sub.array(f"derived/{PIPE.name}/T1")[:])
        truth = np.asarray(sub.truth["T1"][:])
        wm = (np.asarray(sub.truth["WM"][:]) >= 0.9) & (np.asarray(sub.brain_mask[:]) > 0)
        assert wm.sum() > 500
        err = np.nanmedian(np.abs(t1[wm] - truth[wm]) / truth[wm])
        assert err < 0.05, (sid, err)
        attrs = derived_attrs(path, sid, PIPE.name)
        prov = attrs["provenance"]
        assert prov["config"] == PIPE.to_dict()
        assert prov["stages"]["match"]["sequence_digest"] == sub.sequence.digest()
        assert len(prov["stages"]["match"]["dictionary_digests"]) == sub.sequence.n_slots
        assert set(attrs["timings_s"]) >= {"read", "denoise", "match", "write"}
    assert validate_cohort(path).ok


def test_rerun_skips_complete_subjects(ran):
    path, _ = ran
    before = _chunk_bytes(path, "sub-03", PIPE.name)
    result = run_subject(path, "sub-03", PIPE)
    assert result.status == "skipped" and result.arrays == ()
    assert _chunk_bytes(path, "sub-03", PIPE.name) == before


def test_changed_configuration_is_recomputed_not_skipped(ran):
    path, _ = ran
    other = Pipeline.from_stages("denoise,match", options={"denoise": {"patch_radius": 1}})
    assert other.name == PIPE.name
    result = run_subject(path, "sub-05", other)
    assert result.status == "ok"
    assert derived_attrs(path, "sub-05", PIPE.name)["provenance"]["stages"]["denoise"]["window"] == [3, 3, 3]
    assert run_subject(path, "sub-05", other).status == "skipped"
    assert run_subject(path, "sub-05", PIPE).status == "ok"  # back to the module's configuration
    assert derived_attrs(path, "sub-05", PIPE.name)["provenance"]["config"] == PIPE.to_dict()


def test_force_redoes_with_identical_bytes(ran):
    path, _ = ran
    before = _chunk_bytes(path, "sub-01", PIPE.name)
    # one shard of 12 slices each, for matching's maps and the denoise stage's sigma and rank
    assert len(before) == len(DERIVED_ARRAYS) + 2
    result = run_subject(path, "sub-01", PIPE, force=True)
    assert result.status == "ok"
    assert _chunk_bytes(path, "sub-01", PIPE.name) == before
    assert derived_complete(path, "sub-01", PIPE.name)


def test_crash_mid_write_leaves_nothing_complete_and_rerun_completes(ran, monkeypatch):
    path, _ = ran
    real = derived_mod._write_array
    calls = []

    def crashing(group, name, data):
        if calls:
            raise OSError("disk vanished (simulated crash)")
        calls.append(name)
        real(group, name, data)

    monkeypatch.setattr(derived_mod, "_write_array", crashing)
    result = run_subject(path, "sub-02", PIPE, force=True)
    assert result.status == "failed" and "sub-02" in result.error and "simulated crash" in result.error
    assert not derived_complete(path, "sub-02", PIPE.name)
    assert derived_attrs(path, "sub-02", PIPE.name)["complete"] is False  # a leftover, marked unfinished
    listed = Cohort.open(path)["sub-02"].arrays
    assert not any(p.startswith("derived/") for p in listed)

    monkeypatch.setattr(derived_mod, "_write_array", real)
    again = run_subject(path, "sub-02", PIPE)  # no force: the incomplete group is redone
    assert again.status == "ok"
    assert derived_complete(path, "sub-02", PIPE.name)
    assert len(_chunk_bytes(path, "sub-02", PIPE.name)) == len(DERIVED_ARRAYS) + 2  # one shard per map


def test_corrupt_subjects_fail_clearly_others_succeed(pristine, tmp_path):
    path = tmp_path / "corrupt.zarr"
    shutil.copytree(pristine, path)
    zarr.open_group(str(path / "subjects" / "sub-03"), mode="r+")["mrf"][:, 5] = np.nan
    shutil.rmtree(path / "subjects" / "sub-05" / "mrf")
    pipe = Pipeline.from_stages("match", name="plain")
    results = {sid: run_subject(path, sid, pipe) for sid in Cohort.open(path).subjects}
    assert {s for s, r in results.items() if r.status == "ok"} == {"sub-01", "sub-02", "sub-04", "sub-06"}
    nan = results["sub-03"]
    assert nan.status == "failed" and nan.error.count("sub-03") >= 1 and "NaN" in nan.error
    gone = results["sub-05"]
    assert gone.status == "failed" and "sub-05" in gone.error and "'mrf'" in gone.error
    for sid in ("sub-03", "sub-05"):
        assert not derived_complete(path, sid, "plain")
        assert not (path / "subjects" / sid / "derived").exists()
    for sid in ("sub-01", "sub-06"):
        assert derived_complete(path, sid, "plain")


def test_remove_delists_then_deletes(ran):
    """Removing a derived group leaves no listed-but-missing array, and a rerun restores it."""
    path, _ = ran
    sub_attrs = zarr.open_group(str(path / "subjects" / "sub-06"), mode="r").attrs[SUBJECT_KEY]
    assert any(p.startswith(f"derived/{PIPE.name}/") for p in sub_attrs["arrays"])
    derived_mod.remove_derived(path, "sub-06", PIPE.name)
    assert not derived_complete(path, "sub-06", PIPE.name)
    assert validate_cohort(path).ok  # nothing listed that is missing
    assert run_subject(path, "sub-06", PIPE).status == "ok"


def test_evaluate_reads_derived_maps(ran):
    from mrfengine.report.evaluate import evaluate_cohort

    path, _ = ran
    report = evaluate_cohort(path, pred=f"derived:{PIPE.name}", ref="truth", subjects=["sub-01", "sub-04"],
                             figures=False)
    for sid in ("sub-01", "sub-04"):
        rec = report["subjects"][sid]
        assert rec["maps"] == ["T1", "T2star"]
        # evaluate's tissue deviations are means over the WM core (true fraction >= 0.9): looser than the median
        assert 0.0 < rec["T1"]["by_tissue"]["WM_core"] < 0.1
        assert 0.0 < rec["T2star"]["by_tissue"]["WM_core"] < 0.1
        assert rec["n_unmatched"] == 0


def test_run_subject_runs_in_another_process(ran):
    """What a Dask worker does: the call and its result cross a process boundary by pickling."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path, _ = ran
    before = _chunk_bytes(path, "sub-04", PIPE.name)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(run_subject, path, "sub-04", PIPE, force=True).result(timeout=120)
    assert result.status == "ok" and result.subject == "sub-04"
    assert _chunk_bytes(path, "sub-04", PIPE.name) == before


def test_the_denoise_stage_keeps_its_noise_and_rank_maps(ran):
    from mrfengine.io import Cohort
    from mrfengine.maps import derived_spec

    path, _ = ran
    s = Cohort.open(path)["sub-01"]
    sigma = np.asarray(s.array(f"derived/{PIPE.name}/mppca_sigma")[...])
    rank = np.asarray(s.array(f"derived/{PIPE.name}/mppca_rank")[...])
    brain = np.asarray(s.brain_mask[...]) > 0
    assert np.all(sigma[~brain] == 0) and np.all(rank[~brain] == 0)  # the outside rule
    noise = s.attrs["noise_sigma"]  # the phantom's drawn Rician sigma
    assert 0.5 * noise < np.median(sigma[brain]) < 1.5 * noise
    assert np.all(rank[brain] == np.round(rank[brain])) and 1 <= np.median(rank[brain]) < 35
    assert derived_spec("mppca_sigma") is not None and derived_spec("mppca_rank").unit == "1"
