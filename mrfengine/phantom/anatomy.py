"""Subject anatomy from the MNI152 2009 template that nilearn ships.

The template (T1-weighted image, grey- and white-matter probability maps,
brain mask; 1 mm, loaded offline through ``nilearn.datasets``) is warped into
each subject by a random smooth deformation (:class:`Deformation`) and
resampled onto the acquisition grid with ``scipy.ndimage.map_coordinates``
(linear).  Before sampling, the template is blurred with the extra width of
the target voxel (a box of width ``w`` has variance ``w^2 / 12``), so each
grid voxel gets approximately the tissue fractions of its whole volume:
partial volumes, not point samples.

Tissue fractions (``fractions``): the template's GM and WM maps are
*population* probabilities, averages of many registered brains, so the
cortex is a broad band of 0.5-0.9 grey matter where any one brain has a
ribbon of nearly pure grey matter with partial volume only at its edges.
``"subject"`` (the default) gives each 1 mm template voxel its most likely
tissue (CSF, GM or WM) before the partial-volume blur and the sampling, so
one subject's fractions are crisp inside tissues and mixed at boundaries, as
in a real brain (and as in a segmentation of it); ``"population"`` keeps
the probabilities themselves as fractions (generator version 1); ``"mixed"``
takes the mean of the two, a model no training cohort uses (the held-apart
preset's).

Fractions: ``CSF = brain - GM - WM``; deep grey matter is the grey and white
matter inside soft ellipsoids around the thalamus, caudate, putamen and
pallidum (MNI coordinates; the template files these nuclei partly as white
matter) and counts as part of GM; the lateral-ventricle region is CSF inside a central
ellipsoid, deep in the brain.

References
----------
Fonov V et al. Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 54:313-327, 2011 (the MNI ICBM152 2009 templates).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from ..errors import ValidationError
from .config import FRACTION_MODELS, AnatomyConfig, GridConfig
from .fields import SmoothField, grid_axes_mm

__all__ = [
    "Template",
    "load_template",
    "grid_affine",
    "Deformation",
    "random_deformation",
    "template_points",
    "Anatomy",
    "subject_anatomy",
    "DEEP_NUCLEI_MM",
    "FRACTION_MODELS",
]

log = logging.getLogger(__name__)

# (centre x, y, z; semi-axes x, y, z) in MNI mm, right hemisphere; mirrored in x.
DEEP_NUCLEI_MM: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((11.0, -18.0, 7.0), (8.0, 14.0, 9.0)),  # thalamus
    ((13.0, 13.0, 8.0), (5.5, 9.0, 9.0)),  # caudate head
    ((16.0, -6.0, 19.0), (4.5, 11.0, 4.5)),  # caudate body
    ((25.0, 2.0, 1.0), (6.0, 14.0, 9.0)),  # putamen
    ((19.0, -3.0, -1.0), (4.0, 8.0, 5.0)),  # globus pallidus
)
# The lateral ventricles lie inside this ellipsoid (MNI mm).
VENTRICLE_REGION_MM = ((0.0, -14.0, 14.0), (28.0, 44.0, 21.0))
_VENTRICLE_DEPTH_MM = 10.0


@dataclass(frozen=True)
class Template:
    """The template cropped to the brain, blurred for one target voxel size.

    Attributes
    ----------
    gm, wm, brain : ndarray, float32, (I, J, K)
        Probabilities in template voxel order (x, y, z); GM and WM are zero
        outside the brain mask, so GM + WM <= brain everywhere.
    t1w : ndarray, float32, (I, J, K)
        T1-weighted intensity relative to the median of pure white matter.
    affine : ndarray, (4, 4)
        Template voxel to MNI mm.
    """

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    t1w: np.ndarray
    affine: np.ndarray


@functools.lru_cache(maxsize=4)
def load_template(
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    fractions: Literal["subject", "population", "mixed"] = "subject",
) -> Template:
    """Load nilearn's MNI152 2009 maps (no download) and prepare them for a grid
    of ``voxel_size_mm`` = (dx, dy, dz); cached per process.

    ``fractions="subject"`` turns the population probabilities into one
    brain's tissues (each 1 mm voxel its most likely tissue) before the
    partial-volume blur; ``"population"`` keeps the probabilities;
    ``"mixed"`` takes the mean of the two (see the module docstring).

    Raises
    ------
    ValidationError
        ``fractions`` is not one of :data:`FRACTION_MODELS`.
    """
    from nilearn import datasets

    if fractions not in FRACTION_MODELS:
        raise ValidationError(f"fractions must be one of {FRACTION_MODELS}; got {fractions!r}")

    imgs = (
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
        datasets.load_mni152_template(resolution=1),
    )
    gm, wm, brain, t1w = (np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs)
    affine = np.asarray(imgs[0].affine, dtype=np.float64)
    brain = (brain > 0).astype(np.float32)
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    wm_level = float(np.median(t1w[wm > 0.95]))
    t1w = t1w / np.float32(wm_level)
    if fractions in ("subject", "mixed"):
        # Most likely tissue per 1 mm voxel (ties go to the first: CSF, GM, WM).
        label = np.argmax(np.stack([brain - gm - wm, gm, wm]), axis=0)
        gm_one = ((label == 1) * brain).astype(np.float32)
        wm_one = ((label == 2) * brain).astype(np.float32)
        if fractions == "mixed":  # halfway between one brain's and the population's fractions
            gm = np.float32(0.5) * (gm + gm_one)
            wm = np.float32(0.5) * (wm + wm_one)
        else:
            gm, wm = gm_one, wm_one
    # Crop to the brain plus a margin: less to blur and to sample.
    idx = np.nonzero(brain)
    lo = [max(0, int(i.min()) - 6) for i in idx]
    hi = [min(s, int(i.max()) + 7) for i, s in zip(idx, brain.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    affine = affine @ shift
    template_vox = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    width = np.asarray(voxel_size_mm, dtype=float) / template_vox
    sigma = np.sqrt(np.maximum(width**2 - 1.0, 0.0) / 12.0)
    out = []
    for arr in (gm, wm, brain, t1w):
        a = np.ascontiguousarray(arr[crop])
        if np.any(sigma > 0):
            a = ndi.gaussian_filter(a, sigma, mode="constant")
        out.append(a.astype(np.float32))
    log.debug("template cropped to %s, blurred with sigma %s voxels", out[0].shape, sigma.round(3))
    return Template(gm=out[0], wm=out[1], brain=out[2], t1w=out[3], affine=affine)


def grid_affine(grid: GridConfig) -> np.ndarray:
    """The acquisition grid's affine (voxel (x, y, z) to mm), axis-aligned RAS,
    centred on ``grid.center_mm`` and ``grid.slab_center_mm``."""
    z, y, x = grid.shape_zyx
    vx, vy, vz = grid.voxel_size_mm
    centre = np.array([grid.center_mm[0], grid.center_mm[1], grid.slab_center_mm])
    aff = np.diag([vx, vy, vz, 1.0])
    aff[:3, 3] = centre - np.array([vx * (x - 1), vy * (y - 1), vz * (z - 1)]) / 2
    return aff


@dataclass(frozen=True)
class Deformation:
    """Subject mm to template mm: ``q = c + M (p - c) + t + d(p)``.

    Attributes
    ----------
    center_mm : ndarray, (3,)
    matrix : ndarray, (3, 3)
        Rotation times scaling; scale > 1 makes the subject's brain smaller.
    translation_mm : ndarray, (3,)
    warp : tuple of SmoothField
        One field per axis for the non-linear displacement ``d``.
    warp_sd_mm : float
    """

    center_mm: np.ndarray
    matrix: np.ndarray
    translation_mm: np.ndarray
    warp: tuple[SmoothField, SmoothField, SmoothField]
    warp_sd_mm: float

    def describe(self) -> dict[str, object]:
        """JSON-compatible summary (stored in the subject's attributes)."""
        return {
            "matrix": np.round(self.matrix, 6).tolist(),
            "translation_mm": np.round(self.translation_mm, 4).tolist(),
            "warp_sd_mm": self.warp_sd_mm,
        }


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_deformation(config: AnatomyConfig, grid: GridConfig, rng: np.random.Generator) -> Deformation:
    """Draw one subject's deformation (scale, rotation, translation, smooth warp)."""
    scale = rng.uniform(*config.scale_range) * (1 + config.axis_scale_sd * rng.standard_normal(3))
    angles = rng.uniform(-1, 1, 3) * np.asarray(config.rotation_deg)
    shift = rng.uniform(-1, 1, 3) * np.asarray(config.translation_mm)
    warp = tuple(SmoothField(rng, config.warp_order) for _ in range(3))
    centre = np.array([grid.center_mm[0], grid.center_mm[1], grid.slab_center_mm])
    return Deformation(centre, _rotation(angles) @ np.diag(scale), shift, warp, config.warp_sd_mm)


def template_points(deformation: Deformation, affine: np.ndarray, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """Template (MNI) mm of every grid voxel: (3, Z, Y, X) float32."""
    x, y, z = grid_axes_mm(affine, shape_zyx)
    c = deformation.center_mm
    rel = (x - c[0], y - c[1], z - c[2])
    out = np.empty((3,) + tuple(shape_zyx), dtype=np.float32)
    m = deformation.matrix
    for i in range(3):
        out[i] = (
            m[i, 0] * rel[0][None, None, :] + m[i, 1] * rel[1][None, :, None] + m[i, 2] * rel[2][:, None, None]
            + (c[i] + deformation.translation_mm[i])
        )
        if deformation.warp_sd_mm > 0:
            out[i] += deformation.warp[i](x, y, z, sd=deformation.warp_sd_mm)
    return out


def _soft_ellipsoids(points: np.ndarray, shapes, *, mirror: bool, edge: float = 0.15) -> np.ndarray:
    """Max over ellipsoids of a soft inside-ness in [0, 1] at (3, N) points (mm)."""
    out = np.zeros(points.shape[1], dtype=np.float32)
    for centre, axes in shapes:
        for sign in ((1.0, -1.0) if mirror else (1.0,)):
            c = np.array([sign * centre[0], centre[1], centre[2]])[:, None]
            rho = np.sqrt((((points - c) / np.asarray(axes)[:, None]) ** 2).sum(axis=0))
            np.maximum(out, 1.0 / (1.0 + np.exp(np.clip((rho - 1.0) / edge, -50, 50))), out=out)
    return out


@dataclass
class Anatomy:
    """Tissue fractions of one subject on the acquisition grid, (Z, Y, X) float32.

    ``gm`` includes ``dgm``; ``brain = gm + wm + csf`` (up to rounding).
    ``t1w`` is the warped template intensity (relative to white matter);
    ``ventricles`` marks the lateral-ventricle CSF; ``depth_mm`` is the
    distance to the outside of the brain.
    """

    brain: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    dgm: np.ndarray
    t1w: np.ndarray
    ventricles: np.ndarray
    depth_mm: np.ndarray


def subject_anatomy(
    grid: GridConfig, deformation: Deformation, template: Template | None = None
) -> Anatomy:
    """Warp the template into one subject on the acquisition grid.

    Parameters
    ----------
    grid : GridConfig
    deformation : Deformation
    template : Template, optional
        Defaults to :func:`load_template` for the grid's voxel size (subject
        tissue fractions; pass a template to choose the population model).

    Returns
    -------
    Anatomy
    """
    template = load_template(tuple(float(v) for v in grid.voxel_size_mm)) if template is None else template
    affine = grid_affine(grid)
    shape = tuple(int(s) for s in grid.shape_zyx)
    q = template_points(deformation, affine, shape)
    inv = np.linalg.inv(template.affine)
    vox = np.einsum("ij,j...->i...", inv[:3, :3].astype(np.float32), q)
    vox += inv[:3, 3, None, None, None].astype(np.float32)
    sample = functools.partial(ndi.map_coordinates, order=1, mode="constant", cval=0.0, prefilter=False)
    brain = sample(template.brain, vox.reshape(3, -1)).reshape(shape)
    inside = brain > 1e-4
    pts = vox[:, inside]
    maps = {}
    for name in ("gm", "wm", "t1w"):
        full = np.zeros(shape, dtype=np.float32)
        full[inside] = sample(getattr(template, name), pts)
        maps[name] = full
    brain = np.where(inside, brain, 0).astype(np.float32)
    gm = np.clip(maps["gm"], 0, 1)
    wm = np.clip(maps["wm"], 0, 1)
    csf = np.clip(brain - gm - wm, 0, 1)
    mm = q[:, inside]
    deep = np.zeros(shape, dtype=np.float32)
    deep[inside] = _soft_ellipsoids(mm, DEEP_NUCLEI_MM, mirror=True)
    # The template files the nuclei partly as white matter: inside them, both
    # become deep grey matter (CSF stays CSF).
    dgm = deep * (gm + wm)
    wm = wm * (1 - deep)
    gm = gm * (1 - deep) + dgm
    vox_size = tuple(float(v) for v in grid.voxel_size_mm[::-1])
    depth = ndi.distance_transform_edt(brain >= 0.5, sampling=vox_size).astype(np.float32)
    region = np.zeros(shape, dtype=bool)
    region[inside] = _soft_ellipsoids(mm, (VENTRICLE_REGION_MM,), mirror=False, edge=0.05) > 0.5
    ventricles = region & (csf > 0.5) & (depth > _VENTRICLE_DEPTH_MM)
    return Anatomy(brain=brain, gm=gm, wm=wm, csf=csf, dgm=dgm, t1w=maps["t1w"], ventricles=ventricles,
                   depth_mm=depth)
