"""BIDS-style derivative names and JSON sidecars.

Quantitative maps follow the BIDS qMRI conventions: ``T1map`` and
``T2starmap`` in seconds, ``TB1map`` (B1+ as a fraction of nominal),
``M0map`` in arbitrary units.  Names and units come from the map registry
(:mod:`mrfengine.maps`): :data:`MAP_SPECS` for dictionary matching's maps,
:func:`output_file_spec` and :func:`uncertainty_file_spec` for a network's.

Every map's sidecar follows one schema, :func:`map_sidecar` (the keys of
:data:`SIDECAR_KEYS` first, then what the method records about itself).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..errors import ValidationError
from ..maps import MATCH_MAPS

__all__ = ["CONSISTENCY_SUFFIX", "MAP_SPECS", "MASK_SUFFIX", "SIDECAR_KEYS", "derivative_name", "entity_prefix",
           "map_sidecar", "output_file_spec", "uncertainty_file_spec", "write_sidecar"]

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


MASK_SUFFIX = "desc-brain_mask"
"""File suffix of a brain mask written beside the maps (BIDS derivatives' ``desc-brain_mask``)."""

CONSISTENCY_SUFFIX = "desc-physicsconsistency_map"
"""File suffix of the physics-consistency map (:mod:`mrfengine.nn.consistency`)."""


def output_file_spec(name: str, unit: str) -> tuple[str, str, float]:
    """BIDS-style ``(suffix, unit, scale)`` of a network output: ``T1`` and
    ``T2star`` as ``T1map``/``T2starmap`` in seconds, probabilities as
    ``label-<name>_probseg``, anything else as ``desc-<name>_map`` in its unit
    (names and units from the map registry, :data:`mrfengine.maps.NETWORK_MAPS`)."""
    from ..maps import DIMENSIONLESS, NETWORK_MAPS, MapSpec

    spec = NETWORK_MAPS.get(name)
    if spec is not None and spec.kind == "quantitative" and unit == spec.unit:
        return spec.bids_name(), spec.bids_unit, spec.scale_to_bids
    if unit == DIMENSIONLESS:
        spec = MapSpec(name, DIMENSIONLESS, "", "probability", "probseg", bids_label=name)
        return spec.bids_name(), spec.bids_unit, spec.scale_to_bids
    return f"desc-{name}_map", unit, 1.0


def uncertainty_file_spec(name: str, unit: str) -> tuple[str, str, float]:
    """:func:`output_file_spec` of an output's Monte-Carlo dropout uncertainty:
    ``desc-uncertainty`` added (``desc-uncertainty_T1map`` in seconds,
    ``label-lesion_desc-uncertainty_probseg``, ``desc-Xuncertainty_map``)."""
    suffix, bids_unit, scale = output_file_spec(name, unit)
    if suffix.startswith("desc-"):
        desc, _, rest = suffix.partition("_")
        return f"{desc}uncertainty_{rest}", bids_unit, scale
    head, sep, rest = suffix.rpartition("_")
    return (f"{head}_desc-uncertainty_{rest}" if sep else f"desc-uncertainty_{suffix}"), bids_unit, scale


SIDECAR_KEYS = ("Description", "Units", "Sources", "Source", "GeneratedBy", "mrfengine_version", "BrainMask",
                "BrainMaskSource", "OutsideBrainValue")
"""The keys every map sidecar starts with, in this order (:func:`map_sidecar`)."""


def map_sidecar(
    description: str,
    units: str,
    *,
    sources: Iterable[str | os.PathLike],
    outside: Mapping[str, Any] | None,
    generated_by: str = "",
    generated_version: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of a map's JSON sidecar: the one schema of every map mrfengine writes.

    Parameters
    ----------
    description : str
        What the map is (BIDS ``Description``).
    units : str
        Its unit as stored in the file (BIDS ``Units``: ``s``, ``1``, ``arbitrary``).
    sources : iterable of str or path
        What it was computed from (BIDS derivatives' ``Sources``): file names
        (``sub-01_mrf.nii.gz``) or store arrays (``cohort.zarr:sub-01/mrf``).
    outside : mapping or None
        :func:`mrfengine.masking.outside_rule_fields` of the map (which brain
        mask it is 0 outside of, or none); None for a file that is no
        estimate (a brain mask itself), which then carries no such fields.
    generated_by : str
        What made it, for ``GeneratedBy``'s ``Description`` (e.g. ``U-net
        MSE-5``, ``dictionary matching``, ``pipeline match: match -> write``).
    generated_version : str, optional
        The mrfengine version that computed the map, for ``GeneratedBy``'s
        ``Version`` when it is not the one writing the file (an export of maps
        a batch stored earlier); ``mrfengine_version`` is always the writer's.
    provenance : mapping, optional
        The method's own record (model, sequence, backend, ...), after the
        schema's keys; none of them may be one of :data:`SIDECAR_KEYS`.

    Returns
    -------
    dict
        :data:`SIDECAR_KEYS` in order -- ``Description``, ``Units``,
        ``Sources`` (a list), ``Source`` (the first source's name, the key
        ``mrfengine predict`` and ``match`` have always written),
        ``GeneratedBy`` (``[{"Name": "mrfengine", "Version", "Description"}]``),
        ``mrfengine_version``, and for an estimate ``BrainMask``,
        ``BrainMaskSource``, ``OutsideBrainValue`` -- then ``provenance``.

    Raises
    ------
    ValidationError
        No source, ``outside`` without the outside rule's three keys, or a
        provenance key that is a schema key.
    """
    from .. import __version__

    names = [Path(s).name if isinstance(s, Path) else str(s) for s in sources]
    if not names:
        raise ValidationError("a map's sidecar needs at least one source")
    tool: dict[str, Any] = {"Name": "mrfengine", "Version": generated_version or __version__}
    if generated_by:
        tool["Description"] = generated_by
    fields: dict[str, Any] = {"Description": str(description), "Units": str(units), "Sources": names,
                              "Source": names[0], "GeneratedBy": [tool], "mrfengine_version": __version__}
    if outside is not None:
        rule = SIDECAR_KEYS[-3:]
        if set(outside) != set(rule):
            raise ValidationError(f"the outside rule's sidecar fields are {list(rule)}; got {sorted(outside)}")
        fields.update({key: outside[key] for key in rule})
    clash = sorted(set(provenance or {}) & set(SIDECAR_KEYS))
    if clash:
        raise ValidationError(f"provenance keys {clash} are keys of the sidecar schema")
    fields.update(provenance or {})
    return fields
