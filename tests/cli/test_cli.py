import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.dictionary import fingerprints
from mrfengine.sequence import hermann2021, save_sequence


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2
    assert main(["demo", "--snr", "zero"]) == 2


def test_demo_prints_a_table(capsys, tmp_path):
    assert main(["demo", "--slices", "1", "--voxels", "256", "--no-cache", "--no-unet",
                 "--cohort", str(tmp_path / "c.zarr")]) == 0
    out = capsys.readouterr().out
    for word in ("WM", "GM", "DGM", "lesion", "T1 true", "voxels/s", "tiny cohort", "sub-06"):
        assert word in out


def test_demo_runs_the_network_on_a_scanner_scale_int16_series(tmp_path, capsys):
    """The demo's network part at a tiny size: the tiny preset's patient, stored at x1000 as int16
    with scl_slope, through `mrfengine predict` (its scale taken per subject, a mask made from the series)."""
    pytest.importorskip("torch")
    from mrfengine.cli.demo import _unet_part
    from mrfengine.demo import SCANNER_GAIN, run_unet_demo
    from mrfengine.io import Cohort, load_nifti
    from mrfengine.masking import mean_image
    from mrfengine.nn import Normalisation, get_config, save_model
    from mrfengine.nn.normalisation import input_level

    cfg = get_config("MSE-5").with_architecture(depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    norm = Normalisation(tuple(rng.uniform(0.05, 0.2, 35)), tuple(rng.uniform(0.05, 0.1, 35)))  # absolute scale
    model = tmp_path / "model" / "mse5.pt"
    save_model(cfg.build(seed=3), model, config=cfg, normalisation=norm, sequence=hermann2021(1, n_slices=12))
    cohort = tmp_path / "demo" / "tiny.zarr"
    _unet_part(cohort, 0, model=str(model), preset="tiny")
    out = capsys.readouterr().out
    for words in ("as a scanner would (x1000, int16 NIfTI with scl_slope", "`mrfengine predict`", "gain 1000",
                  "input scale subject", "brain mask made from the series: Dice", "against ground truth: T1 deviation",
                  "lesion Dice", "NAWM Dice", "GM Dice"):
        assert words in out, words
    # the report, read again: the series as stored, and what predict measured in it
    rep = run_unet_demo(tmp_path / "demo" / "unet-subject.zarr", model=str(model), preset="tiny")
    sub = Cohort.open(tmp_path / "demo" / "unet-subject.zarr")["sub-01"]
    img = nib.load(rep.input_path)
    assert img.get_data_dtype() == np.int16 and img.dataobj.slope == pytest.approx(rep.scl_slope)
    assert rep.scl_slope not in (0.0, 1.0) and rep.scl_inter == 0.0 and rep.gain == SCANNER_GAIN
    stored, _, _ = load_nifti(rep.input_path, ndim=4, magnitude=True)
    truth = np.asarray(sub.mrf[...]).transpose(3, 2, 1, 0) * SCANNER_GAIN
    assert np.abs(stored - truth).max() <= 0.51 * rep.scl_slope  # int16 rounding (and float32), nothing else
    assert float(np.median(stored.mean(axis=3)[np.asarray(sub.brain_mask[:]).transpose(2, 1, 0) > 0])) > 100
    maps = Path(rep.output_dir) / "sub-01" / "anat"  # predict's derivative dataset
    made = np.asarray(nib.load(str(maps / "sub-01_label-brain_desc-unet_mask.nii.gz")).dataobj) > 0
    level = input_level(mean_image(stored.transpose(2, 3, 1, 0), channel_axis=1), made.transpose(2, 1, 0))
    assert rep.input_scale == "subject"
    assert rep.input_level_ratio == pytest.approx(level / norm.reference_level, rel=1e-4)
    assert 0.7 < rep.mask_dice <= 1.0
    for suffix in ("desc-unet_T1map", "desc-unet_T2starmap", "label-NAWM_desc-unet_probseg",
                   "label-GM_desc-unet_probseg", "label-lesion_desc-unet_probseg"):
        arr = np.asarray(nib.load(str(maps / f"sub-01_{suffix}.nii.gz")).dataobj)
        assert (arr[~made] == 0).all() and np.isfinite(arr).all()  # the outside rule
    for value in (rep.t1_reldev, rep.t2star_reldev, rep.nawm_dice_volume, rep.gm_dice_volume):
        assert np.isfinite(value)
    # the figures are mrfengine evaluate's (metrics_against_truth): same keys, the old names still read
    assert (rep.nawm_dice, rep.gm_dice) == (rep.nawm_dice_volume, rep.gm_dice_volume)
    assert rep.summary["T1_relative_deviation"] == rep.t1_reldev
    assert rep.summary.get("NAWM_dice_slice_mean") == (None if np.isnan(rep.nawm_dice_slice_mean)
                                                       else rep.nawm_dice_slice_mean)
    assert "T1_relative_deviation_WM_core" in rep.summary


def test_demo_keeps_the_cohort_where_asked(tmp_path, capsys):
    path = tmp_path / "demo.zarr"
    assert main(["demo", "--slices", "1", "--voxels", "16", "--no-unet", "--cohort", str(path)]) == 0
    from mrfengine.io import validate_cohort

    from mrfengine.pipeline import derived_complete

    assert validate_cohort(path).ok
    out = capsys.readouterr().out
    assert f"maps: {path}/subjects/<subject>/derived/denoise-match/" in out
    assert all(derived_complete(path, f"sub-0{i}", "denoise-match") for i in range(1, 7))


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "cpp" in out and "cupy" in out


def test_dictionary_build_and_inspect(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["--step", "0.2", "--cache-dir", str(cache)]
    assert main(["dictionary", "build", "--slots", "0,3", "-o", str(tmp_path / "out"), *args]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slot-000.npz", "slot-003.npz"]
    assert len(list(cache.glob("*.npz"))) == 2
    assert main(["dictionary", "inspect", "--slot", "3", *args]) == 0
    out = capsys.readouterr().out
    assert "SVD energy" in out and "inversions    15" in out
    assert main(["dictionary", "build", "--slots", "60", *args]) == 2
    assert main(["dictionary", "clear-cache", "--cache-dir", str(cache)]) == 0
    assert not cache.exists()


@pytest.fixture
def mrf_case(tmp_path):
    """A 6x5x4 volume of a 4-slice site-1 sequence with known parameters."""
    seq = hermann2021(1, n_slices=4)
    seq_path = save_sequence(seq, tmp_path / "seq.json")
    rng = np.random.default_rng(0)
    shape = (6, 5, 4)
    t1 = rng.uniform(700, 1500, shape)
    t2 = rng.uniform(30, 90, shape)
    b1 = rng.uniform(0.8, 1.2, shape)
    data = np.zeros(shape + (35,), np.float32)
    for z in range(4):
        data[:, :, z] = fingerprints(seq, seq.slot_of_slice(z), t1[:, :, z].ravel(), t2[:, :, z].ravel(),
                                     b1[:, :, z].ravel(), 0.8).reshape(6, 5, 35)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    path = tmp_path / "sub-01_mrf.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return dict(seq=seq_path, path=path, affine=affine, t1=t1, t2=t2, data=data, shape=shape, tmp=tmp_path)


def test_match_writes_bids_maps_with_the_input_affine(mrf_case, capsys):
    out = mrf_case["tmp"] / "maps"
    assert main(["match", str(mrf_case["path"]), "-o", str(out), "--sequence", str(mrf_case["seq"])]) == 0
    anat = out / "sub-01" / "anat"
    t1 = nib.load(anat / "sub-01_desc-match_T1map.nii.gz")
    np.testing.assert_allclose(t1.affine, mrf_case["affine"])
    src = nib.load(mrf_case["path"]).header
    assert t1.header["sform_code"] == src["sform_code"] and t1.header["qform_code"] in (src["qform_code"], 1)
    assert t1.header.get_xyzt_units()[0] == "mm"
    # BIDS stores seconds.  Off-grid B1 (0.1 steps) trades against T1, so
    # single voxels can be off by more than the 5% T1 step; the median is not.
    rel = np.abs(t1.get_fdata() * 1000 / mrf_case["t1"] - 1)
    assert np.median(rel) < 0.03 and rel.max() < 0.25
    side = json.loads((anat / "sub-01_desc-match_T1map.json").read_text())
    assert side["Units"] == "s" and side["Provenance"]["MatchingBackend"] in ("cpp", "numpy")
    for name in ("anat/sub-01_desc-match_T2starmap", "fmap/sub-01_desc-match_TB1map", "anat/sub-01_desc-match_M0map",
                 "anat/sub-01_desc-match_correlation"):
        assert (out / "sub-01" / f"{name}.nii.gz").is_file()
    t2 = nib.load(anat / "sub-01_desc-match_T2starmap.nii.gz").get_fdata() * 1000
    assert np.median(np.abs(t2 / mrf_case["t2"] - 1)) < 0.03


def test_match_masks_bad_voxels_and_honours_the_mask(mrf_case):
    data = mrf_case["data"].copy()
    data[0, 0, 0, 3] = np.nan
    data[1, 1, 1] = 0
    path = mrf_case["tmp"] / "sub-02_mrf.nii"
    nib.save(nib.Nifti1Image(data, mrf_case["affine"]), path)
    mask = np.ones(mrf_case["shape"], np.uint8)
    mask[5] = 0
    mpath = mrf_case["tmp"] / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, mrf_case["affine"]), mpath)
    out = mrf_case["tmp"] / "maps2"
    code = main(["match", str(path), "-o", str(out), "--sequence", str(mrf_case["seq"]), "--mask", str(mpath),
                 "--backend", "numpy"])
    assert code == 0
    t1 = nib.load(out / "sub-02" / "anat" / "sub-02_desc-match_T1map.nii.gz").get_fdata()
    assert t1[0, 0, 0] == 0 and t1[1, 1, 1] == 0 and np.all(t1[5] == 0)
    assert np.all(t1[2:5] > 0)


def test_match_bad_inputs_fail_with_the_file_named(mrf_case, capsys):
    tmp = mrf_case["tmp"]
    seq = ["--sequence", str(mrf_case["seq"])]
    three_d = tmp / "three.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), three_d)
    assert main(["match", str(three_d), "-o", str(tmp / "o"), *seq]) == 1
    assert "three.nii.gz: expected a 4D image" in capsys.readouterr().err
    frames = tmp / "frames.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 34), np.float32), np.eye(4)), frames)
    assert main(["match", str(frames), "-o", str(tmp / "o"), *seq]) == 1
    assert "frames.nii.gz: expected 35 frames" in capsys.readouterr().err
    slices = tmp / "slices.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 5, 35), np.float32), np.eye(4)), slices)
    assert main(["match", str(slices), "-o", str(tmp / "o"), *seq]) == 1
    assert "5 slices" in capsys.readouterr().err
    raw = mrf_case["path"].read_bytes()
    cut = tmp / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    assert main(["match", str(cut), "-o", str(tmp / "o"), *seq]) == 1
    assert "cut.nii.gz" in capsys.readouterr().err
    mask = tmp / "badmask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 3), np.uint8), mrf_case["affine"]), mask)
    assert main(["match", str(mrf_case["path"]), "-o", str(tmp / "o"), "--mask", str(mask), *seq]) == 1
    assert "badmask.nii.gz: mask shape" in capsys.readouterr().err
    assert main(["match", str(tmp / "missing.nii.gz"), "-o", str(tmp / "o"), *seq]) == 1
    assert "missing.nii.gz: file not found" in capsys.readouterr().err
    assert not (tmp / "o").exists() or not list((tmp / "o").glob("*.nii.gz"))
