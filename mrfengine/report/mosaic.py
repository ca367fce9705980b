"""A PNG mosaic of one cohort subject: does the phantom look like a brain?

One row per slice, cropped to the brain; columns: MRF frames, and where present the truth maps
(T1, T2*, PD, B1, tissue fractions as an RGB composite) and the reference
image with the lesion outlines (truth fraction 0.5 in red, annotations in
cyan and yellow); then, when asked for, derived maps (``derived/<pipeline>/<map>``: a
batch's conventional or U-net maps), each with its colour bar and unit, drawn with the
colours and ranges of the QC pages (:func:`mrfengine.report.qc.map_display`).  Slices are shown in radiological convention (the
subject's right on the image's left, anterior up) when the affine allows.

Built on :class:`matplotlib.figure.Figure` with the Agg canvas, never
through ``pyplot``; written atomically by
:func:`mrfengine.report.figures.save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import ValidationError
from ..metrics.definitions import REFERENCE_LESION_THRESHOLD
from ..io.cohort import Cohort, Subject
from .figures import save_figure

__all__ = ["subject_mosaic", "save_subject_mosaic", "default_slices"]

# truth map -> (title, colour map, vmin, vmax)
_MAPS = {
    "T1": ("T1 (ms)", "magma", 0.0, 2500.0),
    "T2star": ("T2* (ms)", "viridis", 0.0, 120.0),
    "PD": ("PD", "gray", 0.0, 1.0),
    "B1": ("B1 factor", "coolwarm", 0.7, 1.3),
}


def default_slices(subject: Subject, n: int = 3) -> list[int]:
    """``n`` slices spread over the middle of the brain (or of the volume)."""
    z_count = subject.shape[0]
    lo, hi = 0, z_count - 1
    mask = subject.brain_mask
    if mask is not None:
        zs = np.flatnonzero(np.asarray(mask[...]).reshape(z_count, -1).any(axis=1))
        if zs.size:
            lo, hi = int(zs.min()), int(zs.max())
    return sorted({int(round(lo + (hi - lo) * f)) for f in np.linspace(0.3, 0.75, n)})


def _brain_box(subject: Subject, slices: Sequence[int], margin: int = 4) -> tuple[slice, slice]:
    """In-plane bounding box (rows, columns) of the brain on the shown slices."""
    mask = subject.brain_mask
    ny, nx = subject.shape[1:]
    if mask is None:
        return slice(0, ny), slice(0, nx)
    m = np.zeros((ny, nx), dtype=bool)
    for z in slices:
        m |= np.asarray(mask[z]) > 0
    if not m.any():
        return slice(0, ny), slice(0, nx)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    return (slice(max(0, rows[0] - margin), min(ny, rows[-1] + margin + 1)),
            slice(max(0, cols[0] - margin), min(nx, cols[-1] + margin + 1)))


def _orient(affine: np.ndarray):
    """A function that turns a (Y, X) slice into display orientation."""
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    flip_x = codes[0] == "R"  # radiological: the subject's right on the left
    flip_y = codes[1] == "P"

    def view(img: np.ndarray) -> np.ndarray:
        if flip_x:
            img = img[..., ::-1]
        if flip_y:
            img = img[..., ::-1, :]
        return img

    return view


def subject_mosaic(
    subject: Subject,
    *,
    slices: Sequence[int] | None = None,
    frames: Sequence[int] = (0, 17),
    panel_inches: float = 2.2,
    maps: Sequence[str] = (),
) -> Figure:
    """The mosaic of one subject.

    Parameters
    ----------
    subject : Subject
    slices : sequence of int, optional
        Slice positions (rows); default :func:`default_slices`.
    frames : sequence of int
        MRF frames to show (0-based).
    panel_inches : float
        Size of one panel.
    maps : sequence of str
        Derived arrays to add as columns, by their path in the subject
        (``derived/denoise-match/T1``), each with a colour bar; 0 (no estimate)
        is drawn as background.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValidationError
        A slice or frame out of range, or a map the subject does not have.
    """
    slices = default_slices(subject) if slices is None else [int(s) for s in slices]
    n_frames = subject.mrf.shape[0]
    for z in slices:
        if not 0 <= z < subject.shape[0]:
            raise ValidationError(f"slice {z} is out of range [0, {subject.shape[0]})")
    for f in frames:
        if not 0 <= f < n_frames:
            raise ValidationError(f"frame {f} is out of range [0, {n_frames})")
    orient = _orient(subject.affine)
    box = _brain_box(subject, slices)

    def view(img: np.ndarray) -> np.ndarray:
        return orient(img[..., box[0], box[1]])

    truth = subject.truth
    ann = subject.annotations
    refs = subject.reference
    columns: list[str] = [f"frame{f}" for f in frames]
    columns += [k for k in _MAPS if k in truth]
    if all(k in truth for k in ("GM", "WM", "CSF")):
        columns.append("tissue")
    columns.append("outline")
    missing = [m for m in maps if m not in subject.arrays]
    if missing:
        raise ValidationError(f"{subject.id} has no array {missing[0]}")
    derived = _derived_columns(subject, maps, slices)
    columns += list(derived)
    fig = Figure(figsize=(panel_inches * len(columns), panel_inches * len(slices) + 0.6), layout="constrained")
    fig.suptitle(f"{subject.id}  site {subject.site}, {subject.group}, {subject.split}  "
                 f"({subject.shape[2]}x{subject.shape[1]}x{subject.shape[0]}, radiological view)", fontsize=10)
    axes = fig.subplots(len(slices), len(columns), squeeze=False)
    for r, z in enumerate(slices):
        mrf = np.asarray(subject.mrf[:, z])
        scale = float(np.percentile(mrf, 99.5)) or 1.0
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col.startswith("frame"):
                f = int(col[5:])
                im = ax.imshow(view(mrf[f]), cmap="gray", vmin=0, vmax=scale, origin="lower")
                title = f"MRF frame {f + 1}"
            elif col in _MAPS:
                name, cmap, lo, hi = _MAPS[col]
                im = ax.imshow(view(np.asarray(truth[col][z])), cmap=cmap, vmin=lo, vmax=hi, origin="lower")
                title = name
                if r == len(slices) - 1:
                    fig.colorbar(im, ax=ax, location="bottom", shrink=0.8, aspect=15)
            elif col == "tissue":
                rgb = np.stack([np.asarray(truth[k][z]) for k in ("CSF", "GM", "WM")], axis=-1)
                if "lesion" in truth:
                    les = np.asarray(truth["lesion"][z])
                    rgb = rgb + les[..., None] * np.array([1.0, 1.0, 0.0])
                ax.imshow(view(np.clip(rgb, 0, 1).transpose(2, 0, 1)).transpose(1, 2, 0), origin="lower")
                title = "CSF / GM / WM, lesion"
            elif col in derived:
                title, cmap, lo, hi, unit, stack, hide_zero = derived[col]
                img = np.ma.masked_equal(view(stack[r]), 0.0) if hide_zero else view(stack[r])
                im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, origin="lower")
                ax.set_facecolor("black")
                title = f"{title}\n{col.split('/')[1]} ({unit})"
                if r == len(slices) - 1:
                    fig.colorbar(im, ax=ax, location="bottom", shrink=0.8, aspect=15)
            else:
                base = refs.get("T2w")
                img = np.asarray(base[z]) if base is not None else mrf[-1]
                lo, hi = np.percentile(img, [1, 99.5])
                ax.imshow(view(img), cmap="gray", vmin=lo, vmax=hi, origin="lower")
                if "lesion" in truth:
                    ax.contour(view(np.asarray(truth["lesion"][z])), [REFERENCE_LESION_THRESHOLD], colors="red", linewidths=0.8)
                for name, color in (("lesion", "cyan"), ("lesion_repeat", "yellow")):
                    if name in ann:
                        a = view(np.asarray(ann[name][z], dtype=float))
                        if a.any():
                            ax.contour(a, [0.5], colors=color, linewidths=0.6)
                title = ("T2w" if base is not None else "last frame") + ": lesion truth/annotation"
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {z}", fontsize=8)
    return fig


def _derived_columns(subject: Subject, maps: Sequence[str], slices: Sequence[int]) -> dict[str, tuple]:
    """Per derived map: ``(title, cmap, vmin, vmax, unit, slices stack, hide zero)``."""
    from .qc import map_display

    out: dict[str, tuple] = {}
    brain = subject.brain_mask
    for path in maps:
        arr = subject.array(path)
        if len(arr.shape) != 3:
            raise ValidationError(f"{subject.id}: {path} is not a 3D map (shape {tuple(arr.shape)})")
        stack = np.stack([np.asarray(arr[z], dtype=np.float64) for z in slices])
        inside = np.stack([np.asarray(brain[z]) > 0 for z in slices]) if brain is not None else np.ones_like(stack, bool)
        values = stack[inside & np.isfinite(stack)]
        units = str(getattr(arr, "attrs", {}).get("units", "") or "")
        title, cmap, lo, hi, unit, hide_zero = map_display(path, values, units)
        out[path] = (title, cmap, lo, hi, unit, stack, hide_zero)
    return out


def save_subject_mosaic(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    path: str | os.PathLike,
    *,
    slices: Sequence[int] | None = None,
    frames: Sequence[int] = (0, 17),
    dpi: int = 110,
    maps: Sequence[str] = (),
) -> Path:
    """Write the mosaic of ``subject_id`` as PNG (atomically); returns the path.
    ``maps``: derived arrays to add (:func:`subject_mosaic`)."""
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    fig = subject_mosaic(cohort[subject_id], slices=slices, frames=frames, maps=maps)
    return save_figure(fig, path, dpi=dpi)
