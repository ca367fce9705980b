"""mrfengine's noise model and SNR convention, in one place.

* SNR is relative to white matter: the mean over frames of a pure
  white-matter fingerprint's magnitude at B1 = 1 (:func:`wm_signal_level`)
  divided by the noise standard deviation per real/imaginary channel
  (:func:`noise_sigma`).
* Noise is complex Gaussian added to the (real, signed) signal, of which the
  magnitude is kept: Rician noise (:func:`rician`), optionally rounded to a
  power-of-two step like an ADC (:func:`quantization_step`).

The phantom (:mod:`mrfengine.phantom`), the MP-PCA test data
(:mod:`mrfengine.denoise._synthetic`), the demo and the benchmarks all use
these functions, so one SNR means the same noise everywhere.
"""

from __future__ import annotations

import numpy as np

from .dictionary import fingerprints
from .sequence import Sequence
from .tissue import TISSUES

__all__ = ["wm_signal_level", "noise_sigma", "rician", "quantization_step"]


def wm_signal_level(sequence: Sequence, slot: int = 0) -> float:
    """Mean magnitude over frames of a pure white-matter voxel (B1 = 1): the
    reference of mrfengine's SNR figures (SNR = this level / noise sigma)."""
    wm = TISSUES["WM"]
    return float(fingerprints(sequence, slot, wm.t1_ms, wm.t2star_ms, 1.0, wm.pd).mean())


def noise_sigma(sequence: Sequence, snr: float | None) -> float:
    """Noise standard deviation per real/imaginary channel for ``snr``
    relative to the white-matter signal level; 0 for ``snr=None``."""
    if snr is None:
        return 0.0
    return wm_signal_level(sequence) / float(snr)


def quantization_step(sigma: float) -> float:
    """The largest power of two at most ``sigma / 32`` (0 when sigma is 0)."""
    if sigma <= 0:
        return 0.0
    return float(2.0 ** np.floor(np.log2(sigma / 32)))


def rician(
    signal: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    *,
    dtype: type = np.float64,
    quantize: bool = False,
) -> np.ndarray:
    """``|signal + n1 + i n2|`` with n1, n2 ~ N(0, sigma^2): Rician magnitudes.

    Parameters
    ----------
    signal : ndarray
        Noise-free real (signed) signal.
    sigma : float
        Noise standard deviation per channel; 0 returns ``|signal|`` and
        draws nothing.
    rng : numpy.random.Generator
    dtype : {numpy.float64, numpy.float32}
        Precision of the draws and the result (float32: four times faster
        for large images; the phantom's choice).
    quantize : bool
        Round the result to a multiple of :func:`quantization_step`
        (``sigma / 32`` at most, a power of two, so exact in floating point:
        the rounding noise has sd <= sigma / 110).

    Returns
    -------
    ndarray of ``dtype``, ``signal``'s shape
    """
    dtype = np.dtype(dtype).type
    if sigma <= 0:
        return np.abs(np.asarray(signal, dtype=dtype))
    noise = rng.standard_normal((2,) + np.shape(signal), dtype=dtype)
    noise *= dtype(sigma)
    noise[0] += signal
    out = np.hypot(noise[0], noise[1], out=noise[1])
    if quantize:
        step = quantization_step(sigma)
        out *= dtype(1 / step)  # exact: step is a power of two
        np.rint(out, out=out)
        out *= dtype(step)
    return out
