import json
import warnings

import numpy as np
import pytest
import torch

from mrfengine.errors import InputFileError, ValidationError
from mrfengine.nn import ModelCard, card_path, check_card, load_model, read_card, save_model
from mrfengine.nn.artifact import _quiet_torchscript
from mrfengine.nn.card import CARD_SCHEMA
from mrfengine.sequence import hermann2021


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_saved_and_loaded_model_gives_identical_outputs(tmp_path, tiny_sequence, fmt, tiny_config, tiny_normalisation):
    cfg = tiny_config()
    net = cfg.build(seed=2).train()  # export must use eval mode and leave the caller's mode alone
    path = tmp_path / f"{fmt}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the TorchScript deprecation warnings are silenced, nothing else shows
        save_model(net, path, config=cfg, normalisation=tiny_normalisation(35), sequence=tiny_sequence, format=fmt)
        trust = fmt == "torchscript"  # a TorchScript file runs code: only loaded when trusted explicitly
        model = load_model(path, expect_channels=35, expect_sequence=tiny_sequence, trust_model_code=trust)
        again = load_model(card_path(path), trust_model_code=trust)
    assert net.training
    x = torch.randn(2, 35, 16, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = net.eval()(x)
        assert torch.equal(model.module(x), want)
        assert torch.equal(again.module(x), want)
    assert not model.module.training
    assert isinstance(model.module, torch.jit.ScriptModule) == (fmt == "torchscript")


def test_state_dict_artifact_holds_tensors_only(saved_model, tmp_path, tiny_sequence, tiny_config, tiny_normalisation):
    cfg = tiny_config()
    path = tmp_path / "sd.pt"
    save_model(cfg.build(), path, config=cfg, normalisation=tiny_normalisation(35), sequence=tiny_sequence,
               format="state_dict")
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_model_card_contents(saved_model, tiny_sequence, tiny_normalisation):
    path, cfg, _ = saved_model
    cpath = card_path(path)
    assert cpath.name == "mse5.card.json"
    data = json.loads(cpath.read_text())
    assert data["schema"] == CARD_SCHEMA and data["name"] == "MSE-5" and data["format"] == "state_dict"
    assert data["inputs"]["kind"] == "mrf" and data["inputs"]["channels"] == 35 and data["inputs"]["size_multiple"] == 4
    assert [(o["name"], o["unit"], o["scale"]) for o in data["outputs"]] == [
        ("T1", "ms", 1000.0), ("T2star", "ms", 100.0), ("NAWM", "1", 1.0), ("GM", "1", 1.0), ("lesion", "1", 1.0)]
    assert data["normalisation"]["kind"] == "channel_zscore" and len(data["normalisation"]["std"]) == 35
    assert data["sequence"]["digest"] == tiny_sequence.digest() and data["sequence"]["name"] == tiny_sequence.name
    assert data["training"]["cohort_hash"] == "c0ffee"
    assert data["metrics"] == {"test": {"lesion_dice": 0.5}}
    import hashlib

    assert data["artifact"] == {"file": "mse5.pt", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    card = read_card(path)
    assert card == ModelCard.from_dict(data) and card.config == cfg
    assert card.normalisation == tiny_normalisation(35)


def test_cards_that_do_not_fit_the_data_are_refused(saved_model):
    path, _, _ = saved_model
    with pytest.raises(ValidationError,
                       match=r"mse5\.card\.json: network MSE-5 takes 35 input channels; the data have 34"):
        load_model(path, expect_channels=34)
    other = hermann2021(1, n_slices=6)
    with pytest.raises(ValidationError, match=r"mse5\.card\.json: .*trained for sequence\(s\) .*acquired with"):
        load_model(path, expect_sequence=other)
    with pytest.raises(ValidationError, match="takes an MRF series, but the data are maps"):
        load_model(path, expect_input_kind="maps")
    load_model(path, expect_sequence=hermann2021(1, n_slices=4).digest())  # a digest works as well


def test_maps_networks_refuse_a_sequence_check(tmp_path, tiny_config, tiny_normalisation):
    cfg = tiny_config("MSE-2-1")
    save_model(cfg.build(), tmp_path / "m21.pt", config=cfg, normalisation=tiny_normalisation(2))
    card = read_card(tmp_path / "m21.pt")
    assert card.sequence is None and card.config.input_names == ("T1", "T2star")
    with pytest.raises(ValidationError, match="not trained on an MRF sequence"):
        check_card(card, sequence=hermann2021(1), source="m21")
    with pytest.raises(ValidationError, match=r"takes maps \(T1, T2star\), but the data are an MRF series"):
        check_card(card, input_kind="mrf", source="m21")


def test_a_changed_artifact_or_a_broken_card_is_refused(saved_model):
    path, _, _ = saved_model
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValidationError, match=r"mse5\.pt: the file does not match its card"):
        load_model(path)
    cpath = card_path(path)
    cpath.write_text("{not json")
    with pytest.raises(InputFileError, match=r"mse5\.card\.json: cannot read the model card"):
        load_model(path)
    cpath.write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ValidationError, match=r"mse5\.card\.json: model card schema"):
        load_model(path)
    cpath.unlink()
    with pytest.raises(InputFileError, match="model card not found"):
        load_model(path)


def test_card_sections_must_agree_with_the_configuration(saved_model):
    path, _, _ = saved_model
    data = json.loads(card_path(path).read_text())
    data["inputs"]["channels"] = 34
    with pytest.raises(ValidationError, match="disagree"):
        ModelCard.from_dict(data)
    data = json.loads(card_path(path).read_text())
    data["outputs"] = data["outputs"][::-1]
    with pytest.raises(ValidationError, match="disagree"):
        ModelCard.from_dict(data)


def test_save_checks_model_config_and_sequence(tmp_path, tiny_sequence, tiny_config, tiny_normalisation):
    cfg = tiny_config()
    with pytest.raises(ValidationError, match="channels"):
        save_model(tiny_config("MSE-1").build(), tmp_path / "a.pt", config=cfg, normalisation=tiny_normalisation(35),
                   sequence=tiny_sequence)
    with pytest.raises(ValidationError, match="needs the sequence"):
        save_model(cfg.build(), tmp_path / "a.pt", config=cfg, normalisation=tiny_normalisation(35))
    with pytest.raises(ValidationError, match="normalisation has 2 channels"):
        save_model(cfg.build(), tmp_path / "a.pt", config=cfg, normalisation=tiny_normalisation(2),
                   sequence=tiny_sequence)
    with pytest.raises(ValidationError, match=r"end in \.pt"):
        save_model(cfg.build(), tmp_path / "a.pth", config=cfg, normalisation=tiny_normalisation(35),
                   sequence=tiny_sequence)
    assert not list(tmp_path.glob("*.card.json"))  # nothing half-written


def test_only_the_torchscript_deprecation_warnings_are_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_torchscript():
            warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", DeprecationWarning)
            warnings.warn("something else is deprecated", DeprecationWarning)
            warnings.warn("a user warning", UserWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated", "a user warning"]


def test_normalisation_fit_and_round_trip():
    from mrfengine.nn import Normalisation, fit_normalisation

    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, size=(2, 5, 4, 4))
    b = rng.normal(3.0, 2.0, size=(2, 3, 4, 4))
    norm = fit_normalisation([a, b], channel_axis=0)
    both = np.concatenate([a.reshape(2, -1), b.reshape(2, -1)], axis=1)
    np.testing.assert_allclose(norm.mean, both.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(norm.std, both.std(axis=1), rtol=1e-12)
    mask = np.zeros((5, 4, 4), bool)
    mask[0] = True
    masked = fit_normalisation(a, channel_axis=0, mask=mask)
    np.testing.assert_allclose(masked.mean, a[:, 0].reshape(2, -1).mean(axis=1), rtol=1e-12)
    assert Normalisation.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValidationError, match="constant"):
        fit_normalisation(np.ones((2, 3, 3)))
    with pytest.raises(ValidationError, match="std > 0"):
        Normalisation((0.0,), (0.0,))
