"""Synthetic data for tests and benchmarks (and for other projects' tests).

Nothing here is used by the engine itself.
"""

from __future__ import annotations

import numpy as np

from .dictionary import fingerprints
from .noise import rician, wm_signal_level
from .sequence import Sequence

__all__ = ["random_fingerprints"]

def random_fingerprints(
    sequence: Sequence,
    slot: int,
    n: int,
    rng: np.random.Generator,
    *,
    snr: float = 50.0,
    t1_ms: tuple[float, float] = (600.0, 2000.0),
    t2star_ms: tuple[float, float] = (25.0, 120.0),
    b1: tuple[float, float] = (0.7, 1.3),
    m0: float = 0.8,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` voxels with uniformly random T1, T2* and B1 (off any grid) and Rician
    noise at ``snr`` relative to white matter (see :func:`wm_signal_level`).

    Returns
    -------
    noisy : ndarray, float32, (n, n_measurements)
    truth : dict of (n,) arrays: T1, T2star (ms), B1
    """
    truth = {"T1": rng.uniform(*t1_ms, n), "T2star": rng.uniform(*t2star_ms, n), "B1": rng.uniform(*b1, n)}
    clean = fingerprints(sequence, slot, truth["T1"], truth["T2star"], truth["B1"], m0)
    noisy = rician(clean, wm_signal_level(sequence) / snr, rng)
    return noisy.astype(np.float32), truth
