"""The cohort store on any zarr store, through zarr's API only: a cohort packed in a zip,
an in-memory store, a store that cannot be written, and the reasons a subject is absent."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore, ZipStore

from mrfengine.errors import StoreError
from mrfengine.io.bids import SIDECAR_KEYS
from mrfengine.io import Cohort, export_array, validate_cohort
from mrfengine.io.cohort import (
    SiteEntry,
    SubjectEntry,
    SubjectWriter,
    create_cohort,
    derived_attrs,
    derived_complete,
    open_cohort_for_writing,
    require_writable,
    subject_complete,
)
from mrfengine.pipeline.derived import write_derived
from mrfengine.sequence import hermann2021

SHAPE = (3, 4, 5)
SEQ = hermann2021(1, n_slices=SHAPE[0])


def _mrf(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 100, (SEQ.n_measurements, *SHAPE)).astype(np.float32)


def _write(root, sid: str, seed: int, *, finish: bool = True, **kw) -> SubjectWriter:
    w = SubjectWriter(root, sid, shape_zyx=SHAPE, affine=np.diag([1.0, 2.0, 3.0, 1.0]), n_frames=SEQ.n_measurements,
                      **kw)
    w.write("mrf", _mrf(seed))
    w.write("brain_mask", np.ones(SHAPE, np.uint8))
    if finish:
        w.finish()
    return w


def _cohort(where, subjects=("sub-01", "sub-02", "sub-03")):
    """sub-01 and sub-02 complete, sub-03 interrupted; derived maps for sub-01."""
    entries = {sid: SubjectEntry("1", "test") for sid in subjects}
    root = create_cohort(where, sites={"1": SiteEntry(SEQ)}, subjects=entries)
    for i, sid in enumerate(subjects):
        _write(root, sid, i, finish=sid != "sub-03")
    return root


def _zip(folder, dest, *, drop: str | None = None):
    """The folder's files in a zip, names relative to its root (``drop``: one key left out)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            key = p.relative_to(folder).as_posix()
            if p.is_file() and key != drop:
                zf.write(p, key)
    return dest


def _put(store, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


# --------------------------------------------------------------------------- a cohort in a zip
def test_a_cohort_packed_in_a_zip_opens_lists_validates_and_reads(tmp_path):
    folder = tmp_path / "c.zarr"
    _cohort(folder)
    t1 = np.full(SHAPE, 800, np.float32)
    write_derived(folder, "sub-01", "match", {"T1": t1}, attrs={"provenance": {"config": {"stages": ["match"]}}})
    packed = _zip(folder, tmp_path / "c.zarr.zip")

    for opened in (Cohort.open(packed), Cohort.open(ZipStore(packed, mode="r"))):
        assert opened.subjects == ["sub-01", "sub-02"] and opened.incomplete == ["sub-03"]
        assert opened.absent["sub-03"].startswith("incomplete (no completion marker")
        assert str(opened.path) == str(packed) and opened.name == "c.zarr.zip"
        sub = opened["sub-02"]
        np.testing.assert_array_equal(np.asarray(sub.mrf), _mrf(1))
        np.testing.assert_array_equal(opened["sub-01"].array("derived/match/T1")[...], t1)
        assert derived_complete(opened, "sub-01", "match") and not derived_complete(opened, "sub-02", "match")
        assert derived_attrs(opened, "sub-01", "match")["arrays"] == ["T1"]
    assert subject_complete(packed, "sub-01") and not subject_complete(packed, "sub-03")
    rep = validate_cohort(packed, deep=True, allow_incomplete=True)
    assert rep.ok and rep.n_complete == 2 and rep.path == packed, rep.problems
    assert rep.warnings == ["sub-03: incomplete (no completion marker: its writer was interrupted)"]
    # Export reads the derived group's provenance through the same store.
    out = export_array(packed, "sub-01", "derived/match/T1", tmp_path / "nifti")
    side = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
    assert side["Sources"] == ["bids:cohort:subjects/sub-01/derived/match/T1"] and side["Units"] == "s"
    links = json.loads((tmp_path / "nifti" / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"cohort": "../c.zarr.zip"}  # the store, relative to the derivative's root
    # ... and the command line reads it too
    from click.testing import CliRunner

    from mrfengine.cli import cli as main_group

    res = CliRunner().invoke(main_group, ["validate", str(packed), "--allow-incomplete"])
    assert res.exit_code == 0 and "c.zarr.zip" in res.output, res.output
    # ... in the one sidecar schema of predict and match (io.bids.map_sidecar)
    assert list(side) == [k for k in SIDECAR_KEYS if k in side]
    assert side["Provenance"]["Method"] == "pipeline match: match" and side["Provenance"]["Producer"] == "match"
    assert side["BrainMask"] == "bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz" and side["OutsideBrainValue"] == 0
    assert side["Provenance"]["PipelineProvenance"] == {"config": {"stages": ["match"]}}


def test_a_chunk_missing_from_the_zip_is_an_error_not_zeros(tmp_path):
    folder = tmp_path / "c.zarr"
    _cohort(folder, subjects=("sub-01",))
    # Slice 1 left out of the MRF series' shard (its index marks it absent), the rest intact.
    mrf = zarr.open_array(str(folder / "subjects/sub-01/mrf"), mode="r+", config={"write_empty_chunks": False})
    mrf[:, 1] = 0
    packed = _zip(folder, tmp_path / "c.zip")
    sub = Cohort.open(packed)["sub-01"]
    with pytest.raises(StoreError, match=r"sub-01: array 'mrf' is missing 1 of its 3 chunk\(s\): slice 1 in shard "
                                         r"c/0/0/0/0"):
        sub.mrf[:, 0]
    rep = validate_cohort(packed)
    assert any("slice 1 in shard c/0/0/0/0" in p for p in rep.problems), rep.problems
    # A shard missing from the zip: all its slices are.
    packed = _zip(folder, tmp_path / "d.zip", drop="subjects/sub-01/mrf/c/0/0/0/0")
    with pytest.raises(StoreError, match=r"missing 3 of its 3 chunk\(s\): slice 0 in shard c/0/0/0/0"):
        Cohort.open(packed)["sub-01"].mrf[:, 0]


def test_a_zip_is_not_written_to(tmp_path):
    folder = tmp_path / "c.zarr"
    _cohort(folder, subjects=("sub-01",))
    packed = _zip(folder, tmp_path / "c.zip")
    before = packed.read_bytes()
    with pytest.raises(StoreError, match=r"c\.zip: cannot write into the store \(the store is read-only"):
        open_cohort_for_writing(packed)
    with pytest.raises(StoreError, match=r"c\.zip: cannot write into the store"):
        write_derived(packed, "sub-01", "match", {"T1": np.zeros(SHAPE, np.float32)})
    assert packed.read_bytes() == before


# --------------------------------------------------------------------------- writability: asked, not probed
def test_a_read_only_store_is_refused_with_its_name(tmp_path):
    folder = tmp_path / "c.zarr"
    _cohort(folder, subjects=("sub-01",))
    with pytest.raises(StoreError, match=r"c\.zarr: cannot write into the store \(the store is read-only \(a "
                                         r"LocalStore opened for reading\)\)"):
        require_writable(LocalStore(folder, read_only=True))
    with pytest.raises(StoreError, match=r"memory://.*: cannot create the cohort \(the store is read-only"):
        create_cohort(MemoryStore(read_only=True), sites={"1": SiteEntry(SEQ)})
    require_writable(folder)  # a writable folder passes


def test_a_read_only_folder_is_found_without_writing_anything(tmp_path, monkeypatch):
    from mrfengine.io.cohort import store as store_mod

    folder = tmp_path / "c.zarr"
    _cohort(folder, subjects=("sub-01",))
    before = sorted(folder.rglob("*"))
    real = os.access
    # What a read-only mount answers (EROFS), also where the tests run as root.
    monkeypatch.setattr(store_mod.os, "access", lambda p, m, *a, **k: False if m & os.W_OK else real(p, m, *a, **k))
    with pytest.raises(StoreError, match=r"c\.zarr: cannot write into the store \(.*c\.zarr is not writable: "
                                         r"permission denied or a read-only file system\)"):
        open_cohort_for_writing(folder)
    monkeypatch.setattr(store_mod.os, "access", real)
    monkeypatch.setattr(store_mod.os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 10, 0, 0, 0, 0, 0, 0, 255)))
    with pytest.raises(StoreError, match=r"cannot write derived maps into the store \(no space left"):
        from mrfengine.pipeline.batch import check_writable

        check_writable(folder)
    assert sorted(folder.rglob("*")) == before


# --------------------------------------------------------------------------- a store without files
def test_a_memory_store_holds_a_cohort_and_replaces_a_subject_completed_last(monkeypatch):
    store = MemoryStore()
    root = _cohort(store)
    c = Cohort.open(store)
    assert c.subjects == ["sub-01", "sub-02"] and c.path == c.location and c.location.startswith("memory://")
    np.testing.assert_array_equal(c["sub-01"].mrf[...], _mrf(0))

    # The replacement is staged, then copied in (no renames here) with its completion record last;
    # an interruption during the copy leaves sub-01 absent, never half-written and complete.
    real_set = MemoryStore.set
    calls = {"n": 0}

    async def failing_set(self, key, value):
        if key.startswith("subjects/sub-01/"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        await real_set(self, key, value)

    monkeypatch.setattr(MemoryStore, "set", failing_set)
    with pytest.raises(OSError):
        _write(root, "sub-01", 7, overwrite=True, staging=True)
    monkeypatch.setattr(MemoryStore, "set", real_set)
    c = Cohort.open(store)
    assert c.subjects == ["sub-02"] and "sub-01" in c.absent
    staged = [k for k in sync(_keys(store)) if k.startswith("subjects/.staging-sub-01-") and k.endswith("/zarr.json")]
    assert staged, "the complete new copy is kept under its hidden name"

    _write(root, "sub-01", 8, overwrite=True, staging=True)
    c = Cohort.open(store)
    assert c.subjects == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(c["sub-01"].mrf[...], _mrf(8))
    assert validate_cohort(store, deep=True, allow_incomplete=True).ok


async def _keys(store):
    return [k async for k in store.list()]


def test_rewriting_a_subject_keeps_keys_we_did_not_write():
    store = MemoryStore()
    root = _cohort(store)
    _put(store, "subjects/sub-03/notes.txt", b"precious")
    _write(root, "sub-03", 5)
    assert sync(store.get("subjects/sub-03/notes.txt", prototype=default_buffer_prototype())).to_bytes() == b"precious"
    assert Cohort.open(store).subjects == ["sub-01", "sub-02", "sub-03"]
    with pytest.raises(StoreError, match=r"holds 1 file\(s\) that are not the cohort's \(subjects/sub-03/notes.txt\)"):
        create_cohort(store, sites={"1": SiteEntry(SEQ)}, overwrite=True)
    with pytest.raises(StoreError, match="already exists"):
        create_cohort(store, sites={"1": SiteEntry(SEQ)})


# --------------------------------------------------------------------------- why a subject is absent
@pytest.mark.parametrize("damage, why", [
    ("no metadata", "incomplete (no zarr.json: its writer was interrupted)"),
    ("no marker", "incomplete (no completion marker: its writer was interrupted)"),
    ("gone", "missing (its folder is not in the store)"),
    ("garbage", "its zarr.json is not valid JSON (JSONDecodeError); the store is damaged"),
    ("an array", "its zarr.json does not describe a zarr group; the store is damaged"),
    ("no attributes", "its zarr.json has no 'mrfengine_subject' attributes; the store is damaged"),
])
def test_the_reasons_a_subject_is_absent_come_through_the_store(damage, why):
    store = MemoryStore()
    _cohort(store, subjects=("sub-01", "sub-02"))
    meta = "subjects/sub-02/zarr.json"
    if damage == "no metadata":
        sync(store.delete(meta))
    elif damage == "no marker":
        doc = json.loads(sync(store.get(meta, prototype=default_buffer_prototype())).to_bytes())
        doc["attributes"]["mrfengine_subject"]["complete"] = False
        _put(store, meta, json.dumps(doc).encode())
    elif damage == "gone":
        for key in [k for k in sync(_keys(store)) if k.startswith("subjects/sub-02/")]:
            sync(store.delete(key))
    elif damage == "garbage":
        _put(store, meta, b"{not json")
    elif damage == "an array":
        _put(store, meta, sync(store.get("subjects/sub-02/mrf/zarr.json", prototype=default_buffer_prototype()))
             .to_bytes())
    else:
        _put(store, meta, json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode())
    c = Cohort.open(store)
    assert c.subjects == ["sub-01"] and c.absent == {"sub-02": why}
    with pytest.raises(StoreError, match="sub-02"):
        c["sub-02"]
    rep = validate_cohort(store)
    assert rep.problems == [f"sub-02: {why}"] and rep.n_complete == 1
    interrupted = damage in ("no metadata", "no marker", "gone")
    assert validate_cohort(store, allow_incomplete=True).ok == interrupted


def test_a_cohort_opened_through_a_group_or_store_path(tmp_path):
    folder = tmp_path / "c.zarr"
    _cohort(folder, subjects=("sub-01",))
    group = zarr.open_group(str(folder), mode="r")
    assert Cohort.open(group).subjects == ["sub-01"]
    assert Cohort.open(group.store_path).path == folder
