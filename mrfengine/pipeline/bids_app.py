"""``mrfengine bids``: a BIDS App (``BIDS_DIR OUTPUT_DIR participant``), on the cohort machinery.

:func:`run_bids_app` finds each participant's inputs with pybids
(:mod:`mrfengine.io.bids_input`), imports them into a zarr cohort kept in the
work folder (:func:`mrfengine.io.importer.import_subject`, as ``mrfengine
cohort import`` does), runs the pipelines on it with the batch engine
(:func:`mrfengine.pipeline.batch.run_batch`) and exports each participant's
maps into ``OUTPUT_DIR``, a BIDS derivative dataset, through the cohort
exporter (:func:`mrfengine.io.exporter.export_subject`).

The work folder (``-w``, default ``./work`` as fMRIPrep's) holds
``mrfengine/cohort.zarr``, one input record per participant
(``mrfengine/inputs/sub-XX.json``: the files imported, their size and
modification time, the site and sequence) and ``mrfengine/source.json`` (the
BIDS dataset it belongs to; another dataset is refused).  A rerun resumes: a
participant whose inputs are unchanged is not imported again, the batch skips
maps that are complete with the same configuration, and of a participant
whose maps were not recomputed only the derivatives missing from
``OUTPUT_DIR`` are written; ``force`` redoes all three.  Each exported
sidecar's ``Sources`` names the BIDS input files (``bids:raw:...``) before
the work cohort's array, so the derivatives stay traceable without the work
folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from ..errors import InputFileError, MRFEngineError, StoreError
from ..io.bids_input import (
    ParticipantInputs,
    find_inputs,
    merge_queries,
    open_layout,
    participant_labels,
    sequence_from_metadata,
)
from ..io.cohort import Cohort
from ..sequence import Sequence
from .batch import BatchReport, run_batch
from .stages import Pipeline

__all__ = [
    "WORK_SUBDIR",
    "BidsAppReport",
    "ParticipantOutcome",
    "run_bids_app",
    "work_cohort",
    "write_dataset_description",
]

log = logging.getLogger(__name__)

#: The folder of mrfengine's own files in the work folder (as fMRIPrep's ``work/fmriprep_wf``).
WORK_SUBDIR = "mrfengine"
_SOURCE = "source.json"


@dataclass
class ParticipantOutcome:
    """What happened to one participant.

    Attributes
    ----------
    subject : str
        ``sub-<label>``.
    status : {"done", "complete", "failed"}
        ``complete``: nothing to do, its derivatives were all there already.
    imported : bool
        Imported into the work cohort in this run.
    error : str or None
    outputs : list of Path
        The images exported in this run.
    """

    subject: str
    status: str = "done"
    imported: bool = False
    error: str | None = None
    outputs: list[Path] = field(default_factory=list)


@dataclass
class BidsAppReport:
    """What :func:`run_bids_app` did: one outcome per participant, the batch reports."""

    output_dir: Path
    cohort: Path
    participants: list[ParticipantOutcome] = field(default_factory=list)
    batches: list[BatchReport] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(p.status != "failed" for p in self.participants) and all(b.ok for b in self.batches)


Event = Callable[[str, Mapping[str, Any]], None]


def work_cohort(work_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """The cohort of a BIDS dataset in a work folder (created with its source record when new).

    Raises
    ------
    StoreError
        The work folder belongs to another BIDS dataset (one work folder, one dataset).
    """
    root = Path(work_dir).absolute() / WORK_SUBDIR
    source = str(Path(bids_dir).resolve())
    record = root / _SOURCE
    if record.is_file():
        try:
            made_for = json.loads(record.read_text(encoding="utf-8")).get("bids_dir")
        except (OSError, ValueError, AttributeError) as exc:
            raise StoreError(f"{record}: unreadable ({exc}); give another work folder (-w)") from exc
        if made_for != source:
            raise StoreError(f"{root}: this work folder belongs to the BIDS dataset {made_for}, not {source}; "
                             "give another one (-w)")
    else:
        cohort = root / "cohort.zarr"
        if cohort.exists():
            raise StoreError(f"{cohort} exists, but {record} does not: not a work folder of mrfengine bids; give "
                             "another one (-w)")
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps({"bids_dir": source}, indent=2) + "\n")
    return root / "cohort.zarr"


def write_dataset_description(output_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """Make ``output_dir`` mrfengine's derivative dataset of ``bids_dir`` (or extend the one it is).

    :func:`mrfengine.io.bids.ensure_derivative_root` writes
    ``dataset_description.json`` (``DatasetType`` derivative, ``GeneratedBy``
    mrfengine with its version, ``SourceDatasets`` and ``DatasetLinks.raw``
    naming the input dataset: ``../..`` for ``BIDS_DIR/derivatives/<name>``,
    else a ``file://`` URL) and the ``.bidsignore`` of mrfengine's own suffixes.

    Returns
    -------
    Path
        The description.

    Raises
    ------
    InputFileError
        ``output_dir`` holds another tool's dataset, or files without a
        dataset description (never written over or into).
    """
    from ..io.bids import DESCRIPTION, ensure_derivative_root, source_uri

    out = Path(output_dir).absolute()
    if not (out / DESCRIPTION).is_file() and out.is_dir() and any(out.iterdir()):
        raise InputFileError(f"{out}: not empty and no derivative dataset of mrfengine (no {DESCRIPTION}); give "
                             "an empty or new output folder")
    desc = out / DESCRIPTION
    if desc.is_file():
        try:
            doc = json.loads(desc.read_text(encoding="utf-8"))
            ours = doc.get("DatasetType") == "derivative" and any(
                isinstance(g, dict) and g.get("Name") == "mrfengine" for g in doc.get("GeneratedBy") or [])
        except (OSError, ValueError, AttributeError, TypeError):
            ours = False
        if not ours:  # --force redoes mrfengine's work; it never writes into another tool's dataset
            raise InputFileError(f"{desc}: not a derivative dataset of mrfengine (another tool's, or a raw "
                                 "dataset); give another output folder")
    links: dict[str, str] = {}
    source_uri(Path(bids_dir).absolute() / DESCRIPTION, out, links)  # names the raw dataset "raw"
    ensure_derivative_root(out, links=links)
    return out / DESCRIPTION


# --------------------------------------------------------------------------- import
def _fingerprint(inputs: ParticipantInputs, site: str, seq: Sequence) -> dict[str, Any]:
    files = {}
    for name, path in inputs.files().items():
        st = path.stat()
        files[name] = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"files": files, "site": site, "sequence": seq.digest()}


def _n_slices(path: Path) -> int:
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as exc:  # nibabel raises many kinds for a bad file
        raise InputFileError(f"{path}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    if len(shape) != 4:
        raise InputFileError(f"{path}: an MRF series is 4D (X, Y, Z, frames); this image has shape {shape}")
    return int(shape[2])


def _site_for(cohort_path: Path, site: str, seq: Sequence) -> str:
    """``site``, or ``site-<digest>`` when the cohort's ``site`` holds another sequence (e.g. another
    slice count of the same protocol: one site, one sequence in a cohort)."""
    if not cohort_path.exists():
        return site
    sites = Cohort.open(cohort_path).sites
    if site in sites and sites[site].sequence.digest() != seq.digest():
        return f"{site}-{seq.digest()[:8]}"
    return site


def _import(cohort_path: Path, records: Path, inputs: ParticipantInputs, *, layout_root: str, site: str | None,
            sequence: Sequence | None, force: bool) -> bool:
    """Import one participant unless its record says the same files are in already; True when imported."""
    from ..io.cohort import subject_complete
    from ..io.importer import import_subject

    site_name, seq = sequence_from_metadata(inputs.metadata, _n_slices(inputs.mrf), inputs.mrf,
                                            dataset_root=layout_root, site=site, sequence=sequence)
    record = records / f"{inputs.subject}.json"
    print_ = _fingerprint(inputs, site_name, seq)
    if not force and record.is_file() and cohort_path.exists() and subject_complete(cohort_path, inputs.subject):
        try:
            if json.loads(record.read_text(encoding="utf-8")) == print_:
                return False
        except (OSError, ValueError):
            pass
    site_name = _site_for(cohort_path, site_name, seq)
    import_subject(cohort_path, inputs.subject, inputs.mrf, site=site_name, sequence=seq,
                   brain_mask=inputs.brain_mask,
                   annotations={"lesion": inputs.lesion} if inputs.lesion else None,
                   references={"T2w": inputs.t2w} if inputs.t2w else None,
                   overwrite=True)  # the work cohort is ours; the record decides whether to redo
    records.mkdir(parents=True, exist_ok=True)
    # Written once the subject is complete in the cohort; it keeps the site the sidecar gave (before any
    # renaming for a clash), so the next run compares like with like.
    atomic_write_text(record, json.dumps(print_, indent=2) + "\n")
    return True


# --------------------------------------------------------------------------- export
def _export_plan(cohort: Cohort, subject: str, pipelines: SequenceABC[Pipeline], ext: str) -> list[tuple[str, Any]]:
    """(array, :class:`~mrfengine.io.bids.DerivativeFile`) of every image a participant's derivatives hold."""
    from ..io.exporter import export_file

    sub = cohort[subject]
    arrays = [a for p in pipelines for a in sub.arrays if a.startswith(f"derived/{p.name}/")]
    if arrays and "brain_mask" in sub.arrays:
        arrays.append("brain_mask")  # the mask the maps' sidecars name (the outside rule)
    return [(a, export_file(subject, a, ext)[0]) for a in dict.fromkeys(arrays)]


def _input_sources(inputs: ParticipantInputs, pipelines: SequenceABC[Pipeline], array: str) -> list[Path]:
    """The input files an exported array was computed from: the series for every map (with the T2w after a
    register stage, the lesion mask after a segment stage, the brain mask when one was given); the brain
    mask file for the subject's ``brain_mask``."""
    if array == "brain_mask":
        return [inputs.brain_mask] if inputs.brain_mask is not None else []
    stages = next((p.stages for p in pipelines if array.startswith(f"derived/{p.name}/")), ())
    files = [inputs.mrf]
    files += [inputs.t2w] if inputs.t2w is not None and "register" in stages else []
    files += [inputs.lesion] if inputs.lesion is not None and "segment" in stages else []
    files += [inputs.brain_mask] if inputs.brain_mask is not None else []
    return files


def _exported(root: Path, plan: list[tuple[str, Any]]) -> bool:
    return bool(plan) and all((root / f.relpath).is_file() and (root / f.sidecar).is_file() for _, f in plan)


# --------------------------------------------------------------------------- the app
def run_bids_app(
    bids_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    pipelines: SequenceABC[Pipeline],
    client: Any,
    *,
    participants: SequenceABC[str] = (),
    work_dir: str | os.PathLike = "work",
    derivatives: SequenceABC[str | os.PathLike] = (),
    filters: Mapping[str, Mapping[str, Any]] | None = None,
    filter_file: str | None = None,
    site: str | None = None,
    sequence: Sequence | None = None,
    force: bool = False,
    backend: str = "auto",
    ext: str = ".nii.gz",
    on_event: Event | None = None,
) -> BidsAppReport:
    """Run mrfengine's participant level on a BIDS dataset.

    Parameters
    ----------
    bids_dir : path
        The raw BIDS dataset.
    output_dir : path
        The derivative dataset (created; refused if it holds another tool's files).
    pipelines : sequence of Pipeline
        Run in order on every participant; each one's maps leave as
        ``desc-<pipeline name, letters and digits>``.
    client : distributed.Client or callable
        The Dask client of the batch (:func:`mrfengine.pipeline.batch.batch_client`), or a
        function returning a context manager that gives one: it is called only once every
        input has been found and imported (no cluster starts for an input problem).
    participants : labels
        ``01`` or ``sub-01`` (default: every participant).
    work_dir : path
        The work folder (:func:`work_cohort`).
    derivatives : paths
        Derivative datasets searched for lesion and brain masks.
    filters : mapping
        A BIDS filter file's queries (:func:`mrfengine.io.bids_input.load_filter_file`).
    filter_file : str, optional
        Its path, for messages.
    site, sequence
        The MRF sequence when the sidecars do not name it
        (:func:`mrfengine.io.bids_input.sequence_from_metadata`).
    force : bool
        Import, compute and export again what is complete.
    backend : str
        Kernel backend of the batch.
    ext : {".nii.gz", ".nii"}
    on_event : callable, optional
        ``on_event(kind, payload)``: ``found`` (``subject``, ``files``),
        ``imported`` (``subject``, ``imported``), ``pipeline`` (``name``,
        ``report``), ``exported`` (``subject``, ``outputs``), and the batch's
        own events (:func:`run_batch`).

    Returns
    -------
    BidsAppReport

    Raises
    ------
    InputFileError
        Not a BIDS dataset, no MRF series for a participant, two candidates
        for one input (naming the files), an output folder of another tool.
    ValidationError
        A participant label the dataset lacks, a malformed filter.
    StoreError
        A work folder of another dataset.
    """
    from ..io.exporter import export_subject

    t0 = time.perf_counter()
    emit = on_event or (lambda kind, payload: None)
    bids_dir = Path(bids_dir)
    output_dir = Path(output_dir).absolute()
    layout = open_layout(bids_dir, derivatives)
    raw_root = Path(layout.root)
    if output_dir == raw_root or (raw_root in output_dir.parents
                                  and output_dir.relative_to(raw_root).parts[0] != "derivatives"):
        raise InputFileError(f"{output_dir}: inside the BIDS dataset {layout.root}; write derivatives outside it "
                             "or under its derivatives/ folder")
    labels = participant_labels(layout, participants)
    queries = merge_queries(filters)
    # Every participant's files are found before any work: a naming problem stops the run at once.
    found = [find_inputs(layout, label, queries, filter_file=filter_file) for label in labels]
    inputs_of = {i.subject: i for i in found}
    for inputs in found:
        emit("found", {"subject": inputs.subject, "files": inputs.files()})
    write_dataset_description(output_dir, bids_dir)
    cohort_path = work_cohort(work_dir, bids_dir)
    records = cohort_path.parent / "inputs"
    report = BidsAppReport(output_dir, cohort_path)
    outcomes = {i.subject: ParticipantOutcome(i.subject) for i in found}
    report.participants = list(outcomes.values())

    for inputs in found:
        out = outcomes[inputs.subject]
        try:
            out.imported = _import(cohort_path, records, inputs, layout_root=str(layout.root), site=site,
                                   sequence=sequence, force=force)
        except MRFEngineError as exc:
            out.status, out.error = "failed", str(exc)
        emit("imported", {"subject": inputs.subject, "imported": out.imported, "error": out.error})

    todo = [s for s, o in outcomes.items() if o.status != "failed"]
    ran: set[str] = set()
    if todo:
        with contextlib.ExitStack() as stack:
            if callable(client) and not hasattr(client, "submit"):
                client = stack.enter_context(client())  # started only now, after the inputs are checked
            batches = [run_batch(cohort_path, pipe, client, subjects=todo, force=force, backend=backend,
                                 on_event=on_event) for pipe in pipelines]
        for pipe, batch in zip(pipelines, batches):
            report.batches.append(batch)
            emit("pipeline", {"name": pipe.name, "report": batch})
            for r in batch.results:
                if r.status == "failed":
                    outcomes[r.subject].status, outcomes[r.subject].error = "failed", r.error
                elif r.status == "ok":
                    ran.add(r.subject)
            for s in batch.not_run:
                outcomes[s].status, outcomes[s].error = "failed", f"{s}: not run ({batch.stopped or 'stopped'})"

    todo = [s for s in todo if outcomes[s].status != "failed"]
    cohort = Cohort.open(cohort_path) if todo else None  # none imported: no cohort may exist yet
    for subject in todo:
        out = outcomes[subject]
        if out.status == "failed":
            continue
        plan = _export_plan(cohort, subject, pipelines, ext)
        if not force and subject not in ran and not out.imported:
            # The maps in the work cohort are those exported before: only what is missing is written.
            plan = [(a, f) for a, f in plan if not _exported(output_dir, [(a, f)])]
            if not plan:
                out.status = "complete"
                continue
        try:
            out.outputs = export_subject(cohort, subject, output_dir, arrays=[a for a, _ in plan], ext=ext,
                                         inputs={a: _input_sources(inputs_of[subject], pipelines, a) for a, _ in plan})
        except (StoreError, OSError, ValueError) as exc:
            out.status, out.error = "failed", f"{subject}: export to {output_dir} failed ({exc})"
        emit("exported", {"subject": subject, "outputs": out.outputs, "error": out.error})
    report.wall_s = time.perf_counter() - t0
    return report
