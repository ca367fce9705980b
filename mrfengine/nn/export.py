"""Saving and loading trained networks: an artifact plus its model card.

A saved model is two files side by side::

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
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path, atomic_write_text
from ..errors import InputFileError, ValidationError
from ..sequence import Sequence
from .configs import NetworkConfig
from .normalisation import Normalisation

log = logging.getLogger(__name__)

__all__ = [
    "CARD_SCHEMA",
    "FORMATS",
    "WEIGHTS_DTYPES",
    "ModelCard",
    "LoadedModel",
    "card_path",
    "save_model",
    "resave_model",
    "load_model",
    "read_card",
    "UntrustedModelError",
    "TRUST_HINT",
    "check_card",
]

CARD_SCHEMA = "mrfengine.model_card/1"
FORMATS = ("torchscript", "state_dict")
WEIGHTS_DTYPES = ("float32", "float16")
_CARD_SUFFIX = ".card.json"

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
        File name of the network beside the card (a plain name: no folder,
        not ``..``).
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
    weights_dtype : str
        How the artifact stores its floating-point weights: ``float32`` or
        ``float16`` (loaded as float32 either way).  Cards written before
        this field existed mean ``float32``.
    training_sequences : tuple of dict
        ``{"name", "digest"}`` of every acquisition in the training data (a
        cohort of several sites); data of any of them are accepted.
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
    weights_dtype: str = "float32"
    training_sequences: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "training_sequences", tuple(dict(s) for s in self.training_sequences or ()))
        for entry in self.training_sequences:
            if not {"name", "digest"} <= set(entry) or not re.fullmatch(r"[0-9a-f]{64}", str(entry["digest"])):
                raise ValidationError(f"training sequences must be mappings with 'name' and a 64-hex 'digest'; "
                                      f"got {entry!r}")
        if self.format not in FORMATS:
            raise ValidationError(f"model format must be one of {FORMATS}; got {self.format!r}")
        art = self.artifact
        if not isinstance(art, str) or art in ("", ".", "..") or any(c in art for c in "/\\\0") \
                or os.path.isabs(art) or Path(art).name != art:
            raise ValidationError(f"the artifact must be a plain file name beside the card (no folder, not '.' "
                                  f"or '..'); got {art!r}")
        if self.weights_dtype not in WEIGHTS_DTYPES:
            raise ValidationError(f"weights_dtype must be one of {WEIGHTS_DTYPES}; got {self.weights_dtype!r}")
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

    @property
    def accepted_sequences(self) -> dict[str, str]:
        """Digest -> name of every acquisition the network was trained on: the
        card's sequence, its training sequences and (cards of older runs) the
        per-site digests in ``metrics["training_site_sequences"]``."""
        out: dict[str, str] = {}
        if self.sequence is not None:
            out[self.sequence["digest"]] = str(self.sequence.get("name"))
        for entry in self.training_sequences:
            out.setdefault(entry["digest"], str(entry["name"]))
        sites = self.metrics.get("training_site_sequences") if isinstance(self.metrics, dict) else None
        if isinstance(sites, dict):
            for site, digest in sites.items():
                if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
                    out.setdefault(digest, f"site {site}")
        return out

    # ------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of the card (the first sections are for people; ``config`` is authoritative)."""
        cfg = self.config
        return {
            "schema": CARD_SCHEMA,
            "name": cfg.name,
            "description": cfg.description,
            "format": self.format,
            "weights_dtype": self.weights_dtype,
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
            "training": {"cohort_hash": self.training_cohort_hash,
                         "sequences": [dict(e) for e in self.training_sequences]},
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
            weights_dtype=data.get("weights_dtype", "float32"),
            training_sequences=tuple(training.get("sequences") or ()),
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


def _write_card(card: ModelCard, path: Path) -> None:
    """Write the card beside the artifact ``path``, atomically."""
    atomic_write_text(card_path(path), json.dumps(card.to_dict(), indent=2) + "\n")


def _software() -> dict[str, str]:
    from .. import __version__

    return {"mrfengine": __version__, "torch": torch.__version__}


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
        artifact_sha256=_sha256(path),
        sequence=_sequence_entry(sequence),
        training_cohort_hash=cohort_hash,
        metrics=json.loads(json.dumps(dict(metrics or {}))),  # JSON-serialisable, and a copy
        software=_software(),
        weights_dtype=weights_dtype,
        training_sequences=tuple({"name": q.name, "digest": q.digest()} for q in training_sequences),
    )
    _write_card(card, path)
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
    the configuration, normalisation, sequence, training cohort hash and
    metrics of the source; the artifact's file name, SHA-256 and weights
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
        artifact_sha256=_sha256(dst),
        sequence=old.sequence,
        training_cohort_hash=old.training_cohort_hash,
        metrics=old.metrics,
        software={**trained, **_software()},
        weights_dtype=weights_dtype,
        training_sequences=old.training_sequences,
    )
    _write_card(card, dst)
    log.info("re-saved %s as %s (%s, %s weights, %d bytes)", loaded.path, dst, format, weights_dtype,
             dst.stat().st_size)
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
        accepted = card.accepted_sequences
        if digest not in accepted:
            known = ", ".join(f"{n!r} (digest {d[:12]})" for d, n in accepted.items())
            raise ValidationError(
                f"{source}: network {cfg.name} was trained for sequence(s) {known}, but the data were acquired "
                f"with {label!r} (digest {digest[:12]}); "
                "the fingerprints differ, so its predictions would be meaningless")


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
    digest = _sha256(artifact)
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
