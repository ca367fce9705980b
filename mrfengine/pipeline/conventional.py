"""Dictionary matching of one volume: what ``mrfengine match`` and the batch's ``match`` stage share.

Both match a series slice by slice against the dictionary of each slice's
excitation slot and differ only in where the series comes from and where the
maps go (a NIfTI file, :func:`mrfengine.pipeline.match_nifti`; a subject or a
slab of it in a cohort store, :mod:`mrfengine.pipeline.stages`).  Here, once:

* :func:`match_volume`: the slices (a whole volume, or a slab that starts at
  plane ``z0``) matched with :func:`mrfengine.matching.match_slices`, and the
  run's record (backend, method, rank, sequence and dictionary digests,
  matched voxels);
* :func:`match_maps`: the maps as they are written -- T1, T2* (ms), B1, M0
  (its magnitude) and the match correlation, float32, 0 in every voxel that
  was not matched (outside the mask, a NaN/Inf frame, all frames zero: the
  rule for voxels without an estimate,
  :func:`mrfengine.masking.fill_not_estimated`);
* :func:`match_sidecar_fields`: the record under its sidecar names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..masking import fill_not_estimated

__all__ = ["MATCH_ARRAYS", "match_maps", "match_sidecar_fields", "match_volume"]

#: The maps of dictionary matching, by the names the store and the registry use
#: (:data:`mrfengine.maps.MATCH_MAPS`).
MATCH_ARRAYS = ("T1", "T2star", "B1", "M0", "correlation")

#: The record's key -> the sidecar's key.
_SIDECAR_NAMES = {
    "sequence": "Sequence",
    "sequence_digest": "SequenceDigest",
    "backend": "MatchingBackend",
    "method": "MatchingMethod",
    "rank": "SVDRank",
    "n_matched": "MatchedVoxels",
}


def match_volume(volume: Any, dictionaries, *, slice_axis: int, axis: int, z0: int = 0, mask: Any = None,
                 backend: str = "auto", method: str = "auto", rank: int | None = None, n_threads: int = 0,
                 progress: Callable[[int], None] | None = None):
    """Match every slice of a volume against its slot's dictionary.

    Parameters
    ----------
    volume : ndarray
        Magnitudes with a frame axis (``axis``) and a slice axis (``slice_axis``).
    dictionaries : SliceDictionaries
        The sequence's per-slot dictionaries (:class:`mrfengine.dictionary.SliceDictionaries`).
    slice_axis, axis : int
        Where the slices and the frames are.
    z0 : int
        Position of the volume's first slice in the acquisition (a slab's offset).
    mask : array_like of bool, optional
        Voxels to match (the shape of ``volume`` without its frame axis).
    backend, method, rank, n_threads
        As :func:`mrfengine.matching.match_slices`.
    progress : callable, optional
        Called once per slice matched.

    Returns
    -------
    result : MatchResult
    info : dict
        ``backend``, ``method``, ``rank``, ``sequence``, ``sequence_digest``,
        ``dictionary_digests`` (slot -> digest, of the slots the volume holds)
        and ``n_matched`` (JSON-compatible; a store's provenance).

    Raises
    ------
    ValidationError
        Slices that do not fit the sequence.
    """
    from ..matching import match_slices

    sequence = dictionaries.sequence
    n = volume.shape[slice_axis]
    z0 = int(z0 or 0)
    if z0 == 0 and n == sequence.n_slices:
        per_slice = dictionaries  # checks the slice count itself
    else:
        if not 0 <= z0 <= sequence.n_slices - n:
            raise ValidationError(f"a slab of {n} planes at plane {z0} does not fit the sequence's "
                                  f"{sequence.n_slices} slices")

        def per_slice(z: int):
            return dictionaries.for_slice(z0 + z)
    result = match_slices(volume, per_slice, slice_axis=slice_axis, channel_axis=axis, mask=mask, n_threads=n_threads,
                          backend=backend, method=method, rank=rank, progress=progress)
    slots = sorted({sequence.slot_of_slice(z0 + z) for z in range(n)})
    info = {"backend": result.backend, "method": result.method, "rank": result.rank, "sequence": sequence.name,
            "sequence_digest": sequence.digest(),
            "dictionary_digests": {str(slot): dictionaries[slot].digest for slot in slots},
            "n_matched": int(np.count_nonzero(result.matched))}
    return result, info


def match_maps(result) -> dict[str, np.ndarray]:
    """The maps of a :class:`~mrfengine.matching.MatchResult` as mrfengine writes them.

    Returns
    -------
    dict of str to ndarray, float32
        :data:`MATCH_ARRAYS`: ``T1`` and ``T2star`` in ms, ``B1``, ``M0`` (its
        magnitude, arbitrary units) and ``correlation``; every one 0 where the
        voxel was not matched (:func:`mrfengine.masking.fill_not_estimated`),
        never NaN.
    """
    maps = {"T1": result.params["T1"], "T2star": result.params["T2star"], "B1": result.params["B1"],
            "M0": np.abs(result.m0), "correlation": result.correlation}
    return fill_not_estimated(maps, result.matched)


def match_sidecar_fields(info: dict[str, Any]) -> dict[str, Any]:
    """:func:`match_volume`'s record under its sidecar names (``Sequence``, ``SequenceDigest``,
    ``MatchingBackend``, ``MatchingMethod``, ``SVDRank``, ``MatchedVoxels``)."""
    return {name: info[key] for key, name in _SIDECAR_NAMES.items()}
