"""NIfTI in (import) and out (export): round trips, orientation, scaling, bad inputs."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

import mrfengine.io.importer as importer
from mrfengine.errors import InputFileError, StoreError
from mrfengine.io import Cohort, export_array, export_subject, import_subject
from mrfengine.io.cohort import ROOT_KEY
from mrfengine.io.exporter import export_name


def _las(data, affine):
    """The same image with the x axis flipped (RAS -> LAS)."""
    flipped = data[::-1]
    aff = affine.copy()
    aff[:3, 0] = -affine[:3, 0]
    aff[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    return np.ascontiguousarray(flipped), aff


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_round_trip_keeps_data_affine_codes_units(tmp_path, ras_series, ext, nifti):
    data, affine = ras_series
    src = nifti(tmp_path / f"sub-01_mrf{ext}", data, affine, qcode=1, scode=2, units=("mm", "msec"),
                      zooms4=4.5)
    import_subject(tmp_path / "c.zarr", "sub-01", src, site="1", split="test", group="patient")
    c = Cohort.open(tmp_path / "c.zarr")
    sub = c["sub-01"]
    assert sub.mrf.shape == (35, 12, 8, 10) and sub.split == "test" and sub.group == "patient"
    np.testing.assert_array_equal(sub.mrf[:, 3], data[:, :, 3, :].transpose(2, 1, 0))
    out = export_array(c, "sub-01", "mrf", tmp_path / "out", ext=ext)
    assert out.relative_to(tmp_path / "out").as_posix() == f"sub-01/anat/sub-01_MRF{ext}"
    img = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert img.header.get_zooms()[3] == pytest.approx(4.5)
    side = json.loads(out.with_name("sub-01_MRF.json").read_text())["Provenance"]
    assert side["EchoTime"][0] == pytest.approx(0.016) and len(side["FlipAngle"]) == 35
    assert side["SequenceName"] == "hermann2021-site1" and len(side["SliceTiming"]) == 12


def test_las_series_and_ras_masks_line_up(tmp_path, ras_series, nifti):
    data, affine = ras_series
    las, las_aff = _las(data, affine)
    mask = np.zeros(data.shape[:3], np.uint8)
    mask[1:4, 2:6, 5] = 1  # in RAS voxel order
    ref = data[..., 0] * 100
    nifti(tmp_path / "mrf.nii.gz", las, las_aff)
    nifti(tmp_path / "les.nii.gz", mask, affine)          # RAS order, same grid
    las_ref, _ = _las(ref, affine)
    nifti(tmp_path / "t2w.nii.gz", las_ref, las_aff)      # LAS order
    import_subject(tmp_path / "c.zarr", "01", tmp_path / "mrf.nii.gz", annotations={"lesion": tmp_path / "les.nii.gz"},
                   references={"T2w": tmp_path / "t2w.nii.gz"}, brain_mask=tmp_path / "les.nii.gz")
    c = Cohort.open(tmp_path / "c.zarr")
    sub = c["sub-01"]
    assert sub.attrs["orientation"] == "LAS"
    np.testing.assert_allclose(sub.affine, las_aff)
    # Stored in the MRF's own (LAS) voxel order: the mask follows it.
    np.testing.assert_array_equal(np.asarray(sub.annotations["lesion"][...]), mask[::-1].transpose(2, 1, 0))
    paths = export_subject(c, "sub-01", tmp_path / "out")
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in paths)
    assert names == ["sub-01/anat/sub-01_MRF.nii.gz", "sub-01/anat/sub-01_T2w.nii.gz",
                     "sub-01/anat/sub-01_desc-brain_mask.nii.gz", "sub-01/anat/sub-01_label-lesion_mask.nii.gz"]
    # In world space everything matches the RAS originals.
    canon = lambda p: np.asarray(nib.as_closest_canonical(  # noqa: E731
        nib.load(str(tmp_path / "out" / "sub-01" / "anat" / p))).dataobj)
    np.testing.assert_array_equal(canon("sub-01_MRF.nii.gz"), data)
    np.testing.assert_array_equal(canon("sub-01_label-lesion_mask.nii.gz"), mask)
    np.testing.assert_allclose(canon("sub-01_T2w.nii.gz"), ref, rtol=1e-6)


def test_int16_scaled_input(tmp_path, ras_series, nifti):
    data, affine = ras_series
    src = nifti(tmp_path / "mrf.nii.gz", data * 1000, affine, int16=True)
    raw = nib.load(str(src))
    assert raw.get_data_dtype() == np.int16 and raw.dataobj.slope != 1
    expect = np.asarray(raw.dataobj.get_unscaled(), np.float64) * raw.dataobj.slope + raw.dataobj.inter
    import_subject(tmp_path / "c.zarr", "sub-01", src)
    sub = Cohort.open(tmp_path / "c.zarr")["sub-01"]
    assert sub.attrs["input_dtype"] == "int16"
    np.testing.assert_allclose(np.asarray(sub.mrf[...]), expect.transpose(3, 2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sub.mrf[...]), (data * 1000).transpose(3, 2, 1, 0), atol=0.05)


def test_slice_axis_is_moved_last(tmp_path, ras_series, nifti):
    data, affine = ras_series
    moved = np.ascontiguousarray(np.moveaxis(data, 2, 0))  # slices first: (12, 10, 8, 35)
    aff = affine[:, [2, 0, 1, 3]]
    nifti(tmp_path / "mrf.nii.gz", moved, aff)
    import_subject(tmp_path / "c.zarr", "sub-01", tmp_path / "mrf.nii.gz", slice_axis=0)
    sub = Cohort.open(tmp_path / "c.zarr")["sub-01"]
    np.testing.assert_array_equal(np.asarray(sub.mrf[...]), data.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(sub.affine, affine)


def test_bad_inputs_name_file_and_problem(tmp_path, ras_series, nifti):
    data, affine = ras_series
    c = tmp_path / "c.zarr"
    good = nifti(tmp_path / "mrf.nii.gz", data, affine)
    cases = {
        "frames": (nifti(tmp_path / "f34.nii.gz", data[..., :34], affine), {}, r"f34\.nii\.gz: expected 35 frames"),
        "3d": (nifti(tmp_path / "v3.nii.gz", data[..., 0], affine), {}, r"v3\.nii\.gz: expected a 4D image"),
        "sms": (nifti(tmp_path / "z8.nii.gz", data[:, :, :8], affine), {"site": "2"},
                r"z8\.nii\.gz: 8 slices.*multiple of 3"),
    }
    for name, (path, kw, msg) in cases.items():
        with pytest.raises(InputFileError, match=msg):
            import_subject(c, "sub-01", path, **kw)
    assert not c.exists()  # nothing written for a bad input
    import_subject(c, "sub-09", good)  # site 1 now has a 12-slice sequence
    z9 = nifti(tmp_path / "z9.nii.gz", data[:, :, :9], affine)
    with pytest.raises(InputFileError, match=r"z9\.nii\.gz: 9 slices along axis 2, but the sequence of site 1"):
        import_subject(c, "sub-01", z9)
    bad_shape = nifti(tmp_path / "m_shape.nii.gz", np.zeros((10, 8, 11)), affine)
    with pytest.raises(InputFileError, match=r"m_shape\.nii\.gz: shape \(10, 8, 11\) does not match"):
        import_subject(c, "sub-01", good, annotations={"lesion": bad_shape})
    shifted = affine.copy()
    shifted[0, 3] += 2
    bad_aff = nifti(tmp_path / "m_aff.nii.gz", np.zeros((10, 8, 12)), shifted)
    with pytest.raises(InputFileError, match=r"m_aff\.nii\.gz: affine differs from the MRF's"):
        import_subject(c, "sub-01", good, brain_mask=bad_aff)
    blob = (tmp_path / "mrf.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputFileError, match=r"cut\.nii\.gz: cannot read"):
        import_subject(c, "sub-01", tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti at all" * 50)
    with pytest.raises(InputFileError, match=r"junk\.nii"):
        import_subject(c, "sub-01", tmp_path / "junk.nii")
    with pytest.raises(InputFileError, match="file not found"):
        import_subject(c, "sub-01", tmp_path / "missing.nii.gz")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a cohort"):
        import_subject(tmp_path / "plain", "sub-01", good)


def test_existing_subject_and_schema_mismatch(tmp_path, ras_series, nifti):
    data, affine = ras_series
    good = nifti(tmp_path / "mrf.nii.gz", data, affine)
    c = tmp_path / "c.zarr"
    import_subject(c, "sub-01", good)
    with pytest.raises(StoreError, match="already exists"):
        import_subject(c, "sub-01", good)
    import_subject(c, "sub-01", good, overwrite=True, split="train")
    assert Cohort.open(c)["sub-01"].split == "train"
    meta = c / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][ROOT_KEY]["schema_version"] = 99
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="schema version 99"):
        import_subject(c, "sub-02", good)


def test_interrupted_import_leaves_no_complete_subject(tmp_path, ras_series, monkeypatch, nifti):
    data, affine = ras_series
    good = nifti(tmp_path / "mrf.nii.gz", data, affine)
    c = tmp_path / "c.zarr"
    import_subject(c, "sub-01", good)

    def boom(self, **attrs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importer.SubjectWriter, "finish", boom)
    with pytest.raises(KeyboardInterrupt):
        import_subject(c, "sub-02", good)
    monkeypatch.undo()
    co = Cohort.open(c)
    assert co.subjects == ["sub-01"] and co.incomplete == ["sub-02"]
    import_subject(c, "sub-02", good)  # an incomplete subject needs no overwrite
    assert Cohort.open(c).subjects == ["sub-01", "sub-02"]


def test_export_names_units_and_truth_in_seconds(tmp_path, small_cohort):
    sid = small_cohort.subjects[0]
    sub = small_cohort[sid]
    out = export_array(small_cohort, sid, "truth/T1", tmp_path)
    assert out.relative_to(tmp_path).as_posix() == f"{sid}/anat/{sid}_desc-truth_T1map.nii.gz"
    img = nib.load(str(out))
    np.testing.assert_allclose(np.asarray(img.dataobj), np.asarray(sub.truth["T1"][...]).transpose(2, 1, 0) / 1000,
                               rtol=1e-6)
    np.testing.assert_allclose(img.affine, sub.affine)
    side = json.loads(out.with_name(f"{sid}_desc-truth_T1map.json").read_text())
    assert side["Units"] == "s" and side["Provenance"]["Simulated"] is True and side["SkullStripped"] is False
    assert export_name("truth/T2star")[:2] == ("desc-truth_T2starmap", "s")
    assert export_name("truth/GM")[0] == "label-GM_desc-truth_probseg"
    assert export_name("annotations/lesion_repeat")[0] == "label-lesion_desc-repeat_mask"
    assert export_name("reference/T2w")[0] == "T2w"
    with pytest.raises(StoreError, match="no array"):
        export_array(small_cohort, sid, "truth/nothing", tmp_path)


def test_gz_check(tmp_path, ras_series, nifti):
    # A .nii.gz that is gzip but holds garbage.
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    with pytest.raises(InputFileError, match=r"g\.nii\.gz"):
        import_subject(tmp_path / "c.zarr", "sub-01", tmp_path / "g.nii.gz")
