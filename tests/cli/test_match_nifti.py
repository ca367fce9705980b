"""match_nifti, the library call behind ``mrfengine match``, and the batch's match stage: one core,
0 where nothing was matched (outside the mask, NaN frames, no signal), the one sidecar schema."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.io.bids import SIDECAR_KEYS, map_sidecar
from mrfengine.masking import has_estimate, outside_rule_fields
from mrfengine.pipeline import STAGES, match_nifti
from mrfengine.sequence import hermann2021, save_sequence
from mrfengine.testing import random_fingerprints

SUFFIXES = {"T1": "desc-match_T1map", "T2star": "desc-match_T2starmap", "B1": "desc-match_TB1map",
            "M0": "desc-match_M0map", "correlation": "desc-match_correlation"}
FOLDERS = {"B1": "fmap"}  # BIDS files B1+ maps under fmap/, the others under anat/


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 5 x 3 x 4 series of a 4-slice site-1 sequence (random tissue, SNR 200) with three voxels
    that cannot be matched (a NaN frame, no signal, and one outside the mask) and a mask file."""
    root = tmp_path_factory.mktemp("match_nifti")
    seq = hermann2021(1, n_slices=4)
    rng = np.random.default_rng(4)
    data = np.empty((5, 3, 4, seq.n_measurements), np.float32)
    for z in range(4):
        data[:, :, z] = random_fingerprints(seq, seq.slot_of_slice(z), 15, rng, snr=200)[0].reshape(5, 3, -1)
    data[0, 0, 0, 7] = np.nan
    data[1, 2, 3] = 0
    mask = np.ones(data.shape[:3], np.uint8)
    mask[4, 1, 2] = 0
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(root / "sub-07_mrf.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(root / "brain.nii.gz"))
    return {"root": root, "seq": seq, "seq_path": save_sequence(seq, root / "seq.json"), "data": data,
            "mask": mask > 0, "unmatched": (np.array([0, 1, 4]), np.array([0, 2, 1]), np.array([0, 3, 2]))}


def _read(path):
    return np.asarray(nib.load(str(path)).dataobj), json.loads(path.with_name(path.name[:-7] + ".json").read_text())


def test_match_nifti_writes_zero_where_not_matched_and_the_one_sidecar_schema(series, tmp_path):
    done = []
    result = match_nifti(series["root"] / "sub-07_mrf.nii.gz", tmp_path, sequence=series["seq_path"],
                         mask=series["root"] / "brain.nii.gz", backend="numpy",
                         progress=lambda k, n: done.append((k, n)))
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)] and result.prefix == "sub-07" and result.n_slices == 4
    assert result.info["n_matched"] == series["mask"].size - 3 and result.info["backend"] == "numpy"
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in result.files.items()} == {
        k: f"sub-07/{FOLDERS.get(k, 'anat')}/sub-07_{s}.nii.gz" for k, s in SUFFIXES.items()}
    links = json.loads((tmp_path / "dataset_description.json").read_text())["DatasetLinks"]
    assert links == {"input": f"../{series['root'].name}"}  # the inputs' folder (beside OUT), named in the URIs
    for name, path in result.files.items():
        arr, side = _read(path)
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), name  # never NaN
        assert (arr[series["unmatched"]] == 0).all(), name  # the NaN frame, no signal, outside the mask: all 0
        assert np.count_nonzero(arr) == series["mask"].size - 3, name
        assert list(side) == [k for k in SIDECAR_KEYS if k in side], name  # the one schema, as predict's
        assert (side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == (
            "bids:input:brain.nii.gz", "given", 0)
        assert side["Sources"] == ["bids:input:sub-07_mrf.nii.gz", "bids:input:brain.nii.gz"]
        assert side["SkullStripped"] is True and side["Provenance"]["Producer"] == "match"
        prov = side["Provenance"]
        assert prov["SequenceDigest"] == series["seq"].digest() and prov["MatchingBackend"] == "numpy"
    t1, side = _read(result.files["T1"])
    assert side["Units"] == "s" and 0.3 < np.median(t1[t1 > 0]) < 2.5  # seconds
    # without a mask nothing lies outside the brain; the unmatched voxels are 0 all the same
    whole = match_nifti(series["root"] / "sub-07_mrf.nii.gz", tmp_path / "whole", sequence=series["seq"],
                        backend="numpy")
    arr, side = _read(whole.files["T2star"])
    assert (side["BrainMask"], side["OutsideBrainValue"], side["SkullStripped"]) == (None, None, False)
    assert arr[4, 1, 2] > 0
    assert arr[0, 0, 0] == 0 and arr[1, 2, 3] == 0


def test_the_match_stage_and_match_nifti_give_the_same_maps_and_background(series, tmp_path):
    result = match_nifti(series["root"] / "sub-07_mrf.nii.gz", tmp_path, sequence=series["seq"],
                         mask=series["root"] / "brain.nii.gz", backend="numpy")
    inputs = {"mrf": series["data"].transpose(3, 2, 1, 0), "mask": series["mask"].transpose(2, 1, 0),
              "sequence": series["seq"], "z0": 0}
    out, info = STAGES["match"].function(inputs, STAGES["match"].options, "numpy")
    stored = STAGES["write"].function({**out, "mask": inputs["mask"]}, {}, "numpy")[0]["derived"]
    assert sorted(stored) == sorted(result.files)
    assert {k: info[k] for k in result.info if k != "dictionary_digests"} == {
        k: v for k, v in result.info.items() if k != "dictionary_digests"}
    for name, path in result.files.items():
        scale = 1e-3 if name in ("T1", "T2star") else 1.0  # the store in ms, the files in s
        want = stored[name].transpose(2, 1, 0) * np.float32(scale)
        np.testing.assert_allclose(_read(path)[0], want, rtol=1e-6)
        assert (stored[name].transpose(2, 1, 0)[series["unmatched"]] == 0).all(), name  # 0, not NaN
    # a reader tells the voxels without an estimate (0 now, NaN in older stores) from the rest
    none = np.zeros(series["mask"].shape, bool)
    none[series["unmatched"]] = True
    for t1 in (stored["T1"], np.where(stored["T1"] == 0, np.nan, stored["T1"])):
        np.testing.assert_array_equal(has_estimate(t1.transpose(2, 1, 0)), ~none)


def test_the_sidecar_schema():
    from mrfengine import __version__

    outside = outside_rule_fields("bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz", "given")
    fields = map_sidecar("T1", "s", sources=["bids:raw:sub-01/anat/sub-01_MRF.nii.gz"], outside=outside,
                         producer="match", generated_by="x", provenance={"K": 1})
    assert list(fields) == ["Description", "Units", "SkullStripped", "Sources", "BrainMask", "BrainMaskSource",
                            "OutsideBrainValue", "Provenance"]
    assert fields["SkullStripped"] is True
    assert fields["Provenance"] == {"Producer": "match", "Method": "x", "Version": __version__, "K": 1}
    mask = map_sidecar("brain mask", "1", sources=["bids:raw:a.nii.gz"], outside=None, mask_type="Brain",
                       spatial_reference="bids:raw:a.nii.gz")
    # a mask is no estimate: no outside-rule fields, no SkullStripped
    assert list(mask) == ["Description", "Units", "Sources", "SpatialReference", "Type", "Provenance"]
    with pytest.raises(ValidationError, match="BIDS URIs"):
        map_sidecar("T1", "s", sources=["sub-01_MRF.nii.gz"], outside=outside)  # a file name is no URI
    with pytest.raises(ValidationError, match="source"):
        map_sidecar("T1", "s", sources=[], outside=outside)
    with pytest.raises(ValidationError, match="outside rule"):
        map_sidecar("T1", "s", sources=["bids::a"], outside={"BrainMask": None})
