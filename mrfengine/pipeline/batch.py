"""A pipeline over a whole cohort on Dask: :func:`run_batch` (its client: :mod:`.cluster`).

Each subject becomes one *prepare* task (the whole-subject stages: its brain
mask, the stored one or one made from its series, :func:`prepare_task`), one
or more *slab* tasks (planes ``[lo, hi)`` read with
the halo the stages need, see :func:`plan_slabs`; each gets its planes of the
mask) and one *finalize* task that
gathers the slabs' maps and writes ``derived/<pipeline>/`` with the completion
record last (:func:`mrfengine.pipeline.derived.write_derived`).  Tasks take
only paths, ids and the pipeline description, so they run unchanged on a
:class:`distributed.LocalCluster` or on any ``dask.distributed`` scheduler
whose workers see the cohort's path.

A subject is split into slabs of about :data:`SLAB_PLANES` planes (a
paper-sized subject of 60 slices: two), so one subject keeps two workers busy
and many subjects keep many busy.  The slab plan depends only on the
subject's shape and the pipeline, never on the cluster, so a rerun writes
the same bytes; it equals a whole-volume run (:func:`run_subject`) up to the
rounding of MP-PCA's running sums.

Failures stay per subject: a corrupt subject, a failing stage or a worker
that dies gives a ``failed`` :class:`~mrfengine.pipeline.run.SubjectResult`
while the other subjects go on; an output location that is read-only or full
stops the batch (no later subject could be written either).  Finished
subjects are never touched again unless ``force`` is given.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import StoreError, ValidationError
from ..io.cohort import Cohort, consolidate, drop_consolidated, json_equal, normalize_subject_id, require_writable
from ..io.cohort.store import is_local_path
from .cluster import batch_client, dashboard_link  # noqa: F401 - batch_client is part of this module's API
from .derived import derived_attrs, derived_complete, remove_derived, write_derived
from .run import (STORED_MASK, SubjectResult, failed_result, finish_subject, load_inputs, peak_memory_mb,
                  prepare_subject)
from .stages import Pipeline, has_after_slabs, pipeline_halo, run_stages

__all__ = ["SLAB_PLANES", "Slab", "SlabOutcome", "Prepared", "BatchReport", "plan_slabs", "prepare_task", "run_slab",
           "finalize_subject", "check_writable", "batch_client", "run_batch", "prepare_dictionaries", "check_models",
           "plan_batch", "PlannedSubject"]

log = logging.getLogger(__name__)

#: Default planes per slab: a subject of 60 slices makes two tasks.
SLAB_PLANES = 32


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Slab:
    """Planes ``[keep_lo, keep_hi)`` of a subject, computed from ``[read_lo, read_hi)``."""

    index: int
    read_lo: int
    read_hi: int
    keep_lo: int
    keep_hi: int


def plan_slabs(n_planes: int, pipeline: Pipeline, slab_planes: int = SLAB_PLANES) -> tuple[Slab, ...]:
    """Split ``n_planes`` planes into ``ceil(n_planes / slab_planes)`` slabs of
    (nearly) equal size for ``pipeline``, each read with the pipeline's halo on
    the sides that are not the volume's edge.  A pipeline with a whole-volume
    stage, or slabs that would be thinner than the halo, give fewer slabs (at
    least one)."""
    slab_planes = check_int(slab_planes, "slab_planes")
    n_slabs = math.ceil(n_planes / slab_planes) if n_planes > 0 else 1
    if n_planes < 1:
        raise ValidationError(f"a subject needs at least one plane; got {n_planes}")
    halo = pipeline_halo(pipeline)
    n_slabs = max(1, int(n_slabs))
    if halo is None:
        n_slabs = 1
    else:
        n_slabs = min(n_slabs, max(1, n_planes // max(1, halo)))
    if n_slabs == 1:
        return (Slab(0, 0, n_planes, 0, n_planes),)
    bounds = [(i * n_planes) // n_slabs for i in range(n_slabs + 1)]  # sizes differ by at most one
    slabs = []
    for i in range(n_slabs):
        keep_lo, keep_hi = bounds[i], bounds[i + 1]
        slabs.append(Slab(i, max(0, keep_lo - halo), min(n_planes, keep_hi + halo), keep_lo, keep_hi))
    return tuple(slabs)


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Prepared:
    """What a subject's prepare task gives its slab tasks: the whole-subject stages'
    outputs (``mask``, ``mask_source``), timings and info, or the failure."""

    subject: str
    outputs: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    failure: SubjectResult | None = None


def prepare_task(cohort_path: str, subject_id: str, pipeline: Pipeline, *, backend: str = "auto") -> Prepared:
    """Run the whole-subject stages of one subject (:func:`mrfengine.pipeline.run.prepare_subject`).
    Never raises for the subject's data: the failure rides in the result."""
    sid = normalize_subject_id(subject_id)
    try:
        outputs, timings, info = prepare_subject(cohort_path, sid, pipeline, backend=backend)
    except Exception as exc:  # noqa: BLE001 - reported per subject
        phase = "input" if isinstance(exc, StoreError) else "stage"
        return Prepared(sid, failure=failed_result(sid, pipeline.name, exc, phase, quiet=True))
    return Prepared(sid, outputs, timings, info)


@dataclass(frozen=True)
class SlabOutcome:
    """What one slab task returns to its subject's finalize task."""

    subject: str
    slab: Slab
    derived: dict[str, np.ndarray] | None
    timings_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    failure: SubjectResult | None = None
    peak_memory_mb: float = float("nan")
    started: float = float("nan")


def run_slab(cohort_path: str, subject_id: str, pipeline: Pipeline, slab: Slab, prepared: Prepared | None = None, *,
             backend: str = "auto", n_threads: int = 1) -> SlabOutcome:
    """Read a slab with its halo, run the stages, keep its planes.  Never raises
    for the subject's data or a stage: the failure rides in the outcome.

    ``prepared`` is the subject's :func:`prepare_task` result (the brain mask);
    without it the slab runs the whole-subject stages itself.  The first slab's
    timings include the prepare task's."""
    sid = normalize_subject_id(subject_id)
    started = time.time()
    timings: dict[str, float] = {}
    phase = "input"
    if not n_threads:  # 0: every core of this machine (Dask's workers run with OMP_NUM_THREADS=1)
        from ..backend import cpu_threads

        n_threads = cpu_threads()
    try:
        if prepared is None:
            prepared = prepare_task(cohort_path, sid, pipeline, backend=backend)
        if prepared.failure is not None:
            return SlabOutcome(sid, slab, None, {}, {}, prepared.failure, peak_memory_mb(), started)
        if slab.index == 0:
            timings.update(prepared.timings_s)
        t0 = time.perf_counter()
        artifacts = {**prepared.outputs,
                     **load_inputs(cohort_path, sid, (slab.read_lo, slab.read_hi), mask=prepared.outputs.get("mask", STORED_MASK))}
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
        phase = "stage"
        state, stage_times, info = run_stages(
            pipeline, artifacts, backend=backend, n_threads=n_threads,
            crop=(slab.keep_lo - slab.read_lo, slab.read_hi - slab.keep_hi), subject_done=prepared.info)
        timings.update(stage_times)
        derived = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state["derived"].items()}
    except Exception as exc:  # noqa: BLE001 - reported per subject
        return SlabOutcome(sid, slab, None, timings, {}, failed_result(sid, pipeline.name, exc, phase, timings, quiet=True),
                           peak_memory_mb(), started)
    return SlabOutcome(sid, slab, derived, timings, info, None, peak_memory_mb(), started)


def _merge_info(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage provenance of a subject from its slabs: the first slab's, with the
    dictionary digests of all slabs and the matched voxels summed."""
    merged = {name: dict(value) for name, value in infos[0].items()}
    for info in infos[1:]:
        for name, value in info.items():
            target = merged.setdefault(name, dict(value))
            if "dictionary_digests" in value:
                target["dictionary_digests"] = {**target.get("dictionary_digests", {}), **value["dictionary_digests"]}
            if "n_matched" in value and target is not value:
                target["n_matched"] = int(target.get("n_matched", 0)) + int(value["n_matched"])
    for value in merged.values():
        if "dictionary_digests" in value:
            value["dictionary_digests"] = dict(sorted(value["dictionary_digests"].items(), key=lambda kv: int(kv[0])))
    return merged


def finalize_subject(cohort_path: str, subject_id: str, pipeline: Pipeline, outcomes: Sequence[SlabOutcome], *,
                     backend: str = "auto", prepared: Prepared | None = None) -> SubjectResult:
    """Gather a subject's slab outcomes, run the ``register``/``segment`` stages on the whole
    subject (:func:`mrfengine.pipeline.run.finish_subject`; ``prepared`` is its prepare task's
    result, the brain mask) and write ``derived/<pipeline>/`` (completion record last).  The
    first failed slab or stage makes the subject fail, writing nothing.
    ``timings_s["wall"]`` is the time from its first slab's start to the write's end."""
    from .. import __version__

    sid = normalize_subject_id(subject_id)
    outcomes = sorted(outcomes, key=lambda o: o.slab.index)
    peak = max([o.peak_memory_mb for o in outcomes] + [peak_memory_mb()])
    timings: dict[str, float] = {}
    for o in outcomes:
        for k, v in o.timings_s.items():
            timings[k] = timings.get(k, 0.0) + float(v)
    for o in outcomes:
        if o.failure is not None:
            f = o.failure
            log.error("%s: pipeline %r failed: %s", sid, pipeline.name, f.error)
            return SubjectResult(sid, pipeline.name, "failed", timings, f.error, error_kind=f.error_kind,
                                 peak_memory_mb=peak)
    names = sorted(outcomes[0].derived)
    derived = {n: np.concatenate([o.derived[n] for o in outcomes], axis=0) for n in names}
    stage_info = _merge_info([o.info for o in outcomes])
    if has_after_slabs(pipeline):
        try:
            if prepared is None:
                prepared = prepare_task(cohort_path, sid, pipeline, backend=backend)
            if prepared.failure is not None:
                return prepared.failure
            state = {"derived": derived, "mask": prepared.outputs.get("mask"),
                     "mask_source": prepared.outputs.get("mask_source")}
            state, after_times, after_info = finish_subject(cohort_path, sid, pipeline, state, backend=backend)
        except Exception as exc:  # noqa: BLE001 - reported per subject
            return failed_result(sid, pipeline.name, exc, "stage", timings)
        derived = state["derived"]
        timings.update(after_times)
        stage_info.update(after_info)
    try:
        t0 = time.perf_counter()
        provenance = {
            "mrfengine_version": __version__,
            "backend": backend,
            "stages": stage_info,
            "config": pipeline.to_dict(),
            "slabs": [[o.slab.keep_lo, o.slab.keep_hi] for o in outcomes],
        }
        attrs = {"provenance": provenance, "timings_s": {k: round(v, 6) for k, v in timings.items()}}
        paths = write_derived(cohort_path, sid, pipeline.name, derived, attrs=attrs)
        timings["store"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001
        return failed_result(sid, pipeline.name, exc, "output", timings)
    starts = [o.started for o in outcomes if o.started == o.started]
    if starts:
        timings["wall"] = time.time() - min(starts)
    log.info("%s: derived/%s/ written", sid, pipeline.name)
    return SubjectResult(sid, pipeline.name, "ok", timings, None, tuple(paths), peak_memory_mb=peak)


def _finalize_task(cohort_path, subject_id, pipeline, backend, prepared, *outcomes):
    return finalize_subject(cohort_path, subject_id, pipeline, outcomes, backend=backend, prepared=prepared)


# --------------------------------------------------------------------------- checks
def check_writable(cohort_path: str | os.PathLike) -> None:
    """Raise :class:`StoreError` naming the store if it cannot take the batch's writes
    (read-only store, location or file system, no permission, full disk); the store is
    asked (:func:`mrfengine.io.cohort.require_writable`), nothing is written."""
    require_writable(cohort_path, action="write derived maps into the store",
                     because="the batch writes its results into the cohort, so it must be writable")


# --------------------------------------------------------------------------- batch
@dataclass
class BatchReport:
    """What :func:`run_batch` did.

    Attributes
    ----------
    results : list of SubjectResult
        One per selected subject, in cohort order (``skipped`` for complete
        ones; subjects not run because the batch stopped are absent).
    stopped : str or None
        Why the batch stopped early (an output location that cannot be written).
    wall_s : float
    n_workers, n_threads : int
        Workers and worker threads of the cluster.
    """

    pipeline: str
    results: list[SubjectResult] = field(default_factory=list)
    stopped: str | None = None
    wall_s: float = 0.0
    n_workers: int = 0
    n_threads: int = 0
    not_run: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        """True when every selected subject is complete (done now or before)."""
        return self.stopped is None and not self.not_run and all(r.status != "failed" for r in self.results)


Event = Callable[[str, dict[str, Any]], None]


def _is_current(cohort_path: str, sid: str, pipeline: Pipeline) -> bool:
    if not derived_complete(cohort_path, sid, pipeline.name):
        return False
    stored = (derived_attrs(cohort_path, sid, pipeline.name) or {}).get("provenance", {}).get("config")
    return json_equal(stored, pipeline.to_dict())


def prepare_dictionaries(cohort: Cohort | str | os.PathLike, subjects: Sequence[str], pipeline: Pipeline) -> None:
    """Simulate (or find in the disk cache) each sequence's dictionaries once,
    here, so the workers only read the cache instead of all building them."""
    if "match" not in pipeline.stages:
        return
    from ..dictionary import SliceDictionaries

    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    seen = set()
    for sid in subjects:
        seq = cohort[sid].sequence
        if seq.digest() in seen:
            continue
        seen.add(seq.digest())
        t0 = time.perf_counter()
        dictionaries = SliceDictionaries(seq)
        if dictionaries.cache is None:
            return  # no disk cache: each worker builds its own (once per process)
        for slot in range(dictionaries.n_slots):
            dictionaries[slot]
        log.info("dictionaries of %s ready in %.1f s", seq.name, time.perf_counter() - t0)


@dataclass(frozen=True)
class PlannedSubject:
    """What a batch would do with one subject (:func:`plan_batch`).

    ``action`` is ``run`` (no maps yet), ``redo`` (maps of another configuration, an
    interrupted run, or ``force``), ``skip`` (complete, same configuration) or ``fail``
    (the subject cannot be read); ``reason`` says why; ``slabs`` is the number of slab tasks.
    """

    subject: str
    action: str
    reason: str
    slabs: int = 0


def plan_batch(cohort_path: str | os.PathLike, pipeline: Pipeline, *, subjects: Sequence[str] | None = None,
               force: bool = False, slab_planes: int = SLAB_PLANES) -> list[PlannedSubject]:
    """What :func:`run_batch` would do, decided as it decides, without writing anything
    (``mrfengine batch --dry-run``).

    Raises
    ------
    StoreError
        Not a cohort, or an unknown subject.
    ValidationError
        A bad ``slab_planes``.
    """
    cohort_path = str(Path(cohort_path)) if is_local_path(cohort_path) else str(cohort_path)
    cohort = Cohort.open(cohort_path)
    plan_slabs(1, pipeline, slab_planes)
    out = []
    for sid in cohort.select(subjects, incomplete=True):
        try:
            shape = cohort[sid].shape
            n = len(plan_slabs(shape[0], pipeline, slab_planes))
            if force:
                out.append(PlannedSubject(sid, "redo", "--force: its maps are removed first", n))
            elif _is_current(cohort_path, sid, pipeline):
                out.append(PlannedSubject(sid, "skip", "complete, same configuration"))
            elif derived_complete(cohort_path, sid, pipeline.name):
                out.append(PlannedSubject(sid, "redo", "complete maps of another configuration are replaced", n))
            elif derived_attrs(cohort_path, sid, pipeline.name) is not None:
                out.append(PlannedSubject(sid, "redo", "an interrupted run's maps are replaced", n))
            else:
                out.append(PlannedSubject(sid, "run", "no maps yet", n))
        except (StoreError, ValidationError) as exc:
            out.append(PlannedSubject(sid, "fail", str(exc)))
    return out


def check_models(cohort: Cohort | str | os.PathLike, subjects: Sequence[str], pipeline: Pipeline) -> None:
    """Refuse a pipeline whose network cannot run on the subjects, here, before any cluster starts.

    With a ``unet`` stage the model (its option ``model``) is opened as the workers will open it
    (weights only; TorchScript only with ``trust_model_code``) and its card checked against each
    distinct acquisition of ``subjects``: what the network takes (an MRF series, or the maps of a
    ``match`` stage before it), the frame count and the sequence.  A pipeline without a
    ``unet`` stage passes without reading anything.

    Raises
    ------
    ValidationError, InputFileError
        The model cannot be read, or does not fit a subject (naming the model and the subject).
    """
    if "unet" not in pipeline.stages:
        return
    from ..nn import check_card
    from ..nn.predict import open_network, resolve_model_path

    options = pipeline.options.get("unet", {})
    path = str(resolve_model_path(str(options.get("model", "default")), what="unet stage option 'model'"))
    card = open_network(path, device="cpu", trust_model_code=options.get("trust_model_code") is True).card
    if card.config.input_kind == "maps":
        if "match" not in pipeline.stages[: pipeline.stages.index("unet")]:
            raise ValidationError(f"{path}: network {card.config.name} takes maps ({', '.join(card.config.input_names)}); "
                                  "run 'match' before 'unet'")
        return
    if not isinstance(cohort, Cohort):
        cohort = Cohort.open(cohort)
    seen: set[tuple[str, int]] = set()
    for sid in subjects:
        try:
            sub = cohort[sid]
            seq, n_frames = sub.sequence, int(sub.mrf.shape[0])
        except (StoreError, KeyError, AttributeError):
            continue  # an unreadable subject fails alone in the batch
        key = (seq.digest(), n_frames)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_card(card, channels=n_frames, sequence=seq, input_kind="mrf", source=path)
        except ValidationError as exc:
            raise ValidationError(f"{exc} ({sid}, sequence {seq.name}, {n_frames} frames; checked before the "
                                  "cluster starts)") from exc


def run_batch(
    cohort_path: str | os.PathLike,
    pipeline: Pipeline | str,
    client: Any,
    *,
    subjects: Sequence[str] | None = None,
    force: bool = False,
    backend: str = "auto",
    slab_planes: int = SLAB_PLANES,
    on_event: Event | None = None,
    n_threads: int = 1,
) -> BatchReport:
    """Run ``pipeline`` over the subjects of a cohort on a Dask ``client``.

    Parameters
    ----------
    cohort_path : path
        The cohort store; ``derived/<pipeline.name>/`` is written into it.
    pipeline : Pipeline or str
        E.g. ``"denoise,match"``.
    client : distributed.Client
        From :func:`batch_client` (or any client of a cluster whose workers
        see ``cohort_path``).
    subjects : list of str, optional
        Subject ids (``sub-07`` or ``07``); default all complete subjects.
    force : bool
        Redo subjects whose derived group is complete (it is removed first).
    backend : str
        Kernel backend, chosen inside each task (``auto``: GPU where the
        worker has one, else C++, Numba, numpy).
    slab_planes : int
        Planes per slab (:func:`plan_slabs`); the maps depend on it in the
        last bits, so keep it when rerunning.
    on_event : callable, optional
        ``on_event(kind, payload)`` with kind ``start`` (``subjects``,
        ``skipped``, ``slabs``), ``slab`` (``subject``, ``timings_s``),
        ``subject`` (``result``), ``stopped`` (``reason``).
    n_threads : int
        CPU threads of the kernels inside each slab task (C++ OpenMP, PyTorch);
        0: all cores of the worker's machine.  Default 1: a worker runs
        ``threads_per_worker`` tasks at once.

    Returns
    -------
    BatchReport

    Raises
    ------
    StoreError
        Not a cohort, an unknown subject, a store that cannot be written.
    ValidationError
        A malformed pipeline.
    """
    from distributed import as_completed

    t_start = time.perf_counter()
    # A folder's path is normalised; a URL (s3://, gs://, file://, through fsspec) is kept as given.
    cohort_path = str(Path(cohort_path)) if is_local_path(cohort_path) else str(cohort_path)
    if isinstance(pipeline, str):
        pipeline = Pipeline.from_stages(pipeline)
    cohort = Cohort.open(cohort_path)
    # Listed subjects that cannot be read (a missing folder, a damaged zarr.json, an interrupted
    # writer, a malformed entry) are selected too, and fail alone below: never silently fewer.
    selected = cohort.select(subjects, incomplete=True)
    plan_slabs(1, pipeline, slab_planes)  # ValidationError for a bad slab_planes, before any work
    check_int(n_threads, "n_threads", minimum=0)
    check_writable(cohort_path)
    emit = on_event or (lambda kind, payload: None)
    report = BatchReport(pipeline.name)

    todo, skipped = [], []
    failed: dict[str, SubjectResult] = {}
    plans: dict[str, tuple[Slab, ...]] = {}
    for sid in selected:
        try:
            shape = cohort[sid].shape  # StoreError: unreadable, malformed attributes, unknown site
            if not force and _is_current(cohort_path, sid, pipeline):
                skipped.append(sid)
                continue
            if force:
                # The old maps go first, so a failed forced run leaves none that look current.
                remove_derived(cohort_path, sid, pipeline.name)
            plans[sid] = plan_slabs(shape[0], pipeline, slab_planes)
        except (StoreError, ValidationError) as exc:
            failed[sid] = failed_result(sid, pipeline.name, exc, "input")
            continue
        todo.append(sid)
    info = client.scheduler_info()
    workers = info.get("workers", {})
    report.n_workers = len(workers)
    report.n_threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1

    prepare_dictionaries(cohort, todo, pipeline)
    if todo:
        # Once, before any task writes (each writer would otherwise rewrite the root's zarr.json).
        drop_consolidated(cohort_path)

    emit("start", {"subjects": todo + list(failed), "skipped": skipped,
                   "slabs": sum(len(p) for p in plans.values()),
                   "n_workers": report.n_workers, "n_threads": report.n_threads})
    for result in failed.values():
        emit("subject", {"result": result})

    by_key: dict[str, tuple[str, str]] = {}
    futures = []
    prepares = []  # held until the batch ends (their slab tasks hold them on the cluster too)
    for sid in todo:
        slab_futures = []
        # The brain mask needs the whole subject: one task, whose result every slab task takes.
        prepared = client.submit(prepare_task, cohort_path, sid, pipeline, backend=backend,
                                 key=f"prepare-{pipeline.name}-{sid}-{uuid.uuid4().hex[:8]}", pure=False)
        prepares.append(prepared)
        for slab in plans[sid]:
            f = client.submit(run_slab, cohort_path, sid, pipeline, slab, prepared, backend=backend, n_threads=n_threads,
                              key=f"slab-{pipeline.name}-{sid}-{slab.index}-{uuid.uuid4().hex[:8]}", pure=False)
            by_key[f.key] = ("slab", sid)
            slab_futures.append(f)
        f = client.submit(_finalize_task, cohort_path, sid, pipeline, backend, prepared, *slab_futures,
                          key=f"finalize-{pipeline.name}-{sid}-{uuid.uuid4().hex[:8]}", pure=False)
        by_key[f.key] = ("subject", sid)
        futures.extend(slab_futures)
        futures.append(f)

    results: dict[str, SubjectResult] = {sid: SubjectResult(sid, pipeline.name, "skipped") for sid in skipped}
    results.update(failed)
    pending = set(todo)
    try:
        for future in as_completed(futures):
            kind, sid = by_key[future.key]
            if kind == "slab":
                if future.status == "finished":
                    outcome = future.result()
                    emit("slab", {"subject": sid, "timings_s": outcome.timings_s})
                future.release()
                continue
            if future.status == "finished":
                result = future.result()
            elif future.status == "cancelled":
                continue
            else:
                exc = future.exception()
                name = type(exc).__name__
                if name == "KilledWorker":
                    message = (f"KilledWorker: {sid}: the worker running it died (out of memory, or a crash in "
                               f"native code) more often than Dask retries")
                    result = SubjectResult(sid, pipeline.name, "failed", {}, message, error_kind="worker")
                else:
                    result = failed_result(sid, pipeline.name, exc, "stage")
            future.release()
            results[sid] = result
            pending.discard(sid)
            emit("subject", {"result": result})
            if result.status == "failed" and result.error_kind == "output":
                report.stopped = (f"{cohort_path}: the output location cannot take the results "
                                  f"({result.error}); stopped")
                emit("stopped", {"reason": report.stopped})
                break
    finally:
        if pending:
            client.cancel([f for f in futures + prepares if not f.done()])
        elif todo:
            consolidate(cohort_path)  # every task done: the new derived groups in the consolidated metadata
    report.results = [results[s] for s in selected if s in results]
    report.not_run = [s for s in selected if s not in results]
    report.wall_s = time.perf_counter() - t_start
    return report
