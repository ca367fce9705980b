"""Tissue probability maps (GM, WM, CSF) from the matched T1 map, SPM-like.

The paper (Hermann et al. 2021) made its NAWM and GM probability maps with SPM on
the T1 map: tissue probability maps (TPMs) of a population registered to the
subject, and a Gaussian mixture of the intensities weighted by them (Ashburner
and Friston's "unified segmentation").  :func:`segment_tissues` does the same
with the MNI152 2009 templates that nilearn ships and a *partial-volume*
mixture of the T1 values, so that a probability behaves like the voxel's
tissue fraction (what the NAWM/GM targets at 80% are compared with).

Method (``method="pv"``, the default)
-------------------------------------
1. **Priors** (``priors="mni152"``).  nilearn's MNI152 2009 T1-weighted template
   (2 mm, brain-masked) is registered onto the subject's R1 map (1/T1 in the
   brain mask, which orders CSF, GM and WM as a T1-weighted image does) with
   ANTs: an affine transform (12 parameters), Mattes mutual information,
   centre-of-mass initialisation, the template in 4 mm blocks and the
   subject resampled to 4 mm (or its largest voxel size).  The
   subject's ``affine`` only places the image in space (its axes' directions
   and voxel sizes); the initialisation does not rely on it being
   MNI-aligned.  The template's GM and WM probability maps are resampled
   through the transform onto the subject grid (linear) and blurred with a
   Gaussian of ``prior_fwhm_mm`` (6 mm) full width at half maximum; CSF = 1 -
   GM - WM.  The blur is deliberate: SPM's TPMs are population maps of a few
   mm of spatial uncertainty, and the synthetic cohort's anatomy *is* a
   warped MNI152 template, so crisp priors would hand the truth to the
   segmentation.  The mixture model does the work; the priors only say where
   each tissue is likely.
2. **Partial-volume mixture** of the T1 values (ms) in the mask: three pure
   classes (CSF, GM, WM; Gaussians) and two mixed classes (CSF/GM, GM/WM)
   whose voxels hold a fraction ``a`` of one tissue uniformly distributed in
   (0, 1), with mean ``a mu_k + (1 - a) mu_l`` and standard deviation
   interpolated the same way (Santago and Gage 1993; Shattuck et al. 2001;
   Tohka et al. 2004).  On the phantom the matched T1 of a GM/WM voxel is
   linear in its GM fraction to within 1% (measured: 758, 1067 and 1361 ms at
   0, 0.5 and 1), closer than R1 or log T1, hence T1 itself.  A class's
   probability at a voxel is its proportion times the spatial prior to the
   power ``prior_weight`` (geometric mean of the two tissues' priors for a
   mixed class) times its likelihood; the class means, standard deviations
   and proportions are fitted by expectation-maximisation, started from a
   k-means of log T1 that begins at the literature's 3 T values
   (:mod:`mrfengine.tissue`).  The output
   is the expected *fraction* of each tissue: a pure class counts 1, a mixed
   class its posterior mean fraction.  Each voxel's GM + WM + CSF is 1.
3. ``method="atropos"``: ANTs Atropos (Avants et al. 2011) with the same
   priors (``PriorProbabilityImages``, ``prior_weight``), three Gaussian
   classes of log T1 and an MRF (0.1, radius 1): its *posterior*
   probabilities, as SPM's and Atropos' maps are; no partial-volume model.
   Slower (about 30 us per brain voxel on one thread: 20 s for a paper-sized
   subject) and sharp at tissue borders, so a probability is not a fraction
   (Dice 0.94-0.95 against 0.98, ``benchmarks/README.md``).

Without priors (``priors=None``) every voxel has the same class
proportions: a fallback, and the measure of what the priors add.  On the
synthetic cohort they add little: in a partial-volume model the mixed classes
cover the whole T1 range between two tissues, so the fraction follows T1
whatever the prior says about pure versus mixed.  Paper-sized subjects get the
same Dice with and without them; on the ``tiny`` and ``heldout`` presets prior
weights of 0.1 to 1 move each subject's Dice by up to 0.05 either way, none
better than no priors on average, 0.1 (:data:`DEFAULT_PRIOR_WEIGHT`) the least
harmful (``benchmarks/README.md``).  They stay the default as the paper's
(SPM's) method, for data less clean than the phantom, and because they cost a
few seconds.

Voxels in the mask without a T1 estimate (T1 of 0, :mod:`mrfengine.masking`)
take the spatial prior (or the fitted proportions without priors); outside
the mask every probability is 0.

Limits, measured on the synthetic cohort (``benchmarks/README.md``): deep grey
matter (T1 about 1150-1250 ms) lies where a 70/30 GM/WM mixture does and
usually gets a GM fraction of about 0.7, under the 80% threshold (its T2*,
about 31 ms against 56-60 ms for such a mixture, would tell them apart; the
model does not use it); MS lesions (T1 1.3-1.8 x WM) look like GM/WM mixtures
or GM, and 7-74% of a subject's lesion voxels get GM >= 0.8: the NAWM map is
WM outside the lesion mask (the ``segment`` stage), and the GM map may hold
lesion voxels.  Both cost the GM Dice less than 0.01 on paper-sized subjects.

Thread count and reproducibility: ANTs runs on the thread count settled when
mrfengine first imported it (:mod:`mrfengine._ants`: one thread unless
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is set before), with a fixed random
seed, so a result is reproducible; the mixture model is numpy.

References
----------
Ashburner J, Friston KJ. Unified segmentation. NeuroImage 26:839-851, 2005.
Santago P, Gage HD. Quantification of MR brain images by mixture density and
partial volume modeling. IEEE TMI 12:566-574, 1993.
Shattuck DW et al. Magnetic resonance image tissue classification using a
partial volume model. NeuroImage 13:856-876, 2001.
Tohka J, Zijdenbos A, Evans A. Fast and robust parameter estimation for
statistical partial volume models in brain MRI. NeuroImage 23:84-97, 2004.
Avants BB et al. An open source multivariate framework for n-tissue
segmentation with evaluation on public data. Neuroinformatics 9:381-400, 2011.
Fonov V et al. Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 54:313-327, 2011 (the MNI ICBM152 2009 templates).
"""

from __future__ import annotations

import functools
import glob
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

from ._validate import check_float, check_int
from .errors import ValidationError
from .tissue import TISSUES

__all__ = [
    "CLASSES",
    "DEFAULT_PRIOR_FWHM_MM",
    "DEFAULT_PRIOR_WEIGHT",
    "METHODS",
    "PRIORS",
    "TissueSegmentation",
    "mni152_priors",
    "segment_tissues",
]

CLASSES: tuple[str, ...] = ("GM", "WM", "CSF")
"""The tissue classes, as :attr:`TissueSegmentation.probabilities` names them."""
METHODS: tuple[str, ...] = ("pv", "atropos")
"""``pv``: the partial-volume mixture (fractions); ``atropos``: ANTs Atropos' posteriors."""
PRIORS: tuple[str, ...] = ("mni152",)
"""Prior sources; ``None`` for none."""
DEFAULT_PRIOR_WEIGHT = 0.1
"""Exponent of the spatial prior in a class's probability (0: priors initialise only; 1: full Bayes)."""
DEFAULT_PRIOR_FWHM_MM = 6.0
"""Full width at half maximum of the Gaussian blur of the registered priors (mm)."""

_ORDER = ("CSF", "GM", "WM")  # increasing R1, decreasing T1: the mixture's internal order
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
_REGISTRATION_GRID_MM = 4.0
_TEMPLATE_RESOLUTION_MM = 2
_SEED = 20210521
_PRIOR_FLOOR = 0.01  # every class keeps at least this spatial prior: a misregistered prior cannot veto
_SD_FLOOR = 0.02  # class standard deviation at least 2% of its mean (the dictionary's 5% grid steps)
_N_ALPHA = 20  # fraction grid of a mixed class
_EM_ITERATIONS = 30
_EM_TOLERANCE = 1e-5  # relative change of the mean log-likelihood
_FIT_VOXELS = 200_000  # the EM fits on at most this many voxels (a regular subsample), then labels all
_ATROPOS_ITERATIONS = 5
_ATROPOS_MRF = 0.1


@dataclass(frozen=True)
class TissueSegmentation:
    """GM, WM and CSF probability maps of one subject.

    Attributes
    ----------
    probabilities : dict of str to ndarray
        ``"GM"``, ``"WM"``, ``"CSF"``: float32 (Z, Y, X) in [0, 1], 0 outside
        the mask, summing to 1 inside it.  Tissue fractions with
        ``method="pv"``, posteriors with ``"atropos"``.
    info : dict
        JSON-compatible record: method, priors and their weight and blur, the
        registration, the fitted class means and standard deviations (ms),
        proportions, voxel counts, timings (s).
    """

    probabilities: dict[str, np.ndarray]
    info: dict[str, Any]


# --------------------------------------------------------------------------- inputs
def _volume(value: ArrayLike, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 3:
        raise ValidationError(f"{name} must be a 3D (Z, Y, X) array; got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValidationError(f"{name} has shape {arr.shape}; t1_ms has {shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValidationError(f"{name} must be numeric; got dtype {arr.dtype}")
    return arr


def _check_inputs(t1_ms, mask, spacing_zyx, t2star_ms, m0, affine):
    t1 = _volume(t1_ms, "t1_ms", None).astype(np.float32, copy=False)
    shape = t1.shape
    raw = _volume(mask, "mask", shape)
    if raw.dtype != bool:
        if not np.all(np.isfinite(raw)):
            raise ValidationError("mask holds NaN or Inf; it must be 0/1 (or boolean)")
        if not np.all((raw == 0) | (raw == 1)):
            raise ValidationError("mask must be 0/1 (or boolean); it holds other values")
    region = raw.astype(bool)
    if not region.any():
        raise ValidationError("mask is empty: no brain voxel to segment")
    try:
        spacing = np.asarray(spacing_zyx, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise ValidationError(f"spacing_zyx must be three voxel sizes in mm (z, y, x); got {spacing_zyx!r}") from None
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise ValidationError(f"spacing_zyx must be three positive finite voxel sizes in mm; got {spacing.tolist()}")
    inside = t1[region]
    if not np.all(np.isfinite(inside)):
        raise ValidationError(f"t1_ms holds {int((~np.isfinite(inside)).sum())} NaN/Inf value(s) inside the mask "
                              "(a voxel without an estimate is 0, mrfengine.masking)")
    if np.any(inside < 0):
        raise ValidationError(f"t1_ms holds {int((inside < 0).sum())} negative value(s) inside the mask")
    extra = {}
    for name, value in (("t2star_ms", t2star_ms), ("m0", m0)):
        if value is not None:
            arr = _volume(value, name, shape)
            if not np.all(np.isfinite(arr[region])):
                raise ValidationError(f"{name} holds NaN or Inf inside the mask")
            extra[name] = arr
    if affine is None:
        aff = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape[::-1], dtype=float) - 1) / 2)
    else:
        aff = np.asarray(affine, dtype=np.float64)
        if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
            raise ValidationError(f"affine must be a finite 4 x 4 matrix; got shape {aff.shape}")
        zooms = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))  # x, y, z
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise ValidationError("affine is singular")
        if not np.allclose(zooms, spacing[::-1], rtol=1e-3, atol=1e-4):
            raise ValidationError(f"affine's voxel sizes (x, y, z) {np.round(zooms, 4).tolist()} mm differ from "
                                  f"spacing_zyx {spacing.tolist()} (z, y, x)")
    return t1, region, spacing, extra, aff


# --------------------------------------------------------------------------- ANTs
def _ants_image(ants: Any, arr_zyx: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTs image of a (Z, Y, X) array whose NIfTI affine maps (x, y, z) indices to RAS mm."""
    lps = _RAS_TO_LPS @ affine[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    data = np.ascontiguousarray(np.asarray(arr_zyx, dtype=np.float32).transpose(2, 1, 0))
    return ants.from_numpy(data, origin=tuple(float(v) for v in _RAS_TO_LPS @ affine[:3, 3]),
                           spacing=tuple(float(v) for v in spacing), direction=lps / spacing)


def _zyx(image: Any) -> np.ndarray:
    return np.ascontiguousarray(image.numpy().transpose(2, 1, 0), dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _mni152(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009 maps (offline): T1w (brain-masked), GM, WM (each (Z, Y, X)) and the affine."""
    from nilearn import datasets

    imgs = (datasets.load_mni152_template(resolution=resolution),
            datasets.load_mni152_gm_template(resolution=resolution),
            datasets.load_mni152_wm_template(resolution=resolution),
            datasets.load_mni152_brain_mask(resolution=resolution))
    t1w, gm, wm, brain = (np.asarray(i.get_fdata(dtype=np.float32)) for i in imgs)
    brain = (brain > 0).astype(np.float32)
    gm = np.clip(gm, 0, 1) * brain
    wm = np.clip(wm, 0, 1) * brain
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    out = tuple(np.ascontiguousarray(a.transpose(2, 1, 0)) for a in (t1w * brain, gm, wm))
    for a in out:
        a.setflags(write=False)
    return out[0], out[1], out[2], np.asarray(imgs[0].affine, dtype=np.float64)


def mni152_priors(t1_ms: np.ndarray, mask: np.ndarray, affine: np.ndarray, *,
                  fwhm_mm: float = DEFAULT_PRIOR_FWHM_MM) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The MNI152 GM/WM/CSF priors registered onto one subject and blurred (module docstring, step 1).

    Parameters
    ----------
    t1_ms : ndarray, (Z, Y, X)
        The T1 map (ms); 0 where not estimated.
    mask : ndarray of bool, (Z, Y, X)
    affine : ndarray, (4, 4)
        The subject's voxel (x, y, z) to RAS mm; only its directions and voxel
        sizes matter to the result (the registration starts from the centres
        of mass).
    fwhm_mm : float
        Blur of the resampled priors (0: none).

    Returns
    -------
    priors : dict of str to ndarray
        ``"GM"``, ``"WM"``, ``"CSF"``: float32 (Z, Y, X), summing to 1 everywhere.
    info : dict
        The registration (transform, mutual-information metric, correlation of
        the registered template with the subject's R1 in the mask) and timings.
    """
    from ._ants import ants_seed, import_ants, itk_threads

    ants = import_ants()
    t0 = time.perf_counter()
    template, gm, wm, t_affine = _mni152(_TEMPLATE_RESOLUTION_MM)
    estimated = mask & (t1_ms > 0)
    r1 = np.zeros(t1_ms.shape, np.float32)
    r1[estimated] = 1000.0 / t1_ms[estimated]
    fixed_full = _ants_image(ants, r1, affine)
    grid_mm = max(_REGISTRATION_GRID_MM, float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).max()))
    fixed = ants.resample_image(fixed_full, (grid_mm,) * 3, use_voxels=False, interp_type=0)
    # the moving template in 2 x 2 x 2 blocks (4 mm): the registration's cost is the moving image's size
    crop = tuple(slice(0, n - n % 2) for n in template.shape)
    blocks = template[crop].reshape(template.shape[0] // 2, 2, template.shape[1] // 2, 2, template.shape[2] // 2, 2)
    coarse_affine = t_affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    coarse_affine[:3, 3] = t_affine[:3, :3] @ np.full(3, 0.5) + t_affine[:3, 3]
    moving = _ants_image(ants, blocks.mean(axis=(1, 3, 5)), coarse_affine)
    with tempfile.TemporaryDirectory(prefix="mrfengine-segment-") as tmp, ants_seed(ants, _SEED):
        t1 = time.perf_counter()
        reg = ants.registration(fixed, moving, type_of_transform="Affine", aff_metric="mattes", aff_sampling=32,
                                aff_random_sampling_rate=0.25, aff_iterations=(200, 100),
                                aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0),
                                outprefix=os.path.join(tmp, "mni_"))
        t_reg = time.perf_counter() - t1
        transforms = reg["fwdtransforms"]
        tx = ants.read_transform(transforms[0])
        params = np.asarray(tx.parameters, dtype=np.float64)
        warped = {}
        for name, arr in (("T1w", template), ("GM", gm), ("WM", wm)):
            out = ants.apply_transforms(fixed_full, _ants_image(ants, arr, t_affine), transforms,
                                        interpolator="linear")
            warped[name] = _zyx(out)
    t1 = time.perf_counter()
    spacing_zyx = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[::-1]
    if fwhm_mm > 0:
        sigma = fwhm_mm / math.sqrt(8 * math.log(2)) / spacing_zyx
        for name in ("GM", "WM"):
            warped[name] = ndi.gaussian_filter(warped[name], sigma, mode="constant")
    pg = np.clip(warped["GM"], 0, 1)
    pw = np.clip(warped["WM"], 0, 1)
    total = pg + pw
    over = total > 1
    pg[over] /= total[over]
    pw[over] /= total[over]
    priors = {"GM": pg, "WM": pw, "CSF": np.clip(1 - pg - pw, 0, 1)}
    # a floor, renormalised: a prior that misses a tissue (misregistration, a lesion) never vetoes it
    priors = {name: (1 - 3 * _PRIOR_FLOOR) * p + _PRIOR_FLOOR for name, p in priors.items()}
    total = sum(priors.values())
    priors = {k: (v / total).astype(np.float32) for k, v in priors.items()}
    corr = float(np.corrcoef(warped["T1w"][estimated], r1[estimated])[0, 1]) if estimated.sum() > 2 else float("nan")
    info = {
        "template": f"MNI152 2009 (nilearn, {_TEMPLATE_RESOLUTION_MM} mm): T1w, GM, WM; CSF = 1 - GM - WM",
        "registration": "ANTs affine (12 parameters), Mattes mutual information, centre-of-mass initialisation, "
                        f"template onto the subject's R1 at {grid_mm:g} mm",
        "affine_parameters": [round(float(v), 6) for v in params],
        "template_r1_correlation": round(corr, 4),
        "fwhm_mm": float(fwhm_mm),
        "prior_floor": _PRIOR_FLOOR,
        "seed": _SEED,
        "itk_threads": itk_threads(),
        "timings_s": {"register": round(t_reg, 3), "resample_blur": round(time.perf_counter() - t1, 3),
                      "total": round(time.perf_counter() - t0, 3)},
    }
    return priors, info


# --------------------------------------------------------------------------- the partial-volume mixture
def _kmeans_1d(x: np.ndarray, centres: np.ndarray, iterations: int = 50) -> np.ndarray:
    c = np.sort(centres.astype(np.float64))
    for _ in range(iterations):
        edges = (c[1:] + c[:-1]) / 2
        label = np.searchsorted(edges, x)
        new = np.array([x[label == k].mean() if np.any(label == k) else c[k] for k in range(c.size)])
        if np.allclose(new, c):
            break
        c = new
    return c


class _PVModel:
    """Pure CSF, GM, WM and mixed CSF/GM, GM/WM classes of T1 (ms), fitted by EM."""

    PAIRS = ((1, 0), (2, 1))  # (k, l): the mixed class's fraction a is tissue k's (GM of CSF/GM, WM of GM/WM)

    def __init__(self, mu: np.ndarray, sd: np.ndarray, proportions: np.ndarray):
        self.mu = mu.astype(np.float64)
        self.sd = sd.astype(np.float64)
        self.lam = proportions.astype(np.float64)
        self.alpha = (np.arange(_N_ALPHA) + 0.5) / _N_ALPHA

    def _tables(self, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log-likelihood of each class (5, G) and each mixed class's mean fraction (2, G) on a T1 grid."""
        logl = np.empty((5, grid.size))
        frac = np.empty((2, grid.size))
        for k in range(3):
            logl[k] = -0.5 * ((grid - self.mu[k]) / self.sd[k]) ** 2 - np.log(self.sd[k])
        a = self.alpha[:, None]
        for p, (k, l) in enumerate(self.PAIRS):
            mean = a * self.mu[k] + (1 - a) * self.mu[l]
            sd = a * self.sd[k] + (1 - a) * self.sd[l]
            lj = -0.5 * ((grid[None] - mean) / sd) ** 2 - np.log(sd)
            top = lj.max(axis=0)
            e = np.exp(lj - top)
            total = e.sum(axis=0)
            logl[3 + p] = top + np.log(total / _N_ALPHA)
            frac[p] = (self.alpha[:, None] * e).sum(axis=0) / total
        return logl, frac

    def posteriors(self, log_t1: np.ndarray, log_prior: np.ndarray | None, grid: np.ndarray):
        """Class posteriors (5, N), mixed fractions (2, N) and the mean log-likelihood."""
        table, frac_table = self._tables(np.exp(grid))
        logl = np.stack([np.interp(log_t1, grid, row) for row in table])
        frac = np.stack([np.interp(log_t1, grid, row) for row in frac_table])
        lp = logl + np.log(np.maximum(self.lam, 1e-12))[:, None]
        if log_prior is not None:
            lp += log_prior
        top = lp.max(axis=0)
        post = np.exp(lp - top)
        total = post.sum(axis=0)
        post /= total
        return post, frac, float(np.mean(top + np.log(total)))

    def update(self, t1: np.ndarray, post: np.ndarray, log_prior: np.ndarray | None) -> None:
        """M-step: proportions, and each pure class's mean and standard deviation.

        With spatial priors ``b`` the proportions ``g`` of ``g_c b_c(x) / sum_k g_k b_k(x)``
        are updated as in Ashburner and Friston (2005, eq. 27):
        ``g_c = sum_x P_c(x) / sum_x (b_c(x) / sum_k g_k b_k(x))``; the mean posterior
        alone would count the priors again at every iteration.
        """
        if log_prior is None:
            self.lam = post.mean(axis=1)
        else:
            b = np.exp(log_prior)
            norm = (self.lam[:, None] * b).sum(axis=0)
            self.lam = post.sum(axis=1) / (b / norm).sum(axis=1)
            self.lam /= self.lam.sum()
        for k in range(3):
            w = post[k]
            if w.sum() < 1e-6 * w.size:  # an empty class keeps its parameters
                continue
            self.mu[k] = float((w * t1).sum() / w.sum())
            var = float((w * (t1 - self.mu[k]) ** 2).sum() / w.sum())
            self.sd[k] = max(math.sqrt(var), _SD_FLOOR * self.mu[k])


def _log_spatial_prior(priors: dict[str, np.ndarray] | None, where: np.ndarray, weight: float):
    if priors is None:
        return None
    p = np.stack([priors[name][where].astype(np.float64) for name in _ORDER])  # CSF, GM, WM
    logp = np.log(np.maximum(p, 1e-12))
    mixed = np.stack([(logp[0] + logp[1]) / 2, (logp[1] + logp[2]) / 2])  # geometric mean of the two
    return weight * np.concatenate([logp, mixed])


def _initial_model(t1: np.ndarray) -> _PVModel:
    """k-means of log T1 started from the literature's 3 T values (:mod:`mrfengine.tissue`).

    A class without voxels (a volume without CSF) keeps its literature mean
    and the EM gives it a proportion near 0.
    """
    start = np.log([TISSUES[name].t1_ms for name in ("WM", "GM", "CSF")])
    mu = np.exp(_kmeans_1d(np.log(t1), start))[::-1]  # CSF, GM, WM
    sd = np.maximum(0.05 * mu, _SD_FLOOR * mu)
    return _PVModel(mu, sd, np.array([0.1, 0.3, 0.2, 0.1, 0.3]))


def _pv_mixture(t1: np.ndarray, where: np.ndarray, priors: dict[str, np.ndarray] | None, weight: float):
    """Fractions (CSF, GM, WM) of the voxels ``where`` (the T1 there > 0) and the fit's record."""
    values = t1[where].astype(np.float64)
    log_t1 = np.log(values)
    grid = np.linspace(log_t1.min(), log_t1.max() + 1e-9, 2048)
    log_prior = _log_spatial_prior(priors, where, weight)
    step = max(1, values.size // _FIT_VOXELS)
    fit = slice(None, None, step)
    model = _initial_model(values[fit])
    previous = -np.inf
    iterations = 0
    for iterations in range(1, _EM_ITERATIONS + 1):
        post, _, ll = model.posteriors(log_t1[fit], None if log_prior is None else log_prior[:, fit], grid)
        model.update(values[fit], post, None if log_prior is None else log_prior[:, fit])
        if abs(ll - previous) <= _EM_TOLERANCE * abs(ll):
            break
        previous = ll
    post, frac, ll = model.posteriors(log_t1, log_prior, grid)
    csf = post[0] + post[3] * (1 - frac[0])
    gm = post[1] + post[3] * frac[0] + post[4] * (1 - frac[1])
    wm = post[2] + post[4] * frac[1]
    names = ("CSF", "GM", "WM", "CSF/GM", "GM/WM")
    record = {
        "class_t1_ms": {n: round(float(v), 1) for n, v in zip(_ORDER, model.mu)},
        "class_t1_sd_ms": {n: round(float(v), 1) for n, v in zip(_ORDER, model.sd)},
        "class_proportions": {n: round(float(v), 4) for n, v in zip(names, model.lam)},
        "em_iterations": iterations,
        "fit_voxels": int(values[fit].size),
        "mean_log_likelihood": round(ll, 4),
    }
    return (csf, gm, wm), record


# --------------------------------------------------------------------------- Atropos
def _atropos(t1: np.ndarray, where: np.ndarray, affine: np.ndarray, priors: dict[str, np.ndarray] | None,
             weight: float):
    """ANTs Atropos' posteriors (CSF, GM, WM) in ``where`` and its record."""
    from ._ants import import_ants

    ants = import_ants()
    from ants.internal import get_lib_fn, get_pointer_string, process_arguments

    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(where))
    sub = where[box]
    shift = np.eye(4)
    shift[:3, 3] = [box[2].start, box[1].start, box[0].start]
    aff = affine @ shift
    feature = np.zeros(sub.shape, np.float32)
    feature[sub] = np.log(t1[box][sub])
    image = _ants_image(ants, feature, aff)
    mask_image = _ants_image(ants, sub.astype(np.float32), aff).clone("unsigned int")
    labels = image.clone("unsigned int")
    with tempfile.TemporaryDirectory(prefix="mrfengine-atropos-") as tmp:
        if priors is not None:
            for k, name in enumerate(_ORDER):
                ants.image_write(_ants_image(ants, np.where(sub, priors[name][box], 0), aff),
                                 os.path.join(tmp, f"prior{k + 1:02d}.nii"))
            init = f"PriorProbabilityImages[3,{os.path.join(tmp, 'prior%02d.nii')},{weight}]"
        else:
            init = "KMeans[3]"
        args = {"d": 3, "a": image, "x": mask_image, "i": init, "m": f"[{_ATROPOS_MRF},1x1x1]",
                "c": f"[{_ATROPOS_ITERATIONS},0]", "r": 0,
                "o": f"[{get_pointer_string(labels)},{os.path.join(tmp, 'posterior%02d.nii')}]"}
        status = get_lib_fn("Atropos")(process_arguments(args))
        files = sorted(glob.glob(os.path.join(tmp, "posterior*.nii")))
        if status != 0 or len(files) != 3:
            raise RuntimeError(f"ANTs Atropos failed (status {status}, {len(files)} posterior images)")
        post = [_zyx(ants.image_read(f))[sub] for f in files]
    if priors is None:  # k-means orders the classes by increasing log T1: WM, GM, CSF
        post = post[::-1]
    total = np.maximum(sum(post), 1e-12)
    out = tuple(p / total for p in post)
    t1_in = t1[where]
    means = {n: round(float((p * t1_in).sum() / max(p.sum(), 1e-12)), 1) for n, p in zip(_ORDER, out)}
    record = {"class_t1_ms": means, "iterations": _ATROPOS_ITERATIONS, "mrf": _ATROPOS_MRF,
              "feature": "log T1", "likelihood": "Gaussian"}
    return out, record


# --------------------------------------------------------------------------- public
def segment_tissues(
    t1_ms: ArrayLike,
    mask: ArrayLike,
    spacing_zyx: Sequence[float],
    *,
    t2star_ms: ArrayLike | None = None,
    m0: ArrayLike | None = None,
    affine: ArrayLike | None = None,
    priors: str | None = "mni152",
    prior_weight: float = DEFAULT_PRIOR_WEIGHT,
    prior_fwhm_mm: float = DEFAULT_PRIOR_FWHM_MM,
    method: str = "pv",
    n_threads: int = 0,
) -> TissueSegmentation:
    """GM, WM and CSF probability maps of one subject from its T1 map (module docstring).

    Parameters
    ----------
    t1_ms : array_like, (Z, Y, X)
        The T1 map in ms (the matched or corrected map); 0 where not estimated.
    mask : array_like of bool or 0/1, (Z, Y, X)
        The brain mask: the voxels segmented.
    spacing_zyx : sequence of 3 floats
        Voxel size in mm, (z, y, x).
    t2star_ms, m0 : array_like, (Z, Y, X), optional
        Checked for shape and finiteness inside the mask, otherwise unused:
        the mixture is of T1 alone (T2* would tell deep grey matter from a
        GM/WM mixture of the same T1, module docstring; not done).
    affine : array_like, (4, 4), optional
        NIfTI-style voxel (x, y, z) to mm; its directions and voxel sizes
        place the image for the template registration (default: axes along
        x, y, z as the cohort stores them, RAS, centred).  Its voxel sizes
        must equal ``spacing_zyx``.
    priors : {"mni152", None}
        Tissue priors from the MNI152 2009 templates registered to the
        subject, or none (k-means initialised mixture).
    prior_weight : float in [0, 1]
        Exponent of the spatial prior in each class probability (0: the
        priors only initialise the mixture; 1: full Bayes).
    prior_fwhm_mm : float >= 0
        Blur of the registered priors (see the module docstring for why).
    method : {"pv", "atropos"}
        ``pv``: partial-volume mixture, probabilities that are tissue
        fractions; ``atropos``: ANTs Atropos' posteriors.
    n_threads : int >= 0
        Kept for the pipeline's stage interface; it does not change the
        result or the threads: the mixture is numpy and ANTs runs on the
        thread count :mod:`mrfengine._ants` settled (recorded in ``info``).

    Returns
    -------
    TissueSegmentation

    Raises
    ------
    ValidationError
        Arrays of other shapes or dimensions, NaN/Inf in the mask or in the T1
        map inside it, an empty mask, a non-positive spacing, an affine whose
        voxel sizes differ from ``spacing_zyx``, an unknown option, fewer than
        100 estimated voxels, a T1 map whose median is under 50 (seconds, not ms).
    """
    t0 = time.perf_counter()
    t1, region, _spacing, _extra, aff = _check_inputs(t1_ms, mask, spacing_zyx, t2star_ms, m0, affine)
    if priors is not None and priors not in PRIORS:
        raise ValidationError(f"priors must be one of {list(PRIORS)} or None; got {priors!r}")
    if method not in METHODS:
        raise ValidationError(f"method must be one of {list(METHODS)}; got {method!r}")
    weight = check_float(prior_weight, "prior_weight", minimum=0.0, maximum=1.0)
    fwhm = check_float(prior_fwhm_mm, "prior_fwhm_mm", minimum=0.0)
    check_int(n_threads, "n_threads", minimum=0)
    estimated = region & (t1 > 0)
    if estimated.sum() < 100:
        raise ValidationError(f"t1_ms has {int(estimated.sum())} estimated voxel(s) (T1 > 0) in the mask; "
                              "a segmentation needs at least 100")
    median = float(np.median(t1[estimated]))
    if median < 50:
        raise ValidationError(f"t1_ms has a median of {median:g} in the mask; brain tissue's T1 is hundreds to "
                              "thousands of ms: is the map in seconds?")
    timings: dict[str, float] = {}
    info: dict[str, Any] = {"method": method, "priors": priors, "prior_weight": weight,
                            "voxels": int(region.sum()), "not_estimated_voxels": int((region & ~estimated).sum())}
    prior_maps = None
    if priors == "mni152":
        prior_maps, prior_info = mni152_priors(t1, region, aff, fwhm_mm=fwhm)
        timings["priors"] = prior_info.pop("timings_s")["total"]
        info["prior"] = prior_info
    t1_start = time.perf_counter()
    if method == "pv":
        fractions, record = _pv_mixture(t1, estimated, prior_maps, weight)
        info["model"] = ("partial-volume Gaussian mixture of T1 (ms): pure CSF, GM, WM and mixed CSF/GM, GM/WM "
                         "classes, EM; probabilities are expected tissue fractions")
    else:
        fractions, record = _atropos(t1, estimated, aff, prior_maps, weight)
        info["model"] = "ANTs Atropos (Gaussian classes of log T1, MRF): posterior probabilities"
    timings["mixture"] = time.perf_counter() - t1_start
    info.update(record)
    out = {}
    lam = record.get("class_proportions")
    for name, values in zip(_ORDER, fractions):
        full = np.zeros(t1.shape, np.float32)
        full[estimated] = values
        missing = region & ~estimated
        if missing.any():  # no T1 estimate: the spatial prior, or the fitted proportions
            if prior_maps is not None:
                full[missing] = prior_maps[name][missing]
            else:
                pure = np.array([lam[n] for n in _ORDER]) if lam else np.ones(3)
                full[missing] = pure[_ORDER.index(name)] / pure.sum()
        out[name] = full
    total = out["CSF"] + out["GM"] + out["WM"]
    for p in out.values():
        np.divide(p, total, out=p, where=region)
        np.clip(p, 0, 1, out=p)
    timings["total"] = time.perf_counter() - t0
    info["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return TissueSegmentation({name: out[name] for name in CLASSES}, info)
