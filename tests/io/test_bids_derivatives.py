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


# --------------------------------------------------------------------------- names, paths, URIs, the root
def test_output_entities_and_paths():
    from mrfengine.errors import ValidationError
    from mrfengine.io.bids import DerivativeFile, output_entities

    assert output_entities("/x/sub-01_ses-2_task-rest_run-1_MRF.nii.gz") == {"sub": "01", "ses": "2", "run": "1"}
    assert output_entities("/x/scan_7.nii.gz") == {"sub": "scan7"}
    assert output_entities("/x/a.nii.gz", "patient7") == {"sub": "patient7"}
    assert output_entities("/x/a.nii.gz", "sub-01_acq-bold") == {"sub": "01", "acq": "bold"}
    for bad in ("ses-1_sub-01", "sub-01_task-x", "a_b"):
        with pytest.raises(ValidationError, match="prefix"):
            output_entities("/x/a.nii.gz", bad)
    f = DerivativeFile({"sub": "01", "ses": "2"}, "probseg", desc="unet", label="GM")
    assert str(f.relpath) == "sub-01/ses-2/anat/sub-01_ses-2_label-GM_desc-unet_probseg.nii.gz"
    assert f.uri == "bids::" + str(f.relpath) and str(f.sidecar).endswith("_probseg.json") and f.segmentation
    b1 = DerivativeFile({"sub": "01"}, "TB1map", desc="match")
    assert str(b1.relpath) == "sub-01/fmap/sub-01_desc-match_TB1map.nii.gz" and not b1.nonstandard


def test_source_uris_and_the_dataset_description_merge(tmp_path):
    from mrfengine.errors import InputFileError
    from mrfengine.io.bids import ensure_derivative_root, read_links, source_uri

    raw = tmp_path / "bids"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.10.0"}')
    root = raw / "derivatives" / "mrfengine"
    links = {}
    assert source_uri(raw / "sub-01/anat/sub-01_MRF.nii.gz", root, links) == "bids:raw:sub-01/anat/sub-01_MRF.nii.gz"
    assert source_uri(tmp_path / "x.nii.gz", root, links) == "bids:input:x.nii.gz"
    assert source_uri(root / "sub-01/anat/m.nii.gz", root, links) == "bids::sub-01/anat/m.nii.gz"
    assert links == {"raw": "../..", "input": "../../.."} or links["input"].startswith("file://")
    ensure_derivative_root(root, links=links, nonstandard=["T1mapstd"])
    doc = json.loads((root / "dataset_description.json").read_text())
    assert doc["DatasetType"] == "derivative" and doc["GeneratedBy"][0]["Name"] == "mrfengine"
    assert doc["DatasetLinks"] == links and {s["URL"] for s in doc["SourceDatasets"]} == set(links.values())
    assert "*_T1mapstd.nii.gz" in (root / ".bidsignore").read_text().splitlines()
    # a second run: links kept and merged, nothing duplicated
    more = read_links(root)
    assert source_uri(tmp_path / "y.nii.gz", root, more) == "bids:input:y.nii.gz" and more == links
    ensure_derivative_root(root, links=more)
    assert json.loads((root / "dataset_description.json").read_text()) == doc
    # another tool's dataset is not ours to write into
    with pytest.raises(InputFileError, match="raw BIDS dataset"):
        ensure_derivative_root(raw)


# --------------------------------------------------------------------------- the commands' outputs, validated
def test_export_of_a_cohort_is_valid_bids(small_cohort, tmp_path):
    from mrfengine.cli import main

    out = tmp_path / "export"
    assert main(["export", str(small_cohort.path), "-o", str(out)]) == 0
    assert_valid_bids(out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")}
    assert {"sub-01/anat/sub-01_MRF.nii.gz", "sub-01/anat/sub-01_desc-truth_T1map.nii.gz",
            "sub-01/fmap/sub-01_desc-truth_TB1map.nii.gz", "sub-01/anat/sub-01_desc-brain_mask.nii.gz"} <= files
    side = json.loads((out / "sub-01/anat/sub-01_desc-truth_T1map.json").read_text())
    assert side["Sources"] == ["bids:cohort:subjects/sub-01/truth/T1"]
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"] == {
        "cohort": f"../{small_cohort.path.name}"} or small_cohort.path.parent != tmp_path


def _tiny_model(tmp_path, sequence):
    from mrfengine.nn import Normalisation, get_config, save_model

    cfg = get_config("MSE-5").with_architecture(depth=2, base_filters=4)
    path = tmp_path / "model" / "mse5.pt"
    norm = Normalisation(tuple([0.1] * 35), tuple([0.05] * 35))
    save_model(cfg.build(seed=1), path, config=cfg, normalisation=norm, sequence=sequence)
    return path


def test_match_and_predict_into_one_folder_keep_apart_and_are_valid_bids(tmp_path):
    """The issue's case: match and predict both wrote sub-XX_T1map.nii.gz; now desc-match and desc-unet."""
    import torch

    from mrfengine.cli import main
    from mrfengine.sequence import hermann2021, save_sequence

    seq = hermann2021(1, n_slices=4)
    seq_path = save_sequence(seq, tmp_path / "seq.json")
    data = np.full((8, 8, 4, 35), 0.02, np.float32)
    data[2:6, 2:6] = np.random.default_rng(0).uniform(0.1, 0.3, (4, 4, 4, 35))
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header["descrip"] = b"scanner protocol XYZ"
    img.header.set_xyzt_units("mm", "sec")
    src = tmp_path / "in" / "sub-01_ses-1_MRF.nii.gz"
    src.parent.mkdir()
    nib.save(img, str(src))
    out = tmp_path / "derivatives"
    assert main(["match", str(src), "-o", str(out), "--sequence", str(seq_path), "--backend", "numpy",
                 "--no-progress"]) == 0
    matched = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "dataset_description.json"}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main(["predict", str(src), "-o", str(out), "--model", str(_tiny_model(tmp_path, seq)),
                     "--no-progress", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    anat = out / "sub-01" / "ses-1" / "anat"
    for path, content in matched.items():  # predict replaced none of match's files
        if path.name != ".bidsignore":
            assert path.read_bytes() == content, path
    assert (anat / "sub-01_ses-1_desc-match_T1map.nii.gz").is_file()
    assert (anat / "sub-01_ses-1_desc-unet_T1map.nii.gz").is_file()
    assert (out / "sub-01" / "ses-1" / "fmap" / "sub-01_ses-1_desc-match_TB1map.nii.gz").is_file()
    t1 = nib.load(str(anat / "sub-01_ses-1_desc-unet_T1map.nii.gz"))
    assert t1.header["descrip"].tobytes().strip(b"\0") == b""  # the input's description is not the map's
    side = json.loads((anat / "sub-01_ses-1_desc-match_correlation.json").read_text())
    assert side["Sources"] == ["bids:input:sub-01_ses-1_MRF.nii.gz"]  # the input, never the map itself
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"] == {"input": "../in"}
    assert_valid_bids(out)
