"""Physics consistency: does the network's T1/T2* explain the measured fingerprint?

Per voxel, the correlation between the measured magnitude fingerprint ``m``
(the input series' frames) and the signal model's magnitude fingerprint
``f(T1, T2*, B1)`` of that slice's excitation slot at the network's T1 and
T2*, maximised over B1 on a grid (:data:`B1_GRID`)::

    c = max_B1  <f, m> / (||f|| ||m||)

as the dictionary matcher scores an atom (normalised inner product of
magnitudes, both non-negative, so ``c`` is in [0, 1]; M0 cancels, so the
series' intensity scale does not matter).  A value near 1 says the network's
maps reproduce the measurement; a lower one shows where the network
disagrees with the physics (a wrong T1 or T2*, an input unlike the training
data, a voxel the signal model does not describe: vessels, motion, partial
volume with CSF).  Only the voxels of a brain mask are scored.

The acquisition is slice-interleaved: each slice has its own slot, whose
timeline (:func:`mrfengine.dictionary.slot_timeline`) gives it its own
longitudinal magnetisation ``Mz(T1, B1)``.  The model is separable
(:mod:`mrfengine.dictionary.simulate`): ``f = |sin(B1 a_i) Mz_i(T1, B1)
exp(-TE_i / T2*)|``.  So per slot ``Mz`` is simulated once on a fine
geometric T1 table (:data:`T1_TABLE_STEP`, 1% steps from 20 to 5,000 ms, by
the :func:`~mrfengine.dictionary.longitudinal_magnetisation` recursion) for
every B1 of the grid, interpolated linearly in log T1 per voxel, and the T2*
factor is applied exactly.  Against simulating every voxel's fingerprint
exactly (:func:`~mrfengine.dictionary.fingerprints`), measured on the
paper's sequence: the correlation differs by less than 1e-6, and a whole
brain (240 x 240 x 60, 35 frames) takes seconds instead of minutes
(``benchmarks/README.md``).  The cached per-slot dictionaries (5% steps in T1
and T2*, B1 by 0.1) would be coarser in all three parameters for no gain:
the table above costs a few hundredths of a second per slot.

T1 and T2* outside the table (a network output clipped to 0) are taken at
its ends (T1 20 ms, T2* 1 ms).  The work runs slice by slice and in blocks of
voxels: memory is bounded by one slice's series and a block's fingerprints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..sequence import Sequence

__all__ = ["B1_GRID", "T1_TABLE_RANGE", "T1_TABLE_STEP", "T2STAR_FLOOR", "consistency_fields", "consistency_slice",
           "mz_table", "physics_consistency"]

B1_GRID = tuple(float(b) for b in np.round(np.arange(0.6, 1.4 + 1e-9, 0.05), 10))
"""B1 factors the correlation is maximised over: 0.6-1.4 by 0.05 (17 values), the
paper dictionary's range at half its step."""

T1_TABLE_RANGE = (20.0, 5000.0)
"""T1 span (ms) of the per-slot Mz table; 5,000 ms is the networks' clip."""

T1_TABLE_STEP = 0.01
"""Relative T1 step of the table (1%)."""

T2STAR_FLOOR = 1.0
"""Smallest T2* (ms) used; a T2* of 0 would give an all-zero fingerprint."""

_BLOCK = 4096  # voxels per block: (block, B1, frames) float32 temporaries of ~10 MB


def mz_table(sequence: Sequence, slot: int, b1: tuple[float, ...] = B1_GRID) -> tuple[np.ndarray, np.ndarray]:
    """``(log_t1, table)``: the slot's signal without T2*, ``sin(B1 a_i) Mz_i(T1, B1)``,
    on the geometric T1 table; ``table`` is (n_T1, n_B1, n_frames) float64."""
    from ..dictionary import geometric_range, longitudinal_magnetisation

    t1 = geometric_range(*T1_TABLE_RANGE, T1_TABLE_STEP)
    if t1[-1] < T1_TABLE_RANGE[1]:
        t1 = np.append(t1, T1_TABLE_RANGE[1])
    b = np.asarray(b1, dtype=np.float64)
    mz = longitudinal_magnetisation(sequence, slot, np.repeat(t1, b.size), np.tile(b, t1.size))
    fa = np.deg2rad(np.asarray(sequence.flip_angle_deg, dtype=np.float64))
    table = mz.reshape(t1.size, b.size, -1) * np.sin(b[None, :, None] * fa[None, None, :])
    return np.log(t1), table


def consistency_slice(series: np.ndarray, t1_ms: np.ndarray, t2star_ms: np.ndarray,
                      table: tuple[np.ndarray, np.ndarray], echo_time_ms: np.ndarray) -> np.ndarray:
    """Correlation of each voxel's fingerprint with the model's at its T1/T2*, best B1.

    Parameters
    ----------
    series : ndarray (n, frames)
        Measured magnitudes of ``n`` voxels.
    t1_ms, t2star_ms : ndarray (n,)
    table : from :func:`mz_table` for the voxels' slot
    echo_time_ms : ndarray (frames,)

    Returns
    -------
    ndarray (n,) float64 in [0, 1]; 0 where the measured fingerprint is all zero.
    """
    log_grid, tab = table
    tab = np.asarray(tab, dtype=np.float32)
    step = np.diff(tab, axis=0)
    n = series.shape[0]
    out = np.zeros(n)
    te = np.asarray(echo_time_ms, dtype=np.float64)
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        m = np.abs(np.asarray(series[a:b], dtype=np.float32))
        lt = np.log(np.clip(np.nan_to_num(np.asarray(t1_ms[a:b], np.float64), nan=T1_TABLE_RANGE[0]),
                            *T1_TABLE_RANGE))
        i = np.clip(np.searchsorted(log_grid, lt) - 1, 0, log_grid.size - 2)
        w = ((lt - log_grid[i]) / (log_grid[i + 1] - log_grid[i])).astype(np.float32)
        f = tab[i]  # (block, B1, frames), float32: the correlation to ~1e-7
        f += w[:, None, None] * step[i]
        t2 = np.maximum(np.nan_to_num(np.asarray(t2star_ms[a:b], np.float64), nan=T2STAR_FLOOR), T2STAR_FLOOR)
        f *= np.exp(-te[None, :] / t2[:, None]).astype(np.float32)[:, None, :]
        np.abs(f, out=f)
        dot = np.matmul(f, m[:, :, None])[..., 0].astype(np.float64)
        fnorm = np.sqrt(np.einsum("vbt,vbt->vb", f, f).astype(np.float64))
        mnorm = np.sqrt(np.einsum("vt,vt->v", m, m).astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"):
            c = dot / (fnorm * mnorm[:, None])
        out[a:b] = np.nan_to_num(c, nan=0.0, posinf=0.0).max(axis=1)
    return np.clip(out, 0.0, 1.0)


def physics_consistency(
    volume: Any,
    t1_ms: np.ndarray,
    t2star_ms: np.ndarray,
    sequence: Sequence,
    *,
    mask: np.ndarray | None = None,
    channel_axis: int = 1,
    first_slice: int = 0,
    b1: tuple[float, ...] = B1_GRID,
    outside: float = 0.0,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The physics-consistency map of a series and the network's T1/T2* (see the module docstring).

    Parameters
    ----------
    volume : array_like, (Z, C, Y, X) or (C, Z, Y, X)
        The measured MRF magnitudes, read a slice at a time (numpy, zarr).
    t1_ms, t2star_ms : ndarray (Z, Y, X)
        The network's maps in ms.
    sequence : Sequence
        The acquisition: slice ``first_slice + z`` has slot
        ``sequence.slot_of_slice(first_slice + z)``.
    mask : ndarray of bool (Z, Y, X), optional
        The voxels scored (the brain); default every voxel with signal.
    channel_axis : {1, 0}
        1 for (Z, C, Y, X), 0 for (C, Z, Y, X).
    first_slice : int
        Position of the volume's first slice in the acquisition.
    b1 : tuple of float
        B1 grid the correlation is maximised over.
    outside : float
        Value outside the mask (0, or NaN).
    progress : callable, optional
        Called with the slices done.

    Returns
    -------
    ndarray (Z, Y, X) float32 in [0, 1] inside the mask, ``outside`` elsewhere.

    Raises
    ------
    ValidationError
        Shapes that disagree, a frame count not the sequence's, slices beyond
        the sequence's, a bad B1 grid.
    """
    if channel_axis not in (0, 1):
        raise ValidationError(f"channel_axis must be 0 or 1; got {channel_axis!r}")
    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) != 4:
        raise ValidationError(f"the series must be 4D; got shape {shape}")
    n_frames, n_z = shape[channel_axis], shape[1 - channel_axis]
    zyx = (n_z,) + shape[2:]
    t1_ms, t2star_ms = np.asarray(t1_ms), np.asarray(t2star_ms)
    if t1_ms.shape != zyx or t2star_ms.shape != zyx:
        raise ValidationError(f"T1 {t1_ms.shape} and T2* {t2star_ms.shape} maps must have the series' slice "
                              f"shape {zyx}")
    if n_frames != sequence.n_measurements:
        raise ValidationError(f"the series has {n_frames} frames; sequence {sequence.name} records "
                              f"{sequence.n_measurements}")
    if not (0 <= first_slice and first_slice + n_z <= sequence.n_slices):
        raise ValidationError(f"{n_z} slices from slice {first_slice} do not fit sequence {sequence.name}'s "
                              f"{sequence.n_slices}")
    b1 = tuple(float(v) for v in np.atleast_1d(np.asarray(b1, dtype=np.float64)))
    if not b1 or not all(np.isfinite(v) and v > 0 for v in b1):
        raise ValidationError(f"the B1 grid must be positive finite factors; got {b1}")
    if mask is not None:
        mask = np.asarray(mask).astype(bool, copy=False)
        if mask.shape != zyx:
            raise ValidationError(f"the mask has shape {mask.shape}; the series' slices are {zyx}")
    te = np.asarray(sequence.echo_time_ms, dtype=np.float64)
    out = np.full(zyx, outside, dtype=np.float32)
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for z in range(n_z):
        slot = int(sequence.slot_of_slice(first_slice + z))
        plane = np.asarray(volume[z] if channel_axis == 1 else volume[:, z], dtype=np.float32)  # (C, Y, X)
        inside = mask[z] if mask is not None else np.any(plane != 0, axis=0)
        if inside.any():
            if slot not in tables:
                if len(tables) >= 4:  # slots repeat only with simultaneous multi-slice: keep a few
                    tables.pop(next(iter(tables)))
                tables[slot] = mz_table(sequence, slot, b1)
            series = np.nan_to_num(plane[:, inside].T)
            out[z][inside] = consistency_slice(series, t1_ms[z][inside], t2star_ms[z][inside], tables[slot], te)
        if progress is not None:
            progress(z + 1)
    return out


def consistency_fields(b1: tuple[float, ...] = B1_GRID, outside: float = 0.0) -> dict[str, object]:
    """What a physics-consistency map is, for a JSON sidecar or a stage's provenance."""
    return {
        "Description": "physics consistency: correlation (normalised inner product of magnitudes) of the measured "
                       "fingerprint with the signal model's at the network's T1 and T2*, maximised over B1",
        "Units": "1",
        "Method": "slot's longitudinal magnetisation on a geometric T1 table (linear in log T1), exact T2* factor, "
                  "max over the B1 grid",
        "B1Grid": list(b1),
        "T1TableStep": T1_TABLE_STEP,
        "T1TableRangeMs": list(T1_TABLE_RANGE),
        "OutsideBrain": outside if np.isfinite(outside) else "NaN",
    }
