"""Evaluate one set of maps against another over a cohort store (``mrfengine evaluate``).

Per subject, two *map sources* give maps by key (``T1``, ``T2star`` in ms;
``lesion``, ``NAWM``, ``GM`` in [0, 1]); :func:`mrfengine.metrics.evaluate_subject`
compares them; :func:`evaluate_cohort` gathers the records, the per-split
summaries (:func:`mrfengine.report.tables.build_report`), the paper's table
and the figures.

Map sources (``--pred`` / ``--ref`` on the command line):

``truth``
    Ground truth of a simulated subject: ``T1``, ``T2star`` = ``truth/T1``,
    ``truth/T2star``; ``lesion`` = the true lesion mask, ``truth/lesion >=
    REFERENCE_LESION_THRESHOLD`` (0.5) as 0/1, so that ``truth`` is the same
    mask as a prediction and as a reference; ``NAWM`` = ``truth/WM`` (the
    store's WM fraction already excludes lesions, docs/cohort-format.md);
    ``GM`` = ``truth/GM`` (cortical + deep).
``annotation``
    ``lesion`` = ``annotations/lesion`` (binary; the manual masks of the
    paper's conventional pipeline).
``conventional``
    The reference (dictionary-matching) pipeline, computed on the fly: the
    subject's MRF is matched slice by slice against its site's dictionaries
    (:func:`mrfengine.matching.match_slices`) inside the brain mask, giving
    ``T1`` and ``T2star`` (0 outside the brain mask, as a batch stores them); ``lesion`` = ``annotations/lesion``; ``NAWM`` and
    ``GM`` = the truth fractions.  The tissue maps are a *stand-in* until a
    segmentation stage exists: evaluating them against ``truth`` gives Dice 1
    by construction and says nothing about the pipeline; the table marks
    their rows and says so beneath it.
``conventional:<name>``
    As ``conventional``, with the T1 and T2* maps a batch already stored in
    ``derived/<name>/`` (e.g. ``conventional:denoise-match``, MP-PCA then
    matching) instead of matching on the fly.
``derived:<name>``
    Maps a later pipeline stage wrote into the subject group, read from
    ``subjects/<sub>/derived/<name>/``: arrays ``T1``, ``T2star`` (ms),
    ``lesion`` (probability in [0, 1]), ``NAWM``, ``GM`` (probabilities), each
    ``(Z, Y, X)`` float32 on the subject's grid and listed in the subject's
    ``arrays`` attribute (written at completion, as docs/cohort-format.md
    requires of every stage).  Missing arrays are skipped; a subject with none
    of them is an error.

When a source serves as the *reference*, its lesion map is the reference
annotation: a binary annotation as it is, a lesion fraction map (``truth``)
where it is ``>= REFERENCE_LESION_THRESHOLD`` (0.5,
:func:`mrfengine.metrics.reference_lesion_mask`), whatever the prediction's
operating threshold ``lesion_threshold`` (0.33) is.

Relative deviations of T1 and T2* are computed inside the brain mask
(voxels the prediction left unmatched are left out and counted), overall and
in the tissue *cores* ``WM_core``, ``GM_core`` and ``lesion_core``: the voxels
whose true fraction of the tissue (``truth/WM``, ``truth/GM``,
``truth/lesion``) is ``>= CORE_FRACTION`` (0.9).  A subject without a truth
fraction (real data) takes the reference's map instead (NAWM or GM
probability, the lesion annotation); the record's ``tissue_cores`` says which
array each core came from.  All thresholds are :mod:`mrfengine.metrics.definitions`'.

The intra-observer Dice is the Dice between ``annotations/lesion`` and
``annotations/lesion_repeat`` of subjects annotated twice, whatever the
sources; it is stored in each such subject's summary as
``intra_observer_dice`` and, beside the model's lesion Dice on the same
subjects, under ``"intra_observer"`` in the JSON.

References
----------
Hermann et al., "Accelerated white matter lesion analysis based on
simultaneous T1 and T2* quantification using magnetic resonance
fingerprinting and deep learning", BMC Med Imaging 21:107, 2021
(Statistics; Figs. 3, 5 and S1).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import StoreError, ValidationError
from ..io.cohort import Cohort, Subject
from ..masking import has_estimate
from ..metrics import (
    CORE_FRACTION,
    LESION_THRESHOLD,
    REFERENCE_LESION_THRESHOLD,
    TISSUE_THRESHOLD,
    dice,
    evaluate_subject,
    reference_lesion_mask,
)
from ..metrics.subject import MAP_KEYS
from .tables import build_report, markdown_table, summarize, write_json, write_text

__all__ = [
    "SOURCE_NAMES",
    "MapSource",
    "TruthSource",
    "AnnotationSource",
    "ConventionalSource",
    "DerivedSource",
    "parse_source",
    "tissue_from_truth",
    "intra_observer_dice",
    "evaluate_cohort",
    "evaluate_maps",
]

log = logging.getLogger(__name__)

#: Source names accepted by :func:`parse_source` (``derived:<name>`` takes a name).
SOURCE_NAMES = ("truth", "annotation", "conventional", "conventional:<name>", "derived:<name>")

#: Tissue -> (the truth fraction, the reference map used without it) of the tissue cores.
TISSUE_CORES = {"WM": ("truth/WM", "NAWM"), "GM": ("truth/GM", "GM"), "lesion": ("truth/lesion", "lesion")}


class MapSource(Protocol):
    """Gives one subject's maps: ``{"T1", "T2star", "lesion", "NAWM", "GM"}`` (any subset).

    Every array is ``(Z, Y, X)`` on the subject's grid: T1/T2* float in ms
    (NaN where not estimated), the others float in [0, 1].
    """

    name: str

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        ...


def tissue_from_truth(source: MapSource) -> bool:
    """Whether ``source``'s NAWM/GM maps are the subject's truth fractions standing in
    for a segmentation (``conventional``, ``conventional:<name>``); the table says so."""
    return bool(getattr(source, "tissue_from_truth", False))


def _read(subject: Subject, path: str, source: str) -> np.ndarray:
    if path not in subject.arrays:
        raise StoreError(f"source {source!r} needs {path!r}, which {subject.id} lacks")
    return np.asarray(subject.array(path)[:])


@dataclass(frozen=True)
class TruthSource:
    """Ground truth of a simulated subject (see the module docstring)."""

    name: str = "truth"

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        paths = {"T1": "truth/T1", "T2star": "truth/T2star", "lesion": "truth/lesion", "NAWM": "truth/WM",
                 "GM": "truth/GM"}
        out = {key: _read(subject, path, self.name).astype(np.float32) for key, path in paths.items()}
        out["lesion"] = reference_lesion_mask(out["lesion"], f"{subject.id} truth/lesion").astype(np.float32)
        return out


@dataclass(frozen=True)
class AnnotationSource:
    """``lesion`` = ``annotations/lesion`` (binary, as float32 0/1)."""

    name: str = "annotation"

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        return {"lesion": (_read(subject, "annotations/lesion", self.name) > 0).astype(np.float32)}


@dataclass
class ConventionalSource:
    """Dictionary matching of the subject's MRF in the brain mask; lesion = annotation;
    NAWM/GM = truth fractions (a stand-in until a segmentation stage exists).

    Parameters
    ----------
    backend, method : str
        Passed to :func:`mrfengine.matching.match_slices`.
    cache : DictionaryCache, path, None or False
        Dictionary cache of :class:`mrfengine.dictionary.SliceDictionaries`.

    Holds one :class:`~mrfengine.dictionary.SliceDictionaries` per sequence,
    so the dictionaries are built once per site.
    """

    backend: str = "auto"
    method: str = "auto"
    cache: Any = None
    name: str = "conventional"
    tissue_from_truth = True  # NAWM/GM: the truth fractions (a class constant, not a field)
    _dictionaries: dict[str, Any] = field(default_factory=dict, repr=False)

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        from ..dictionary import SliceDictionaries
        from ..masking import apply_outside_rule
        from ..matching import match_slices

        digest = subject.sequence.digest()
        if digest not in self._dictionaries:
            self._dictionaries[digest] = SliceDictionaries(subject.sequence, cache=self.cache)
        mrf = np.asarray(subject.mrf[:])  # (F, Z, Y, X)
        mask = _brain(subject)
        result = match_slices(mrf, self._dictionaries[digest], slice_axis=1, channel_axis=0, mask=mask,
                              backend=self.backend, method=self.method)
        log.debug("%s: matched %d voxels (%s, %s)", subject.id, int(np.count_nonzero(result.matched)),
                 result.backend, result.method)
        # 0 outside the brain, as the batch stores matched maps (mrfengine.masking's outside rule)
        out = apply_outside_rule({"T1": result.params["T1"], "T2star": result.params["T2star"]}, mask)
        out.update(AnnotationSource().maps(subject))
        for key, path in (("NAWM", "truth/WM"), ("GM", "truth/GM")):
            if path in subject.arrays:
                out[key] = np.asarray(subject.array(path)[:], dtype=np.float32)
        return out


@dataclass(frozen=True)
class DerivedSource:
    """Maps of a pipeline stage under ``derived/<stage>/`` of the subject (missing ones skipped)."""

    stage: str

    @property
    def name(self) -> str:
        return f"derived:{self.stage}"

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        out = {}
        for key in MAP_KEYS:
            path = f"derived/{self.stage}/{key}"
            if path in subject.arrays:
                out[key] = np.asarray(subject.array(path)[:], dtype=np.float32)
        if not out:
            raise StoreError(f"source {self.name!r}: {subject.id} has none of derived/{self.stage}/"
                             f"{{{','.join(MAP_KEYS)}}}; run the stage that writes them first")
        return out


@dataclass
class StoredConventionalSource:
    """``conventional`` with the maps a batch stored (``derived/<stage>/T1``, ``T2star``,
    e.g. ``mrfengine batch``'s ``denoise-match``) instead of matching on the fly; lesion =
    the annotation; NAWM/GM = the ``segment`` stage's maps where the group has them
    (``denoise-match-register-segment``), else the truth stand-ins, as ``conventional``
    (:attr:`tissue_from_truth` then turns true, and the tables mark the rows)."""

    stage: str
    #: Whether a subject's NAWM/GM were the truth stand-ins (no segment stage in the group).
    tissue_from_truth: bool = field(default=False, init=False)

    @property
    def name(self) -> str:
        return f"conventional:{self.stage}"

    def maps(self, subject: Subject) -> dict[str, np.ndarray]:
        out = {}
        for key in ("T1", "T2star"):
            path = f"derived/{self.stage}/{key}"
            if path not in subject.arrays:
                raise StoreError(f"source {self.name!r}: {subject.id} has no {path}; run "
                                 f"`mrfengine batch` (pipeline {self.stage!r}) first")
            out[key] = np.asarray(subject.array(path)[:], dtype=np.float32)
        out.update(AnnotationSource().maps(subject))
        segmented = {key: f"derived/{self.stage}/{key}" for key in ("NAWM", "GM")}
        if all(path in subject.arrays for path in segmented.values()):
            pairs = segmented.items()  # the segment stage's probabilities
        else:
            pairs = (("NAWM", "truth/WM"), ("GM", "truth/GM"))
            self.tissue_from_truth = True
        for key, path in pairs:
            if path in subject.arrays:
                out[key] = np.asarray(subject.array(path)[:], dtype=np.float32)
        return out


def parse_source(spec: str | MapSource, *, backend: str = "auto", method: str = "auto",
                 cache: Any = None) -> MapSource:
    """A :class:`MapSource` from its name (``truth``, ``annotation``, ``conventional``,
    ``derived:<name>``); a MapSource is returned as it is.

    Raises
    ------
    ValidationError
        An unknown name, or ``derived:`` without a stage name.
    """
    if not isinstance(spec, str):
        if callable(getattr(spec, "maps", None)):
            return spec
        raise ValidationError(f"a map source must be a name or have a maps() method; got {spec!r}")
    if spec == "truth":
        return TruthSource()
    if spec == "annotation":
        return AnnotationSource()
    if spec == "conventional":
        return ConventionalSource(backend=backend, method=method, cache=cache)
    if spec.startswith("conventional:"):
        stage = spec[len("conventional:"):]
        if not stage or "/" in stage:
            raise ValidationError(f"conventional:<name> needs a derived group name, e.g. conventional:denoise-match; "
                                  f"got {spec!r}")
        return StoredConventionalSource(stage)
    if spec.startswith("derived:"):
        stage = spec[len("derived:"):]
        if not stage or "/" in stage:
            raise ValidationError(f"a derived source needs a stage name without '/', e.g. derived:unet; got {spec!r}")
        return DerivedSource(stage)
    raise ValidationError(f"map source must be one of {list(SOURCE_NAMES)}; got {spec!r}")


def _brain(subject: Subject) -> np.ndarray | None:
    return None if subject.brain_mask is None else np.asarray(subject.brain_mask[:]) > 0


def intra_observer_dice(subject: Subject) -> float | None:
    """Dice of ``annotations/lesion`` and ``annotations/lesion_repeat``; None without a repeat
    (or when both are empty)."""
    ann = subject.annotations
    if "lesion" not in ann or "lesion_repeat" not in ann:
        return None
    d = dice(np.asarray(ann["lesion"][:]) > 0, np.asarray(ann["lesion_repeat"][:]) > 0)
    return float(d) if np.isfinite(d) else None


def _as_reference(maps: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The reference's maps with its lesion map as the reference annotation (fraction >= 0.5)."""
    out = dict(maps)
    if "lesion" in out:
        out["lesion"] = reference_lesion_mask(out["lesion"], f"reference {name!r} lesion map")
    return out


def _tissue_fractions(subject: Subject, ref: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The true fraction of each tissue whose core the deviations use, and where it came from."""
    fractions, sources = {}, {}
    for tissue, (truth_path, ref_key) in TISSUE_CORES.items():
        if truth_path in subject.arrays:
            fractions[tissue], sources[tissue] = np.asarray(subject.array(truth_path)[:]), truth_path
        elif ref_key in ref:
            fractions[tissue] = np.asarray(ref[ref_key], dtype=np.float32)
            sources[tissue] = f"reference {ref_key}"
    return fractions, sources


def evaluate_maps(
    subject: Subject,
    pred: dict[str, np.ndarray],
    ref: str | MapSource = "truth",
    *,
    mask: np.ndarray | None = None,
    lesion_threshold: float = LESION_THRESHOLD,
    tissue_threshold: float = TISSUE_THRESHOLD,
    extras: bool = True,
    pred_name: str = "pred",
) -> dict[str, Any]:
    """One subject's maps against a reference source, as ``mrfengine evaluate`` compares them.

    The demo and :func:`evaluate_cohort` both call this, so a figure of the
    demo and the same figure of a cohort evaluation are one definition.

    Parameters
    ----------
    subject : Subject
    pred : dict of str to ndarray
        Maps by key (``T1``, ``T2star`` in ms, ``NAWM``, ``GM``, ``lesion`` in
        [0, 1]), ``(Z, Y, X)`` on the subject's grid.
    ref : str or MapSource
        The reference (module docstring; default ``truth``).
    mask : ndarray, bool, optional
        Where the deviations are computed (default the subject's brain mask,
        or every voxel without one); brain voxels the prediction left
        non-finite are left out and counted (``n_unmatched``).
    lesion_threshold, tissue_threshold : float
        As in :func:`evaluate_cohort`.
    extras : bool
        Passed to :func:`mrfengine.metrics.evaluate_subject` (False: the
        paper's measures only, no sweep, calibration or MSSEG rule).
    pred_name : str
        Names the prediction in messages.

    Returns
    -------
    dict
        :func:`~mrfengine.metrics.evaluate_subject`'s record plus
        ``tissue_cores``, ``n_unmatched``, ``maps`` and, for a subject
        annotated twice, ``summary["intra_observer_dice"]``.
    """
    ref_src = parse_source(ref)
    record, _ = _compare(subject, pred, ref_src, pred_name=pred_name, mask=mask, lesion_threshold=lesion_threshold,
                         tissue_threshold=tissue_threshold, extras=extras)
    return record


def _compare(subject: Subject, pred: dict[str, np.ndarray], ref_src: MapSource, *, pred_name: str,
             mask: np.ndarray | None, lesion_threshold: float, tissue_threshold: float,
             extras: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    ref = _as_reference(ref_src.maps(subject), ref_src.name)
    shared = [k for k in MAP_KEYS if k in pred and k in ref]
    if not shared:
        raise ValidationError(f"{subject.id}: pred {pred_name!r} (maps {sorted(pred)}) and ref "
                              f"{ref_src.name!r} (maps {sorted(ref)}) share no map to compare")
    if mask is None:
        mask = _brain(subject)
    mask = np.ones(subject.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    n_unmatched = 0
    for key in ("T1", "T2star"):
        if key in shared:
            estimated = has_estimate(pred[key])  # matched maps hold 0 (older stores NaN) where not estimated
            n_unmatched = max(n_unmatched, int(np.count_nonzero(mask & ~estimated)))
            mask = mask & estimated
    if n_unmatched:
        log.warning("%s: %d brain voxel(s) without a %s estimate are left out of the deviations",
                    subject.id, n_unmatched, pred_name)
    dx, dy, dz = subject.voxel_size_mm
    fractions, cores = _tissue_fractions(subject, ref) if ("T1" in shared or "T2star" in shared) else ({}, {})
    record = evaluate_subject(
        {k: pred[k] for k in shared},
        {k: ref[k] for k in shared},
        mask=mask,
        tissue_fractions=fractions or None,
        voxel_size=(dz, dy, dx),  # arrays are (Z, Y, X)
        lesion_threshold=lesion_threshold,
        tissue_threshold=tissue_threshold,
        slice_axis=0,
        extras=extras,
    )
    if cores:
        record["tissue_cores"] = cores
    record["n_unmatched"] = n_unmatched
    record["maps"] = shared
    iod = intra_observer_dice(subject)
    if iod is not None:
        record["summary"]["intra_observer_dice"] = iod
    return record, ref


def _evaluate_one(subject: Subject, pred_src: MapSource, ref_src: MapSource, *, lesion_threshold: float,
                  tissue_threshold: float) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    pred = pred_src.maps(subject)
    record, ref = _compare(subject, pred, ref_src, pred_name=pred_src.name, mask=None,
                           lesion_threshold=lesion_threshold, tissue_threshold=tissue_threshold)
    return record, pred, ref


def _overlay(subject: Subject, pred: dict[str, np.ndarray], ref: dict[str, np.ndarray], record: dict[str, Any]):
    from .figures import overlay_panel, representative_slice

    # (Z, Y, X) -> (X, Y, Z): the panels show x to the right and y upwards.
    xyz = lambda a: np.transpose(a, (2, 1, 0))  # noqa: E731
    background = xyz(np.asarray(subject.mrf[:], dtype=np.float32).mean(axis=0))
    prob, ann = xyz(pred["lesion"]), xyz(ref["lesion"])
    k = representative_slice(ann, probability=prob, axis=-1)
    s = record["summary"]
    parts = [f"{name} {s[key]:.2f}" for name, key in (("Dice", "lesion_dice"), ("DR", "lesion_detection_rate"))
             if s.get(key) is not None]
    return overlay_panel(subject.id, background, prob, ann, axis=-1, index=k, caption=", ".join(parts + [f"z={k}"]))


def _headline(summary: dict[str, Any]) -> str:
    parts = []
    for label, key, pct in (("lesion Dice", "lesion_dice", False), ("T1 deviation", "T1_relative_deviation", True),
                            ("T2* deviation", "T2star_relative_deviation", True)):
        v = summary.get(key)
        if v is not None:
            parts.append(f"{label} {100 * v:.1f}%" if pct else f"{label} {v:.2f}")
    return ", ".join(parts) or "no headline figure"


def _intra_observer_table(section: dict[str, Any], pred_name: str) -> str:
    from .tables import format_mean_sd

    if not section["subjects"]:
        return ""
    lines = ["", "## Subjects annotated twice", "",
             f"| Subject | Intra-observer Dice | Lesion Dice ({pred_name}) |", "|---|---:|---:|"]
    for sid, row in section["subjects"].items():
        model = row["lesion_dice"]
        lines.append(f"| {sid} | {row['intra_observer_dice']:.2f} | {'–' if model is None else f'{model:.2f}'} |")
    lines.append(f"| mean ± SD | {format_mean_sd(section['intra_observer_dice'])} | "
                 f"{format_mean_sd(section['lesion_dice'])} |")
    return "\n".join(lines) + "\n"


def _intra_observer_section(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sids = [sid for sid, r in records.items() if r["summary"].get("intra_observer_dice") is not None]
    return {
        "subjects": {sid: {"intra_observer_dice": records[sid]["summary"]["intra_observer_dice"],
                           "lesion_dice": records[sid]["summary"].get("lesion_dice")} for sid in sids},
        "intra_observer_dice": summarize(records[sid]["summary"]["intra_observer_dice"] for sid in sids),
        "lesion_dice": summarize(records[sid]["summary"].get("lesion_dice") for sid in sids),
    }


REPORT_FILES = {"table": "table.md", "json": "evaluation.json"}
"""The files :func:`evaluate_cohort` writes beside the figures (``evaluation.json`` last)."""


def evaluate_cohort(
    cohort: Cohort | str | os.PathLike,
    *,
    pred: str | MapSource = "conventional",
    ref: str | MapSource = "truth",
    out_dir: str | os.PathLike | None = None,
    lesion_threshold: float = LESION_THRESHOLD,
    tissue_threshold: float = TISSUE_THRESHOLD,
    subjects: Sequence[str] | None = None,
    backend: str = "auto",
    method: str = "auto",
    cache: Any = None,
    figures: bool = True,
    dpi: int = 120,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Compare two map sources on every (or the chosen) subject of a cohort.

    Parameters
    ----------
    cohort : Cohort or path
        An opened cohort store or its path.
    pred, ref : str or MapSource
        The maps evaluated and the reference (module docstring; default the
        conventional pipeline against the ground truth).
    out_dir : path, optional
        Where ``evaluation.json``, ``table.md`` and the PNG figures go
        (``threshold_sweep.png``, ``lesion_volume.png``, ``reliability.png``,
        ``overlays.png``); nothing is written without it.
    lesion_threshold : float
        Operating threshold of the predicted lesion probability
        (:data:`~mrfengine.metrics.LESION_THRESHOLD`, the paper's 0.33).  The
        reference's lesion map is binarised at
        :data:`~mrfengine.metrics.REFERENCE_LESION_THRESHOLD` (0.5) whatever
        this is.
    tissue_threshold : float
        NAWM/GM binarising threshold of the tissue Dice
        (:data:`~mrfengine.metrics.TISSUE_THRESHOLD`, 0.8).  The per-tissue
        deviations use the tissue cores (true fraction >=
        :data:`~mrfengine.metrics.CORE_FRACTION`, 0.9) instead.
    subjects : sequence of str, optional
        Subject ids, ``sub-05`` or ``05`` (default: every complete subject).
    backend, method, cache
        Matching options of the ``conventional`` source.
    figures : bool
        Draw the figures (needs matplotlib) when ``out_dir`` is given.
    dpi : int
    threshold : float, optional
        Deprecated name of ``lesion_threshold`` (a DeprecationWarning).

    Returns
    -------
    dict
        :func:`~mrfengine.report.tables.build_report`'s record
        (``schema``, ``settings``, ``subjects``, ``splits``) plus
        ``intra_observer`` and, with ``out_dir``, ``files`` (name -> path).

    Raises
    ------
    StoreError
        Not a cohort, an unknown or incomplete subject, a source's array missing.
    ValidationError
        Bad thresholds or source names, or sources that share no map.
    """
    if threshold is not None:
        warnings.warn("evaluate_cohort(threshold=...) is deprecated; use lesion_threshold=", DeprecationWarning,
                      stacklevel=2)
        lesion_threshold = threshold
    for name, value in (("lesion_threshold", lesion_threshold), ("tissue_threshold", tissue_threshold)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
            raise ValidationError(f"{name} must be a number in (0, 1]; got {value!r}")
    c = cohort if isinstance(cohort, Cohort) else Cohort.open(cohort)
    sids = c.select(subjects)  # StoreError naming an unknown or incomplete subject, before any work
    if not subjects and c.absent:
        # Never a summary over silently fewer subjects than the store lists.
        shown = "; ".join(f"{sid}: {why}" for sid, why in sorted(c.absent.items())[:4])
        raise StoreError(f"{c.path}: {len(c.absent)} listed subject(s) cannot be read ({shown}"
                         f"{'; ...' if len(c.absent) > 4 else ''}); evaluating the others would silently use fewer "
                         "subjects: name the subjects to evaluate (--subjects), or repair the store "
                         "(mrfengine validate)")
    if not sids:
        raise StoreError(f"{c.path}: no complete subject to evaluate")
    pred_src = parse_source(pred, backend=backend, method=method, cache=cache)
    ref_src = parse_source(ref, backend=backend, method=method, cache=cache)

    records: dict[str, dict[str, Any]] = {}
    splits: dict[str, str] = {}
    panels = []
    for sid in sids:
        subject = c[sid]
        record, p, r = _evaluate_one(subject, pred_src, ref_src, lesion_threshold=float(lesion_threshold),
                                     tissue_threshold=float(tissue_threshold))
        records[sid], splits[sid] = record, subject.split
        if out_dir is not None and figures and subject.split == "test" and "lesion" in record:
            panels.append(_overlay(subject, p, r, record))
        log.info("%s (%s): %s", sid, subject.split, _headline(record["summary"]))

    from .. import __version__

    settings = {"cohort": str(c.path), "pred": pred_src.name, "ref": ref_src.name,
                "lesion_threshold": float(lesion_threshold), "tissue_threshold": float(tissue_threshold),
                "reference_lesion_threshold": REFERENCE_LESION_THRESHOLD, "core_fraction": CORE_FRACTION,
                "subjects": sids, "mrfengine_version": __version__}
    truth_tissue = [s.name for s in (pred_src, ref_src) if tissue_from_truth(s)]
    if truth_tissue:
        settings["tissue_maps_from_truth"] = truth_tissue
    if "conventional" in (pred_src.name, ref_src.name):
        settings["matching"] = {"backend": backend, "method": method}
    report = build_report(records, splits, settings=settings)
    report["intra_observer"] = _intra_observer_section(records)
    if out_dir is None:
        return report

    out = Path(out_dir)
    files: dict[str, Path] = {}
    split = "test" if "test" in report["splits"] else "all"
    if split != "test":
        log.warning("no test subject among those evaluated; the table shows all subjects")
    files["table"] = write_text(
        f"# {pred_src.name} vs {ref_src.name}: {split} split\n\n"
        + markdown_table(report["splits"], split=split, lesion_threshold=float(lesion_threshold),
                         tissue_threshold=float(tissue_threshold), tissue_from_truth=truth_tissue)
        + _intra_observer_table(report["intra_observer"], pred_src.name),
        out / REPORT_FILES["table"],
    )
    if figures:
        from .figures import report_figures

        files.update(report_figures(report, out, overlays=panels or None, dpi=dpi))
    files["json"] = out / REPORT_FILES["json"]
    report["files"] = {k: str(v) for k, v in files.items()}
    write_json(report, files["json"])  # last: its presence marks a finished evaluation
    return report
