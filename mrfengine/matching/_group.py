"""Group matching: cluster the atoms, score the clusters, and skip those that cannot win.

Large dictionaries are smooth: neighbouring atoms (a 2 % step in T1 or T2*)
correlate above 0.999, so a few hundred clusters of atoms, each with a unit
*centroid*, cover the dictionary.  For a voxel ``x`` and a cluster ``g`` with
centroid ``c`` and angular radius ``rho_g`` (the largest angle between ``c``
and a member atom), every member ``d`` satisfies

    |<x, d>| <= ||x|| ||d||_max,g  cos(max(0, theta(x, c) - rho_g)),

with ``theta(x, c) = arccos(|<x, c>| / ||x||)``: the angle between the
lines through ``x`` and ``c`` (the Fubini-Study distance, for real and for
complex vectors) obeys the triangle inequality.  The exact search scores every
centroid, scores the atoms of the cluster with the highest bound, then visits
only the clusters whose bound reaches the best score found so far: the same
atom as brute force (``numpy.argmax`` ties included), a small fraction of the
atoms scored.  The approximate mode (``top=k``) scores only the ``k`` clusters
with the highest bounds, as in Cauley et al.'s group matching; its loss is
measured in ``benchmarks/bench_group_match.py``.

The clustering is a spherical k-means on the normalised search atoms (full or
SVD-compressed), phase-aligned for complex atoms; it affects only the speed,
never the exact result.  It is cached on the dictionary.

References
----------
Cauley S.F. et al., Fast group matching for MR fingerprinting reconstruction.
Magn Reson Med 74:523 (2015).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import ValidationError

__all__ = ["AtomGroups", "best_atoms_group", "build_groups", "check_group_options", "default_n_groups"]


@dataclass(frozen=True)
class AtomGroups:
    """Atoms clustered for :func:`best_atoms_group`.

    Attributes
    ----------
    atoms : ndarray, (K, T)
        The search atoms reordered group by group (contiguous per group).
    order : ndarray of int64, (K,)
        Row of the original dictionary of each reordered atom (ascending
        within a group).
    starts : ndarray of int64, (G + 1,)
        Group ``g`` holds rows ``starts[g]:starts[g + 1]`` of ``atoms``.
    centroids : ndarray, (G, T)
        Unit centroids, float64 (complex128 for complex atoms).
    radius : ndarray, (G,)
        Largest angle (radians) between a centroid's line and a member's.
    max_norm : ndarray, (G,)
        Largest norm of a member (1 for normalised atoms; less after SVD
        compression).
    """

    atoms: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    centroids: np.ndarray
    radius: np.ndarray
    max_norm: np.ndarray

    @property
    def n_groups(self) -> int:
        return self.centroids.shape[0]


def default_n_groups(n_atoms: int) -> int:
    """Groups for ``n_atoms`` atoms: about ``sqrt(n_atoms)`` (centroid and member work balanced)."""
    return int(max(1, min(n_atoms, round(np.sqrt(n_atoms)))))


def _align(a: np.ndarray, c: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row of ``a`` times the unit phase (sign for real) that makes ``<a, c[label]>`` real >= 0."""
    w = np.einsum("ij,ij->i", a, c[labels].conj())
    if np.iscomplexobj(w):
        mag = np.abs(w)
        phase = np.where(mag > 0, w.conj() / np.where(mag > 0, mag, 1.0), 1.0)
    else:
        phase = np.where(w < 0, -1.0, 1.0)
    return a * phase[:, None]


def build_groups(atoms: np.ndarray, n_groups: int, *, iterations: int = 8, seed: int = 0) -> AtomGroups:
    """Cluster ``atoms`` (rows) into at most ``n_groups`` groups by spherical k-means.

    Distances are angles between lines (``|<a, c>|``), so an atom and its
    negative (or a complex atom times any phase) fall in the same group.
    Empty groups are dropped.  Deterministic for a given ``seed``.
    """
    k = atoms.shape[0]
    g = int(min(max(1, n_groups), k))
    a = np.asarray(atoms)
    cdtype = np.complex128 if np.iscomplexobj(a) else np.float64
    norms = np.linalg.norm(a.astype(cdtype), axis=1)
    unit = (a / norms[:, None].astype(a.real.dtype)).astype(a.dtype, copy=False)
    rng = np.random.default_rng(seed)
    cent = unit[np.sort(rng.choice(k, g, replace=False))].astype(cdtype)
    labels = np.zeros(k, dtype=np.int64)
    for _ in range(iterations):
        scores = np.abs(unit @ cent.conj().T.astype(unit.dtype))
        labels = scores.argmax(axis=1)
        aligned = _align(unit.astype(cdtype), cent, labels)
        sums = np.zeros_like(cent)
        np.add.at(sums, labels, aligned) if k < 4096 else _segment_sum(sums, labels, aligned)
        size = np.linalg.norm(sums, axis=1)
        live = size > 0
        cent[live] = sums[live] / size[live, None]
    # Final assignment in float64 and exact radii against the final centroids.
    scores = np.abs(unit.astype(cdtype) @ cent.conj().T)
    labels = scores.argmax(axis=1)
    cos = np.clip(scores[np.arange(k), labels], 0.0, 1.0)
    used, labels = np.unique(labels, return_inverse=True)
    cent = cent[used]
    order = np.argsort(labels, kind="stable")  # ascending original rows within each group
    counts = np.bincount(labels, minlength=used.size)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    radius = np.zeros(used.size)
    np.maximum.at(radius, labels, np.arccos(cos))
    max_norm = np.zeros(used.size)
    np.maximum.at(max_norm, labels, norms)
    return AtomGroups(atoms=np.ascontiguousarray(a[order]), order=order, starts=starts, centroids=cent,
                      radius=radius, max_norm=max_norm)


def _segment_sum(out: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> None:
    """``out[labels[i]] += rows[i]`` for all i, by sorting (much faster than ``np.add.at``)."""
    order = np.argsort(labels, kind="stable")
    lab = labels[order]
    first = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    out[lab[first]] += np.add.reduceat(rows[order], first, axis=0)


def _tolerance(dtype: np.dtype, n_frames: int) -> float:
    """Relative slack of the bound: the rounding of a ``n_frames``-term inner product in ``dtype``."""
    return 8.0 * np.sqrt(n_frames) * float(np.finfo(np.dtype(dtype).type(0).real.dtype).eps)


def best_atoms_group(
    x: np.ndarray, groups: AtomGroups, *, top: int | None = None, chunk: int | None = None
) -> tuple[np.ndarray, int]:
    """Index of the atom maximising ``|<x, atom>|`` for each row of ``x``, by group pruning.

    Parameters
    ----------
    x : ndarray, (n, T)
        Signals in the space of ``groups.atoms`` (full or compressed).
    groups : AtomGroups
    top : int, optional
        None: exact (every group whose bound reaches the best score found is
        scored).  ``k``: score only the ``k`` groups with the highest bounds
        (approximate).
    chunk : int, optional
        Voxels per block.

    Returns
    -------
    best : ndarray of int64, (n,)
        Rows of the original dictionary.
    scored : int
        Atom scores computed (compare with ``n * K`` for brute force).
    """
    n = x.shape[0]
    ng = groups.n_groups
    if chunk is None:
        chunk = int(max(256, min(16384, (32 * 2**20) // (8 * max(ng, 1)))))
    best = np.empty(n, dtype=np.int64)
    scored = 0
    cdtype = groups.centroids.dtype
    tol = _tolerance(np.result_type(x.dtype, groups.atoms.dtype), x.shape[1])
    ct = groups.centroids.conj().T
    for s0 in range(0, n, chunk):
        xb = x[s0 : s0 + chunk]
        xb64 = xb.astype(cdtype)
        xnorm = np.linalg.norm(xb64, axis=1)
        safe = np.where(xnorm > 0, xnorm, 1.0)
        cos = np.clip(np.abs(xb64 @ ct) / safe[:, None], 0.0, 1.0)
        theta = np.arccos(cos)
        bound = np.cos(np.maximum(0.0, theta - groups.radius)) * groups.max_norm * xnorm[:, None]
        bound *= 1.0 + tol
        bound += tol * xnorm[:, None]
        scored += xb.shape[0] * ng  # the centroid scores
        _, b_idx, n_sc = _search_block(xb, bound, groups, top)
        scored += n_sc
        best[s0 : s0 + chunk] = b_idx
    return best, scored


def _score(xv: np.ndarray, groups: AtomGroups, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Best score and original row of group ``g`` for each row of ``xv``."""
    lo, hi = groups.starts[g], groups.starts[g + 1]
    s = np.abs(xv @ groups.atoms[lo:hi].conj().T)
    j = s.argmax(axis=1)
    return s[np.arange(s.shape[0]), j].astype(np.float64), groups.order[lo + j]


def _update(best: np.ndarray, idx: np.ndarray, rows: np.ndarray, s: np.ndarray, i: np.ndarray) -> None:
    """Take score ``s`` / row ``i`` where it beats the current best (ties: the lower row, as argmax)."""
    win = (s > best[rows]) | ((s == best[rows]) & (i < idx[rows]))
    r = rows[win]
    best[r] = s[win]
    idx[r] = i[win]


def _visit(xb, groups, labels, rows, best, idx) -> int:
    """Score, for each row in ``rows``, the group ``labels`` names; grouped so each group is one GEMM."""
    if rows.size == 0:
        return 0
    o = np.argsort(labels, kind="stable")
    lab, rows = labels[o], rows[o]
    cut = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1], True])
    sizes = np.diff(groups.starts)
    done = 0
    for a, b in itertools.pairwise(cut):
        g = int(lab[a])
        r = rows[a:b]
        s, i = _score(xb[r], groups, g)
        _update(best, idx, r, s, i)
        done += r.size * int(sizes[g])
    return done


def _search_block(xb: np.ndarray, bound: np.ndarray, groups: AtomGroups, top: int | None):
    nb, ng = bound.shape
    best = np.full(nb, -np.inf)
    idx = np.full(nb, np.iinfo(np.int64).max, dtype=np.int64)
    all_rows = np.arange(nb)
    if top is not None:
        k = min(top, ng)
        cand = np.argpartition(-bound, k - 1, axis=1)[:, :k] if k < ng else np.broadcast_to(np.arange(ng), (nb, ng))
        done = 0
        for j in range(k):
            done += _visit(xb, groups, np.ascontiguousarray(cand[:, j]), all_rows, best, idx)
        return best, idx, done
    # Exact: the highest-bound group of each voxel first, then every group that can still win.
    first = bound.argmax(axis=1)
    done = _visit(xb, groups, first, all_rows, best, idx)
    visited_first = np.zeros_like(bound, dtype=bool)
    visited_first[all_rows, first] = True
    sizes = np.diff(groups.starts)
    for g in np.argsort(-bound.mean(axis=0), kind="stable"):
        need = (bound[:, g] >= best) & ~visited_first[:, g]
        if not need.any():
            continue
        r = np.flatnonzero(need)
        s, i = _score(xb[r], groups, int(g))
        _update(best, idx, r, s, i)
        done += r.size * int(sizes[g])
    return best, idx, done


def check_group_options(n_groups, top, n_atoms: int) -> None:
    """ValidationError unless ``n_groups`` and ``top`` are None or integers in range."""
    for name, v, hi in (("n_groups", n_groups, n_atoms), ("group_top", top, None)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or (hi is not None and v > hi):
            rng = f"[1, {hi}] (the dictionary's atom count)" if hi is not None else ">= 1"
            raise ValidationError(f"{name} must be an integer in {rng}; got {v!r}")
