"""Per-subject randomisation of a synthetic cohort (:class:`RandomisationConfig`).

A network trained on one simulator's fixed settings learns that simulator;
drawn per subject, the acquisition (intensity scale, int16 storage, SNR, B1)
and the tissues (values, PD, fraction model, lesions) vary as real scans do.
Every draw comes from the subject's own ``randomise`` stream, one uniform
number per setting in a fixed order whether or not the setting is drawn, so a
subject's draws do not depend on which other ranges are switched off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import CohortConfig, SiteConfig

__all__ = ["SubjectDraw", "draw_subject", "INT16_MAX"]

INT16_MAX = 32767
"""The largest count an int16 image holds."""

_ORDER = ("gain", "int16", "counts", "snr", "b1_center", "b1_edge", "b1_random_sd", "subject_sd", "spatial_sd",
          "pd_sd", "count_mean", "volume_median", "large_share", "large_median", "elongation", "irregularity",
          "w_peri", "w_deep", "w_juxta", "fractions", "distortion")


@dataclass(frozen=True)
class SubjectDraw:
    """One subject's drawn settings.

    Attributes
    ----------
    config : CohortConfig
        The cohort's configuration with the subject's draws in it.
    site : SiteConfig
        The subject's site with its drawn SNR and B1.
    gain : float
        Factor on the stored MRF magnitudes.
    int16_slope : float or None
        The int16 scale factor in stored units (None: stored as float).
    record : dict
        What was drawn, JSON-compatible (stored in the subject's attributes).
    """

    config: CohortConfig
    site: SiteConfig
    gain: float
    int16_slope: float | None
    record: dict[str, Any]

    def store(self, magnitudes: np.ndarray) -> np.ndarray:
        """The magnitudes as stored: times :attr:`gain`, rounded to int16 counts
        of :attr:`int16_slope` (clipped at 32767, as a scanner saturates) when set."""
        out = np.asarray(magnitudes, dtype=np.float32) * np.float32(self.gain)
        if self.int16_slope is not None:
            slope = np.float32(self.int16_slope)
            out = np.clip(np.rint(out / slope), 0, INT16_MAX).astype(np.float32) * slope
        return out


def _log_uniform(u: float, lo_hi: tuple[float, float]) -> float:
    lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
    return float(np.exp(lo + u * (hi - lo)))


def _uniform(u: float, lo_hi: tuple[float, float]) -> float:
    return float(lo_hi[0] + u * (lo_hi[1] - lo_hi[0]))


def draw_subject(config: CohortConfig, site: SiteConfig, wm_level: float, rng: np.random.Generator) -> SubjectDraw:
    """Draw one subject's settings from ``config.randomisation``.

    Parameters
    ----------
    config : CohortConfig
        With ``randomisation.enabled``.
    site : SiteConfig
        The subject's site (its SNR and B1 are kept where a range is None).
    wm_level : float
        Mean magnitude of pure white matter (B1 = 1) before the gain: the
        reference of SNR and of the int16 counts.
    rng : numpy.random.Generator
        The subject's ``randomise`` stream.
    """
    r = config.randomisation
    u = dict(zip(_ORDER, rng.random(len(_ORDER))))
    # Dirichlet(1, 1, 1) location weights from three uniforms: -log(u) are Exp(1).
    w = -np.log(np.maximum([u["w_peri"], u["w_deep"], u["w_juxta"]], 1e-12))
    record: dict[str, Any] = {}

    gain = float(10.0 ** _uniform(u["gain"], r.gain_log10))
    record["gain"] = gain
    slope = None
    if u["int16"] < r.int16_share:
        counts = _log_uniform(u["counts"], r.int16_wm_counts)
        slope = float(wm_level * gain / counts)
        record.update(int16=True, int16_wm_counts=counts, int16_slope=slope)
    else:
        record["int16"] = False

    site_changes: dict[str, Any] = {}
    if r.snr is not None:
        site_changes["snr"] = _log_uniform(u["snr"], r.snr)
    for key in ("b1_center", "b1_edge", "b1_random_sd"):
        rng_range = getattr(r, key)
        if rng_range is not None:
            site_changes[key] = _uniform(u[key], rng_range)
    site = replace(site, **site_changes)
    record.update(snr=site.snr, b1_center=site.b1_center, b1_edge=site.b1_edge, b1_random_sd=site.b1_random_sd)

    tissue_changes: dict[str, Any] = {}
    for key, name in (("subject_sd", "tissue_subject_sd"), ("spatial_sd", "tissue_spatial_sd"),
                      ("pd_sd", "tissue_pd_sd")):
        rng_range = getattr(r, name)
        if rng_range is not None:
            tissue_changes[key] = _uniform(u[key], rng_range)
    tissue = replace(config.tissue, **tissue_changes)
    record["tissue"] = {k: getattr(tissue, k) for k in ("subject_sd", "spatial_sd", "pd_sd", "t1_offset")}

    lesion_changes: dict[str, Any] = {}
    if r.lesion_count_mean is not None:
        lesion_changes["count_mean"] = _uniform(u["count_mean"], r.lesion_count_mean)
    if r.lesion_volume_median_mm3 is not None:
        lesion_changes["volume_median_mm3"] = _log_uniform(u["volume_median"], r.lesion_volume_median_mm3)
    if r.lesion_large_share is not None:
        lesion_changes["large_share"] = _uniform(u["large_share"], r.lesion_large_share)
    if r.lesion_large_median_mm3 is not None:
        lesion_changes["large_median_mm3"] = _log_uniform(u["large_median"], r.lesion_large_median_mm3)
    if r.lesion_elongation_max is not None:
        lesion_changes["elongation"] = (1.0, _uniform(u["elongation"], r.lesion_elongation_max))
    if r.lesion_irregularity is not None:
        lesion_changes["irregularity"] = _uniform(u["irregularity"], r.lesion_irregularity)
    if lesion_changes:
        lesion_changes["location_weights"] = tuple(float(v) for v in w / w.sum())
    lesion = replace(config.lesion, **lesion_changes)
    record["lesion"] = {k: getattr(lesion, k) for k in ("count_mean", "volume_median_mm3", "large_share",
                                                        "large_median_mm3", "elongation", "irregularity",
                                                        "location_weights")}

    anatomy = config.anatomy
    if r.tissue_fractions is not None:
        k = min(int(u["fractions"] * len(r.tissue_fractions)), len(r.tissue_fractions) - 1)
        anatomy = replace(anatomy, tissue_fractions=r.tissue_fractions[k])
    record["tissue_fractions"] = anatomy.tissue_fractions
    distortion = replace(config.distortion, enabled=bool(config.distortion.enabled or u["distortion"] < r.distortion_share))
    record["distortion"] = distortion.enabled

    sites = tuple(site if s.name == site.name else s for s in config.sites)
    drawn = replace(config, sites=sites, tissue=tissue, lesion=lesion, anatomy=anatomy, distortion=distortion)
    record = _jsonable(record)
    return SubjectDraw(drawn, site, gain, slope, record)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value
