"""Saving and loading trained networks: an artifact plus its model card.

A saved model is two files side by side::

    NAME.pt          the network: TorchScript (the deployment format, runs
                     without mrfengine's model code) or a state dict
    NAME.card.json   the model card: inputs, outputs with units and target
                     scaling, input normalisation, the acquisition sequence
                     (digest), the training cohort's hash, metrics, the
                     configuration, and the artifact's SHA-256

The card is written last (after the artifact, both atomically), so a crash
never leaves a model that loads.  :func:`load_model` refuses a card that does
not fit the data (channel count, sequence) or its artifact (hash), with a
:class:`~mrfengine.errors.ValidationError` that names the file and the
mismatch.  State dicts are read with ``torch.load(weights_only=True)``, which
unpickles tensors only, never arbitrary objects.

TorchScript is deprecated in torch >= 2.9 in favour of ``torch.export``, but
it is still the one format that ``torch.jit.load`` runs anywhere without the
Python model code; its deprecation warnings are silenced here, and only
those (:func:`_quiet_torchscript`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputFileError, ValidationError
from ..sequence import Sequence
from .configs import NetworkConfig
from .normalisation import Normalisation

log = logging.getLogger(__name__)

__all__ = [
    "CARD_SCHEMA",
    "FORMATS",
    "ModelCard",
    "LoadedModel",
    "card_path",
    "save_model",
    "load_model",
    "read_card",
    "check_card",
]

CARD_SCHEMA = "mrfengine.model_card/1"
FORMATS = ("torchscript", "state_dict")
_CARD_SUFFIX = ".card.json"


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Silence exactly the "`torch.jit.X` is deprecated" warnings of torch >= 2.9.

    TorchScript is our deployment format on purpose (see the module
    docstring); every other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield


def card_path(path: str | os.PathLike) -> Path:
    """The model card beside an artifact: ``NAME.pt`` -> ``NAME.card.json``
    (a card path is returned as it is)."""
    path = Path(path)
    if path.name.endswith(_CARD_SUFFIX):
        return path
    return path.with_name(path.name[: -len(path.suffix)] + _CARD_SUFFIX if path.suffix else path.name + _CARD_SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """What a saved network takes, returns and was trained on.

    Attributes
    ----------
    config : NetworkConfig
        Architecture, inputs, outputs (names, units, target scaling, loss).
    normalisation : Normalisation
        Per-input-channel mean and std applied before the network.
    format : str
        ``torchscript`` or ``state_dict``.
    artifact : str
        File name of the network beside the card.
    artifact_sha256 : str
        SHA-256 of that file.
    sequence : dict or None
        ``{"name", "digest", "description"}`` of the acquisition the network
        was trained on (``Sequence.to_dict()`` as description); None for
        networks that take maps.
    training_cohort_hash : str or None
        Identifies the training data (the cohort store's content hash).
    metrics : dict
        Evaluation results (e.g. ``{"test": {"lesion_dice": 0.61}}``).
    software : dict
        Versions of mrfengine and torch that wrote the card.
    """

    config: NetworkConfig
    normalisation: Normalisation
    format: str
    artifact: str
    artifact_sha256: str
    sequence: dict[str, Any] | None = None
    training_cohort_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValidationError(f"model format must be one of {FORMATS}; got {self.format!r}")
        if self.normalisation.n_channels != self.config.in_channels:
            raise ValidationError(f"normalisation has {self.normalisation.n_channels} channels but network "
                                  f"{self.config.name} takes {self.config.in_channels}")
        if self.config.input_kind == "mrf" and self.sequence is None:
            raise ValidationError(f"network {self.config.name} takes an MRF series: its card needs the sequence")
        if self.sequence is not None:
            if not isinstance(self.sequence, dict) or not {"name", "digest"} <= set(self.sequence):
                raise ValidationError(f"card sequence must be a mapping with 'name' and 'digest'; "
                                      f"got {self.sequence!r}")
            if not re.fullmatch(r"[0-9a-f]{64}", str(self.sequence["digest"])):
                raise ValidationError(f"card sequence digest must be 64 hex digits; got {self.sequence['digest']!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", str(self.artifact_sha256)):
            raise ValidationError(f"artifact_sha256 must be 64 hex digits; got {self.artifact_sha256!r}")
        if not isinstance(self.metrics, dict):
            raise ValidationError(f"metrics must be a mapping; got {type(self.metrics).__name__}")

    # ---------------------------------------------------------------- views
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.config.output_names

    @property
    def sequence_digest(self) -> str | None:
        return None if self.sequence is None else self.sequence["digest"]

    # ------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of the card (the first sections are for people; ``config`` is authoritative)."""
        cfg = self.config
        return {
            "schema": CARD_SCHEMA,
            "name": cfg.name,
            "description": cfg.description,
            "format": self.format,
            "artifact": {"file": self.artifact, "sha256": self.artifact_sha256},
            "inputs": {
                "kind": cfg.input_kind,
                "channels": cfg.in_channels,
                "names": list(cfg.input_names),
                "unit": "arbitrary (MRF magnitude); channel k is frame k" if cfg.input_kind == "mrf" else "ms",
                "layout": "(N, C, H, W); H and W multiples of size_multiple (pad whole slices)",
                "size_multiple": cfg.size_multiple,
            },
            "normalisation": self.normalisation.to_dict(),
            "outputs": [
                {"name": o.name, "unit": o.unit, "scale": o.scale, "activation": o.activation,
                 "description": o.description}
                for o in cfg.outputs
            ],
            "target_scaling": "value in 'unit' = activation(network output) * scale",
            "sequence": self.sequence,
            "training": {"cohort_hash": self.training_cohort_hash},
            "metrics": self.metrics,
            "software": self.software,
            "config": cfg.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """Parse :meth:`to_dict` output.

        Raises
        ------
        ValidationError
            On another schema, missing sections, or outputs/inputs that
            disagree with the configuration.
        """
        if not isinstance(data, dict):
            raise ValidationError(f"a model card must be a JSON object; got {type(data).__name__}")
        if data.get("schema") != CARD_SCHEMA:
            raise ValidationError(f"model card schema must be {CARD_SCHEMA!r}; got {data.get('schema')!r}")
        missing = sorted({"format", "artifact", "inputs", "normalisation", "outputs", "sequence", "training",
                          "metrics", "config"} - set(data))
        if missing:
            raise ValidationError(f"model card lacks sections {missing}")
        config = NetworkConfig.from_dict(data["config"])
        artifact = data["artifact"]
        if not isinstance(artifact, dict) or not isinstance(artifact.get("file"), str):
            raise ValidationError(f"model card 'artifact' must be {{'file': ..., 'sha256': ...}}; got {artifact!r}")
        inputs = data["inputs"]
        if not isinstance(inputs, dict) or inputs.get("channels") != config.in_channels \
                or inputs.get("kind") != config.input_kind:
            raise ValidationError(f"model card 'inputs' {inputs!r} disagree with its configuration "
                                  f"({config.input_kind}, {config.in_channels} channels)")
        names = [o.get("name") if isinstance(o, dict) else None for o in data["outputs"]] \
            if isinstance(data["outputs"], list) else None
        if names != list(config.output_names):
            raise ValidationError(f"model card 'outputs' {names} disagree with its configuration "
                                  f"{list(config.output_names)}")
        training = data["training"] if isinstance(data["training"], dict) else {}
        return cls(
            config=config,
            normalisation=Normalisation.from_dict(data["normalisation"]),
            format=data["format"],
            artifact=artifact["file"],
            artifact_sha256=str(artifact.get("sha256")),
            sequence=data["sequence"],
            training_cohort_hash=training.get("cohort_hash"),
            metrics=data["metrics"],
            software=dict(data.get("software") or {}),
        )


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference: the module (eval mode), its card, its file."""

    module: torch.nn.Module
    card: ModelCard
    path: Path


def _sequence_entry(sequence: Sequence | None) -> dict[str, Any] | None:
    if sequence is None:
        return None
    if not isinstance(sequence, Sequence):
        raise ValidationError(f"sequence must be a mrfengine Sequence or None; got {type(sequence).__name__}")
    return {"name": sequence.name, "digest": sequence.digest(), "description": sequence.to_dict()}


def _check_model(model: torch.nn.Module, config: NetworkConfig) -> None:
    if not isinstance(model, torch.nn.Module):
        raise ValidationError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    got = (getattr(model, "in_channels", None), getattr(model, "out_channels", None))
    if got != (config.in_channels, config.out_channels):
        raise ValidationError(f"model has (in, out) channels {got}; configuration {config.name} says "
                              f"({config.in_channels}, {config.out_channels})")


def save_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    config: NetworkConfig,
    normalisation: Normalisation,
    sequence: Sequence | None = None,
    cohort_hash: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    format: str = "torchscript",
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
    format : {"torchscript", "state_dict"}
        TorchScript runs without the model code; a state dict is rebuilt from
        the configuration (and loads with ``weights_only=True``).

    Returns
    -------
    ModelCard
        As written.

    Raises
    ------
    ValidationError
        On a model that does not match the configuration, a missing sequence
        for MRF inputs, or a sequence whose frame count differs from the
        network's input channels.
    """
    if format not in FORMATS:
        raise ValidationError(f"format must be one of {FORMATS}; got {format!r}")
    _check_model(model, config)
    if sequence is not None and config.input_kind == "mrf" and sequence.n_measurements != config.in_channels:
        raise ValidationError(f"sequence {sequence.name} has {sequence.n_measurements} frames but network "
                              f"{config.name} takes {config.in_channels} input channels")
    path = Path(path)
    if path.suffix != ".pt":
        raise ValidationError(f"path must end in .pt; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    was_training = model.training
    model.eval()
    try:
        if format == "torchscript":
            with _quiet_torchscript():
                scripted = torch.jit.script(model)
                torch.jit.save(scripted, str(tmp))
        else:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        model.train(was_training)
    from .. import __version__

    card = ModelCard(
        config=config,
        normalisation=normalisation,
        format=format,
        artifact=path.name,
        artifact_sha256=_sha256(path),
        sequence=_sequence_entry(sequence),
        training_cohort_hash=cohort_hash,
        metrics=json.loads(json.dumps(dict(metrics or {}))),  # JSON-serialisable, and a copy
        software={"mrfengine": __version__, "torch": torch.__version__},
    )
    cpath = card_path(path)
    ctmp = cpath.with_name(f".{cpath.name}.tmp{os.getpid()}")
    ctmp.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    os.replace(ctmp, cpath)
    log.debug("saved %s (%s) and its card %s", path, format, cpath.name)
    return card


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read and parse the card of a model (give the ``.pt`` or the ``.card.json``).

    Raises
    ------
    InputFileError
        Card missing or not JSON (names the file).
    ValidationError
        Malformed card (names the file).
    """
    cpath = card_path(path)
    if not cpath.is_file():
        raise InputFileError(f"{cpath}: model card not found (a model is NAME.pt plus NAME.card.json)")
    try:
        data = json.loads(cpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{cpath}: cannot read the model card as JSON: {exc}") from exc
    try:
        return ModelCard.from_dict(data)
    except ValidationError as exc:
        raise ValidationError(f"{cpath}: {exc}") from exc


def check_card(
    card: ModelCard,
    *,
    channels: int | None = None,
    sequence: Sequence | str | None = None,
    input_kind: str | None = None,
    source: str | os.PathLike = "model",
) -> None:
    """Refuse data that do not fit a model.

    Parameters
    ----------
    card : ModelCard
    channels : int, optional
        Input channels of the data (frames of an MRF series).
    sequence : Sequence or str, optional
        The data's acquisition (or its digest).
    input_kind : {"mrf", "maps"}, optional
        What the data are.
    source : str or path
        Named in the messages (the card's file).

    Raises
    ------
    ValidationError
        Naming ``source`` and the mismatch.
    """
    cfg = card.config
    if input_kind is not None and input_kind != cfg.input_kind:
        what = {"mrf": "an MRF series", "maps": f"maps ({', '.join(cfg.input_names)})"}
        raise ValidationError(f"{source}: network {cfg.name} takes {what.get(cfg.input_kind, cfg.input_kind)}, "
                              f"but the data are {what.get(input_kind, input_kind)}")
    if channels is not None and int(channels) != cfg.in_channels:
        raise ValidationError(f"{source}: network {cfg.name} takes {cfg.in_channels} input channels; the data have "
                              f"{channels}")
    if sequence is not None:
        digest = sequence.digest() if isinstance(sequence, Sequence) else str(sequence)
        label = sequence.name if isinstance(sequence, Sequence) else digest[:12]
        if card.sequence is None:
            raise ValidationError(f"{source}: network {cfg.name} was not trained on an MRF sequence (it takes maps); "
                                  f"it cannot be checked against sequence {label}")
        if digest != card.sequence_digest:
            raise ValidationError(
                f"{source}: network {cfg.name} was trained for sequence {card.sequence.get('name')!r} (digest "
                f"{card.sequence_digest[:12]}), but the data were acquired with {label!r} (digest {digest[:12]}); "
                "the fingerprints differ, so its predictions would be meaningless")


def load_model(
    path: str | os.PathLike,
    *,
    expect_channels: int | None = None,
    expect_sequence: Sequence | str | None = None,
    expect_input_kind: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a saved network after checking its card against the data.

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

    Returns
    -------
    LoadedModel
        The module in eval mode, its card and the artifact's path.

    Raises
    ------
    InputFileError
        Card or artifact missing or unreadable (names the file).
    ValidationError
        The card does not fit the data, is malformed, or its hash does not
        match the artifact (names the file and the mismatch).
    """
    cpath = card_path(path)
    card = read_card(cpath)
    check_card(card, channels=expect_channels, sequence=expect_sequence, input_kind=expect_input_kind, source=cpath)
    artifact = cpath.with_name(card.artifact)
    if not artifact.is_file():
        raise InputFileError(f"{artifact}: model file named by its card {cpath.name} not found")
    digest = _sha256(artifact)
    if digest != card.artifact_sha256:
        raise ValidationError(f"{artifact}: the file does not match its card {cpath.name} (sha256 {digest[:12]}, "
                              f"card says {card.artifact_sha256[:12]}); it was changed or replaced after saving")
    device = torch.device(device)
    try:
        if card.format == "torchscript":
            with _quiet_torchscript():
                module = torch.jit.load(str(artifact), map_location=device)
        else:
            state = torch.load(artifact, map_location=device, weights_only=True)
            module = card.config.build().to(device)
            module.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:
        raise InputFileError(f"{artifact}: cannot load the {card.format} model: {exc}") from exc
    module.eval()
    got = (getattr(module, "in_channels", None), getattr(module, "out_channels", None))
    if got != (card.config.in_channels, card.config.out_channels):
        raise ValidationError(f"{artifact}: the network has (in, out) channels {got}; its card says "
                              f"({card.config.in_channels}, {card.config.out_channels})")
    return LoadedModel(module=module, card=card, path=artifact)
