"""The model card: what a saved network takes, returns and was trained on.

A saved model is two files side by side (:mod:`mrfengine.nn.artifact` writes
and reads the network)::

    NAME.pt          the network: a state dict (weights only, the default) or
                     TorchScript, its weights stored in float32 or float16
    NAME.card.json   the model card: inputs, outputs with units and target
                     scaling, input normalisation, the acquisition sequence
                     (digest), the training cohort's hash, metrics, the
                     configuration, and the artifact's SHA-256

This module owns the card: its schema (:data:`CARD_SCHEMA`,
:class:`ModelCard` and its JSON layout), reading it (:func:`read_card`,
malformed cards refused naming the file), writing it (:func:`write_card`,
atomically) and checking data against it (:func:`check_card`: channel count,
input kind, acquisition sequence).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_text
from .._validate import NAME_RE, is_sha256
from ..errors import InputFileError, ValidationError
from ..sequence import Sequence
from .configs import NetworkConfig
from .normalisation import Normalisation

__all__ = [
    "CARD_SCHEMA",
    "FORMATS",
    "WEIGHTS_DTYPES",
    "ModelCard",
    "card_path",
    "check_card",
    "file_sha256",
    "read_card",
    "write_card",
]

CARD_SCHEMA = "mrfengine.model_card/1"
FORMATS = ("torchscript", "state_dict")
WEIGHTS_DTYPES = ("float32", "float16")
_CARD_SUFFIX = ".card.json"


def card_path(path: str | os.PathLike) -> Path:
    """The model card beside an artifact: ``NAME.pt`` -> ``NAME.card.json``
    (a card path is returned as it is)."""
    path = Path(path)
    if path.name.endswith(_CARD_SUFFIX):
        return path
    return path.with_name(path.name[: -len(path.suffix)] + _CARD_SUFFIX if path.suffix else path.name + _CARD_SUFFIX)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks: the card's ``artifact_sha256``."""
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
    tissue_targets : str
        Where the NAWM and GM outputs' training targets came from: ``truth``
        (the phantom's tissue fractions, ``truth/WM`` and ``truth/GM``) or
        ``derived:<pipeline>`` (the probability maps of that pipeline's
        ``segment`` stage, as the paper's came from SPM on the conventional T1
        map).  In the JSON under ``training``; cards written before this field
        existed mean ``truth``.
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
    tissue_targets: str = "truth"

    def __post_init__(self) -> None:
        check_tissue_targets(self.tissue_targets)
        object.__setattr__(self, "training_sequences", tuple(dict(s) for s in self.training_sequences or ()))
        for entry in self.training_sequences:
            if not {"name", "digest"} <= set(entry) or not is_sha256(entry["digest"]):
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
            if not is_sha256(self.sequence["digest"]):
                raise ValidationError(f"card sequence digest must be 64 hex digits; got {self.sequence['digest']!r}")
        if not is_sha256(self.artifact_sha256):
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
                if is_sha256(digest):
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
                         "sequences": [dict(e) for e in self.training_sequences],
                         "tissue_targets": self.tissue_targets},
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
            tissue_targets=training.get("tissue_targets", "truth"),
        )


def check_tissue_targets(value: Any) -> str:
    """``value`` if it is ``truth`` or ``derived:<pipeline>`` with a valid pipeline name
    (:attr:`ModelCard.tissue_targets`).

    Raises
    ------
    ValidationError
        Anything else.
    """
    if value == "truth" or (isinstance(value, str) and value.startswith("derived:")
                            and bool(NAME_RE.match(value[len("derived:"):]))):
        return value
    raise ValidationError(f"tissue_targets must be 'truth' or 'derived:<pipeline>'; got {value!r}")


def sequence_entry(sequence: Sequence | None) -> dict[str, Any] | None:
    """The card's ``sequence`` entry of an acquisition (None for networks that take maps)."""
    if sequence is None:
        return None
    if not isinstance(sequence, Sequence):
        raise ValidationError(f"sequence must be a mrfengine Sequence or None; got {type(sequence).__name__}")
    return {"name": sequence.name, "digest": sequence.digest(), "description": sequence.to_dict()}


def write_card(card: ModelCard, path: Path) -> None:
    """Write ``card`` beside the artifact ``path`` (``NAME.pt`` -> ``NAME.card.json``), atomically."""
    atomic_write_text(card_path(path), json.dumps(card.to_dict(), indent=2) + "\n")


def software_versions() -> dict[str, str]:
    """Versions of mrfengine and torch, for the card's ``software``."""
    from .. import __version__

    return {"mrfengine": __version__, "torch": torch.__version__}


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
