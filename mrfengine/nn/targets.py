"""Target scaling: what the network regresses, and back to the outputs' units.

Each output of a network configuration has a ``scale`` and an ``activation``
(:mod:`mrfengine.nn.configs`, "Target scaling"): T1 and T2* in ms are
regressed divided by their scale, probabilities as they are (scale 1) behind a
sigmoid for Dice outputs.  Training (:mod:`mrfengine.nn.train`), the patch
sampler (:mod:`mrfengine.nn.data`) and inference (:mod:`mrfengine.nn.inference`)
convert through these two functions only.
"""

from __future__ import annotations

import torch

from ..errors import ValidationError
from .configs import NetworkConfig

__all__ = ["to_network_units", "to_physical_units"]


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
