import json

import nibabel as nib
import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.errors import ValidationError
from mrfengine.nn import Normalisation, get_config, load_model, predict_volume, read_card, save_model
from mrfengine.sequence import hermann2021, save_sequence

SEQ = hermann2021(1, n_slices=4)
AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
OUTPUTS = {  # file name after the entities: (output, unit in the sidecar, scale from the network's unit)
    "desc-unet_T1map": ("T1", "s", 1e-3),
    "desc-unet_T2starmap": ("T2star", "s", 1e-3),
    "label-NAWM_desc-unet_probseg": ("NAWM", "1", 1.0),
    "label-GM_desc-unet_probseg": ("GM", "1", 1.0),
    "label-lesion_desc-unet_probseg": ("lesion", "1", 1.0),
}
MASK = "label-brain_desc-unet_mask"  # the brain mask predict made from the series


def _f(out, name):
    """``out/sub-01/anat/name`` for ``name`` = ``sub-01_...`` (the derivative's layout)."""
    return out / name.split("_")[0] / "anat" / name


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks gain nothing from threads (see tests/nn/conftest.py)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(tmp_path, name="MSE-5", n_channels=35, sequence=SEQ):
    cfg = get_config(name).with_architecture(depth=2, base_filters=4)
    path = tmp_path / "models" / f"{name.lower()}.pt"
    rng = np.random.default_rng(0)
    norm = Normalisation(tuple(rng.uniform(0.05, 0.2, n_channels)), tuple(rng.uniform(0.05, 0.1, n_channels)))
    save_model(cfg.build(seed=3), path, config=cfg, normalisation=norm, sequence=sequence)
    return path


def _head(shape):
    """(X, Y) of an elliptic "brain" in the middle of the slice."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return ((x - (shape[0] - 1) / 2) / (0.38 * shape[0])) ** 2 + ((y - (shape[1] - 1) / 2) / (0.38 * shape[1])) ** 2 < 1


def _mrf(tmp_path, shape=(14, 11, 4, 35), name="sub-01_mrf.nii.gz"):
    """A series with a bright elliptic brain in a dark background (a tenth of its signal)."""
    data = np.random.default_rng(1).uniform(0, 0.3, size=shape).astype(np.float32)
    data *= np.where(_head(shape), 1.0, 0.1).astype(np.float32)[:, :, None, None]
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path, data


def _expected(data, model, mask_xyz, **options):
    """predict_volume's maps under the outside rule, (X, Y, Z)."""
    from mrfengine.masking import apply_outside_rule

    maps = predict_volume(data.transpose(2, 3, 1, 0), model, **options)
    return {k: v.transpose(2, 1, 0) for k, v in apply_outside_rule(maps, mask_xyz.transpose(2, 1, 0)).items()}


def test_predict_writes_the_five_maps_with_units_and_the_affine(tmp_path, capsys):
    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(mrf_path), "-o", str(out), "--model", str(model_path), "--batch-size", "3"]) == 0
    assert "predicted 4 slices" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("sub-01/anat/*.nii.gz")) == sorted(
        [f"sub-01_{s}.nii.gz" for s in OUTPUTS] + ["sub-01_" + MASK + ".nii.gz"])
    # no --mask: the maps are 0 outside a brain mask made from the series, written beside them
    mask_img = nib.load(str(_f(out, "sub-01_" + MASK + ".nii.gz")))
    mask = np.asarray(mask_img.dataobj)
    np.testing.assert_allclose(mask_img.affine, AFFINE)
    np.testing.assert_array_equal(mask, np.broadcast_to(_head(data.shape)[:, :, None], mask.shape))
    mask_side = json.loads((_f(out, "sub-01_" + MASK + ".json")).read_text())
    assert mask_side["Type"] == "Brain" and mask_side["Provenance"]["MaskMethod"].startswith("made from the MRF")
    assert "SkullStripped" not in mask_side and mask_side["SpatialReference"] == "bids:input:sub-01_mrf.nii.gz"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "mrfengine"
    assert description["DatasetLinks"] == {"input": ".."}  # the input's folder, relative to the root
    want = _expected(data, load_model(model_path), mask, batch_size=3)
    for suffix, (name, unit, scale) in OUTPUTS.items():
        img = nib.load(str(_f(out, f"sub-01_{suffix}.nii.gz")))
        np.testing.assert_allclose(img.affine, AFFINE)
        arr = np.asarray(img.dataobj)
        assert arr.shape == data.shape[:3] and arr.dtype == np.float32
        np.testing.assert_allclose(arr, want[name] * scale, rtol=1e-6)
        assert (arr[mask == 0] == 0).all() and np.count_nonzero(arr[mask == 1]) > 0
        side = json.loads((_f(out, f"sub-01_{suffix}.json")).read_text())
        prov = side["Provenance"]
        assert side["Units"] == unit and prov["Model"] == "MSE-5" and prov["Producer"] == "unet"
        assert prov["SequenceDigest"] == SEQ.digest() and side["Sources"] == ["bids:input:sub-01_mrf.nii.gz"]
        assert prov["TestTimeAugmentation"] == "none" and side["SkullStripped"] is True
        assert side["BrainMask"] == "bids::sub-01/anat/sub-01_" + MASK + ".nii.gz" and side["OutsideBrainValue"] == 0


def test_predict_with_test_time_augmentation(tmp_path):
    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", str(mrf_path), "-o", str(out), "--model", str(model_path), "--tta", "flip"]) == 0
    mask = np.asarray(nib.load(str(_f(out, "sub-01_" + MASK + ".nii.gz"))).dataobj)
    want = _expected(data, load_model(model_path), mask, tta="flip")
    arr = np.asarray(nib.load(str(_f(out, "sub-01_label-lesion_desc-unet_probseg.nii.gz"))).dataobj)
    np.testing.assert_allclose(arr, want["lesion"], rtol=1e-6)
    side = json.loads((_f(out, "sub-01_label-lesion_desc-unet_probseg.json")).read_text())
    assert side["Provenance"]["TestTimeAugmentation"] == "flip"


def test_mask_zeroes_the_maps_outside(tmp_path):
    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    mask = np.zeros(data.shape[:3], np.uint8)
    mask[3:9, 2:8, :] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(tmp_path / "mask.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", str(mrf_path), "-o", str(out), "--model", str(model_path), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--prefix", "sub-02"]) == 0
    assert main(["predict", str(mrf_path), "-o", str(out), "--model", str(model_path), "--prefix", "all",
                 "--no-brain-mask"]) == 0
    assert not list(out.glob("*/anat/*_mask.*"))  # no mask made
    for suffix in OUTPUTS:
        masked = np.asarray(nib.load(str(_f(out, f"sub-02_{suffix}.nii.gz"))).dataobj)
        full = np.asarray(nib.load(str(_f(out, f"sub-all_{suffix}.nii.gz"))).dataobj)
        assert np.count_nonzero(full[mask == 0]) > 0
        np.testing.assert_array_equal(masked, np.where(mask == 1, full, 0))
        given = json.loads((_f(out, f"sub-02_{suffix}.json")).read_text())
        assert (given["BrainMask"], given["BrainMaskSource"], given["OutsideBrainValue"]) == ("bids:input:mask.nii.gz", "given", 0)
        whole = json.loads((_f(out, f"sub-all_{suffix}.json")).read_text())
        assert (whole["BrainMask"], whole["BrainMaskSource"], whole["OutsideBrainValue"]) == (None, "none", None)
    # --no-brain-mask keeps the whole field of view: predict_volume's maps as they are
    want = predict_volume(data.transpose(2, 3, 1, 0), load_model(model_path))
    np.testing.assert_allclose(np.asarray(nib.load(str(_f(out, "sub-all_desc-unet_T1map.nii.gz"))).dataobj),
                               want["T1"].transpose(2, 1, 0) * 1e-3, rtol=1e-6)


def test_mask_and_no_brain_mask_exclude_each_other(tmp_path, capsys):
    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    nib.save(nib.Nifti1Image(np.ones(data.shape[:3], np.uint8), AFFINE), str(tmp_path / "mask.nii.gz"))
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "out"), "--model", str(model_path), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--no-brain-mask"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_series_with_no_brain_to_find_is_refused_unless_the_whole_field_is_kept(tmp_path, capsys):
    model_path = _model(tmp_path)
    path = tmp_path / "sub-09_mrf.nii.gz"
    nib.save(nib.Nifti1Image(np.full((14, 11, 4, 35), 0.2, np.float32), AFFINE), str(path))
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(model_path), "--input-scale", "absolute"]) == 1
    err = capsys.readouterr().err
    assert "no brain mask could be made" in err and "--no-brain-mask" in err
    assert main(["predict", str(path), "-o", str(out), "--model", str(model_path), "--input-scale", "absolute",
                 "--no-brain-mask"]) == 0
    assert json.loads((_f(out, "sub-09_desc-unet_T1map.json")).read_text())["BrainMask"] is None


@pytest.fixture
def no_shipped_model(tmp_path, monkeypatch):
    """An installation without a shipped model and without MRFENGINE_MODEL."""
    from mrfengine.nn import default

    folder = tmp_path / "site-packages" / "mrfengine" / "models" / "mse5"
    monkeypatch.setattr(default, "DEFAULT_MODEL_DIR", folder)
    monkeypatch.delenv(default.MODEL_ENV, raising=False)
    return folder


def test_without_a_model_and_none_shipped_the_error_says_what_to_do(tmp_path, capsys, no_shipped_model):
    mrf_path, _ = _mrf(tmp_path)
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "error: no default model is installed" in err and str(no_shipped_model) in err
    assert "pass --model NAME.pt" in err and "MRFENGINE_MODEL" in err
    assert not (tmp_path / "out").exists()


def _maps(out, prefix="sub-01"):
    return {suffix: np.asarray(nib.load(str(_f(out, f"{prefix}_{suffix}.nii.gz"))).dataobj) for suffix in OUTPUTS}


def test_predict_without_model_uses_the_environment_variable(tmp_path, capsys, no_shipped_model, monkeypatch):
    model_path = _model(tmp_path)
    mrf_path, _ = _mrf(tmp_path)
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "given"), "--model", str(model_path)]) == 0
    monkeypatch.setenv("MRFENGINE_MODEL", str(model_path))
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "env")]) == 0
    assert f"model MSE-5 from {model_path}" in capsys.readouterr().out
    given, env = _maps(tmp_path / "given"), _maps(tmp_path / "env")
    for suffix in OUTPUTS:
        np.testing.assert_array_equal(env[suffix], given[suffix])
    side = json.loads((_f(tmp_path / "env", "sub-01_desc-unet_T1map.json")).read_text())
    side = side["Provenance"]
    assert side["ModelFile"] == model_path.name and side["ModelSHA256"] == read_card(model_path).artifact_sha256
    assert side["TissueTargets"] == "truth"  # where the card says the NAWM/GM targets came from


def test_predict_without_model_uses_the_shipped_float16_model(tmp_path, capsys, no_shipped_model):
    from mrfengine.nn.default import package_model

    model_path = _model(tmp_path)
    shipped = package_model(model_path, no_shipped_model)
    mrf_path, data = _mrf(tmp_path)
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "out")]) == 0
    assert f"from {shipped}" in capsys.readouterr().out
    got = _maps(tmp_path / "out")
    mask = np.asarray(nib.load(str(_f(tmp_path / "out", "sub-01_" + MASK + ".nii.gz"))).dataobj)
    want = _expected(data, load_model(shipped), mask)
    full = _expected(data, load_model(model_path), mask)
    for suffix, (name, _, scale) in OUTPUTS.items():
        np.testing.assert_allclose(got[suffix], want[name] * scale, rtol=1e-6)
        # float16 storage: within the tolerance of tests/nn/test_default_model.py (relative L2 norm)
        ref = full[name] * scale
        assert np.linalg.norm(got[suffix] - ref) < 5e-3 * np.linalg.norm(ref)
    side = json.loads((_f(tmp_path / "out", "sub-01_desc-unet_T1map.json")).read_text())
    assert side["Provenance"]["ModelFile"] == "model.pt" and side["Provenance"]["Model"] == "MSE-5"


def test_help_names_the_default_model(capsys):
    assert main(["predict", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "$MRFENGINE_MODEL" in help_text and "mrfengine/models/mse5/" in help_text


@pytest.mark.parametrize("case,match", [
    ("frames", "does not fit the model: .*takes 35 input channels; the data have 34"),
    ("sequence", "does not fit the model: .*trained for sequence"),
    ("slices", "5 slices along axis 2, but sequence"),
    ("maps", "takes T1, T2star maps, not an MRF series"),
])
def test_data_that_do_not_fit_the_model_are_refused(tmp_path, capsys, case, match):
    model_path = _model(tmp_path, "MSE-2-1", 2, None) if case == "maps" else _model(tmp_path)
    shape = {"frames": (14, 11, 4, 34), "slices": (14, 11, 5, 35)}.get(case, (14, 11, 4, 35))
    mrf_path, _ = _mrf(tmp_path, shape=shape)
    args = ["predict", str(mrf_path), "-o", str(tmp_path / "out"), "--model", str(model_path)]
    if case == "sequence":
        save_sequence(hermann2021(2, n_slices=6), tmp_path / "site2.json")
        args += ["--sequence", str(tmp_path / "site2.json")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(match, err), err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the library call behind the command
def _mask_file(tmp_path, shape):
    mask = np.zeros(shape, np.uint8)
    mask[3:11, 2:9, :] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, AFFINE), str(path))
    return path, mask.astype(bool)


def test_predict_nifti_is_the_command_as_a_library_call(tmp_path):
    import torch

    from mrfengine.errors import OptionError
    from mrfengine.io.bids import SIDECAR_KEYS
    from mrfengine.pipeline import predict_nifti

    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    mask_path, mask = _mask_file(tmp_path, data.shape[:3])
    threads = torch.get_num_threads()
    done = []
    result = predict_nifti(mrf_path, tmp_path / "lib", model=model_path, mask=mask_path, mc_samples=2,
                           consistency=True, threads=2, progress=lambda k, n: done.append((k, n)))
    assert torch.get_num_threads() == threads  # the library puts torch's threads back
    assert done[-1] == (4, 4) and result.n_slices == 4 and result.prefix == "sub-01" and result.warning is None
    names = {"T1", "T2star", "NAWM", "GM", "lesion"}
    assert set(result.files) == names | {f"{n}_uncertainty" for n in names} | {"physics_consistency"}
    for name, path in result.files.items():  # every file 0 outside the given mask (no mask made, none written)
        arr = np.asarray(nib.load(str(path)).dataobj)
        assert (arr[~mask] == 0).all() and np.count_nonzero(arr[mask]) > 0, name
        side = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert list(side) == [k for k in SIDECAR_KEYS if k in side], name  # the one sidecar schema
        assert (side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == ("bids:input:mask.nii.gz", "given", 0)
        assert side["Sources"] == ["bids:input:sub-01_mrf.nii.gz", "bids:input:mask.nii.gz"]
        assert side["Provenance"]["Model"] == "MSE-5" and side["Provenance"]["InputLevelMask"] == "given"
    assert not list((tmp_path / "lib").glob("**/*_mask.*"))
    # the command writes the same maps
    assert main(["predict", str(mrf_path), "-o", str(tmp_path / "cli"), "--model", str(model_path), "--mask",
                 str(mask_path), "--nthreads", "2", "--report", str(tmp_path / "qc")]) == 0
    page = (tmp_path / "qc" / "sub-01.html").read_text()  # predict --report DIR: the QC page of its maps
    assert "T1 mosaic" in page and "<h3>Lesion overlay</h3>" in page and (tmp_path / "qc" / "index.html").is_file()
    for path in (result.files[name] for name in names):
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "cli" / path.relative_to(tmp_path / "lib")))
                                                 .dataobj),
                                      np.asarray(nib.load(str(path)).dataobj))
    # options that exclude each other, or that the network cannot honour: OptionError, before any file
    with pytest.raises(OptionError, match="exclude each other"):
        predict_nifti(mrf_path, tmp_path / "x", model=model_path, mask=mask_path, brain_mask=False)
    with pytest.raises(ValidationError, match="mc_samples must be 0"):
        predict_nifti(mrf_path, tmp_path / "x", model=model_path, mc_samples=1)
    assert not (tmp_path / "x").exists()


def test_the_unet_stage_and_predict_nifti_give_the_same_maps_record_and_background(tmp_path):
    """The batch's unet stage (arrays of a cohort subject) and predict_nifti (files) run the one
    core: the same maps, the same zeros outside the brain, the same record."""
    from mrfengine.pipeline import STAGES, predict_nifti

    model_path = _model(tmp_path)
    mrf_path, data = _mrf(tmp_path)
    mask_path, mask = _mask_file(tmp_path, data.shape[:3])
    options = {**STAGES["unet"].options, "model": str(model_path), "mc_samples": 2}
    for brain in (mask, None):  # the subject's brain mask, or none: the whole field of view
        out, info = STAGES["unet"].function({"mrf": data.transpose(3, 2, 1, 0), "mask": None if brain is None else
                                             brain.transpose(2, 1, 0), "sequence": SEQ}, options, "numpy")
        stored = STAGES["write"].function({"nn_maps": out["nn_maps"], "mask": None if brain is None else
                                           brain.transpose(2, 1, 0)}, {}, "numpy")[0]["derived"]
        result = predict_nifti(mrf_path, tmp_path / str(brain is None), model=model_path, mc_samples=2,
                               mask=None if brain is None else mask_path, brain_mask=brain is not None)
        assert sorted(stored) == sorted(result.files)
        for name, path in result.files.items():
            scale = 1e-3 if name.startswith(("T1", "T2star")) else 1.0  # the store in ms, the files in s
            got = np.asarray(nib.load(str(path)).dataobj)
            np.testing.assert_allclose(got, stored[name].transpose(2, 1, 0) * np.float32(scale), rtol=1e-6)
            if brain is not None:
                assert (got[~brain] == 0).all()
            else:
                assert np.count_nonzero(got[~mask]) > 0, name
        assert {k: v for k, v in info.items() if k not in ("uncertainty", "physics_consistency")} == result.info
