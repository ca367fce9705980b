"""Monte-Carlo dropout uncertainty and the physics-consistency map: the library,
``mrfengine predict`` and the batch pipeline's ``unet`` stage."""

import dataclasses
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mrfengine.cli import main
from mrfengine.dictionary import fingerprints
from mrfengine.errors import ValidationError
from mrfengine.nn import load_model, pad_amounts, run_network, save_model
from mrfengine.nn.consistency import physics_consistency
from mrfengine.nn.targets import to_physical_units
from mrfengine.nn.uncertainty import MCDropout, RunningMoments, dropout_modules
from mrfengine.pipeline.stages import STAGES, Pipeline

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])
LIMITS = {"T1": (0, 5000), "T2star": (0, 3000), "NAWM": (0, 1), "GM": (0, 1), "lesion": (0, 1)}


def _volume(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.3, size=shape).astype(np.float32)


def test_dropout_hook_drops_and_rescales_like_training():
    net = nn.Sequential(nn.Dropout(0.5))
    net.eval()
    x = torch.ones(2, 64, 32, 32)
    with MCDropout(net, seed=3) as mc:
        assert torch.equal(net(x), x)  # outside a pass: eval behaviour
        with mc.sample(0, [0, 1]):
            y = net(x)
        with mc.sample(0, [0, 1]):
            again = net(x)
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}
    assert abs(float((y == 0).float().mean()) - 0.5) < 0.01
    assert torch.equal(y, again) and not torch.equal(y[0], y[1])
    assert not net._forward_hooks[0] if net._forward_hooks else True
    assert not net[0]._forward_hooks  # hooks removed on exit


def test_uncertainty_is_reproducible_batch_independent_and_leaves_maps_and_rng_alone(saved_model):
    model = load_model(saved_model[0])
    vol = _volume((3, 35, 16, 12))
    plain = run_network(vol, model, batch_size=1, input_scale="absolute")
    state = torch.get_rng_state()
    a = run_network(vol, model, batch_size=1, mc_samples=4, mc_seed=7, input_scale="absolute")
    assert torch.equal(torch.get_rng_state(), state)
    b = run_network(vol, model, batch_size=3, mc_samples=4, mc_seed=7, input_scale="absolute")
    c = run_network(vol, model, batch_size=3, mc_samples=4, mc_seed=8, input_scale="absolute")
    again = run_network(vol, model, batch_size=1, mc_samples=4, mc_seed=7, input_scale="absolute")
    assert plain.uncertainty is None and a.mc_samples == 4 and a.mc_seed == 7
    for name in plain.maps:
        np.testing.assert_array_equal(a.maps[name], plain.maps[name])
        # another batch size: the same masks, the convolutions' rounding only
        np.testing.assert_allclose(a.uncertainty[name], b.uncertainty[name], atol=1e-4 * a.uncertainty[name].max())
        np.testing.assert_array_equal(a.uncertainty[name], again.uncertainty[name])
        assert a.uncertainty[name].shape == (3, 16, 12) and a.uncertainty[name].dtype == np.float32
    assert all(np.all(a.uncertainty[n] >= 0) and a.uncertainty[n].max() > 0 for n in plain.maps)
    assert any(not np.allclose(a.uncertainty[n], c.uncertainty[n]) for n in plain.maps)
    assert max(float(a.uncertainty[n].max()) for n in ("NAWM", "GM", "lesion")) <= 0.5  # clipped to [0, 1]


def test_no_dropout_gives_zero_uncertainty(tmp_path, tiny_config, tiny_normalisation, tiny_sequence):
    cfg = dataclasses.replace(tiny_config(), dropout=0.0)
    path = tmp_path / "nodrop.pt"
    save_model(cfg.build(seed=1), path, config=cfg, normalisation=tiny_normalisation(35), sequence=tiny_sequence)
    model = load_model(path)
    result = run_network(_volume((2, 35, 16, 16)), model, mc_samples=3, input_scale="absolute")
    assert all(not np.any(v) for v in result.uncertainty.values())


def _by_hand(model, vol, mc, n_passes):
    """Each stochastic pass computed directly (normalise, pad, run, units, clip, crop); their SD by numpy."""
    card = model.card
    mean = np.asarray(card.normalisation.mean, np.float32)[None, :, None, None]
    std = np.asarray(card.normalisation.std, np.float32)[None, :, None, None]
    z, _, ny, nx = vol.shape
    (t, b), (le, r) = pad_amounts(ny, 4), pad_amounts(nx, 4)
    x = torch.from_numpy((np.pad(vol, ((0, 0), (0, 0), (t, b), (le, r))) - mean) / std)
    passes = []
    with torch.no_grad():
        for s in range(n_passes):
            with mc.sample(s, range(z)):
                y = to_physical_units(model.module(x), card.config).numpy()[:, :, t:t + ny, le:le + nx]
            passes.append(np.stack([np.clip(y[:, k], *LIMITS[n]) for k, n in enumerate(card.config.output_names)]))
    return np.std(np.stack(passes), axis=0)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_uncertainty_matches_a_brute_force_loop(saved_model, tta):
    model = load_model(saved_model[0])
    vol = _volume((3, 35, 10, 9), seed=2)
    got = run_network(vol, model, batch_size=2, mc_samples=5, mc_seed=11, channels_last=False, tta=tta,
                      input_scale="absolute")
    if tta == "none":
        with MCDropout(model.module, seed=11) as mc:
            want = _by_hand(model, vol, mc, 5)
        for k, name in enumerate(model.card.config.output_names):
            np.testing.assert_allclose(got.uncertainty[name], want[k], rtol=1e-4,
                                       atol=1e-5 * max(1.0, float(want[k].max())))
    else:  # channels-last and the flip still give a finite, positive spread of the same size
        plain = run_network(vol, model, batch_size=3, mc_samples=5, mc_seed=11, tta=tta, input_scale="absolute")
        for name in got.uncertainty:
            np.testing.assert_allclose(plain.uncertainty[name], got.uncertainty[name], rtol=1e-4,
                                       atol=1e-5 * max(1.0, float(got.uncertainty[name].max())))


def test_running_moments_equal_numpy():
    rng = np.random.default_rng(0)
    xs = rng.normal(3.0, 2.0, size=(9, 4, 5))
    m = RunningMoments()
    for x in xs:
        m.update(x)
    np.testing.assert_allclose(m.std(), xs.std(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.mean, xs.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("bad", [1, -2, 2.5, True, "4"])
def test_bad_sample_counts_are_refused(saved_model, bad):
    with pytest.raises(ValidationError, match="mc_samples"):
        run_network(_volume((1, 35, 8, 8)), load_model(saved_model[0]), mc_samples=bad)


def test_torchscript_modules_are_refused():
    with pytest.raises(ValidationError, match="TorchScript"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(nn.Sequential(nn.Dropout(0.5)))
        dropout_modules(scripted)


# --------------------------------------------------------------------------- physics consistency
def _truth(sequence, shape, seed=0, b1=1.0):
    """A noise-free series (Z, C, Y, X) simulated slice by slice at its slot, and its T1/T2* maps."""
    rng = np.random.default_rng(seed)
    t1 = rng.uniform(400, 4000, size=shape)
    t2 = rng.uniform(20, 1500, size=shape)
    series = np.empty((shape[0], sequence.n_measurements) + shape[1:], np.float32)
    for z in range(shape[0]):
        f = fingerprints(sequence, sequence.slot_of_slice(z), t1[z].ravel(), t2[z].ravel(), b1, m0=2.5)
        series[z] = f.T.reshape((-1,) + shape[1:])
    return series, t1.astype(np.float32), t2.astype(np.float32)


@pytest.mark.parametrize("b1", [1.0, 0.85])
def test_consistency_is_one_at_the_truth_and_lower_for_a_wrong_t1(tiny_sequence, b1):
    series, t1, t2 = _truth(tiny_sequence, (4, 6, 5), b1=b1)
    mask = np.ones(t1.shape, bool)
    mask[:, 0] = False
    c = physics_consistency(series, t1, t2, tiny_sequence, mask=mask)
    assert c.dtype == np.float32 and c.shape == t1.shape
    np.testing.assert_allclose(c[mask], 1.0, atol=1e-4)
    assert np.all(c[~mask] == 0)
    wrong = physics_consistency(series, t1 * 1.5, t2, tiny_sequence, mask=mask)
    assert np.all(wrong[mask] < c[mask]) and np.median(1 - wrong[mask]) > 10 * np.median(1 - c[mask]) + 1e-5
    # (C, Z, Y, X) layout, NaN outside, and a slice's own slot matters (another slot's series is inconsistent)
    np.testing.assert_array_equal(physics_consistency(series.transpose(1, 0, 2, 3), t1, t2, tiny_sequence, mask=mask,
                                                      channel_axis=0), c)
    assert np.isnan(physics_consistency(series, t1, t2, tiny_sequence, mask=mask, outside=np.nan)[~mask]).all()
    swapped = physics_consistency(series[::-1].copy(), t1[::-1].copy(), t2[::-1].copy(), tiny_sequence, mask=mask)
    assert np.median(swapped[mask]) < np.median(c[mask])


def test_consistency_refuses_mismatched_inputs(tiny_sequence):
    series, t1, t2 = _truth(tiny_sequence, (4, 3, 3))
    with pytest.raises(ValidationError, match="slice shape"):
        physics_consistency(series, t1[:3], t2, tiny_sequence)
    with pytest.raises(ValidationError, match="frames"):
        physics_consistency(series[:, :30], t1, t2, tiny_sequence)
    with pytest.raises(ValidationError, match="do not fit"):
        physics_consistency(series, t1, t2, tiny_sequence, first_slice=2)


# --------------------------------------------------------------------------- predict
def _nifti(tmp_path, series_zcyx):
    data = series_zcyx.transpose(3, 2, 0, 1)  # (Z, C, Y, X) -> (X, Y, Z, C)
    path = tmp_path / "sub-01_mrf.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), AFFINE), str(path))
    return path


def test_predict_writes_uncertainty_and_consistency_with_sidecars(saved_model, tmp_path, tiny_sequence):
    model_path = saved_model[0]
    series = _volume((4, 35, 12, 10), seed=4)
    mrf = _nifti(tmp_path, series)
    mask = np.zeros((10, 12, 4), np.uint8)
    mask[2:8, 3:10] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), str(tmp_path / "mask.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", str(mrf), "-o", str(out), "--model", str(model_path), "--mc-samples", "3",
                 "--mc-seed", "5", "--consistency", "--mask", str(tmp_path / "mask.nii.gz"),
                 "--input-scale", "absolute"]) == 0
    want = run_network(series, load_model(model_path), mc_samples=3, mc_seed=5, input_scale="absolute",
                       mask=mask.transpose(2, 1, 0).astype(bool))
    inside = mask.astype(bool)
    anat = out / "sub-01" / "anat"
    for suffix, name, scale in [("desc-unet_T1mapstd", "T1", 1e-3), ("desc-unet_T2starmapstd", "T2star", 1e-3),
                                ("label-lesion_desc-unet_probsegstd", "lesion", 1.0),
                                ("label-NAWM_desc-unet_probsegstd", "NAWM", 1.0)]:
        arr = np.asarray(nib.load(str(anat / f"sub-01_{suffix}.nii.gz")).dataobj)
        np.testing.assert_allclose(arr[inside], (want.uncertainty[name].transpose(2, 1, 0) * scale)[inside],
                                   rtol=1e-5, atol=1e-9)
        assert np.all(arr[~inside] == 0)
        side = json.loads((anat / f"sub-01_{suffix}.json").read_text())
        assert side["Units"] == ("s" if scale != 1 else "1")
        side = side["Provenance"]
        assert side["MonteCarloSamples"] == 3 and side["MonteCarloSeed"] == 5
        assert side["DropoutProbabilities"] == [0.5, 0.5] and "deterministic" in side["MapsFrom"]
    cons = np.asarray(nib.load(str(anat / "sub-01_desc-unet_consistency.nii.gz")).dataobj)
    assert np.all(cons[~inside] == 0) and np.all((cons[inside] > 0) & (cons[inside] <= 1))
    side = json.loads((anat / "sub-01_desc-unet_consistency.json").read_text())
    prov = side["Provenance"]
    assert side["Units"] == "1" and prov["B1Grid"][0] == 0.6 and prov["SequenceDigest"] == tiny_sequence.digest()
    # the maps themselves are those of a run without the options
    plain = tmp_path / "plain"
    assert main(["predict", str(mrf), "-o", str(plain), "--model", str(model_path), "--input-scale", "absolute",
                 "--mask", str(tmp_path / "mask.nii.gz")]) == 0
    assert len(list(plain.glob("sub-01/anat/*.nii.gz"))) == 5
    for f in plain.glob("sub-01/anat/*.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(f)).dataobj),
                                      np.asarray(nib.load(str(anat / f.name)).dataobj))
    assert not list(plain.glob("**/*std.*")) and not list(plain.glob("**/*consistency*"))


@pytest.mark.parametrize("args, match", [(["--mc-samples", "1"], "mc-samples"), (["--mc-samples", "-3"], "mc-samples"),
                                         (["--mc-seed", "-1"], "mc-seed")])
def test_predict_refuses_bad_values(saved_model, tmp_path, capsys, args, match):
    mrf = _nifti(tmp_path, _volume((4, 35, 8, 8)))
    assert main(["predict", str(mrf), "-o", str(tmp_path / "o"), "--model", str(saved_model[0]), *args]) != 0
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_predict_refuses_to_replace_an_uncertainty_map(saved_model, tmp_path, capsys):
    mrf = _nifti(tmp_path, _volume((4, 35, 8, 8)))
    out = tmp_path / "o"
    out.mkdir()
    (out / "sub-01" / "anat").mkdir(parents=True)
    (out / "sub-01" / "anat" / "sub-01_label-lesion_desc-unet_probsegstd.nii.gz").write_bytes(b"x")
    assert main(["predict", str(mrf), "-o", str(out), "--model", str(saved_model[0]), "--mc-samples", "2"]) != 0
    assert "probsegstd" in capsys.readouterr().err


# --------------------------------------------------------------------------- unet stage
def test_stage_options_round_trip_and_are_checked():
    p = Pipeline.from_dict({"stages": ["unet"], "unet": {"mc_samples": 8, "mc_seed": 3, "consistency": True}})
    assert p.options["unet"]["mc_samples"] == 8 and p.options["unet"]["consistency"] is True
    stored = p.to_dict()  # what the derived group's provenance records, read back as a TOML table
    back = Pipeline.from_dict({"name": stored["name"], "stages": stored["stages"], **stored["options"]})
    assert back == p and json.loads(json.dumps(stored)) == stored
    assert Pipeline.from_stages("unet").options["unet"]["mc_samples"] == 0
    for bad in ({"mc_samples": 1}, {"mc_samples": 2.0}, {"mc_seed": -1}, {"consistency": "yes"}):
        with pytest.raises(ValidationError, match=f"option '{next(iter(bad))}' of stage 'unet'"):
            Pipeline.from_dict({"stages": ["unet"], "unet": bad})


def test_stage_adds_uncertainty_and_consistency_arrays(saved_model, tiny_sequence):
    series, t1, t2 = _truth(tiny_sequence, (4, 8, 8))
    mrf = (series * 0.1).transpose(1, 0, 2, 3)  # (C, Z, Y, X) as the store holds it
    mask = np.zeros((4, 8, 8), bool)
    mask[:, 2:6, 1:7] = True
    options = {**STAGES["unet"].options, "model": str(saved_model[0]), "mc_samples": 2, "consistency": True,
               "prefix": "nn_", "input_scale": "absolute"}
    out, info = STAGES["unet"].function({"mrf": mrf, "mask": mask, "sequence": tiny_sequence}, options, "numpy")
    arrays = out["nn_maps"]
    assert {"nn_T1_uncertainty", "nn_lesion_uncertainty", "nn_physics_consistency", "nn_T1"} <= set(arrays)
    assert np.all(arrays["nn_physics_consistency"][~mask] == 0)  # computed inside the brain only
    derived = STAGES["write"].function({"nn_maps": arrays, "mask": mask}, {}, "numpy")[0]["derived"]
    for name in ("nn_T1_uncertainty", "nn_lesion_uncertainty", "nn_physics_consistency"):
        assert np.all(derived[name][~mask] == 0)  # the package's outside rule (mrfengine.masking)
    assert derived["nn_T1_uncertainty"][mask].max() > 0
    assert np.all((arrays["nn_physics_consistency"][mask] > 0) & (arrays["nn_physics_consistency"][mask] <= 1))
    assert info["uncertainty"]["mc_samples"] == 2 and info["physics_consistency"]["array"] == "nn_physics_consistency"
    json.dumps(info)
