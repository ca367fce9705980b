"""Agreement of quantitative maps (T1, T2*, ...): relative deviation, overall and per tissue.

The paper's figure: "mean relative deviation" = mean of ``|pred - ref| / ref``
over the voxels where the reference is positive (the authors' code averages
over ``ref ~= 0``; relaxation times are never negative).  Voxels whose
reference is NaN/Inf (e.g. left unmatched) are left out as well; a NaN/Inf
prediction on a counted voxel is an error, never silently skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ._validate import as_array, parse_mask, same_shape

__all__ = ["relative_deviation", "relative_deviation_by_tissue", "relative_deviations"]


def _counted(p: np.ndarray, r: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        sel = np.isfinite(r) & (r > 0)
    if mask is not None:
        sel &= mask
    if np.issubdtype(p.dtype, np.floating):
        bad = np.count_nonzero(sel & ~np.isfinite(p))
        if bad:
            raise ValidationError(f"pred is NaN/Inf in {bad} voxel(s) where ref > 0; mask them out")
    return sel


def relative_deviations(pred: ArrayLike, ref: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """``|pred - ref| / ref`` of every counted voxel (ref > 0, finite, in ``mask``).

    Returns
    -------
    ndarray, float64, (n_counted,)
        Fractions (0.05 = 5%), in the order of ``np.flatnonzero``.
    """
    p = as_array(pred, "pred", min_ndim=0)
    r = as_array(ref, "ref", min_ndim=0)
    same_shape(p, r, "pred", "ref")
    sel = _counted(p, r, parse_mask(mask, r.shape))
    pv = p[sel].astype(np.float64)
    rv = r[sel].astype(np.float64)
    return np.abs(pv - rv) / rv


def relative_deviation(
    pred: ArrayLike,
    ref: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    statistic: Literal["mean", "median"] = "mean",
) -> float:
    """Mean relative deviation ``mean(|pred - ref| / ref)`` over voxels where ``ref > 0``.

    Parameters
    ----------
    pred, ref : array_like, same shape, float or integer
        E.g. T1 maps in ms (any unit, the same for both).
    mask : array_like, bool (or 0/1), same shape, optional
        Only voxels in the mask count (e.g. the brain, or one tissue).
    statistic : {"mean", "median"}
        The paper reports the mean; the median resists outliers.

    Returns
    -------
    float
        A fraction (0.052 is the paper's 5.2%); NaN when no voxel counts.

    Raises
    ------
    ValidationError
        Shapes differ, a bad mask, or a NaN/Inf ``pred`` where a voxel counts.

    References
    ----------
    Hermann et al., BMC Med Imaging 21:107, 2021 (Statistics).
    """
    if statistic not in ("mean", "median"):
        raise ValidationError(f"statistic must be 'mean' or 'median'; got {statistic!r}")
    dev = relative_deviations(pred, ref, mask)
    if dev.size == 0:
        return float("nan")
    return float(dev.mean() if statistic == "mean" else np.median(dev))


def relative_deviation_by_tissue(
    pred: ArrayLike,
    ref: ArrayLike,
    tissues: Mapping[str, ArrayLike],
    *,
    mask: ArrayLike | None = None,
    statistic: Literal["mean", "median"] = "mean",
) -> dict[str, float]:
    """:func:`relative_deviation` inside each tissue mask.

    Parameters
    ----------
    pred, ref : array_like, same shape
    tissues : mapping of str to array_like bool
        Tissue name -> mask of the maps' shape (e.g. ``{"WM": ..., "GM": ...}``).
    mask : array_like, optional
        Intersected with every tissue mask.
    statistic : {"mean", "median"}

    Returns
    -------
    dict of str to float
        In the order of ``tissues``; NaN for a tissue with no counted voxel.
    """
    p = as_array(pred, "pred", min_ndim=0)
    r = as_array(ref, "ref", min_ndim=0)
    same_shape(p, r, "pred", "ref")
    base = parse_mask(mask, r.shape)
    out: dict[str, float] = {}
    for name, tissue in tissues.items():
        if tissue is None:
            raise ValidationError(f"tissues[{name!r}] must be a mask; got None")
        m = parse_mask(tissue, r.shape, name=f"tissues[{name!r}]")
        out[name] = relative_deviation(p, r, m if base is None else (m & base), statistic=statistic)
    return out
