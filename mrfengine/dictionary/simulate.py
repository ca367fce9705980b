"""The MRF-EPI signal model.

Per slice, with perfect spoiling, instantaneous pulses and no slice profile
(``shared/mrf-epi/README.md``):

* excitation with flip ``b * a_i`` (``b`` the B1 factor): the signal is
  ``M0 sin(b a_i) Mz exp(-TE_i / T2*)`` and then ``Mz <- Mz cos(b a_i)``;
* free relaxation for ``t``: ``Mz <- 1 - (1 - Mz) exp(-t / T1)``;
* a global inversion: ``Mz <- -Mz``; other slices' excitations leave this
  slice alone.

Mz depends on T1 and B1 only; T2* enters through ``exp(-TE_i / T2*)``.  The
functions here therefore split the work: :func:`longitudinal_magnetisation`
runs the event recursion for (T1, B1) pairs and :func:`fingerprints` applies
the transverse factor.  All times are in ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..errors import SequenceError, ValidationError
from ..sequence import Sequence

__all__ = [
    "SIGNAL_MODEL_VERSION",
    "SlotTimeline",
    "slot_timeline",
    "longitudinal_magnetisation",
    "transverse_factor",
    "fingerprints",
]

# Bump whenever the physics below changes: it keys the on-disk dictionary cache.
SIGNAL_MODEL_VERSION = "mrf-epi-spoiled/1"

_INVERSION = 0
_EXCITATION = 1


@dataclass(frozen=True)
class SlotTimeline:
    """The events a slice in one slot experiences, in time order.

    Attributes
    ----------
    delay_ms : ndarray, (n_events,)
        Time since the previous event (the first event: since equilibrium).
    kind : ndarray of int8, (n_events,)
        0 for a global inversion, 1 for an excitation of this slice.
    flip_deg : ndarray, (n_events,)
        Nominal flip angle of excitations (0 for inversions).
    frame : ndarray of int, (n_events,)
        Recorded frame of an excitation, -1 for dummies and inversions.
    """

    delay_ms: np.ndarray
    kind: np.ndarray
    flip_deg: np.ndarray
    frame: np.ndarray


def slot_timeline(sequence: Sequence, slot: int) -> SlotTimeline:
    """The event list of a slice excited in ``slot`` (0-based).

    Measurement ``i`` starts at the sum of the earlier repetition times; the
    slice is excited at ``slot * TR_i / n_slots`` into it, and an inversion
    of that measurement at ``inversion_slot * TR_i / n_slots``, just before the
    excitation of that slot (so before ours when ``inversion_slot <= slot``).
    """
    if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < sequence.n_slots:
        raise SequenceError(f"slot must be an integer in [0, {sequence.n_slots}); got {slot!r}")
    n_dummy = sequence.dummy_measurements
    trs = [sequence.repetition_time_ms[0]] * n_dummy + list(sequence.repetition_time_ms)
    fas = [sequence.flip_angle_deg[0]] * n_dummy + list(sequence.flip_angle_deg)
    invs: list[int | None] = [None] * n_dummy + list(sequence.inversion_slot)
    frames = [-1] * n_dummy + list(range(sequence.n_measurements))
    times, kinds, flips, frame_of = [], [], [], []
    start = 0.0
    for tr, fa, inv, frame in zip(trs, fas, invs, frames):
        slot_ms = tr / sequence.n_slots
        if inv is not None:
            times.append(start + inv * slot_ms)
            kinds.append(_INVERSION)
            flips.append(0.0)
            frame_of.append(-1)
        times.append(start + slot * slot_ms)
        kinds.append(_EXCITATION)
        flips.append(fa)
        frame_of.append(frame)
        start += tr
    times_a = np.asarray(times)
    kinds_a = np.asarray(kinds, dtype=np.int8)
    # Stable sort by time; at equal times the inversion (kind 0) comes first.
    order = np.lexsort((kinds_a, times_a))
    times_a = times_a[order]
    delay = np.diff(times_a, prepend=0.0)
    return SlotTimeline(
        delay_ms=delay,
        kind=kinds_a[order],
        flip_deg=np.asarray(flips)[order],
        frame=np.asarray(frame_of, dtype=np.int64)[order],
    )


def _as_1d(name: str, values: ArrayLike, n: int | None = None) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be a scalar or 1-D; got shape {arr.shape}")
    if n is not None and arr.size not in (1, n):
        raise ValidationError(f"{name} must have 1 or {n} values; got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValidationError(f"{name} must be finite")
    return arr


def longitudinal_magnetisation(
    sequence: Sequence, slot: int, t1_ms: ArrayLike, b1: ArrayLike
) -> np.ndarray:
    """Mz just before each recorded excitation, for (T1, B1) pairs.

    Parameters
    ----------
    sequence : Sequence
    slot : int
        Excitation slot of the slice (0-based).
    t1_ms : array_like, (n,)
        T1 in ms, > 0.
    b1 : array_like, (n,) or scalar
        Flip-angle scale factor, > 0.

    Returns
    -------
    ndarray, float64, (n, n_measurements)
        Mz relative to the equilibrium magnetisation (M0 = 1); negative after
        an inversion.
    """
    t1 = _as_1d("t1_ms", t1_ms)
    b1a = _as_1d("b1", b1, t1.size)
    if np.any(t1 <= 0) or np.any(b1a <= 0):
        raise ValidationError("t1_ms and b1 must be positive")
    n = max(t1.size, b1a.size)
    t1 = np.broadcast_to(t1, (n,))
    b1a = np.broadcast_to(b1a, (n,))
    tl = slot_timeline(sequence, slot)
    rate = -1.0 / t1
    mz = np.ones(n)
    out = np.empty((n, sequence.n_measurements))
    for delay, kind, flip, frame in zip(tl.delay_ms, tl.kind, tl.flip_deg, tl.frame):
        if delay > 0:
            e1 = np.exp(delay * rate)
            mz = 1.0 - (1.0 - mz) * e1
        if kind == _INVERSION:
            mz = -mz
        else:
            if frame >= 0:
                out[:, frame] = mz
            mz = mz * np.cos(np.deg2rad(flip) * b1a)
    return out


def transverse_factor(sequence: Sequence, t2star_ms: ArrayLike) -> np.ndarray:
    """``exp(-TE_i / T2*)`` for each T2*: shape (n, n_measurements), float64."""
    t2 = _as_1d("t2star_ms", t2star_ms)
    if np.any(t2 <= 0):
        raise ValidationError("t2star_ms must be positive")
    te = np.asarray(sequence.echo_time_ms)
    return np.exp(-te[None, :] / t2[:, None])


def fingerprints(
    sequence: Sequence,
    slot: int,
    t1_ms: ArrayLike,
    t2star_ms: ArrayLike,
    b1: ArrayLike = 1.0,
    m0: ArrayLike = 1.0,
    *,
    magnitude: bool = True,
) -> np.ndarray:
    """Noise-free fingerprints of voxels with the given parameters.

    Parameters are broadcast against each other (1-D or scalars); they need not
    lie on any dictionary grid.

    Returns
    -------
    ndarray, float64, (n, n_measurements)
        ``M0 sin(b a_i) Mz_i exp(-TE_i / T2*)``, its absolute value when
        ``magnitude`` (the measured magnitude images).
    """
    t1 = _as_1d("t1_ms", t1_ms)
    t2 = _as_1d("t2star_ms", t2star_ms)
    b1a = _as_1d("b1", b1)
    m0a = _as_1d("m0", m0)
    try:
        t1, t2, b1a, m0a = np.broadcast_arrays(t1, t2, b1a, m0a)
    except ValueError as exc:
        raise ValidationError(f"parameter arrays do not broadcast: {exc}") from exc
    mz = longitudinal_magnetisation(sequence, slot, t1, b1a)
    fa = np.deg2rad(np.asarray(sequence.flip_angle_deg))
    te = np.asarray(sequence.echo_time_ms)
    sig = m0a[:, None] * np.sin(b1a[:, None] * fa[None, :]) * mz * np.exp(-te[None, :] / t2[:, None])
    return np.abs(sig) if magnitude else sig
