"""Quality-control pages of a cohort's derived maps: one self-contained HTML file per subject
and an index page, as MRIQC and fMRIPrep write them (``mrfengine report``).

A subject page shows, for every derived group ``derived/<pipeline>/`` of the subject:

* an **orientation check**: the input (the mean over frames of ``mrf``) beside the output T1,
  and the output's brain outline over the input, one slice, each edge labelled with the
  anatomical direction read from the subject's affine (:func:`nibabel.aff2axcodes`);
* a **lesion overlay**: the group's lesion probability (red to yellow) and the subject's
  lesion annotation (cyan outline) over the grey output T1, on the slices with the most lesion;
* every **map** as an axial mosaic (about 12 slices over the brain) with a colour bar, its
  unit and description from the map registry (:func:`mrfengine.maps.derived_spec`), fixed display
  ranges for quantitative maps (T1 0-3000 ms, T2* 0-150 ms, B1 0.7-1.3, probabilities 0-1,
  correlations 0.9-1) and, for arbitrary units, the 1st-99th percentile in the brain;
* the **provenance** (mrfengine version, backend, stages and their options, each stage's record),
  the **timings** per stage, and **warnings** (a brain mask made from the series or none at all, an
  input outside the network's training data, a warning a stage recorded, an incomplete group, a
  requested pipeline the subject lacks) and notes (tissue maps a pipeline does not make, which
  ``evaluate`` then takes from the truth; a network trained on the truth's tissue fractions; maps
  resampled onto a reference grid).

Pages need no network and no JavaScript: images are PNGs embedded as base64 ``data:`` URIs,
the style sheet is inline, long records fold into ``<details>``.  Only the shown slices of each
array are read (the lesion slices are chosen from the annotation and the lesion probability,
both read whole: 3D arrays of one subject).

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, never ``pyplot``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_path
from ..errors import StoreError, ValidationError
from ..io.cohort import Cohort, Subject, derived_attrs
from ..io.cohort.store import join, list_dir
from ..maps import OTHER_MAPS, MapSpec, derived_spec
from ..masking import MASK_METHOD
from ..metrics.definitions import LESION_THRESHOLD

__all__ = ["DEFAULT_SLICES", "INDEX_FILE", "QCReport", "SubjectPage", "index_page", "map_display", "page_name",
           "subject_page", "subject_pipelines", "write_nifti_report", "write_qc_report"]

log = logging.getLogger(__name__)

#: The cohort's index page, in the output folder beside ``sub-XX.html``.
INDEX_FILE = "index.html"
#: Slices of an axial mosaic.
DEFAULT_SLICES = 12
_COLUMNS = 6  # tiles per mosaic row
_LESION_SLICES = 6

# --------------------------------------------------------------------------- display of a map
# name -> (title, colour map, vmin, vmax); None: from the data (robust range)
_FIXED: dict[str, tuple[str, str, float | None, float | None]] = {
    "T1": ("T1", "magma", 0.0, 3000.0),
    "T2star": ("T2*", "viridis", 0.0, 150.0),
    "B1": ("B1+ factor", "coolwarm", 0.7, 1.3),
    "M0": ("M0", "gray", 0.0, None),
    "correlation": ("match correlation", "cividis", 0.9, 1.0),
    "physics_consistency": ("physics consistency", "cividis", 0.9, 1.0),
    "NAWM": ("NAWM probability", "viridis", 0.0, 1.0),
    "WM": ("WM probability", "viridis", 0.0, 1.0),
    "GM": ("GM probability", "viridis", 0.0, 1.0),
    "CSF": ("CSF probability", "viridis", 0.0, 1.0),
    "lesion": ("lesion probability", "inferno", 0.0, 1.0),
    "mppca_sigma": ("MP-PCA noise sigma", "magma", None, None),
    "mppca_rank": ("MP-PCA signal rank", "viridis", 0.0, None),
    "displacement": ("displacement (phase encoding)", "RdBu_r", None, None),
}
# order of the mosaics in a group; names not listed follow, alphabetically
_ORDER = ("T1", "T2star", "B1", "M0", "correlation", "physics_consistency", "NAWM", "WM", "GM", "CSF", "lesion",
          "T1_uncertainty", "T2star_uncertainty", "NAWM_uncertainty", "GM_uncertainty", "lesion_uncertainty",
          "mppca_sigma", "mppca_rank", "displacement")
_UNIT_TEXT = {"ms": "ms", "s": "s", "1": "unitless", "arbitrary": "a.u.", "label": "label", "voxel": "voxels"}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
_PREFERRED = {"R": "R", "L": "R", "A": "A", "P": "A", "S": "S", "I": "S"}  # on the left / at the top
_PLANE = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "R": "sagittal", "L": "sagittal"}
_ANNOTATION_COLOR = "#00e5ff"


def page_name(subject_id: str) -> str:
    """The file name of a subject's page: ``sub-XX.html``."""
    return f"{subject_id}.html"


def _spec(name: str, stored_units: str = "") -> tuple[str, MapSpec | None, str]:
    """``(base name, registry spec, unit)`` of a derived array; a unet ``prefix`` is looked through."""
    spec = derived_spec(name) or OTHER_MAPS.get(name)
    base = name
    if spec is None and "_" in name:
        rest = name.partition("_")[2]
        if derived_spec(rest) is not None:
            base, spec = rest, derived_spec(rest)
    unit = spec.unit if spec is not None else (stored_units or "")
    return base, spec, unit


@dataclass(frozen=True)
class _Display:
    title: str
    cmap: str
    vmin: float
    vmax: float
    unit: str
    hide_zero: bool  # 0 means "not estimated": drawn as background
    range_note: str


def _robust(values: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    a, b = (float(x) for x in np.percentile(v, [lo, hi]))
    return (a, b) if b > a else (a, a + (abs(a) or 1.0))


def _display(name: str, unit: str, spec: MapSpec | None, base: str, values: np.ndarray) -> _Display:
    """How to draw a map: colours, range (fixed where the registry's kind allows), unit;
    ``values`` are the map's in the brain on the shown slices."""
    unit_text = _UNIT_TEXT.get(unit, unit or "unit unknown")
    kind = spec.kind if spec is not None else ""
    uncertainty = name.endswith("_uncertainty")
    hide_zero = kind in ("quantitative", "quality") and not uncertainty
    shown = values[values != 0] if hide_zero else values
    if uncertainty:
        lo, hi = _robust(shown, 0.0, 99.0)
        return _Display(f"{_FIXED.get(base[: -len('_uncertainty')], (base,))[0]} uncertainty (SD)", "magma", 0.0,
                        max(hi, 1e-6), unit_text, False, "0 to the 99th percentile in the brain")
    if base in _FIXED:
        title, cmap, lo, hi = _FIXED[base]
        note = "fixed"
        if base == "displacement":
            m = float(np.percentile(np.abs(shown), 99)) if shown.size else 1.0
            return _Display(title, cmap, -max(m, 0.5), max(m, 0.5), unit_text, False,
                            "symmetric: the 99th percentile of |d| in the brain, at least 0.5")
        elif base == "mppca_rank":
            hi, note = float(max(np.max(shown) if shown.size else 1.0, 1.0)), "0 to the largest rank shown"
        elif base == "correlation" or base == "physics_consistency":
            p1 = _robust(shown)[0] if shown.size else 0.9
            lo, note = max(0.5, min(lo, p1)), f"from the lower of {lo:g} and the 1st percentile in the brain, to 1"
        elif lo is None:
            lo, hi = _robust(shown)
            note = "1st to 99th percentile in the brain"
        elif hi is None:
            hi, note = max(_robust(shown)[1], 1e-12), "0 to the 99th percentile in the brain"
        if name != base:
            title = f"{title} ({name})"
        return _Display(title, cmap, float(lo), float(hi), unit_text, hide_zero, note)
    if kind in ("probability", "fraction", "mask"):
        return _Display(f"{name} {kind}", "viridis", 0.0, 1.0, unit_text, False, "fixed")
    lo, hi = _robust(shown)
    return _Display(name, "gray", lo, hi, unit_text, hide_zero, "1st to 99th percentile in the brain")


def map_display(array_path: str, values: np.ndarray, stored_units: str = "") -> tuple[str, str, float, float, str, bool]:
    """How a derived map is drawn, for figures outside the QC pages (``mrfengine show``):
    ``(title, colour map, vmin, vmax, unit text, hide zero)``, the pages' colours and ranges;
    hide zero: 0 means "no estimate" and is drawn as background.

    ``array_path`` is the map's name or its path in the subject (``derived/<pipeline>/T1``);
    ``values`` are the map's values in the brain on the shown slices (they set the range of
    maps without a fixed one); ``stored_units`` is the array's ``units`` attribute.
    """
    name = array_path.rsplit("/", 1)[-1]
    base, spec, unit = _spec(name, stored_units)
    disp = _display(name, unit, spec, base, np.asarray(values, dtype=np.float64).ravel())
    return disp.title, disp.cmap, disp.vmin, disp.vmax, disp.unit, disp.hide_zero


# --------------------------------------------------------------------------- orientation and slices
class _View:
    """Cut, crop and orient (Y, X) slices for display with ``origin="upper"``; the anatomical
    direction at each edge, from the affine: the subject's right on the image's left
    (radiological) and anterior at the top, when the voxel axes allow."""

    def __init__(self, affine: np.ndarray, box: tuple[slice, slice]) -> None:
        import nibabel as nib

        try:
            codes = tuple(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))
        except Exception:  # noqa: BLE001 - a singular affine: no anatomical labels
            codes = (None, None, None)
        self.codes = "".join(c or "?" for c in codes)
        cx, cy, cz = codes
        self.box = box
        self.flip_x = cx is not None and cx == _PREFERRED[cx]
        self.flip_y = cy is not None and cy == _PREFERRED[cy]
        self.left = "?" if cx is None else (cx if self.flip_x else _OPPOSITE[cx])
        self.right = _OPPOSITE.get(self.left, "?")
        self.top = "?" if cy is None else (cy if self.flip_y else _OPPOSITE[cy])
        self.bottom = _OPPOSITE.get(self.top, "?")
        self.plane = _PLANE.get(cz or "", "slice")

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = img[..., self.box[0], self.box[1]]
        if self.flip_x:
            img = img[..., ::-1]
        if self.flip_y:
            img = img[..., ::-1, :]
        return img

    @property
    def convention(self) -> str:
        if self.left == "R":
            return "radiological view: the subject's right on the image's left"
        if self.left == "?":
            return "as stored (the affine gives no orientation)"
        return f"as the voxel axes allow: {self.left} on the left, {self.top} at the top"


def _brain_extent(mask: np.ndarray | None, n_z: int) -> tuple[int, int]:
    if mask is not None:
        zs = np.flatnonzero(mask.reshape(n_z, -1).any(axis=1))
        if zs.size:
            return int(zs[0]), int(zs[-1])
    return 0, n_z - 1


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """Up to ``n`` slices spread evenly over [lo, hi] (every slice when there are fewer)."""
    if hi - lo + 1 <= n:
        return list(range(lo, hi + 1))
    return sorted({round(float(v)) for v in np.linspace(lo, hi, n)})


def _box(mask: np.ndarray | None, shape_yx: tuple[int, int], margin: int = 3) -> tuple[slice, slice]:
    ny, nx = shape_yx
    if mask is None or not mask.any():
        return slice(0, ny), slice(0, nx)
    m = mask.reshape(-1, ny, nx).any(axis=0)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return (slice(max(0, rows[0] - margin), min(ny, rows[-1] + margin + 1)),
            slice(max(0, cols[0] - margin), min(nx, cols[-1] + margin + 1)))


def _read(array: Any, zs: Sequence[int]) -> np.ndarray:
    """Slices ``zs`` of a (Z, Y, X) array, float32, read one at a time."""
    return np.stack([np.asarray(array[int(z)], dtype=np.float32) for z in zs])


# --------------------------------------------------------------------------- figures
# Tiles are coloured and outlined in numpy at an integer zoom and placed unresampled on the
# figure (figimage); matplotlib draws only the text and the colour bar: fast, and crisp.
_GAP = 4  # pixels between tiles
_PAD = 8
_TITLE_PX = 20
_CBAR_PX = 110


def _colorize(stack: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(..., H, W) values -> (..., H, W, 4) uint8 RGBA; NaN black."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="black")
    span = vmax - vmin if vmax > vmin else 1.0
    return cm(np.ma.masked_invalid((np.asarray(stack, dtype=np.float64) - vmin) / span), bytes=True)


def _zoom(a: np.ndarray, k: int) -> np.ndarray:
    """Each pixel of (..., H, W[, 4]) a as a k x k block."""
    if k == 1:
        return a
    axes = (-3, -2) if a.ndim >= 3 and a.shape[-1] == 4 and a.dtype == np.uint8 else (-2, -1)
    return np.repeat(np.repeat(a, k, axis=axes[0]), k, axis=axes[1])


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The inner border, ``width`` pixels wide, of a (zoomed) 2D mask."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def _hex(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgba

    return (np.asarray(to_rgba(color)) * 255).round().astype(np.uint8)


def _paint(rgba: np.ndarray, where: np.ndarray, color: str | np.ndarray, alpha: float = 1.0) -> None:
    c = _hex(color) if isinstance(color, str) else np.asarray(color, dtype=np.uint8)
    if c.ndim == 1:
        c = np.broadcast_to(c, rgba.shape)[where]
    else:
        c = c[where]
    rgba[where, :3] = (alpha * c[..., :3] + (1 - alpha) * rgba[where, :3]).round().astype(np.uint8)


def _zoom_for(width: int, target: int) -> int:
    return max(1, math.ceil(target / max(width, 1)))


@dataclass
class _Bar:
    cmap: str
    vmin: float
    vmax: float
    label: str


def _render(tiles: Sequence[np.ndarray], *, columns: int, view: _View, captions: Sequence[str] = (),
            titles: Sequence[str] = (), bar: _Bar | None = None, heading: str = "") -> str:
    """Lay out RGBA tiles (H, W, 4) uint8 of one size on a black figure with a caption in each
    tile's corner, a title over each, the anatomical directions on the first tile and a colour
    bar at the right; base64 PNG."""
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    h, w = tiles[0].shape[:2]
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    top = _PAD + (_TITLE_PX if heading else 0)
    row_h = h + (_TITLE_PX if titles else 0) + _GAP
    width = 2 * _PAD + cols * w + (cols - 1) * _GAP + (_CBAR_PX if bar else 0)
    height = top + rows * row_h - _GAP + _PAD
    fig = Figure(figsize=(width / 100, height / 100), dpi=100, facecolor="black")
    canvas = np.zeros((height, width, 4), dtype=np.uint8)
    canvas[..., 3] = 255
    corners = []
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y = top + r * row_h + (_TITLE_PX if titles else 0)
        x = _PAD + c * (w + _GAP)
        canvas[y:y + h, x:x + w] = tile
        corners.append((y, x))
    fig.figimage(canvas, 0, 0, origin="upper", zorder=-1)

    halo = [patheffects.withStroke(linewidth=2, foreground="black")]

    def text(x: float, y: float, s: str, **kw: Any) -> None:
        fig.text(x / width, 1 - y / height, s, path_effects=halo, **kw)

    if heading:
        text(_PAD, _PAD + _TITLE_PX / 2, heading, color="white", fontsize=9, va="center")
    for i, (y, x) in enumerate(corners):
        if i < len(titles):
            text(x + w / 2, y - _TITLE_PX / 2, titles[i], color="white", fontsize=9, ha="center", va="center")
        if i < len(captions) and captions[i]:
            text(x + 3, y + h - 3, captions[i], color="white", fontsize=7, va="bottom")
        if i == 0 or titles:
            style = {"color": "#ffe600", "fontsize": 9, "fontweight": "bold", "ha": "center", "va": "center"}
            text(x + 7, y + h / 2, view.left, **style)
            text(x + w - 7, y + h / 2, view.right, **style)
            text(x + w / 2, y + 8, view.top, **style)
            text(x + w / 2, y + h - 8, view.bottom, **style)
    if bar is not None:
        x0 = width - _CBAR_PX + 14
        cax = fig.add_axes((x0 / width, (_PAD + 10) / height, 14 / width, max(0.2, 1 - (top + 2 * _PAD + 10) / height)))
        cb = fig.colorbar(ScalarMappable(Normalize(bar.vmin, bar.vmax), bar.cmap), cax=cax)
        cb.set_label(bar.label, color="white", fontsize=9)
        cb.ax.tick_params(colors="white", labelsize=8)
        cb.outline.set_edgecolor("white")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="black")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _mosaic(stack: np.ndarray, zs: Sequence[int], view: _View, disp: _Display, inside: np.ndarray | None) -> str:
    """An axial mosaic of a map with a colour bar, base64 PNG."""
    data = np.array(stack, dtype=np.float32)
    if disp.hide_zero:
        data[data == 0] = np.nan  # not estimated: background
    if inside is not None:
        data[~inside] = np.nan  # outside the brain: background
    shown = view(data)
    k = _zoom_for(shown.shape[2], 140)
    tiles = _zoom(_colorize(shown, disp.cmap, disp.vmin, disp.vmax), k)
    return _render(list(tiles), columns=_COLUMNS, view=view, captions=[f"z={z}" for z in zs],
                   bar=_Bar(disp.cmap, disp.vmin, disp.vmax, f"{disp.title} [{disp.unit}]"))


def _overlay(background: np.ndarray, zs: Sequence[int], view: _View, *, bg_range: tuple[float, float],
             bg_label: str, outline: np.ndarray | None, outline_color: str, probability: np.ndarray | None = None,
             fill_outline: bool = False, columns: int = _COLUMNS, target: int = 140) -> str:
    """Grey slices; a probability filled red to yellow from :data:`LESION_THRESHOLD` / 3; an
    outline on top (filled faintly too with ``fill_outline``); base64 PNG."""
    import matplotlib

    shown = view(np.asarray(background, dtype=np.float32))
    k = _zoom_for(shown.shape[2], target)
    tiles = _zoom(_colorize(shown, "gray", *bg_range), k)
    bar = _Bar("gray", bg_range[0], bg_range[1], bg_label)
    width = max(2, k // 2)
    for i in range(tiles.shape[0]):
        if probability is not None:
            p = _zoom(view(np.asarray(probability[i], dtype=np.float32)), k)
            where = p >= LESION_THRESHOLD / 3
            if where.any():
                _paint(tiles[i], where, matplotlib.colormaps["autumn"](p, bytes=True), 0.9)
        if outline is not None:
            o = _zoom(view(np.asarray(outline[i], dtype=bool)), k)
            if fill_outline:
                _paint(tiles[i], o, outline_color, 0.35)
            _paint(tiles[i], _edge(o, width), outline_color)
    if probability is not None:
        bar = _Bar("autumn", 0.0, 1.0, "lesion probability [unitless]")
    return _render(list(tiles), columns=columns, view=view, captions=[f"z={z}" for z in zs], bar=bar)


def _orientation_figure(mean_mrf: np.ndarray, t1: np.ndarray | None, brain: np.ndarray | None, z: int,
                        view: _View, title_out: str) -> str:
    """Input, output T1 and the output's brain outline on the input, one slice, base64 PNG."""
    a = view(np.asarray(mean_mrf, dtype=np.float32))
    k = _zoom_for(a.shape[1], 300)
    lo, hi = _robust(a[a > 0] if (a > 0).any() else a, 1.0, 99.5)
    grey = _zoom(_colorize(a, "gray", lo, hi), k)
    tiles, titles = [grey], ["input: mean MRF over frames"]
    if t1 is not None:
        tiles.append(_zoom(_colorize(view(np.asarray(t1, dtype=np.float32)), "gray", 0.0, 3000.0), k))
        titles.append(f"{title_out} (0-3000 ms)")
        third = grey.copy()
        if brain is not None and brain.any():
            _paint(third, _edge(_zoom(view(np.asarray(brain, dtype=bool)), k), max(2, k // 2)), "#ff3b3b")
        tiles.append(third)
        titles.append("output brain outline on the input")
    return _render(tiles, columns=3, view=view, titles=titles,
                   heading=f"slice z={z} ({view.plane}); {view.convention}")


# --------------------------------------------------------------------------- warnings
def _found_warnings(record: Any, where: str) -> list[str]:
    """Texts under keys named ``warning`` / ``warnings`` anywhere in a stage's record."""
    out: list[str] = []
    if isinstance(record, Mapping):
        for key, value in record.items():
            if str(key).lower() in ("warning", "warnings") and value:
                values = value if isinstance(value, (list, tuple)) else [value]
                out += [f"{where}: {v}" for v in values if v]
            else:
                out += _found_warnings(value, where)
    elif isinstance(record, (list, tuple)):
        for value in record:
            out += _found_warnings(value, where)
    return out


def _group_findings(pipeline: str, attrs: Mapping[str, Any], arrays: Sequence[str], subject: Subject
                    ) -> tuple[list[str], list[str]]:
    """Warnings and notes about one derived group, from its record."""
    from .. import __version__

    warnings: list[str] = []
    notes: list[str] = []
    prov = attrs.get("provenance")
    if not isinstance(prov, Mapping):
        return [f"{pipeline}: no provenance recorded (written by hand or by an old mrfengine)"], notes
    stages = prov.get("stages") if isinstance(prov.get("stages"), Mapping) else {}
    names = list((prov.get("config") or {}).get("stages") or stages)
    mask = stages.get("mask") if isinstance(stages.get("mask"), Mapping) else {}
    write = stages.get("write") if isinstance(stages.get("write"), Mapping) else {}
    source = mask.get("source") or write.get("brain_mask")
    if source == MASK_METHOD:
        why = "[mask] source = series" if mask.get("option") == "series" else "the store has none for this subject"
        warnings.append(f"{pipeline}: the brain mask was made from the MRF series ({why}); check its outline on "
                        "the brain_mask mosaic and in the orientation check")
    elif source == "none":
        warnings.append(f"{pipeline}: no brain mask: the maps were estimated over the whole field of view")
    for stage, record in stages.items():
        warnings += _found_warnings(record, f"{pipeline}/{stage}")
    unet = stages.get("unet") if isinstance(stages.get("unet"), Mapping) else None
    if unet is not None:
        if unet.get("outside_training"):
            shift = unet.get("input_shift")
            more = f" ({shift:.1f} training SDs from its training data)" if isinstance(shift, (int, float)) else ""
            warnings.append(f"{pipeline}: the input lies outside what network {unet.get('network', '?')} was "
                            f"trained on{more}; check the sequence, the brain mask and the data")
        if unet.get("tissue_targets") == "truth" and any(a in arrays for a in ("NAWM", "GM")):
            notes.append(f"{pipeline}: the network's NAWM/GM maps were learnt from the phantom's truth tissue "
                         "fractions (tissue_targets = truth), not from a segmentation of real data")
    if "match" in names and "segment" not in names and not any(a in arrays for a in ("NAWM", "GM")):
        stand_in = (f"; `mrfengine evaluate --pred conventional:{pipeline}` takes the truth's NAWM/GM instead"
                    if subject.truth else "")
        notes.append(f"{pipeline}: no tissue maps (no segment stage){stand_in}")
    seg = stages.get("segment") if isinstance(stages.get("segment"), Mapping) else None
    if seg is not None:
        if seg.get("lesion") == "none":
            notes.append(f"{pipeline}: NAWM is the whole WM (no lesion mask to take out)")
        if seg.get("not_estimated_voxels"):
            notes.append(f"{pipeline}: {seg['not_estimated_voxels']} brain voxels without a tissue estimate")
    match = stages.get("match") if isinstance(stages.get("match"), Mapping) else None
    if match is not None and isinstance(mask.get("voxels"), int) and isinstance(match.get("n_matched"), int) \
            and match["n_matched"] < mask["voxels"]:
        notes.append(f"{pipeline}: {mask['voxels'] - match['n_matched']} of {mask['voxels']} brain voxels not matched")
    reg = stages.get("register") if isinstance(stages.get("register"), Mapping) else None
    if reg is not None:
        d = reg.get("displacement_voxels") or {}
        extra = (f"; displacement RMS {d['rms_in_brain']:.2f}, max {d['max_abs']:.2f} voxels"
                 if isinstance(d.get("rms_in_brain"), (int, float)) and isinstance(d.get("max_abs"), (int, float))
                 else "")
        notes.append(f"{pipeline}: maps resampled onto {reg.get('space', 'the reference grid')}{extra}")
    version = prov.get("mrfengine_version")
    if version and version != __version__:
        notes.append(f"{pipeline}: made by mrfengine {version} (this report: {__version__})")
    return warnings, notes


# --------------------------------------------------------------------------- one subject
def subject_pipelines(cohort: Cohort, subject: Subject) -> tuple[list[str], list[str]]:
    """``(complete, incomplete)`` derived groups of a subject: complete ones are listed in the
    subject's ``arrays``; incomplete ones are in the store only (an interrupted run)."""
    complete = sorted({p.split("/")[1] for p in subject.arrays if p.startswith("derived/") and p.count("/") >= 2})
    try:
        present = [n.rstrip("/") for n in list_dir(cohort.store_path, join("subjects", subject.id, "derived"))]
    except Exception:  # noqa: BLE001 - a store that cannot list: only what the subject lists
        present = []
    incomplete = sorted(n for n in present if n and n not in complete and not n.startswith(".") and n != "zarr.json")
    return complete, incomplete


@dataclass
class SubjectPage:
    """One subject's QC page.

    Attributes
    ----------
    subject : str
    html : str
        The page, self-contained.
    pipelines : list of str
        The derived groups shown.
    available : list of str
        The subject's complete derived groups (shown or not).
    incomplete : list of str
        Groups in the store that an interrupted run left (not shown).
    warnings, notes : list of str
        The subject's and its groups' (warnings are listed at the top of the page, too).
    site, split, group : str
    """

    subject: str
    html: str
    pipelines: list[str]
    available: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    site: str = ""
    split: str = ""
    group: str = ""


class _Inputs:
    """What every group's figures of one subject share: the slices, the mean MRF on them, the
    brain mask and the lesion annotation (read once)."""

    def __init__(self, subject: Subject, n_slices: int) -> None:
        self.subject = subject
        n_z = subject.shape[0]
        bm = subject.brain_mask
        self.mask = None if bm is None else np.asarray(bm[...]) > 0
        lo, hi = _brain_extent(self.mask, n_z)
        self.zs = _spread(lo, hi, n_slices)
        self.view = _View(subject.affine, _box(self.mask, subject.shape[1:]))
        ann = subject.annotations
        truth = subject.truth
        if "lesion" in ann:
            self.annotation, self.annotation_name = np.asarray(ann["lesion"][...]) > 0, "annotations/lesion"
        elif "lesion" in truth:
            self.annotation, self.annotation_name = np.asarray(truth["lesion"][...]) >= 0.5, "truth/lesion >= 0.5"
        else:
            self.annotation, self.annotation_name = None, ""
        self._mean: dict[int, np.ndarray] = {}

    def mean_mrf(self, zs: Sequence[int]) -> np.ndarray:
        for z in zs:
            if z not in self._mean:
                self._mean[z] = np.asarray(self.subject.mrf[:, int(z)], dtype=np.float32).mean(axis=0)
        return np.stack([self._mean[z] for z in zs])

    def mid_slice(self) -> int:
        if self.mask is not None and self.mask.any():
            return int(np.argmax(self.mask.reshape(self.mask.shape[0], -1).sum(axis=1)))
        return self.subject.shape[0] // 2


def _stats(values: np.ndarray, hide_zero: bool) -> str:
    v = values[np.isfinite(values)]
    missing = ""
    if hide_zero:
        zero = int(np.count_nonzero(v == 0))
        if zero:
            missing = f"; not estimated in {100.0 * zero / max(v.size, 1):.1f}%"
        v = v[v != 0]
    if v.size == 0:
        return "no value in the brain on the shown slices"
    p5, p50, p95 = np.percentile(v, [5, 50, 95])
    return f"median {p50:.4g} (5th-95th percentile {p5:.4g} to {p95:.4g}) in the brain, shown slices{missing}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _img(data: str, alt: str, cls: str = "mosaic") -> str:
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _list(items: Sequence[str], cls: str) -> str:
    if not items:
        return ""
    return f'<ul class="{cls}">' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>"


def _provenance_html(attrs: Mapping[str, Any]) -> str:
    prov = attrs.get("provenance") if isinstance(attrs.get("provenance"), Mapping) else {}
    config = prov.get("config") if isinstance(prov.get("config"), Mapping) else {}
    stages = list(config.get("stages") or (prov.get("stages") or {}))
    options = config.get("options") if isinstance(config.get("options"), Mapping) else {}
    rows = [("mrfengine version", prov.get("mrfengine_version", "?")),
            ("backend requested", prov.get("backend", "?")),
            ("stages", " → ".join(stages) or "?")]
    records = prov.get("stages") if isinstance(prov.get("stages"), Mapping) else {}
    for stage in stages:
        opts = options.get(stage) if isinstance(options.get(stage), Mapping) else {}
        text = ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items()) or "(none)"
        rec = records.get(stage) if isinstance(records.get(stage), Mapping) else {}
        ran = rec.get("backend") or rec.get("device") or rec.get("method")
        rows.append((f"{stage} options", text + (f"; ran: {ran}" if ran else "")))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    details = "".join(
        f"<details><summary>{_e(stage)}: the stage's record</summary><pre>{_e(json.dumps(rec, indent=1))}</pre>"
        "</details>" for stage, rec in records.items())
    return f'<table class="prov">{table}</table>{details}'


def _timings_html(attrs: Mapping[str, Any]) -> str:
    timings = attrs.get("timings_s")
    if not isinstance(timings, Mapping) or not timings:
        return "<p>No timings recorded.</p>"
    items = [(str(k), float(v)) for k, v in timings.items() if isinstance(v, (int, float))]
    total = sum(v for _, v in items)
    top = max((v for _, v in items), default=0.0) or 1.0
    rows = "".join(
        f'<tr><th>{_e(k)}</th><td class="num">{v:.3f}</td><td class="bar"><span style="width:{100 * v / top:.1f}%">'
        f"</span></td></tr>" for k, v in items)
    return (f'<table class="timings"><tr><th>step</th><th>seconds</th><th></th></tr>{rows}'
            f'<tr class="total"><th>total</th><td class="num">{total:.3f}</td><td></td></tr></table>')


def _group_section(inputs: _Inputs, pipeline: str, attrs: Mapping[str, Any], warnings: list[str],
                   notes: list[str]) -> str:
    subject = inputs.subject
    arrays = [a for a in (attrs.get("arrays") or []) if f"derived/{pipeline}/{a}" in subject.arrays]
    arrays += sorted(p.split("/", 2)[2] for p in subject.arrays
                     if p.startswith(f"derived/{pipeline}/") and p.split("/", 2)[2] not in arrays)
    zs, view = inputs.zs, inputs.view
    anchor = f"g-{pipeline}"
    parts = [f'<section id="{_e(anchor)}"><h2>derived/{_e(pipeline)}/</h2>']
    parts.append(_list(warnings, "warn") + _list(notes, "note"))

    def read(name: str, where: Sequence[int]) -> np.ndarray:
        return _read(subject.array(f"derived/{pipeline}/{name}"), where)

    # the brain the group's maps live in: its own mask (made from the series, or moved by register)
    own_mask = "brain_mask" in arrays
    t1_name = next((a for a in arrays if _spec(a)[0] == "T1" and not a.endswith("_uncertainty")), None)

    def brain(where: Sequence[int]) -> np.ndarray | None:
        if own_mask:
            return read("brain_mask", where) > 0.5
        return None if inputs.mask is None else inputs.mask[list(where)]

    # orientation check
    z_mid = inputs.mid_slice()
    mean_mid = inputs.mean_mrf([z_mid])[0]
    t1_mid = read(t1_name, [z_mid])[0] if t1_name else None
    outline = None
    if t1_mid is not None:
        b = brain([z_mid])
        outline = b[0] if b is not None else t1_mid > 0
    parts.append("<h3>Orientation check</h3>")
    parts.append(_img(_orientation_figure(mean_mid, t1_mid, outline, z_mid, inputs.view,
                                          f"output: {t1_name}" if t1_name else ""), "orientation check", "orient"))
    parts.append(f'<p class="caption">The input series and the output {_e(t1_name or "(no T1 map)")} of this group '
                 f"on one slice, each edge labelled with the anatomical direction from the subject's affine "
                 f"(axis codes {_e(view.codes)}); the red outline is the output's brain "
                 f"({'its brain_mask' if own_mask else 'the subject brain mask' if inputs.mask is not None else 'T1 > 0'})"
                 f" on the input. A flipped or shifted output shows here.</p>")

    # lesion overlay
    lesion_name = next((a for a in arrays if _spec(a)[0] == "lesion" and not a.endswith("_uncertainty")), None)
    prob = np.asarray(subject.array(f"derived/{pipeline}/{lesion_name}")[...], np.float32) if lesion_name else None
    ann = inputs.annotation
    parts.append("<h3>Lesion overlay</h3>")
    if prob is None and ann is None:
        parts.append('<p class="caption">No lesion map in this group and no lesion annotation: nothing to show.</p>')
    else:
        area = np.zeros(subject.shape[0])
        if ann is not None:
            area += ann.reshape(ann.shape[0], -1).sum(axis=1)
        if prob is not None:
            area += (prob >= LESION_THRESHOLD).reshape(prob.shape[0], -1).sum(axis=1)
        if area.any():
            order = np.argsort(-area, kind="stable")
            lz = sorted(int(z) for z in order[:_LESION_SLICES] if area[z] > 0)
            if t1_name:
                bg, bg_range, bg_label = read(t1_name, lz), (0.0, 3000.0), f"{t1_name} [ms]"
            else:
                bg = inputs.mean_mrf(lz)
                bg_range, bg_label = _robust(bg[bg > 0] if (bg > 0).any() else bg, 1.0, 99.5), "mean MRF [a.u.]"
            parts.append(_img(_overlay(bg, lz, view, bg_range=bg_range, bg_label=bg_label,
                                       outline=None if ann is None else ann[lz], outline_color=_ANNOTATION_COLOR,
                                       probability=None if prob is None else prob[lz], fill_outline=prob is None,
                                       columns=3, target=200), "lesion overlay"))
            what = []
            if prob is not None:
                what.append(f'<span class="sw" style="background:linear-gradient(90deg,#f00,#ff0)"></span> '
                            f"{_e(lesion_name)} (lesion probability, shown from {LESION_THRESHOLD / 3:.2f}; the "
                            f"operating threshold is {LESION_THRESHOLD:g})")
            if ann is not None:
                what.append(f'<span class="sw" style="background:{_ANNOTATION_COLOR}"></span> '
                            f"{_e(inputs.annotation_name)} outline")
            parts.append(f'<p class="caption">{"; ".join(what)}, over the grey '
                         f"{_e('output ' + t1_name if t1_name else 'mean MRF')}; the {len(lz)} slices with the "
                         f"most lesion.</p>")
        else:
            parts.append('<p class="caption">No lesion voxel in the annotation or the lesion map.</p>')

    # maps
    parts.append("<h3>Maps</h3>")
    inside = brain(zs)
    rank = {n: i for i, n in enumerate(_ORDER)}
    shown = [a for a in arrays if a != "brain_mask"]
    shown.sort(key=lambda a: (rank.get(_spec(a)[0] if not a.endswith("_uncertainty") else a, len(_ORDER)), a))
    for name in shown:
        arr = subject.array(f"derived/{pipeline}/{name}")
        base, spec, unit = _spec(name, str(arr.attrs.get("units", "")))
        data = _read(arr, zs)
        vals = data[inside] if inside is not None else data.ravel()
        disp = _display(name, unit, spec, base, vals)
        description = spec.description if spec is not None else str(arr.attrs.get("description", "")) or \
            "not in the map registry"
        parts.append(f'<figure id="{_e(anchor)}-{_e(name)}"><figcaption><b>{_e(name)}</b> '
                     f"[{_e(disp.unit)}]: {_e(description)}. Display range {disp.vmin:.4g} to {disp.vmax:.4g} "
                     f"({_e(disp.range_note)}); {_e(_stats(vals, disp.hide_zero))}.</figcaption>")
        parts.append(_img(_mosaic(data, zs, view, disp, inside), f"{name} mosaic") + "</figure>")
    if own_mask:
        mean = inputs.mean_mrf(zs)
        parts.append(f'<figure id="{_e(anchor)}-brain_mask"><figcaption><b>brain_mask</b>: the brain mask these '
                     "maps were made in (red outline) over the mean MRF.</figcaption>")
        parts.append(_img(_overlay(mean, zs, view, outline=read("brain_mask", zs) > 0.5, outline_color="#ff3b3b",
                                   bg_range=_robust(mean[mean > 0] if (mean > 0).any() else mean, 1.0, 99.5),
                                   bg_label="mean MRF [a.u.]"), "brain mask outline") + "</figure>")

    parts.append("<h3>Provenance</h3>" + _provenance_html(attrs))
    parts.append("<h3>Timings</h3>" + _timings_html(attrs))
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2327;
background:#f4f5f7;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:16px 24px 48px;background:#fff;min-height:100vh}
h1{font-size:1.6em;margin:.3em 0}h2{font-size:1.3em;border-bottom:2px solid #d0d4da;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.4em 0;font-size:.92em}th,td{border:1px solid #d0d4da;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f0f2f5;font-weight:600}td.num{text-align:right;
font-variant-numeric:tabular-nums}
td.bar{width:240px}td.bar span{display:block;height:10px;background:#4a7fd1;border-radius:2px}
tr.total th,tr.total td{font-weight:700}
ul.warn{background:#fff4d6;border-left:5px solid #e0a400;padding:8px 8px 8px 28px;margin:.6em 0}
ul.note{background:#eef2f7;border-left:5px solid #8796a8;padding:8px 8px 8px 28px;margin:.6em 0;color:#333}
img.mosaic,img.orient{display:block;max-width:100%;height:auto;border-radius:3px;margin:4px 0}
figure{margin:1em 0}figcaption,.caption{font-size:.9em;color:#3a4148}
.sw{display:inline-block;width:22px;height:10px;border:1px solid #555;vertical-align:middle}
nav{font-size:.92em;margin:.4em 0 1em}nav a{margin-right:12px}
details{margin:.3em 0}summary{cursor:pointer;color:#2b5797}pre{background:#f6f8fa;padding:8px;overflow:auto;
font-size:.82em;max-height:360px}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b35900;font-weight:600}.fail{color:#c62828;font-weight:700}
footer{margin-top:3em;font-size:.85em;color:#667}.hidden{color:#8a939c}.pl{white-space:nowrap}
"""


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def _generated() -> str:
    from .. import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"mrfengine {__version__}, {now}"


def subject_page(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    *,
    pipelines: Sequence[str] | None = None,
    n_slices: int = DEFAULT_SLICES,
) -> SubjectPage:
    """The QC page of one subject (not written; see :func:`write_qc_report`).

    Parameters
    ----------
    cohort : Cohort or path
    subject_id : str
        ``sub-XX`` (or a name :meth:`Cohort.select` understands).
    pipelines : sequence of str, optional
        Derived groups to show (default: every complete one); a named group the subject
        lacks is a warning on the page.
    n_slices : int
        Slices per mosaic, spread over the brain.

    Returns
    -------
    SubjectPage

    Raises
    ------
    StoreError
        The subject is missing, incomplete or unreadable.
    ValidationError
        ``n_slices`` below 1.
    """
    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValidationError(f"n_slices must be a positive integer; got {n_slices!r}")
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    sid = cohort.select([subject_id])[0]
    subject = cohort[sid]
    complete, incomplete = subject_pipelines(cohort, subject)
    warnings: list[str] = []
    notes: list[str] = []
    if pipelines:
        shown = [p for p in pipelines if p in complete]
        for p in pipelines:
            if p not in complete:
                why = "incomplete (an interrupted run)" if p in incomplete else "absent"
                warnings.append(f"{p}: requested, but derived/{p}/ is {why} for this subject")
        incomplete = [p for p in incomplete if p in pipelines]
    else:
        shown = complete
        for p in incomplete:
            warnings.append(f"{p}: derived/{p}/ is incomplete (an interrupted run); not shown; rerun the batch")
    if not complete:
        warnings.append("no derived maps: run `mrfengine batch` on the cohort first")
    inputs = _Inputs(subject, n_slices)
    if inputs.mask is None:
        notes.append("the store has no brain mask for this subject")
    subject_notes = len(notes)  # the groups' notes are shown in their sections only
    sections = []
    for p in shown:
        attrs = derived_attrs(cohort, sid, p) or {}
        arrays = [a.split("/", 2)[2] for a in subject.arrays if a.startswith(f"derived/{p}/")]
        w, n = _group_findings(p, attrs, arrays, subject)
        warnings += w
        notes += n
        sections.append(_group_section(inputs, p, attrs, w, n))
    source = subject.attrs.get("source")
    facts = [("site", subject.site), ("group", subject.group), ("split", subject.split),
             ("source", json.dumps(source) if isinstance(source, (dict, list)) else source or "?"),
             ("grid (X x Y x Z)", "x".join(str(v) for v in subject.shape[::-1])),
             ("voxel size (mm)", " x ".join(f"{v:g}" for v in subject.voxel_size_mm)),
             ("frames", subject.mrf.shape[0]), ("axis codes", inputs.view.codes),
             ("shown slices (z)", ", ".join(map(str, inputs.zs)))]
    header = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    nav = "".join(f'<a href="#g-{_e(p)}">{_e(p)}</a>' for p in shown)
    status = ('<p class="ok">No warnings.</p>' if not warnings else
              f'<p class="bad">{len(warnings)} warning(s):</p>')
    body = (f'<p><a href="{INDEX_FILE}">&larr; cohort index</a></p><h1>{_e(sid)}</h1>'
            f'<p>Quality control of the derived maps in <code>{_e(cohort.name)}</code>.</p>'
            f'<table class="facts">{header}</table>'
            f"<nav>Derived groups: {nav or '(none)'}</nav>"
            f"{status}{_list(warnings, 'warn')}{_list(notes[:subject_notes], 'note')}"
            + "\n".join(sections) + f"<footer>Written by {_e(_generated())}.</footer>")
    return SubjectPage(sid, _page(f"{sid}: mrfengine QC", body), shown, complete, incomplete, warnings, notes,
                       subject.site, subject.split, subject.group)


# --------------------------------------------------------------------------- the cohort
@dataclass
class QCReport:
    """What :func:`write_qc_report` wrote.

    Attributes
    ----------
    index : Path
    pages : dict of str to Path
        Subject id -> its page.
    failed : dict of str to str
        Subject id -> why its page could not be made.
    warnings : dict of str to list of str
        Subject id -> its page's warnings.
    """

    index: Path
    pages: dict[str, Path]
    failed: dict[str, str]
    warnings: dict[str, list[str]]


def _pipelines_cell(page: SubjectPage) -> str:
    """The subject's complete derived groups, those not shown on its page in grey."""
    if not page.available:
        return "(none)"
    return ", ".join(f'<span class="pl">{_e(p)}</span>' if p in page.pipelines else
                     f'<span class="pl hidden" title="not shown">{_e(p)}</span>' for p in page.available)


def index_page(cohort_name: str, pages: Sequence[SubjectPage], *, failed: Mapping[str, str] | None = None,
               absent: Mapping[str, str] | None = None) -> str:
    """The cohort's index: one row per subject, linked to its page, with a one-line status."""
    rows = []
    for page in pages:
        if page.warnings:
            more = f" (+{len(page.warnings) - 1} more)" if len(page.warnings) > 1 else ""
            status = f'<span class="bad">{len(page.warnings)} warning(s)</span>: {_e(page.warnings[0])}{more}'
        else:
            status = '<span class="ok">OK</span>'
        if page.incomplete:
            status += f"; incomplete: {_e(', '.join(page.incomplete))}"
        rows.append(f'<tr><td><a href="{_e(page_name(page.subject))}">{_e(page.subject)}</a></td>'
                    f"<td>{_e(page.site)}</td><td>{_e(page.split)}</td><td>{_e(page.group)}</td>"
                    f"<td>{_pipelines_cell(page)}</td><td>{status}</td></tr>")
    for sid, why in (failed or {}).items():
        rows.append(f'<tr><td>{_e(sid)}</td><td colspan="4"></td><td><span class="fail">report failed</span>: '
                    f"{_e(why)}</td></tr>")
    for sid, why in (absent or {}).items():
        rows.append(f'<tr><td>{_e(sid)}</td><td colspan="4"></td><td><span class="fail">not readable</span>: '
                    f"{_e(why)}</td></tr>")
    n_warn = sum(1 for p in pages if p.warnings)
    body = (f"<h1>Quality control: {_e(cohort_name)}</h1>"
            f"<p>{len(pages)} subject page(s); {n_warn} with warnings"
            + (f"; {len(failed)} failed" if failed else "") + (f"; {len(absent)} not readable" if absent else "")
            + ".</p><table class=\"index\"><tr><th>subject</th><th>site</th><th>split</th><th>group</th>"
            "<th>pipelines</th><th>status</th></tr>" + "".join(rows) + "</table>"
            f"<footer>Written by {_e(_generated())}.</footer>")
    return _page(f"{cohort_name}: mrfengine QC", body)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_qc_report(
    cohort: Cohort | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    subjects: Iterable[str] | None = None,
    pipelines: Sequence[str] | None = None,
    n_slices: int = DEFAULT_SLICES,
    force: bool = False,
) -> QCReport:
    """Write ``sub-XX.html`` per subject and ``index.html`` into ``out_dir``.

    Every output is checked before any is written (:func:`mrfengine.io.outputs.check_outputs`):
    existing pages are replaced only with ``force``.  A subject whose page fails (an unreadable
    array) is listed in the index with the reason; the others are written.

    Parameters
    ----------
    cohort : Cohort or path
    out_dir : path
    subjects : iterable of str, optional
        Default: every complete subject (the cohort's unreadable ones are listed in the index).
    pipelines : sequence of str, optional
        Derived groups to show (default: every complete one of each subject).
    n_slices : int
        Slices per mosaic.
    force : bool
        Replace existing pages.

    Returns
    -------
    QCReport

    Raises
    ------
    StoreError
        Not a cohort, or a named subject it lacks.
    OutputExistsError
        Pages exist and ``force`` is false.
    """
    from ..io.outputs import check_outputs

    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    named = list(subjects or [])
    sids = cohort.select(named or None)
    out = Path(out_dir)
    check_outputs(out, [INDEX_FILE, *(page_name(s) for s in sids)], force=force)
    out.mkdir(parents=True, exist_ok=True)
    pages: list[SubjectPage] = []
    written: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for sid in sids:
        try:
            page = subject_page(cohort, sid, pipelines=pipelines, n_slices=n_slices)
        except (StoreError, ValidationError, OSError, ValueError) as exc:
            log.error("%s: no QC page: %s", sid, exc)
            failed[sid] = str(exc)
            continue
        path = out / page_name(sid)
        _write_text(path, page.html)
        written[sid] = path
        pages.append(page)
    absent = {} if named else dict(cohort.absent)
    index = out / INDEX_FILE
    _write_text(index, index_page(cohort.name, pages, failed=failed, absent=absent))
    return QCReport(index, written, failed, {p.subject: list(p.warnings) for p in pages})


# --------------------------------------------------------------------------- one NIfTI run (predict --report)
class _NiftiArray:
    """A NIfTI map read as a store's (Z, Y, X) array: ``a[z]`` reads one slice; values in the
    registry's unit (a relaxation time in seconds, BIDS's, back to ms)."""

    def __init__(self, path: Path, scale: float, attrs: Mapping[str, Any]) -> None:
        import nibabel as nib

        self.path = path
        self.img = nib.load(str(path))
        if len(self.img.shape) != 3:
            raise ValidationError(f"{path}: not a 3D map (shape {self.img.shape})")
        self.shape = tuple(int(n) for n in self.img.shape[::-1])
        self.scale = scale
        self.attrs = dict(attrs)

    def __getitem__(self, key: Any) -> np.ndarray:
        if key is Ellipsis:
            return np.asarray(self.img.dataobj, dtype=np.float32).T * np.float32(self.scale)
        return np.asarray(self.img.dataobj[:, :, int(key)], dtype=np.float32).T * np.float32(self.scale)


class _NiftiMRF:
    """A 4D MRF NIfTI (X, Y, Z, frames) read as the store's ``mrf`` (frames, Z, Y, X)."""

    def __init__(self, img: Any) -> None:
        self.img = img
        x, y, z, t = img.shape
        self.shape = (t, z, y, x)

    def __getitem__(self, key: Any) -> np.ndarray:
        _, z = key  # mrf[:, z]
        return np.asarray(self.img.dataobj[:, :, int(z), :], dtype=np.float32).transpose(2, 1, 0)


class _NiftiSubject:
    """What the QC figures read of a subject, from NIfTI files: the input series, the maps
    of one run (``derived/<pipeline>/<name>``) and, where given, a brain mask."""

    def __init__(self, subject_id: str, mrf_path: Path, pipeline: str, files: Mapping[str, Path],
                 mask_path: Path | None) -> None:
        import nibabel as nib

        img = nib.load(str(mrf_path))
        if len(img.shape) != 4:
            raise ValidationError(f"{mrf_path}: not a 4D MRF series (shape {img.shape})")
        self.id = subject_id
        self.mrf = _NiftiMRF(img)
        self.shape = self.mrf.shape[1:]
        self.affine = np.asarray(img.affine, dtype=np.float64)
        self.voxel_size_mm = tuple(float(v) for v in img.header.get_zooms()[:3])
        self.site = self.split = self.group = "-"
        self.attrs = {"source": str(mrf_path)}
        self.truth: dict[str, Any] = {}
        self.annotations: dict[str, Any] = {}
        self._arrays: dict[str, _NiftiArray] = {}
        for name, path in files.items():
            spec = derived_spec(name) or OTHER_MAPS.get(name)
            scale = 1.0 / spec.scale_to_bids if spec is not None and spec.scale_to_bids else 1.0
            units = spec.unit if spec is not None else ""
            arr = _NiftiArray(Path(path), scale, {"units": units})
            if arr.shape != tuple(self.shape):
                raise ValidationError(f"{path}: shape {arr.img.shape} is not the series' {img.shape[:3]}")
            self._arrays[f"derived/{pipeline}/{name}"] = arr
        self.brain_mask = None if mask_path is None else _NiftiArray(Path(mask_path), 1.0, {})

    @property
    def arrays(self) -> list[str]:
        return list(self._arrays)

    def array(self, path: str) -> _NiftiArray:
        return self._arrays[path]


def write_nifti_report(
    mrf_path: str | os.PathLike,
    files: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    subject_id: str,
    pipeline: str = "unet",
    record: Mapping[str, Any] | None = None,
    mask_path: str | os.PathLike | None = None,
    n_slices: int = DEFAULT_SLICES,
    force: bool = False,
) -> QCReport:
    """The QC page of one NIfTI run (``mrfengine predict --report DIR``): the maps of
    ``files`` drawn as :func:`write_qc_report` draws a derived group (orientation check
    against ``mrf_path``, lesion overlay, one mosaic per map, the run's record), and an
    index page; ``<subject_id>.html`` and ``index.html`` in ``out_dir``.

    Parameters
    ----------
    mrf_path : path
        The 4D input series (X, Y, Z, frames).
    files : mapping of str to path
        Map name (``T1``, ``lesion``, ``brain_mask``, ...) -> its NIfTI on the series' grid
        (:attr:`mrfengine.pipeline.nifti.NiftiResult.files`).
    subject_id : str
        The page's name (the files' prefix, ``sub-01``).
    pipeline : str
        The section's title (``derived/<pipeline>/``).
    record : mapping, optional
        The run's record (:attr:`NiftiResult.info`): shown as the provenance, its warnings listed.
    mask_path : path, optional
        The brain mask the maps were made in, when it is not among ``files``.

    Raises
    ------
    ValidationError
        A file that is not a map on the series' grid.
    OutputExistsError
        The pages exist and ``force`` is false.
    """
    from .. import __version__
    from ..io.outputs import check_outputs

    if not isinstance(n_slices, int) or n_slices < 1:
        raise ValidationError(f"n_slices must be a positive integer; got {n_slices!r}")
    out = Path(out_dir)
    check_outputs(out, [INDEX_FILE, page_name(subject_id)], force=force)
    files = {k: Path(v) for k, v in files.items()}
    made_mask = "brain_mask" in files
    subject = _NiftiSubject(subject_id, Path(mrf_path), pipeline, files,
                            None if mask_path is None or made_mask else Path(mask_path))
    record = dict(record or {})
    source = MASK_METHOD if made_mask else ("given" if mask_path is not None else "none")
    attrs = {"provenance": {"mrfengine_version": __version__, "backend": record.get("device", "?"),
                            "config": {"stages": ["mask", pipeline], "options": {}},
                            "stages": {"mask": {"source": source}, pipeline: record}},
             "timings_s": {pipeline: record["seconds"]} if isinstance(record.get("seconds"), (int, float)) else {}}
    inputs = _Inputs(subject, n_slices)  # type: ignore[arg-type] - the Subject interface the figures read
    warnings, notes = _group_findings(pipeline, attrs, list(files), subject)  # type: ignore[arg-type]
    section = _group_section(inputs, pipeline, attrs, warnings, notes)
    facts = [("input", str(mrf_path)), ("grid (X x Y x Z)", "x".join(str(v) for v in subject.shape[::-1])),
             ("voxel size (mm)", " x ".join(f"{v:g}" for v in subject.voxel_size_mm)),
             ("frames", subject.mrf.shape[0]), ("axis codes", inputs.view.codes),
             ("shown slices (z)", ", ".join(map(str, inputs.zs)))]
    header = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    status = ('<p class="ok">No warnings.</p>' if not warnings else f'<p class="bad">{len(warnings)} warning(s):</p>')
    body = (f'<p><a href="{INDEX_FILE}">&larr; index</a></p><h1>{_e(subject_id)}</h1>'
            f"<p>Quality control of the maps of <code>{_e(mrf_path)}</code>.</p>"
            f'<table class="facts">{header}</table>{status}{_list(warnings, "warn")}'
            f"{section}<footer>Written by {_e(_generated())}.</footer>")
    page = SubjectPage(subject_id, _page(f"{subject_id}: mrfengine QC", body), [pipeline], [pipeline], [], warnings,
                       notes, "-", "-", "-")
    out.mkdir(parents=True, exist_ok=True)
    path = out / page_name(subject_id)
    _write_text(path, page.html)
    index = out / INDEX_FILE
    _write_text(index, index_page(Path(mrf_path).name, [page]))
    return QCReport(index, {subject_id: path}, {}, {subject_id: list(warnings)})
