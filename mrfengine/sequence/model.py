"""The description of a slice-interleaved MRF-EPI acquisition.

A measurement excites every slice once, one slot after another.  The slots of
measurement ``i`` each last ``repetition_time_ms[i] / n_slots``; the slice (or,
with simultaneous multi-slice, the group of slices) of slot ``k`` is excited at
the start of that slot.  A global inversion, where a measurement has one, is
played just before the excitation of its ``inversion_slot``.  Slices therefore
see different inversion delays, and each slot needs its own dictionary.

Times are in milliseconds and angles in degrees, as the names say.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import SequenceError

__all__ = ["Sequence", "even_odd_order"]

_SCHEMA = "mrfengine.sequence/1"


def even_odd_order(n: int) -> tuple[int, ...]:
    """Interleaved order: positions 0, 2, 4, ... then 1, 3, 5, ..."""
    return tuple(range(0, n, 2)) + tuple(range(1, n, 2))


def _float_tuple(name: str, values: Any) -> tuple[float, ...]:
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise SequenceError(f"{name} must be a sequence of numbers; got {values!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise SequenceError(f"{name} must be finite; got {arr.tolist()}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class Sequence:
    """A slice-interleaved MRF-EPI acquisition.

    Parameters
    ----------
    flip_angle_deg : tuple of float, (n_measurements,)
        Nominal flip angle of each measurement, in degrees, in (0, 180].
    echo_time_ms : tuple of float, (n_measurements,)
        Echo time of each measurement, in ms, > 0.
    repetition_time_ms : tuple of float, (n_measurements,)
        Duration of each measurement (all of its slots), in ms, > 0.
    inversion_slot : tuple of int or None, (n_measurements,)
        For a measurement preceded by a global 180 deg inversion, the slot
        (0-based) just before whose excitation the inversion is played; None
        where there is no inversion.
    n_slices : int
        Number of slice positions.
    sms_factor : int
        Simultaneous-multislice factor: slices excited together in one slot.
        ``n_slices`` must be a multiple of it; there are ``n_slices / sms_factor``
        slots per measurement.
    slot_order : tuple of int, (n_slots,)
        ``slot_order[k]`` is the base slice position (0 .. n_slots - 1) excited
        in slot ``k``; with SMS the slot also excites that position plus
        multiples of ``n_slots``.  Defaults to even positions first, then odd.
    dummy_measurements : int
        Measurements played before the first recorded one, with the first
        measurement's flip angle and repetition time and no inversion.
    name : str
        A label (e.g. ``"hermann2021-site1"``).

    Raises
    ------
    SequenceError
        On mismatched lengths, negative or zero times, flip angles outside
        (0, 180], inversion slots out of range or a slot order that is not a
        permutation.
    """

    flip_angle_deg: tuple[float, ...]
    echo_time_ms: tuple[float, ...]
    repetition_time_ms: tuple[float, ...]
    inversion_slot: tuple[int | None, ...]
    n_slices: int
    sms_factor: int = 1
    slot_order: tuple[int, ...] | None = None
    dummy_measurements: int = 0
    name: str = "custom"
    _checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "flip_angle_deg", _float_tuple("flip_angle_deg", self.flip_angle_deg))
        set_(self, "echo_time_ms", _float_tuple("echo_time_ms", self.echo_time_ms))
        set_(self, "repetition_time_ms", _float_tuple("repetition_time_ms", self.repetition_time_ms))
        n = len(self.flip_angle_deg)
        if n == 0:
            raise SequenceError("a sequence needs at least one measurement; got 0 flip angles")
        for name in ("echo_time_ms", "repetition_time_ms", "inversion_slot"):
            got = len(getattr(self, name))
            if got != n:
                raise SequenceError(
                    f"{name} must have one entry per measurement ({n}, from flip_angle_deg); got {got}"
                )
        fa = np.asarray(self.flip_angle_deg)
        if np.any((fa <= 0) | (fa > 180)):
            bad = [(i + 1, v) for i, v in enumerate(self.flip_angle_deg) if not 0 < v <= 180]
            raise SequenceError(f"flip angles must lie in (0, 180] degrees; got (measurement, value) {bad}")
        for name in ("echo_time_ms", "repetition_time_ms"):
            vals = np.asarray(getattr(self, name))
            if np.any(vals <= 0):
                raise SequenceError(f"{name} must be positive; got {vals[vals <= 0].tolist()}")
        for name in ("n_slices", "sms_factor", "dummy_measurements"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise SequenceError(f"{name} must be an integer; got {val!r}")
            set_(self, name, int(val))
        if self.n_slices < 1 or self.sms_factor < 1 or self.dummy_measurements < 0:
            raise SequenceError(
                "n_slices and sms_factor must be >= 1 and dummy_measurements >= 0; got "
                f"{self.n_slices}, {self.sms_factor}, {self.dummy_measurements}"
            )
        if self.n_slices % self.sms_factor:
            raise SequenceError(
                f"n_slices ({self.n_slices}) must be a multiple of sms_factor ({self.sms_factor})"
            )
        n_slots = self.n_slices // self.sms_factor
        inv: list[int | None] = []
        for i, s in enumerate(self.inversion_slot):
            if s is None or (isinstance(s, float) and math.isnan(s)):
                inv.append(None)
                continue
            if isinstance(s, bool) or not float(s).is_integer() or not 0 <= int(s) < n_slots:
                raise SequenceError(
                    f"inversion_slot of measurement {i + 1} must be None or an integer slot in "
                    f"[0, {n_slots}); got {s!r}"
                )
            inv.append(int(s))
        set_(self, "inversion_slot", tuple(inv))
        order = even_odd_order(n_slots) if self.slot_order is None else tuple(int(k) for k in self.slot_order)
        if sorted(order) != list(range(n_slots)):
            raise SequenceError(
                f"slot_order must be a permutation of 0 .. {n_slots - 1} (one entry per slot); got {list(order)}"
            )
        set_(self, "slot_order", order)
        for i, te in enumerate(self.echo_time_ms):
            if te >= self.repetition_time_ms[i] / n_slots:
                raise SequenceError(
                    f"echo time {te} ms of measurement {i + 1} does not fit in its slot of "
                    f"{self.repetition_time_ms[i] / n_slots:.3g} ms (TR / n_slots)"
                )

    # ------------------------------------------------------------------ derived
    @property
    def n_measurements(self) -> int:
        """Number of recorded measurements (frames of a fingerprint)."""
        return len(self.flip_angle_deg)

    @property
    def n_slots(self) -> int:
        """Excitation slots per measurement (``n_slices / sms_factor``)."""
        return self.n_slices // self.sms_factor

    @property
    def inversion(self) -> tuple[bool, ...]:
        """Whether a global inversion precedes each measurement."""
        return tuple(s is not None for s in self.inversion_slot)

    @property
    def slot_duration_ms(self) -> np.ndarray:
        """Slot length of each measurement in ms, shape (n_measurements,)."""
        return np.asarray(self.repetition_time_ms) / self.n_slots

    def slot_of_slice(self, position: int | np.ndarray) -> int | np.ndarray:
        """The slot (0-based) in which slice ``position`` is excited."""
        pos = np.asarray(position)
        if np.any((pos < 0) | (pos >= self.n_slices)):
            raise SequenceError(f"slice position must lie in [0, {self.n_slices}); got {position!r}")
        inverse = np.argsort(np.asarray(self.slot_order))
        out = inverse[pos % self.n_slots]
        return int(out) if np.ndim(out) == 0 else out

    def slices_of_slot(self, slot: int) -> tuple[int, ...]:
        """The slice positions excited in ``slot`` (``sms_factor`` of them)."""
        if not 0 <= slot < self.n_slots:
            raise SequenceError(f"slot must lie in [0, {self.n_slots}); got {slot}")
        base = self.slot_order[slot]
        return tuple(base + k * self.n_slots for k in range(self.sms_factor))

    # --------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible description (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d.pop("_checked", None)
        d["inversion_slot"] = [(-1 if s is None else s) for s in self.inversion_slot]
        for key in ("flip_angle_deg", "echo_time_ms", "repetition_time_ms", "slot_order"):
            d[key] = list(d[key])
        return {"schema": _SCHEMA, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sequence:
        """Build a sequence from :meth:`to_dict` output; ``inversion_slot`` -1 means none."""
        if not isinstance(data, dict):
            raise SequenceError(f"a sequence description must be a mapping; got {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", _SCHEMA)
        if schema != _SCHEMA:
            raise SequenceError(f"unknown sequence schema {schema!r}; this version reads {_SCHEMA!r}")
        known = {"flip_angle_deg", "echo_time_ms", "repetition_time_ms", "inversion_slot", "n_slices",
                 "sms_factor", "slot_order", "dummy_measurements", "name"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SequenceError(f"unknown sequence fields {unknown}; expected some of {sorted(known)}")
        missing = sorted({"flip_angle_deg", "echo_time_ms", "repetition_time_ms", "inversion_slot",
                          "n_slices"} - set(data))
        if missing:
            raise SequenceError(f"sequence description lacks required fields {missing}")
        data["inversion_slot"] = tuple(
            None if (s is None or (not isinstance(s, bool) and isinstance(s, (int, float)) and s < 0)) else s
            for s in data["inversion_slot"]
        )
        return cls(**data)

    def digest(self) -> str:
        """A stable SHA-256 of the physics-relevant content (the name excluded)."""
        d = self.to_dict()
        d.pop("name")
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()
