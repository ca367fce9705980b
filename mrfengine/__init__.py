"""mrfengine: MR fingerprinting (MRF-EPI) of the brain in multiple sclerosis.

The library API::

    from mrfengine import Dictionary, match
    d = Dictionary(atoms, {"T1": t1_ms, "T2star": t2s_ms, "B1": b1})
    r = match(signals, d)
    r.params["T1"], r.m0, r.correlation, r.index

Times are in milliseconds throughout the Python API; NIfTI/BIDS outputs are
written in seconds.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import metrics
from .dictionary import Dictionary, ParameterGrid, SliceDictionaries, paper_grid, simulate_dictionary
from .errors import MRFEngineError
from .matching import MatchResult, match, match_slices
from .sequence import Sequence, hermann2021

try:
    __version__ = version("mrfengine")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Dictionary",
    "ParameterGrid",
    "SliceDictionaries",
    "paper_grid",
    "simulate_dictionary",
    "match",
    "match_slices",
    "MatchResult",
    "Sequence",
    "hermann2021",
    "MRFEngineError",
    "metrics",
    "__version__",
]
