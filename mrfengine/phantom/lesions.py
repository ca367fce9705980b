"""MS-like white-matter lesions and simulated manual annotations.

Lesions (:func:`sample_lesions`, :func:`render_lesions`) are soft-bordered,
mildly irregular ellipsoids placed mostly around the lateral ventricles
(elongated radially, like Dawson's fingers), in deep white matter and next
to the cortex, with a heavy-tailed volume distribution (a few mm^3 to several
ml).  Rendering supersamples each voxel, so the lesion fraction of a voxel is
the share of its volume inside the lesion.

Annotations (:func:`annotate`) imitate a rater drawing binary masks: a
threshold that varies per session and per lesion, smooth boundary noise and,
now and then, a missed small lesion.  Two sessions of the same rater on the
same patient give the intra-observer agreement the paper reports (Dice 0.68).

References
----------
Filippi M et al. Multiple sclerosis. Nat Rev Dis Primers 4:43, 2018 (lesion
sites). Hermann I et al. BMC Med Imaging 21:107, 2021 (intra-observer Dice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import functools

import numpy as np
from scipy import ndimage as ndi

from .anatomy import Anatomy
from .config import AnnotationConfig, LesionConfig

__all__ = ["Lesion", "LesionMaps", "sample_lesions", "render_lesions", "annotate"]

LOCATIONS = ("periventricular", "deep", "juxtacortical")


@dataclass(frozen=True)
class Lesion:
    """One lesion: geometry in world mm and its relaxation factors."""

    location: str
    center_mm: tuple[float, float, float]
    axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    volume_mm3: float
    t1_factor: float
    t2star_factor: float
    pd: float
    edge_mm: float
    wobble: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("wobble")
        d.pop("rotation")
        return {k: (np.round(v, 4).tolist() if isinstance(v, tuple) else (round(v, 4) if isinstance(v, float) else v))
                for k, v in d.items()}


@dataclass
class LesionMaps:
    """Rendered lesions on the grid, (Z, Y, X).

    ``occupancy`` (float32) is the share of each voxel inside any lesion;
    ``owner`` (uint16) the 1-based lesion that dominates it (0: none);
    ``t1_factor``, ``t2star_factor`` and ``pd`` (float32) the owner's values.
    """

    occupancy: np.ndarray
    owner: np.ndarray
    t1_factor: np.ndarray
    t2star_factor: np.ndarray
    pd: np.ndarray


def _lesion_count(config: LesionConfig, rng: np.random.Generator) -> int:
    r = config.count_dispersion
    n = rng.negative_binomial(r, r / (r + config.count_mean))
    return int(np.clip(n, *config.count_range))


def _lesion_volume(config: LesionConfig, rng: np.random.Generator) -> float:
    if rng.random() < config.large_share:
        v = config.large_median_mm3 * np.exp(config.large_sigma * rng.standard_normal())
    else:
        v = config.volume_median_mm3 * np.exp(config.volume_sigma * rng.standard_normal())
    return float(np.clip(v, *config.volume_range_mm3))


@functools.lru_cache(maxsize=1)
def _soft_sphere_table() -> tuple[np.ndarray, np.ndarray]:
    """Volume of a logistic-edged sphere of core radius u (edge width 1):
    ``g(u) = 4 pi int_0^inf x^2 / (1 + exp(x - u)) dx`` on a grid of u."""
    u = np.linspace(0.0, 80.0, 801)
    x = np.linspace(0.0, 110.0, 5501)
    g = np.array([np.trapezoid(4 * np.pi * x**2 * 0.5 * (1 - np.tanh((x - ui) / 2)), x) for ui in u])
    return u, g


def _core_radius(volume_mm3: float, edge_mm: float) -> tuple[float, float]:
    """Core radius and edge width of a soft-edged sphere holding ``volume_mm3``.

    The edge narrows for lesions too small to hold a ``edge_mm`` edge (a
    soft sphere of radius 0 still holds about 22.7 w^3).
    """
    u, g = _soft_sphere_table()
    w = min(edge_mm, (volume_mm3 / (2 * g[0])) ** (1 / 3))
    return float(w * np.interp(volume_mm3 / w**3, g, u)), float(w)


def _frame(direction: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix whose first column is ``direction`` (unit)."""
    d = direction / np.linalg.norm(direction)
    helper = rng.standard_normal(3)
    helper -= helper @ d * d
    e2 = helper / np.linalg.norm(helper)
    return np.stack([d, e2, np.cross(d, e2)], axis=1)


def _candidates(anatomy: Anatomy, voxel_zyx: tuple[float, float, float], periventricular_mm: float
                ) -> dict[str, np.ndarray]:
    """Flat voxel indices where each kind of lesion may be centred."""
    a = anatomy
    cortex = (a.gm - a.dgm) > 0.5
    dist_cortex = ndi.distance_transform_edt(~cortex, sampling=voxel_zyx) if cortex.any() else np.full(a.gm.shape, 1e3)
    if a.ventricles.any():
        dist_vent = ndi.distance_transform_edt(~a.ventricles, sampling=voxel_zyx)
    else:
        dist_vent = np.full(a.gm.shape, 1e3)
    base = (a.dgm < 0.1) & (a.depth_mm > 6.0)
    sets = {
        "periventricular": base & (a.wm > 0.7) & (dist_vent <= periventricular_mm),
        "deep": base & (a.wm > 0.9) & (dist_vent > periventricular_mm) & (dist_cortex > 4.0),
        "juxtacortical": base & (a.wm > 0.6) & (dist_cortex <= 3.0),
    }
    fallback = np.flatnonzero(base & (a.wm > 0.5))
    out = {k: (np.flatnonzero(v) if v.any() else fallback) for k, v in sets.items()}
    out["_dist_vent"] = dist_vent  # type: ignore[assignment]
    return out


def sample_lesions(
    anatomy: Anatomy,
    affine: np.ndarray,
    config: LesionConfig,
    rng: np.random.Generator,
) -> list[Lesion]:
    """Draw one patient's lesions (count, sites, sizes, shapes, values).

    Parameters
    ----------
    anatomy : Anatomy
        Tissue fractions on the acquisition grid.
    affine : ndarray, (4, 4)
        The grid's axis-aligned affine.
    config : LesionConfig
    rng : numpy.random.Generator

    Returns
    -------
    list of Lesion
        Empty when the brain holds no white matter to place them in.
    """
    shape = anatomy.wm.shape
    voxel_zyx = (abs(affine[2, 2]), abs(affine[1, 1]), abs(affine[0, 0]))
    cand = _candidates(anatomy, voxel_zyx, config.periventricular_mm)
    dist_vent = cand.pop("_dist_vent")
    if all(v.size == 0 for v in cand.values()):
        return []
    grad = np.gradient(dist_vent, *voxel_zyx)
    weights = np.asarray(config.location_weights, dtype=float)
    lesions = []
    for _ in range(_lesion_count(config, rng)):
        kind = LOCATIONS[rng.choice(3, p=weights / weights.sum())]
        flat = cand[kind][rng.integers(cand[kind].size)]
        zyx = np.array(np.unravel_index(flat, shape), dtype=float) + rng.uniform(-0.5, 0.5, 3)
        centre = affine[:3, :3] @ zyx[::-1] + affine[:3, 3]
        volume = _lesion_volume(config, rng)
        e = rng.uniform(*config.elongation)
        r, edge = _core_radius(volume, config.edge_mm)
        axes = (r * e ** (2 / 3), r * e ** (-1 / 3), r * e ** (-1 / 3))
        iz, iy, ix = (int(v) for v in np.unravel_index(flat, shape))
        g_xyz = np.array([grad[2][iz, iy, ix], grad[1][iz, iy, ix], grad[0][iz, iy, ix]])
        if kind == "periventricular" and np.linalg.norm(g_xyz) > 1e-3:
            rot = _frame(g_xyz, rng)
        else:
            rot = _frame(rng.standard_normal(3), rng)
        wobble = tuple(
            (float(rng.uniform(0.3, 1.0)), *rng.standard_normal(3).round(6).tolist(), float(rng.uniform(0, 2 * np.pi)))
            for _ in range(3)
        )
        lesions.append(Lesion(
            location=kind,
            center_mm=tuple(float(v) for v in centre),
            axes_mm=tuple(float(v) for v in axes),
            rotation=tuple(tuple(float(v) for v in row) for row in rot),
            volume_mm3=volume,
            t1_factor=float(rng.uniform(*config.t1_factor)),
            t2star_factor=float(rng.uniform(*config.t2star_factor)),
            pd=float(config.pd * (1 + 0.02 * rng.standard_normal())),
            edge_mm=edge,
            wobble=wobble,
        ))
    return lesions


def _occupancy(lesion: Lesion, points_mm: np.ndarray, config: LesionConfig) -> np.ndarray:
    """Soft inside-ness in [0, 1] of (N, 3) world points."""
    rot = np.asarray(lesion.rotation)
    local = (points_mm - np.asarray(lesion.center_mm)) @ rot  # coordinates along the lesion's axes
    axes = np.asarray(lesion.axes_mm)
    rho = np.sqrt(((local / axes) ** 2).sum(axis=1))
    r_mean = float(np.exp(np.log(axes).mean()))
    unit = local / r_mean
    bump = np.zeros(len(points_mm))
    for amp, fx, fy, fz, phase in lesion.wobble:
        bump += amp * np.cos(unit @ np.array([fx, fy, fz]) + phase)
    rho = rho * (1 + config.irregularity * bump / 1.5)
    arg = np.clip((rho - 1.0) * r_mean / lesion.edge_mm, -50, 50)
    return 1.0 / (1.0 + np.exp(arg))


def render_lesions(
    lesions: list[Lesion], affine: np.ndarray, shape_zyx: tuple[int, int, int], config: LesionConfig
) -> LesionMaps:
    """Rasterise lesions with partial volumes (supersampled voxels).

    Each voxel is sampled on a regular sub-grid (about 0.8 mm spacing, at most
    4 points per axis); the
    mean soft inside-ness over the sub-grid is its occupancy.  Overlapping
    lesions combine by maximum.

    Returns
    -------
    LesionMaps
    """
    shape = tuple(int(s) for s in shape_zyx)
    occ = np.zeros(shape, dtype=np.float32)
    owner = np.zeros(shape, dtype=np.uint16)
    t1f = np.ones(shape, dtype=np.float32)
    t2f = np.ones(shape, dtype=np.float32)
    pd = np.zeros(shape, dtype=np.float32)
    vox_xyz = np.abs(np.diag(affine)[:3])
    n_sub = np.clip(np.ceil(vox_xyz / 0.8), 1, 4).astype(int)
    # Sub-voxel offsets in voxel units, centred in each voxel.
    offs = [((np.arange(n) + 0.5) / n - 0.5) for n in n_sub]
    sub = np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)  # (S, 3) as x, y, z
    inv = np.linalg.inv(affine)
    for k, les in enumerate(lesions, start=1):
        reach = max(les.axes_mm) * (1 + 2 * config.irregularity) + 6 * les.edge_mm
        corners = np.array(les.center_mm)[None, :] + reach * np.array([[-1, -1, -1], [1, 1, 1]])
        ijk = (inv[:3, :3] @ corners.T + inv[:3, 3, None]).T
        lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(shape[::-1]))
        if np.any(hi <= lo):
            continue
        gx, gy, gz = (np.arange(a, b) for a, b in zip(lo, hi))
        vox = np.stack(np.meshgrid(gx, gy, gz, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
        pts = (vox[:, None, :] + sub[None, :, :]).reshape(-1, 3)
        world = pts @ affine[:3, :3].T + affine[:3, 3]
        o = _occupancy(les, world, config).reshape(len(vox), len(sub)).mean(axis=1)
        o = o.reshape(len(gx), len(gy), len(gz)).transpose(2, 1, 0).astype(np.float32)  # to (z, y, x)
        box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        wins = (o > occ[box]) & (o > 1e-3)
        occ[box] = np.maximum(occ[box], o)
        owner[box][wins] = k
        t1f[box][wins] = les.t1_factor
        t2f[box][wins] = les.t2star_factor
        pd[box][wins] = les.pd
    return LesionMaps(occ, owner, t1f, t2f, pd)


def annotate(
    lesion_fraction: np.ndarray,
    owner: np.ndarray,
    volumes_mm3: np.ndarray,
    voxel_size_zyx: tuple[float, float, float],
    config: AnnotationConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """One simulated manual annotation session: a binary lesion mask.

    Parameters
    ----------
    lesion_fraction : ndarray, (Z, Y, X)
        The true lesion fraction.
    owner : ndarray of int, (Z, Y, X)
        1-based lesion index per voxel (0 outside lesions).
    volumes_mm3 : ndarray, (n_lesions,)
        Each lesion's true volume (index ``k - 1`` for lesion ``k``).
    voxel_size_zyx : (float, float, float)
    config : AnnotationConfig
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, uint8, (Z, Y, X)
        1 inside the annotated lesions.
    """
    out = np.zeros(lesion_fraction.shape, dtype=np.uint8)
    n = len(volumes_mm3)
    present = lesion_fraction > 0.02
    if n == 0 or not present.any():
        return out
    # Work in the bounding box of the lesions plus a margin.
    margin = [int(np.ceil(3.0 / v)) + 1 for v in voxel_size_zyx]
    idx = np.nonzero(present)
    box = tuple(slice(max(0, int(i.min()) - m), int(i.max()) + m + 1) for i, m in zip(idx, margin))
    frac = lesion_fraction[box]
    own = owner[box]
    # Nearest lesion of every voxel in the box (the rater's lesion).
    _, nearest = ndi.distance_transform_edt(own == 0, sampling=voxel_size_zyx, return_indices=True)
    near_owner = own[tuple(nearest)]
    near = ndi.binary_dilation(frac > 0.02, iterations=1)
    sigma = [config.boundary_smooth_mm / v for v in voxel_size_zyx]
    noise = ndi.gaussian_filter(rng.standard_normal(frac.shape), sigma)
    sd = noise.std()
    noise *= config.boundary_noise / sd if sd > 0 else 0.0
    session = rng.uniform(*config.threshold)
    per_lesion = np.concatenate([[0.0], config.lesion_threshold_sd * rng.standard_normal(n)])
    thr = session + per_lesion[near_owner]
    mask = near & (frac + noise > thr)
    missed = (np.asarray(volumes_mm3) < config.miss_volume_mm3) & (rng.random(n) < config.miss_probability)
    if missed.any():
        mask &= ~np.isin(near_owner, np.flatnonzero(missed) + 1)
    out[box] = mask
    return out
