"""Read and write acquisition descriptions: JSON, TOML, or a schedule CSV."""

from __future__ import annotations

import csv
import json
import os
import tomllib
from pathlib import Path

import tomli_w

from .._atomic import atomic_write_text
from ..errors import InputFileError, SequenceError
from .model import Sequence
from .presets import PRESETS, preset, repetition_time_from_echo_time

__all__ = ["load_sequence", "save_sequence", "resolve_sequence"]


def save_sequence(sequence: Sequence, path: str | os.PathLike) -> Path:
    """Write ``sequence`` as JSON (``.json``) or TOML (``.toml``), atomically."""
    path = Path(path)
    data = sequence.to_dict()
    if path.suffix == ".json":
        text = json.dumps(data, indent=2) + "\n"
    elif path.suffix == ".toml":
        text = tomli_w.dumps(data)
    else:
        raise SequenceError(f"{path}: unknown sequence format {path.suffix!r}; use .json or .toml")
    return atomic_write_text(path, text)


def _from_csv(path: Path, n_slices: int, sms_factor: int) -> Sequence:
    """A schedule CSV with columns flip_angle_deg, echo_time_ms, inversion_before
    (yes/no) and optionally repetition_time_ms and inversion_slot."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"flip_angle_deg", "echo_time_ms", "inversion_before"}
    if not rows or not need <= set(rows[0]):
        raise SequenceError(f"{path}: a schedule CSV needs the columns {sorted(need)}")
    n_slots = n_slices // sms_factor
    fa, te, tr, slots = [], [], [], []
    for i, row in enumerate(rows):
        try:
            fa.append(float(row["flip_angle_deg"]))
            te.append(float(row["echo_time_ms"]))
            tr.append(float(row["repetition_time_ms"]) if row.get("repetition_time_ms")
                      else repetition_time_from_echo_time(te[-1]))
        except ValueError as exc:
            raise SequenceError(f"{path}: row {i + 2}: {exc}") from exc
        inv = row["inversion_before"].strip().lower() in ("yes", "true", "1")
        if not inv:
            slots.append(None)
        elif row.get("inversion_slot"):
            slots.append(int(row["inversion_slot"]))
        else:
            slots.append((2 * i) % n_slots)
    return Sequence(tuple(fa), tuple(te), tuple(tr), tuple(slots), n_slices=n_slices,
                    sms_factor=sms_factor, name=path.stem)


def load_sequence(path: str | os.PathLike, *, n_slices: int = 60, sms_factor: int = 1) -> Sequence:
    """Read a sequence from JSON, TOML or a schedule CSV.

    ``n_slices`` and ``sms_factor`` apply to CSV schedules only (JSON and TOML
    carry their own).

    Raises
    ------
    InputFileError
        The file is missing or cannot be parsed.
    SequenceError
        The description is inconsistent; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: sequence file not found")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        elif path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".csv":
            return _from_csv(path, n_slices, sms_factor)
        else:
            raise SequenceError(f"{path}: unknown sequence format {path.suffix!r}; use .json, .toml or .csv")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: not a valid {path.suffix[1:].upper()} file: {exc}") from exc
    try:
        return Sequence.from_dict(data)
    except (SequenceError, TypeError) as exc:
        raise SequenceError(f"{path}: {exc}") from exc


def resolve_sequence(spec: str | os.PathLike | Sequence) -> Sequence:
    """A :class:`Sequence` from an instance, a preset name or a file path."""
    if isinstance(spec, Sequence):
        return spec
    if isinstance(spec, str) and spec.strip().lower() in PRESETS:
        return preset(spec)
    return load_sequence(spec)
