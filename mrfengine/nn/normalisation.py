"""Per-channel input normalisation, stored in the model card.

The network sees ``(g x - mean[c]) / std[c]`` for input channel ``c``; the same
numbers must be used in training and inference, so they travel with the
model (:mod:`mrfengine.nn.card`).  Voxels outside the brain are zero in the
MRF magnitudes, and padding at inference adds more zeros: both normalise to
``-mean / std``, the value the network saw for background during training.

Scale-free input.  MRF magnitudes carry an arbitrary global gain (scanner,
coil, reconstruction, int16 storage): matching absorbs it into M0, and the
network must not depend on it either.  A card with a ``subject_level`` (the
training data's intensity level, :data:`LEVEL_STATISTIC`) has each input
series multiplied by ``g = subject_level / level(series)`` first, where
``level`` is the same statistic of that series inside its brain mask
(:func:`input_level`).  The gain cancels exactly: a series scaled by any
``a > 0`` gives the same network input.  Cards without ``subject_level``
(written before scale-free input) take the series as it is (``g = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError

__all__ = ["LEVEL_STATISTIC", "Normalisation", "fit_normalisation", "input_level"]

_KIND = "channel_zscore"

LEVEL_STATISTIC = "median over the brain mask of the mean over channels"
"""What ``subject_level`` and :func:`input_level` measure.  The median, not the
mean: a brain mask made from the series itself may take in some bright
non-brain voxels (fat, vessels), which move a median far less than a mean."""


@dataclass(frozen=True)
class Normalisation:
    """``(x - mean[c]) / std[c]`` per input channel.

    Attributes
    ----------
    mean, std : tuple of float, (C,)
        In the unit of the input (arbitrary units for MRF magnitudes, ms for
        T1/T2* maps); ``std`` > 0 and everything finite.
    subject_level : float or None
        The training data's intensity level (:data:`LEVEL_STATISTIC`), in the
        unit of ``mean``: inputs are rescaled to it (:meth:`gain`), so the
        network is free of the input's global scale.  None: inputs are taken
        at their absolute scale (cards written before scale-free input).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    subject_level: float | None = None

    def __post_init__(self) -> None:
        if self.subject_level is not None:
            level = float(self.subject_level)
            if not (math.isfinite(level) and level > 0):
                raise ValidationError(f"normalisation subject_level must be finite and > 0; got {self.subject_level!r}")
            object.__setattr__(self, "subject_level", level)
        mean = tuple(float(v) for v in np.asarray(self.mean, dtype=np.float64).ravel())
        std = tuple(float(v) for v in np.asarray(self.std, dtype=np.float64).ravel())
        if len(mean) == 0 or len(mean) != len(std):
            raise ValidationError(f"normalisation mean and std must be non-empty and of one length; got "
                                  f"{len(mean)} and {len(std)}")
        if not all(math.isfinite(v) for v in mean + std) or not all(v > 0 for v in std):
            raise ValidationError("normalisation mean and std must be finite and std > 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def n_channels(self) -> int:
        return len(self.mean)

    @classmethod
    def identity(cls, n_channels: int) -> Normalisation:
        """Mean 0 and std 1 for every channel (no change)."""
        return cls((0.0,) * n_channels, (1.0,) * n_channels)

    @property
    def scale_free(self) -> bool:
        """Whether inputs are rescaled to ``subject_level`` (free of their global scale)."""
        return self.subject_level is not None

    def with_subject_level(self, level: float | None) -> Normalisation:
        """The same normalisation with another ``subject_level``."""
        return Normalisation(self.mean, self.std, level)

    @property
    def reference_level(self) -> float:
        """The level inputs are rescaled to: ``subject_level``, or for cards
        without one the mean of the channel means (the training data's mean
        intensity inside the brain masks, where :func:`~mrfengine.nn.data.fit_cohort_normalisation`
        measures it; within 1% of the median on the simulated cohorts)."""
        return self.subject_level if self.subject_level is not None else float(np.mean(self.mean))

    def gain(self, level: float) -> float:
        """The factor that brings an input of intensity ``level`` to :attr:`reference_level`.

        Raises
        ------
        ValidationError
            ``level`` is not finite and positive (e.g. an empty brain mask or
            a series of zeros): the input's scale cannot be told; or the
            reference level is not positive.
        """
        if not (math.isfinite(level) and level > 0):
            raise ValidationError(f"the input's intensity level ({LEVEL_STATISTIC}) is {level!r}; it must be "
                                  "positive to rescale the input (an empty brain mask, or a series of zeros?)")
        if not self.reference_level > 0:
            raise ValidationError(f"the normalisation's reference level is {self.reference_level!r} (channel means "
                                  "that are not positive): inputs cannot be rescaled to it")
        return self.reference_level / level

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": _KIND, "mean": list(self.mean), "std": list(self.std)}
        if self.subject_level is not None:
            out["subject_level"] = {"statistic": LEVEL_STATISTIC, "value": self.subject_level}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Normalisation:
        keys = set(data) if isinstance(data, dict) else set()
        if not isinstance(data, dict) or data.get("kind") != _KIND or not {"kind", "mean", "std"} <= keys \
                or not keys <= {"kind", "mean", "std", "subject_level"}:
            raise ValidationError(f"normalisation must be {{'kind': '{_KIND}', 'mean': [...], 'std': [...]}} and "
                                  f"optionally 'subject_level'; got {data!r}")
        level = data.get("subject_level")
        if level is not None:
            if not isinstance(level, dict) or level.get("statistic") != LEVEL_STATISTIC or "value" not in level:
                raise ValidationError(f"normalisation subject_level must be {{'statistic': {LEVEL_STATISTIC!r}, "
                                      f"'value': ...}}; got {level!r}")
            level = level["value"]
        return cls(tuple(data["mean"]), tuple(data["std"]), level)

    def scale_and_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """``(1 / std, -mean / std)`` as float32 (C,): ``x * scale + offset``."""
        std = np.asarray(self.std, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        return (1.0 / std).astype(np.float32), (-mean / std).astype(np.float32)


def fit_normalisation(
    data: ArrayLike | Sequence[ArrayLike],
    *,
    channel_axis: int = 0,
    mask: ArrayLike | Sequence[ArrayLike] | None = None,
) -> Normalisation:
    """Per-channel mean and standard deviation of training data.

    Parameters
    ----------
    data : array_like or sequence of array_like
        One array or several (e.g. one per training subject) with the
        channels along ``channel_axis``, e.g. (35, Z, Y, X) as in the cohort
        store.  Statistics are pooled over all of them (float64 sums).
    channel_axis : int
        Axis of the channels in every array.
    mask : array_like or sequence, optional
        Voxels that count (the arrays without their channel axis), e.g. the
        brain masks; default all.

    Returns
    -------
    Normalisation

    Raises
    ------
    ValidationError
        On arrays with different channel counts, masks of the wrong shape,
        no voxel at all, or a constant channel (std 0).
    """
    arrays = list(data) if isinstance(data, (list, tuple)) else [data]
    if mask is None:
        masks = [None] * len(arrays)
    else:
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
    if len(masks) != len(arrays):
        raise ValidationError(f"mask must give one mask per data array ({len(arrays)}); got {len(masks)}")
    total = total_sq = None
    count = 0
    for k, (arr, m) in enumerate(zip(arrays, masks)):
        a = np.moveaxis(np.asarray(arr), channel_axis, 0)
        flat = a.reshape(a.shape[0], -1)
        if m is not None:
            mm = np.asarray(m, dtype=bool)
            if mm.shape != a.shape[1:]:
                raise ValidationError(f"mask {k} must have shape {a.shape[1:]}; got {mm.shape}")
            flat = flat[:, mm.ravel()]
        flat = flat.astype(np.float64)
        if total is not None and flat.shape[0] != total.shape[0]:
            raise ValidationError(f"data array {k} has {flat.shape[0]} channels; the first had {total.shape[0]}")
        s, s2 = flat.sum(axis=1), (flat * flat).sum(axis=1)
        total = s if total is None else total + s
        total_sq = s2 if total_sq is None else total_sq + s2
        count += flat.shape[1]
    if total is None or count == 0:
        raise ValidationError("fit_normalisation needs at least one voxel")
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.sqrt(var)
    if not np.all(std > 0):
        raise ValidationError(f"channels {np.flatnonzero(~(std > 0)).tolist()} are constant: cannot normalise them")
    return Normalisation(tuple(mean), tuple(std))


def input_level(mean_zyx: ArrayLike, mask: ArrayLike) -> float:
    """The intensity level of an input series: :data:`LEVEL_STATISTIC`.

    Parameters
    ----------
    mean_zyx : array_like, (Z, Y, X)
        The series' mean over channels (:func:`mrfengine.masking.mean_image`).
    mask : array_like of bool, (Z, Y, X)
        The brain (given, or made from the series: :func:`mrfengine.masking.brain_mask_from_mrf`).

    Raises
    ------
    ValidationError
        On shapes that differ or an empty mask.
    """
    mean_zyx = np.asarray(mean_zyx)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != mean_zyx.shape:
        raise ValidationError(f"the brain mask has shape {mask.shape}; the series has slices of {mean_zyx.shape}")
    if not mask.any():
        raise ValidationError("the brain mask is empty: the input's intensity level cannot be measured")
    return float(np.median(mean_zyx[mask]))
