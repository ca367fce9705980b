"""Training checkpoints: model, optimiser and RNG state, resumable from any epoch.

:func:`save_checkpoint` writes the model's and optimiser's states, the torch
CPU random state, the configuration and the input normalisation atomically;
:func:`load_checkpoint` reads them with ``torch.load(weights_only=True)``
(tensors and plain containers only: a checkpoint from elsewhere never runs
code) and loads them into a model and optimiser.  The training run
(:mod:`mrfengine.nn.train`) holds no other state, so a run resumed from the
checkpoint of epoch ``e`` ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..errors import InputFileError, ValidationError
from .artifact import _first_line, _holds_objects
from .configs import NetworkConfig
from .normalisation import Normalisation

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "mrfengine.checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` read besides the states it loaded."""

    epoch: int
    config: NetworkConfig
    normalisation: Normalisation
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    config: NetworkConfig,
    normalisation: Normalisation,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a training checkpoint atomically (temporary name, then rename).

    ``extra`` must hold only what ``torch.load(weights_only=True)`` reads back:
    tensors, numbers, strings, bools, None, and lists/tuples/dicts of them.
    The torch CPU random state is stored, so a resumed run draws the same
    dropout masks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "config": config.to_dict(),
        "normalisation": normalisation.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "rng_state": torch.get_rng_state(),
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint (``weights_only=True``) and load its states into
    ``model`` and ``optimizer`` where given.

    Raises
    ------
    InputFileError
        Missing or unreadable file (names it).
    ValidationError
        Another format, or a model whose parameters do not fit the stored ones.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _holds_objects(exc):  # the weights_only unpickler met an object it does not build
            raise InputFileError(f"{path}: the checkpoint holds objects other than tensors and plain values; "
                                 f"refused (weights_only): {_first_line(exc)}") from exc
        raise InputFileError(f"{path}: cannot read the checkpoint: {_first_line(exc)}") from exc
    except (RuntimeError, OSError, ValueError, KeyError, EOFError) as exc:  # truncated, not a zip, ...
        raise InputFileError(f"{path}: cannot read the checkpoint: {_first_line(exc)}") from exc
    keys = ("config", "model", "optimizer", "epoch", "normalisation", "extra")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not all(k in state for k in keys):
        raise ValidationError(f"{path}: not an mrfengine checkpoint ({CHECKPOINT_FORMAT})")
    config = NetworkConfig.from_dict(state["config"])
    if model is not None:
        try:
            model.load_state_dict(state["model"], strict=True)
        except RuntimeError as exc:
            raise ValidationError(f"{path}: the model does not fit the checkpoint of {config.name}: {exc}") from exc
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValidationError(f"{path}: the checkpoint holds no optimiser state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["rng_state"].cpu())
    return Checkpoint(epoch=int(state["epoch"]), config=config,
                      normalisation=Normalisation.from_dict(state["normalisation"]), extra=dict(state["extra"]))
