"""Brain masks made from an MRF series itself, for data that come without one.

Real scans arrive with no brain mask.  The network's scale-free input
(:mod:`mrfengine.nn.normalisation`) needs the brain to measure the series'
intensity level, and denoising and matching are faster inside it.  The mask is
made with nilearn's :func:`nilearn.masking.compute_epi_mask` (T. Nichols'
heuristic for EPI time series): the mean image
over the MRF frames is thresholded at the deepest minimum of its intensity
histogram between the 20th and 85th percentiles, the largest connected
component is kept and the result is opened (two iterations) to cut thin
bridges to the scalp.  MRF-EPI series are EPI series of 35 frames, with the
brain brighter than the background in every frame, which is what the method
assumes.

One change to the method as nilearn runs it: the mean image is first padded
on every side by twice the opening's iterations, repeating its edge planes,
and the mask is cropped back after.  nilearn's morphology takes the outside of
the image as background, so a brain that the field of view cuts (an MRF slab
of a few centimetres, the usual case) would lose its ``opening`` outermost
slices; with the padding the brain goes on past the edge as it does in the
head.  On the simulated cohort (``tiny``, 12 slices of a brain that fills
them) this raises the Dice overlap with the phantom's brain from 0.82 to 0.99.

The outside rule
----------------
Every map mrfengine writes from an estimate (``mrfengine predict`` and
``mrfengine match``, :func:`mrfengine.pipeline.predict_nifti` and
:func:`~mrfengine.pipeline.match_nifti` behind them, the batch pipeline's
``write`` stage for the ``match`` and ``unet`` stages, ``mrfengine export`` of a
pipeline's maps) follows one rule, :func:`apply_outside_rule`:
outside the brain mask the analysis used, every map holds
:data:`OUTSIDE_BRAIN_VALUE` (0) -- quantitative maps (T1, T2*, B1, M0, the
match correlation) and probabilities alike; inside it, each holds its
estimate.  The mask is written beside the maps (``desc-brain_mask``) and named
in every sidecar with the value (:func:`outside_rule_fields`, part of the one
sidecar schema :func:`mrfengine.io.bids.map_sidecar`).  Without a mask
(``predict --no-brain-mask``, ``match`` without ``--mask``, a cohort subject
without ``brain_mask``) the
whole field of view is estimated and nothing is background.

Why 0 and not NaN: a probability outside the brain *is* 0 (no tissue there),
and one background value for every file keeps a subject's conventional and
network maps alike; 0 is what FSL, ANTs, AFNI, MRtrix, FreeSurfer and the
viewers take as background, whereas NaN spreads through resampling,
registration, smoothing and averages and is refused or mis-shown by several of
them; and 0 s is no tissue's T1 or T2* (nor 0 its B1), so a 0 never passes for
an estimate, while the mask beside the maps says exactly which voxels were
estimated.  ``mrfengine match`` already wrote 0 where it did not match.

Voxels without an estimate
--------------------------
Inside the brain a method may give no estimate: dictionary matching leaves a
voxel unmatched when it is outside its mask, has a NaN/Inf frame or all frames
zero.  Every map holds :data:`NOT_ESTIMATED_VALUE` there, the same 0 as
outside the brain (:func:`fill_not_estimated`): ``mrfengine match``, the
batch's ``match`` stage (stored by ``write``) and the network's input maps
alike.  The reasons are the outside rule's: 0 is no tissue's T1, T2* or B1, and
NaN would spread through every later step.  Where the voxels were estimated is
in the maps themselves: a T1 of 0 is never an estimate (:func:`has_estimate`,
for readers that leave such voxels out), and the match correlation is 0
exactly where nothing was matched.  The network estimates
every voxel it is given, so its maps have no such voxels.

References
----------
Nichols T. Notes on creating a brain mask from an EPI series (the method
behind ``compute_epi_mask``); nilearn documentation, ``nilearn.masking``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .errors import ValidationError

log = logging.getLogger(__name__)

__all__ = ["BRAIN_MASK_SOURCE", "MASK_METHOD", "NOT_ESTIMATED_VALUE", "OUTSIDE_BRAIN_VALUE", "apply_outside_rule",
           "brain_mask_from_mean", "brain_mask_from_mrf", "fill_not_estimated", "has_estimate", "mean_image",
           "outside_rule_fields"]

#: What every written map holds outside the brain mask (see "The outside rule" above).
OUTSIDE_BRAIN_VALUE = 0.0

#: What every written map holds in a voxel its method gave no estimate for
#: (see "Voxels without an estimate" above): the outside rule's 0.
NOT_ESTIMATED_VALUE = OUTSIDE_BRAIN_VALUE

#: Where the batch pipeline's brain mask comes from (a subject's ``brain_mask``),
#: as its provenance and the exported sidecars name it.
BRAIN_MASK_SOURCE = "cohort store (brain_mask)"

#: How :func:`brain_mask_from_mrf` makes a mask, as sidecars name it.
MASK_METHOD = "made from the MRF series (nilearn compute_epi_mask on the mean over frames)"


def mean_image(volume: Any, *, channel_axis: int = 0, batch: int = 8) -> np.ndarray:
    """The mean over channels of a 4D volume, (Z, Y, X) float32, read ``batch`` slices at a time.

    Parameters
    ----------
    volume : array_like, (C, Z, Y, X) or (Z, C, Y, X)
        Any array that slices lazily (numpy, zarr); non-finite values count as 0.
    channel_axis : {0, 1}
    """
    shape = tuple(volume.shape)
    n_slices = shape[1 - channel_axis]
    out = np.empty((n_slices,) + shape[2:], dtype=np.float32)
    for z0 in range(0, n_slices, batch):
        z1 = min(n_slices, z0 + batch)
        block = np.asarray(volume[:, z0:z1] if channel_axis == 0 else volume[z0:z1], dtype=np.float32)
        block = np.where(np.isfinite(block), block, np.float32(0))
        out[z0:z1] = block.mean(axis=channel_axis, dtype=np.float64)
    return out


def brain_mask_from_mean(mean_zyx: ArrayLike, *, opening: int = 2) -> np.ndarray:
    """A brain mask from the mean image of an MRF series.

    Parameters
    ----------
    mean_zyx : array_like, (Z, Y, X)
        The series' mean over frames (:func:`mean_image`);
        non-finite values count as 0.
    opening : int
        Iterations of the binary opening (nilearn's default, 2); fewer for a
        volume of fewer than 9 voxels along an axis (a slab of few slices).

    Returns
    -------
    ndarray of bool, (Z, Y, X)

    Raises
    ------
    ValidationError
        A volume that is not 3D, or an image of one value (nothing to tell the
        brain from the background).
    """
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    mean = np.asarray(mean_zyx, dtype=np.float32)
    if mean.ndim != 3:
        raise ValidationError(f"the mean image must be 3D (Z, Y, X); got shape {mean.shape}")
    mean = np.where(np.isfinite(mean), mean, np.float32(0))
    if not np.ptp(mean) > 0:
        raise ValidationError("the MRF series has one value everywhere: no brain mask can be made from it")
    # nilearn takes (X, Y, Z) images; the geometry does not enter the method.  The 3D
    # opening erodes `opening` voxels from every side: a slab of few slices keeps fewer.
    opening = min(int(opening), max(0, (min(mean.shape) - 1) // 4))
    # The brain goes on past the field of view's edges (module docstring): pad with the edge planes
    # so the opening does not erode the planes at the edge, and crop back.
    pad = 2 * opening
    padded = np.pad(mean, pad, mode="edge") if pad else mean
    img = nib.Nifti1Image(np.ascontiguousarray(padded.transpose(2, 1, 0)), np.eye(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Computation of the mask failed" style notes are checked below
        mask = np.asarray(compute_epi_mask(img, opening=opening).dataobj, dtype=bool).transpose(2, 1, 0)
    if pad:
        mask = mask[pad:-pad, pad:-pad, pad:-pad]
    if not mask.any():
        raise ValidationError("no brain found in the MRF series (its mean image has no bright region)")
    log.debug("brain mask from the MRF series: %d voxels (%.1f%% of the field of view)", int(mask.sum()),
              100.0 * mask.mean())
    return np.ascontiguousarray(mask)


def brain_mask_from_mrf(volume: Any, *, channel_axis: int = 0, opening: int = 2) -> np.ndarray:
    """A brain mask from an MRF series (see the module docstring for the method).

    Parameters
    ----------
    volume : array_like, (F, Z, Y, X) or (Z, F, Y, X)
        The MRF magnitudes; any lazily sliced array (numpy, zarr).
    channel_axis : {0, 1}
        Where the frames are: 0 as in the cohort store, 1 for (Z, F, Y, X).
    opening : int
        Iterations of the binary opening.

    Returns
    -------
    ndarray of bool, (Z, Y, X)
    """
    if channel_axis not in (0, 1):
        raise ValidationError(f"channel_axis must be 0 (F, Z, Y, X) or 1 (Z, F, Y, X); got {channel_axis!r}")
    if len(getattr(volume, "shape", ())) != 4:
        raise ValidationError(f"the MRF series must be 4D; got shape {getattr(volume, 'shape', None)}")
    return brain_mask_from_mean(mean_image(volume, channel_axis=channel_axis), opening=opening)


def apply_outside_rule(maps: Mapping[str, ArrayLike], mask: ArrayLike | None) -> dict[str, np.ndarray]:
    """The outside rule: every map set to :data:`OUTSIDE_BRAIN_VALUE` outside ``mask``.

    The one place where mrfengine decides what its maps hold outside the
    brain; ``mrfengine predict``, the pipeline's ``write`` stage and
    ``mrfengine export`` all call it.

    Parameters
    ----------
    maps : mapping of str to array_like
        Maps of one subject, each of ``mask``'s shape (any axis order, as long
        as maps and mask share it).
    mask : array_like of bool, or None
        The brain (nonzero inside).  None: the whole field of view is
        estimated, and the maps are returned as they are (as float32).

    Returns
    -------
    dict of str to ndarray, float32
        New arrays (the inputs are not changed); inside the mask each holds
        the input's values as they are (voxels without an estimate are the
        estimator's to set, :func:`fill_not_estimated`).

    Raises
    ------
    ValidationError
        A map whose shape is not the mask's.
    """
    if mask is None:
        return {name: np.asarray(value, dtype=np.float32).copy() for name, value in maps.items()}
    return _keep_where(maps, mask, OUTSIDE_BRAIN_VALUE, "the brain mask")


def _keep_where(maps: Mapping[str, ArrayLike], keep: ArrayLike, value: float, what: str) -> dict[str, np.ndarray]:
    """Every map as float32, ``value`` where ``keep`` is 0 (new arrays)."""
    inside = np.asarray(keep) != 0
    out = {}
    for name, arr in maps.items():
        arr = np.asarray(arr, dtype=np.float32)
        if arr.shape != inside.shape:
            raise ValidationError(f"map {name!r} has shape {arr.shape}; {what} has {inside.shape}")
        out[name] = np.where(inside, arr, np.float32(value))
    return out


def fill_not_estimated(maps: Mapping[str, ArrayLike], estimated: ArrayLike) -> dict[str, np.ndarray]:
    """Every map set to :data:`NOT_ESTIMATED_VALUE` (0) where its method gave no estimate.

    The rule for voxels without an estimate (see the module docstring), e.g.
    dictionary matching's unmatched voxels (outside its mask, a NaN/Inf frame,
    all frames zero), which :class:`~mrfengine.matching.MatchResult` holds as
    NaN parameters.

    Parameters
    ----------
    maps : mapping of str to array_like
        Maps of one volume, each of ``estimated``'s shape.
    estimated : array_like of bool
        True where the method estimated the voxel (``MatchResult.matched``).

    Returns
    -------
    dict of str to ndarray, float32
        New arrays; the estimated voxels keep their values.

    Raises
    ------
    ValidationError
        A map whose shape is not ``estimated``'s.
    """
    return _keep_where(maps, estimated, NOT_ESTIMATED_VALUE, "the mask of estimated voxels")


def has_estimate(values: ArrayLike) -> np.ndarray:
    """Where a relaxation-time map (T1, T2*) holds an estimate: finite and not
    :data:`NOT_ESTIMATED_VALUE` (0 s is no tissue's T1 or T2*).

    For readers of written maps (an evaluation leaving out the voxels the
    matcher did not match): old stores hold NaN there, new ones 0; both are
    "no estimate".  Not for probabilities, B1 or M0, where 0 is a value.

    Returns
    -------
    ndarray of bool, ``values``' shape
    """
    arr = np.asarray(values)
    with np.errstate(invalid="ignore"):
        return np.isfinite(arr) & (arr != NOT_ESTIMATED_VALUE)


def outside_rule_fields(mask: str | None, source: str) -> dict[str, Any]:
    """The sidecar fields that state the outside rule for a map.

    Parameters
    ----------
    mask : str or None
        The brain mask's file name (written beside the maps, or the one the
        user gave); None when no mask was applied (the whole field of view).
    source : str
        Where the mask came from: ``"given"``, :data:`MASK_METHOD`,
        :data:`BRAIN_MASK_SOURCE`, or ``"none"``.

    Returns
    -------
    dict
        ``BrainMask`` (the file, or None), ``BrainMaskSource`` and
        ``OutsideBrainValue`` (:data:`OUTSIDE_BRAIN_VALUE`, or None when
        nothing is outside).
    """
    applied = mask is not None
    return {"BrainMask": mask, "BrainMaskSource": source if applied else "none",
            "OutsideBrainValue": OUTSIDE_BRAIN_VALUE if applied else None}
