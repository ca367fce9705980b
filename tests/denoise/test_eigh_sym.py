"""The MP-PCA kernel's symmetric eigen-solver (csrc/eigen_sym.hpp) on its own, against numpy.linalg.eigh.

``mrfengine._ext._eigh_sym`` runs the solver the C++ MP-PCA kernel uses
(Householder tridiagonalisation, Sturm bisection, inverse iteration with
re-orthogonalisation, back-transformation) on every eigenpair, 16 float32 or 8
float64 matrices at once (one per SIMD lane).  The bounds are those of a
backward-stable solver: eigenvalues to a few eps ||A||, residuals and
orthogonality to O(n eps), each eigenvector -- or, for a cluster of equal
eigenvalues, the subspace they span -- to eps ||A|| / gap.
"""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.backend import get_ext

ext = get_ext()
pytestmark = pytest.mark.skipif(ext is None or not hasattr(ext, "_eigh_sym"), reason="C++ extension not built")

DTYPES = [np.float32, np.float64]


def symmetric(rng, count: int, n: int, dtype) -> np.ndarray:
    b = rng.standard_normal((count, n, n))
    return ((b + b.swapaxes(1, 2)) / 2).astype(dtype)


def with_eigenvalues(rng, values: np.ndarray, dtype) -> np.ndarray:
    """Q diag(values) Q^T for random orthogonal Q, one matrix per row of ``values``."""
    q, _ = np.linalg.qr(rng.standard_normal(values.shape + values.shape[-1:]))
    a = (q * values[:, None, :]) @ q.swapaxes(1, 2)
    return ((a + a.swapaxes(1, 2)) / 2).astype(dtype)


def clusters(w: np.ndarray, tol: float) -> list[slice]:
    """Runs of ascending eigenvalues closer than ``tol``: one eigenspace each."""
    groups, start = [], 0
    for k in range(1, len(w) + 1):
        if k == len(w) or w[k] - w[k - 1] > tol:
            groups.append(slice(start, k))
            start = k
    return groups


def assert_matches_eigh(a: np.ndarray) -> None:
    w, v = ext._eigh_sym(a)
    assert_eigh_result(a, w, v)


def assert_eigh_result(a: np.ndarray, w: np.ndarray, v: np.ndarray) -> None:
    """``(w, v)``, the solver's output for ``a``, against numpy.linalg.eigh (also used by test_isa_dispatch)."""
    assert w.dtype == a.dtype and v.dtype == a.dtype
    assert w.shape == a.shape[:-1] and v.shape == a.shape
    a64 = a.astype(np.float64)
    w_np, v_np = np.linalg.eigh(a64)
    eps = float(np.finfo(a.dtype).eps)
    n = a.shape[-1]
    # Householder's error grows like sqrt(n) eps ||A|| in practice: rotated
    # identities of order 64 reach 18.5 eps with AVX2 + FMA and 22 eps with the
    # x86-64 baseline (no FMA) over 40 rotations, so 16 eps up to n = 16, then 4 sqrt(n).
    w_tol = 4 * max(4.0, float(np.sqrt(n))) * eps
    for b in range(a.shape[0]):
        norm = float(np.abs(w_np[b]).max()) or 1.0
        assert np.all(np.diff(w[b]) >= 0), "eigenvalues must be ascending"
        np.testing.assert_allclose(w[b], w_np[b], rtol=0, atol=w_tol * norm)
        vb = v[b].astype(np.float64)
        np.testing.assert_allclose(a64[b] @ vb, vb * w[b].astype(np.float64), rtol=0, atol=8 * n * eps * norm)
        np.testing.assert_allclose(vb.T @ vb, np.eye(n), rtol=0, atol=32 * n * eps)
        for g in clusters(w_np[b], 1e3 * eps * norm):
            rest = np.concatenate([w_np[b][: g.start], w_np[b][g.stop :]])
            if rest.size == 0:
                continue  # one eigenspace: the whole space
            gap = float(np.min(np.abs(rest[:, None] - w_np[b][g][None, :])))
            ours, theirs = vb[:, g] @ vb[:, g].T, v_np[b][:, g] @ v_np[b][:, g].T
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=64 * eps * norm / gap)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16, 35, 64])
def test_random_symmetric_matrices(dtype, n):
    # 17 matrices: more than one group of SIMD lanes, the last one partly filled.
    assert_matches_eigh(symmetric(np.random.default_rng(n), 17, n, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [3, 12, 35, 64])
def test_repeated_eigenvalues(dtype, n):
    rng = np.random.default_rng(100 + n)
    values = rng.choice([-2.0, 0.0, 1.0, 3.0], size=(9, n))
    values[0] = 1.0  # a multiple of the identity, rotated: one eigenspace
    assert_matches_eigh(with_eigenvalues(rng, values, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_matrix(dtype):
    w, v = ext._eigh_sym(np.zeros((3, 6, 6), dtype))
    assert not w.any()
    for vb in v.astype(np.float64):
        np.testing.assert_allclose(vb.T @ vb, np.eye(6), rtol=0, atol=32 * 6 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_power_of_two_scaling_is_exact(dtype):
    """Matrices are scaled to unit size before the solve, so tiny and huge ones solve alike."""
    a = symmetric(np.random.default_rng(7), 5, 10, dtype)
    w, v = ext._eigh_sym(a)
    for exponent in (-100, 100) if dtype == np.float32 else (-1000, 1000):
        ws, vs = ext._eigh_sym(np.ldexp(a, exponent))
        np.testing.assert_array_equal(ws, np.ldexp(w, exponent))
        np.testing.assert_array_equal(vs, v)


def test_only_the_lower_triangle_is_read_and_shapes_are_checked():
    a = symmetric(np.random.default_rng(3), 2, 7, np.float64)
    upper_garbage = a + np.triu(np.full((7, 7), 1e3), k=1)
    np.testing.assert_array_equal(ext._eigh_sym(upper_garbage)[0], ext._eigh_sym(a)[0])
    assert ext._eigh_sym(a[0])[0].shape == (7,)  # one matrix, no batch axis
    with pytest.raises(ValueError, match="must be"):
        ext._eigh_sym(np.zeros((3, 4)))
