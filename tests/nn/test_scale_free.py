"""Scale-free input (issue 18): the network's maps do not depend on the series' global gain."""

import json

import nibabel as nib
import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.errors import ValidationError
from mrfengine.masking import brain_mask_from_mrf, mean_image
from mrfengine.nn import Normalisation, input_scaling, load_model, read_card, run_network, save_model
from mrfengine.nn.default import default_model_path
from mrfengine.nn.normalisation import LEVEL_STATISTIC, input_level

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])



def _t1_sidecar(out, sid):
    """predict's T1 sidecar, its Provenance (the run's record) merged in."""
    side = json.loads((out / sid / "anat" / f"{sid}_desc-unet_T1map.json").read_text())
    return {**side, **side["Provenance"]}

def _series(seed=0, shape=(40, 36, 4), frames=35):
    """(X, Y, Z, F): a bright ellipse of varied fingerprints (the 'brain') in a dim, noisy background."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.7) ** 2 < 1
    atoms = rng.uniform(0.15, 0.5, size=(6, frames))
    label = rng.integers(0, 6, size=shape)
    data = np.abs(rng.normal(0, 0.01, size=shape + (frames,)))
    data[brain] = atoms[label[brain]] + rng.normal(0, 0.01, size=(int(brain.sum()), shape[2], frames))
    return np.abs(data).astype(np.float32), np.repeat(brain[:, :, None], shape[2], axis=2)


def _model(tmp_path, tiny_config, tiny_sequence, level=0.3):
    cfg = tiny_config()
    rng = np.random.default_rng(0)
    norm = Normalisation(tuple(rng.uniform(0.25, 0.35, 35)), tuple(rng.uniform(0.05, 0.1, 35)), level)
    path = tmp_path / "model" / ("scalefree.pt" if level else "legacy.pt")
    save_model(cfg.build(seed=1), path, config=cfg, normalisation=norm, sequence=tiny_sequence)
    return path


def _save(path, data, *, int16=False):
    img = nib.Nifti1Image(data, AFFINE)
    if int16:
        img.set_data_dtype(np.int16)  # nibabel picks scl_slope / scl_inter
    nib.save(img, str(path))
    return path


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def test_maps_do_not_depend_on_the_input_scale_or_int16_storage(tmp_path, tiny_config, tiny_sequence, capsys):
    model = _model(tmp_path, tiny_config, tiny_sequence)
    data, _ = _series()
    cases = {"x1": (1.0, False), "x1e-3": (1e-3, False), "x1e4": (1e4, False), "int16": (250.0, True)}
    maps = {}
    for k, (name, (scale, int16)) in enumerate(cases.items()):
        sid = f"sub-0{k + 1}"
        src = _save(tmp_path / f"{sid}_mrf.nii.gz", data * np.float32(scale), int16=int16)
        if int16:
            hdr = nib.load(str(src)).header
            assert hdr.get_data_dtype() == np.int16 and float(hdr["scl_slope"]) not in (0.0, 1.0)
        out = tmp_path / name
        assert main(["predict", str(src), "-o", str(out), "--model", str(model)]) == 0, capsys.readouterr().err
        maps[name] = {p.name.split("_", 1)[1]: np.asarray(nib.load(str(p)).dataobj)
                      for p in out.glob("*/anat/*.nii.gz")}
        side = _t1_sidecar(out, sid)
        assert side["InputLevelMask"] == "from the series"
        assert side["BrainMask"] == f"bids::{sid}/anat/{sid}_label-brain_desc-unet_mask.nii.gz"
        assert side["OutsideBrainValue"] == 0
        np.testing.assert_allclose(side["InputGain"] * side["InputLevel"], 0.3, rtol=1e-6)
        assert side["InputOutsideTraining"] is False
    assert len(maps["x1"]) == 6  # the five maps and the brain mask made from the series (the outside rule)
    for name in ("x1e-3", "x1e4", "int16"):
        for suffix, ref in maps["x1"].items():
            assert _rel_l2(maps[name][suffix], ref) < 1e-3, (name, suffix, _rel_l2(maps[name][suffix], ref))


def test_a_card_without_subject_level_takes_the_absolute_scale_unless_asked(tmp_path, tiny_config, tiny_sequence,
                                                                             capsys):
    path = _model(tmp_path, tiny_config, tiny_sequence, level=None)
    legacy = load_model(path)
    norm = legacy.card.normalisation
    assert not norm.scale_free and norm.reference_level == pytest.approx(np.mean(norm.mean))
    data, _ = _series()
    vol = data.transpose(2, 3, 1, 0)
    s = input_scaling(vol, legacy)
    assert s.gain == 1.0 and not s.rescaled and s.mask_source == "from the series"
    assert s.level_ratio == pytest.approx(s.level / norm.reference_level)
    a = run_network(vol, legacy).maps["T1"]
    b = run_network(vol * np.float32(10), legacy).maps["T1"]
    assert _rel_l2(b, a) > 1e-2  # the old behaviour, kept for old cards: not scale-free
    # ... unless the series is rescaled to the training level: then any gain cancels
    a = run_network(vol, legacy, input_scale="subject").maps["T1"]
    b = run_network(vol * np.float32(1e4), legacy, input_scale="subject").maps["T1"]
    assert _rel_l2(b, a) < 1e-5
    # a scanner-scale series through an absolute card is flagged, and the flag says what to do
    src = _save(tmp_path / "sub-01_mrf.nii.gz", data * np.float32(300))
    assert main(["predict", str(src), "-o", str(tmp_path / "abs"), "--model", str(path)]) == 0
    err = capsys.readouterr().err
    assert "outside what network" in err and "--input-scale subject" in err
    side = _t1_sidecar(tmp_path / "abs", "sub-01")
    assert side["InputOutsideTraining"] is True and side["InputScale"] == "absolute"
    assert side["InputLevelRatio"] > 100
    assert main(["predict", str(src), "-o", str(tmp_path / "rel"), "--model", str(path),
                 "--input-scale", "subject"]) == 0
    side = _t1_sidecar(tmp_path / "rel", "sub-01")
    assert side["InputScale"] == "subject" and side["InputOutsideTraining"] is False


def test_the_level_is_measured_in_the_given_or_made_mask(tmp_path, tiny_config, tiny_sequence):
    model = load_model(_model(tmp_path, tiny_config, tiny_sequence))
    data, brain = _series()
    vol = data.transpose(2, 3, 1, 0)  # (Z, C, Y, X)
    brain_zyx = brain.transpose(2, 1, 0)
    made = brain_mask_from_mrf(vol, channel_axis=1)
    dice = 2 * (made & brain_zyx).sum() / (made.sum() + brain_zyx.sum())
    assert dice > 0.9, dice
    given = input_scaling(vol, model, mask=brain_zyx)
    auto = input_scaling(vol, model)
    assert given.mask_source == "given" and auto.mask_source == "from the series"
    assert given.level == pytest.approx(input_level(mean_image(vol, channel_axis=1), brain_zyx))
    assert auto.level == pytest.approx(given.level, rel=0.02)
    with pytest.raises(ValidationError, match="empty"):
        input_scaling(vol, model, mask=np.zeros_like(brain_zyx))
    with pytest.raises(ValidationError, match="shape"):
        input_scaling(vol, model, mask=brain_zyx[:, :-1])


def test_outputs_are_clipped_to_their_physical_ranges(tmp_path, tiny_config, tiny_sequence):
    model = load_model(_model(tmp_path, tiny_config, tiny_sequence))
    data, _ = _series()
    maps = run_network(data.transpose(2, 3, 1, 0) * np.float32(50), model).maps
    for name in ("NAWM", "GM", "lesion"):
        assert maps[name].min() >= 0 and maps[name].max() <= 1
    assert maps["T1"].min() >= 0 and maps["T1"].max() <= 5000
    assert maps["T2star"].min() >= 0 and maps["T2star"].max() <= 3000


def test_an_input_unlike_the_training_data_is_flagged(tmp_path, tiny_config, tiny_sequence, capsys):
    model = _model(tmp_path, tiny_config, tiny_sequence)
    data, _ = _series()
    odd = data.copy()
    odd[..., :10] *= 8  # another contrast in the first frames: no global gain explains it
    src = _save(tmp_path / "sub-01_mrf.nii.gz", odd)
    assert main(["predict", str(src), "-o", str(tmp_path / "odd"), "--model", str(model)]) == 0
    err = capsys.readouterr().err
    assert "outside what network" in err and "check the sequence" in err
    side = _t1_sidecar(tmp_path / "odd", "sub-01")
    assert side["InputOutsideTraining"] is True and side["InputShift"] > 2


def test_normalisation_round_trips_its_subject_level():
    n = Normalisation((0.1, 0.2), (0.05, 0.05), 0.3)
    d = n.to_dict()
    assert d["subject_level"] == {"statistic": LEVEL_STATISTIC, "value": 0.3}
    assert Normalisation.from_dict(d) == n
    assert n.gain(0.6) == pytest.approx(0.5)
    old = {"kind": "channel_zscore", "mean": [0.1, 0.2], "std": [0.05, 0.05]}
    assert Normalisation.from_dict(old).subject_level is None
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValidationError):
            Normalisation((0.1,), (0.1,), bad)
    with pytest.raises(ValidationError, match="statistic"):
        Normalisation.from_dict({**old, "subject_level": {"statistic": "mean", "value": 0.3}})
    with pytest.raises(ValidationError, match="positive"):
        n.gain(0.0)


def test_the_shipped_model_is_scale_free():
    """The shipped MSE-5 (phase 8, mrfengine/models/README.md) rescales every series to its
    training level (the card's subject_level); the level is the simulator's brain signal."""
    norm = read_card(default_model_path()).normalisation
    assert norm.scale_free and 0.25 < norm.subject_level < 0.35


def test_the_shipped_models_maps_do_not_depend_on_the_input_scale(tmp_path, capsys):
    """The acceptance case with the default network and no option: x1, x1e-3, x1e4 and int16."""
    data, _ = _series(seed=3, shape=(32, 32, 60))  # the card's sequence has 60 slices
    cases = {"x1": (1.0, False), "x1e-3": (1e-3, False), "x1e4": (1e4, False), "int16": (300.0, True)}
    maps = {}
    for name, (scale, int16) in cases.items():
        src = _save(tmp_path / f"sub-01_{name}.nii.gz", data * np.float32(scale), int16=int16)
        out = tmp_path / name
        assert main(["predict", str(src), "-o", str(out), "--prefix", "sub-01"]) == 0, capsys.readouterr().err
        maps[name] = {p.name: np.asarray(nib.load(str(p)).dataobj, dtype=np.float64)
                      for p in out.glob("*/anat/*.nii.gz")}
        assert _t1_sidecar(out, "sub-01")["InputScale"] == "subject"
    for name in ("x1e-3", "x1e4", "int16"):
        for file, ref in maps["x1"].items():
            assert _rel_l2(maps[name][file], ref) < 1e-3, (name, file, _rel_l2(maps[name][file], ref))


# ----------------------------------------------------------------- training free of the input's scale
@pytest.fixture(scope="module")
def scaled_cohort(tmp_path_factory):
    """The tiny cohort with one training subject's MRF series stored 1000 times brighter."""
    import shutil

    import zarr

    from _tiny_cohort import tiny_cohort_path
    from mrfengine.io import Cohort

    src = tiny_cohort_path(tmp_path_factory)
    dst = tmp_path_factory.mktemp("scaled") / "tiny.zarr"
    shutil.copytree(src, dst)
    sid = Cohort.open(dst).subjects_in("train")[0]
    arr = zarr.open_group(str(dst / "subjects" / sid), mode="r+")["mrf"]
    arr[...] = np.asarray(arr[...]) * np.float32(1000)
    return src, dst, sid


def test_normalisation_fitted_free_of_the_scale(scaled_cohort, tiny_config):
    from mrfengine.io import Cohort
    from mrfengine.nn.data import fit_cohort_normalisation, subject_level

    src, dst, sid = scaled_cohort
    cfg = tiny_config()
    plain, scaled = Cohort.open(src), Cohort.open(dst)
    a = fit_cohort_normalisation(plain, cfg, scale_free=True)
    b = fit_cohort_normalisation(scaled, cfg, scale_free=True)
    levels = [subject_level(plain[s]) for s in plain.subjects_in("train")]
    assert a.subject_level == pytest.approx(float(np.median(levels)))
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-5)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-5)
    absolute = fit_cohort_normalisation(scaled, cfg)
    assert absolute.subject_level is None and max(absolute.std) > 10 * max(a.std)  # one bright subject dominates


def test_patches_are_free_of_the_scale(scaled_cohort, tiny_config):
    from mrfengine.io import Cohort
    from mrfengine.nn.data import PatchSampler, fit_cohort_normalisation

    src, dst, sid = scaled_cohort
    cfg = tiny_config()
    norm = fit_cohort_normalisation(Cohort.open(src), cfg, scale_free=True)
    a = PatchSampler(Cohort.open(src), cfg, norm, split="train", patch_size=32)
    b = PatchSampler(Cohort.open(dst), cfg, norm, split="train", patch_size=32)
    i = next(k for k, ref in enumerate(a.slices) if ref.subject == sid)
    np.testing.assert_allclose(b.normalised_input(i), a.normalised_input(i), rtol=1e-4, atol=1e-4)


def test_training_writes_a_scale_free_card_and_converts_an_absolute_start(scaled_cohort, tmp_path):
    from mrfengine.nn.train import load_settings, train

    src, _, _ = scaled_cohort
    toml = tmp_path / "run.toml"
    base = (f'cohort = "{src}"\nnetwork = "MSE-5"\nepochs = 1\nbatch_size = 32\npatches_per_slice = 1\n'
            "patch_size = 32\ndepth = 2\nbase_filters = 4\nseed = 5\nthreads = 1\n")
    toml.write_text(base + 'output_dir = "abs"\ninput_scale = "absolute"\n')
    absolute = train(load_settings(toml))
    assert not read_card(absolute.model_path).normalisation.scale_free
    toml.write_text(base + f'output_dir = "warm"\nlearning_rate = 1e-12\ninit_model = "{absolute.model_path}"\n')
    warm = read_card(train(load_settings(toml)).model_path).normalisation
    start = read_card(absolute.model_path).normalisation
    assert warm.scale_free and warm.subject_level == pytest.approx(start.reference_level)
    assert warm.mean == start.mean and warm.std == start.std
    toml.write_text(base + 'output_dir = "new"\n')
    assert read_card(train(load_settings(toml)).model_path).normalisation.scale_free  # the default
    with pytest.raises(ValidationError, match="input_scale"):
        toml.write_text(base + 'output_dir = "bad"\ninput_scale = "gain"\n')
        load_settings(toml)
