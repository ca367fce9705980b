"""Tissue parameter maps: per-subject values, smooth spatial variation, B1.

A voxel holds up to five compartments, each with its own volume fraction,
T1, T2* and PD: normal-appearing white matter (``WM``), cortical grey matter
(``GM``), deep grey matter (``DGM``), ``CSF`` and ``lesion``.  Their signals
are mixed in signal space (:mod:`mrfengine.phantom.signals`); the truth maps
summarise them per voxel (:meth:`TissueModel.truth_maps`).

Values come from :data:`mrfengine.tissue.TISSUES` (3 T literature values,
``shared/mrf-epi/README.md``), varied per subject and smoothly in space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..tissue import TISSUES, Tissue
from .config import SiteConfig, TissueConfig
from .fields import SmoothField, grid_axes_mm

__all__ = ["COMPARTMENTS", "Compartment", "TissueModel", "subject_tissue_values", "b1_field"]

COMPARTMENTS = ("WM", "GM", "DGM", "CSF", "lesion")


def subject_tissue_values(config: TissueConfig, rng: np.random.Generator) -> dict[str, Tissue]:
    """One subject's mean T1 (ms), T2* (ms) and PD of WM, GM, DGM and CSF.

    WM and GM: literature value times ``1 + N(0, subject_sd)`` (T1 and T2*
    independently; T1 also times ``1 + t1_offset``; PD times ``1 + N(0,
    pd_sd)`` when ``pd_sd > 0``, within [0.05, 1]); DGM and CSF: uniform in the
    configured ranges.
    """
    out = {}
    for name in ("WM", "GM"):
        t = TISSUES[name]
        f1, f2 = 1 + config.subject_sd * rng.standard_normal(2)
        pd = t.pd
        if config.pd_sd > 0:  # drawn only then: a cohort without PD spread keeps its streams
            pd = float(np.clip(t.pd * (1 + config.pd_sd * rng.standard_normal()), 0.05, 1.0))
        out[name] = Tissue(t.name, t.t1_ms * f1 * (1 + config.t1_offset), t.t2star_ms * f2, pd)
    out["DGM"] = Tissue(TISSUES["DGM"].name, rng.uniform(*config.dgm_t1_ms), rng.uniform(*config.dgm_t2star_ms),
                        TISSUES["DGM"].pd)
    out["CSF"] = Tissue(TISSUES["CSF"].name, rng.uniform(*config.csf_t1_ms), rng.uniform(*config.csf_t2star_ms),
                        TISSUES["CSF"].pd)
    return out


def b1_field(
    site: SiteConfig, affine: np.ndarray, shape_zyx: tuple[int, int, int], centre_mm: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """A smooth B1+ factor map: (Z, Y, X) float32 within ``site.b1_limits``.

    A dome, ``b1_center`` at ``centre_mm`` (shifted up to 10 mm at random)
    falling quadratically to ``b1_edge`` at 80 mm (the 3 T central
    brightening), times a per-subject factor ``1 + N(0, 0.03)``, plus a smooth
    random field of standard deviation ``b1_random_sd``.
    """
    x, y, z = grid_axes_mm(affine, shape_zyx)
    c = np.asarray(centre_mm, dtype=float) + rng.uniform(-10, 10, 3)
    r2 = ((x - c[0])[None, None, :] ** 2 + (y - c[1])[None, :, None] ** 2
          + (0.8 * (z - c[2]))[:, None, None] ** 2) / 80.0**2
    dome = site.b1_center - (site.b1_center - site.b1_edge) * r2
    dome *= 1 + 0.03 * rng.standard_normal()
    dome += SmoothField(rng, 3)(x, y, z, sd=site.b1_random_sd)
    return np.clip(dome, *site.b1_limits).astype(np.float32)


@dataclass
class Compartment:
    """One compartment of every voxel: (Z, Y, X) float32 maps; ``pd`` may
    also be a 0-d array (one value everywhere)."""

    fraction: np.ndarray
    t1_ms: np.ndarray
    t2star_ms: np.ndarray
    pd: np.ndarray


@dataclass
class TissueModel:
    """The exact parameters of one subject: compartments and the B1 map."""

    compartments: dict[str, Compartment]
    b1: np.ndarray

    def truth_maps(self) -> dict[str, np.ndarray]:
        """Per-voxel summaries, (Z, Y, X) float32.

        ``T1`` and ``T2star`` are the PD-weighted means over the brain-tissue
        compartments (WM, GM, DGM, lesion), or CSF's values where CSF carries
        most of the voxel's proton density; 0 outside the brain.  Leaving CSF
        out of the mean keeps a cortical voxel with a little CSF at grey
        matter's values (CSF's T1 and T2* are 3 to 8 times larger and would
        dominate an average), which is also what dictionary matching finds.
        ``PD`` is the sum of fraction x PD; ``GM`` includes ``DGM``; ``WM`` is
        normal-appearing white matter; ``lesion`` the lesion fraction.
        """
        c = self.compartments
        tissue_w = np.zeros_like(self.b1)
        t1 = np.zeros_like(self.b1)
        t2 = np.zeros_like(self.b1)
        for name, comp in c.items():
            if name == "CSF":
                continue
            w = comp.fraction * comp.pd
            tissue_w += w
            t1 += w * comp.t1_ms
            t2 += w * comp.t2star_ms
        nz = tissue_w > 0
        t1[nz] /= tissue_w[nz]
        t2[nz] /= tissue_w[nz]
        csf = c["CSF"]
        csf_w = csf.fraction * csf.pd
        fluid = csf_w > tissue_w
        t1[fluid] = np.broadcast_to(csf.t1_ms, t1.shape)[fluid]
        t2[fluid] = np.broadcast_to(csf.t2star_ms, t2.shape)[fluid]
        return {
            "T1": t1,
            "T2star": t2,
            "B1": self.b1,
            "PD": tissue_w + csf_w,
            "GM": c["GM"].fraction + c["DGM"].fraction,
            "WM": c["WM"].fraction,
            "CSF": c["CSF"].fraction,
            "lesion": c["lesion"].fraction,
            "DGM": c["DGM"].fraction,
        }


def spatial_maps(
    values: dict[str, Tissue],
    config: TissueConfig,
    affine: np.ndarray,
    shape_zyx: tuple[int, int, int],
    t1w: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(T1, T2*) maps of WM, GM, DGM and CSF in ms, (Z, Y, X) float32 each:
    the subject's value times ``1 + smooth field`` (``spatial_sd``); WM T1
    also follows the template's T1-weighted intensity."""
    axes = grid_axes_mm(affine, shape_zyx)
    out = {}
    for name in ("WM", "GM", "DGM", "CSF"):
        v = values[name]
        t1 = v.t1_ms * (1 + SmoothField(rng, config.field_order)(*axes, sd=config.spatial_sd))
        t2 = v.t2star_ms * (1 + SmoothField(rng, config.field_order)(*axes, sd=config.spatial_sd))
        if name == "WM" and config.wm_t1w_coupling:
            t1 *= 1 + config.wm_t1w_coupling * np.clip(t1w - 1, -0.1, 0.1)
        out[name] = (t1.astype(np.float32), t2.astype(np.float32))
    return out
