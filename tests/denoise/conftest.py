"""Shared fixtures of the denoiser tests: small, seeded, built in memory."""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.denoise._synthetic import lowrank_rician


@pytest.fixture(scope="session")
def lowrank_small() -> tuple[np.ndarray, np.ndarray, float]:
    """(clean, noisy float64, sigma) of shape (12, 11, 9, 35)."""
    return lowrank_rician((12, 11, 9), snr=20, seed=3)
