"""Complex (and real) fingerprints on every backend, brute force and rank=, held to the numpy reference."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mrfengine import Dictionary, match
from mrfengine.backend import probe
from mrfengine.errors import ValidationError
from mrfengine.matching._gpu import best_atoms_gemm_xp
from mrfengine.matching._numpy import best_atoms_numpy

CPU_BACKENDS = [b for b in ("cpp", "numba") if probe(b).available]


def _case(kind: str, n_atoms: int = 300, n_frames: int = 40, n_vox: int = 60, seed: int = 0, rough: float = 0.05):
    """A random dictionary (smooth in its parameter, so compressible) and signals:
    planted atoms (scaled, phase-rotated, noisy) and plain random rows."""
    rng = np.random.default_rng(seed)
    p = np.linspace(0.0, 1.0, n_atoms)
    t = np.linspace(0.0, 1.0, n_frames)
    atoms = np.exp(-t[None, :] / (0.05 + p[:, None])) + 0.3 * np.cos(7 * t[None, :] * (1 + p[:, None]))
    if kind == "complex":
        atoms = atoms * np.exp(1j * (2 + 3 * p[:, None]) * np.pi * t[None, :])
        atoms = atoms.astype(np.complex64)
    else:
        atoms = atoms.astype(np.float32)
    atoms = atoms + rough * rng.normal(size=atoms.shape).astype(np.float32)  # full rank
    d = Dictionary(atoms, {"p": p})
    pick = rng.integers(0, n_atoms, n_vox // 2)
    scale = rng.uniform(0.5, 3.0, (pick.size, 1))
    if kind == "complex":
        scale = scale * np.exp(1j * rng.uniform(-np.pi, np.pi, (pick.size, 1)))
    noise = rng.normal(size=(pick.size, n_frames)) * 0.01
    planted = d.normalized[pick] * scale + (noise * (1 + 1j) if kind == "complex" else noise)
    rand = rng.normal(size=(n_vox - pick.size, n_frames))
    if kind == "complex":
        rand = rand + 1j * rng.normal(size=rand.shape)
    x = np.concatenate([planted, rand]).astype(atoms.dtype)
    return d, x, pick


def _agree(got, ref, n_planted: int):
    """Planted voxels: the same atom; all voxels: the reference's correlation and M0 (ties aside)."""
    np.testing.assert_array_equal(got.index[:n_planted], ref.index[:n_planted])
    assert (got.index == ref.index).mean() >= 0.95
    np.testing.assert_allclose(got.correlation, ref.correlation, rtol=2e-5, atol=1e-6)
    same = got.index == ref.index
    np.testing.assert_allclose(got.m0[same], ref.m0[same], rtol=1e-5, atol=1e-6)
    assert got.m0.dtype == ref.m0.dtype


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("rank", [None, 8])
def test_backend_equals_numpy_reference(backend, kind, rank):
    if kind == "complex" and backend not in CPU_BACKENDS:
        pytest.skip(f"{backend} matches real data only")
    d, x, pick = _case(kind)
    ref = match(x, d, backend="numpy", method="brute", rank=rank)
    got = match(x, d, backend=backend, method="brute", rank=rank)
    assert got.backend == backend and got.rank == rank
    _agree(got, ref, pick.size)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_complex128_and_real_signals_against_complex_atoms(backend):
    d, x, pick = _case("complex", n_atoms=70, n_frames=9, n_vox=30, seed=1)
    d128 = Dictionary(d.atoms.astype(np.complex128), dict(d.params))
    _agree(match(x.astype(np.complex128), d128, backend=backend), match(x.astype(np.complex128), d128, backend="numpy"),
           pick.size)
    xr = np.abs(x)  # magnitude signals against a complex dictionary: matched as complex
    a, b = match(xr, d, backend="numpy"), match(xr, d, backend=backend)
    np.testing.assert_allclose(b.correlation, a.correlation, rtol=2e-5)
    assert b.m0.dtype == np.complex64


def test_compressed_search_rescored_on_the_full_atom():
    d, x, pick = _case("complex", n_atoms=400, n_frames=200, seed=2, rough=0.0)  # smooth: rank 10 keeps it
    full = match(x, d, backend="numpy", method="brute")
    for backend in ["numpy"] + CPU_BACKENDS:
        r = match(x, d, backend=backend, rank=10)
        np.testing.assert_array_equal(r.index[: pick.size], full.index[: pick.size])
        # correlation of the winner on its full atom, not in the subspace
        dn = d.normalized[r.index]
        xs = x.astype(np.complex128)
        expect = np.abs(np.einsum("ij,ij->i", xs, dn.conj())) / np.linalg.norm(xs, axis=1)
        np.testing.assert_allclose(r.correlation, expect, rtol=1e-5)


def test_gpu_orchestration_complex_under_numpy():
    d, x, _ = _case("complex", n_atoms=301, n_frames=35, n_vox=50, seed=3)
    atoms = d.normalized
    ref = best_atoms_numpy(x, atoms)
    for chunk in (1, 7, 1000):
        np.testing.assert_array_equal(best_atoms_gemm_xp(x, atoms, np, chunk=chunk), ref)


def test_numba_cuda_complex_kernel_in_the_simulator():
    pytest.importorskip("numba")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the CUDA simulator must be enabled before numba is imported")
    from mrfengine.matching._gpu import best_atoms_numba_cuda
    from mrfengine.matching._numba_cuda_kernel import TILE

    d, x, _ = _case("complex", n_atoms=TILE + 5, n_frames=6, n_vox=6, seed=4)  # two tiles, the second partial
    atoms = d.normalized
    planted = atoms[[3, TILE + 2, 40]] * np.complex64(2.0 - 1.5j)
    np.testing.assert_array_equal(best_atoms_numba_cuda(planted, atoms, threads=4), [3, TILE + 2, 40])
    np.testing.assert_array_equal(best_atoms_numba_cuda(x, atoms, threads=4, chunk=4), best_atoms_numpy(x, atoms))


def test_numba_cuda_complex_kernel_compiles_to_ptx():
    pytest.importorskip("numba")
    code = (
        "from numba import cuda, float32, int64\n"
        "from mrfengine.matching._numba_cuda_kernel import match_tile_kernel_complex as k\n"
        "f = float32[:, :]\n"
        "ptx, _ = cuda.compile_ptx(k, (f, f, f, f, int64[:]), cc=(9, 0))\n"
        "assert '.target sm_90' in ptx and '.shared' in ptx, ptx[:300]\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0 and "libnvvm" in out.stderr.lower() and "not found" in out.stderr.lower():
        pytest.skip("no NVVM library on this machine")
    assert out.returncode == 0, out.stderr[-2000:]


def test_structured_method_still_refuses_complex():
    d, x, _ = _case("complex", n_atoms=20, n_frames=9, n_vox=4)
    with pytest.raises(ValidationError, match="complex data|no separable"):
        match(x, d, method="structured")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "numba-cuda"])
@pytest.mark.parametrize("rank", [None, 8])
def test_gpu_backends_complex_on_a_gpu(backend, rank):
    d, x, pick = _case("complex")
    if backend == "numba-cuda" and rank is None:
        d, x, pick = _case("complex", n_frames=30)
    _agree(match(x, d, backend=backend, rank=rank), match(x, d, backend="numpy", rank=rank), pick.size)
