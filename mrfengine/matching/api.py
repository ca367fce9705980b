"""``match``: dictionary matching of fingerprints, whatever the backend."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from .._validate import check_int, deprecated_alias
from ..backend import resolve
from ..errors import DictionaryError, ValidationError
from ..dictionary import Dictionary, SliceDictionaries
from ._cpp import best_atoms_cpp, best_atoms_separable_cpp
from ._group import best_atoms_group, build_groups, check_group_options, default_n_groups
from ._numpy import best_atoms_numpy
from ._separable import best_atoms_separable_xp, plan_separable

__all__ = ["MatchResult", "match", "match_slices", "BACKENDS", "METHODS"]

log = logging.getLogger(__name__)

BACKENDS = ("numpy", "cpp", "numba", "cupy", "numba-cuda")
METHODS = ("auto", "brute", "structured", "group")
_AUTO_ORDER = ("cupy", "numba-cuda", "cpp", "numba", "numpy")
_STRUCTURED = ("numpy", "cpp", "cupy")


@dataclass(frozen=True)
class MatchResult:
    """What :func:`match` found, one value per voxel.

    Every array has the shape of the signals without their frame axis.
    Voxels that were not matched (outside the mask, a NaN/Inf frame, or all
    frames zero) hold ``index == -1``, NaN parameters, ``m0 == 0`` and
    ``correlation == 0``; ``matched`` marks the others.

    Attributes
    ----------
    params : dict of str to ndarray
        The best atom's parameters (T1 and T2star in ms, B1 unitless for
        mrfengine's dictionaries); float arrays.
    m0 : ndarray
        Proton density: the least-squares scale ``<x, d> / <d, d>`` between
        the voxel ``x`` and its atom ``d`` (complex for complex data).  For
        real data it is signed: atoms are chosen by ``|<x, d>|``, so a signal
        anti-parallel to its atom (signed real fingerprints from other
        projects) gets a negative M0, consistent with ``x ~ m0 d``.  Magnitude
        data and non-negative atoms (MRF, mrfengine's dictionaries) give
        ``m0 >= 0``; the command line refuses negative magnitudes in its
        NIfTI input.
    correlation : ndarray, float32
        ``|<x, d>| / (|x| |d|)`` in [0, 1].
    index : ndarray, int64
        Row of the best atom in the dictionary, -1 where not matched.
    matched : ndarray, bool
    backend : str
        The backend that ran.
    rank : int or None
        SVD rank of the search, None for the full atoms.
    method : str
        ``"brute"``, ``"structured"`` or ``"group"``.
    info : dict
        Details of the search: for ``"group"``, ``n_groups``,
        ``scored_fraction`` (atom scores computed over those of brute
        force, centroids included) and ``exact``.
    """

    params: dict[str, np.ndarray]
    m0: np.ndarray
    correlation: np.ndarray
    index: np.ndarray
    matched: np.ndarray
    backend: str
    rank: int | None = None
    method: str = "brute"
    info: dict[str, object] = field(default_factory=dict)


def _resolve_backend(backend: str) -> str:
    # Every backend matches real and complex fingerprints alike.
    return resolve(backend, kernel="match", implemented=BACKENDS, auto=_AUTO_ORDER)


def _resolve_method(method: str, backend: str, dictionary: Dictionary, complex_data: bool, rank: int | None) -> str:
    if method not in METHODS:
        raise ValidationError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if method == "group":
        if backend != "numpy":
            raise ValidationError(f"method='group' runs on the numpy backend (BLAS); got backend {backend!r}")
        return method
    possible = dictionary.separable is not None and not complex_data and rank is None and backend in _STRUCTURED
    if method == "structured" and not possible:
        why = ("the dictionary has no separable factorisation" if dictionary.separable is None
               else "complex data" if complex_data else "an SVD rank was given" if rank is not None
               else f"backend {backend!r} has no structured search (use {', '.join(_STRUCTURED)})")
        raise ValidationError(f"method='structured' is not possible here: {why}")
    if method == "auto":
        return "structured" if possible else "brute"
    return method


def _frame_axis(shape: tuple[int, ...], channel_axis: int, n_frames: int) -> int:
    """``channel_axis`` checked against the signals' shape and the dictionary, as an index >= 0."""
    if not -len(shape) <= channel_axis < len(shape):
        raise ValidationError(f"channel_axis {channel_axis} is out of range for signals of shape {shape}")
    channel_axis %= len(shape)
    if shape[channel_axis] != n_frames:
        raise ValidationError(
            f"signals must have {n_frames} frames (the dictionary's) along axis {channel_axis}; got shape {shape}"
        )
    return channel_axis


def _prepare(signals: ArrayLike, n_frames: int, channel_axis: int, mask: ArrayLike | None, invalid: str):
    x = np.asarray(signals)
    if x.ndim == 0:
        raise ValidationError("signals must have a frame axis; got a scalar")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValidationError(f"signals must be numeric; got dtype {x.dtype}")
    x = np.moveaxis(x, _frame_axis(x.shape, channel_axis, n_frames), -1)
    spatial = x.shape[:-1]
    flat = x.reshape(-1, n_frames)
    if not np.iscomplexobj(flat) and flat.dtype not in (np.float32, np.float64):
        flat = flat.astype(np.float32)
    if mask is None:
        use = np.ones(flat.shape[0], dtype=bool)
    else:
        m = np.asarray(mask)
        if m.shape != spatial:
            raise ValidationError(f"mask must have the signals' spatial shape {spatial}; got {m.shape}")
        use = m.astype(bool).reshape(-1)
    finite = np.isfinite(flat).all(axis=1)
    nonzero = np.any(flat != 0, axis=1)
    bad_finite = int((use & ~finite).sum())
    bad_zero = int((use & finite & ~nonzero).sum())
    if bad_finite or bad_zero:
        msg = f"{bad_finite} voxel(s) with NaN/Inf frames and {bad_zero} all-zero voxel(s)"
        if invalid == "raise":
            raise ValidationError(f"signals contain {msg}; mask them or pass invalid='mask'")
        log.warning("match: %s left unmatched (index -1, NaN parameters)", msg)
    return flat, spatial, use & finite & nonzero


def match(
    signals: ArrayLike,
    dictionary: Dictionary,
    *,
    channel_axis: int = -1,
    mask: ArrayLike | None = None,
    backend: Literal["auto", "numpy", "cpp", "numba", "cupy", "numba-cuda"] | str = "auto",
    method: Literal["auto", "brute", "structured", "group"] = "auto",
    rank: int | None = None,
    chunk: int | None = None,
    invalid: Literal["mask", "raise"] = "mask",
    n_threads: int = 0,
    axis: int | None = None,
    n_groups: int | None = None,
    group_top: int | None = None,
) -> MatchResult:
    """Match fingerprints to a dictionary by the largest normalised inner product.

    Parameters
    ----------
    signals : array_like or dask array, (..., n_frames) by default
        Magnitude (real) or complex fingerprints, any leading shape.  A dask
        array is matched chunk by chunk, lazily: the result then holds dask
        arrays (real data only).
    dictionary : Dictionary
        Any dictionary: mrfengine's or one simulated elsewhere.
    channel_axis : int
        The frame axis of ``signals`` (scikit-image's name for the axis that
        is not spatial).
    mask : array_like of bool, optional
        Spatial shape (``signals`` without ``channel_axis``); False voxels
        are skipped.
    backend : {"auto", "numpy", "cpp", "numba", "cupy", "numba-cuda"}
        ``auto`` picks the fastest available (GPU, then C++, then Numba, then
        numpy; logged); an unavailable explicit choice raises
        :class:`~mrfengine.errors.BackendUnavailableError`.  Complex data
        run on ``numpy`` only.
    method : {"auto", "brute", "structured"}
        ``brute`` scores every atom (exact up to float32 rounding in the
        compiled backends, float64 with a float64 dictionary on ``numpy``).
        ``structured`` exploits a separable dictionary (mrfengine's own:
        atoms = f(T1, B1) x exp(-TE/T2*)): low-rank T2* decays and a
        coarse-to-fine search, several times fewer FLOPs at the accuracy of
        brute force (see :mod:`mrfengine.matching._separable`); backends
        numpy, cpp and cupy.  ``auto`` uses ``structured`` where possible.
        ``group`` clusters the atoms (cached on the dictionary) and scores
        only the clusters whose exact upper bound can still win: the atom
        of ``brute`` on the same search space (real or complex, with or
        without ``rank``), a small fraction of the atoms scored (see
        :mod:`mrfengine.matching._group`); numpy backend (``auto`` picks it).
    rank : int, optional
        Search in the rank-``rank`` SVD compression of the dictionary (see
        :meth:`Dictionary.compress`); the winner's correlation and M0 are
        then recomputed with the full atom.  None searches the full atoms.
    chunk : int, optional
        Voxels per block of the numpy backend (bounds its memory).
    invalid : {"mask", "raise"}
        What to do with voxels that have a NaN/Inf frame or are all zero:
        leave them unmatched (logged) or raise.
    n_threads : int
        Threads of the C++ backend; 0 uses all cores.
    axis : int, optional
        Deprecated name of ``channel_axis`` (a DeprecationWarning).
    n_groups : int, optional
        ``method="group"``: clusters of atoms; default about
        ``sqrt(n_atoms)``.
    group_top : int, optional
        ``method="group"``: None (default) is exact; ``k`` scores only the
        ``k`` clusters with the highest bounds (Cauley et al. 2015), faster
        and approximate (measured loss in ``benchmarks/README.md``).

    Returns
    -------
    MatchResult
        T1/T2star in ms (``params``), M0, correlation, atom index.

    Notes
    -----
    Scale: each voxel is scaled by a power of two to unit size before the
    search (exact), so ``match(a * x)`` gives the parameters, index and
    correlation of ``match(x)`` and ``a`` times its M0, for any ``a`` that
    keeps ``a * x`` a normal float (1e-37 to 1e38 in float32).

    Raises
    ------
    ValidationError
        Wrong frame count, mask shape, non-numeric data, invalid voxels
        with ``invalid="raise"``, or an M0 beyond the float32 range.
    BackendUnavailableError
        An explicitly requested backend cannot run here.

    References
    ----------
    Ma D. et al., Magnetic resonance fingerprinting. Nature 495:187 (2013).
    McGivney D.F. et al., SVD compression for MRF. IEEE TMI 33:2311 (2014).
    Cauley S.F. et al., Fast group matching for MRF. Magn Reson Med 74:523 (2015).
    """
    channel_axis = deprecated_alias(channel_axis, axis, name="channel_axis", alias="axis", default=-1, where="match")
    if not isinstance(dictionary, Dictionary):
        raise ValidationError(f"dictionary must be a mrfengine.Dictionary; got {type(dictionary).__name__}")
    if type(signals).__module__.split(".")[0] == "dask":
        return _match_dask(signals, dictionary, channel_axis=channel_axis, mask=mask, backend=backend, method=method, rank=rank,
                           chunk=chunk, invalid=invalid, n_threads=n_threads, n_groups=n_groups,
                           group_top=group_top)
    if invalid not in ("mask", "raise"):
        raise ValidationError(f"invalid must be 'mask' or 'raise'; got {invalid!r}")
    if chunk is not None:
        chunk = check_int(chunk, "chunk")
    check_group_options(n_groups, group_top, dictionary.n_atoms)
    if (n_groups is not None or group_top is not None) and method != "group":
        raise ValidationError(f"n_groups and group_top apply to method='group' only; got method={method!r}")
    if method == "group" and backend not in ("auto", "numpy"):
        raise ValidationError(f"method='group' runs on the numpy backend (BLAS); got backend {backend!r}")
    flat, spatial, valid = _prepare(signals, dictionary.n_frames, channel_axis, mask, invalid)
    complex_data = np.iscomplexobj(flat) or np.iscomplexobj(dictionary.atoms)
    name = _resolve_backend("numpy" if method == "group" and backend == "auto" else backend)
    how = _resolve_method(method, name, dictionary, complex_data, rank)
    comp = dictionary.compress(rank) if rank is not None else None

    x = flat[valid]
    if complex_data:
        x = x.astype(np.complex128 if x.dtype == np.complex128 else np.complex64, copy=False)
    elif x.dtype != dictionary.dtype:
        x = x.astype(np.result_type(x.dtype, dictionary.dtype), copy=False)
    x, shift = _unit_scale(x)
    info: dict[str, object] = {}
    if how == "structured":
        best = _run_structured(name, x, dictionary, n_threads=n_threads)
    elif how == "group":
        best, info = _run_group(x, dictionary, comp, rank, n_groups=n_groups, top=group_top, chunk=chunk)
    else:
        search_x = x if comp is None else x @ comp.basis
        search_atoms = dictionary.normalized if comp is None else comp.atoms
        best = _run_backend(name, search_x, search_atoms, chunk=chunk, n_threads=n_threads)

    # Exact rescoring of the winner with the full atom, in float64.
    dn = dictionary.normalized[best]
    ip = np.einsum("ij,ij->i", x.astype(np.complex128 if complex_data else np.float64), dn.conj())
    xnorm = np.linalg.norm(x.astype(np.complex128 if complex_data else np.float64), axis=1)
    corr = np.abs(ip) / xnorm
    m0 = np.ldexp(1.0, shift) * (ip / dictionary.norms[best])
    m0_dtype = np.complex64 if complex_data else np.float32
    with np.errstate(over="ignore"):
        big = ~np.isfinite(m0.astype(m0_dtype))
    if big.any():
        raise ValidationError(
            f"M0 of {int(big.sum())} voxel(s) exceeds the float32 range (signals near the largest float32 "
            "against atoms of norm below 1); rescale the signals"
        )

    n = flat.shape[0]
    index = np.full(n, -1, dtype=np.int64)
    index[valid] = best
    correlation = np.zeros(n, dtype=np.float32)
    correlation[valid] = corr
    m0_out = np.zeros(n, dtype=np.complex64 if complex_data else np.float32)
    m0_out[valid] = m0
    params = {}
    for pname, values in dictionary.params.items():
        dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
        out = np.full(n, np.nan, dtype=dtype)
        out[valid] = values[best]
        params[pname] = out.reshape(spatial)
    return MatchResult(
        params=params,
        m0=m0_out.reshape(spatial),
        correlation=correlation.reshape(spatial),
        index=index.reshape(spatial),
        matched=valid.reshape(spatial),
        backend=name,
        rank=None if comp is None else comp.rank,
        method=how,
        info=info,
    )


def _run_group(x: np.ndarray, dictionary: Dictionary, comp, rank: int | None, *, n_groups: int | None,
               top: int | None, chunk: int | None) -> tuple[np.ndarray, dict[str, object]]:
    """Group (cluster-pruned) search; the clusters are cached on the dictionary per (rank, n_groups)."""
    atoms = dictionary.normalized if comp is None else comp.atoms
    g = default_n_groups(dictionary.n_atoms) if n_groups is None else int(n_groups)
    key = f"group:{rank}:{g}"
    groups = dictionary._cache.get(key)
    if groups is None:
        groups = dictionary._cache[key] = build_groups(atoms, g)
    search_x = x if comp is None else x @ comp.basis
    if x.shape[0] == 0:
        return np.empty(0, dtype=np.int64), {"n_groups": groups.n_groups, "scored_fraction": 0.0, "exact": top is None}
    best, scored = best_atoms_group(search_x, groups, top=top, chunk=chunk)
    frac = scored / (x.shape[0] * dictionary.n_atoms)
    return best, {"n_groups": groups.n_groups, "scored_fraction": frac, "exact": top is None}


def _unit_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``x`` scaled by a power of two to a largest magnitude in [0.5, 1).

    Exact (a power of two), and the best atom of a row does not depend on its
    scale, so matching is scale-equivariant over the whole float range: the
    backends' float32 inner products neither overflow (signals near 1e38) nor
    lose bits to subnormals (near 1e-38).  Returns the scaled rows and each
    row's exponent (``x = scaled * 2**shift``).
    """
    if x.shape[0] == 0:
        return x, np.zeros(0, dtype=np.int64)
    if np.iscomplexobj(x):
        peak = np.maximum(np.abs(x.real).max(axis=1), np.abs(x.imag).max(axis=1))
    else:
        peak = np.maximum(x.max(axis=1), -x.min(axis=1))  # no data-sized temporary
    shift = np.frexp(peak)[1].astype(np.int64)
    if not shift.any():
        return x, shift
    out = np.empty_like(x)
    e = -shift[:, None]
    if np.iscomplexobj(x):
        np.ldexp(x.real, e, out=out.real)
        np.ldexp(x.imag, e, out=out.imag)
    else:
        np.ldexp(x, e, out=out)
    return out, shift


def _run_backend(name: str, x: np.ndarray, atoms: np.ndarray, *, chunk: int | None, n_threads: int) -> np.ndarray:
    if x.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    if name == "cpp":
        return best_atoms_cpp(x, atoms, n_threads=n_threads)
    if name == "numba":
        from ._numba import best_atoms_numba

        return best_atoms_numba(x, atoms)
    if name == "cupy":
        import cupy

        from ._gpu import best_atoms_gemm_xp

        return best_atoms_gemm_xp(x, atoms, cupy, chunk=chunk)
    if name == "numba-cuda":
        from ._gpu import best_atoms_numba_cuda

        return best_atoms_numba_cuda(x, atoms)
    return best_atoms_numpy(x, atoms, chunk=chunk)


def _run_structured(name: str, x: np.ndarray, dictionary: Dictionary, *, n_threads: int) -> np.ndarray:
    if x.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    plan = plan_separable(dictionary)
    xs = np.ascontiguousarray(x, dtype=np.float32)
    if name == "cpp":
        best = best_atoms_separable_cpp(xs, plan, n_threads=n_threads)
    elif name == "cupy":
        import cupy

        best = cupy.asnumpy(best_atoms_separable_xp(cupy.asarray(xs), plan, cupy))
    else:
        best = best_atoms_separable_xp(xs, plan, np)
    holes = best < 0  # no atom scored above zero (possible only for odd, signed data)
    if holes.any():
        best[holes] = best_atoms_numpy(x[holes], dictionary.normalized)
    return best


def _match_dask(signals, dictionary: Dictionary, *, channel_axis: int, mask, **options) -> MatchResult:
    """``match`` over a dask array, chunk by chunk; fields come back as dask arrays."""
    import dask.array as da

    x = signals
    frames = _frame_axis(tuple(x.shape), channel_axis, dictionary.n_frames)
    if np.iscomplexobj(np.empty(0, dtype=x.dtype)):
        raise ValidationError("dask signals must be real; compute complex data in memory")
    x = da.moveaxis(x, frames, -1).rechunk({x.ndim - 1: -1})
    names = list(dictionary.params)
    n_fields = len(names) + 4
    if mask is None:
        m = da.ones(x.shape[:-1] + (1,), dtype=bool, chunks=x.chunks[:-1] + ((1,),))
    else:
        m = da.asarray(mask)
        if m.shape != x.shape[:-1]:
            raise ValidationError(f"mask must have the signals' spatial shape {x.shape[:-1]}; got {m.shape}")
        m = m.astype(bool)[..., None].rechunk(x.chunks[:-1] + ((1,),))

    def block(xb: np.ndarray, mb: np.ndarray) -> np.ndarray:
        r = match(xb, dictionary, channel_axis=-1, mask=mb[..., 0], **options)
        fields = [r.params[k] for k in names] + [r.m0, r.correlation, r.index, r.matched]
        return np.stack([np.asarray(f, dtype=np.float64) for f in fields], axis=-1)

    packed = da.map_blocks(block, x, m, dtype=np.float64, chunks=x.chunks[:-1] + ((n_fields,),))
    k = len(names)
    name = _resolve_backend(options["backend"])
    return MatchResult(
        params={n: packed[..., i] for i, n in enumerate(names)},
        m0=packed[..., k].astype(np.float32),
        correlation=packed[..., k + 1].astype(np.float32),
        index=packed[..., k + 2].astype(np.int64),
        matched=packed[..., k + 3].astype(bool),
        backend=name,
        rank=options["rank"],
        method=options["method"],
    )


def match_slices(
    signals: ArrayLike,
    dictionaries: SliceDictionaries | Sequence[Dictionary] | Callable[[int], Dictionary],
    *,
    slice_axis: int,
    channel_axis: int = -1,
    mask: ArrayLike | None = None,
    backend: str = "auto",
    method: Literal["auto", "brute", "structured", "group"] = "auto",
    rank: int | None = None,
    chunk: int | None = None,
    invalid: Literal["mask", "raise"] = "mask",
    n_threads: int = 0,
    progress: Callable[[int], None] | None = None,
    axis: int | None = None,
    n_groups: int | None = None,
    group_top: int | None = None,
) -> MatchResult:
    """Match a volume slice by slice, each slice against its own dictionary.

    Parameters
    ----------
    signals : array_like
        E.g. (X, Y, Z, T) with ``slice_axis=2``, ``channel_axis=-1``.
    dictionaries : SliceDictionaries, list of Dictionary, or callable
        The dictionary of slice position ``z``: ``dictionaries.for_slice(z)``,
        ``dictionaries[z]`` or ``dictionaries(z)``.  All must share
        parameter names and frame count.
    slice_axis : int
        Axis of ``signals`` along which slice positions run (0-based
        positions, as the sequence numbers them).
    progress : callable, optional
        Called with the number of slices done after each slice.

    Other parameters are those of :func:`match` (``axis``: the deprecated
    name of ``channel_axis``).
    """
    axis = deprecated_alias(channel_axis, axis, name="channel_axis", alias="axis", default=-1,
                            where="match_slices")
    x = np.asarray(signals)
    for name, ax in (("slice_axis", slice_axis), ("channel_axis", axis)):
        if not -x.ndim <= ax < x.ndim:
            raise ValidationError(f"{name} {ax} is out of range for signals of shape {x.shape}")
    slice_axis %= x.ndim
    axis %= x.ndim
    if slice_axis == axis:
        raise ValidationError("slice_axis and channel_axis (frames) must differ")
    if isinstance(dictionaries, SliceDictionaries):
        get = dictionaries.for_slice
        if x.shape[slice_axis] != dictionaries.sequence.n_slices:
            raise ValidationError(
                f"signals have {x.shape[slice_axis]} slices along axis {slice_axis}, but the sequence "
                f"{dictionaries.sequence.name!r} has {dictionaries.sequence.n_slices}"
            )
    elif callable(dictionaries):
        get = dictionaries
    else:
        seq = list(dictionaries)
        if len(seq) != x.shape[slice_axis]:
            raise ValidationError(
                f"got {len(seq)} dictionaries for {x.shape[slice_axis]} slices along axis {slice_axis}"
            )
        get = seq.__getitem__
    # Frames last, slices first: each slice is then one contiguous block.
    moved = np.moveaxis(x, (slice_axis, axis), (0, -1))
    spatial_moved = moved.shape[:-1]
    m = None
    if mask is not None:
        m = np.asarray(mask)
        expect = tuple(s for i, s in enumerate(x.shape) if i != axis)
        if m.shape != expect:
            raise ValidationError(f"mask must have the signals' spatial shape {expect}; got {m.shape}")
        sa = slice_axis if slice_axis < axis else slice_axis - 1
        m = np.moveaxis(m, sa, 0)
    results = []
    names: tuple[str, ...] | None = None
    for z in range(moved.shape[0]):
        d = get(z)
        if names is None:
            names = tuple(d.params)
        elif tuple(d.params) != names:
            raise DictionaryError(f"dictionary of slice {z} has parameters {tuple(d.params)}, expected {names}")
        results.append(
            match(moved[z], d, channel_axis=-1, mask=None if m is None else m[z], backend=backend, method=method,
                  rank=rank, chunk=chunk, invalid=invalid, n_threads=n_threads, n_groups=n_groups,
                  group_top=group_top)
        )
        if progress is not None:
            progress(z + 1)
    sa = slice_axis if slice_axis < axis else slice_axis - 1

    def stack(arrs: list[np.ndarray]) -> np.ndarray:
        return np.moveaxis(np.stack(arrs).reshape(spatial_moved), 0, sa)

    return MatchResult(
        params={k: stack([r.params[k] for r in results]) for k in (names or ())},
        m0=stack([r.m0 for r in results]),
        correlation=stack([r.correlation for r in results]),
        index=stack([r.index for r in results]),
        matched=stack([r.matched for r in results]),
        backend=results[0].backend if results else "none",
        rank=results[0].rank if results else rank,
        method=results[0].method if results else method,
    )
