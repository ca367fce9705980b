import numpy as np
import pytest
import torch

from mrfengine.errors import ValidationError
from mrfengine.nn import LoadedModel, Normalisation, load_model, pad_amounts, predict_volume, read_card


def _volume(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 0.3, size=shape).astype(np.float32)


def _direct(model: LoadedModel, volume_zcyx: np.ndarray, transforms=((0, False),)) -> dict:
    """What predict_volume must return, computed by hand: normalise, pad with the
    normalised zero, [mirror, rotate,] run, [rotate back, mirror back,] activation,
    [mean over the transforms,] crop, scale, clip to the physical ranges (probabilities
    [0, 1], T1 0-5000 ms, T2* 0-3000 ms)."""
    card = model.card
    mean = np.asarray(card.normalisation.mean, np.float32)[None, :, None, None]
    std = np.asarray(card.normalisation.std, np.float32)[None, :, None, None]
    z, c, ny, nx = volume_zcyx.shape
    m = card.config.size_multiple
    (t, b), (le, r) = pad_amounts(ny, m), pad_amounts(nx, m)
    x = np.pad(volume_zcyx, ((0, 0), (0, 0), (t, b), (le, r)))  # zeros, then normalised like the data
    x = (x - mean) / std
    out = {o.name: 0.0 for o in card.config.outputs}
    for turns, mirror in transforms:
        xt = x[..., ::-1] if mirror else x
        xt = np.rot90(xt, turns, axes=(2, 3))
        with torch.no_grad():
            y = model.module(torch.from_numpy(np.ascontiguousarray(xt, dtype=np.float32))).numpy()
        y = np.rot90(y, -turns, axes=(2, 3))
        y = (y[..., ::-1] if mirror else y)[:, :, t:t + ny, le:le + nx]
        for k, o in enumerate(card.config.outputs):
            yk = 1 / (1 + np.exp(-y[:, k])) if o.activation == "sigmoid" else y[:, k]
            out[o.name] = out[o.name] + yk * o.scale / len(transforms)
    limits = {"T1": (0, 5000), "T2star": (0, 3000), "NAWM": (0, 1), "GM": (0, 1), "lesion": (0, 1)}
    return {name: np.clip(v, *limits[name]) for name, v in out.items()}


def test_pad_amounts():
    assert pad_amounts(240, 16) == (0, 0)
    assert pad_amounts(230, 16) == (5, 5)
    assert pad_amounts(233, 16) == (3, 4)
    assert pad_amounts(1, 4) == (1, 2)


@pytest.mark.parametrize("size", [(16, 12), (21, 18), (5, 7)])
def test_whole_slices_of_any_size_match_the_hand_computation(saved_model, size):
    path, _, _ = saved_model
    model = load_model(path)
    vol = _volume((3, 35, *size))
    got = predict_volume(vol, model, batch_size=2, channels_last=False)
    want = _direct(model, vol)
    assert list(got) == ["T1", "T2star", "NAWM", "GM", "lesion"]
    for name in want:
        assert got[name].shape == (3, *size) and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5 * np.abs(want[name]).max())


@pytest.mark.parametrize("tta,transforms", [
    ("flip", ((0, False), (0, True))),
    ("dihedral", tuple((k, f) for f in (False, True) for k in range(4))),
])
def test_test_time_augmentation_matches_the_hand_computation(saved_model, tta, transforms):
    model = load_model(saved_model[0])
    vol = _volume((2, 35, 13, 22), seed=3)  # pads to 16 x 32: rotations change the slice's shape
    got = predict_volume(vol, model, batch_size=2, tta=tta)
    want = _direct(model, vol, transforms)
    plain = predict_volume(vol, model, batch_size=2)
    for name in want:
        assert got[name].shape == (2, 13, 22)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * np.abs(want[name]).max())
    assert not np.allclose(got["T1"], plain["T1"])  # an untrained network is far from equivariant


def test_dihedral_averaging_makes_the_prediction_equivariant(saved_model):
    """With no padding, the mean over the eight transforms commutes with each of them."""
    model = load_model(saved_model[0])
    vol = _volume((1, 35, 16, 16), seed=4)
    ref = predict_volume(vol, model, tta="dihedral")
    turned = predict_volume(np.ascontiguousarray(np.rot90(vol[..., ::-1], 1, axes=(2, 3))), model, tta="dihedral")
    for name in ref:
        np.testing.assert_allclose(np.rot90(turned[name], -1, axes=(1, 2))[..., ::-1], ref[name],
                                   rtol=1e-4, atol=1e-5 * np.abs(ref[name]).max())


def test_layouts_batches_and_memory_formats_agree(saved_model):
    model = load_model(saved_model[0])
    vol = _volume((5, 35, 13, 9), seed=1)
    ref = predict_volume(vol, model, batch_size=5, channels_last=False)
    for kwargs in ({"batch_size": 1}, {"batch_size": 2, "channels_last": True},
                   {"batch_size": 3, "channel_axis": 0}):
        data = vol.transpose(1, 0, 2, 3) if kwargs.get("channel_axis") == 0 else vol
        got = predict_volume(data, model, **kwargs)
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-5 * np.abs(ref[name]).max())


def test_outputs_are_scaled_to_units_by_construction(tmp_path, tiny_config, tiny_sequence):
    """A network with zero weights returns its head biases: T1 = 1.2 s -> 1200 ms, and so on."""
    from mrfengine.nn import save_model

    for name, bias, want in (("MSE-5", [1.2, 0.5, 0.3, 0.6, 0.1], [1200.0, 50.0, 0.3, 0.6, 0.1]),
                             ("DICE-1", [0.0], [0.5])):  # a Dice output is a logit: sigmoid(0) = 0.5
        cfg = tiny_config(name)
        net = cfg.build()
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            net.head.bias.copy_(torch.tensor(bias))
        save_model(net, tmp_path / f"{name}.pt", config=cfg, normalisation=Normalisation.identity(35),
                   sequence=tiny_sequence)
        maps = predict_volume(_volume((2, 35, 6, 10)), load_model(tmp_path / f"{name}.pt"))
        for (key, values), w in zip(maps.items(), want):
            np.testing.assert_allclose(values, w, rtol=1e-6)


def test_non_finite_inputs_are_treated_as_empty_voxels(saved_model, caplog):
    model = load_model(saved_model[0])
    vol = _volume((2, 35, 8, 8), seed=2)
    bad = vol.copy()
    bad[0, 3, 2, 2] = np.nan
    bad[1, 0, 5, 1] = np.inf
    clean = vol.copy()
    clean[0, 3, 2, 2] = clean[1, 0, 5, 1] = 0.0
    got = predict_volume(bad, model)
    want = predict_volume(clean, model)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert "2 non-finite input values" in caplog.text


def test_bfloat16_is_close_to_float32(saved_model):
    model = load_model(saved_model[0])
    vol = _volume((2, 35, 12, 12), seed=3)
    a = predict_volume(vol, model)
    b = predict_volume(vol, model, precision="bfloat16")
    for name in a:
        err = np.abs(a[name] - b[name]).max() / np.abs(a[name]).max()
        assert err < 0.05, (name, err)


def test_zarr_like_arrays_are_read_a_batch_at_a_time(saved_model):
    model = load_model(saved_model[0])
    vol = _volume((35, 4, 8, 8), seed=4)
    reads = []

    class Lazy:
        shape = vol.shape

        def __getitem__(self, key):
            reads.append(key)
            return vol[key]

    got = predict_volume(Lazy(), model, channel_axis=0, batch_size=3)
    want = predict_volume(vol, model, channel_axis=0, batch_size=3)["T1"]
    np.testing.assert_array_equal(got["T1"], want)
    # one pass for the intensity level (the mean over frames, 8 slices at a time), then the network's batches
    assert reads == [(slice(None), slice(0, 4)), (slice(None), slice(0, 3)), (slice(None), slice(3, 4))]


@pytest.mark.parametrize("kwargs,shape,match", [
    ({}, (2, 34, 8, 8), "35 channels along axis 1"),
    ({}, (35, 8, 8), "must be 4D"),
    ({"channel_axis": 2}, (2, 35, 8, 8), "channel_axis"),
    ({"batch_size": 0}, (2, 35, 8, 8), "batch_size"),
    ({"precision": "float16"}, (2, 35, 8, 8), "precision"),
    ({"tta": "rotate"}, (2, 35, 8, 8), "tta must be one of"),
])
def test_bad_inputs_are_refused(saved_model, kwargs, shape, match):
    model = load_model(saved_model[0])
    with pytest.raises(ValidationError, match=match):
        predict_volume(np.zeros(shape, np.float32), model, **kwargs)


def test_card_normalisation_is_what_the_network_sees(saved_model):
    path, _, _ = saved_model
    card = read_card(path)
    scale, offset = card.normalisation.scale_and_offset()
    x = np.float32(0.17)
    np.testing.assert_allclose(x * scale + offset, (x - np.asarray(card.normalisation.mean)) /
                               np.asarray(card.normalisation.std), rtol=1e-6, atol=1e-6)
