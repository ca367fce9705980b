"""The batch engine on Dask: slab plans, reruns, corrupt subjects, full and read-only
stores, SIGKILL mid-run, an existing scheduler (tiny cohort)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from mrfengine.errors import StoreError
from mrfengine.io import Cohort
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import DERIVED_ARRAYS, Pipeline, derived_complete, run_subject
from mrfengine.pipeline import batch as batch_mod
from mrfengine.pipeline.batch import batch_client, plan_slabs, run_batch
from mrfengine.pipeline.derived import derived_attrs

PIPE = Pipeline.from_stages("denoise,match")
SLAB = 4  # planes per slab: the tiny subjects (12 slices) make three slab tasks each


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", seed=0)
    return path


@pytest.fixture(scope="module")
def client():
    # Threads of this process: fast to start, and monkeypatching reaches the tasks.
    with batch_client(n_workers=2, processes=False, dashboard=False) as c:
        yield c


def _copy(pristine: Path, tmp_path: Path, name: str = "tiny.zarr") -> Path:
    path = tmp_path / name
    shutil.copytree(pristine, path)
    return path


def _maps(path: Path, sid: str, name: str = PIPE.name) -> dict[str, bytes]:
    """Every stored chunk of a derived group, byte for byte."""
    root = path / "subjects" / sid / "derived" / name
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


@pytest.fixture(scope="module")
def reference(pristine: Path, tmp_path_factory: pytest.TempPathFactory, client) -> Path:
    """The cohort with an uninterrupted batch run."""
    path = _copy(pristine, tmp_path_factory.mktemp("reference"))
    report = run_batch(path, PIPE, client, slab_planes=SLAB)
    assert report.ok and report.count("ok") == 6, report
    return path


# --------------------------------------------------------------------------- planning
@pytest.mark.parametrize("n_planes, slab_planes", [(60, 32), (12, 4), (13, 5), (7, 100), (60, 1)])
def test_slab_plan_covers_every_plane_once_with_its_halo(n_planes, slab_planes):
    halo = 4  # denoise, patch radius 2
    slabs = plan_slabs(n_planes, PIPE, slab_planes)
    kept = [z for s in slabs for z in range(s.keep_lo, s.keep_hi)]
    assert kept == list(range(n_planes))
    for s in slabs:
        assert s.read_lo == max(0, s.keep_lo - halo) and s.read_hi == min(n_planes, s.keep_hi + halo)
        assert s.keep_hi - s.keep_lo >= min(halo, n_planes)  # never thinner than the halo
    assert plan_slabs(60, PIPE) == plan_slabs(60, PIPE, 32) and len(plan_slabs(60, PIPE)) == 2


def test_match_only_pipeline_needs_no_halo():
    slabs = plan_slabs(12, Pipeline.from_stages("match"), 4)
    assert [(s.read_lo, s.read_hi) for s in slabs] == [(0, 4), (4, 8), (8, 12)]


# --------------------------------------------------------------------------- runs
def test_batch_writes_complete_maps_close_to_a_whole_volume_run(reference, pristine, tmp_path):
    cohort = Cohort.open(reference)
    whole = _copy(pristine, tmp_path)
    for sid in cohort.subjects:
        assert derived_complete(reference, sid, PIPE.name)
        attrs = derived_attrs(reference, sid, PIPE.name)
        assert attrs["provenance"]["slabs"] == [[0, 4], [4, 8], [8, 12]]
        assert attrs["provenance"]["config"] == PIPE.to_dict()
        assert set(attrs["timings_s"]) >= {"read", "denoise", "match"}
        digests = attrs["provenance"]["stages"]["match"]["dictionary_digests"]
        seq = cohort[sid].sequence
        assert set(digests) == {str(seq.slot_of_slice(z)) for z in range(cohort[sid].shape[0])}
    # Slabs give the whole volume's maps up to the rounding of MP-PCA's running sums.
    sid = "sub-01"
    assert run_subject(whole, sid, PIPE).status == "ok"
    a, b = cohort[sid], Cohort.open(whole)[sid]
    t1a = np.asarray(a.array(f"derived/{PIPE.name}/T1")[:])
    t1b = np.asarray(b.array(f"derived/{PIPE.name}/T1")[:])
    brain = np.asarray(a.brain_mask[:]) > 0
    same = np.isclose(t1a[brain], t1b[brain], rtol=0, atol=0)
    assert same.mean() > 0.98, same.mean()
    ca = np.asarray(a.array(f"derived/{PIPE.name}/correlation")[:])
    cb = np.asarray(b.array(f"derived/{PIPE.name}/correlation")[:])
    np.testing.assert_allclose(ca, cb, atol=1e-4)


def test_rerun_skips_and_force_rewrites_the_same_bytes(reference, client):
    before = {sid: _maps(reference, sid) for sid in Cohort.open(reference).subjects}
    report = run_batch(reference, PIPE, client, slab_planes=SLAB)
    assert report.ok and report.count("skipped") == 6 and report.count("ok") == 0
    report = run_batch(reference, PIPE, client, slab_planes=SLAB, subjects=["2", "sub-05"], force=True)
    assert [r.subject for r in report.results] == ["sub-02", "sub-05"]
    assert all(r.status == "ok" for r in report.results)
    for sid, chunks in before.items():
        assert _maps(reference, sid) == chunks, sid


def test_unknown_subject_is_refused(reference, client):
    with pytest.raises(StoreError, match="no complete subject 'sub-42'"):
        run_batch(reference, PIPE, client, subjects=["42"])


def test_a_corrupt_subject_fails_clearly_while_the_others_complete(pristine, tmp_path, client):
    path = _copy(pristine, tmp_path)
    # sub-02: NaNs inside the brain in slice 5; sub-04: a chunk of its mrf array truncated.
    arr = zarr.open_array(path / "subjects" / "sub-02" / "mrf", mode="r+")
    mask = zarr.open_array(path / "subjects" / "sub-02" / "brain_mask")[5]
    plane = arr[:, 5]
    plane[:, np.asarray(mask) > 0] = np.nan
    arr[:, 5] = plane
    chunks = sorted(p for p in (path / "subjects" / "sub-04" / "mrf").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[len(chunks) // 2].write_bytes(chunks[len(chunks) // 2].read_bytes()[:7])
    report = run_batch(path, PIPE, client, slab_planes=SLAB)
    status = {r.subject: r for r in report.results}
    assert not report.ok and report.stopped is None
    assert status["sub-02"].status == "failed" and status["sub-02"].error_kind == "input"
    assert "sub-02" in status["sub-02"].error and "NaN" in status["sub-02"].error
    assert status["sub-04"].status == "failed" and "sub-04" in status["sub-04"].error
    assert "'mrf'" in status["sub-04"].error and "cannot be read" in status["sub-04"].error
    for sid in ("sub-01", "sub-03", "sub-05", "sub-06"):
        assert status[sid].status == "ok" and derived_complete(path, sid, PIPE.name)
    for sid in ("sub-02", "sub-04"):
        assert not derived_complete(path, sid, PIPE.name)
        assert not (path / "subjects" / sid / "derived" / PIPE.name).exists()


def test_a_full_store_stops_the_batch_and_leaves_nothing_that_looks_complete(pristine, tmp_path, client, monkeypatch):
    path = _copy(pristine, tmp_path)
    real = batch_mod.write_derived

    def full_disk(cohort_path, sid, *args, **kwargs):
        if sid != "sub-01":
            # what zarr's store raises on a full disk, after part of the group is written
            group = zarr.open_group(Path(cohort_path) / "subjects" / sid, mode="r+")
            group.require_group("derived").require_group(PIPE.name).attrs.update({"partial": True})
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(cohort_path) / "subjects" / sid))
        return real(cohort_path, sid, *args, **kwargs)

    monkeypatch.setattr(batch_mod, "write_derived", full_disk)
    report = run_batch(path, PIPE, client, slab_planes=SLAB)
    assert report.stopped is not None and "output location" in report.stopped
    failed = [r for r in report.results if r.status == "failed"]
    assert failed and all(r.error_kind == "output" and "no space left" in r.error for r in failed)
    assert not report.ok
    for sid in Cohort.open(path).subjects:
        complete = derived_complete(path, sid, PIPE.name)
        assert complete == (sid == "sub-01" and any(r.subject == sid and r.status == "ok" for r in report.results))


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def test_a_really_full_filesystem_fails_cleanly(pristine, tmp_path, client):
    """On a real tmpfs just big enough for the inputs (where mounting is allowed)."""
    mnt = tmp_path / "small"
    if not _tmpfs(mnt, "48m"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the monkeypatched test covers it")
    try:
        try:
            path = _copy(pristine, mnt)
        except OSError:
            pytest.skip("the tiny cohort does not fit the 48 MB tmpfs")
        filler = mnt / "filler"
        with open(filler, "wb") as fh:  # leave ~64 KB: the probe passes, the maps do not fit
            free = shutil.disk_usage(mnt).free
            fh.write(b"\0" * max(0, free - 64 * 1024))
        try:
            report = run_batch(path, PIPE, client, slab_planes=SLAB)
        except StoreError as exc:  # the up-front probe already found it full
            assert "cannot write derived maps" in str(exc)
            return
        assert not report.ok
        assert any(r.error_kind == "output" for r in report.results if r.status == "failed")
        for sid in Cohort.open(path).subjects:
            ok = any(r.subject == sid and r.status == "ok" for r in report.results)
            assert derived_complete(path, sid, PIPE.name) == ok
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_a_read_only_store_is_refused_before_any_work(pristine, tmp_path, client, monkeypatch):
    """The store is asked, nothing is written to find out (no probe file)."""
    from mrfengine.io.cohort import store as store_mod

    path = _copy(pristine, tmp_path)
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    if os.geteuid() != 0:
        os.chmod(path / "subjects", 0o555)
    else:  # root writes anyway: make os.access answer what a read-only mount gives it (EROFS)
        real_access = os.access
        monkeypatch.setattr(store_mod.os, "access", lambda p, mode, *a, **k: False if (
            mode & os.W_OK and str(path) in str(p)) else real_access(p, mode, *a, **k))
    try:
        with pytest.raises(StoreError, match=r"tiny\.zarr: cannot write derived maps into the store \(.*tiny\.zarr\S* is "
                                             r"not writable: permission denied or a read-only file system\); the batch"):
            run_batch(path, PIPE, client)
    finally:
        os.chmod(path / "subjects", 0o755)
    monkeypatch.undo()
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before  # nothing created
    assert not any(derived_complete(path, s, PIPE.name) for s in Cohort.open(path).subjects)


# --------------------------------------------------------------------------- the command
def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mrfengine", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_exit_codes_and_summary(pristine, tmp_path):
    path = _copy(pristine, tmp_path)
    arr = zarr.open_array(path / "subjects" / "sub-03" / "mrf", mode="r+")
    arr[0, 6, 32, 32] = np.inf
    report_file = tmp_path / "report.json"
    p = _cli("batch", str(path), "--workers", "2", "--slab-planes", str(SLAB), "--run-report",
             str(report_file))
    out, err = p.communicate(timeout=240)
    assert p.returncode == 1, err
    assert "sub-03" in err and "NaN/Inf" in err
    assert "6 subject(s): 5 done, 0 already complete, 1 failed" in out
    doc = json.loads(report_file.read_text())
    assert {r["subject"]: r["status"] for r in doc["results"]}["sub-03"] == "failed"
    assert all(r["peak_memory_mb"] > 0 for r in doc["results"])
    p = _cli("batch", str(path), "--workers", "1", "--subjects", "1,2", "--slab-planes", str(SLAB))
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0 and "2 already complete" in out, (out, err)
    p = _cli("batch", str(path), "--stages", "match,nonsense")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "unknown stage(s) ['nonsense']" in err
    p = _cli("batch", str(path), "--workers", "0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 2
    p = _cli("batch", str(tmp_path / "missing.zarr"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "missing.zarr" in err


def test_sigkill_mid_run_then_rerun_gives_identical_maps(pristine, reference, tmp_path):
    path = _copy(pristine, tmp_path)
    subjects = Cohort.open(path).subjects
    p = _cli("batch", str(path), "--workers", "2", "--slab-planes", str(SLAB), "--no-progress")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and p.poll() is None:
        if any(derived_complete(path, s, PIPE.name) for s in subjects):
            break
        time.sleep(0.01)
    assert p.poll() is None, "the batch finished before it could be killed: " + p.communicate()[1][-2000:]
    children = _children(p.pid)
    p.send_signal(signal.SIGKILL)  # the command only, as the OOM killer or `kill -9 PID` would
    p.communicate(timeout=30)
    _wait_gone(children)  # the local workers follow their parent
    done = [s for s in subjects if derived_complete(path, s, PIPE.name)]
    assert 1 <= len(done) < len(subjects), done
    for sid in done:  # complete means complete: the same bytes as the uninterrupted run
        assert _maps(path, sid) == _maps(reference, sid), sid
    p = _cli("batch", str(path), "--workers", "2", "--slab-planes", str(SLAB), "--no-progress")
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    assert f"{len(done)} already complete" in out
    for sid in subjects:
        assert derived_complete(path, sid, PIPE.name)
        assert _maps(path, sid) == _maps(reference, sid), sid


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    import psutil

    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"worker processes {alive} outlived the killed batch"


def test_runs_unchanged_on_an_existing_scheduler(pristine, reference, tmp_path):
    from distributed import LocalCluster

    path = _copy(pristine, tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://",
                      dashboard_address=":0") as cluster:
        p = _cli("batch", str(path), "--scheduler", cluster.scheduler_address, "--slab-planes", str(SLAB),
                 "--subjects", "1,6")
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        assert cluster.scheduler_address in err
        assert "2 done" in out
    for sid in ("sub-01", "sub-06"):
        assert _maps(path, sid) == _maps(reference, sid), sid
    assert not derived_complete(path, "sub-02", PIPE.name)


def test_runs_unchanged_on_a_store_named_by_url(pristine, reference, client, tmp_path):
    """The batch goes through zarr's API, so an fsspec URL works as a path does (file:// here;
    s3:// and gs:// take the same road): same maps byte for byte, and a rerun skips the subject."""
    path = _copy(pristine, tmp_path)
    url = path.as_uri()
    report = run_batch(url, PIPE, client, subjects=["sub-04"], slab_planes=SLAB)
    assert report.ok and report.count("ok") == 1, report
    assert _maps(path, "sub-04") == _maps(reference, "sub-04")
    assert derived_complete(url, "sub-04", PIPE.name)
    assert run_batch(url, PIPE, client, subjects=["sub-04"], slab_planes=SLAB).count("skipped") == 1


def test_derived_arrays_listed(reference):
    sub = Cohort.open(reference)["sub-03"]
    for name in DERIVED_ARRAYS:
        assert f"derived/{PIPE.name}/{name}" in sub.arrays


@pytest.mark.parametrize("dashboard", [False, True])
def test_a_local_cluster_takes_a_free_port_not_the_default_8787(dashboard):
    """Another cluster (or anything) on 8787 must not matter: no 'port already in use' warning."""
    import socket
    import warnings

    holder = socket.socket()
    try:
        holder.bind(("", 8787))
        holder.listen()
    except OSError:
        pass  # already held by something else: the same situation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            with batch_client(n_workers=1, processes=False, dashboard=dashboard) as client:
                port = client.scheduler_info()["services"].get("dashboard")
        assert port not in (None, 8787)
    finally:
        holder.close()
