"""mrfengine's outputs are valid BIDS derivatives: the official validator (tests/bids_validation.py) on them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from bids_validation import assert_valid_bids, validate_bids


def _image(path, shape=(4, 4, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, path)


def test_validator_helper_passes_a_valid_dataset_and_lists_the_errors_of_a_broken_one(tmp_path):
    root = tmp_path / "deriv"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "mrfengine"}]}))
    _image(root / "sub-01" / "anat" / "sub-01_desc-match_T1map.nii.gz")
    (root / "sub-01" / "anat" / "sub-01_desc-match_T1map.json").write_text(json.dumps(
        {"Description": "T1", "Units": "s", "SkullStripped": False}))
    warnings = assert_valid_bids(root)
    assert all(w["severity"] == "warning" for w in warnings)

    # a file BIDS does not know, and a T1map without its required SkullStripped: both named
    _image(root / "sub-01" / "anat" / "sub-01_desc-match_whatever.nii.gz")
    (root / "sub-01" / "anat" / "sub-01_desc-match_T1map.json").write_text(json.dumps({"Units": "s"}))
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_valid_bids(root)
    message = str(failed.value)
    assert "NOT_INCLUDED: /sub-01/anat/sub-01_desc-match_whatever.nii.gz" in message
    assert "SIDECAR_KEY_REQUIRED (SkullStripped): /sub-01/anat/sub-01_desc-match_T1map.nii.gz" in message
    codes = {i["code"] for i in validate_bids(root) if i["severity"] == "error"}
    assert assert_valid_bids(root, allow=tuple(codes)) is not None  # allowed codes pass

    with pytest.raises(pytest.fail.Exception, match="not a BIDS dataset"):
        validate_bids(tmp_path)
