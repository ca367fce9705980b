"""Voxel overlap: Dice over a whole volume, per slice, and for tissue maps.

Conventions (the same in every mrfengine metric)
------------------------------------------------
* **Binarising.** A bool array is a mask and is used as it is.  Any other
  array is a map and a voxel is positive when its value is ``>= threshold``
  (inclusive, as the authors' ``calculateMetricies.m`` does: it zeroes the
  values below the threshold).  Without a threshold a non-bool array must
  hold only 0 and 1.  A float32 map is compared with the float32 value of the
  threshold, exactly what ``map >= threshold`` does in NumPy 2.
* **Empty against empty.** Dice is ``2|P & R| / (|P| + |R|)``; when both
  masks are empty it is 0/0 and the result is ``empty`` (default NaN: "not
  defined", so a lesion-free subject or slice does not inflate a mean; the
  summaries use NaN-aware means and report how many values they averaged).
  Pass ``empty=1.0`` to score agreement on "nothing here" as perfect.  One
  side empty and the other not gives 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ._validate import as_array, binarize, parse_axis, parse_threshold, same_shape
from .definitions import TISSUE_THRESHOLD

__all__ = ["binarize_map", "dice", "dice_from_counts", "dice_per_slice", "TissueDice", "tissue_dice"]


def binarize_map(x: ArrayLike, threshold: float | None = None, *, name: str = "x") -> np.ndarray:
    """The bool mask the metrics see for ``x``.

    Parameters
    ----------
    x : array_like, bool, integer or float
        A mask (bool) or a map (anything else).
    threshold : float, optional
        Maps are positive where ``x >= threshold``; ignored for bool masks.
        Without it a map must hold only 0 and 1.
    name : str
        Used in error messages.

    Returns
    -------
    ndarray, bool, the shape of ``x``

    Raises
    ------
    ValidationError
        Non-numeric input, NaN/Inf in a map that is thresholded, or a map
        with values other than 0/1 and no threshold.
    """
    a = as_array(x, name, min_ndim=0)
    return binarize(a, None if threshold is None else parse_threshold(threshold), name)


def dice_from_counts(
    intersection: ArrayLike, size_pred: ArrayLike, size_ref: ArrayLike, *, empty: float = float("nan")
) -> float | np.ndarray:
    """``2 * intersection / (size_pred + size_ref)``, ``empty`` where both sizes are 0.

    Works element-wise on arrays of counts (returns float64) or on numbers
    (returns a float).
    """
    inter = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(size_pred, dtype=np.float64) + np.asarray(size_ref, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(total > 0, 2.0 * inter / np.where(total > 0, total, 1.0), float(empty))
    return float(d) if d.ndim == 0 else d


def dice(pred: ArrayLike, ref: ArrayLike, threshold: float | None = None, *, empty: float = float("nan")) -> float:
    """Dice coefficient over the whole volume, ``2|P & R| / (|P| + |R|)``.

    The paper's lesion and tissue Dice: both maps binarised at one threshold,
    then one Dice over all voxels of the 3D volume (not a mean over slices).

    Parameters
    ----------
    pred, ref : array_like, same shape, any number of axes
        Bool masks, or probability (or 0/1) maps; see the module notes.
    threshold : float, optional
        Maps (non-bool inputs) are positive where ``value >= threshold``;
        bool inputs are used as they are.  Without a threshold non-bool
        inputs must hold only 0 and 1.  Careful with ``threshold <= 0`` and a
        0/1 float reference: every voxel of it becomes positive; pass the
        reference as bool.
    empty : float
        The value when both masks are empty (default NaN, see module notes).

    Returns
    -------
    float in [0, 1], or ``empty``.

    Raises
    ------
    ValidationError
        Shapes differ, non-numeric input, NaN/Inf in a thresholded map, or a
        non-binary map without a threshold.

    References
    ----------
    Dice LR. Measures of the amount of ecologic association between species.
    Ecology 26:297-302, 1945.  Hermann et al., BMC Med Imaging 21:107, 2021.
    """
    p = as_array(pred, "pred", min_ndim=0)
    r = as_array(ref, "ref", min_ndim=0)
    same_shape(p, r, "pred", "ref")
    t = None if threshold is None else parse_threshold(threshold)
    pb = binarize(p, t, "pred")
    rb = binarize(r, t, "ref")
    return dice_from_counts(np.count_nonzero(pb & rb), np.count_nonzero(pb), np.count_nonzero(rb), empty=empty)


def dice_per_slice(
    pred: ArrayLike,
    ref: ArrayLike,
    threshold: float | None = None,
    *,
    axis: int = -1,
    empty: float = float("nan"),
) -> np.ndarray:
    """Dice of every slice along ``axis`` (binarised as in :func:`dice`).

    Parameters
    ----------
    pred, ref : array_like, same shape, at least 2 axes
        E.g. (X, Y, Z) volumes with ``axis=-1`` (NIfTI's slice axis).
    threshold : float, optional
        As in :func:`dice`.
    axis : int
        The slice axis.
    empty : float
        Value of slices where both masks are empty (default NaN, so that
        ``np.nanmean`` averages only slices with something to compare).

    Returns
    -------
    ndarray, float64, (n_slices,)
    """
    inter, n_pred, n_ref = _slice_counts(pred, ref, threshold, axis)
    return dice_from_counts(inter, n_pred, n_ref, empty=empty)


def _slice_counts(pred: ArrayLike, ref: ArrayLike, threshold: float | None, axis: int):
    """Per-slice |P & R|, |P|, |R| (int64 arrays of length n_slices)."""
    p = as_array(pred, "pred", min_ndim=2)
    r = as_array(ref, "ref", min_ndim=2)
    same_shape(p, r, "pred", "ref")
    ax = parse_axis(axis, p.ndim)
    t = None if threshold is None else parse_threshold(threshold)
    pb = np.moveaxis(binarize(p, t, "pred"), ax, -1).reshape(-1, p.shape[ax])
    rb = np.moveaxis(binarize(r, t, "ref"), ax, -1).reshape(-1, p.shape[ax])
    inter = np.count_nonzero(pb & rb, axis=0)
    return inter, np.count_nonzero(pb, axis=0), np.count_nonzero(rb, axis=0)


@dataclass(frozen=True)
class TissueDice:
    """Dice of a tissue probability map against its reference.

    Attributes
    ----------
    volume : float
        Dice over the whole volume.
    slice_mean : float
        Mean of the per-slice Dice over slices where either mask is non-empty
        (the paper: "mean dice coefficients along all subjects and slices").
    per_slice : ndarray, float64, (n_slices,)
        NaN where both masks of a slice are empty.
    threshold : float
    """

    volume: float
    slice_mean: float
    per_slice: np.ndarray
    threshold: float


def tissue_dice(pred: ArrayLike, ref: ArrayLike, *, threshold: float = TISSUE_THRESHOLD, axis: int = -1) -> TissueDice:
    """NAWM or GM Dice after binarising both probability maps at ``threshold``.

    Parameters
    ----------
    pred, ref : array_like, float, same shape, at least 2 axes
        Probability maps in [0, 1] (bool masks are used as they are).
    threshold : float
        0.8 in the paper ("a commonly used threshold of 80%"); inclusive.
    axis : int
        Slice axis for the per-slice figures.

    Returns
    -------
    TissueDice

    References
    ----------
    Hermann et al., BMC Med Imaging 21:107, 2021 (Statistics).
    """
    t = parse_threshold(threshold)
    inter, n_pred, n_ref = _slice_counts(pred, ref, t, axis)
    per_slice = dice_from_counts(inter, n_pred, n_ref)
    volume = dice_from_counts(inter.sum(), n_pred.sum(), n_ref.sum())
    slice_mean = float(np.nanmean(per_slice)) if np.isfinite(per_slice).any() else float("nan")
    return TissueDice(volume=volume, slice_mean=slice_mean, per_slice=per_slice, threshold=t)
