"""Running a pipeline on one subject of a cohort: :func:`run_subject`.

``run_subject`` takes only picklable arguments (a path, a subject id, a
:class:`~mrfengine.pipeline.stages.Pipeline`), opens the store itself and
returns a small :class:`SubjectResult`, so a Dask task can call it as it is.
It never raises for a subject's failure: the error is caught, logged and
reported in the result, and no completion record is written.

A subject runs in two steps: the whole-subject stages (the ``mask`` stage:
the subject's brain mask, or one made from its series) on the subject as the
store holds it (:func:`subject_inputs`, the series read lazily), then the
other stages on the series read into memory (:func:`load_inputs`) with that
mask.  ``mrfengine batch`` does the same, the second step slab by slab.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import StoreError, ValidationError
from ..io.cohort import Cohort, json_equal, normalize_subject_id
from .derived import derived_attrs, derived_complete, remove_derived, write_derived
from .stages import Pipeline, has_after_slabs, run_after_slabs, run_stages, run_subject_stages

__all__ = ["SubjectResult", "run_subject", "load_inputs", "subject_inputs", "prepare_subject", "failed_result",
           "peak_memory_mb", "STORED_MASK", "subject_facts", "finish_subject"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubjectResult:
    """What :func:`run_subject` did for one subject.

    Attributes
    ----------
    subject : str
    pipeline : str
        The derived group's name.
    status : {"ok", "skipped", "failed"}
        ``skipped``: the derived group was already complete (no ``force``).
    timings_s : dict of str to float
        Seconds per step: ``read``, each stage, ``store`` and ``total``.
    error : str or None
        For ``failed``: the message, naming the subject and the error type.
    arrays : tuple of str
        Array paths written (``derived/<pipeline>/<name>``).
    error_kind : {"input", "stage", "output", "worker"} or None
        For ``failed``: the subject's data (``input``), a stage, writing the
        results (``output``: a read-only or full store; a batch stops), or a
        worker that died (``worker``).
    peak_memory_mb : float or None
        Peak resident memory of the process(es) that ran the subject.
    """

    subject: str
    pipeline: str
    status: Literal["ok", "skipped", "failed"]
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    arrays: tuple[str, ...] = ()
    error_kind: str | None = None
    peak_memory_mb: float | None = None


#: :func:`load_inputs`' default ``mask``: the subject's stored ``brain_mask`` (or None without one).
STORED_MASK: Any = "stored"


def _open_checked(cohort_path: str | os.PathLike, sid: str):
    subject = Cohort.open(cohort_path)[sid]  # StoreError naming an unknown or incomplete subject
    expect = (subject.sequence.n_measurements,) + subject.shape
    if tuple(subject.mrf.shape) != expect:
        raise StoreError(f"{sid}: 'mrf' has shape {tuple(subject.mrf.shape)}; expected {expect} (frames, Z, Y, X)")
    return subject


def _read_mask(subject: Any, sid: str, lo: int, hi: int) -> np.ndarray | None:
    try:
        return None if subject.brain_mask is None else np.asarray(subject.brain_mask[lo:hi]) > 0
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StoreError(f"{sid}: cannot read its 'brain_mask' array ({type(exc).__name__}: {exc})") from exc


def subject_inputs(cohort_path: str | os.PathLike, subject_id: str) -> dict[str, Any]:
    """The inputs of the whole-subject stages (:func:`~mrfengine.pipeline.stages.run_subject_stages`):
    ``mrf`` as the store's lazily sliced array, ``mask`` the stored ``brain_mask`` (bool, or None),
    ``sequence``, ``z0`` 0.

    Raises
    ------
    StoreError
        No such or an incomplete subject, a shape that does not fit the sequence, an unreadable mask.
    """
    sid = normalize_subject_id(subject_id)
    subject = _open_checked(cohort_path, sid)
    return {"mrf": subject.mrf, "mask": _read_mask(subject, sid, 0, subject.shape[0]),
            "sequence": subject.sequence, "z0": 0}


def prepare_subject(cohort_path: str | os.PathLike, subject_id: str, pipeline: Pipeline, *,
                    backend: str = "auto") -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run the whole-subject stages of ``pipeline`` on one subject, before its other stages.

    Returns
    -------
    outputs, timings_s, info
        As :func:`~mrfengine.pipeline.stages.run_subject_stages` (``outputs["mask"]``:
        the mask for :func:`load_inputs`); ``timings_s`` also has ``read`` (opening the
        subject and reading its stored mask).

    Raises
    ------
    StoreError
        As :func:`subject_inputs`; a chunk of ``mrf`` that cannot be read.
    ValidationError
        A series no brain mask can be made from.
    """
    t0 = time.perf_counter()
    artifacts = subject_inputs(cohort_path, subject_id)
    read = time.perf_counter() - t0
    outputs, timings, info = run_subject_stages(pipeline, artifacts, backend=backend)
    return outputs, {"read": read, **timings}, info


def subject_facts(cohort_path: str | os.PathLike, subject_id: str) -> dict[str, Any]:
    """The :data:`~mrfengine.pipeline.stages.SUBJECT_ARTIFACTS` of a subject, read for the
    ``register`` and ``segment`` stages: ``reference`` and ``annotations`` (name -> (Z, Y, X)
    array, read here), ``spacing_zyx`` (mm), ``affine`` (4 x 4).

    Raises
    ------
    StoreError
        No such subject, or an array that cannot be read (naming it).
    """
    sid = normalize_subject_id(subject_id)
    subject = _open_checked(cohort_path, sid)
    out: dict[str, Any] = {"spacing_zyx": tuple(float(v) for v in subject.voxel_size_mm[::-1]),
                           "affine": np.asarray(subject.affine, dtype=np.float64)}
    for group in ("reference", "annotations"):
        arrays = {}
        for name, array in getattr(subject, group).items():
            try:
                arrays[name] = np.asarray(array[...])
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"{sid}: cannot read its '{group}/{name}' array ({type(exc).__name__}: {exc})") from exc
            if arrays[name].shape != subject.shape:
                raise StoreError(f"{sid}: '{group}/{name}' has shape {arrays[name].shape}; the subject {subject.shape}")
        out[group] = arrays
    return out


def finish_subject(cohort_path: str | os.PathLike, subject_id: str, pipeline: Pipeline, state: dict[str, Any], *,
                   backend: str = "auto") -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run the ``register``/``segment`` stages (:attr:`~mrfengine.pipeline.stages.Stage.after_slabs`)
    on a whole subject's ``state`` (``derived``, ``mask``, ``mask_source``); without such stages,
    ``state`` as it is.  Returns ``(state, timings_s, info)``."""
    if not has_after_slabs(pipeline):
        return state, {}, {}
    t0 = time.perf_counter()
    facts = subject_facts(cohort_path, subject_id)
    read = time.perf_counter() - t0
    state, timings, info = run_after_slabs(pipeline, state, facts, backend=backend)
    return state, {"read_subject": read, **timings}, info


def load_inputs(cohort_path: str | os.PathLike, subject_id: str, planes: tuple[int, int] | None = None, *,
                mask: np.ndarray | None = STORED_MASK) -> dict[str, Any]:
    """Read and check the stage inputs of one subject, or of its planes ``[lo, hi)``.

    Parameters
    ----------
    mask : ndarray of bool (Z, Y, X) of the whole subject, or None
        The brain mask the stages run in (the ``mask`` stage's, see
        :func:`prepare_subject`; None: the whole field of view); its planes
        ``[lo, hi)`` are used.  Default: the subject's stored ``brain_mask``.

    Returns the :data:`~mrfengine.pipeline.stages.INITIAL_ARTIFACTS`: ``mrf``
    (T, Z, Y, X) float32, ``mask`` (Z, Y, X) bool or None, ``sequence`` and
    ``z0`` (= ``lo``).

    Raises
    ------
    StoreError
        No such or an incomplete subject, an unreadable ``mrf`` (a truncated
        or corrupt chunk), a shape that does not fit the sequence.
    ValidationError
        NaN/Inf inside the brain mask (the message names the subject and how many).
    """
    sid = normalize_subject_id(subject_id)
    subject = _open_checked(cohort_path, sid)
    lo, hi = (0, subject.shape[0]) if planes is None else (int(planes[0]), int(planes[1]))
    if not 0 <= lo < hi <= subject.shape[0]:
        raise ValidationError(f"{sid}: planes [{lo}, {hi}) are outside its {subject.shape[0]} slices")
    # The subject's arrays raise StoreError naming the subject, the array and the chunk for a
    # missing (recorded) or undecodable chunk; anything else a read raises is wrapped the same way.
    try:
        mrf = np.asarray(subject.mrf[:, lo:hi], dtype=np.float32)
    except StoreError:
        raise
    except Exception as exc:  # noqa: BLE001 - any read failure of the array is a broken subject
        raise StoreError(f"{sid}: cannot read its 'mrf' array ({type(exc).__name__}: {exc})") from exc
    if isinstance(mask, str) and mask == STORED_MASK:
        mask = _read_mask(subject, sid, lo, hi)
    elif mask is not None:
        if tuple(mask.shape) != subject.shape:
            raise ValidationError(f"{sid}: the brain mask has shape {tuple(mask.shape)}; the subject {subject.shape}")
        mask = np.asarray(mask[lo:hi]) > 0
    region = mrf if mask is None else mrf[:, mask]
    bad = int(np.count_nonzero(~np.isfinite(region)))
    if bad:
        where = " inside the brain mask" if mask is not None else ""
        span = "" if planes is None else f" (slices {lo}-{hi - 1})"
        raise ValidationError(f"{sid}: 'mrf' holds {bad} NaN/Inf value(s){where}{span}; the subject's data are corrupt")
    return {"mrf": mrf, "mask": mask, "sequence": subject.sequence, "z0": lo}


def run_subject(
    cohort_path: str | os.PathLike,
    subject_id: str,
    pipeline: Pipeline | str,
    *,
    force: bool = False,
    backend: str = "auto",
) -> SubjectResult:
    """Run ``pipeline`` on one subject and store its maps in ``derived/<pipeline.name>/``.

    Parameters
    ----------
    cohort_path : path
        The cohort store (opened read-write for the derived group only).
    subject_id : str
        ``sub-XX`` or ``XX``.
    pipeline : Pipeline or str
        A :class:`Pipeline`, or stage names such as ``"denoise,match"``
        (:meth:`Pipeline.from_stages`).
    force : bool
        Recompute even when the derived group is complete (the old group is
        removed before the stages run, so a failure leaves none).  Without it
        a complete group made with the same configuration
        (``pipeline.to_dict()``) is skipped; one made with another
        configuration, or an incomplete one (an interrupted run), is removed
        and redone.
    backend : str
        Backend of the denoising and matching kernels (``auto`` picks and logs).

    Returns
    -------
    SubjectResult
        ``ok``, ``skipped`` or ``failed`` (with ``error``); never raises for a
        failure of the subject's data or of a stage.

    Raises
    ------
    ValidationError
        Only for a malformed ``subject_id`` or ``pipeline`` (caller errors,
        before any work).
    """
    sid = normalize_subject_id(subject_id)
    if isinstance(pipeline, str):
        pipeline = Pipeline.from_stages(pipeline)
    if not isinstance(pipeline, Pipeline):
        raise ValidationError(f"pipeline must be a Pipeline or stage names; got {type(pipeline).__name__}")
    if not force and derived_complete(cohort_path, sid, pipeline.name):
        stored = (derived_attrs(cohort_path, sid, pipeline.name) or {}).get("provenance", {}).get("config")
        if json_equal(stored, pipeline.to_dict()):
            log.info("%s: derived/%s/ is complete; skipped", sid, pipeline.name)
            return SubjectResult(sid, pipeline.name, "skipped")
        log.warning("%s: derived/%s/ was made with another configuration; recomputing", sid, pipeline.name)

    from .. import __version__

    start = time.perf_counter()
    timings: dict[str, float] = {}
    phase = "output"
    try:
        if force:
            # The old maps go first, so a failed forced run leaves none that look current.
            remove_derived(cohort_path, sid, pipeline.name)
        phase = "stage"  # the mask stage reads the series itself; a store it cannot read fails as input
        try:
            made, subject_times, subject_info = prepare_subject(cohort_path, sid, pipeline, backend=backend)
        except StoreError:
            phase = "input"
            raise
        timings.update(subject_times)
        phase = "input"
        t0 = time.perf_counter()
        artifacts = {**made, **load_inputs(cohort_path, sid, mask=made["mask"])}
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - t0
        phase = "stage"
        state, stage_times, info = run_stages(pipeline, artifacts, backend=backend, subject_done=subject_info)
        timings.update(stage_times)
        state, after_times, after_info = finish_subject(cohort_path, sid, pipeline, state, backend=backend)
        timings.update(after_times)
        info.update(after_info)
        provenance = {
            "mrfengine_version": __version__,
            "backend": backend,
            "stages": info,
            "config": pipeline.to_dict(),
        }
        phase = "output"
        t0 = time.perf_counter()
        attrs = {"provenance": provenance, "timings_s": {k: round(v, 6) for k, v in timings.items()}}
        paths = write_derived(cohort_path, sid, pipeline.name, state["derived"], attrs=attrs)
        timings["store"] = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - one subject's failure must not stop a study
        timings["total"] = time.perf_counter() - start
        return failed_result(sid, pipeline.name, exc, phase, timings)
    timings["total"] = time.perf_counter() - start
    log.info("%s: derived/%s/ written in %.2f s", sid, pipeline.name, timings["total"])
    return SubjectResult(sid, pipeline.name, "ok", timings, None, tuple(paths), peak_memory_mb=peak_memory_mb())


#: errno values that mean the output location cannot take the results.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT})


def _os_error(exc: BaseException) -> OSError | None:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def failed_result(sid: str, pipeline: str, exc: BaseException, phase: str,
                  timings: dict[str, float] | None = None, *, quiet: bool = False) -> SubjectResult:
    """The :class:`SubjectResult` of a failure in ``phase`` (``input``, ``stage``,
    ``output``), logged (at debug level with ``quiet``); an OSError of a full or read-only location anywhere is
    an ``output`` failure whatever the phase."""
    oserr = _os_error(exc)
    kind = "output" if oserr is not None else phase
    if oserr is not None:
        what = "no space left" if oserr.errno in (errno.ENOSPC, errno.EDQUOT) else "not writable"
        where = f" ({oserr.filename})" if oserr.filename else ""
        message = f"{sid}: cannot write the results: output location {what}{where}: {oserr.strerror or oserr}"
    else:
        message = str(exc) if sid in str(exc) else f"{sid}: {exc}"
    message = f"{type(exc).__name__}: {message}"
    log.log(logging.DEBUG if quiet else logging.ERROR, "%s: pipeline %r failed: %s", sid, pipeline, message)
    return SubjectResult(sid, pipeline, "failed", dict(timings or {}), message, error_kind=kind,
                         peak_memory_mb=peak_memory_mb())


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, MB (``ru_maxrss``)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):  # not on POSIX
        return float("nan")
