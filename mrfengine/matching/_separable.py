"""Structured search for separable dictionaries (atoms = amplitude[p] * decay[q]).

MRF-EPI atoms are ``A_p(t) E_q(t)`` with ``A_p = |sin(b a_t) Mz_t(T1, b)|`` for
the (T1, B1) pair ``p`` and ``E_q = exp(-TE_t / T2*_q)``.  ``E`` is smooth in
TE and numerically of low rank (``k`` ~ 7 singular vectors reach 1e-7 of
the first), so with ``E_q(t) ~ sum_j U[j, q] V[t, j]``::

    <x, A_p E_q> = sum_j U[j, q] W[j, p],     W[j, p] = sum_t x_t V[t, j] A_p(t)

``W`` costs ``2 k T P`` FLOPs per voxel, each atom's score then ``2 k + 1``
instead of ``2 T``.  On top, a coarse-to-fine step: score every pair on every
``stride``-th T2* only, keep the ``top_pairs`` best pairs and score those on
every T2*.  The brute-force matchers remain the exact mode.

This module holds the preparation (cached on the dictionary) and the
reference search written as array-module code: the same body runs on numpy
(tests) and CuPy (GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from ..dictionary import Dictionary
from ..errors import DictionaryError

__all__ = ["SeparablePlan", "plan_separable", "best_atoms_separable_xp"]


def _pad(n: int, to: int = 16) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class SeparablePlan:
    """Everything the structured search needs, derived once per dictionary.

    Pair and decay dimensions are zero-padded to multiples of 16 (the C++
    kernel's vector width); padding scores 0 and maps to no atom.

    Attributes
    ----------
    amplitude_t : ndarray, float32, (T, P_pad)
        Amplitudes, frame-major.
    v : ndarray, float32, (T, k)
        Temporal basis of the decay factors.
    u : ndarray, float32, (k, Q_pad)
        Decay factors in that basis.
    inv_norm : ndarray, float32, (P, Q_pad)
        ``1 / |atom|`` for atoms that exist, 0 for (p, q) holes (e.g. T2* > T1).
    u_coarse : ndarray, float32, (C, k)
        ``u`` at the coarse pass's decays (every ``stride``-th).
    inv_coarse : ndarray, float32, (C, P_pad)
        ``inv_norm`` at those decays, transposed.
    atom_of : ndarray of int64, (P, Q_pad)
        Atom row of (p, q), -1 for holes and padding.
    n_pairs : int
    top_pairs : int
    rank_error : float
        Largest relative error of a decay row in the rank-k basis.
    """

    amplitude_t: np.ndarray
    v: np.ndarray
    u: np.ndarray
    inv_norm: np.ndarray
    u_coarse: np.ndarray
    inv_coarse: np.ndarray
    atom_of: np.ndarray
    n_pairs: int
    top_pairs: int
    rank_error: float

    @property
    def rank(self) -> int:
        return self.v.shape[1]


def plan_separable(
    d: Dictionary, *, tol: float = 1e-7, stride: int = 4, top_pairs: int = 16
) -> SeparablePlan:
    """Prepare (and cache on ``d``) the structured search of a separable dictionary.

    Parameters
    ----------
    tol : float
        Keep singular vectors of the decay factors down to ``tol`` times the
        first (the rank ``k``, at most 12); 1e-7 is float32 resolution.
    stride : int
        T2* subsampling of the coarse pass.
    top_pairs : int
        (T1, B1) pairs carried from the coarse to the fine pass.
    """
    if d.separable is None:
        raise DictionaryError("the structured search needs a separable dictionary (Dictionary(..., separable=))")
    if np.iscomplexobj(d.atoms):
        raise DictionaryError("the structured search handles real dictionaries only")
    key = f"separable:{tol}:{stride}:{top_pairs}"
    if key in d._cache:
        return d._cache[key]
    sep = d.separable
    n_pairs, n_decays = sep.amplitude.shape[0], sep.decay.shape[0]
    p_pad, q_pad = _pad(n_pairs), _pad(n_decays)
    atom_of = np.full((n_pairs, q_pad), -1, dtype=np.int64)
    # Reversed assignment: where (p, q) repeats, the first atom wins (argmax rule).
    atom_of[sep.pair[::-1], sep.decay_index[::-1]] = np.arange(d.n_atoms)[::-1]
    uu, s, vt = np.linalg.svd(sep.decay, full_matrices=False)
    k = int(min(12, np.sum(s > tol * s[0])))
    u = np.zeros((k, q_pad))
    u[:, :n_decays] = (uu[:, :k] * s[:k]).T
    v = vt[:k].T
    rebuilt = u[:, :n_decays].T @ v.T
    rank_error = float(np.max(np.linalg.norm(rebuilt - sep.decay, axis=1) / np.linalg.norm(sep.decay, axis=1)))
    inv = np.zeros((n_pairs, q_pad))
    has = atom_of >= 0
    inv[has] = 1.0 / d.norms[atom_of[has]]
    amp_t = np.zeros((d.n_frames, p_pad))
    amp_t[:, :n_pairs] = sep.amplitude.T
    coarse = np.arange(0, n_decays, max(1, int(stride)))
    inv_c = np.zeros((coarse.size, p_pad))
    inv_c[:, :n_pairs] = inv[:, coarse].T
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    plan = SeparablePlan(
        amplitude_t=f32(amp_t),
        v=f32(v),
        u=f32(u),
        inv_norm=f32(inv),
        u_coarse=f32(u[:, coarse].T),
        inv_coarse=f32(inv_c),
        atom_of=atom_of,
        n_pairs=n_pairs,
        top_pairs=int(min(max(1, top_pairs), n_pairs)),
        rank_error=rank_error,
    )
    d._cache[key] = plan
    return plan


def best_atoms_separable_xp(x, plan: SeparablePlan, xp: ModuleType = np, *, chunk: int = 1024):
    """Structured search in array-module code (numpy or CuPy arrays in, same module out).

    Parameters
    ----------
    x : array, (n, T), float32
    plan : SeparablePlan
        Its arrays are moved to ``xp`` as needed.

    Returns
    -------
    array of int64, (n,)
        The atom row chosen for each voxel.
    """
    at = xp.asarray(plan.amplitude_t)
    v = xp.asarray(plan.v)
    u = xp.asarray(plan.u)
    inv = xp.asarray(plan.inv_norm)
    u_c = xp.asarray(plan.u_coarse)
    inv_c = xp.asarray(plan.inv_coarse)[:, : plan.n_pairs]
    atom_of = xp.asarray(plan.atom_of)
    m = plan.top_pairs
    q_pad = inv.shape[1]
    out = xp.empty(x.shape[0], dtype=xp.int64)
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk]
        y = xc[:, None, :] * v.T[None, :, :]                                  # (n, k, T)
        w = (y @ at)[:, :, : plan.n_pairs]                                   # (n, k, P)
        coarse = xp.abs(xp.einsum("nkp,ck->npc", w, u_c)) * inv_c.T[None]    # (n, P, C)
        proxy = coarse.max(axis=2)
        if m < proxy.shape[1]:
            top = xp.argpartition(-proxy, m - 1, axis=1)[:, :m]              # (n, m)
        else:
            top = xp.broadcast_to(xp.arange(proxy.shape[1]), proxy.shape)
        w_top = xp.take_along_axis(w, top[:, None, :], axis=2)               # (n, k, m)
        fine = xp.abs(xp.einsum("nkm,kq->nmq", w_top, u)) * inv[top]         # (n, m, Q_pad)
        flat = xp.argmax(fine.reshape(fine.shape[0], -1), axis=1)
        pair = xp.take_along_axis(top, (flat // q_pad)[:, None], axis=1)[:, 0]
        out[s : s + chunk] = atom_of[pair, flat % q_pad]
    return out
