"""Distortion correction: the matched maps onto the subject's T2-weighted reference.

The MRF-EPI series is distorted along its phase-encoding direction (B0
inhomogeneity near the sinuses and the petrous bones) while the subject's
spin-echo T2-weighted image is not; the paper registered the T1 map rigidly
to the T2w image with ANTs and resampled it with B-splines.  A rigid
transform cannot undo a distortion that varies across the brain, so
:func:`register_to_reference` does what fieldmap-less distortion correction
does (SDCFlows' "SyN-SDC" in fMRIPrep): ANTs (antspyx)

1. a rigid registration (6 parameters, Mattes mutual information, three
   levels), which takes out head motion between the scans, then
2. a symmetric-normalisation (SyN) displacement field *restricted to the
   phase-encoding axis* (Mattes mutual information, three levels), which
   takes out the distortion and nothing else,

on copies of the images cropped to the brain and block-averaged to about
``grid_mm`` (2 mm): a displacement field is smooth, and the cropped coarse
grid makes the registration several times faster with the same residual.
``phase_encoding="none"`` stops after step 1 (the paper's rigid registration).

The moving image is the matched T1 map: its contrast orders CSF, grey and
white matter as the T2w image does, and mutual information does not need
more.  (A T2w-like image synthesised from M0, T1 and T2* registered worse:
T2* is not T2.)

The result, :class:`Registration`, is stored with the subject in voxel
units, independent of ANTs: the rigid part as a 4 x 4 matrix from reference
voxel indices ``(z, y, x, 1)`` to MRF voxel indices, and the displacement
along the phase-encoding axis as a (Z, Y, X) map on the reference grid, so
the tissue at reference voxel ``p`` lies at MRF voxel
``matrix @ (p + displacement(p) * e_pe)``.  :meth:`Registration.resample`
applies it with scipy (cubic B-spline for maps, linear for probabilities,
nearest for masks), so reading a stored correction never needs ANTs.

Why ANTs and not SimpleITK: both register rigidly in a few seconds at this
size with the same accuracy (measured in ``benchmarks/README.md``), but only
ANTs restricts a deformable registration to one axis (``--restrict-deformation``),
which the distortion needs: rigid alone leaves 0.56 voxel RMS on a
paper-sized phantom subject, above the 0.5 voxel target; rigid + restricted
SyN leaves 0.30.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validate import check_float
from .errors import ValidationError

__all__ = ["PHASE_ENCODING_AXES", "Registration", "register_to_reference", "true_displacement_residual"]

#: ``phase_encoding`` option -> array axis of a (Z, Y, X) volume: BIDS's ``PhaseEncodingDirection``
#: letters (``j``: the second voxel axis of the NIfTI, the cohort's Y; ``i``: X; ``k``: the slice
#: axis), ``none`` for a rigid registration only.
PHASE_ENCODING_AXES: Mapping[str, int | None] = {"j": 1, "i": 2, "k": 0, "none": None}

#: Margin around the moving image's brain kept when cropping (mm).
_MARGIN_MM = 10.0


@dataclass(frozen=True)
class Registration:
    """A correction of one subject, in voxel units of its (Z, Y, X) grid.

    Attributes
    ----------
    matrix : ndarray, (4, 4) float64
        Rigid part: reference voxel ``(z, y, x, 1)`` -> MRF voxel ``(z, y, x, 1)``.
    displacement : ndarray (Z, Y, X) float32, or None
        Displacement along ``phase_axis`` in voxels, on the reference grid,
        applied before ``matrix``; None for a rigid registration.
    phase_axis : int or None
        The array axis of the displacement (1 for the cohort's Y).
    info : dict
        JSON-compatible provenance: method, ANTs version, levels, timings,
        the rigid motion (degrees, mm) and the displacement's size.
    """

    matrix: np.ndarray
    displacement: np.ndarray | None = None
    phase_axis: int | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """MRF voxel coordinates of reference voxel coordinates.

        Parameters
        ----------
        points : ndarray, (3, N)
            Integer reference voxel indices ``(z, y, x)`` (the displacement
            is read at these voxels).

        Returns
        -------
        ndarray, (3, N) float64
        """
        p = np.asarray(points, dtype=np.float64)
        if self.displacement is not None and self.phase_axis is not None:
            idx = tuple(np.asarray(points[k], dtype=np.intp) for k in range(3))
            p = p.copy()
            p[self.phase_axis] += self.displacement[idx]
        return self.matrix[:3, :3] @ p + self.matrix[:3, 3:4]

    def resample(self, image: np.ndarray, *, order: int = 3, where: np.ndarray | None = None,
                 fill: float = 0.0) -> np.ndarray:
        """``image`` (MRF grid) on the reference grid.

        Parameters
        ----------
        image : ndarray, (Z, Y, X)
        order : int
            3: cubic B-spline (maps); 1: linear (probabilities); 0: nearest (masks, labels).
        where : ndarray of bool, optional
            Reference voxels to compute (others get ``fill``): the brain, so
            the whole-field-of-view interpolation is not paid for.
        fill : float
            Value outside ``where`` and where a voxel maps outside the MRF grid.

        Returns
        -------
        ndarray, float32, the shape of ``image``
        """
        from scipy import ndimage

        image = np.asarray(image, dtype=np.float32)
        out = np.full(image.shape, fill, dtype=np.float32)
        points = np.nonzero(np.ones(image.shape, bool) if where is None else where)
        if not len(points[0]):
            return out
        coords = self.coordinates(np.stack(points))
        # a voxel within half a voxel of the grid's edge takes the edge's value (scipy's "constant" mode
        # would give the first and last planes' voxels that map just outside the fill)
        size = np.asarray(image.shape, dtype=np.float64)[:, None]
        inside = np.all((coords >= -0.5) & (coords <= size - 0.5), axis=0)
        values = ndimage.map_coordinates(image, coords, order=order, mode="nearest", prefilter=order > 1)
        out[points] = np.where(inside, values, np.float32(fill))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description (the displacement map is stored as an array of its own)."""
        return {"matrix": np.round(self.matrix, 9).tolist(), "phase_axis": self.phase_axis, **self.info}


def _downsample(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Block means of ``factors`` voxels (trailing partial blocks dropped)."""
    cut = tuple(slice(0, (n // k) * k) for n, k in zip(a.shape, factors))
    a = a[cut]
    shape: list[int] = []
    for n, k in zip(a.shape, factors):
        shape += [n // k, k]
    return a.reshape(shape).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _check_inputs(moving: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float],
                  mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    moving = np.asarray(moving, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if moving.ndim != 3 or reference.shape != moving.shape:
        raise ValidationError(f"the moving image and the reference must be 3D on one grid (Z, Y, X); got "
                              f"{moving.shape} and {reference.shape}")
    spacing = np.asarray([check_float(v, "spacing_zyx", minimum=0.0, exclusive_minimum=True)
                          for v in spacing_zyx], dtype=np.float64)
    if spacing.shape != (3,):
        raise ValidationError(f"spacing_zyx must be three voxel sizes in mm; got {spacing_zyx!r}")
    region = moving > 0 if mask is None else np.asarray(mask, bool)
    if region.shape != moving.shape:
        raise ValidationError(f"the mask has shape {region.shape}; the images {moving.shape}")
    for name, a in (("moving image", moving), ("reference", reference)):
        if not np.isfinite(a).all():
            raise ValidationError(f"the {name} holds {int(np.count_nonzero(~np.isfinite(a)))} NaN/Inf value(s)")
    if not region.any():
        raise ValidationError("nothing to register: the moving image is 0 everywhere (or the mask is empty)")
    if not np.any(reference > 0):
        raise ValidationError("the reference image is 0 everywhere; is it the right image?")
    return moving, reference, spacing, region


def register_to_reference(
    moving: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    mask: np.ndarray | None = None,
    phase_encoding: str = "j",
    grid_mm: float = 2.0,
    rigid_iterations: Sequence[int] = (100, 50, 25),
    syn_iterations: Sequence[int] = (40, 20, 10),
    seed: int = 1,
) -> Registration:
    """Register ``moving`` (the matched T1 map, MRF space) to ``reference`` (the T2w image).

    Parameters
    ----------
    moving, reference : ndarray, (Z, Y, X)
        On one voxel grid (the subject's); ``moving`` is 0 outside the brain,
        as the pipeline stores maps.
    spacing_zyx : three floats
        Voxel size in mm along Z, Y, X.
    mask : ndarray of bool, optional
        The moving image's brain (default ``moving > 0``): the registration
        works in its bounding box plus 10 mm.
    phase_encoding : {"j", "i", "k", "none"}
        The phase-encoding axis (:data:`PHASE_ENCODING_AXES`); ``none``: rigid only.
    grid_mm : float
        Registration grid (block averages of about this size; the result is
        applied at full resolution).
    rigid_iterations, syn_iterations : sequences of three ints
        Iterations per level (shrink factors 4, 2, 1 on the ``grid_mm`` grid).
    seed : int
        ANTs' random seed (the metric's sampling).  With it and one ITK thread
        (:mod:`mrfengine._ants`) the same inputs give the same result.

    Returns
    -------
    Registration

    Raises
    ------
    ValidationError
        Images of different shapes, NaN/Inf, an empty image or mask, a bad option.
    """
    from ._ants import ants_seed, import_ants, itk_threads

    ants = import_ants()
    if phase_encoding not in PHASE_ENCODING_AXES:
        raise ValidationError(f"phase_encoding must be one of {list(PHASE_ENCODING_AXES)}; got {phase_encoding!r}")
    grid_mm = check_float(grid_mm, "grid_mm", minimum=0.0, exclusive_minimum=True)
    for name, its in (("rigid_iterations", rigid_iterations), ("syn_iterations", syn_iterations)):
        if len(its) != 3 or any(int(i) < 0 for i in its):
            raise ValidationError(f"{name} must be three iteration counts >= 0; got {its!r}")
    moving, reference, spacing, region = _check_inputs(moving, reference, spacing_zyx, mask)
    axis = PHASE_ENCODING_AXES[phase_encoding]
    shape = np.asarray(moving.shape)

    t0 = time.perf_counter()
    factors = np.maximum(1, np.round(grid_mm / spacing)).astype(int)
    nz = np.argwhere(region)
    margin = np.ceil(_MARGIN_MM / spacing).astype(int)
    lo = np.maximum(nz.min(axis=0) - margin, 0)
    lo -= lo % factors
    hi = np.minimum(nz.max(axis=0) + 1 + margin, shape)
    # at least 8 coarse voxels per axis where the volume has them (three levels of shrinking)
    hi = np.minimum(np.maximum(hi, lo + 8 * factors), shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    coarse = spacing * factors
    origin = (factors - 1) / 2.0 * spacing + lo * spacing  # physical centre of the first block

    def image(a: np.ndarray) -> Any:
        return ants.from_numpy(_downsample(a[box], factors), spacing=tuple(coarse), origin=tuple(origin))

    fixed, mov = image(reference), image(moving)
    sigmas = (2, 1, 0)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mrfengine-register-") as tmp, ants_seed(ants, seed):
        t1 = time.perf_counter()
        rigid = ants.registration(fixed, mov, type_of_transform="Rigid", aff_metric="mattes", aff_sampling=32,
                                  aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=sigmas,
                                  aff_iterations=tuple(int(i) for i in rigid_iterations),
                                  outprefix=os.path.join(tmp, "rigid_"))
        timings["rigid_s"] = time.perf_counter() - t1
        transforms = rigid["fwdtransforms"]
        warp_file = None
        if axis is not None:
            t1 = time.perf_counter()
            restrict = tuple(1 if k == axis else 0 for k in range(3))
            syn = ants.registration(fixed, mov, type_of_transform="SyNOnly", initial_transform=transforms,
                                    syn_metric="mattes", syn_sampling=32,
                                    reg_iterations=tuple(int(i) for i in syn_iterations),
                                    restrict_transformation=restrict, grad_step=0.3, flow_sigma=3, total_sigma=0,
                                    outprefix=os.path.join(tmp, "syn_"))
            timings["syn_s"] = time.perf_counter() - t1
            transforms = syn["fwdtransforms"]
            warp_file = next(t for t in transforms if t.endswith("Warp.nii.gz"))
        affine_file = next(t for t in transforms if t.endswith(".mat"))
        tx = ants.read_transform(affine_file)
        params = np.asarray(tx.parameters, dtype=np.float64)
        center = np.asarray(tx.fixed_parameters, dtype=np.float64)
        warp = ants.image_read(warp_file).numpy()[..., axis] if warp_file else None

    # physical (index * spacing, the full grid's origin 0) -> voxel units
    rot = params[:9].reshape(3, 3)
    trans = params[9:12] + center - rot @ center
    matrix = np.eye(4)
    matrix[:3, :3] = rot * spacing[None, :] / spacing[:, None]
    matrix[:3, 3] = trans / spacing
    displacement = None
    if warp is not None:
        from scipy import ndimage

        # the field on the coarse grid -> every reference voxel (linear; 0 outside its box, as ANTs does)
        grids = np.meshgrid(*[(np.arange(n) * spacing[k] - origin[k]) / coarse[k] for k, n in enumerate(shape)],
                            indexing="ij", sparse=True)
        coords = np.broadcast_arrays(*grids)
        displacement = ndimage.map_coordinates(warp.astype(np.float32), coords, order=1, mode="constant",
                                               cval=0.0).astype(np.float32) / np.float32(spacing[axis])
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1.0, 1.0))))
    info: dict[str, Any] = {
        "method": "ANTs rigid" + (" + SyN restricted to the phase-encoding axis" if axis is not None else ""),
        "metric": "Mattes mutual information (32 bins)",
        "ants_version": getattr(ants, "__version__", "unknown"),
        "phase_encoding": phase_encoding,
        "grid_mm": [round(float(v), 4) for v in coarse],
        "box_zyx": [[int(a), int(b)] for a, b in zip(lo, hi)],
        "rigid_iterations": [int(i) for i in rigid_iterations],
        "syn_iterations": [int(i) for i in syn_iterations] if axis is not None else None,
        "seed": int(seed),
        "itk_threads": itk_threads(),
        "rotation_deg": round(angle, 4),
        "translation_mm": [round(float(v), 4) for v in trans],
        "timings_s": {k: round(v, 3) for k, v in {**timings, "total_s": time.perf_counter() - t0}.items()},
    }
    if displacement is not None:
        inside = displacement[region]
        info["displacement_voxels"] = {"rms_in_brain": round(float(np.sqrt(np.mean(inside**2))), 4),
                                       "max_abs": round(float(np.abs(displacement).max()), 4)}
    return Registration(matrix, displacement, axis, info)


def true_displacement_residual(registration: Registration, distortion: np.ndarray, where: np.ndarray,
                               *, phase_axis: int = 1, motion: np.ndarray | None = None) -> dict[str, float]:
    """The correction's error against the phantom's truth, in voxels (RMS and 95th percentile in ``where``).

    Parameters
    ----------
    registration : Registration
    distortion : ndarray, (Z, Y, X)
        The phantom's ``truth/distortion``: MRF voxel ``y'`` shows the tissue
        at ``y' - d(y')`` along ``phase_axis``.
    where : ndarray of bool
        Reference voxels to score (the brain).
    motion : ndarray (4, 4), optional
        A known rigid motion of the reference: reference voxel ``p`` shows
        the tissue of truth voxel ``motion @ p`` (for tests that move the
        reference); default none.

    Returns
    -------
    dict
        ``rms``, ``p95`` and ``rms_without`` (the error of no correction), voxels.
    """
    from scipy import ndimage

    pts = np.stack(np.nonzero(where)).astype(np.float64)
    truth_pts = pts if motion is None else (np.asarray(motion)[:3, :3] @ pts + np.asarray(motion)[:3, 3:4])
    d = np.asarray(distortion, dtype=np.float64)
    # the MRF position y' of each truth point y solves y' - d(y') = y (fixed point; d is smooth and small)
    target = truth_pts.copy()
    for _ in range(50):
        moved = ndimage.map_coordinates(d, target, order=1, mode="nearest")
        new = truth_pts[phase_axis] + moved
        done = np.max(np.abs(new - target[phase_axis])) < 1e-4
        target[phase_axis] = new
        if done:
            break
    est = registration.coordinates(pts)
    err = np.sqrt(np.sum((est - target) ** 2, axis=0))
    none = np.sqrt(np.sum((pts - target) ** 2, axis=0))
    return {"rms": float(np.sqrt(np.mean(err**2))), "p95": float(np.percentile(err, 95)),
            "rms_without": float(np.sqrt(np.mean(none**2)))}
