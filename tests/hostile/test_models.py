"""Hostile model files and training settings (issue 17, cases 1 and 9).

A model from elsewhere is two files, ``NAME.pt`` and ``NAME.card.json``, and whoever
ships them writes both, so the card's SHA-256 proves nothing about the file.  These
tests craft a TorchScript module whose ``__setstate__`` (run by ``torch.jit.load``) and
``forward`` print a marker, and a pickle whose ``__reduce__`` would create a file; each
comes with a card that is valid and hashes right.  Every entry point that loads a model
(``predict --model``, ``MRFENGINE_MODEL``, the batch ``[unet]`` stage, train
``init_model``) must refuse them, say why, and run none of their code.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch

from mrfengine.errors import InputFileError, ValidationError
from mrfengine.nn import card_path, get_config, load_model, save_model
from mrfengine.nn.default import DEFAULT_MODEL_DIR, MODEL_ENV
from mrfengine.nn.artifact import UntrustedModelError, _quiet_torchscript
from mrfengine.nn.normalisation import Normalisation
from mrfengine.sequence import hermann2021

from _hostile import run_cli, snapshot

MARKER = "HOSTILE-MODEL-CODE-RAN"


class _Evil(torch.nn.Module):
    """Looks like an MSE-5 network (35 in, 5 out); its code prints MARKER when it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 35
        self.out_channels = 5
        self.weight = torch.nn.Parameter(torch.zeros(5, 35, 1, 1))

    def forward(self, x):
        print("HOSTILE-MODEL-CODE-RAN")
        return torch.nn.functional.conv2d(x, self.weight)

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("HOSTILE-MODEL-CODE-RAN")
        self.weight = state[0]
        self.in_channels = 35
        self.out_channels = 5
        self.training = state[1]


class _Reducer:
    """Unpickling this calls ``open(path, "w")``: it creates a file (if anything unpickles it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


SEQUENCE = hermann2021(1, n_slices=4)


def _config():
    return get_config("MSE-5").with_architecture(depth=2, base_filters=4)


def _norm():
    return Normalisation(tuple([0.1] * 35), tuple([0.05] * 35))


def _legit(folder: Path, fmt: str = "state_dict", name: str = "model") -> Path:
    cfg = _config()
    path = folder / f"{name}.pt"
    save_model(cfg.build(seed=1), path, config=cfg, normalisation=_norm(), sequence=SEQUENCE, format=fmt)
    return path


def _swap_artifact(path: Path, blob: bytes, *, format: str | None = None) -> None:
    """Replace the artifact by ``blob`` and make its card vouch for it (as an attacker would)."""
    path.write_bytes(blob)
    cpath = card_path(path)
    card = json.loads(cpath.read_text())
    card["artifact"]["sha256"] = hashlib.sha256(blob).hexdigest()
    if format is not None:
        card["format"] = format
    cpath.write_text(json.dumps(card))


@pytest.fixture(scope="module")
def _evil_blob(tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("evil") / "evil.pt"
    with _quiet_torchscript():
        torch.jit.save(torch.jit.script(_Evil()), str(p))
    return p.read_bytes()


@pytest.fixture
def evil_ts(tmp_path, _evil_blob) -> Path:
    """A crafted TorchScript model with a card that says torchscript and hashes right."""
    path = _legit(tmp_path / "evil", fmt="torchscript", name="evil")
    _swap_artifact(path, _evil_blob)
    return path


@pytest.fixture
def evil_pickle(tmp_path) -> tuple[Path, Path]:
    """A state-dict model whose pickle would create ``pwned`` on loading; its card hashes right."""
    path = _legit(tmp_path / "pickle", name="evil")
    marker = tmp_path / "pwned"
    src = tmp_path / "blob.pt"
    torch.save({"weight": _Reducer(marker)}, src)
    _swap_artifact(path, src.read_bytes())
    src.unlink()
    return path, marker


@pytest.fixture
def no_jit_load(monkeypatch):
    """``torch.jit.load`` raises: our loaders must never call it (without the opt-in)."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", refuse)


@pytest.fixture
def mrf_input(tmp_path) -> Path:
    """A 4D MRF series fitting the tiny models (4 slices of SEQUENCE, 35 frames)."""
    from mrfengine.io import save_nifti

    rng = np.random.default_rng(0)
    data = rng.uniform(0.05, 0.3, (16, 16, 4, 35)).astype(np.float32)
    return save_nifti(data, np.eye(4), tmp_path / "in" / "sub-01_mrf.nii.gz")


def _assert_no_code_ran(capsys, result=None):
    out = capsys.readouterr()
    seen = out.out + out.err + ("" if result is None else result.out + result.err)
    assert MARKER not in seen


# ------------------------------------------------------------------ case 1: a model file runs code
def test_the_crafted_torchscript_runs_code_when_trusted(evil_ts, capsys):
    """The exploit is real: torch.jit.load runs the file's __setstate__ (so refusing it matters)."""
    with _quiet_torchscript():
        torch.jit.load(str(evil_ts))
    assert MARKER in capsys.readouterr().out


def test_library_refuses_torchscript_and_says_why(evil_ts, no_jit_load, capsys):
    with pytest.raises(UntrustedModelError, match=r"evil\.pt: .*TorchScript files run code stored in the file; "
                                                  r"load only models you trust, with --trust-model-code"):
        load_model(evil_ts)
    _assert_no_code_ran(capsys)


def test_torchscript_behind_a_state_dict_card_is_refused(evil_ts, no_jit_load, capsys):
    _swap_artifact(evil_ts, evil_ts.read_bytes(), format="state_dict")
    with pytest.raises(UntrustedModelError, match=r"evil\.pt: the file is a TorchScript archive, but its card "
                                                  r"evil\.card\.json says state_dict"):
        load_model(evil_ts, trust_model_code=True)  # trust covers a card that says so, not a card that lies
    _assert_no_code_ran(capsys)


def test_predict_refuses_torchscript_model(evil_ts, mrf_input, tmp_path, no_jit_load, capsys):
    before = snapshot(tmp_path)
    r = run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", evil_ts, "--no-progress"], capsys,
                code=1, says=("evil.pt", "TorchScript files run code", "--trust-model-code"))
    _assert_no_code_ran(capsys, r)
    assert snapshot(tmp_path) == before


def test_predict_refuses_torchscript_named_by_the_environment(evil_ts, mrf_input, tmp_path, monkeypatch,
                                                              no_jit_load, capsys):
    monkeypatch.setenv(MODEL_ENV, str(evil_ts))
    before = snapshot(tmp_path)
    r = run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--no-progress"], capsys, code=1,
                says=("evil.pt", "TorchScript files run code"))
    _assert_no_code_ran(capsys, r)
    assert snapshot(tmp_path) == before


def test_predict_refuses_a_pickle_that_holds_objects(evil_pickle, mrf_input, tmp_path, capsys):
    path, marker = evil_pickle
    before = snapshot(tmp_path)
    r = run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", path, "--no-progress"], capsys, code=1,
                says=("evil.pt", "holds objects other than tensors", "refused (weights_only)"))
    assert "does not fit" not in r.err
    assert not marker.exists() and snapshot(tmp_path) == before
    with pytest.raises(InputFileError, match="holds objects other than tensors"):
        load_model(path, trust_model_code=True)  # trust is about TorchScript; a pickle's objects never load
    assert not marker.exists()


def test_batch_unet_stage_refuses_torchscript_and_pickle(cohort, evil_ts, evil_pickle, tmp_path, monkeypatch,
                                                         no_jit_load, capsys):
    from mrfengine.pipeline import batch as batch_mod

    # workers as threads of this process: the refusal (and any marker) is seen here, and it is fast
    monkeypatch.setattr(batch_mod, "batch_client",
                        functools.partial(batch_mod.batch_client, processes=False, dashboard=False))
    path, marker = evil_pickle
    for model, why in ((evil_ts, "TorchScript files run code"), (path, "holds objects other than tensors")):
        config = tmp_path / f"unet-{model.parent.name}.toml"
        config.write_text(f'name = "unet-x"\nstages = ["unet"]\n[unet]\nmodel = "{model}"\n')
        r = run_cli(["batch", cohort, "--config", config, "--workers", "1", "--no-progress"], capsys, code=1)
        assert why in r.err and "evil.pt" in r.err, r.err
        _assert_no_code_ran(capsys, r)
    # the default model replaced by MRFENGINE_MODEL
    monkeypatch.setenv(MODEL_ENV, str(evil_ts))
    config = tmp_path / "unet-env.toml"
    config.write_text('name = "unet-x"\nstages = ["unet"]\n[unet]\nmodel = "default"\n')
    r = run_cli(["batch", cohort, "--config", config, "--workers", "1", "--no-progress"], capsys, code=1)
    assert "TorchScript files run code" in r.err and "evil.pt" in r.err, r.err
    _assert_no_code_ran(capsys, r)
    assert not marker.exists()
    assert not list(cohort.glob("subjects/*/derived/unet-x/*/zarr.json"))  # no maps from the refused models


def test_train_init_model_refuses_torchscript_before_any_work(evil_ts, cohort, tmp_path, no_jit_load, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'cohort = "{cohort}"\nnetwork = "MSE-5"\noutput_dir = "out"\ndepth = 2\nbase_filters = 4\n'
                    f'init_model = "{evil_ts}"\n')
    before = snapshot(tmp_path)
    r = run_cli(["train", toml, "--no-progress"], capsys, code=1,
                says=("evil.pt", "TorchScript files run code", "trust_model_code"))
    _assert_no_code_ran(capsys, r)
    assert snapshot(tmp_path) == before  # no output_dir, no checkpoint


def test_trusted_torchscript_still_loads_with_the_opt_in(tmp_path, mrf_input, capsys):
    path = _legit(tmp_path / "ts", fmt="torchscript")
    model = load_model(path, trust_model_code=True)
    assert isinstance(model.module, torch.jit.ScriptModule)
    run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", path, "--trust-model-code",
             "--no-progress"], capsys, code=0)
    assert (tmp_path / "maps" / "sub-01" / "anat" / "sub-01_desc-unet_T1map.nii.gz").is_file()


def test_default_model_loads_from_data_only_weights(no_jit_load, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    card = json.loads((DEFAULT_MODEL_DIR / "model.card.json").read_text())
    assert card["format"] == "state_dict" and card["weights_dtype"] == "float16"
    assert (DEFAULT_MODEL_DIR / "model.pt").stat().st_size < 20e6
    model = load_model(DEFAULT_MODEL_DIR / "model.pt")  # torch.jit.load would raise
    assert not isinstance(model.module, torch.jit.ScriptModule) and model.card.name == "MSE-5"


def test_torchscript_is_built_from_our_own_code_on_request(tmp_path, no_jit_load):
    path = _legit(tmp_path / "m")
    eager = load_model(path)
    scripted = load_model(path, script=True)  # torch.jit.script of our UNet2d, filled with the file's weights
    assert isinstance(scripted.module, torch.jit.ScriptModule) and not scripted.module.training
    x = torch.randn(1, 35, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted.module(x), eager.module(x), rtol=0, atol=1e-6)


def test_train_writes_data_only_weights_by_default(tmp_path):
    cfg = _config()
    path = tmp_path / "m.pt"
    save_model(cfg.build(), path, config=cfg, normalisation=_norm(), sequence=SEQUENCE)
    assert json.loads(card_path(path).read_text())["format"] == "state_dict"
    assert all(isinstance(v, torch.Tensor) for v in torch.load(path, weights_only=True).values())


# ------------------------------------------------------------------ case 9: cards, tampering, settings
@pytest.mark.parametrize("artifact", ["../..", "../model.pt", "/etc/passwd", "sub/model.pt", "..", ""])
def test_card_artifact_must_be_a_plain_name_beside_the_card(tmp_path, mrf_input, artifact, capsys):
    path = _legit(tmp_path / "m")
    card = json.loads(card_path(path).read_text())
    card["artifact"]["file"] = artifact
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(ValidationError, match="plain file name beside the card"):
        load_model(path)
    run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", path, "--no-progress"], capsys, code=1,
            says=("model.card.json", "plain file name"))


def test_a_tampered_model_is_reported_as_such_not_as_unfit_input(tmp_path, mrf_input, capsys):
    path = _legit(tmp_path / "m")
    blob = bytearray(path.read_bytes())
    blob[-200] ^= 0xFF
    path.write_bytes(bytes(blob))
    r = run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", path, "--no-progress"], capsys, code=1,
                says=("model.pt", "does not match its card"))
    assert "does not fit" not in r.err
    # weights of another network under a card that vouches for them
    other = get_config("MSE-5").with_architecture(depth=2, base_filters=8).build()
    src = tmp_path / "other.pt"
    torch.save(other.state_dict(), src)
    _swap_artifact(path, src.read_bytes())
    r = run_cli(["predict", mrf_input, "-o", tmp_path / "maps", "--model", path, "--no-progress"], capsys, code=1,
                says=("model.pt", "the weights do not fit the network its card"))
    assert "does not fit the model" not in r.err
    # not a mapping of tensors at all, or no weights file
    torch.save([torch.zeros(2)], src)
    _swap_artifact(path, src.read_bytes())
    with pytest.raises(InputFileError, match="not a state dict"):
        load_model(path)
    _swap_artifact(path, b"not a weights file")
    with pytest.raises(InputFileError, match=r"model\.pt: cannot read the weights"):
        load_model(path)


def _settings(tmp_path, cohort, extra: str) -> Path:
    toml = tmp_path / "run.toml"
    toml.write_text(f'cohort = "{cohort}"\nnetwork = "MSE-5"\noutput_dir = "out"\n{extra}\n')
    return toml


@pytest.mark.parametrize("extra, says", [
    ("patch_size = 1000000", "patch_size"),
    ("learning_rate = 1e30", "learning_rate"),
    ("learning_rate = nan", "learning_rate"),
    ("batch_size = 1000000000", "batch_size"),
    ("depth = 60", "depth"),
    ("base_filters = 1000\ndepth = 8", "base_filters"),
    ("trust_model_code = 1", "trust_model_code"),
])
def test_absurd_training_settings_are_refused_up_front(tmp_path, cohort, extra, says, capsys):
    toml = _settings(tmp_path, cohort, extra)
    before = snapshot(tmp_path)
    run_cli(["train", toml, "--no-progress"], capsys, code=1, says=("run.toml", says))
    assert snapshot(tmp_path) == before


def test_output_dir_that_is_a_file_is_refused(tmp_path, cohort, capsys):
    (tmp_path / "out").write_text("precious")
    toml = _settings(tmp_path, cohort, "")
    run_cli(["train", toml, "--no-progress"], capsys, code=1, says=("output_dir", "out"))
    toml.write_text(toml.read_text().replace('output_dir = "out"', 'output_dir = "out/run"'))
    run_cli(["train", toml, "--no-progress"], capsys, code=1, says=("output_dir", "existing file"))
    assert (tmp_path / "out").read_text() == "precious"


@pytest.mark.parametrize("blob", [b"\xff\xfe\x00\x00binary", b"cohort = \"\x01\"", b"\x89PNG\r\n\x1a\n"])
def test_binary_training_settings_are_a_clean_error(tmp_path, blob, capsys):
    toml = tmp_path / "run.toml"
    toml.write_bytes(blob)
    run_cli(["train", toml], capsys, code=1, says=("run.toml", "cannot read the training settings"))


def test_a_diverging_run_names_the_learning_rate(tmp_path, cohort, monkeypatch):
    """A non-finite loss stops the run with a message naming learning_rate, not 'pred must be finite'."""
    from mrfengine.nn import train as train_mod

    data = json.loads((cohort / "zarr.json").read_text())
    data["attributes"]["mrfengine_cohort"]["subjects"]["sub-02"]["split"] = "validation"
    (cohort / "zarr.json").write_text(json.dumps(data))
    monkeypatch.setattr(train_mod, "train_step", lambda *a, **k: float("nan"))
    settings = train_mod.load_settings(_settings(tmp_path, cohort, "depth = 2\nbase_filters = 4\npatch_size = 32\n"
                                                 "patches_per_slice = 1\nbatch_size = 64\nthreads = 1\n"
                                                 "learning_rate = 0.5"))
    with pytest.raises(ValidationError, match=r"training diverged in epoch 1: .*learning_rate = 0\.5"):
        train_mod.train(settings)
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_a_checkpoint_holding_objects_is_refused(tmp_path):
    """``--resume`` reads checkpoint.pt with weights_only: a pickled object is refused, never built."""
    from mrfengine.nn.checkpoint import load_checkpoint

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "mrfengine.checkpoint/1", "extra": _Reducer(marker)}, path)
    with pytest.raises(InputFileError, match=r"checkpoint\.pt: the checkpoint holds objects other than tensors .*"
                                             r"refused \(weights_only\)"):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputFileError, match=r"checkpoint\.pt: cannot read the checkpoint"):
        load_checkpoint(path)
