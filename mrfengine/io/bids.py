"""BIDS-style derivative names and JSON sidecars.

Quantitative maps follow the BIDS qMRI conventions: ``T1map`` and
``T2starmap`` in seconds, ``TB1map`` (B1+ as a fraction of nominal),
``M0map`` in arbitrary units.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..maps import MATCH_MAPS

__all__ = ["MAP_SPECS", "derivative_name", "write_sidecar", "entity_prefix"]

#: ``mrfengine match``'s file name of the correlation map (kept since the first
#: release; the exporter writes ``desc-<pipeline>correlation_map``).
_MATCH_SUFFIXES = {"correlation": "desc-correlation_mask"}

#: map key -> (BIDS suffix, unit, scale from mrfengine's internal unit, description)
#: of dictionary matching's maps, from the one map registry (:data:`mrfengine.maps.MATCH_MAPS`).
MAP_SPECS: dict[str, tuple[str, str, float, str]] = {
    name: (_MATCH_SUFFIXES.get(name, spec.bids_suffix), spec.bids_unit, spec.scale_to_bids, spec.description)
    for name, spec in MATCH_MAPS.items()
}


def entity_prefix(path: str | os.PathLike) -> str:
    """``sub-01_ses-1`` from ``.../sub-01_ses-1_mrf.nii.gz``: the name without
    its extension and its BIDS suffix.

    The last ``_`` part is dropped only when it is a suffix (no ``-``) after
    BIDS entities (``key-value`` parts); any other name is kept whole, so
    ``x.nii.gz`` gives ``x`` and ``x_s1.nii.gz`` gives ``x_s1``.  Two files
    of one subject (``sub-01_mrf`` and ``sub-01_bold``) still share
    ``sub-01``: the commands refuse to replace the first one's outputs
    (``--force``, or another ``--prefix``).
    """
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    head, sep, tail = name.rpartition("_")
    if sep and head and tail and "-" not in tail and all(
            re.fullmatch(r"[A-Za-z0-9]+-[A-Za-z0-9]+", part) for part in head.split("_")):
        return head
    return name


def derivative_name(prefix: str, suffix: str, ext: str = ".nii.gz") -> str:
    """``{prefix}_{suffix}{ext}``, e.g. ``sub-01_T1map.nii.gz``."""
    return f"{prefix}_{suffix}{ext}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_sidecar(path: str | os.PathLike, fields: Mapping[str, Any]) -> Path:
    """Write a JSON sidecar atomically (``.json`` beside the image)."""
    return atomic_write_text(path, json.dumps(dict(fields), indent=2, default=_jsonable) + "\n")
