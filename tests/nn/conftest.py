"""Tiny networks and models for the nn tests (depth 2, 4 filters: milliseconds per forward)."""

import numpy as np
import pytest
import torch

from mrfengine.nn import Normalisation, get_config, save_model
from mrfengine.sequence import hermann2021


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP barriers on a busy
    2-core machine cost more than the arithmetic."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_sequence():
    return hermann2021(1, n_slices=4)


def _tiny_config(name="MSE-5"):
    return get_config(name).with_architecture(depth=2, base_filters=4)


def _tiny_normalisation(n_channels, seed=0):
    rng = np.random.default_rng(seed)
    return Normalisation(tuple(rng.uniform(0.05, 0.2, n_channels)), tuple(rng.uniform(0.05, 0.1, n_channels)))


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(name)``: a Table 1 configuration with depth 2 and 4 filters."""
    return _tiny_config


@pytest.fixture(scope="session")
def tiny_normalisation():
    """``tiny_normalisation(n_channels)``: a fixed, non-trivial per-channel normalisation."""
    return _tiny_normalisation


@pytest.fixture
def saved_model(tmp_path, tiny_sequence):
    """A tiny MSE-5 network saved (a state dict, the default format): (path, config, module)."""
    cfg = _tiny_config()
    net = cfg.build(seed=1)
    path = tmp_path / "model" / "mse5.pt"
    save_model(net, path, config=cfg, normalisation=_tiny_normalisation(35), sequence=tiny_sequence,
               cohort_hash="c0ffee", metrics={"test": {"lesion_dice": 0.5}})
    return path, cfg, net
