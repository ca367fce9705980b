"""Dictionary matching: :func:`match` and its backends."""

from .api import BACKENDS, METHODS, MatchResult, match, match_slices

__all__ = ["match", "match_slices", "MatchResult", "BACKENDS", "METHODS"]
