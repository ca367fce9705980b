"""Synthetic 4D series with known noise, for the denoiser's tests and benchmarks.

Not a brain simulator (that is :mod:`mrfengine.phantom`): two small, fast
generators whose noise-free signal and noise level are known exactly.
"""

from __future__ import annotations

import numpy as np

from ..noise import rician, wm_signal_level
from ..dictionary import fingerprints
from ..sequence import Sequence, hermann2021
from ..tissue import TISSUES

__all__ = ["lowrank_rician", "mrf_phantom"]


def _smooth_maps(shape: tuple[int, int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` smooth positive maps (sums of low-frequency waves) in [0.5, 1.5]."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, s) for s in shape], indexing="ij")
    maps = np.empty(shape + (n,))
    for k in range(n):
        direction = rng.normal(size=3)
        phase = rng.uniform(0, 2 * np.pi)
        arg = sum(d * g for d, g in zip(direction, grids))
        maps[..., k] = 1.0 + 0.5 * np.sin(2.0 * arg + phase)
    return maps


def lowrank_rician(
    shape: tuple[int, int, int] = (24, 24, 12),
    *,
    n_frames: int = 35,
    rank: int = 4,
    snr: float = 20.0,
    sigma: float = 1.0,
    seed: int = 0,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, float]:
    """A rank-``rank`` signal (smooth maps x positive frame profiles) plus Rician noise.

    Returns
    -------
    clean : ndarray, shape + (n_frames,)
    noisy : ndarray, same shape, ``dtype``
        ``|clean + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``.
    sigma : float
        The noise level per channel; the mean of ``clean`` is ``snr * sigma``.
    """
    rng = np.random.default_rng(seed)
    maps = _smooth_maps(tuple(shape), rank, rng)
    profiles = np.abs(rng.normal(size=(rank, n_frames))) + 0.2
    clean = maps @ profiles
    clean *= snr * sigma / clean.mean()
    noisy = rician(clean, sigma, rng).astype(dtype)
    return clean, noisy, float(sigma)


def mrf_phantom(
    shape: tuple[int, int, int] = (40, 40, 10),
    *,
    snr: float = 50.0,
    sequence: Sequence | None = None,
    seed: int = 0,
    dtype: type = np.float32,
) -> dict[str, np.ndarray | float]:
    """MRF-EPI magnitude series of a head-like phantom, ``(X, Y, Z, 35)``.

    An ellipsoidal brain in a background of pure noise: a grey-matter rim
    around white matter, CSF outside the brain and in two ventricles, with
    partial-volume edges about one voxel wide and a smooth B1 field
    (0.8-1.2).  Signals are mrfengine's fingerprints for each slice's slot
    (slices taken from the middle of the sequence), noise is Rician with
    ``sigma = wm_signal_level(sequence) / snr`` (mrfengine's SNR convention).

    Returns
    -------
    dict
        ``clean``, ``noisy`` (same shape), ``sigma`` (float), ``brain``
        (bool mask of voxels with any tissue), ``fractions`` (X, Y, Z, 3:
        WM, GM, CSF).
    """
    seq = hermann2021(1) if sequence is None else sequence
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1, 1, nz), indexing="ij"
    )
    voxel = 2.0 / max(nx, ny)

    def inside(radius: float, cx: float = 0.0, cy: float = 0.0, squash: float = 1.0) -> np.ndarray:
        dist = np.sqrt(((x - cx) / 0.85) ** 2 + ((y - cy) / 0.95) ** 2 + (z / 2.5) ** 2) * squash
        return 1.0 / (1.0 + np.exp((dist - radius) / (0.5 * voxel)))

    head = inside(0.95)
    brain = inside(0.85)
    wm = inside(0.7)
    ventricles = np.maximum(inside(0.12, -0.15, 0.0, squash=1.0), inside(0.12, 0.15, 0.0, squash=1.0))
    frac_csf = np.clip(head - brain + ventricles * wm, 0, 1)
    frac_wm = np.clip(wm * (1 - ventricles), 0, 1)
    frac_gm = np.clip(brain - wm, 0, 1)
    fractions = np.stack([frac_wm, frac_gm, frac_csf], axis=-1)
    b1 = 1.0 + 0.2 * np.tanh(0.8 * x + 0.5 * y - 0.3 * z + rng.uniform(-0.2, 0.2))
    levels = np.linspace(0.75, 1.25, 201)
    b1_index = np.clip(np.rint((b1 - levels[0]) / (levels[1] - levels[0])).astype(int), 0, levels.size - 1)

    clean = np.zeros(shape + (seq.n_measurements,))
    first = max(0, seq.n_slices // 2 - nz // 2)
    for k in range(nz):
        slot = int(seq.slot_of_slice(min(first + k, seq.n_slices - 1)))
        for t, name in enumerate(("WM", "GM", "CSF")):
            tissue = TISSUES[name]
            table = fingerprints(seq, slot, tissue.t1_ms, tissue.t2star_ms, levels, tissue.pd)
            clean[:, :, k] += fractions[:, :, k, t, None] * table[b1_index[:, :, k]]
    sigma = wm_signal_level(seq) / snr
    noisy = rician(clean, sigma, rng).astype(dtype)
    return {
        "clean": clean,
        "noisy": noisy,
        "sigma": float(sigma),
        "brain": fractions.sum(axis=-1) > 0.5,
        "fractions": fractions,
    }
