"""Every fast path held to the numpy reference."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mrfengine import Dictionary, match
from mrfengine.backend import probe
from mrfengine.testing import random_fingerprints
from mrfengine.dictionary import ParameterGrid, simulate_dictionary
from mrfengine.errors import ValidationError
from mrfengine.matching._gpu import abs_argmax, best_atoms_gemm_xp
from mrfengine.matching._numpy import best_atoms_numpy
from mrfengine.matching._separable import best_atoms_separable_xp, plan_separable
from mrfengine.sequence import hermann2021

HAS_CPP = probe("cpp").available
HAS_NUMBA = probe("numba").available


@pytest.fixture(scope="module")
def noisy_case():
    seq = hermann2021(1)
    d = simulate_dictionary(seq, 21)
    noisy, truth = random_fingerprints(seq, 21, 3000, np.random.default_rng(11), snr=50.0)
    return d, noisy, truth


def med_err(r, truth, key):
    return float(np.median(np.abs(r.params[key] / truth[key] - 1)))


@pytest.mark.parametrize("backend", ["numpy"] + (["cpp"] if HAS_CPP else []))
def test_structured_keeps_brute_force_accuracy(noisy_case, backend):
    d, x, truth = noisy_case
    brute = match(x, d, backend="numpy", method="brute")
    fast = match(x, d, backend=backend, method="structured")
    assert (fast.index == brute.index).mean() > 0.99
    # The rule: within 0.5 percentage points of brute force's median error.
    for key in ("T1", "T2star"):
        assert abs(med_err(fast, truth, key) - med_err(brute, truth, key)) < 0.005
    assert abs(np.median(np.abs(fast.params["B1"] - truth["B1"])) - np.median(np.abs(brute.params["B1"] - truth["B1"]))) < 0.005
    assert abs(np.median(fast.m0) - np.median(brute.m0)) / np.median(brute.m0) < 0.005
    # Where they differ, the structured pick is a near-tie of the best atom.
    differ = fast.index != brute.index
    np.testing.assert_allclose(fast.correlation[differ], brute.correlation[differ], rtol=2e-5)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_structured_cpp_matches_its_reference(noisy_case):
    d, x, _ = noisy_case
    plan = plan_separable(d)
    ref = best_atoms_separable_xp(x, plan, np)
    got = match(x, d, backend="cpp", method="structured").index
    assert (got == ref).mean() > 0.995


def test_separable_plan():
    d = simulate_dictionary(hermann2021(1), 0)
    plan = plan_separable(d)
    assert 5 <= plan.rank <= 12 and plan.rank_error < 1e-6
    assert plan.amplitude_t.shape[1] % 16 == 0 and plan.u.shape[1] % 16 == 0
    has = plan.atom_of >= 0
    assert has.sum() == d.n_atoms
    np.testing.assert_array_equal(np.sort(plan.atom_of[has]), np.arange(d.n_atoms))
    assert np.all(plan.inv_norm[~has[:, : plan.inv_norm.shape[1]]] == 0)
    assert plan_separable(d) is plan  # cached on the dictionary


def test_structured_method_errors():
    rng = np.random.default_rng(0)
    plain = Dictionary(np.abs(rng.normal(size=(20, 35))), {"T1": np.arange(20.0)})
    x = np.abs(rng.normal(size=(3, 35)))
    with pytest.raises(ValidationError, match="no separable factorisation"):
        match(x, plain, method="structured")
    assert match(x, plain).method == "brute"
    d = simulate_dictionary(hermann2021(1), 0, ParameterGrid.geometric((300, 3000), (10, 1000), 0.2))
    with pytest.raises(ValidationError, match="SVD rank"):
        match(x, d, method="structured", rank=5)
    with pytest.raises(ValidationError, match="method must be"):
        match(x, d, method="fastest")
    if HAS_NUMBA:
        with pytest.raises(ValidationError, match="no structured search"):
            match(x, d, method="structured", backend="numba")


@pytest.mark.skipif(not HAS_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("n_atoms, n_frames", [(1, 35), (33, 35), (500, 7)])
def test_numba_agrees_with_numpy(n_atoms, n_frames):
    rng = np.random.default_rng(n_atoms)
    atoms = (np.abs(rng.normal(size=(n_atoms, n_frames))) + 0.05).astype(np.float32)
    d = Dictionary(atoms, {"T1": np.arange(n_atoms, dtype=float)})
    x = np.abs(rng.normal(size=(41, n_frames))).astype(np.float32)
    a = match(x, d, backend="numpy")
    b = match(x, d, backend="numba")
    assert b.backend == "numba"
    np.testing.assert_allclose(b.correlation, a.correlation, rtol=1e-5)
    assert (a.index == b.index).mean() > 0.95


def test_gpu_orchestration_under_numpy():
    rng = np.random.default_rng(1)
    atoms = np.abs(rng.normal(size=(301, 35))).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = np.abs(rng.normal(size=(50, 35))).astype(np.float32)
    ref = best_atoms_numpy(x, atoms)
    for chunk in (1, 7, 50, 1000):
        np.testing.assert_array_equal(best_atoms_gemm_xp(x, atoms, np, chunk=chunk), ref)
    scores = np.array([[1.0, -3.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(abs_argmax(scores, np), [1, 0])


def test_numba_cuda_kernel_in_the_simulator():
    pytest.importorskip("numba")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the CUDA simulator must be enabled before numba is imported")
    from mrfengine.matching._gpu import best_atoms_numba_cuda
    from mrfengine.matching._numba_cuda_kernel import TILE

    rng = np.random.default_rng(2)
    n_atoms = TILE + 7  # two tiles, the second partial
    atoms = np.abs(rng.normal(size=(n_atoms, 35))).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = atoms[[3, TILE + 2, 40]] * 2.0
    got = best_atoms_numba_cuda(x, atoms, threads=4)
    np.testing.assert_array_equal(got, [3, TILE + 2, 40])
    x2 = np.abs(rng.normal(size=(5, 35))).astype(np.float32)
    np.testing.assert_array_equal(best_atoms_numba_cuda(x2, atoms, threads=4, chunk=3), best_atoms_numpy(x2, atoms))


def test_auto_never_picks_a_simulator():
    rng = np.random.default_rng(3)
    d = Dictionary(np.abs(rng.normal(size=(10, 35))), {"T1": np.arange(10.0)})
    assert match(np.abs(rng.normal(size=(2, 35))), d).backend != "numba-cuda"


def test_numba_cuda_kernel_compiles_to_ptx():
    """The kernel compiles for a real GPU target (Hopper, sm_90) with numba's
    built-in CUDA target: run in a subprocess without the simulator."""
    pytest.importorskip("numba")
    code = (
        "from numba import cuda, float32, int64\n"
        "from mrfengine.matching._numba_cuda_kernel import match_tile_kernel\n"
        "ptx, _ = cuda.compile_ptx(match_tile_kernel, (float32[:, :], float32[:, :], int64[:]), cc=(9, 0))\n"
        "assert '.target sm_90' in ptx and '.shared' in ptx, ptx[:300]\n"
        "print('ok')\n"
    )
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "libnvvm" in out.stderr.lower() and "not found" in out.stderr.lower():
        pytest.skip("no NVVM library on this machine")
    assert out.returncode == 0, out.stderr[-2000:]


def test_dask_arrays_match_chunk_by_chunk(noisy_case):
    da = pytest.importorskip("dask.array")
    d, x, _ = noisy_case
    vol = x[:1200].reshape(10, 120, 35)
    mask = np.ones((10, 120), bool)
    mask[0] = False
    ref = match(vol, d, mask=mask)
    lazy = match(da.from_array(vol, chunks=(3, 50, 35)), d, mask=da.from_array(mask, chunks=(5, 60)))
    assert type(lazy.index).__module__.startswith("dask")
    np.testing.assert_array_equal(lazy.index.compute(), ref.index)
    np.testing.assert_allclose(lazy.params["T1"].compute(), ref.params["T1"])
    np.testing.assert_array_equal(lazy.matched.compute(), mask)
    np.testing.assert_allclose(lazy.m0.compute(), ref.m0, rtol=1e-6)
    # Frames first, split over chunks: rechunked internally.
    lazy0 = match(da.from_array(np.moveaxis(vol, -1, 0), chunks=(10, 5, 60)), d, channel_axis=0)
    np.testing.assert_array_equal(lazy0.index.compute()[1:], ref.index[1:])


@pytest.mark.gpu
def test_cupy_backend_agrees_with_numpy(noisy_case):
    d, x, _ = noisy_case
    for method in ("brute", "structured"):
        a = match(x, d, backend="numpy", method=method)
        b = match(x, d, backend="cupy", method=method)
        assert (a.index == b.index).mean() > 0.995
        np.testing.assert_allclose(b.correlation, a.correlation, rtol=2e-5)


@pytest.mark.gpu
def test_numba_cuda_backend_on_a_gpu(noisy_case):
    d, x, _ = noisy_case
    a = match(x, d, backend="numpy", method="brute")
    b = match(x, d, backend="numba-cuda", method="brute")
    np.testing.assert_allclose(b.correlation, a.correlation, rtol=2e-5)
