"""Marchenko-Pastur PCA denoising of MRF series: :func:`mppca` and its backends.

``mppca(data, channel_axis=-1, mask=None, patch_radius=2, estimator="mp", backend="auto")``
denoises an in-memory 4D array; :func:`mppca_zarr` denoises a zarr array of
any size slab by slab with bounded memory.
"""

from .api import BACKENDS, MPPCAResult, mppca
from .ooc import mppca_zarr

__all__ = ["mppca", "mppca_zarr", "MPPCAResult", "BACKENDS"]
