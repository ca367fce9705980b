"""Arrays of a cohort subject out to NIfTI: a BIDS derivative dataset, one sidecar schema.

Each array leaves in NIfTI axis order ((X, Y, Z) or (X, Y, Z, frames)) with
the subject's affine, qform/sform codes and units, so it overlays its source
in any viewer.  The output folder is a BIDS derivative dataset
(:func:`mrfengine.io.bids.ensure_derivative_root`: ``dataset_description.json``
with ``DatasetLinks`` ``cohort`` naming the store, ``.bidsignore``); the files
lie in ``sub-01/anat/`` (``fmap/`` for ``TB1map``), named
(:func:`export_file`; P: the pipeline's name, letters and digits only)
-- with ``sub-01_`` before each name:

=================================  =============================================
array                              file
=================================  =============================================
``mrf``                            ``MRF.nii.gz`` (the series)
``brain_mask``                     ``desc-brain_mask.nii.gz``
``truth/T1``                       ``desc-truth_T1map.nii.gz`` (seconds)
``truth/T2star``                   ``desc-truth_T2starmap.nii.gz`` (seconds)
``truth/B1``                       ``desc-truth_TB1map.nii.gz`` (in ``fmap/``)
``truth/PD``                       ``desc-truth_PDmap.nii.gz``
``truth/GM`` ...                   ``label-GM_desc-truth_probseg.nii.gz``
``truth/lesion_id``                ``desc-truth_dseg.nii.gz`` (lesion indices)
``annotations/lesion``             ``label-lesion_mask.nii.gz``
``annotations/X_Y``                ``label-X_desc-Y_mask.nii.gz``
``reference/T2w``                  ``T2w.nii.gz``
``derived/P/T1``                   ``desc-P_T1map.nii.gz`` (seconds; likewise ``T2starmap``)
``derived/P/B1``, ``M0``           ``desc-P_TB1map.nii.gz`` (in ``fmap/``), ``desc-P_M0map.nii.gz``
``derived/P/correlation``          ``desc-P_correlation.nii.gz``
``derived/P/mppca_sigma``, ``_rank``  ``desc-P_noise.nii.gz``, ``desc-P_rank.nii.gz``
``derived/P/X``                    ``label-X_desc-P_probseg.nii.gz`` for probabilities, else ``desc-P_X.nii.gz``
``derived/P/T1_uncertainty``       ``desc-P_T1mapstd.nii.gz`` (seconds; likewise T2star)
``derived/P/X_uncertainty``        ``label-X_desc-P_probsegstd.nii.gz`` (X a probability)
``derived/P/physics_consistency``  ``desc-P_consistency.nii.gz``
``derived/P/brain_mask``           ``label-brain_desc-P_mask.nii.gz``
=================================  =============================================

The unet stage's ``<output>_uncertainty`` arrays (``[unet] mc_samples``) are
standard deviations over Monte-Carlo dropout passes in the output's units;
``physics_consistency`` (``[unet] consistency``) is a correlation in [0, 1]
(:mod:`mrfengine.nn.uncertainty`, :mod:`mrfengine.nn.consistency`).

Every sidecar follows the one schema (:func:`mrfengine.io.bids.map_sidecar`):
``Sources`` is the array's BIDS URI (``bids:cohort:subjects/sub-01/truth/T1``);
a derived map carries its pipeline's provenance (package version, backend,
stage configuration, dictionary digests, per-stage timings) under
``Provenance`` (``Method``, ``PipelineProvenance``, ``PipelineTimings``).
Derived maps leave under mrfengine's outside rule
(:func:`mrfengine.masking.apply_outside_rule`, as ``mrfengine predict``
writes its maps): 0 outside the subject's ``brain_mask`` when the pipeline ran
with it (also for maps a store holds from before the rule, NaN there), the
mask named in the sidecar by its URI (``BrainMask``, ``BrainMaskSource``,
``OutsideBrainValue``).  Ground truth carries ``desc-truth``, a pipeline's maps
``desc-<pipeline>``: neither collides with ``mrfengine match``'s
(``desc-match``) nor ``predict``'s (``desc-unet``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..maps import (
    ARBITRARY,
    DIMENSIONLESS,
    MATCH_MAPS,
    NETWORK_MAPS,
    OTHER_MAPS,
    PIPELINE_MAPS,
    TRUTH_MAPS,
    UNCERTAINTY_SUFFIX,
    MapSpec,
    uncertainty_spec,
)
from ..masking import BRAIN_MASK_SOURCE, apply_outside_rule, outside_rule_fields
from .bids import (
    BRAIN_LABEL,
    DerivativeFile,
    check_derivative_root,
    ensure_derivative_root,
    map_sidecar,
    read_links,
    source_uri,
    write_sidecar,
)
from .cohort import SCHEMA_VERSION, Cohort, Subject, derived_attrs
from .nifti import save_nifti

__all__ = ["export_array", "export_file", "export_name", "export_subject"]

log = logging.getLogger(__name__)

# Names, units and scales come from the one map registry (mrfengine.maps).
# Probability maps of any source (truth's volume fractions, a network's probabilities).
_PROBABILITIES = {**{n: s for n, s in TRUTH_MAPS.items() if s.kind == "fraction"},
                  **{n: s for n, s in NETWORK_MAPS.items() if s.kind == "probability"}}
# Outputs whose ``<name>_uncertainty`` is named like the output itself.
_UNCERTAIN = {**_PROBABILITIES, **{n: s for n, s in NETWORK_MAPS.items() if s.kind == "quantitative"}}


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text) or "x"


def _parts(array_path: str) -> tuple[str, str | None, str | None, str, float, str]:
    """``(suffix, label, desc, unit, scale, mask type)`` of an array (the mask type: BIDS ``Type``, or "")."""
    head, _, leaf = array_path.rpartition("/")
    if array_path == "mrf":
        spec = OTHER_MAPS["mrf"]
        return spec.suffix, None, None, spec.bids_unit, spec.scale_to_bids, ""
    if array_path == "brain_mask":
        return "mask", None, "brain", DIMENSIONLESS, 1.0, "Brain"
    if head == "truth":
        spec = TRUTH_MAPS.get(leaf)
        if spec is not None:
            return spec.suffix, spec.bids_label or None, "truth", spec.bids_unit, spec.scale_to_bids, ""
        return _alnum(leaf), None, "truth", ARBITRARY, 1.0, ""
    if head == "annotations":
        label, _, desc = leaf.partition("_")
        return ("mask", _alnum(label), _alnum(desc) if desc else None, DIMENSIONLESS, 1.0,
                "Lesion" if label == "lesion" else "ROI")
    if head.startswith("derived/") and head.count("/") == 1:
        desc = _alnum(head.partition("/")[2])
        base, sep, rest = leaf.rpartition(UNCERTAINTY_SUFFIX)
        spec: MapSpec | None
        if sep and not rest and base in _UNCERTAIN:
            spec = uncertainty_spec(_UNCERTAIN[base])
        elif leaf == "brain_mask":  # the mask the pipeline made from the series (the mask stage)
            return "mask", BRAIN_LABEL, desc, DIMENSIONLESS, 1.0, "Brain"
        else:
            spec = (MATCH_MAPS.get(leaf) or _PROBABILITIES.get(leaf) or PIPELINE_MAPS.get(leaf)
                    or (OTHER_MAPS[leaf] if leaf == "physics_consistency" else None))
        if spec is not None:
            return spec.suffix, spec.bids_label or None, desc, spec.bids_unit, spec.scale_to_bids, ""
        return _alnum(leaf), None, desc, ARBITRARY, 1.0, ""
    if head == "reference":
        if re.fullmatch(r"[A-Za-z0-9]+", leaf):
            return leaf, None, None, ARBITRARY, 1.0, ""
        return "reference", None, _alnum(leaf), ARBITRARY, 1.0, ""
    return _alnum(array_path), None, None, ARBITRARY, 1.0, ""


def export_file(subject_id: str, array_path: str, ext: str = ".nii.gz") -> tuple[DerivativeFile, str, float]:
    """Where an array of a subject leaves, its unit and scale.

    Parameters
    ----------
    subject_id : str
        ``sub-01`` (the cohort's id; its ``sub`` entity).
    array_path : str
        ``mrf``, ``truth/T1``, ``derived/denoise-match/T1``, ...
    ext : {".nii.gz", ".nii"}

    Returns
    -------
    file : DerivativeFile
        Its path from the derivative root (``sub-01/anat/sub-01_desc-truth_T1map.nii.gz``),
        sidecar, URI.
    unit : str
        Unit of the exported values.
    scale : float
        Factor from the store's unit to the exported one (ms to s: 1e-3).
    """
    suffix, label, desc, unit, scale, _ = _parts(array_path)
    entities = {"sub": subject_id.removeprefix("sub-")}
    return DerivativeFile(entities, suffix, desc=desc, label=label, ext=ext), unit, scale


def export_name(array_path: str) -> tuple[str, str, float]:
    """The name part after the subject's entities, unit and scale of an array.

    Returns
    -------
    name : str
        E.g. ``desc-truth_T1map`` for ``truth/T1`` (the file is
        ``sub-01/anat/sub-01_desc-truth_T1map.nii.gz``, :func:`export_file`).
    unit : str
        Unit of the exported values.
    scale : float
        Factor from the store's unit to the exported one (ms to s: 1e-3).
    """
    suffix, label, desc, unit, scale, _ = _parts(array_path)
    parts = ([f"label-{label}"] if label else []) + ([f"desc-{desc}"] if desc else [])
    return "_".join([*parts, suffix]), unit, scale


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


def _cohort_uri(cohort: Cohort, subject: Subject, array_path: str, root: Path, links: dict[str, str]) -> str:
    """The BIDS URI of a store's array (``bids:cohort:subjects/sub-01/truth/T1``); the store linked in ``links``."""
    return source_uri(cohort.path, root, links, inner=f"subjects/{subject.id}/{array_path}")


def _sidecar(cohort: Cohort, subject: Subject, array_path: str, unit: str, file: DerivativeFile, root: Path,
             links: dict[str, str], rule: tuple[np.ndarray | None, str | None, str] | None) -> dict[str, Any]:
    """The exported array's sidecar, in the one schema (:func:`mrfengine.io.bids.map_sidecar`).

    A derived map names the pipeline that computed it (``Provenance``'s
    ``Method``, with the version that ran it), its provenance and timings, and
    the outside rule it was exported under; the series names its sequence; a
    simulated truth map its seed.
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
    mask_type = _parts(array_path)[5]
    outside = None if rule is None else outside_rule_fields(rule[1], rule[2])
    return map_sidecar(attrs.get("description", array_path), unit,
                       sources=[_cohort_uri(cohort, subject, array_path, root, links)], outside=outside,
                       skull_stripped=None if file.segmentation or outside is not None else False,
                       mask_type=mask_type or None, producer=file.entities.get("desc", ""),
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
    """The brain mask a derived map is exported under, its exported file's URI and its source.

    A mask the pipeline made from the series is stored with its maps
    (``derived/<pipeline>/brain_mask``, the ``mask`` stage) and leaves with
    them (``label-brain_desc-<pipeline>_mask``); otherwise the pipeline ran with
    the subject's ``brain_mask`` when it has one (its ``write`` stage says so;
    a record from before says nothing, and the runner always passed the mask),
    which leaves as ``<sub>_desc-brain_mask``.
    """
    pipeline = array_path.split("/")[1]
    record = _derived_record(cohort, subject, pipeline)
    stages = (record.get("provenance") or {}).get("stages") or {}
    source = (stages.get("write") or {}).get("brain_mask", BRAIN_MASK_SOURCE)
    if "brain_mask" in (record.get("arrays") or []):
        mask_path = f"derived/{pipeline}/brain_mask"
        mask = np.asarray(subject.array(mask_path)[...]) > 0
        return (mask, export_file(subject.id, mask_path, ext)[0].uri,
                (stages.get("mask") or {}).get("source", source))
    if source == "none" or subject.brain_mask is None:
        return None, None, "none"
    mask = np.asarray(subject.brain_mask[...]) > 0
    return mask, export_file(subject.id, "brain_mask", ext)[0].uri, BRAIN_MASK_SOURCE


def _write_array(cohort: Cohort, subject: Subject, array_path: str, root: Path, links: dict[str, str],
                 ext: str, input_uris: Iterable[str] = ()) -> Path:
    file, unit, scale = export_file(subject.id, array_path, ext)
    arr = subject.array(array_path)
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
        raise StoreError(f"{subject.id}/{array_path} has {data.ndim} dimensions; expected 3 or 4")
    if scale != 1.0:
        data = data.astype(np.float32) * np.float32(scale)
    a = subject.attrs
    units = tuple(a.get("xyzt_units", ("mm", "sec")))
    units = tuple(u if u != "unknown" else d for u, d in zip(units, ("mm", "sec")))
    fields = _sidecar(cohort, subject, array_path, unit, file, root, links, rule)
    if input_uris:  # the files the array was computed from, before the store's array
        fields["Sources"] = list(dict.fromkeys([*input_uris, *fields["Sources"]]))
    path = save_nifti(
        np.ascontiguousarray(data), subject.affine, root / file.relpath,
        xyzt_units=units,  # type: ignore[arg-type]
        qform_code=int(a.get("qform_code", 1)),
        sform_code=int(a.get("sform_code", 1)),
        frame_interval=float(a.get("frame_interval", 0.0)) or None,
    )
    write_sidecar(root / file.sidecar, fields)
    return path


def export_array(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    array_path: str,
    output_dir: str | os.PathLike,
    *,
    ext: str = ".nii.gz",
    force: bool = False,
) -> Path:
    """Write one array of a subject as NIfTI with a JSON sidecar into the derivative dataset ``output_dir``.

    Parameters
    ----------
    cohort : Cohort or path
    subject_id : str
    array_path : str
        E.g. ``mrf``, ``truth/T1``, ``annotations/lesion``.
    output_dir : path
        The derivative dataset's root (made, with its description, when
        missing: :func:`mrfengine.io.bids.ensure_derivative_root`).
    ext : {".nii.gz", ".nii"}
    force : bool
        Write into a dataset another tool made (its description says so).

    Returns
    -------
    Path
        The image written (``output_dir/sub-01/anat/sub-01_desc-truth_T1map.nii.gz``;
        the sidecar lies beside it, ``.json``).

    Raises
    ------
    StoreError
        No such cohort, subject or array.
    InputFileError
        ``output_dir`` holds another tool's dataset (and not ``force``).
    """
    return export_subject(cohort, subject_id, output_dir, arrays=[array_path], ext=ext, force=force)[0]


def export_subject(
    cohort: Cohort | str | os.PathLike,
    subject_id: str,
    output_dir: str | os.PathLike,
    *,
    arrays: Iterable[str] | None = None,
    ext: str = ".nii.gz",
    force: bool = False,
    inputs: Mapping[str, Iterable[str | os.PathLike]] | None = None,
) -> list[Path]:
    """Export several (default: all) arrays of one subject into the derivative dataset ``output_dir``.

    The root is checked first (:func:`mrfengine.io.bids.check_derivative_root`:
    no other tool's dataset unless ``force``), then its description and
    ``.bidsignore`` are written or merged (the store as ``DatasetLinks``
    ``cohort``, the non-BIDS suffixes), then each array
    (:func:`export_file` names them).  Existing files are replaced: plan
    them with :func:`export_file` and :func:`mrfengine.io.outputs.check_outputs`
    first to refuse that.

    ``inputs`` maps an array to the files it was computed from (``mrfengine
    bids``: the raw dataset's series, T2w, masks): named first in its sidecar's
    ``Sources`` (``bids:raw:sub-01/anat/...``, the dataset added to
    ``DatasetLinks``), so the derivative stays traceable to the raw data once
    the store is gone.

    Returns
    -------
    list of Path
        The images written, in the order of ``arrays``.
    """
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    subject = cohort[subject_id]
    paths = list(dict.fromkeys(subject.arrays if arrays is None else arrays))
    root = Path(output_dir)
    check_derivative_root(root, force=force)
    files = [export_file(subject.id, p, ext)[0] for p in paths]
    links = read_links(root)
    _cohort_uri(cohort, subject, "", root, links)  # the store's link, before the description is written
    input_uris = {p: [source_uri(f, root, links) for f in (inputs or {}).get(p, ())] for p in paths}  # + links
    ensure_derivative_root(root, links=links, nonstandard=[f.suffix for f in files if f.nonstandard], force=force)
    return [_write_array(cohort, subject, p, root, links, ext, input_uris[p]) for p in paths]
