"""The cohort store's zarr v3 layout: dimension names, shards, consolidated metadata,
stores of the previous layout, and the checks of a damaged shard."""

from __future__ import annotations

import json
import threading
from functools import partial

import numpy as np
import pytest
import zarr

from mrfengine.errors import StoreError, ValidationError
from mrfengine.io import Cohort, validate_cohort
from mrfengine.io.cohort import (
    DIMENSION_NAMES,
    REVISION_KEY,
    SUBJECT_KEY,
    SiteEntry,
    SubjectEntry,
    SubjectWriter,
    array_layout,
    consolidate,
    create_cohort,
    default_compressor,
    drop_consolidated,
    open_cohort_for_writing,
    write_planes,
)
from mrfengine.io.cohort import write as cohort_write
from mrfengine.sequence import hermann2021

SHAPE = (4, 6, 5)  # (Z, Y, X)


def _cohort(path, *, sids=("sub-01",)):
    seq = hermann2021(1, n_slices=SHAPE[0])
    root = create_cohort(path, sites={"1": SiteEntry(seq)}, subjects={s: SubjectEntry("1", "train") for s in sids})
    return root, seq


def _subject(root, seq, sid="sub-01", *, seed=0):
    """One complete subject: the MRF series given slice by slice, out of order, and two maps."""
    rng = np.random.default_rng(seed)
    mrf = rng.random((seq.n_measurements, *SHAPE)).astype(np.float32)
    t1 = rng.random(SHAPE).astype(np.float32)
    w = SubjectWriter(root, sid, shape_zyx=SHAPE, affine=np.diag([1.0, 2.0, 3.0, 1.0]),
                      n_frames=seq.n_measurements, overwrite=True)
    series = w.create("mrf", dtype="float32", frames=True)
    for z in (2, 0, 3, 1):
        series[:, z] = mrf[:, z]
    w.write("reference/T2w", t1)
    w.write("brain_mask", (t1 > 0.5).astype(np.uint8))
    w.finish()
    return mrf, t1


def _old_layout(shape, dtype, **_):
    """The layout of the previous mrfengine: one chunk per slice, no shards, no axis names."""
    axis = len(shape) - 3
    return {"chunks": tuple(1 if i == axis else n for i, n in enumerate(shape))}


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- layout
def test_array_layout_names_axes_and_shards_whole_slices():
    lay = array_layout((35, 60, 240, 240), "float32")
    assert lay["dimension_names"] == ("frame", "z", "y", "x")
    assert lay["chunks"] == (35, 1, 240, 240)
    # 484 MB of MRF: the fewest equal slabs of whole slices under SHARD_BYTES (128 MiB).
    assert lay["shards"] == (35, 15, 240, 240)
    maps = array_layout((60, 240, 240), "float32")
    assert maps == {"chunks": (1, 240, 240), "shards": (60, 240, 240), "dimension_names": ("z", "y", "x")}
    # A one-slice array is stored unsharded; a slab never splits a slice.
    assert array_layout((1, 8, 8), "uint8")["shards"] is None
    assert array_layout((5, 8, 8), "float32", shard_bytes=3 * 8 * 8 * 4)["shards"] == (3, 8, 8)
    with pytest.raises(ValidationError, match="3 .* or 4"):
        array_layout((8, 8), "float32")


def test_every_array_named_and_one_shard_per_array(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    mrf, t1 = _subject(root, seq)
    sub = Cohort.open(path)["sub-01"]
    for p in sub.arrays:
        arr = zarr.open_array(str(path / "subjects" / "sub-01" / p), mode="r")
        assert tuple(arr.metadata.dimension_names) == DIMENSION_NAMES[arr.ndim], p
        assert arr.shards is not None and arr.shards[-3:] == SHAPE, p
    # One object per array (its shard) instead of one per slice, plus the metadata.
    chunks = [f for f in _files(path / "subjects" / "sub-01") if not f.endswith("zarr.json")]
    assert chunks == ["brain_mask/c/0/0/0", "mrf/c/0/0/0/0", "reference/T2w/c/0/0/0"]
    np.testing.assert_array_equal(sub.mrf[...], mrf)
    np.testing.assert_array_equal(sub.array("reference/T2w")[1], t1[1])
    assert validate_cohort(path, deep=True).ok


# --------------------------------------------------------------------------- writers of shards
def test_plane_writer_stores_each_shard_once(tmp_path, monkeypatch):
    # Shards of 2 slices: slices given out of order are stored once their shard is whole.
    monkeypatch.setattr(cohort_write, "array_layout", partial(array_layout, shard_bytes=2 * 6 * 5 * 4))
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    w = SubjectWriter(root, "sub-01", shape_zyx=SHAPE, affine=np.eye(4), n_frames=seq.n_measurements)
    t1 = w.create("reference/T2w", dtype="float32")
    assert t1.shards == (2, 6, 5)
    folder = path / "subjects" / "sub-01" / "reference" / "T2w" / "c"
    t1[3] = np.full((6, 5), 3, np.float32)
    t1[0] = np.zeros((6, 5), np.float32)
    assert not folder.exists()  # no shard complete yet: nothing stored, nothing rewritten later
    t1[2] = np.full((6, 5), 2, np.float32)
    assert _files(folder) == ["1/0/0"]
    with pytest.raises(ValidationError, match="assign whole slices"):
        t1[0, 1] = 1.0
    with pytest.raises(ValidationError, match="shape"):
        t1[1] = np.zeros((5, 6), np.float32)
    w.write("mrf", np.ones((seq.n_measurements, *SHAPE), np.float32))
    with pytest.raises(StoreError, match="'reference/T2w' has 3 of its 4 chunks"):
        w.finish()  # slice 1 never given: the flushed shard 0 holds slice 0 only


def test_write_planes_parallel_slabs_of_whole_shards(tmp_path):
    """Disjoint slabs of whole shards, written by threads at once, lose nothing; a slab that
    splits a shard (two writers of one shard would overwrite each other) is refused."""
    shape = (8, 6, 5)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=shape, dtype="float32", fill_value=0,
                            compressors=default_compressor(), config={"write_empty_chunks": True},
                            **array_layout(shape, "float32", shard_bytes=2 * 6 * 5 * 4))
    want = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    threads = [threading.Thread(target=write_planes, args=(arr, lo, want[lo:lo + 2])) for lo in range(0, 8, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(arr[...], want)
    with pytest.raises(ValidationError, match="split a shard of 2 slices"):
        write_planes(arr, 1, want[1:3])
    with pytest.raises(ValidationError, match="do not fit"):
        write_planes(arr, 6, want[:4])


# --------------------------------------------------------------------------- consolidated metadata
def _consolidated_copy(path):
    return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata")


def test_consolidated_metadata_read_when_current(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path, sids=("sub-01", "sub-02"))
    _subject(root, seq, "sub-01")
    _, t1 = _subject(root, seq, "sub-02", seed=1)
    assert consolidate(path)
    meta = _consolidated_copy(path)["metadata"]
    assert meta["subjects/sub-01/mrf"]["dimension_names"] == ["frame", "z", "y", "x"]
    cohort = Cohort.open(path)
    assert cohort["sub-01"]._consolidated is not None  # its arrays open from the root's zarr.json
    np.testing.assert_array_equal(cohort["sub-02"].array("reference/T2w")[...], t1)
    rep = validate_cohort(path)
    assert rep.ok and not any("consolidated" in w for w in rep.warnings)
    # Any mrfengine writer removes it before changing the hierarchy.
    open_cohort_for_writing(path)
    assert _consolidated_copy(path) is None
    assert not drop_consolidated(path)


def test_stale_consolidated_metadata_is_never_read(tmp_path):
    """A writer unaware of the consolidated metadata (an older mrfengine, plain zarr) changes
    a subject after the consolidation: readers read the store, validate warns."""
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    _subject(root, seq)
    consolidate(path)
    # Rewrite reference/T2w with other data and attributes, and the subject's record, behind its back.
    group = zarr.open_group(str(path / "subjects" / "sub-01"), mode="r+", use_consolidated=False)
    new = np.full(SHAPE, 7, np.float32)
    arr = group.create_array("reference/T2w", shape=SHAPE, dtype="float32", fill_value=0, overwrite=True,
                             attributes={"units": "ms"}, **_old_layout(SHAPE, "float32"))
    arr[...] = new
    attrs = dict(group.attrs[SUBJECT_KEY])
    attrs[REVISION_KEY] = "rewritten"
    group.attrs[SUBJECT_KEY] = attrs
    assert _consolidated_copy(path) is not None  # still there, and stale
    sub = Cohort.open(path)["sub-01"]
    assert sub._consolidated is None
    t1 = sub.array("reference/T2w")
    assert t1.attrs["units"] == "ms" and t1.shards is None
    np.testing.assert_array_equal(t1[...], new)
    rep = validate_cohort(path)
    assert rep.ok, rep.problems
    assert any("consolidated metadata is not current for 1 subject(s) (sub-01)" in w for w in rep.warnings)


def test_consolidated_copy_that_disagrees_is_a_problem(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    _subject(root, seq)
    consolidate(path)
    doc = json.loads((path / "zarr.json").read_text())
    doc["consolidated_metadata"]["metadata"]["subjects/sub-01/reference/T2w"]["attributes"] = {"units": "s"}
    (path / "zarr.json").write_text(json.dumps(doc))
    rep = validate_cohort(path)
    assert any("'reference/T2w': the consolidated metadata" in p and "describes it otherwise" in p
               for p in rep.problems), rep.problems


# --------------------------------------------------------------------------- the previous layout
def test_store_of_the_previous_layout_is_read(tmp_path, monkeypatch):
    """Arrays without shards or dimension names, no revision, no consolidated metadata: read
    and validated as before (a warning names the unnamed arrays)."""
    path = tmp_path / "old.zarr"
    root, seq = _cohort(path)
    with monkeypatch.context() as m:
        m.setattr(cohort_write, "array_layout", _old_layout)
        mrf, t1 = _subject(root, seq)
    group = zarr.open_group(str(path / "subjects" / "sub-01"), mode="r+")
    attrs = dict(group.attrs[SUBJECT_KEY])
    del attrs[REVISION_KEY]
    group.attrs[SUBJECT_KEY] = attrs
    files = _files(path / "subjects" / "sub-01" / "mrf")
    assert files == ["c/0/0/0/0", "c/0/1/0/0", "c/0/2/0/0", "c/0/3/0/0", "zarr.json"]  # one chunk per slice
    assert _consolidated_copy(path) is None
    sub = Cohort.open(path)["sub-01"]
    np.testing.assert_array_equal(sub.mrf[...], mrf)
    np.testing.assert_array_equal(sub.array("reference/T2w")[...], t1)
    rep = validate_cohort(path, deep=True)
    assert rep.ok, rep.problems
    assert any("3 array(s) without dimension_names" in w for w in rep.warnings)
    # Consolidated later, it is not used for a subject without a revision, and reads still work.
    consolidate(path)
    sub = Cohort.open(path)["sub-01"]
    assert sub._consolidated is None
    np.testing.assert_array_equal(sub.mrf[:, 2], mrf[:, 2])
    # A missing chunk of the old layout is still an error.
    (path / "subjects" / "sub-01" / "mrf" / "c" / "0" / "1" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"missing 1 of its 4 chunk\(s\): chunk c/0/1/0/0 \(slice 1\)"):
        Cohort.open(path)["sub-01"].mrf[...]


# --------------------------------------------------------------------------- damaged shards
def _drop_inner_chunk(path, array, z):
    """Store slice ``z`` of a sharded array as absent from its shard's index (a writer that
    skipped it), the rest of the shard intact."""
    arr = zarr.open_array(str(path / "subjects" / "sub-01" / array), mode="r+", config={"write_empty_chunks": False})
    arr[(slice(None),) * (arr.ndim - 3) + (z,)] = 0


def test_missing_inner_chunk_is_an_error_never_zeros(tmp_path):
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    _subject(root, seq)
    _drop_inner_chunk(path, "reference/T2w", 2)
    rep = validate_cohort(path)
    assert any("array 'reference/T2w' is missing 1 of its 4 chunk(s): slice 2 in shard c/0/0/0" in p
               for p in rep.problems), rep.problems
    sub = Cohort.open(path)["sub-01"]
    with pytest.raises(StoreError, match="slice 2 in shard c/0/0/0"):
        sub.array("reference/T2w")[...]
    with pytest.raises(StoreError, match="slice 2 in shard"):
        sub.array("reference/T2w")[0]  # any read of the array is refused, not only of the slice


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_truncated_or_missing_shard_is_an_error(tmp_path, damage):
    path = tmp_path / "c.zarr"
    root, seq = _cohort(path)
    _subject(root, seq)
    shard = path / "subjects" / "sub-01" / "mrf" / "c" / "0" / "0" / "0" / "0"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-20])
        expect = "shard(s) cannot be read"
    else:
        shard.unlink()
        expect = "missing 4 of its 4 chunk"
    for deep in (False, True):
        rep = validate_cohort(path, deep=deep)
        assert any(expect in p and "'mrf'" in p for p in rep.problems), rep.problems
    with pytest.raises(StoreError, match="sub-01"):
        Cohort.open(path)["sub-01"].mrf[:, 0]


def test_simulate_writes_named_sharded_arrays_and_consolidates(small_cohort):
    """The simulator's cohort (the shared fixture): consolidated at the end, read through it."""
    path = small_cohort.path
    assert _consolidated_copy(path) is not None
    cohort = Cohort.open(path)
    for sid in cohort.subjects:
        sub = cohort[sid]
        assert sub._consolidated is not None
        for p in sub.arrays:
            arr = sub.array(p)
            assert tuple(arr.metadata.dimension_names) == DIMENSION_NAMES[arr.ndim] and arr.shards is not None, p
    rep = validate_cohort(path)
    assert rep.ok and not rep.warnings, (rep.problems, rep.warnings)
