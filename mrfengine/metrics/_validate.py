"""Boundary checks shared by the metric modules (private).

Every public metric calls these first, so a wrong input fails with a message
that names the parameter, what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .._validate import check_int
from ..errors import ValidationError


def as_array(x: ArrayLike, name: str, *, min_ndim: int = 1) -> np.ndarray:
    """``np.asarray(x)``, checked to be numeric or bool with ``min_ndim`` axes."""
    a = np.asarray(x)
    if a.dtype != bool and not np.issubdtype(a.dtype, np.integer) and not np.issubdtype(a.dtype, np.floating):
        raise ValidationError(f"{name} must be a bool, integer or real float array; got dtype {a.dtype}")
    if a.ndim < min_ndim:
        raise ValidationError(f"{name} must have at least {min_ndim} axis/axes; got shape {a.shape}")
    return a


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValidationError(f"{name_a} and {name_b} must have the same shape; got {a.shape} and {b.shape}")


def parse_threshold(threshold: float, name: str = "threshold") -> float:
    """A finite real number (probability maps usually use [0, 1])."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise ValidationError(f"{name} must be a real number; got {threshold!r}")
    value = float(threshold)
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be finite; got {threshold!r}")
    return value


def parse_thresholds(thresholds: ArrayLike | None, name: str = "thresholds") -> np.ndarray:
    """A 1D, finite, strictly increasing float64 array; ``None`` gives 0, 0.01, ..., 1."""
    if thresholds is None:
        return np.linspace(0.0, 1.0, 101)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValidationError(f"{name} must be a non-empty 1D sequence; got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValidationError(f"{name} must be finite; got {t.tolist()}")
    if t.size > 1 and not (np.diff(t) > 0).all():
        raise ValidationError(f"{name} must be strictly increasing; got {t.tolist()}")
    return t


def threshold_in_dtype(threshold: float | np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The threshold(s) in the dtype the comparison will use.

    A float32 map is compared with the float32 value of the threshold (what
    ``map >= 0.33`` does under NumPy 2), so the single-threshold functions and
    the sweeps classify every voxel identically.
    """
    if np.issubdtype(dtype, np.floating):
        return np.asarray(threshold, dtype=dtype)
    return np.asarray(threshold, dtype=np.float64)


def binarize(x: np.ndarray, threshold: float | None, name: str) -> np.ndarray:
    """The bool mask a metric sees: bool arrays as they are, other arrays
    ``>= threshold``; with ``threshold=None`` they must hold only 0 and 1."""
    if x.dtype == bool:
        return x
    if threshold is None:
        if not ((x == 0) | (x == 1)).all():
            raise ValidationError(
                f"{name} is not bool and holds values other than 0 and 1 (range {np.nanmin(x)!r} to "
                f"{np.nanmax(x)!r}); give a threshold to binarise it"
            )
        return x != 0
    check_finite(x, name)
    return x >= threshold_in_dtype(parse_threshold(threshold), x.dtype)


def binary_mask(x: np.ndarray, name: str) -> np.ndarray:
    """A reference that must already be binary: bool, or numbers all 0 or 1."""
    return binarize(x, None, name)


def check_finite(x: np.ndarray, name: str) -> None:
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        n = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValidationError(f"{name} must be finite; got {n} NaN/Inf value(s)")


def parse_axis(axis: int, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValidationError(f"{name} must be an integer; got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValidationError(f"{name} {axis} is out of range for an array with {ndim} axes")
    return int(axis) % ndim


def parse_voxel_size(voxel_size: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel edge lengths in mm, one per axis; a number means isotropic, ``None`` 1 mm."""
    if voxel_size is None:
        return (1.0,) * ndim
    if np.ndim(voxel_size) == 0:
        sizes = (voxel_size,) * ndim
    else:
        sizes = tuple(voxel_size)  # type: ignore[arg-type]
    if len(sizes) != ndim:
        raise ValidationError(f"voxel_size must give {ndim} edge lengths (mm), one per axis; got {voxel_size!r}")
    try:
        values = tuple(float(s) for s in sizes)
    except (TypeError, ValueError):
        raise ValidationError(f"voxel_size must hold numbers (mm); got {voxel_size!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValidationError(f"voxel_size must be positive and finite (mm); got {voxel_size!r}")
    return values


def parse_mask(mask: ArrayLike | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """``None``, or a bool array of ``shape`` (numbers must be 0/1)."""
    if mask is None:
        return None
    m = as_array(mask, name)
    if m.shape != shape:
        raise ValidationError(f"{name} must have the maps' shape {shape}; got {m.shape}")
    return binary_mask(m, name)


def parse_positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    """:func:`mrfengine._validate.check_int` (the package's one integer check) with a lower bound."""
    return check_int(value, name, minimum=minimum)
