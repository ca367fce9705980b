"""Out-of-core MP-PCA: denoise a zarr array slab by slab, memory bounded.

A slab of output planes ``[z0, z1)`` along the first spatial axis needs every
window that covers one of its voxels; those windows start in
``[z0 - w + 1, z1 - 1]`` and reach up to plane ``z1 + w - 2``, so the slab is
read with a halo of ``w - 1`` planes on each side (``w``: the window extent
along that axis, 5 for ``patch_radius=2``) and only its interior is written.
The result equals :func:`mppca` on the whole array up to float rounding (the
same windows contribute, summed in another order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .._validate import check_int
from ..errors import StoreError, ValidationError
from ._common import ESTIMATORS, parse_patch_radius, window_extent
from .api import _channel_axis, _check_finite, _compute_dtype, _resolve_backend, denoise_into

__all__ = ["mppca_zarr"]

log = logging.getLogger(__name__)

_DONE_KEY = "mrfengine_mppca"


def _take(arr: Any, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * len(arr.shape)
    index[axis] = slice(start, stop)
    return np.asarray(arr[tuple(index)])


def _put(arr: Any, axis: int, start: int, stop: int, values: np.ndarray) -> None:
    index = [slice(None)] * len(arr.shape)
    index[axis] = slice(start, stop)
    arr[tuple(index)] = values


def mppca_zarr(
    source: Any,
    destination: Any,
    *,
    sigma: Any | None = None,
    n_components: Any | None = None,
    mask: Any | None = None,
    channel_axis: int = 0,
    patch_radius: int | Sequence[int] = 2,
    estimator: str = "mp",
    backend: str = "auto",
    dtype: DTypeLike | None = None,
    slab_planes: int | None = None,
    n_threads: int = 0,
    axis: int | None = None,
) -> dict[str, Any]:
    """Denoise a zarr (or any sliceable) 4D array into another, slab by slab.

    Parameters
    ----------
    source : zarr.Array, 4D
        E.g. the cohort's ``(T, Z, Y, X)`` magnitude series (``channel_axis=0``).
    destination : zarr.Array
        Same shape as ``source``, float dtype; receives the denoised series.
        When every slab is written, ``destination.attrs["mrfengine_mppca"]``
        records the settings with ``"complete": True`` -- the commit marker:
        an interrupted run leaves ``"complete": False``.
    sigma, n_components : zarr.Array, spatial shape, optional
        Receive the noise map and the component counts (see :func:`mppca`).
    mask : array_like of bool, spatial shape, optional
        As in :func:`mppca` (a zarr array is read slab by slab).
    channel_axis : int
        The frame axis of ``source``.  Slabs are cut along the first spatial
        axis (Z for ``(T, Z, Y, X)``).
    patch_radius, estimator, backend, dtype, n_threads
        As in :func:`mppca`.
    slab_planes : int, optional
        Output planes per slab; default: the destination's chunk length along
        the slab axis, at least 8.  Memory is about
        ``(slab_planes + 2 (w - 1)) x`` one plane x 3 (input, compute copy,
        output).
    axis : int, optional
        Deprecated name of ``channel_axis`` (a DeprecationWarning).

    Returns
    -------
    dict
        ``window``, ``slabs`` (number written), ``backend``.

    Raises
    ------
    ValidationError
        Shapes, dtypes or options that do not fit, or NaN/Inf values.
    StoreError
        ``destination`` is not writable.

    References
    ----------
    Veraart J. et al., NeuroImage 142:394 (2016).
    """
    axis = _channel_axis(channel_axis, axis, default=0, where="mppca_zarr")
    shape = tuple(int(s) for s in source.shape)
    if len(shape) != 4:
        raise ValidationError(f"source must be 4D; got shape {shape}")
    if tuple(destination.shape) != shape:
        raise ValidationError(f"destination must have the source's shape {shape}; got {tuple(destination.shape)}")
    if np.dtype(destination.dtype).kind != "f":
        raise ValidationError(f"destination must have a float dtype; got {destination.dtype}")
    if estimator not in ESTIMATORS:
        raise ValidationError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    if shape[axis] < 2:
        raise ValidationError(f"source must have at least 2 frames along axis {axis}; got shape {shape}")
    spatial_axes = [i for i in range(4) if i != axis]
    spatial = tuple(shape[i] for i in spatial_axes)
    for name, arr in (("sigma", sigma), ("n_components", n_components), ("mask", mask)):
        if arr is not None and tuple(arr.shape) != spatial:
            raise ValidationError(f"{name} must have the spatial shape {spatial}; got {tuple(arr.shape)}")
    radius = parse_patch_radius(patch_radius)
    window = window_extent(spatial, radius)
    if int(np.prod(window)) < 2:
        raise ValidationError(f"the window {window} holds fewer than 2 voxels; increase patch_radius")
    name = _resolve_backend(backend, False)
    ctype = _compute_dtype(np.dtype(source.dtype), dtype)
    slab_axis = spatial_axes[0]
    n_planes = spatial[0]
    halo = window[0] - 1
    if slab_planes is None:
        chunks = getattr(destination, "chunks", None)
        slab_planes = max(8, int(chunks[slab_axis]) if chunks else 8)
    slab_planes = check_int(slab_planes, "slab_planes")
    settings = {
        "estimator": estimator,
        "patch_radius": list(radius),
        "window": list(window),
        "channel_axis": axis,
        "complete": False,
    }
    try:
        destination.attrs[_DONE_KEY] = settings
    except Exception as exc:  # read-only stores raise various errors
        raise StoreError(f"cannot write to the destination array: {exc}") from exc

    n_slabs = 0
    for z0 in range(0, n_planes, int(slab_planes)):
        z1 = min(n_planes, z0 + int(slab_planes))
        lo, hi = max(0, z0 - halo), min(n_planes, z1 + halo)
        block = _take(source, slab_axis, lo, hi)
        x = np.moveaxis(block, axis, -1)
        if x.dtype != ctype:
            x = x.astype(ctype)
        _check_finite(x, np)
        m = None if mask is None else _take(mask, 0, lo, hi).astype(bool)
        out = np.zeros(block.shape, dtype=ctype)
        sig, ncomp = denoise_into(
            x, np.moveaxis(out, axis, -1), window=window, radius=radius, mask=m, estimator=estimator,
            backend=name, n_threads=n_threads,
        )
        keep = slice(z0 - lo, z1 - lo)
        index = [slice(None)] * 4
        index[slab_axis] = keep
        _put(destination, slab_axis, z0, z1, out[tuple(index)].astype(destination.dtype, copy=False))
        if sigma is not None:
            _put(sigma, 0, z0, z1, sig[keep].astype(sigma.dtype, copy=False))
        if n_components is not None:
            _put(n_components, 0, z0, z1, ncomp[keep].astype(n_components.dtype, copy=False))
        n_slabs += 1
        log.debug("mppca_zarr: planes %d-%d written (read %d-%d)", z0, z1, lo, hi)
    destination.attrs[_DONE_KEY] = {**settings, "complete": True}
    return {"window": window, "slabs": n_slabs, "backend": name}
