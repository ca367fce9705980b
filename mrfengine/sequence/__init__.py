"""Acquisition descriptions: the :class:`Sequence` model, presets and file I/O."""

from .io import load_sequence, resolve_sequence, save_sequence
from .model import Sequence, even_odd_order
from .presets import PRESETS, hermann2021, preset, repetition_time_from_echo_time

__all__ = [
    "Sequence",
    "even_odd_order",
    "hermann2021",
    "preset",
    "PRESETS",
    "repetition_time_from_echo_time",
    "load_sequence",
    "save_sequence",
    "resolve_sequence",
]
