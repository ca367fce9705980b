"""The cohort store: opening, schema checks, completion markers, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from mrfengine.errors import StoreError, ValidationError
from mrfengine.io import Cohort, validate_cohort
from mrfengine.io.cohort import (
    ROOT_KEY,
    SCHEMA_VERSION,
    SiteEntry,
    SubjectEntry,
    SubjectWriter,
    create_cohort,
    normalize_subject_id,
    register_subjects,
)
from mrfengine.sequence import hermann2021


def _new(path, n_slices=3):
    seq = hermann2021(1, n_slices=n_slices)
    root = create_cohort(path, sites={"1": SiteEntry(seq)}, subjects={"sub-01": SubjectEntry("1", "train")})
    return root, seq


def _writer(root, seq, sid="sub-01", **kw):
    return SubjectWriter(root, sid, shape_zyx=(seq.n_slices, 4, 5), affine=np.diag([1.0, 2.0, 3.0, 1.0]),
                         n_frames=seq.n_measurements, **kw)


def test_not_a_cohort_is_named(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Cohort.open(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a zarr v3 group"):
        Cohort.open(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not an mrfengine cohort"):
        Cohort.open(tmp_path / "other.zarr")
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreError, match="not a cohort"):
        Cohort.open(tmp_path / "file.zarr")


def test_schema_version_mismatch(tmp_path):
    path = tmp_path / "c.zarr"
    _new(path)
    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][ROOT_KEY]["schema_version"] = SCHEMA_VERSION + 1
    meta.write_text(json.dumps(doc))
    expect = f"schema version {SCHEMA_VERSION + 1} is not supported.*version {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=expect):
        Cohort.open(path)
    with pytest.raises(StoreError, match="schema version"):
        validate_cohort(path)


def test_subject_counts_only_when_complete(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _new(path)
    w = _writer(root, seq)
    w.write("mrf", np.ones((35, 3, 4, 5), np.float32))
    w.write("truth/T1", np.full((3, 4, 5), 800, np.float32), attrs={"units": "ms"})
    c = Cohort.open(path)
    assert c.subjects == [] and c.incomplete == ["sub-01"]
    with pytest.raises(StoreError, match="incomplete"):
        c["sub-01"]
    w.finish()
    c = Cohort.open(path)
    assert c.subjects == ["sub-01"] and len(c) == 1 and "sub-01" in c
    sub = c["sub-01"]
    assert sub.shape == (3, 4, 5) and sub.voxel_size_mm == (1.0, 2.0, 3.0)
    assert sub.split == "train" and sub.site == "1" and sub.sequence == seq
    assert sub.mrf.chunks == (35, 1, 4, 5)
    assert sub.truth["T1"][0, 0, 0] == 800 and sub.truth["T1"].attrs["units"] == "ms"
    assert sub.annotations == {} and sub.brain_mask is None
    assert c.subjects_in("train") == ["sub-01"] and c.subjects_in("test") == []
    assert c.sequence("1") == seq
    with pytest.raises(StoreError, match="no site"):
        c.sequence("9")
    with pytest.raises(StoreError, match="no array"):
        sub.array("truth/PD")
    # A complete subject is not replaced by accident; an incomplete one is.
    with pytest.raises(StoreError, match="already complete"):
        _writer(root, seq)
    _writer(root, seq, overwrite=True)
    assert Cohort.open(path).subjects == []


def test_select_names_subjects_as_users_type_them(tmp_path):
    """batch, evaluate and export select subjects alike: ``7``, ``07``, ``sub-7``
    and ``sub-07`` name ``sub-07``; unknown and incomplete ones are named."""
    path = tmp_path / "c.zarr"
    seq = hermann2021(1, n_slices=3)
    entries = {sid: SubjectEntry("1", "train") for sid in ("sub-01", "sub-07", "sub-10", "sub-11")}
    root = create_cohort(path, sites={"1": SiteEntry(seq)}, subjects=entries)
    for sid in ("sub-01", "sub-07", "sub-10", "sub-11"):
        w = _writer(root, seq, sid=sid)
        w.write("mrf", np.ones((35, 3, 4, 5), np.float32))
        if sid != "sub-11":
            w.finish()
    c = Cohort.open(path)
    assert c.select(None) == c.select([]) == ["sub-01", "sub-07", "sub-10"]
    assert c.select(["7", "sub-10", "07", "sub-7", "1"]) == ["sub-07", "sub-10", "sub-01"]
    with pytest.raises(StoreError, match=r"no complete subject 'sub-42' \(not in the store\).*sub-01, sub-07"):
        c.select(["42"])
    with pytest.raises(StoreError, match="'sub-11' .*writer was interrupted"):
        c.select(["11"])
    with pytest.raises(ValidationError, match="BIDS"):
        c.select(["sub_01"])


def test_writer_checks_its_input(tmp_path):
    root, seq = _new(tmp_path / "c.zarr")
    with pytest.raises(ValidationError, match="affine"):
        SubjectWriter(root, "sub-01", shape_zyx=(3, 4, 5), affine=np.zeros((4, 4)), n_frames=35)
    with pytest.raises(ValidationError, match="BIDS"):
        _writer(root, seq, sid="sub_01")
    w = _writer(root, seq)
    with pytest.raises(ValidationError, match="shape"):
        w.write("truth/T1", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValidationError, match="one group deep"):
        w.write("maps/x/T1", np.zeros((3, 4, 5), np.float32))
    w.write("maps/T1", np.zeros((3, 4, 5), np.float32))  # later stages bring their own groups
    with pytest.raises(StoreError, match="without its 'mrf'"):
        w.finish()
    assert normalize_subject_id("07") == "sub-07"


def test_validator_names_problems(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _new(path)
    register_subjects(root, subjects={"sub-02": SubjectEntry("1")})
    w = _writer(root, seq)
    w.write("mrf", np.ones((35, 3, 4, 5), np.float32))
    w.write("truth/T1", np.ones((3, 4, 5), np.float32))
    w.write("annotations/lesion", np.full((3, 4, 5), 2, np.uint8))
    w.finish()
    rep = validate_cohort(path, deep=True)
    text = "\n".join(rep.problems)
    assert "sub-02: missing" in text
    assert "truth lacks ['T2star'" in text
    assert "array 'annotations/lesion' slice 0 in shard c/0/0/0: not binary" in text
    # An array listed but gone.
    import shutil

    shutil.rmtree(path / "subjects" / "sub-01" / "truth" / "T1")
    rep = validate_cohort(path)
    assert any("truth/T1" in p and "missing" in p for p in rep.problems)
    assert rep.n_complete == 1


def test_sites_keep_one_sequence(tmp_path):
    root, seq = _new(tmp_path / "c.zarr")
    with pytest.raises(StoreError, match="one site, one sequence"):
        register_subjects(root, sites={"1": SiteEntry(hermann2021(1, n_slices=6))})
    register_subjects(root, sites={"2": SiteEntry(hermann2021(2, n_slices=6))})
    assert set(Cohort.open(tmp_path / "c.zarr").sites) == {"1", "2"}
    with pytest.raises(StoreError, match="lacks"):
        register_subjects(root, subjects={"sub-09": SubjectEntry("3")})
    with pytest.raises(StoreError, match="already exists"):
        _new(tmp_path / "c.zarr")
