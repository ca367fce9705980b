"""C++/OpenMP matcher: the fused inner-product + running arg-max of ``csrc/match.cpp``."""

from __future__ import annotations

import numpy as np

from ..backend import get_ext
from ..errors import BackendUnavailableError

__all__ = ["best_atoms_cpp"]


def best_atoms_cpp(x: np.ndarray, atoms: np.ndarray, *, n_threads: int = 0) -> np.ndarray:
    """Same contract as :func:`mrfengine.matching._numpy.best_atoms_numpy`.

    Real data: float32, the fused SIMD kernel of ``csrc/match.cpp``.  Complex
    data: complex64 (complex128 where signals or atoms are complex128), the
    blocked kernel of the C++ API (``csrc/api/search.cpp``: 6 voxels x a
    register of atoms, real and imaginary planes, the running arg-max of
    ``|<x, d>|^2`` per lane).  The [voxels x atoms] score matrix is never
    formed; memory beyond the inputs is one packed copy of the atoms.
    """
    ext = get_ext()
    if ext is None:
        raise BackendUnavailableError("backend 'cpp' needs the compiled extension mrfengine._ext, which is not built")
    if np.iscomplexobj(x) or np.iscomplexobj(atoms):
        if not hasattr(ext, "match_argmax_any"):
            raise BackendUnavailableError(
                "backend 'cpp': this build of mrfengine._ext predates complex matching; rebuild it "
                "(pip install -e . or python setup.py build_ext --inplace)"
            )
        wide = np.complex128 in (np.asarray(x).dtype, np.asarray(atoms).dtype)
        dtype = np.complex128 if wide else np.complex64
        xs = np.ascontiguousarray(x, dtype=dtype)
        at = np.ascontiguousarray(atoms, dtype=dtype)
        if xs.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        return ext.match_argmax_any(xs, at, int(n_threads))
    xs = np.ascontiguousarray(x, dtype=np.float32)
    at = np.ascontiguousarray(atoms, dtype=np.float32)
    index, _ = ext.match_argmax(xs, at, int(n_threads))
    return index


def best_atoms_separable_cpp(x: np.ndarray, plan, *, n_threads: int = 0) -> np.ndarray:
    """The structured search of :mod:`mrfengine.matching._separable` in C++/OpenMP.

    Returns the atom row per voxel, -1 where no atom scored above zero.
    """
    ext = get_ext()
    if ext is None:
        raise BackendUnavailableError("backend 'cpp' needs the compiled extension mrfengine._ext, which is not built")
    xs = np.ascontiguousarray(x, dtype=np.float32)
    pair, decay = ext.match_separable(xs, plan.amplitude_t, plan.v, plan.u, plan.inv_norm, plan.u_coarse,
                                      plan.inv_coarse, plan.n_pairs, plan.top_pairs, int(n_threads))
    return plan.atom_of[pair, decay]
