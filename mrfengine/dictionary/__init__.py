"""Dictionaries: the signal model, parameter grids, per-slot simulation, SVD
compression and the on-disk cache."""

from .build import DictionaryCache, SliceDictionaries, default_cache_dir, simulate_dictionary
from .core import Dictionary, Separable, SVDCompression
from .grid import ParameterGrid, geometric_range, paper_grid
from .simulate import (
    SIGNAL_MODEL_VERSION,
    fingerprints,
    longitudinal_magnetisation,
    slot_timeline,
    transverse_factor,
)

__all__ = [
    "Dictionary",
    "SVDCompression",
    "Separable",
    "ParameterGrid",
    "paper_grid",
    "geometric_range",
    "simulate_dictionary",
    "SliceDictionaries",
    "DictionaryCache",
    "default_cache_dir",
    "fingerprints",
    "longitudinal_magnetisation",
    "transverse_factor",
    "slot_timeline",
    "SIGNAL_MODEL_VERSION",
]
