"""One rule for values outside the brain (mrfengine.masking.apply_outside_rule), held by
``mrfengine predict``, the batch pipeline (match and unet stages, written by ``write``)
and ``mrfengine export``: 0 outside the brain mask in every map, the mask and the value
named in the sidecars."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import zarr

from mrfengine.cli import main
from mrfengine.errors import ValidationError
from mrfengine.io import Cohort
from mrfengine.masking import MASK_METHOD, OUTSIDE_BRAIN_VALUE, apply_outside_rule, outside_rule_fields
from mrfengine.nn import Normalisation, get_config, save_model
from mrfengine.pipeline import Pipeline, run_subject
from mrfengine.pipeline.derived import derived_attrs
from mrfengine.pipeline.stages import BRAIN_MASK_SOURCE

from _tiny_cohort import tiny_cohort_path
from bids_validation import assert_valid_bids

#: the unet's maps (predict's desc-unet, and export's of the batch's pipeline named unet)
NN_MAPS = {"desc-unet_T1map": ("T1", 1e-3), "desc-unet_T2starmap": ("T2star", 1e-3),
           "label-NAWM_desc-unet_probseg": ("NAWM", 1.0), "label-GM_desc-unet_probseg": ("GM", 1.0),
           "label-lesion_desc-unet_probseg": ("lesion", 1.0)}


def _a(root):
    """The folder of sub-01's files in a derivative dataset."""
    return root / "sub-01" / "anat"


def test_the_rule_sets_every_map_to_zero_outside_the_mask_and_keeps_the_inside():
    mask = np.zeros((2, 3, 4), bool)
    mask[:, 1:, 1:3] = True
    t1 = np.full(mask.shape, np.nan, np.float64)  # NaN outside: the match stage's unmatched voxels
    t1[mask] = 800.0
    t1[1, 2, 2] = np.nan  # a brain voxel without an estimate stays visible as one
    p = np.random.default_rng(0).uniform(0, 1, mask.shape).astype(np.float32)
    out = apply_outside_rule({"T1": t1, "lesion": p}, mask)
    assert all(v.dtype == np.float32 and v.shape == mask.shape for v in out.values())
    assert OUTSIDE_BRAIN_VALUE == 0.0
    for name, src in (("T1", t1), ("lesion", p)):
        assert (out[name][~mask] == 0).all()
        np.testing.assert_array_equal(out[name][mask], src[mask].astype(np.float32))
    assert np.isnan(out["T1"][1, 2, 2]) and np.isnan(t1[0, 0, 0])  # the inputs are not changed
    # no mask: the whole field of view, values as they are (copies)
    whole = apply_outside_rule({"lesion": p}, None)
    np.testing.assert_array_equal(whole["lesion"], p)
    assert whole["lesion"] is not p
    with pytest.raises(ValidationError, match="'T1' has shape"):
        apply_outside_rule({"T1": t1[:1]}, mask)


def test_the_sidecar_fields_name_the_mask_and_the_value():
    assert outside_rule_fields("sub-01_desc-brain_mask.nii.gz", MASK_METHOD) == {
        "BrainMask": "sub-01_desc-brain_mask.nii.gz", "BrainMaskSource": MASK_METHOD, "OutsideBrainValue": 0.0}
    assert outside_rule_fields(None, "given") == {"BrainMask": None, "BrainMaskSource": "none",
                                                  "OutsideBrainValue": None}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A copy of the tiny cohort with a tiny MSE-5 network for its site-1 sequence, and
    sub-01 run through two pipelines: ``match`` (conventional) and ``unet`` (the network)."""
    root = tmp_path_factory.mktemp("outside_rule")
    path = root / "tiny.zarr"
    shutil.copytree(tiny_cohort_path(tmp_path_factory), path)
    sub = Cohort.open(path)["sub-01"]
    cfg = get_config("MSE-5").with_architecture(depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    norm = Normalisation(tuple(rng.uniform(0.05, 0.2, 35)), tuple(rng.uniform(0.05, 0.1, 35)))
    model = root / "model" / "mse5.pt"
    save_model(cfg.build(seed=3), model, config=cfg, normalisation=norm, sequence=sub.sequence)
    for pipe in (Pipeline.from_stages("match", name="match"),
                 Pipeline.from_dict({"name": "unet", "stages": ["unet"], "unet": {"model": str(model)}})):
        assert run_subject(path, "sub-01", pipe).status == "ok"
    return path, model


def _nii(path):
    if not path.exists() and path.parent.name != "anat":
        path = path.parent / "sub-01" / ("fmap" if "TB1map" in path.name else "anat") / path.name
    return np.asarray(nib.load(str(path)).dataobj)


def test_the_pipeline_stores_every_map_under_the_rule(study):
    path, _ = study
    sub = Cohort.open(path)["sub-01"]
    brain = np.asarray(sub.brain_mask[:]) > 0
    assert 0 < brain.sum() < brain.size
    for pipeline, names in (("match", ("T1", "T2star", "B1", "M0", "correlation")),
                            ("unet", ("T1", "T2star", "NAWM", "GM", "lesion"))):
        for name in names:
            arr = np.asarray(sub.array(f"derived/{pipeline}/{name}")[:])
            assert (arr[~brain] == 0).all(), (pipeline, name)  # conventional and network alike: 0, not NaN
            assert np.isfinite(arr).all() and np.count_nonzero(arr[brain]) > 0, (pipeline, name)
        write = derived_attrs(path, "sub-01", pipeline)["provenance"]["stages"]["write"]
        assert write == {"brain_mask": BRAIN_MASK_SOURCE, "outside_brain_value": 0.0}


def test_predict_the_stage_and_export_give_the_same_maps(study, tmp_path, capsys):
    path, model = study
    sub = Cohort.open(path)["sub-01"]
    brain_xyz = (np.asarray(sub.brain_mask[:]) > 0).transpose(2, 1, 0)
    # export: both pipelines' maps and the brain mask they name
    out = tmp_path / "export"
    assert main(["export", str(path), "-o", str(out), "--subject", "1", "--pipeline", "match",
                 "--pipeline", "unet"]) == 0
    np.testing.assert_array_equal(_nii(out / "sub-01_desc-brain_mask.nii.gz"), brain_xyz.astype(np.uint8))
    assert_valid_bids(out)  # the export of a batch's maps (desc-match, desc-unet) is a valid BIDS derivative
    for name in ("desc-match_T1map", "desc-match_T2starmap", "desc-match_TB1map", "desc-match_M0map",
                 "desc-match_correlation", *NN_MAPS):
        arr = _nii(out / f"sub-01_{name}.nii.gz")
        assert (arr[~brain_xyz] == 0).all() and np.isfinite(arr).all(), name
        folder = out / "sub-01" / ("fmap" if name.endswith("TB1map") else "anat")
        side = json.loads((folder / f"sub-01_{name}.json").read_text())
        assert (side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == (
            "bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz", BRAIN_MASK_SOURCE, 0.0), name
    # predict on the subject's series with its brain mask: the stage's maps, exactly
    assert main(["export", str(path), "-o", str(tmp_path / "in"), "--subject", "1", "--array", "mrf",
                 "--array", "brain_mask"]) == 0
    series, mask = _a(tmp_path / "in") / "sub-01_MRF.nii.gz", _a(tmp_path / "in") / "sub-01_desc-brain_mask.nii.gz"
    assert main(["predict", str(series), "-o", str(tmp_path / "given"), "--model", str(model), "--mask",
                 str(mask)]) == 0
    for suffix in NN_MAPS:  # predict's files and the exported stage's: the same names, the same maps
        np.testing.assert_allclose(_nii(tmp_path / "given" / f"sub-01_{suffix}.nii.gz"),
                                   _nii(out / f"sub-01_{suffix}.nii.gz"), rtol=1e-6, atol=1e-7)
        side = json.loads((_a(tmp_path / "given") / f"sub-01_{suffix}.json").read_text())
        # the mask inside another mrfengine derivative (the export): a raw: link to that dataset
        assert (side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == (
            "bids:raw:sub-01/anat/sub-01_desc-brain_mask.nii.gz", "given", 0.0)
    # predict without a mask: the same rule with the mask it makes from the series (and writes)
    assert main(["predict", str(series), "-o", str(tmp_path / "made"), "--model", str(model)]) == 0
    assert main(["predict", str(series), "-o", str(tmp_path / "whole"), "--model", str(model),
                 "--no-brain-mask"]) == 0
    made = _nii(tmp_path / "made" / "sub-01_label-brain_desc-unet_mask.nii.gz") > 0
    assert_valid_bids(tmp_path / "made")  # predict's maps and the mask it made
    assert_valid_bids(tmp_path / "given")
    assert 0 < made.sum() < made.size
    # the series' own mask finds most of the simulated brain (70% on this coarse 64 x 64 x 12 phantom; Dice 0.99 on
    # a paper-sized one, mrfengine demo)
    assert (made & brain_xyz).sum() > 0.6 * brain_xyz.sum() and (made & ~brain_xyz).sum() < 0.1 * made.sum()
    for suffix in NN_MAPS:
        whole = _nii(tmp_path / "whole" / f"sub-01_{suffix}.nii.gz")
        np.testing.assert_array_equal(_nii(tmp_path / "made" / f"sub-01_{suffix}.nii.gz"),
                                      apply_outside_rule({"m": whole}, made)["m"])
        side = json.loads((_a(tmp_path / "made") / f"sub-01_{suffix}.json").read_text())
        assert (side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == (
            "bids::sub-01/anat/sub-01_label-brain_desc-unet_mask.nii.gz", MASK_METHOD, 0.0)
        assert json.loads((_a(tmp_path / "whole") / f"sub-01_{suffix}.json").read_text())["OutsideBrainValue"] is None


def test_export_applies_the_rule_to_maps_stored_before_it(study, tmp_path):
    """A store written before the rule held NaN outside the brain (match's T1, the unet's
    ms maps): export writes them under the rule all the same."""
    path, _ = study
    old = tmp_path / "old.zarr"
    shutil.copytree(path, old)
    sub = Cohort.open(old)["sub-01"]
    brain = np.asarray(sub.brain_mask[:]) > 0
    arr = zarr.open_array(str(old / "subjects" / "sub-01" / "derived" / "match" / "T1"), mode="r+")
    t1 = np.asarray(arr[:])
    arr[:] = np.where(brain, t1, np.nan)
    out = tmp_path / "out"
    assert main(["export", str(old), "-o", str(out), "--subject", "1", "--pipeline", "match"]) == 0
    got = _nii(out / "sub-01_desc-match_T1map.nii.gz")
    np.testing.assert_array_equal(got, apply_outside_rule({"t": t1 * np.float32(1e-3)}, brain)["t"].transpose(2, 1, 0))
