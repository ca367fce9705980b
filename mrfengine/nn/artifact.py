"""Saving and loading trained networks: the network file beside its model card.

A saved model is two files side by side (the card: :mod:`mrfengine.nn.card`)::

    NAME.pt          the network: a state dict (weights only, the default) or
                     TorchScript (an export format for deployment), its
                     weights stored in float32 or, at half the size, float16
    NAME.card.json   the model card: inputs, outputs with units and target
                     scaling, input normalisation, the acquisition sequence
                     (digest), the training cohort's hash, metrics, the
                     configuration, and the artifact's SHA-256

The card is written last (after the artifact, both atomically), so a crash
never leaves a model that loads.  :func:`load_model` refuses a card that does
not fit the data (channel count, sequence) or its artifact (hash), with a
:class:`~mrfengine.errors.ValidationError` that names the file and the
mismatch.

Model files from elsewhere run no code.  A state dict is read with
``torch.load(weights_only=True)``, which unpickles tensors and plain
containers only (a file holding any other object is refused, naming it), into
mrfengine's own :class:`~mrfengine.nn.UNet2d` built from the card's
configuration; ``load_model(..., script=True)`` turns that module into
TorchScript from our own code.  A TorchScript *file* holds code (its
``forward``, ``__setstate__``) that runs when it is loaded and used, and the
card's SHA-256 is no protection (whoever ships the file ships the card), so
:func:`load_model` refuses one unless the caller passes
``trust_model_code=True`` (``--trust-model-code`` on the command line,
``trust_model_code = true`` in a batch ``[unet]`` table or training
settings), and also refuses a TorchScript archive whose card claims a state
dict.  A card's artifact must be a plain file name beside the card.

TorchScript is deprecated in torch >= 2.9 in favour of ``torch.export``; its
deprecation warnings are silenced here, and only those
(:func:`_quiet_torchscript`).

Half-precision storage (``weights_dtype="float16"``) rounds every weight to
float16 (11 significant bits) to halve the file, e.g. 31.2 MB -> 15.6 MB for
the paper's MSE-5 network; the card records the stored dtype and
:func:`load_model` always returns a float32 module, so inference computes in
float32 with the rounded weights (for a freshly initialised MSE-5 network the
outputs differ from float32 storage by 6e-4, relative L2 norm).  :func:`resave_model` converts an existing artifact
(its dtype, and its format: e.g. a trusted TorchScript file to a state dict).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..errors import InputFileError, ValidationError
from ..sequence import Sequence
from .card import (
    FORMATS,
    WEIGHTS_DTYPES,
    ModelCard,
    card_path,
    check_card,
    check_tissue_targets,
    file_sha256,
    read_card,
    sequence_entry,
    software_versions,
    write_card,
)
from .configs import NetworkConfig
from .normalisation import Normalisation

log = logging.getLogger(__name__)

__all__ = [
    "TRUST_HINT",
    "LoadedModel",
    "UntrustedModelError",
    "load_model",
    "resave_model",
    "save_model",
]


TRUST_HINT = ("TorchScript files run code stored in the file; load only models you trust, with "
              "--trust-model-code (the batch [unet] stage and training settings: trust_model_code = true)")
"""Why a TorchScript artifact is refused, and how to opt in: ends every refusal's message."""


class UntrustedModelError(ValidationError):
    """A model file that would run code (TorchScript) and was not trusted explicitly."""


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence exactly the "`torch.jit.X` is deprecated" warnings of torch >= 2.9.

    TorchScript is our deployment format on purpose (see the module
    docstring); every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference: the module (eval mode), its card, its file."""

    module: torch.nn.Module
    card: ModelCard
    path: Path


def _check_model(model: torch.nn.Module, config: NetworkConfig) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    got = (getattr(model, "in_channels", None), getattr(model, "out_channels", None))
    if got != (config.in_channels, config.out_channels):
        raise ValidationError(f"model has (in, out) channels {got}; configuration {config.name} says "
                              f"({config.in_channels}, {config.out_channels})")


def _stored_copy(model: torch.nn.Module, weights_dtype: str) -> torch.nn.Module:
    """The module to write: ``model`` itself for float32, a float16 copy otherwise (the caller's is untouched).

    Raises
    ------
    ValidationError
        When a weight does not fit in float16 (magnitude above 65504).
    """
    if weights_dtype == "float32":
        return model
    half = copy.deepcopy(model)
    _cast_floating(half, torch.float16)
    bad = [name for name, t in half.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValidationError(f"weights {bad[:3]} exceed the float16 range (|w| > 65504); save with "
                              "weights_dtype='float32'")
    return half


def _write_artifact(model: torch.nn.Module, path: Path, *, format: str, weights_dtype: str) -> None:
    """Write the network atomically (temporary name, then rename), in eval mode, its weights as ``weights_dtype``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        stored = _stored_copy(model, weights_dtype)
        with atomic_path(path) as tmp:
            if format == "torchscript":
                with _quiet_torchscript():
                    scripted = torch.jit.script(stored)
                    torch.jit.save(scripted, str(tmp))
            else:
                torch.save({k: v.detach().cpu() for k, v in stored.state_dict().items()}, tmp)
    finally:
        model.train(was_training)


def _cast_floating(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Convert the floating-point parameters and buffers of ``module`` to ``dtype``, in place.

    Not ``module.to(dtype)``: on a TorchScript module its ``_apply`` reads
    ``.grad`` of every parameter and warns about non-leaf tensors.
    """
    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point() and t.dtype != dtype:
                t.data = t.data.to(dtype)


def _check_artifact_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".pt":
        raise ValidationError(f"path must end in .pt; got {path}")
    return path


def _check_weights_dtype(weights_dtype: Any) -> str:
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValidationError(f"weights_dtype must be one of {WEIGHTS_DTYPES}; got {weights_dtype!r}")
    return weights_dtype


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    config: NetworkConfig,
    normalisation: Normalisation,
    sequence: Sequence | None = None,
    cohort_hash: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    format: str = "state_dict",
    weights_dtype: str = "float32",
    training_sequences: Iterable[Sequence] = (),
    tissue_targets: str = "truth",
) -> ModelCard:
    """Write ``model`` to ``path`` (``.pt``) and its card beside it (``.card.json``).

    Parameters
    ----------
    model : UNet2d
        The trained network (exported in eval mode; its own mode is kept).
    path : path
        The artifact, e.g. ``models/mse5.pt``; folders are created.
    config : NetworkConfig
        The network's configuration (channels must match the model).
    normalisation : Normalisation
        The input normalisation the network was trained with.
    sequence : Sequence, optional
        The acquisition of the training data; required for MRF inputs.
    cohort_hash : str, optional
        Identifies the training cohort.
    metrics : mapping, optional
        JSON-serialisable evaluation results.
    format : {"state_dict", "torchscript"}
        A state dict (the default) holds weights only: it is rebuilt from the
        configuration and read with ``weights_only=True``.  TorchScript runs
        without mrfengine's model code (for deployment elsewhere), but holds
        code, so :func:`load_model` loads it only with ``trust_model_code=True``.
    weights_dtype : {"float32", "float16"}
        How the weights are stored.  float16 halves the file (15.6 MB instead
        of 31.2 MB for MSE-5) and rounds each weight to 11 significant bits;
        :func:`load_model` returns a float32 module either way.  ``model``
        itself is not converted.
    training_sequences : iterable of Sequence
        Every acquisition of the training data (several sites); the card
        accepts data of any of them (and of ``sequence``).
    tissue_targets : {"truth", "derived:<pipeline>"}
        Where the NAWM/GM outputs' training targets came from
        (``ModelCard.tissue_targets``).

    Returns
    -------
    ModelCard
        As written.

    Raises
    ------
    ValidationError
        On a model that does not match the configuration, a missing sequence
        for MRF inputs, a sequence whose frame count differs from the
        network's input channels, an unknown format or weights dtype, or a
        weight beyond the float16 range when float16 is asked.
    """
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {FORMATS}; got {format!r}")
    _check_weights_dtype(weights_dtype)
    check_tissue_targets(tissue_targets)
    _check_model(model, config)
    if sequence is not None and config.input_kind == "mrf" and sequence.n_measurements != config.in_channels:
        raise ValidationError(f"sequence {sequence.name} has {sequence.n_measurements} frames but network "
                              f"{config.name} takes {config.in_channels} input channels")
    path = _check_artifact_path(path)
    _write_artifact(model, path, format=format, weights_dtype=weights_dtype)
    card = ModelCard(
        config=config,
        normalisation=normalisation,
        format=format,
        artifact=path.name,
        artifact_sha256=file_sha256(path),
        sequence=sequence_entry(sequence),
        training_cohort_hash=cohort_hash,
        metrics=json.loads(json.dumps(dict(metrics or {}))),  # JSON-serialisable, and a copy
        software=software_versions(),
        weights_dtype=weights_dtype,
        training_sequences=tuple({"name": q.name, "digest": q.digest()} for q in training_sequences),
        tissue_targets=tissue_targets,
    )
    write_card(card, path)
    log.debug("saved %s (%s, %s weights) and its card %s", path, format, weights_dtype, card_path(path).name)
    return card


def resave_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    weights_dtype: str = "float16",
    format: str | None = None,
    trust_model_code: bool = False,
) -> ModelCard:
    """Write a saved network again with its weights stored as ``weights_dtype``.

    The source is loaded with :func:`load_model` (so its card and hash are
    checked) and written to ``dst`` in ``format`` (default: the source's).  The new card keeps
    the configuration, normalisation, sequence, training cohort hash, tissue
    targets and metrics of the source; the artifact's file name, SHA-256 and weights
    dtype are the new file's.  ``software`` names the versions that wrote
    the new file, and keeps those that trained the network as
    ``trained_mrfengine``/``trained_torch``.

    Parameters
    ----------
    src : path
        A saved model (``NAME.pt`` or ``NAME.card.json``).
    dst : path
        The new artifact (``.pt``); its card is written beside it.  It may be
        ``src`` itself (the file is replaced atomically, then its card).
    weights_dtype : {"float16", "float32"}
        Storage of the new file's weights.  float32 from a float16 source is
        exact but does not restore the rounded digits.
    format : {"state_dict", "torchscript"}, optional
        Format of the new file; default the source's.  ``"state_dict"``
        turns a (trusted) TorchScript file into data-only weights.
    trust_model_code : bool
        Load a TorchScript source (:func:`load_model`); only for files you trust.

    Returns
    -------
    ModelCard
        The new card.

    Raises
    ------
    InputFileError, ValidationError
        As :func:`load_model` for the source; on a bad ``dst`` or dtype, or a
        weight beyond the float16 range.
    """
    _check_weights_dtype(weights_dtype)
    if format is not None and format not in FORMATS:
        raise ValidationError(f"format must be one of {FORMATS}; got {format!r}")
    dst = _check_artifact_path(dst)
    loaded = load_model(src, trust_model_code=trust_model_code)
    old = loaded.card
    format = old.format if format is None else format
    module = loaded.module
    if isinstance(module, torch.jit.ScriptModule):  # a trusted TorchScript source: its weights into our own network
        own = old.config.build()
        own.load_state_dict(module.state_dict(), strict=True)
        module = own.eval()
    _write_artifact(module, dst, format=format, weights_dtype=weights_dtype)
    trained = {k: v for k, v in old.software.items() if k.startswith("trained_")} \
        or {f"trained_{k}": v for k, v in old.software.items()}
    card = ModelCard(
        config=old.config,
        normalisation=old.normalisation,
        format=format,
        artifact=dst.name,
        artifact_sha256=file_sha256(dst),
        sequence=old.sequence,
        training_cohort_hash=old.training_cohort_hash,
        metrics=old.metrics,
        software={**trained, **software_versions()},
        weights_dtype=weights_dtype,
        training_sequences=old.training_sequences,
        tissue_targets=old.tissue_targets,
    )
    write_card(card, dst)
    log.info("re-saved %s as %s (%s, %s weights, %d bytes)", loaded.path, dst, format, weights_dtype,
             dst.stat().st_size)
    return card


def _is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip archive (it holds ``code/`` or ``constants.pkl``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):  # not a zip: torch.load judges it
        return False


def _first_line(exc: BaseException) -> str:
    """The informative line of a torch error (whose first lines are boilerplate)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln
    return lines[0] if lines else type(exc).__name__


def _holds_objects(exc: BaseException) -> bool:
    """Whether torch's weights-only unpickler refused an object (a GLOBAL: a class or function), not junk bytes."""
    return "global" in str(exc).lower()


def _read_state_dict(artifact: Path, cpath: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of a state-dict artifact, read as data only (``weights_only=True``).

    Raises
    ------
    UntrustedModelError
        The file is a TorchScript archive (code), whatever its card says.
    InputFileError
        The file holds objects other than tensors (refused by the
        ``weights_only`` unpickler, which never runs them), is no weights file,
        or is not a mapping of names to tensors.
    """
    import pickle

    if _is_torchscript_archive(artifact):
        raise UntrustedModelError(f"{artifact}: the file is a TorchScript archive, but its card {cpath.name} says "
                                  f"state_dict; refused: {TRUST_HINT}")
    try:
        state = torch.load(artifact, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _holds_objects(exc):
            raise InputFileError(f"{artifact}: the file holds objects other than tensors; refused (weights_only): "
                                 f"{_first_line(exc)}") from exc
        raise InputFileError(f"{artifact}: cannot read the weights (no PyTorch weights file): "
                             f"{_first_line(exc)}") from exc
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
        raise InputFileError(f"{artifact}: cannot read the weights: {_first_line(exc)}") from exc
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputFileError(f"{artifact}: the file is not a state dict (a mapping of names to tensors); "
                             f"got {type(state).__name__}")
    return state


def _fit_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], artifact: Path, cpath: Path) -> None:
    """Copy ``state`` into ``module`` (converting to its float32), or say in one line why the weights do not fit."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(want[k].shape)})" for k in want
              if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weights ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown weights ({', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} of other shapes ({', '.join(shapes[:2])})")
    if problems:
        raise ValidationError(f"{artifact}: the weights do not fit the network its card {cpath.name} describes "
                              f"({'; '.join(problems)}); the file or its card was changed or damaged")
    with torch.no_grad():
        module.load_state_dict(state, strict=True)  # copies (and so converts) into the float32 parameters


def load_model(
    path: str | os.PathLike,
    *,
    expect_channels: int | None = None,
    expect_sequence: Sequence | str | None = None,
    expect_input_kind: str | None = None,
    device: str | torch.device = "cpu",
    trust_model_code: bool = False,
    script: bool = False,
) -> LoadedModel:
    """Load a saved network after checking its card against the data.

    A state dict is read as data only (``torch.load(weights_only=True)``) into
    mrfengine's own network built from the card's configuration.  A
    TorchScript artifact runs code stored in the file, so it is refused unless
    ``trust_model_code`` is true.

    Parameters
    ----------
    path : path
        ``NAME.pt`` or ``NAME.card.json``.
    expect_channels : int, optional
        Input channels of the data; refused when the card says otherwise.
    expect_sequence : Sequence or str, optional
        The data's sequence (or digest); refused when it is not the card's.
    expect_input_kind : {"mrf", "maps"}, optional
        Refused when the network takes the other kind.
    device : str or torch.device
        Where the module is placed.
    trust_model_code : bool
        Load a TorchScript artifact (``torch.jit.load``, which runs the code
        stored in the file).  Only for models from a source you trust.
    script : bool
        Return a TorchScript module compiled from mrfengine's own code
        (``torch.jit.script`` of the network filled with the file's weights)
        instead of the eager module; a trusted TorchScript artifact is
        TorchScript already.

    Returns
    -------
    LoadedModel
        The module in eval mode with float32 weights (also when the file
        stores float16: see ``ModelCard.weights_dtype``), its card and the
        artifact's path.

    Raises
    ------
    UntrustedModelError
        A TorchScript artifact without ``trust_model_code``, or a TorchScript
        archive whose card says state_dict (names the file and says why).
    InputFileError
        Card or artifact missing or unreadable, or a state dict holding
        objects other than tensors (names the file).
    ValidationError
        The card does not fit the data, is malformed, its hash does not
        match the artifact, the weights do not fit the card's network, or
        they are not stored in the dtype the card says (names the file and
        the mismatch).
    """
    cpath = card_path(path)
    card = read_card(cpath)
    check_card(card, channels=expect_channels, sequence=expect_sequence, input_kind=expect_input_kind, source=cpath)
    artifact = cpath.with_name(card.artifact)
    if not artifact.is_file():
        raise InputFileError(f"{artifact}: model file named by its card {cpath.name} not found")
    if card.format == "torchscript" and not trust_model_code:
        raise UntrustedModelError(f"{artifact}: a TorchScript model (its card {cpath.name} says so); refused: "
                                  f"{TRUST_HINT}")
    digest = file_sha256(artifact)
    if digest != card.artifact_sha256:
        raise ValidationError(f"{artifact}: the file does not match its card {cpath.name} (sha256 {digest[:12]}, "
                              f"card says {card.artifact_sha256[:12]}); it was changed or replaced after saving")
    device = torch.device(device)
    if card.format == "torchscript":
        try:
            with _quiet_torchscript():
                module = torch.jit.load(str(artifact), map_location=device)
        except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
            raise InputFileError(f"{artifact}: cannot load the {card.format} model: {_first_line(exc)}") from exc
        state = module.state_dict()
    else:
        state = _read_state_dict(artifact, cpath, device)
        module = card.config.build().to(device)
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()
                     if isinstance(t, torch.Tensor) and t.is_floating_point()})
    if stored not in ([], [card.weights_dtype]):
        raise ValidationError(f"{artifact}: the weights are stored as {', '.join(stored)}, but its card "
                              f"{cpath.name} says {card.weights_dtype}")
    if card.format == "state_dict":
        _fit_state_dict(module, state, artifact, cpath)
    _cast_floating(module, torch.float32)  # float16 storage computes in float32: inference code never sees the stored dtype
    module.eval()
    got = (getattr(module, "in_channels", None), getattr(module, "out_channels", None))
    if got != (card.config.in_channels, card.config.out_channels):
        raise ValidationError(f"{artifact}: the network has (in, out) channels {got}; its card says "
                              f"({card.config.in_channels}, {card.config.out_channels})")
    if script and not isinstance(module, torch.jit.ScriptModule):
        with _quiet_torchscript():
            module = torch.jit.script(module)
    return LoadedModel(module=module, card=card, path=artifact)
