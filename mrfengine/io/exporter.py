"""Arrays of a cohort subject out to NIfTI, with BIDS-style names and sidecars.

Each array leaves in NIfTI axis order ((X, Y, Z) or (X, Y, Z, frames)) with
the subject's affine, qform/sform codes and units, so it overlays its source
in any viewer.  Names follow BIDS derivatives (``docs/cohort-format.md``):

=====================  =============================================
array                  file
=====================  =============================================
``mrf``                ``sub-01_mrf.nii.gz``
``brain_mask``         ``sub-01_desc-brain_mask.nii.gz``
``truth/T1``           ``sub-01_desc-truth_T1map.nii.gz`` (seconds)
``truth/T2star``       ``sub-01_desc-truth_T2starmap.nii.gz`` (seconds)
``truth/B1``           ``sub-01_desc-truth_TB1map.nii.gz``
``truth/PD``           ``sub-01_desc-truth_PDmap.nii.gz``
``truth/GM`` ...       ``sub-01_label-GM_desc-truth_probseg.nii.gz``
``truth/lesion_id``    ``sub-01_label-lesion_desc-truth_dseg.nii.gz``
``annotations/lesion`` ``sub-01_label-lesion_mask.nii.gz``
``annotations/X_Y``    ``sub-01_label-X_desc-Y_mask.nii.gz``
``reference/T2w``      ``sub-01_T2w.nii.gz``
``derived/P/T1``       ``sub-01_desc-P_T1map.nii.gz`` (seconds; P: the pipeline's name, letters and digits only)
``derived/P/T2star``   ``sub-01_desc-P_T2starmap.nii.gz`` (seconds)
``derived/P/B1``       ``sub-01_desc-P_TB1map.nii.gz``
``derived/P/M0``       ``sub-01_desc-P_M0map.nii.gz``
``derived/P/X``        ``sub-01_label-X_desc-P_probseg.nii.gz`` for probabilities, else ``sub-01_desc-PX_map.nii.gz``
``derived/P/T1_uncertainty``  ``sub-01_desc-Puncertainty_T1map.nii.gz`` (seconds; likewise T2star)
``derived/P/X_uncertainty``   ``sub-01_label-X_desc-Puncertainty_probseg.nii.gz`` (X a probability)
``derived/P/physics_consistency``  ``sub-01_desc-Pphysicsconsistency_map.nii.gz``
=====================  =============================================

The unet stage's ``<output>_uncertainty`` arrays (``[unet] mc_samples``) are
standard deviations over Monte-Carlo dropout passes in the output's units;
``physics_consistency`` (``[unet] consistency``) is a correlation in [0, 1]
(:mod:`mrfengine.nn.uncertainty`, :mod:`mrfengine.nn.consistency`).

Derived maps carry their pipeline's provenance (package version, backend,
stage configuration, dictionary digests, per-stage timings) in the sidecar's
``GeneratedBy`` and ``PipelineProvenance``.  They leave under mrfengine's
outside rule (:func:`mrfengine.masking.apply_outside_rule`, as ``mrfengine
predict`` writes its maps): 0 outside the subject's ``brain_mask`` when the
pipeline ran with it (also for maps a store holds from before the rule, NaN
there), the mask named in the sidecar (``BrainMask``, ``BrainMaskSource``,
``OutsideBrainValue``).

Ground truth carries ``desc-truth`` so it never collides with the maps that
``mrfengine match`` writes (``sub-01_T1map.nii.gz``).  Every image gets a JSON
sidecar with ``Units`` (BIDS stores T1map and T2starmap in seconds).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..masking import BRAIN_MASK_SOURCE, apply_outside_rule, outside_rule_fields
from ..maps import (ARBITRARY, DIMENSIONLESS, MATCH_MAPS, NETWORK_MAPS, OTHER_MAPS, PIPELINE_MAPS, TRUTH_MAPS,
                    UNCERTAINTY_SUFFIX, uncertainty_spec)
from .bids import map_sidecar, write_sidecar
from .cohort import SCHEMA_VERSION, Cohort, Subject, derived_attrs
from .nifti import save_nifti

__all__ = ["export_name", "export_array", "export_subject"]

log = logging.getLogger(__name__)

# Names, units and scales come from the one map registry (mrfengine.maps).
# Probability maps of any source (truth's volume fractions, a network's probabilities).
_PROBABILITIES = {**{n: s for n, s in TRUTH_MAPS.items() if s.kind == "fraction"},
                  **{n: s for n, s in NETWORK_MAPS.items() if s.kind == "probability"}}
# Outputs whose ``<name>_uncertainty`` is named like the output itself.
_UNCERTAIN = {**_PROBABILITIES, **{n: s for n, s in NETWORK_MAPS.items() if s.kind == "quantitative"}}


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text) or "x"


def export_name(array_path: str) -> tuple[str, str, float]:
    """The BIDS name part (after ``sub-XX_``), unit and scale of an array.

    Returns
    -------
    name : str
        E.g. ``desc-truth_T1map`` for ``truth/T1``.
    unit : str
        Unit of the exported values.
    scale : float
        Factor from the store's unit to the exported one (ms to s: 1e-3).
    """
    head, _, leaf = array_path.rpartition("/")
    if array_path in ("mrf", "brain_mask"):
        spec = OTHER_MAPS[array_path]
        return spec.bids_name("brain" if array_path == "brain_mask" else ""), spec.bids_unit, spec.scale_to_bids
    if head == "truth":
        spec = TRUTH_MAPS.get(leaf)
        if spec is not None:
            return spec.bids_name("truth"), spec.bids_unit, spec.scale_to_bids
        return f"desc-truth{_alnum(leaf)}_map", ARBITRARY, 1.0
    if head == "annotations":
        label, _, desc = leaf.partition("_")
        return (f"label-{_alnum(label)}" + (f"_desc-{_alnum(desc)}" if desc else "") + "_mask"), DIMENSIONLESS, 1.0
    if head.startswith("derived/") and head.count("/") == 1:
        desc = _alnum(head.partition("/")[2])
        base, sep, rest = leaf.rpartition(UNCERTAINTY_SUFFIX)
        if sep and not rest and base in _UNCERTAIN:
            spec = uncertainty_spec(_UNCERTAIN[base])
            return spec.bids_name(f"{desc}uncertainty"), spec.bids_unit, spec.scale_to_bids
        if leaf == "brain_mask":  # the mask the pipeline made from the series (the mask stage)
            spec = OTHER_MAPS[leaf]
            return spec.bids_name(f"{desc}brain"), spec.bids_unit, spec.scale_to_bids
        spec = (MATCH_MAPS.get(leaf) or _PROBABILITIES.get(leaf) or PIPELINE_MAPS.get(leaf)
                or (OTHER_MAPS[leaf] if leaf == "physics_consistency" else None))
        if spec is not None:
            return spec.bids_name(desc), spec.bids_unit, spec.scale_to_bids
        return f"desc-{desc}{_alnum(leaf)}_map", ARBITRARY, 1.0
    if head == "reference":
        return (leaf if re.fullmatch(r"[A-Za-z0-9]+", leaf) else f"desc-{_alnum(leaf)}_reference"), ARBITRARY, 1.0
    return f"desc-{_alnum(array_path)}_map", ARBITRARY, 1.0


def _sequence_fields(subject: Subject) -> dict[str, Any]:
    seq = subject.sequence
    slot_ms = np.asarray(seq.repetition_time_ms) / seq.n_slots
    return {
        "SequenceName": seq.name,
        "SequenceDigest": seq.digest(),
        "EchoTime": [round(t / 1000, 6) for t in seq.echo_time_ms],
        "FlipAngle": list(seq.flip_angle_deg),
        "RepetitionTime": [round(t / 1000, 6) for t in seq.repetition_time_ms],
        "MultibandAccelerationFactor": seq.sms_factor,
        # Excitation time of each slice within the first measurement.
        "SliceTiming": [round(float(seq.slot_of_slice(z)) * slot_ms[0] / 1000, 6) for z in range(seq.n_slices)],
        "InversionBefore": [s is not None for s in seq.inversion_slot],
    }


def _sidecar(cohort: Cohort, subject: Subject, array_path: str, unit: str,
             rule: tuple[np.ndarray | None, str | None, str] | None) -> dict[str, Any]:
    """The exported array's sidecar, in the one schema (:func:`mrfengine.io.bids.map_sidecar`).

    A derived map names the pipeline that computed it (``GeneratedBy``, with
    the version that ran it), its provenance and timings, and the outside
    rule it was exported under; the series names its sequence; a simulated
    truth map its seed.
    """
    attrs = dict(subject.array(array_path).attrs)
    if unit == ARBITRARY and attrs.get("units") not in (None, ""):  # not in the registry: its own unit, unscaled
        unit = str(attrs["units"])
    extra: dict[str, Any] = {"CohortSchemaVersion": SCHEMA_VERSION}
    generated_by, version = "", None
    if array_path == "mrf":
        extra.update(_sequence_fields(subject))
    if array_path.startswith("derived/"):
        pipeline = array_path.split("/")[1]
        record = _derived_record(cohort, subject, pipeline)
        prov = dict(record.get("provenance") or {})
        generated_by = f"pipeline {pipeline}: " + " -> ".join((prov.get("config") or {}).get("stages", []))
        version = prov.get("mrfengine_version")
        extra["PipelineProvenance"] = prov
        if record.get("timings_s"):
            extra["PipelineTimings"] = record["timings_s"]
    if array_path.startswith("truth/") and cohort.generator:
        extra["Simulated"] = True
        extra["Seed"] = cohort.generator.get("seed")
    return map_sidecar(attrs.get("description", array_path), unit,
                       sources=[f"{cohort.name}:{subject.id}/{array_path}"],
                       outside=None if rule is None else outside_rule_fields(rule[1], rule[2]),
                       generated_by=generated_by, generated_version=version, provenance=extra)


def _derived_record(cohort: Cohort, subject: Subject, pipeline: str) -> dict[str, Any]:
    """The derived group's ``mrfengine_derived`` attributes, which must say it is complete."""
    record = derived_attrs(cohort, subject.id, pipeline) or {}
    if record.get("complete") is not True:
        raise StoreError(f"{subject.id}: derived/{pipeline}/ is not complete (an interrupted run?); "
                         f"rerun mrfengine batch before exporting it")
    return record


def _derived_outside_rule(cohort: Cohort, subject: Subject, array_path: str,
                          ext: str) -> tuple[np.ndarray | None, str | None, str]:
    """The brain mask a derived map is exported under, its exported file name and its source.

    A mask the pipeline made from the series is stored with its maps
    (``derived/<pipeline>/brain_mask``, the ``mask`` stage) and leaves with
    them; otherwise the pipeline ran with the subject's ``brain_mask`` when it
    has one (its ``write`` stage says so; a record from before says nothing,
    and the runner always passed the mask), which leaves as
    ``<sub>_desc-brain_mask``.
    """
    pipeline = array_path.split("/")[1]
    record = _derived_record(cohort, subject, pipeline)
    stages = (record.get("provenance") or {}).get("stages") or {}
    source = (stages.get("write") or {}).get("brain_mask", BRAIN_MASK_SOURCE)
    if "brain_mask" in (record.get("arrays") or []):
        mask_path = f"derived/{pipeline}/brain_mask"
        mask = np.asarray(subject.array(mask_path)[...]) > 0
        return mask, f"{subject.id}_{export_name(mask_path)[0]}{ext}", (stages.get("mask") or {}).get("source", source)
    if source == "none" or subject.brain_mask is None:
        return None, None, "none"
    mask = np.asarray(subject.brain_mask[...]) > 0
    return mask, f"{subject.id}_{export_name('brain_mask')[0]}{ext}", BRAIN_MASK_SOURCE


def export_array(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    array_path: str,
    output_dir: str | os.PathLike,
    *,
    ext: str = ".nii.gz",
) -> Path:
    """Write one array of a subject as NIfTI with a JSON sidecar.

    Parameters
    ----------
    cohort : Cohort or path
    subject_id : str
    array_path : str
        E.g. ``mrf``, ``truth/T1``, ``annotations/lesion``.
    output_dir : path
    ext : {".nii.gz", ".nii"}

    Returns
    -------
    Path
        The image written (the sidecar lies beside it, ``.json``).

    Raises
    ------
    StoreError
        No such cohort, subject or array.
    """
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    subject = cohort[subject_id]
    arr = subject.array(array_path)
    name, unit, scale = export_name(array_path)
    data = np.asarray(arr[...])
    rule = None
    if data.ndim == 3 and array_path.startswith("derived/") and not array_path.endswith("/brain_mask"):
        rule = _derived_outside_rule(cohort, subject, array_path, ext)
        data = apply_outside_rule({array_path: data}, rule[0])[array_path]  # on the store's (Z, Y, X) order
    if data.ndim == 4:
        data = data.transpose(3, 2, 1, 0)
    elif data.ndim == 3:
        data = data.transpose(2, 1, 0)
    else:
        raise StoreError(f"{subject_id}/{array_path} has {data.ndim} dimensions; expected 3 or 4")
    if scale != 1.0:
        data = data.astype(np.float32) * np.float32(scale)
    a = subject.attrs
    units = tuple(a.get("xyzt_units", ("mm", "sec")))
    units = tuple(u if u != "unknown" else d for u, d in zip(units, ("mm", "sec")))
    out = Path(output_dir) / f"{subject.id}_{name}{ext}"
    path = save_nifti(
        np.ascontiguousarray(data), subject.affine, out,
        xyzt_units=units,  # type: ignore[arg-type]
        qform_code=int(a.get("qform_code", 1)),
        sform_code=int(a.get("sform_code", 1)),
        frame_interval=float(a.get("frame_interval", 0.0)) or None,
    )
    write_sidecar(path.with_name(path.name[: -len(ext)] + ".json"), _sidecar(cohort, subject, array_path, unit, rule))
    return path


def export_subject(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    output_dir: str | os.PathLike,
    *,
    arrays: Iterable[str] | None = None,
    ext: str = ".nii.gz",
) -> list[Path]:
    """Export several (default: all) arrays of one subject; returns the images."""
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    subject = cohort[subject_id]
    paths = list(subject.arrays if arrays is None else arrays)
    return [export_array(cohort, subject.id, p, output_dir, ext=ext) for p in paths]
