"""Half-precision storage, re-packaging, and the shipped default model's lookup."""

import copy
import fnmatch
import json
import tomllib
from pathlib import Path

import pytest
import torch

import mrfengine
from mrfengine.errors import InputFileError, MRFEngineError, ValidationError
from mrfengine.nn import card_path, load_model, read_card, save_model
from mrfengine.nn import default as default_mod
from mrfengine.nn.default import MODEL_ENV, NoDefaultModelError, default_model_path, package_model
from mrfengine.nn.artifact import resave_model
from mrfengine.sequence import hermann2021

# float16 keeps 11 significant bits (unit roundoff 4.9e-4); through a few
# convolution layers the relative L2 difference of the outputs stays of that
# order (5.9e-4 measured for the full MSE-5 network), so 5e-3 has 10x headroom
# while a float16 *computation* bug (e.g. activations in float16) or a wrong
# weight would exceed it.
FP16_REL_TOL = 5e-3


def _n_floats(module):
    state = module.state_dict()
    return sum(t.numel() for t in state.values() if t.is_floating_point()), len(state)


def _rounded_to_fp16(net):
    """A float32 copy of ``net`` whose weights are exactly the float16-rounded ones."""
    out = copy.deepcopy(net).eval()
    with torch.no_grad():
        for t in (*out.parameters(), *out.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return out


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _x(seed=0, shape=(2, 35, 16, 12)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _save_pair(tmp_path, net, cfg, norm, seq, fmt="state_dict"):
    p32, p16 = tmp_path / f"{fmt}32.pt", tmp_path / f"{fmt}16.pt"
    kw = dict(config=cfg, normalisation=norm, sequence=seq, cohort_hash="c0ffee", metrics={"test": {"dice": 0.5}},
              format=fmt)
    save_model(net, p32, **kw)
    save_model(net, p16, weights_dtype="float16", **kw)
    return p32, p16


# ------------------------------------------------------------ float16 storage
@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_float16_storage_saves_two_bytes_per_weight_and_loads_as_float32(tmp_path, tiny_sequence, tiny_config,
                                                                         tiny_normalisation, fmt):
    cfg = tiny_config()
    net = cfg.build(seed=4)
    p32, p16 = _save_pair(tmp_path, net, cfg, tiny_normalisation(35), tiny_sequence, fmt)
    n_floats, n_tensors = _n_floats(net)
    saved = p32.stat().st_size - p16.stat().st_size
    # Each float32 weight becomes 2 bytes; the zip archive aligns each tensor record to 64 bytes.
    assert abs(saved - 2 * n_floats) <= 64 * n_tensors, (saved, n_floats)
    trust = fmt == "torchscript"  # a TorchScript file runs code: loaded only when trusted explicitly
    model = load_model(p16, expect_channels=35, expect_sequence=tiny_sequence, trust_model_code=trust)
    assert {t.dtype for t in model.module.state_dict().values() if t.is_floating_point()} == {torch.float32}
    assert not model.module.training
    assert model.card.weights_dtype == "float16"
    assert load_model(p32, trust_model_code=trust).card.weights_dtype == "float32"
    assert {t.dtype for t in net.state_dict().values()} == {torch.float32}  # the caller's network is not converted


def test_float16_file_of_a_wider_network_is_about_half(tmp_path, tiny_sequence, tiny_normalisation):
    from mrfengine.nn import get_config

    cfg = get_config("MSE-5").with_architecture(depth=2, base_filters=16)  # 122k weights: the weights dominate
    p32, p16 = _save_pair(tmp_path, cfg.build(seed=0), cfg, tiny_normalisation(35), tiny_sequence)
    ratio = p16.stat().st_size / p32.stat().st_size
    assert 0.5 < ratio < 0.6, ratio


@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_float16_model_computes_in_float32_with_the_rounded_weights(tmp_path, tiny_sequence, tiny_config,
                                                                    tiny_normalisation, fmt):
    cfg = tiny_config()
    net = cfg.build(seed=5).eval()
    _, p16 = _save_pair(tmp_path, net, cfg, tiny_normalisation(35), tiny_sequence, fmt)
    model = load_model(p16, trust_model_code=fmt == "torchscript")
    x = _x()
    with torch.no_grad():
        got = model.module(x)
        want_rounded = _rounded_to_fp16(net)(x)
        want_fp32 = net(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want_rounded, rtol=1e-6, atol=1e-6)  # same float32 arithmetic, same weights
    rel = _rel(got, want_fp32)
    assert 0 < rel < FP16_REL_TOL, rel  # rounded (not identical), and close


def test_card_records_the_stored_dtype_and_old_cards_mean_float32(tmp_path, tiny_sequence, tiny_config,
                                                                  tiny_normalisation):
    cfg = tiny_config()
    p32, p16 = _save_pair(tmp_path, cfg.build(seed=1), cfg, tiny_normalisation(35), tiny_sequence)
    assert json.loads(card_path(p16).read_text())["weights_dtype"] == "float16"
    assert read_card(p16).weights_dtype == "float16"
    for path in (p32, p16):  # a card written before the field existed
        data = json.loads(card_path(path).read_text())
        del data["weights_dtype"]
        card_path(path).write_text(json.dumps(data))
    assert load_model(p32).card.weights_dtype == "float32"
    with pytest.raises(ValidationError, match=r"state_dict16\.pt: the weights are stored as float16, but its card "
                                              r"state_dict16\.card\.json says float32"):
        load_model(p16)


def test_card_checks_still_refuse_mismatches_for_float16_models(tmp_path, tiny_sequence, tiny_config,
                                                                tiny_normalisation):
    cfg = tiny_config()
    _, p16 = _save_pair(tmp_path, cfg.build(seed=1), cfg, tiny_normalisation(35), tiny_sequence)
    with pytest.raises(ValidationError, match="takes 35 input channels; the data have 34"):
        load_model(p16, expect_channels=34)
    with pytest.raises(ValidationError, match="trained for sequence"):
        load_model(p16, expect_sequence=hermann2021(1, n_slices=6))
    blob = bytearray(p16.read_bytes())
    blob[-100] ^= 0xFF
    p16.write_bytes(bytes(blob))
    with pytest.raises(ValidationError, match="does not match its card"):
        load_model(p16)


def test_save_refuses_bad_dtypes_and_weights_beyond_float16(tmp_path, tiny_sequence, tiny_config, tiny_normalisation):
    cfg = tiny_config()
    net = cfg.build(seed=1)
    kw = dict(config=cfg, normalisation=tiny_normalisation(35), sequence=tiny_sequence)
    with pytest.raises(ValidationError, match=r"weights_dtype must be one of \('float32', 'float16'\); got 'bfloat16'"):
        save_model(net, tmp_path / "a.pt", weights_dtype="bfloat16", **kw)
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = 1e5  # float16 tops out at 65504
    with pytest.raises(ValidationError, match="exceed the float16 range"):
        save_model(net, tmp_path / "a.pt", weights_dtype="float16", **kw)
    assert not list(tmp_path.iterdir())  # nothing written, no temporary left
    save_model(net, tmp_path / "a.pt", **kw)  # float32 keeps it
    assert float(next(load_model(tmp_path / "a.pt").module.parameters()).detach().view(-1)[0]) == 1e5


# ------------------------------------------------------------- re-packaging
@pytest.mark.parametrize("fmt", ["torchscript", "state_dict"])
def test_package_model_keeps_the_card_and_stores_float16(tmp_path, tiny_sequence, tiny_config, tiny_normalisation,
                                                         fmt):
    cfg = tiny_config()
    net = cfg.build(seed=6).eval()
    src, _ = _save_pair(tmp_path / "run", net, cfg, tiny_normalisation(35), tiny_sequence, fmt)
    dst = package_model(src, tmp_path / "pkg" / "mse5", trust_model_code=fmt == "torchscript")
    assert dst == tmp_path / "pkg" / "mse5" / "model.pt"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["model.card.json", "model.pt"]  # no temporaries
    old, new = read_card(src), read_card(dst)
    assert (new.config, new.normalisation, new.sequence, new.training_cohort_hash, new.metrics) == \
        (old.config, old.normalisation, old.sequence, old.training_cohort_hash, old.metrics)
    assert old.format == fmt and new.format == "state_dict"  # shipped as data-only weights, whatever the source
    assert new.metrics == {"test": {"dice": 0.5}} and new.training_cohort_hash == "c0ffee"
    assert new.sequence["digest"] == tiny_sequence.digest()
    import hashlib

    assert new.artifact == "model.pt" and new.artifact_sha256 == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert new.weights_dtype == "float16" and old.weights_dtype == "float32"
    assert new.software["trained_mrfengine"] == old.software["mrfengine"] == mrfengine.__version__
    assert new.software["trained_torch"] == old.software["torch"]
    x = _x(1)
    with torch.no_grad():
        torch.testing.assert_close(load_model(dst, expect_sequence=tiny_sequence).module(x),
                                   _rounded_to_fp16(net)(x), rtol=1e-6, atol=1e-6)
    # packaging twice keeps the training versions, not the packager's as "trained"
    again = read_card(package_model(dst, tmp_path / "pkg2"))
    assert {k: v for k, v in again.software.items() if k.startswith("trained_")} == \
        {k: v for k, v in new.software.items() if k.startswith("trained_")}


def test_resave_back_to_float32_is_exact(tmp_path, saved_model, tiny_sequence):
    src, _, _ = saved_model
    half = package_model(src, tmp_path / "half")
    full = tmp_path / "full" / "model.pt"
    card = resave_model(half, full, weights_dtype="float32")
    assert card.weights_dtype == "float32"
    x = _x(2)
    with torch.no_grad():
        assert torch.equal(load_model(full).module(x), load_model(half).module(x))


def test_package_model_refuses_a_changed_source(saved_model, tmp_path):
    src, _, _ = saved_model
    blob = bytearray(src.read_bytes())
    blob[-100] ^= 0xFF
    src.write_bytes(bytes(blob))
    with pytest.raises(ValidationError, match="does not match its card"):
        package_model(src, tmp_path / "pkg")
    assert not (tmp_path / "pkg" / "model.pt").exists()
    with pytest.raises(ValidationError, match=r"path must end in \.pt"):
        resave_model(src, tmp_path / "x.pth")


# ------------------------------------------------------- the default model
@pytest.fixture
def no_shipped_model(tmp_path, monkeypatch):
    """An installation without a shipped model and without the environment variable."""
    folder = tmp_path / "site-packages" / "mrfengine" / "models" / "mse5"
    monkeypatch.setattr(default_mod, "DEFAULT_MODEL_DIR", folder)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    return folder


def test_no_default_model_is_a_clear_error(no_shipped_model):
    with pytest.raises(NoDefaultModelError) as info:
        default_model_path()
    msg = str(info.value)
    assert str(no_shipped_model) in msg and "pass --model NAME.pt" in msg and MODEL_ENV in msg
    assert isinstance(info.value, MRFEngineError) and isinstance(info.value, InputFileError)


def test_the_shipped_folder_is_found_and_loads(no_shipped_model, saved_model, tiny_sequence):
    src, _, _ = saved_model
    package_model(src, no_shipped_model)
    assert default_model_path() == no_shipped_model / "model.pt"
    model = load_model(default_model_path(), expect_channels=35, expect_sequence=tiny_sequence)
    assert model.card.weights_dtype == "float16"


def test_environment_variable_overrides_the_shipped_model(no_shipped_model, saved_model, monkeypatch, tmp_path):
    src, _, _ = saved_model
    package_model(src, no_shipped_model)
    monkeypatch.setenv(MODEL_ENV, str(src))
    assert default_model_path() == src
    monkeypatch.setenv(MODEL_ENV, "")  # empty means unset
    assert default_model_path() == no_shipped_model / "model.pt"
    missing = tmp_path / "nowhere" / "m.pt"
    monkeypatch.setenv(MODEL_ENV, str(missing))
    with pytest.raises(InputFileError, match=rf"{missing}: model named by the environment variable {MODEL_ENV} "
                                             "not found"):
        default_model_path()


def test_the_shipped_folder_is_package_data():
    """pyproject's package-data globs must match the files default_model_path() looks for."""
    root = Path(mrfengine.__file__).resolve().parent
    pyproject = root.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not a source checkout")
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["mrfengine"]
    rel = default_mod.DEFAULT_MODEL_DIR.relative_to(root)
    for name in ("model.pt", "model.card.json"):
        assert any(fnmatch.fnmatch(str(rel / name), g) for g in globs), (rel / name, globs)
    assert (root / "models" / "README.md").is_file() and "models/README.md" in globs


def test_the_shipped_training_files_are_the_cards_record():
    """mse5/train.toml (phase 1) and each finetune*.toml (the next phase, from the
    previous phase's network) are valid settings, and the shipped card's training
    record, followed back through ``initialised_from``, says exactly them."""
    from mrfengine.nn.train import load_settings

    folder = default_mod.DEFAULT_MODEL_DIR
    if not (folder / "model.card.json").is_file():
        pytest.skip("no shipped model in this installation")
    files = [folder / "train.toml", *sorted(folder.glob("finetune*.toml"), key=lambda p: (len(p.name), p.name))]
    phases = [load_settings(f) for f in files]
    assert phases[0].init_model is None
    for before, after in zip(phases, phases[1:]):
        assert Path(after.init_model).resolve() == (Path(before.output_dir) / "model.pt").resolve()
    record = read_card(folder / "model.pt").metrics["training_run"]
    for settings in reversed(phases):
        for key in ("network", "epochs", "batch_size", "learning_rate", "patches_per_slice", "seed",
                    "lesion_oversampling", "map_source", "bf16"):
            assert record[key] == getattr(settings, key), (key, record[key], getattr(settings, key))
        # settings added after a phase ran: absent from its record, which means their default
        assert record.get("lesion_centring", "voxel") == settings.lesion_centring
        assert record.get("patch_centring", "uniform") == settings.patch_centring
        assert record.get("loss_weights") == settings.loss_weights
        assert record.get("tissue_targets", "truth") == settings.tissue_targets
        assert record["cohort"] == Path(settings.cohort).name
        assert len(record["history"]) == settings.epochs
        if settings.init_model is None:
            assert record.get("initialised_from") is None
        else:
            assert record["init_model"] == "model.pt"
            record = record["initialised_from"]["training_run"]
