"""The paper's evaluation figures, drawn from plain arrays.

* :func:`plot_threshold_sweeps`: Dice and detection rate over the binarising
  threshold, one line per subject coloured by split, the test mean in black
  (Hermann et al. 2021, Fig. 3).
* :func:`plot_lesion_volumes`: per-lesion Dice over lesion volume and
  predicted over true lesion volume (Fig. S1).
* :func:`plot_overlays`: one slice per subject, the lesion probability over
  the magnitude image with the annotation outlined, and the binarised map
  below (Fig. 5).
* :func:`plot_reliability`: reliability curves of the probability maps.
* :func:`report_figures`: all of them from :func:`mrfengine.report.tables.build_report`'s dict.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas,
never through ``pyplot``, so no global backend or state is touched; PNGs are
written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from .._atomic import atomic_path
from ..errors import ValidationError
from ..metrics.definitions import LESION_THRESHOLD

__all__ = [
    "SPLIT_COLORS",
    "save_figure",
    "plot_threshold_sweeps",
    "plot_lesion_volumes",
    "OverlayPanel",
    "representative_slice",
    "overlay_panel",
    "plot_overlays",
    "plot_reliability",
    "report_figures",
]

# The paper's colours: training blue, test orange; the test mean in black.
SPLIT_COLORS = {"train": "#1f77b4", "training": "#1f77b4", "validation": "#2ca02c", "test": "#ff7f0e"}
_SPLIT_ORDER = ("train", "training", "validation", "test")


def _color(split: str) -> str:
    return SPLIT_COLORS.get(split, "0.5")


def _split_order(splits: Mapping[str, str], subjects: Sequence[str]) -> list[str]:
    present = {splits[s] for s in subjects}
    return [s for s in _SPLIT_ORDER if s in present] + sorted(present - set(_SPLIT_ORDER))


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG atomically (temporary name, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _check_subjects(name: str, data: Mapping[str, Any], splits: Mapping[str, str]) -> list[str]:
    if not data:
        raise ValidationError(f"{name} is empty; nothing to plot")
    missing = sorted(set(data) - set(splits))
    if missing:
        raise ValidationError(f"splits must name a split for every subject of {name}; missing {missing}")
    return list(data)


def _curve(values: ArrayLike, n: int, name: str) -> np.ndarray:
    v = np.asarray([np.nan if x is None else x for x in np.asarray(values, dtype=object).ravel()], dtype=np.float64)
    if v.shape != (n,):
        raise ValidationError(f"{name} must have one value per threshold ({n}); got {v.shape[0]}")
    return v


def plot_threshold_sweeps(
    thresholds: ArrayLike,
    dice: Mapping[str, ArrayLike],
    detection_rate: Mapping[str, ArrayLike],
    splits: Mapping[str, str],
    *,
    path: str | os.PathLike,
    operating_threshold: float | None = LESION_THRESHOLD,
    mean_split: str = "test",
    dpi: int = 150,
) -> Path:
    """Dice (left) and lesion detection rate (right) over the threshold (Fig. 3).

    Parameters
    ----------
    thresholds : array_like, (T,)
        In [0, 1]; plotted in percent.
    dice, detection_rate : mapping of subject id to array_like (T,)
        Curves (None/NaN where undefined, e.g. a lesion-free subject).
    splits : mapping of subject id to split name
    path : path
        The PNG to write.
    operating_threshold : float, optional
        Drawn as a dashed vertical line.
    mean_split : str
        Whose NaN-aware mean is drawn in black (the paper: test).

    Returns
    -------
    Path
    """
    t = np.asarray(thresholds, dtype=np.float64).ravel()
    subjects = _check_subjects("dice", dice, splits)
    _check_subjects("detection_rate", detection_rate, splits)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, curves, title in ((axes[0], dice, "Dice coefficient"), (axes[1], detection_rate, "Lesion detection rate")):
        stacked: list[np.ndarray] = []
        for sid in subjects:
            if sid not in curves:
                continue
            v = _curve(curves[sid], t.size, f"{title} of {sid!r}")
            test = splits[sid] == mean_split
            ax.plot(100 * t, v, color=_color(splits[sid]), lw=1.6 if test else 1.0, alpha=0.9 if test else 0.6)
            if test:
                stacked.append(v)
        handles = [Line2D([], [], color=_color(s), label=s) for s in _split_order(splits, [s for s in subjects if s in curves])]
        if stacked:
            with np.errstate(invalid="ignore"):
                arr = np.vstack(stacked)
                ok = np.isfinite(arr).any(axis=0)
                mean = np.full(t.size, np.nan)
                mean[ok] = np.nanmean(arr[:, ok], axis=0)
            ax.plot(100 * t, mean, color="k", lw=2.4)
            label = f"{mean_split} mean"
            if ax is axes[0] and ok.any():
                j = int(np.nanargmax(mean))
                ax.plot(100 * t[j], mean[j], "o", color="k", ms=5)
                label += f" (max {mean[j]:.2f} at {100 * t[j]:.0f}%)"
            handles.append(Line2D([], [], color="k", lw=2.4, label=label))
        if operating_threshold is not None:
            ax.axvline(100 * operating_threshold, color="0.3", ls="--", lw=1)
            handles.append(Line2D([], [], color="0.3", ls="--", lw=1, label=f"{100 * operating_threshold:g}% threshold"))
        ax.set(xlabel="threshold (%)", ylabel=title, title=title, xlim=(100 * t.min(), 100 * t.max()), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="best")
    return save_figure(fig, path, dpi=dpi)


def plot_lesion_volumes(
    per_lesion: Mapping[str, Mapping[str, ArrayLike]],
    splits: Mapping[str, str],
    *,
    path: str | os.PathLike,
    dpi: int = 150,
) -> Path:
    """Per-lesion Dice over lesion volume (A) and predicted over true volume (B) (Fig. S1).

    Parameters
    ----------
    per_lesion : mapping of subject id to a mapping with arrays of equal length
        ``"ref_volume_ml"``, ``"pred_volume_ml"`` and ``"dice"`` (one entry per
        reference lesion, as in ``LesionEvaluation.to_dict()["per_lesion"]``).
    splits : mapping of subject id to split name
    path : path

    Returns
    -------
    Path

    Notes
    -----
    Undetected lesions (predicted volume 0) cannot sit on a log axis: panel B
    draws them as triangles on its lower edge and counts them in the legend.
    """
    subjects = _check_subjects("per_lesion", per_lesion, splits)
    data = {}
    for sid in subjects:
        entry = per_lesion[sid]
        try:
            ref_v = np.asarray(entry["ref_volume_ml"], dtype=np.float64).ravel()
            pred_v = np.asarray(entry["pred_volume_ml"], dtype=np.float64).ravel()
            dsc = np.asarray(entry["dice"], dtype=np.float64).ravel()
        except KeyError as exc:
            raise ValidationError(f"per_lesion[{sid!r}] lacks {exc.args[0]!r}") from None
        if not ref_v.size == pred_v.size == dsc.size:
            raise ValidationError(f"per_lesion[{sid!r}] arrays differ in length: {ref_v.size}, {pred_v.size}, {dsc.size}")
        data[sid] = (ref_v, pred_v, dsc)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_a, ax_b = fig.subplots(1, 2)
    all_ref = np.concatenate([d[0] for d in data.values()])
    all_pred = np.concatenate([d[1] for d in data.values()])
    positive = np.concatenate([all_ref[all_ref > 0], all_pred[all_pred > 0]])
    lo = positive.min() / 2 if positive.size else 1e-3
    hi = positive.max() * 2 if positive.size else 1.0
    for split in _split_order(splits, subjects):
        sids = [s for s in subjects if splits[s] == split]
        ref_v = np.concatenate([data[s][0] for s in sids])
        pred_v = np.concatenate([data[s][1] for s in sids])
        dsc = np.concatenate([data[s][2] for s in sids])
        c = _color(split)
        ax_a.scatter(ref_v, dsc, s=14, color=c, alpha=0.75, label=f"{split} ({ref_v.size} lesions)")
        hit = pred_v > 0
        ax_b.scatter(ref_v[hit], pred_v[hit], s=14, color=c, alpha=0.75, label=split)
        if (~hit).any():
            ax_b.scatter(ref_v[~hit], np.full((~hit).sum(), lo), s=22, marker="v", color=c, alpha=0.75,
                         clip_on=False, label=f"{split}: not predicted ({int((~hit).sum())})")
    ax_a.set_xscale("log")
    ax_a.set(xlabel="lesion volume (ml)", ylabel="per-lesion Dice", title="A  Dice per lesion", ylim=(-0.02, 1.02),
             xlim=(lo, hi))
    ax_b.plot([lo, hi], [lo, hi], color="0.6", lw=1, label="identity")
    ax_b.set_xscale("log")
    ax_b.set_yscale("log")
    ax_b.set(xlabel="true lesion volume (ml)", ylabel="predicted lesion volume (ml)", title="B  Lesion volume",
             xlim=(lo, hi), ylim=(lo, hi))
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path, dpi=dpi)


@dataclass(frozen=True)
class OverlayPanel:
    """One subject's slice for :func:`plot_overlays`: 2D arrays of one shape.

    Attributes
    ----------
    subject : str
    background : ndarray, float, (X, Y)
        Magnitude image (e.g. the mean of the MRF frames).
    probability : ndarray, float, (X, Y)
        Lesion probability in [0, 1].
    reference : ndarray, bool, (X, Y)
        Annotation, outlined in blue.
    caption : str
        Shown under the subject id (e.g. "Dice 0.61, DR 0.85, z=31").
    """

    subject: str
    background: np.ndarray
    probability: np.ndarray
    reference: np.ndarray
    caption: str = ""


def representative_slice(reference: ArrayLike, *, probability: ArrayLike | None = None, axis: int = -1) -> int:
    """The slice with the most reference voxels (the first of equals); a
    lesion-free reference picks the slice with the most probability, else the middle."""
    r = np.asarray(reference)
    if r.ndim != 3:
        raise ValidationError(f"reference must be a 3D volume; got shape {r.shape}")
    ax = axis % 3
    other = tuple(a for a in range(3) if a != ax)
    area = np.count_nonzero(r, axis=other)
    if area.any():
        return int(np.argmax(area))
    if probability is not None:
        p = np.asarray(probability, dtype=np.float64)
        score = np.nansum(p, axis=other)
        if np.any(score > 0):
            return int(np.argmax(score))
    return r.shape[ax] // 2


def overlay_panel(
    subject: str,
    background: ArrayLike,
    probability: ArrayLike,
    reference: ArrayLike,
    *,
    axis: int = -1,
    index: int | None = None,
    caption: str = "",
) -> OverlayPanel:
    """Cut one slice of three 3D volumes (:func:`representative_slice` unless ``index``)."""
    b, p, r = (np.asarray(x) for x in (background, probability, reference))
    if not (b.shape == p.shape == r.shape) or b.ndim != 3:
        raise ValidationError(f"background, probability and reference must be 3D of one shape; got {b.shape}, {p.shape}, {r.shape}")
    ax = axis % 3
    k = representative_slice(r, probability=p, axis=ax) if index is None else int(index)
    if not 0 <= k < b.shape[ax]:
        raise ValidationError(f"index {index} is outside the {b.shape[ax]} slices along axis {ax}")
    cut = lambda v: np.take(v, k, axis=ax)  # noqa: E731
    text = caption or f"slice {k}"
    return OverlayPanel(subject, cut(b).astype(np.float64), cut(p).astype(np.float64), cut(r).astype(bool), text)


def plot_overlays(
    panels: Sequence[OverlayPanel],
    *,
    path: str | os.PathLike,
    threshold: float = LESION_THRESHOLD,
    show_above: float = 0.1,
    dpi: int = 150,
) -> Path:
    """One column per subject: probability over magnitude (top), binarised map (bottom) (Fig. 5).

    The annotation is outlined in blue in both rows; the probability is
    coloured where it is ``>= show_above`` (so the magnitude image shows
    through elsewhere); the binarised map (``probability >= threshold``) is
    yellow.  Slices are shown with the
    first axis to the right and the second upwards (NIfTI's x and y).
    """
    if not panels:
        raise ValidationError("panels is empty; nothing to plot")
    n = len(panels)
    fig = Figure(figsize=(2.8 * n + 1.8, 5.8), layout="constrained")
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    yellow = ListedColormap(["yellow"])
    image = None
    for i, panel in enumerate(panels):
        b, p, r = panel.background, panel.probability, panel.reference
        if not (b.shape == p.shape == r.shape) or b.ndim != 2:
            raise ValidationError(f"panel {panel.subject!r}: arrays must be 2D of one shape; got {b.shape}, {p.shape}, {r.shape}")
        finite = b[np.isfinite(b)]
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        for row in range(2):
            ax = axes[row, i]
            ax.imshow(b.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            if row == 0:
                shown = np.ma.masked_less(p, show_above)
                image = ax.imshow(shown.T, cmap="hot", origin="lower", vmin=0, vmax=1, alpha=0.85, interpolation="nearest")
                ax.set_title(f"{panel.subject}\n{panel.caption}", fontsize=9)
            else:
                binary = np.ma.masked_where(~(p >= threshold), np.ones_like(p))
                ax.imshow(binary.T, cmap=yellow, origin="lower", alpha=0.8, interpolation="nearest")
            if r.any():
                ax.contour(r.T.astype(float), levels=[0.5], colors="#1f5bff", linewidths=1.0, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("lesion probability", fontsize=9)
    axes[1, 0].set_ylabel(f"binarised at {100 * threshold:g}%", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.5, label="lesion probability")
    return save_figure(fig, path, dpi=dpi)


def plot_reliability(
    curves: Mapping[str, Mapping[str, ArrayLike]],
    splits: Mapping[str, str],
    *,
    path: str | os.PathLike,
    dpi: int = 150,
) -> Path:
    """Observed lesion frequency over mean predicted probability, one line per subject.

    ``curves`` maps subject id to ``ReliabilityCurve.to_dict()`` (keys
    ``mean_predicted``, ``observed``, ``ece``).
    """
    subjects = _check_subjects("curves", curves, splits)
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, label="perfect calibration")
    for sid in subjects:
        c = curves[sid]
        x = np.asarray([np.nan if v is None else v for v in c["mean_predicted"]], dtype=np.float64)
        y = np.asarray([np.nan if v is None else v for v in c["observed"]], dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        ece = c.get("ece")
        label = f"{sid} ({splits[sid]}), ECE {ece:.3f}" if isinstance(ece, (int, float)) and np.isfinite(ece) else sid
        ax.plot(x[ok], y[ok], "o-", ms=3, lw=1, color=_color(splits[sid]), alpha=0.8, label=label)
    ax.set(xlabel="mean predicted probability", ylabel="observed lesion frequency", xlim=(0, 1), ylim=(0, 1),
           title="Reliability of lesion probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    return save_figure(fig, path, dpi=dpi)


FIGURE_FILES = {"threshold_sweep": "threshold_sweep.png", "lesion_volume": "lesion_volume.png",
                "reliability": "reliability.png", "overlays": "overlays.png"}
"""The files :func:`report_figures` may write into its folder."""


def report_figures(
    report: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    overlays: Sequence[OverlayPanel] | None = None,
    dpi: int = 150,
) -> dict[str, Path]:
    """Every figure of an evaluation report into ``out_dir``.

    Parameters
    ----------
    report : dict
        :func:`mrfengine.report.tables.build_report`'s output (or the JSON
        read back): subjects with ``lesion`` details are plotted.
    out_dir : path
    overlays : sequence of OverlayPanel, optional
        The images are not in the report; pass one panel per test subject.

    Returns
    -------
    dict of str to Path
        ``threshold_sweep``, ``lesion_volume``, ``reliability``, ``overlays``:
        those that had data.
    """
    subjects = report.get("subjects")
    if not isinstance(subjects, Mapping):
        raise ValidationError("report must have a 'subjects' dict (build_report's output)")
    out = Path(out_dir)
    splits = {sid: str(rec.get("split", "?")) for sid, rec in subjects.items()}
    lesion = {sid: rec["lesion"] for sid, rec in subjects.items() if isinstance(rec.get("lesion"), Mapping)}
    written: dict[str, Path] = {}
    if lesion:
        first = next(iter(lesion.values()))
        op = first.get("threshold")
        written["threshold_sweep"] = plot_threshold_sweeps(
            first["sweep"]["thresholds"],
            {sid: v["sweep"]["dice"] for sid, v in lesion.items()},
            {sid: v["sweep"]["detection_rate"] for sid, v in lesion.items()},
            splits,
            path=out / FIGURE_FILES["threshold_sweep"],
            operating_threshold=op,
            dpi=dpi,
        )
        written["lesion_volume"] = plot_lesion_volumes(
            {sid: v["paper"]["per_lesion"] for sid, v in lesion.items()}, splits, path=out / FIGURE_FILES["lesion_volume"], dpi=dpi
        )
        written["reliability"] = plot_reliability(
            {sid: v["calibration"] for sid, v in lesion.items()}, splits, path=out / FIGURE_FILES["reliability"], dpi=dpi
        )
    if overlays:
        op = next(iter(lesion.values())).get("threshold", LESION_THRESHOLD) if lesion else LESION_THRESHOLD
        written["overlays"] = plot_overlays(overlays, path=out / FIGURE_FILES["overlays"], threshold=op, dpi=dpi)
    return written
