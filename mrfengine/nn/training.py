"""Training building blocks: target scaling, one optimisation step, checkpoints.

The training loop itself (data sampling from the cohort store, epochs,
validation, ``mrfengine train CONFIG``) composes these; they hold no loop
state of their own, so a run can be resumed from any checkpoint.

* :func:`to_network_units` / :func:`to_physical_units`: targets in the
  cohort's units (T1, T2* in ms; probabilities) to what the network regresses
  and back (:mod:`mrfengine.nn.configs`, "Target scaling").
* :func:`make_optimizer`: Adam with the configuration's learning rate (1e-4
  in the paper).
* :func:`train_step`, :func:`evaluate_batch`: one batch forward (and backward).
* :func:`save_checkpoint`, :func:`load_checkpoint`: model, optimiser and RNG
  state plus the configuration and normalisation, written atomically and read
  with ``torch.load(weights_only=True)`` (tensors and plain containers only).
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
from .configs import NetworkConfig
from .artifact import _first_line, _holds_objects
from .losses import multi_output_loss
from .normalisation import Normalisation

__all__ = [
    "CHECKPOINT_FORMAT",
    "to_network_units",
    "to_physical_units",
    "make_optimizer",
    "train_step",
    "evaluate_batch",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "mrfengine.checkpoint/1"


def _channel_view(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, *([1] * (like.dim() - 2)))


def _check_channels(x: torch.Tensor, config: NetworkConfig, name: str) -> None:
    if x.dim() < 3 or x.shape[1] != config.out_channels:
        raise ValidationError(f"{name} must be (N, {config.out_channels}, *spatial) for network {config.name}; "
                              f"got {tuple(x.shape)}")


def to_network_units(targets: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Targets (N, C_out, *spatial) in the outputs' units (ms, probability) ->
    what the network regresses: divided by each output's ``scale``.  Dice
    targets (probabilities) stay as they are: their scale is 1."""
    _check_channels(targets, config, "targets")
    return targets / _channel_view([o.scale for o in config.outputs], targets)


def to_physical_units(outputs: torch.Tensor, config: NetworkConfig) -> torch.Tensor:
    """Network outputs (N, C_out, *spatial) -> the outputs' units: the output
    activation (sigmoid for Dice outputs), then times ``scale``."""
    _check_channels(outputs, config, "outputs")
    sig = [o.activation == "sigmoid" for o in config.outputs]
    if any(sig):
        mask = torch.tensor(sig, device=outputs.device).view(1, -1, *([1] * (outputs.dim() - 2)))
        outputs = torch.where(mask, torch.sigmoid(outputs), outputs)
    return outputs * _channel_view([o.scale for o in config.outputs], outputs)


def make_optimizer(model: torch.nn.Module, config: NetworkConfig) -> torch.optim.Adam:
    """Adam over the model's parameters with ``config.learning_rate`` (the paper's optimiser)."""
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def _loss(model, inputs, targets, config, mask, impl):
    if inputs.dim() != 4 or inputs.shape[1] != config.in_channels:
        raise ValidationError(f"inputs must be (N, {config.in_channels}, H, W) for network {config.name}; "
                              f"got {tuple(inputs.shape)}")
    _check_channels(targets, config, "targets")
    pred = model(inputs)
    return multi_output_loss(pred, targets.to(pred.dtype), kinds=config.loss_kinds, weights=config.loss_weights,
                             mask=mask, impl=impl)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: NetworkConfig,
    mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> float:
    """One optimisation step on a batch; returns the batch loss before the step.

    Parameters
    ----------
    model : UNet2d
        Put in training mode (dropout active).
    optimizer : torch.optim.Optimizer
    inputs : Tensor, (N, C_in, H, W)
        Normalised network inputs.
    targets : Tensor, (N, C_out, H, W)
        In network units (:func:`to_network_units`).
    config : NetworkConfig
        Loss kinds and weights per output.
    mask : Tensor, optional
        Voxels that count in the loss.
    impl : {"auto", "triton", "torch"}
        Implementation of the elementwise loss (:func:`mrfengine.nn.fused_loss`).

    Returns
    -------
    float
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(model, inputs, targets, config, mask, impl)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def evaluate_batch(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: NetworkConfig,
    mask: torch.Tensor | None = None,
) -> float:
    """The loss of a batch in evaluation mode (no dropout, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(_loss(model, inputs, targets, config, mask, "auto"))
    finally:
        model.train(was_training)


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
