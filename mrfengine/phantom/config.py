"""Settings of a synthetic cohort: frozen dataclasses and the two presets.

``paper`` is the study of Hermann et al. 2021 (48 subjects, 6 healthy, two
sites, 240 x 240 x 60 voxels of 1 x 1 x 2 mm, test and validation sets of 2
site-1 and 3 site-2 subjects each).  ``tiny`` is a cohort small enough for
tests: 6 subjects of 64 x 64 x 12 voxels of 3.5 x 3.5 x 6 mm.

Every number here is a parameter of the simulation, not a constant of the
code: :func:`cohort_preset` returns a :class:`CohortConfig` that callers may
change with :func:`dataclasses.replace`.  ``to_dict`` gives the JSON stored in
the cohort, so a resumed simulation can check it continues the same cohort.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .._validate import check_float, check_range
from ..errors import ValidationError

__all__ = [
    "GridConfig",
    "SiteConfig",
    "AnatomyConfig",
    "TissueConfig",
    "LesionConfig",
    "AnnotationConfig",
    "DistortionConfig",
    "RandomisationConfig",
    "CohortConfig",
    "PRESETS",
    "cohort_preset",
]

PRESETS = ("tiny", "paper", "heldout")


@dataclass(frozen=True)
class GridConfig:
    """The acquisition grid, axis-aligned RAS.

    Attributes
    ----------
    shape_zyx : (int, int, int)
        Slices, rows (posterior to anterior), columns (left to right).
    voxel_size_mm : (float, float, float)
        ``(dx, dy, dz)``; dz is the slice thickness (no gap).
    slab_center_mm : float
        MNI z of the slab's centre before the subject's own deformation.
    center_mm : (float, float)
        MNI (x, y) of the in-plane field-of-view centre.
    """

    shape_zyx: tuple[int, int, int] = (60, 240, 240)
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 2.0)
    slab_center_mm: float = 21.0
    center_mm: tuple[float, float] = (0.0, -17.0)

    def __post_init__(self) -> None:
        if len(self.shape_zyx) != 3 or any(int(s) < 1 for s in self.shape_zyx):
            raise ValidationError(f"shape_zyx must be three positive ints; got {self.shape_zyx}")
        for v in self.voxel_size_mm:
            check_float(v, "voxel_size_mm", minimum=0.0, exclusive_minimum=True)


@dataclass(frozen=True)
class SiteConfig:
    """One acquisition site.

    Attributes
    ----------
    name : str
        ``"1"`` or ``"2"``: the protocol of :func:`mrfengine.sequence.hermann2021`
        (site 2: simultaneous multi-slice factor 3).
    snr : float or None
        Noise: SNR relative to the mean white-matter fingerprint magnitude
        (:func:`mrfengine.noise.wm_signal_level`); None for noise-free data.
    b1_center, b1_edge : float
        B1 factor at the head's centre and about 8 cm from it (the 3 T
        centre brightening); a smooth random term is added and the field is
        clipped to ``b1_limits``.
    b1_random_sd : float
        Standard deviation of the smooth random B1 term.
    """

    name: str = "1"
    snr: float | None = 40.0
    b1_center: float = 1.15
    b1_edge: float = 0.88
    b1_random_sd: float = 0.03
    b1_limits: tuple[float, float] = (0.7, 1.3)

    def __post_init__(self) -> None:
        if self.name not in ("1", "2"):
            raise ValidationError(f"site name must be '1' or '2' (the hermann2021 protocols); got {self.name!r}")
        if self.snr is not None and not self.snr > 0:
            raise ValidationError(f"snr must be positive or None; got {self.snr}")
        check_range(self.b1_limits, "b1_limits", minimum=0.01)


FRACTION_MODELS = ("subject", "population", "mixed")
"""Tissue-fraction models of :class:`AnatomyConfig` (see :mod:`mrfengine.phantom.anatomy`)."""


@dataclass(frozen=True)
class AnatomyConfig:
    """The random deformation that makes each subject's anatomy its own.

    ``template = c + M (p - c) + t + d(p)``: ``M`` a rotation times a scaling
    (global factor times per-axis factors), ``t`` a translation, ``d`` a smooth
    random displacement (low-order cosine series, ``warp_sd_mm`` per axis).
    ``tissue_fractions``: ``"subject"`` (one brain's crisp tissues with
    partial volume at their boundaries), ``"population"`` (the template's
    population probabilities as fractions; the generator before version 2)
    or ``"mixed"`` (the mean of the two: softer boundaries than one brain's,
    sharper than the population's; used only by the held-apart preset); see
    :mod:`mrfengine.phantom.anatomy`.
    """

    scale_range: tuple[float, float] = (0.92, 1.08)
    axis_scale_sd: float = 0.025
    rotation_deg: tuple[float, float, float] = (6.0, 3.0, 3.0)
    translation_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    warp_sd_mm: float = 2.0
    warp_order: int = 3
    tissue_fractions: str = "subject"

    def __post_init__(self) -> None:
        check_range(self.scale_range, "scale_range", minimum=0.5)
        if self.tissue_fractions not in FRACTION_MODELS:
            raise ValidationError(f"tissue_fractions must be one of {FRACTION_MODELS}; got {self.tissue_fractions!r}")
        if self.warp_order < 1:
            raise ValidationError(f"warp_order must be >= 1; got {self.warp_order}")


@dataclass(frozen=True)
class TissueConfig:
    """Per-subject and spatial variation of the tissue values of
    :data:`mrfengine.tissue.TISSUES`.

    T1 and T2* of each tissue are scaled per subject by ``1 + N(0, subject_sd)``
    (WM and GM T1 also by ``1 + t1_offset``, a shift of the whole population;
    PD of WM and GM by ``1 + N(0, pd_sd)``, drawn only when ``pd_sd > 0``)
    and in space by ``1 + smooth field`` with standard deviation
    ``spatial_sd`` (independent fields per tissue and parameter).  Deep grey
    matter and CSF values are drawn per subject from the ranges (the README's
    literature ranges).  White-matter T1 also follows the template's T1-weighted
    intensity (``wm_t1w_coupling``: relative T1 change per relative intensity
    change, negative: brighter means shorter T1).
    """

    subject_sd: float = 0.04
    spatial_sd: float = 0.025
    field_order: int = 3
    dgm_t1_ms: tuple[float, float] = (1100.0, 1400.0)
    dgm_t2star_ms: tuple[float, float] = (30.0, 45.0)
    csf_t1_ms: tuple[float, float] = (3800.0, 4300.0)
    csf_t2star_ms: tuple[float, float] = (300.0, 700.0)
    wm_t1w_coupling: float = -0.5
    pd_sd: float = 0.0
    t1_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.subject_sd < 0 or self.spatial_sd < 0 or self.pd_sd < 0:
            raise ValidationError(f"tissue standard deviations must be >= 0; got subject_sd={self.subject_sd}, "
                                  f"spatial_sd={self.spatial_sd}, pd_sd={self.pd_sd}")
        if not -0.5 < self.t1_offset < 0.5:
            raise ValidationError(f"t1_offset must lie in (-0.5, 0.5); got {self.t1_offset}")


@dataclass(frozen=True)
class LesionConfig:
    """MS-like white-matter lesions.

    Count: negative binomial with mean ``count_mean`` and dispersion
    ``count_dispersion``, clipped to ``count_range``.  Volume: log-normal
    (median ``volume_median_mm3``, sigma ``volume_sigma``), a share
    ``large_share`` drawn instead around ``large_median_mm3``, clipped to
    ``volume_range_mm3``.  Shape: ellipsoids elongated by a factor in
    ``elongation`` (periventricular ones radially, like Dawson's fingers),
    with a mildly irregular, soft border (``edge_mm``).  Sites: periventricular,
    deep and juxtacortical white matter with ``location_weights``.  Values:
    T1 and T2* of the surrounding normal-appearing white matter times factors
    drawn per lesion from the ranges (a working assumption:
    :data:`mrfengine.tissue.LESION_T1_FACTOR`), PD ``pd``.
    """

    count_mean: float = 20.0
    count_dispersion: float = 2.0
    count_range: tuple[int, int] = (3, 70)
    volume_median_mm3: float = 50.0
    volume_sigma: float = 1.1
    large_share: float = 0.15
    large_median_mm3: float = 900.0
    large_sigma: float = 0.8
    volume_range_mm3: tuple[float, float] = (3.0, 8000.0)
    elongation: tuple[float, float] = (1.0, 2.5)
    irregularity: float = 0.12
    edge_mm: float = 0.6
    location_weights: tuple[float, float, float] = (0.6, 0.3, 0.1)
    periventricular_mm: float = 10.0
    t1_factor: tuple[float, float] = (1.3, 1.8)
    t2star_factor: tuple[float, float] = (1.1, 1.4)
    pd: float = 0.75

    def __post_init__(self) -> None:
        check_range(self.volume_range_mm3, "volume_range_mm3", minimum=0.1)
        check_range(self.t1_factor, "t1_factor", minimum=0.1)
        check_range(self.t2star_factor, "t2star_factor", minimum=0.1)
        if len(self.location_weights) != 3 or sum(self.location_weights) <= 0:
            raise ValidationError(f"location_weights must be three non-negative weights; got {self.location_weights}")


@dataclass(frozen=True)
class AnnotationConfig:
    """Simulated manual lesion masks (a human annotator, not the truth).

    A session binarises ``lesion fraction + boundary_noise * smooth noise`` at
    a threshold drawn from ``threshold`` (shifted per lesion by
    ``lesion_threshold_sd``), near true lesions only; lesions under
    ``miss_volume_mm3`` are missed with ``miss_probability``.  A share
    ``repeat_share`` of patients gets a second, independent session (the
    paper's intra-observer set: 10 of 42 patients, Dice 0.68 +- 0.15; these
    defaults give about 0.68 between sessions on the paper grid).
    """

    threshold: tuple[float, float] = (0.35, 0.6)
    lesion_threshold_sd: float = 0.1
    boundary_noise: float = 0.2
    boundary_smooth_mm: float = 1.2
    miss_volume_mm3: float = 30.0
    miss_probability: float = 0.25
    repeat_share: float = 0.24


@dataclass(frozen=True)
class DistortionConfig:
    """Optional EPI distortion along the phase-encoding direction (Y).

    The displacement is largest near the frontal sinus and the temporal
    bones (``max_mm``) plus a smooth random term; intensities follow the
    Jacobian of the mapping.
    """

    enabled: bool = False
    max_mm: float = 4.0
    random_sd_mm: float = 0.4


@dataclass(frozen=True)
class RandomisationConfig:
    """Per-subject randomisation of the acquisition and the tissues (off by default).

    When ``enabled``, every subject draws its own settings from these ranges
    (from its own random stream: deterministic per seed, whatever the number of
    workers) instead of the cohort's fixed ones, so a network trained on the
    cohort sees the variety of real scans:

    * ``gain_log10``: the stored MRF magnitudes are multiplied by
      ``10**U(gain_log10)`` (a scanner's, coil's or reconstruction's global scale);
    * ``int16_share``: the share of subjects stored as a scanner writes int16
      with a scale factor: magnitudes rounded to multiples of a slope chosen so
      pure white matter reads ``U_log(int16_wm_counts)`` counts, clipped at
      32767 counts (stored as float32: the values an int16 NIfTI with
      ``scl_slope`` reads back as);
    * ``snr``: SNR log-uniform in the range (replaces the site's);
    * ``b1_center``, ``b1_edge``, ``b1_random_sd``: uniform (replace the site's);
    * ``tissue_subject_sd``, ``tissue_spatial_sd``, ``tissue_pd_sd``: uniform
      (replace :class:`TissueConfig`'s);
    * ``lesion_count_mean``, ``lesion_volume_median_mm3``,
      ``lesion_large_share``, ``lesion_large_median_mm3``,
      ``lesion_elongation_max``, ``lesion_irregularity``: uniform (log-uniform
      for the volumes), and location weights from a flat Dirichlet: small
      lesions, confluent ones (large and many), periventricular,
      juxtacortical or deep white matter in every proportion;
    * ``tissue_fractions``: one of these fraction models at random;
    * ``distortion_share``: the share of subjects with EPI distortion.

    A range set to None keeps the cohort's fixed setting (the site's SNR and
    B1, :class:`TissueConfig`, :class:`LesionConfig`, ``anatomy.tissue_fractions``).
    What each subject drew is stored in its attributes (``randomisation``).
    """

    enabled: bool = False
    gain_log10: tuple[float, float] = (-2.0, 3.0)
    int16_share: float = 0.5
    int16_wm_counts: tuple[float, float] = (100.0, 4000.0)
    snr: tuple[float, float] | None = (15.0, 80.0)
    b1_center: tuple[float, float] | None = (1.0, 1.3)
    b1_edge: tuple[float, float] | None = (0.72, 0.95)
    b1_random_sd: tuple[float, float] | None = (0.02, 0.07)
    tissue_subject_sd: tuple[float, float] | None = (0.02, 0.09)
    tissue_spatial_sd: tuple[float, float] | None = (0.01, 0.05)
    tissue_pd_sd: tuple[float, float] | None = (0.0, 0.06)
    lesion_count_mean: tuple[float, float] | None = (4.0, 45.0)
    lesion_volume_median_mm3: tuple[float, float] | None = (15.0, 200.0)
    lesion_large_share: tuple[float, float] | None = (0.0, 0.35)
    lesion_large_median_mm3: tuple[float, float] | None = (300.0, 3000.0)
    lesion_elongation_max: tuple[float, float] | None = (1.3, 3.0)
    lesion_irregularity: tuple[float, float] | None = (0.05, 0.25)
    tissue_fractions: tuple[str, ...] | None = ("subject", "population")
    distortion_share: float = 0.3

    def __post_init__(self) -> None:
        check_range(self.gain_log10, "gain_log10")
        check_range(self.int16_wm_counts, "int16_wm_counts", minimum=1e-9)
        for name in ("snr", "lesion_count_mean", "lesion_volume_median_mm3", "lesion_large_median_mm3"):
            if getattr(self, name) is not None:
                check_range(getattr(self, name), name, minimum=1e-9)
        for name in ("b1_center", "b1_edge", "b1_random_sd", "tissue_subject_sd", "tissue_spatial_sd",
                     "tissue_pd_sd", "lesion_large_share", "lesion_irregularity"):
            if getattr(self, name) is not None:
                check_range(getattr(self, name), name, minimum=0.0)
        if self.lesion_elongation_max is not None:
            check_range(self.lesion_elongation_max, "lesion_elongation_max", minimum=1.0)
        if self.int16_wm_counts[1] > 20000:
            raise ValidationError(f"int16_wm_counts must leave int16 head room (<= 20000); got {self.int16_wm_counts}")
        for name in ("int16_share", "distortion_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValidationError(f"{name} must be a share in [0, 1]; got {getattr(self, name)}")
        if self.tissue_fractions is not None and not self.tissue_fractions or any(
                f not in FRACTION_MODELS for f in self.tissue_fractions or ()):
            raise ValidationError(f"tissue_fractions must name models of {FRACTION_MODELS}; got {self.tissue_fractions}")


@dataclass(frozen=True)
class CohortConfig:
    """Everything that defines a synthetic cohort besides the seed.

    Attributes
    ----------
    preset : str
    n_subjects : int
    n_healthy : int
        Healthy volunteers (no lesions); the rest are patients.
    sites : tuple of SiteConfig
        Subjects are divided over the sites in equal blocks (site 1 first).
    test_per_site, validation_per_site : tuple of int
        Patients per site in the test and validation splits; the rest train.
    t2w_snr : float
        SNR of the undistorted T2-weighted reference (relative to white matter).
    randomisation : RandomisationConfig
        Per-subject settings drawn from ranges (off by default).
    quantize : bool
        Round noisy MRF magnitudes to a power of two at most sigma / 32 (like an
        ADC; the rounding noise is below 1% of sigma) so the store compresses.
    """

    preset: str = "paper"
    n_subjects: int = 48
    n_healthy: int = 6
    sites: tuple[SiteConfig, ...] = (
        SiteConfig("1", snr=40.0, b1_center=1.15, b1_edge=0.88),
        SiteConfig("2", snr=30.0, b1_center=1.2, b1_edge=0.83),
    )
    test_per_site: tuple[int, ...] = (2, 3)
    validation_per_site: tuple[int, ...] = (2, 3)
    grid: GridConfig = field(default_factory=GridConfig)
    anatomy: AnatomyConfig = field(default_factory=AnatomyConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    lesion: LesionConfig = field(default_factory=LesionConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    distortion: DistortionConfig = field(default_factory=DistortionConfig)
    randomisation: RandomisationConfig = field(default_factory=RandomisationConfig)
    t2w_snr: float = 60.0
    quantize: bool = True
    held_apart: bool = False

    def __post_init__(self) -> None:
        if self.n_subjects < 1:
            raise ValidationError(f"n_subjects must be >= 1; got {self.n_subjects}")
        if not 0 <= self.n_healthy <= self.n_subjects:
            raise ValidationError(f"n_healthy must lie in [0, n_subjects={self.n_subjects}]; got {self.n_healthy}")
        if not self.sites:
            raise ValidationError("a cohort needs at least one site")
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValidationError(f"site names must be unique; got {names}")
        for name in ("test_per_site", "validation_per_site"):
            val = getattr(self, name)
            if len(val) != len(self.sites) or min(val) < 0:
                raise ValidationError(f"{name} needs one non-negative count per site ({len(self.sites)}); got {val}")
        for s in self.sites:
            if s.name == "2" and self.grid.shape_zyx[0] % 3:
                raise ValidationError(
                    "site 2 uses SMS factor 3: the number of slices must be a multiple of 3; "
                    f"got {self.grid.shape_zyx[0]}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description (tuples become lists).

        Settings added after a cohort format was fixed are left out while they
        hold their defaults (no randomisation, no PD spread, no T1 offset), so
        a cohort made before them keeps its exact description and resumes.
        """
        out = asdict(self)
        if not self.randomisation.enabled:
            del out["randomisation"]
        for key in ("pd_sd", "t1_offset"):
            if out["tissue"][key] == 0.0:
                del out["tissue"][key]
        if not self.held_apart:
            del out["held_apart"]
        return out


def _scaled_split(counts: tuple[int, ...], n_subjects: int, reference: int) -> tuple[int, ...]:
    return tuple(int(round(c * n_subjects / reference)) for c in counts)


def cohort_preset(
    name: str = "paper",
    *,
    n_subjects: int | None = None,
    distortion: bool | None = None,
    tissue_fractions: str | None = None,
    randomise: bool | None = None,
) -> CohortConfig:
    """The configuration of a preset, optionally with another subject count.

    Parameters
    ----------
    name : {"tiny", "paper", "heldout"}
        ``heldout``: 7 paper-sized subjects (6 patients of both sites, 1
        healthy control) simulated with settings no training cohort uses, for
        honest generalisation figures with ``mrfengine evaluate`` only.
    n_subjects : int, optional
        Another cohort size; healthy subjects and the test and validation
        splits scale with it (at least one patient trains).
    distortion : bool, optional
        Switch the EPI distortion on or off.
    tissue_fractions : {"subject", "population", "mixed"}, optional
        The anatomy's tissue-fraction model (default: the preset's,
        ``"subject"`` for tiny and paper; see :class:`AnatomyConfig`).
    randomise : bool, optional
        Switch the per-subject randomisation on (the training ranges of
        :class:`RandomisationConfig`) or off.

    Raises
    ------
    ValidationError
        Unknown preset or a subject count the split cannot fill.
    """
    if name == "paper":
        cfg = CohortConfig()
    elif name == "heldout":
        # Settings no training cohort of mrfengine uses (RandomisationConfig's
        # defaults are the training ranges): SNR 13 and 100 (training 15-80), B1
        # domes steeper and flatter than trained, WM/GM T1 8% longer than the
        # literature values, a PD spread of 8%, the "mixed" tissue-fraction
        # model, lesions more elongated and irregular, intensities 10^3.5-10^4.5
        # (training 10^-2-10^3) stored as int16 with 4,500-6,000 counts in white
        # matter (training 100-4,000).
        cfg = CohortConfig(
            preset="heldout",
            n_subjects=7,
            n_healthy=1,
            sites=(
                SiteConfig("1", snr=13.0, b1_center=1.36, b1_edge=0.66, b1_random_sd=0.04),
                SiteConfig("2", snr=100.0, b1_center=0.97, b1_edge=0.97, b1_random_sd=0.05),
            ),
            test_per_site=(3, 3),
            validation_per_site=(0, 0),
            anatomy=AnatomyConfig(tissue_fractions="mixed"),
            tissue=TissueConfig(subject_sd=0.05, spatial_sd=0.03, pd_sd=0.08, t1_offset=0.08),
            lesion=LesionConfig(count_mean=25.0, elongation=(2.5, 4.0), irregularity=0.32),
            randomisation=RandomisationConfig(
                enabled=True, gain_log10=(3.5, 4.5), int16_share=1.0, int16_wm_counts=(4500.0, 6000.0),
                snr=None, b1_center=None, b1_edge=None, b1_random_sd=None, tissue_subject_sd=None,
                tissue_spatial_sd=None, tissue_pd_sd=None, lesion_count_mean=None, lesion_volume_median_mm3=None,
                lesion_large_share=None, lesion_large_median_mm3=None, lesion_elongation_max=None,
                lesion_irregularity=None, tissue_fractions=None, distortion_share=0.0),
            held_apart=True,
        )
    elif name == "tiny":
        cfg = CohortConfig(
            preset="tiny",
            n_subjects=6,
            n_healthy=1,
            test_per_site=(0, 1),
            validation_per_site=(1, 0),
            grid=GridConfig(shape_zyx=(12, 64, 64), voxel_size_mm=(3.5, 3.5, 6.0), slab_center_mm=17.0),
            lesion=LesionConfig(count_mean=12.0, volume_median_mm3=150.0, large_median_mm3=1200.0),
        )
    else:
        raise ValidationError(f"unknown cohort preset {name!r}; choose one of {PRESETS}")
    if n_subjects is not None and n_subjects != cfg.n_subjects:
        if n_subjects < 1:
            raise ValidationError(f"n_subjects must be >= 1; got {n_subjects}")
        ref = cfg.n_subjects
        healthy = int(round(cfg.n_healthy * n_subjects / ref))
        held = [list(_scaled_split(cfg.test_per_site, n_subjects, ref)),
                list(_scaled_split(cfg.validation_per_site, n_subjects, ref))]
        # Keep at least one training patient: shrink the largest held-out count first.
        while sum(map(sum, held)) + healthy >= n_subjects and sum(map(sum, held)) > 0:
            s, k = max(((s, k) for s in range(2) for k in range(len(held[s]))), key=lambda sk: held[sk[0]][sk[1]])
            held[s][k] -= 1
        test, val = tuple(held[0]), tuple(held[1])
        healthy = min(healthy, max(0, n_subjects - sum(test) - sum(val) - 1))
        cfg = replace(cfg, n_subjects=n_subjects, n_healthy=healthy, test_per_site=test, validation_per_site=val)
    if distortion is not None:
        cfg = replace(cfg, distortion=replace(cfg.distortion, enabled=bool(distortion)))
    if tissue_fractions is not None:
        cfg = replace(cfg, anatomy=replace(cfg.anatomy, tissue_fractions=tissue_fractions))
    if randomise is not None:
        if cfg.held_apart and randomise:
            raise ValidationError("the heldout preset has its own settings; it cannot be randomised with the "
                                  "training ranges")
        cfg = replace(cfg, randomisation=RandomisationConfig(enabled=True) if randomise else replace(cfg.randomisation,
                                                                                             enabled=False))
    return cfg
