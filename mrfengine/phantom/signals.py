"""MRF-EPI magnitudes of a phantom slice, noise, EPI distortion, T2w reference.

Each compartment's fingerprint is simulated from its exact parameters with
the timing of the slice's own excitation slot
(:func:`mrfengine.dictionary.fingerprints`, ``sequence.slot_of_slice(z)``);
the compartments of a voxel add as signed (real) signals, which after an
inversion may partly cancel, and the magnitude of the sum is the noise-free
image.  Noise is :mod:`mrfengine.noise`'s: complex Gaussian, then the
magnitude (Rician), in float32; sigma follows its SNR definition (the mean
white-matter fingerprint magnitude over sigma).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..dictionary import fingerprints
from ..noise import noise_sigma, quantization_step, rician
from ..sequence import Sequence
from .tissues import Compartment

__all__ = [
    "noise_sigma",
    "slice_signals",
    "add_rician_noise",
    "quantization_step",
    "distortion_field",
    "distort_slice",
    "t2w_image",
    "T2_MS",
]

# Approximate T2 (not T2*) at 3 T, ms, only for the T2-weighted reference image.
T2_MS = {"WM": 75.0, "GM": 95.0, "DGM": 70.0, "CSF": 1500.0}
_T2_LESION_FACTOR = 1.8


def slice_signals(
    sequence: Sequence,
    z: int,
    compartments: Mapping[str, Compartment],
    b1: np.ndarray,
) -> np.ndarray:
    """Noise-free magnitudes of slice ``z``: (n_frames, Y, X) float32.

    Parameters
    ----------
    sequence : Sequence
    z : int
        Slice position; its slot is ``sequence.slot_of_slice(z)``.
    compartments : mapping of str to Compartment
        Full (Z, Y, X) maps; only slice ``z`` is read.
    b1 : ndarray, (Z, Y, X)
        B1+ factor, shared by the compartments of a voxel.
    """
    slot = int(sequence.slot_of_slice(z))
    shape = b1.shape[1:]
    occupied = np.zeros(shape, dtype=bool)
    for comp in compartments.values():
        occupied |= comp.fraction[z] > 0
    where = np.flatnonzero(occupied)
    acc = np.zeros((where.size, sequence.n_measurements), dtype=np.float64)
    b1z = b1[z].ravel()[where]
    for comp in compartments.values():
        f = comp.fraction[z].ravel()[where]
        sel = np.flatnonzero(f > 1e-5)
        if sel.size == 0:
            continue
        pd_z = comp.pd if np.ndim(comp.pd) == 0 else comp.pd[z]
        pd = np.broadcast_to(pd_z, shape).ravel()[where][sel]
        acc[sel] += fingerprints(
            sequence, slot,
            comp.t1_ms[z].ravel()[where][sel],
            comp.t2star_ms[z].ravel()[where][sel],
            b1z[sel],
            f[sel] * pd,
            magnitude=False,
        )
    out = np.zeros((sequence.n_measurements,) + shape, dtype=np.float32)
    out.reshape(sequence.n_measurements, -1)[:, where] = np.abs(acc).T
    return out


def add_rician_noise(
    clean: np.ndarray, sigma: float, rng: np.random.Generator, *, quantize: bool = True
) -> np.ndarray:
    """The phantom's noise: :func:`mrfengine.noise.rician` in float32 (four
    times faster at these sizes), rounded to :func:`quantization_step` with
    ``quantize`` so the store compresses."""
    return rician(clean, sigma, rng, dtype=np.float32, quantize=quantize)


def distortion_field(
    affine: np.ndarray, shape_zyx: tuple[int, int, int], points_mm: np.ndarray, max_mm: float, random_sd_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """EPI displacement along +Y in voxels, (Z, Y, X) float32.

    Susceptibility hot spots near the frontal sinus and the petrous bones
    (MNI positions of ``points_mm``, the template coordinates of each voxel),
    Gaussian bumps of ``max_mm`` at most, plus a smooth random term.
    """
    from .fields import SmoothField, grid_axes_mm

    spots = (((0.0, 45.0, -20.0), 22.0, 1.0), ((40.0, -15.0, -30.0), 18.0, -0.6), ((-40.0, -15.0, -30.0), 18.0, -0.6))
    disp = np.zeros(tuple(shape_zyx), dtype=np.float32)
    for (cx, cy, cz), width, sign in spots:
        r2 = (points_mm[0] - cx) ** 2 + (points_mm[1] - cy) ** 2 + (points_mm[2] - cz) ** 2
        disp += sign * np.exp(-r2 / (2 * width**2))
    disp *= max_mm * rng.uniform(0.7, 1.0)
    disp += SmoothField(rng, 3)(*grid_axes_mm(affine, shape_zyx), sd=random_sd_mm)
    return (disp / abs(affine[1, 1])).astype(np.float32)


def distort_slice(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Apply an EPI displacement along Y to one slice.

    Parameters
    ----------
    image : ndarray, (n_frames, Y, X)
    displacement : ndarray, (Y, X)
        Voxels along +Y: the voxel at y shows the tissue at y - d(y).

    Returns
    -------
    ndarray, float32, (n_frames, Y, X)
        Linear interpolation along Y, intensities scaled by the Jacobian
        ``1 - dd/dy`` (signal piles up where the mapping compresses).
    """
    ny = image.shape[1]
    y = np.arange(ny, dtype=np.float32)[:, None]
    src = np.clip(y - displacement, 0, ny - 1)
    i0 = np.minimum(np.floor(src).astype(np.intp), ny - 2)
    w = (src - i0).astype(np.float32)
    jac = np.clip(1 - np.gradient(displacement, axis=0), 0.1, None).astype(np.float32)
    a = np.take_along_axis(image, i0[None], axis=1)
    b = np.take_along_axis(image, (i0 + 1)[None], axis=1)
    return ((a * (1 - w) + b * w) * jac).astype(np.float32)


def t2w_image(
    compartments: Mapping[str, Compartment], *, te_ms: float = 90.0, tr_ms: float = 6000.0
) -> np.ndarray:
    """Noise-free spin-echo T2-weighted image, (Z, Y, X) float32:
    ``sum f PD (1 - exp(-TR/T1)) exp(-TE/T2)`` with T2 from :data:`T2_MS`
    (lesions: white matter's times 1.8)."""
    out = None
    for name, comp in compartments.items():
        t2 = T2_MS["WM"] * _T2_LESION_FACTOR if name == "lesion" else T2_MS[name]
        s = comp.fraction * comp.pd * (1 - np.exp(-tr_ms / comp.t1_ms)) * np.float32(np.exp(-te_ms / t2))
        out = s if out is None else out + s
    return np.asarray(out, dtype=np.float32)
