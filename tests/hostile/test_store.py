"""Issue 17, cases 3, 4, 7 and the store side of 6 and 9: a missing or damaged chunk is an
error for its subject (never zeros), ``import --overwrite`` keeps the old subject until the
new one is complete, one damaged subject fails alone, and the store's names, selections,
report and configuration files are checked before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrfengine.errors import StoreError, ValidationError
from mrfengine.io import Cohort

from _hostile import run_cli, snapshot

PIPE = "match"  # the cheapest pipeline: one dictionary match per voxel, no denoising


def _array(cohort: Path, sid: str, array: str, **kwargs):
    import zarr

    return zarr.open_array(str(cohort / "subjects" / sid / array), mode="r+", **kwargs)


def _shard(cohort: Path, sid: str, array: str) -> Path:
    """The stored shard of a subject's array (the tiny cohort's arrays are one shard each)."""
    arr = _array(cohort, sid, array)
    assert arr.shards is not None and arr.shards == arr.shape, (array, arr.shards)
    path = cohort / "subjects" / sid / array / arr.metadata.encode_chunk_key((0,) * arr.ndim)
    assert path.is_file(), path
    return path


def _drop(cohort: Path, sid: str, array: str, z: int = 3) -> None:
    """Slice ``z`` absent from its shard's index (a writer that never stored it), the rest intact."""
    arr = _array(cohort, sid, array, config={"write_empty_chunks": False})
    arr[(slice(None),) * (arr.ndim - 3) + (z,)] = arr.metadata.fill_value


def _corrupt(cohort: Path, sid: str, array: str, z: int = 3) -> None:
    """The bytes of slice ``z`` inside its shard overwritten (bit rot), the shard's index intact."""
    shard = _shard(cohort, sid, array)
    raw = bytearray(shard.read_bytes())
    arr = _array(cohort, sid, array)
    n_inner = int(np.prod([s // c for s, c in zip(arr.shards, arr.chunks)]))
    index = np.frombuffer(bytes(raw[-(16 * n_inner + 4):-4]), "<u8").reshape(n_inner, 2)
    offset, nbytes = (int(v) for v in index[z])  # one chunk per slice: inner chunk z holds slice z
    raw[offset:offset + nbytes] = b"\xa5" * nbytes
    shard.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:7])


def _subject_json(cohort: Path, sid: str) -> Path:
    return cohort / "subjects" / sid / "zarr.json"


def _edit_subject_attrs(cohort: Path, sid: str, **changes) -> None:
    meta = _subject_json(cohort, sid)
    doc = json.loads(meta.read_text())
    doc["attributes"]["mrfengine_subject"].update(changes)
    meta.write_text(json.dumps(doc))


def _rewrite_dtype(cohort: Path, sid: str, array: str = "mrf", dtype: str = "int32") -> None:
    meta = cohort / "subjects" / sid / array / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = dtype
    doc["fill_value"] = 0
    meta.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def client():
    from mrfengine.pipeline.batch import batch_client

    # Threads of this process: fast to start.
    with batch_client(n_workers=1, processes=False, dashboard=False) as c:
        yield c


# --------------------------------------------------------------------------- case 3: missing / corrupt chunks
@pytest.mark.parametrize("array", ["mrf", "brain_mask", "truth/T1", "annotations/lesion"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_validate_deep_reports_a_missing_or_truncated_chunk(cohort, capsys, array, damage):
    (_drop if damage == "missing" else _corrupt)(cohort, "sub-01", array)
    r = run_cli(["validate", "--deep", cohort], capsys, code=1, says="problem(s) found")
    problems = [line for line in r.err.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "sub-01" in problems[0] and f"'{array}'" in problems[0], r.err
    assert "slice 3" in problems[0]
    assert ("missing" if damage == "missing" else "truncated or corrupt") in problems[0]


def test_every_chunk_is_written_and_recorded_even_all_zero_ones(cohort):
    """The fixture's truth/lesion of a healthy slice is all zeros: stored anyway, and counted."""
    attrs = json.loads(_subject_json(cohort, "sub-01").read_text())["attributes"]["mrfengine_subject"]
    sub = Cohort.open(cohort)["sub-01"]
    for path in sub.arrays:
        arr = sub.array(path)
        assert attrs["stored_chunks"][path] == arr.nchunks == arr.nchunks_initialized, path


@pytest.mark.parametrize("array", ["mrf", "brain_mask"])
def test_reading_a_subject_with_a_missing_chunk_is_an_error_naming_it(cohort, array):
    _drop(cohort, "sub-01", array, z=5)
    sub = Cohort.open(cohort)["sub-01"]
    whole = sub.mrf if array == "mrf" else sub.brain_mask
    with pytest.raises(StoreError, match=rf"sub-01: array '{array}' is missing 1 of its 12 chunk\(s\).*slice 5"):
        whole[...]
    _corrupt(cohort, "sub-02", array, z=2)
    with pytest.raises(StoreError, match=rf"sub-02: array '{array}': slice 2 in shard c/[0/]+ cannot be read"):
        np.asarray(Cohort.open(cohort)["sub-02"].array(array))


@pytest.mark.parametrize("damage", ["missing mrf chunk", "missing brain_mask chunk", "corrupt mrf chunk",
                                    "truncated mrf shard",
                                    "int32 mrf", "malformed shape_zyx", "unknown site", "garbage zarr.json",
                                    "deleted folder", "unreadable zarr.json"])
def test_batch_fails_the_damaged_subject_alone(cohort, client, damage):
    from mrfengine.pipeline import derived_complete
    from mrfengine.pipeline.batch import run_batch

    if damage == "missing mrf chunk":
        _drop(cohort, "sub-01", "mrf")
    elif damage == "missing brain_mask chunk":
        _drop(cohort, "sub-01", "brain_mask")
    elif damage == "corrupt mrf chunk":
        _corrupt(cohort, "sub-01", "mrf")
    elif damage == "truncated mrf shard":
        _truncate(_shard(cohort, "sub-01", "mrf"))
    elif damage == "int32 mrf":
        _rewrite_dtype(cohort, "sub-01")
    elif damage == "malformed shape_zyx":
        _edit_subject_attrs(cohort, "sub-01", shape_zyx="12x64x64")
    elif damage == "unknown site":
        root = json.loads((cohort / "zarr.json").read_text())
        root["attributes"]["mrfengine_cohort"]["subjects"]["sub-01"]["site"] = "9"
        (cohort / "zarr.json").write_text(json.dumps(root))
    elif damage == "garbage zarr.json":
        _subject_json(cohort, "sub-01").write_bytes(b"\x00garbage{")
    elif damage == "deleted folder":
        shutil.rmtree(cohort / "subjects" / "sub-01")
    elif damage == "unreadable zarr.json":  # (root reads any file: a folder in its place cannot be read)
        _subject_json(cohort, "sub-01").unlink()
        _subject_json(cohort, "sub-01").mkdir()
    report = run_batch(cohort, PIPE, client)
    status = {r.subject: r for r in report.results}
    assert not report.ok and report.stopped is None
    assert status["sub-01"].status == "failed" and "sub-01" in status["sub-01"].error, status["sub-01"]
    assert status["sub-02"].status == "ok" and derived_complete(cohort, "sub-02", PIPE)
    assert not (cohort / "subjects" / "sub-01" / "derived").exists()


def test_batch_command_reports_the_damaged_subject_and_exits_1(cohort, capsys, tmp_path):
    from mrfengine.pipeline import derived_complete

    _drop(cohort, "sub-01", "mrf", z=4)
    report = tmp_path / "report.json"
    r = run_cli(["batch", cohort, "--stages", PIPE, "--workers", "1", "--no-progress", "--run-report", report], capsys,
                code=1)
    assert "2 subject(s): 1 done, 0 already complete, 1 failed" in r.out
    assert "sub-01" in r.err and "'mrf'" in r.err and "slice 4" in r.err
    assert derived_complete(cohort, "sub-02", PIPE) and not derived_complete(cohort, "sub-01", PIPE)
    doc = json.loads(report.read_text())
    assert {x["subject"]: x["status"] for x in doc["results"]} == {"sub-01": "failed", "sub-02": "ok"}


def test_a_damaged_derived_map_is_reported_and_not_exported(cohort, client, capsys, tmp_path):
    from mrfengine.pipeline.batch import run_batch

    assert run_batch(cohort, PIPE, client).ok
    run_cli(["validate", "--deep", cohort], capsys, code=0)
    record = json.loads((cohort / "subjects" / "sub-01" / "derived" / PIPE / "zarr.json").read_text())
    assert record["attributes"]["mrfengine_derived"]["stored_chunks"]["T1"] == 12
    _drop(cohort, "sub-01", f"derived/{PIPE}/T1", z=6)
    _corrupt(cohort, "sub-01", f"derived/{PIPE}/T2star", z=7)
    r = run_cli(["validate", "--deep", cohort], capsys, code=1)
    assert f"sub-01: array 'derived/{PIPE}/T1' is missing 1 of its 12 chunk(s): slice 6 in shard c/0/0/0" in r.err
    assert f"sub-01: array 'derived/{PIPE}/T2star': slice 7 in shard c/0/0/0 cannot be read" in r.err
    out = tmp_path / "nifti"
    out.mkdir()
    r = run_cli(["export", cohort, "-o", out, "--subject", "sub-01", "--array", f"derived/{PIPE}/T1"], capsys)
    assert r.code == 1 and "sub-01" in r.err and "slice 6" in r.err, r.err
    assert not list(out.rglob("*T1map*")), "a map with a missing chunk was exported"


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_export_writes_nothing_of_a_damaged_subject_and_exits_1(cohort, capsys, tmp_path, damage):
    (_drop if damage == "missing" else _corrupt)(cohort, "sub-01", "mrf", z=3)
    out = tmp_path / "nifti"
    r = run_cli(["export", cohort, "-o", out], capsys, code=1, says=("sub-01", "'mrf'", "slice 3"))
    assert sorted(p.name for p in out.rglob("sub-02_*.nii.gz")), "the intact subject was not exported"
    written = sorted(p.name for p in out.rglob("sub-01_*"))
    if damage == "missing":  # found by the chunk listing, before any file of the subject is written
        assert written == [], written
    else:  # found only when the chunk is decoded: the series is not written, and the error says what was
        assert written and not [n for n in written if "mrf" in n.lower()], written
        assert "written before it" in r.err
    # the count is of the subjects exported whole; the damaged one's partial images are named in the error
    assert f"wrote {len(list(out.rglob('sub-02_*.nii.gz')))} images" in r.out


def test_an_int32_rewrite_of_mrf_is_refused(cohort, capsys):
    _rewrite_dtype(cohort, "sub-01")
    # validate reads every array's own metadata (not the root's consolidated copy)
    r = run_cli(["validate", cohort], capsys, code=1)
    assert "sub-01: array 'mrf' has dtype int32" in r.err
    # a reader without a current consolidated copy (any writer drops it) reads the array's own
    from mrfengine.io.cohort import drop_consolidated

    assert drop_consolidated(cohort)
    with pytest.raises(StoreError, match="sub-01: array 'mrf' has dtype int32; the schema says float32"):
        Cohort.open(cohort)["sub-01"].mrf


def test_a_store_without_chunk_records_stays_readable_with_a_warning(cohort, capsys, caplog):
    """Stores of the previous version: no record, absent all-zero chunks are legitimate."""
    for sid in ("sub-01", "sub-02"):
        meta = _subject_json(cohort, sid)
        doc = json.loads(meta.read_text())
        del doc["attributes"]["mrfengine_subject"]["stored_chunks"]
        meta.write_text(json.dumps(doc))
    _drop(cohort, "sub-01", "truth/lesion_id", z=0)
    data = Cohort.open(cohort)["sub-01"].array("truth/lesion_id")[0]
    assert not data.any()
    assert "no record of its stored chunks" in caplog.text
    r = run_cli(["validate", "--deep", cohort], capsys, code=0)
    assert "no record of stored chunks" in r.err and "slice 0 in shard c/0/0/0" in r.err


# --------------------------------------------------------------------------- case 4: import --overwrite
def _nifti(path: Path, shape: tuple[int, ...], seed: int, *, mask: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) > 0.5).astype(np.uint8) if mask else rng.uniform(1, 100, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


@pytest.mark.parametrize("bad", ["annotation name", "annotation file", "mask grid"])
def test_import_overwrite_with_a_bad_argument_keeps_the_old_subject(tmp_path, capsys, bad):
    store = tmp_path / "imp.zarr"
    mrf = _nifti(tmp_path / "mrf.nii.gz", (6, 5, 3, 35), 1)
    lesion = _nifti(tmp_path / "lesion.nii.gz", (6, 5, 3), 2, mask=True)
    run_cli(["import", store, "--subject", "sub-01", "--mrf", mrf, "--annotation", f"lesion={lesion}",
             "--brain-mask", lesion], capsys, code=0)
    before = snapshot(store)
    old = np.asarray(Cohort.open(store)["sub-01"].mrf[...])
    new_mrf = _nifti(tmp_path / "new.nii.gz", (6, 5, 3, 35), 3)
    args = ["import", store, "--subject", "sub-01", "--mrf", new_mrf, "--force"]
    if bad == "annotation name":
        run_cli(args + ["--annotation", f"les/ion={lesion}"], capsys, code=1, says="les/ion")
    elif bad == "annotation file":
        run_cli(args + ["--annotation", f"lesion={tmp_path / 'absent.nii.gz'}"], capsys, code=1,
                says="absent.nii.gz")
    else:
        other = _nifti(tmp_path / "other.nii.gz", (5, 5, 3), 4, mask=True)
        run_cli(args + ["--brain-mask", other], capsys, code=1, says="other.nii.gz")
    assert snapshot(store) == before
    sub = Cohort.open(store)["sub-01"]
    assert set(sub.arrays) == {"mrf", "brain_mask", "annotations/lesion"}
    np.testing.assert_array_equal(np.asarray(sub.mrf[...]), old)


def test_import_overwrite_swaps_in_the_complete_new_subject(tmp_path, capsys, monkeypatch):
    store = tmp_path / "imp.zarr"
    mrf = _nifti(tmp_path / "mrf.nii.gz", (6, 5, 3, 35), 1)
    lesion = _nifti(tmp_path / "lesion.nii.gz", (6, 5, 3), 2, mask=True)
    run_cli(["import", store, "--subject", "sub-01", "--mrf", mrf, "--annotation", f"lesion={lesion}"], capsys, code=0)
    new_mrf = _nifti(tmp_path / "new.nii.gz", (6, 5, 3, 35), 3)
    # A failure while writing the new copy (a full disk) leaves the old subject and no staging folder.
    from mrfengine.io import cohort as cohort_mod

    before = snapshot(store)
    real = cohort_mod.SubjectWriter.write

    def full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cohort_mod.SubjectWriter, "write", full)
    run_cli(["import", store, "--subject", "sub-01", "--mrf", new_mrf, "--force", "--annotation",
             f"lesion={lesion}"], capsys, code=1)
    monkeypatch.setattr(cohort_mod.SubjectWriter, "write", real)
    after = snapshot(store)
    assert {k for k in after if not k.startswith("zarr.json")} == {k for k in before if not k.startswith("zarr.json")}
    run_cli(["import", store, "--subject", "sub-01", "--mrf", new_mrf, "--force", "--split", "test"], capsys,
            code=0)
    c = Cohort.open(store)
    assert c.split["sub-01"] == "test" and c["sub-01"].arrays == ("mrf",)
    want = np.asarray(nib.load(new_mrf).get_fdata(), dtype=np.float32).transpose(3, 2, 1, 0)
    np.testing.assert_array_equal(np.asarray(c["sub-01"].mrf[...]), want)
    assert sorted(p.name for p in (store / "subjects").iterdir()) == ["sub-01", "zarr.json"]
    run_cli(["validate", "--deep", store], capsys, code=0)


# --------------------------------------------------------------------------- case 7: validate / evaluate
@pytest.mark.parametrize("damage, says", [
    ("garbage zarr.json", "not valid JSON"),
    ("deleted folder", "missing"),
    ("malformed shape_zyx", "shape_zyx"),
    ("malformed entry", "malformed entry"),
])
def test_validate_and_evaluate_name_a_damaged_subject(cohort, capsys, tmp_path, damage, says):
    if damage == "garbage zarr.json":
        _subject_json(cohort, "sub-02").write_text("{not json")
    elif damage == "deleted folder":
        shutil.rmtree(cohort / "subjects" / "sub-02")
    elif damage == "malformed shape_zyx":
        _edit_subject_attrs(cohort, "sub-02", shape_zyx=[12, 64])
    else:
        root = json.loads((cohort / "zarr.json").read_text())
        root["attributes"]["mrfengine_cohort"]["subjects"]["sub-02"]["site"] = "1\n"
        (cohort / "zarr.json").write_text(json.dumps(root))
    r = run_cli(["validate", cohort], capsys, code=1)
    assert any("sub-02" in line and says in line for line in r.err.splitlines() if line.startswith("problem:")), r.err
    assert Cohort.open(cohort).subjects in (["sub-01"], ["sub-01", "sub-02"])
    run_cli(["evaluate", cohort, "-o", tmp_path / "ev", "--pred", "truth", "--ref", "truth", "--no-figures"], capsys,
            code=1, says="sub-02")


# --------------------------------------------------------------------------- case 9: names, selections, files
@pytest.mark.parametrize("name", ["sub-01\n", "01\n", "sub-01\r"])
def test_subject_ids_with_a_trailing_newline_are_refused(name):
    from mrfengine.io.cohort import normalize_subject_id

    with pytest.raises(ValidationError):
        normalize_subject_id(name)


def test_names_with_a_trailing_newline_are_refused(tmp_path):
    from mrfengine.io.cohort import SubjectEntry
    from mrfengine.pipeline import Pipeline
    from mrfengine.pipeline.derived import check_name

    with pytest.raises(ValidationError):
        SubjectEntry("1\n")
    with pytest.raises(ValidationError):
        check_name("match\n", "pipeline name")
    with pytest.raises(ValidationError):
        Pipeline.from_stages("match", name="match\n")


@pytest.mark.parametrize("command", ["batch", "evaluate"])
def test_an_empty_subject_selection_is_a_usage_error(cohort, capsys, tmp_path, command):
    before = snapshot(cohort)
    args = [command, cohort, "--subjects", ""]
    if command == "evaluate":
        args += ["-o", tmp_path / "ev"]
    run_cli(args, capsys, code=2, says="--subjects")
    assert snapshot(cohort) == before


def test_batch_report_into_a_missing_folder_is_refused_before_any_work(cohort, capsys, tmp_path):
    before = snapshot(cohort)
    run_cli(["batch", cohort, "--stages", PIPE, "--run-report", tmp_path / "nope" / "r.json"], capsys, code=2,
            says=("--run-report", "r.json"))
    assert snapshot(cohort) == before


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b"[pipeline\nstages = ", b"x = 1\x00"])
def test_a_binary_or_invalid_toml_config_is_a_clean_error(cohort, capsys, tmp_path, content):
    config = tmp_path / "pipe.toml"
    config.write_bytes(content)
    before = snapshot(cohort)
    run_cli(["batch", cohort, "--config", config], capsys, code=1, says="pipe.toml")
    assert snapshot(cohort) == before
