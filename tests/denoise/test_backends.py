"""Every fast path against the slow, obviously correct reference, and against each other."""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.backend import probe
from mrfengine.denoise import mppca
from mrfengine.denoise._synthetic import lowrank_rician

needs_cpp = pytest.mark.skipif(not probe("cpp").available, reason="C++ extension not built")
needs_numba = pytest.mark.skipif(not probe("numba").available, reason="numba not installed")

FAST = ["numpy", pytest.param("numba", marks=needs_numba), pytest.param("cpp", marks=needs_cpp)]


def _assert_same(result, ref, *, rtol_data=1e-9, rtol_sigma=1e-9, exact_components=True):
    scale = float(np.abs(ref.denoised).max())
    np.testing.assert_allclose(result.denoised, ref.denoised, rtol=0, atol=rtol_data * scale)
    np.testing.assert_allclose(result.sigma, ref.sigma, rtol=rtol_sigma, atol=rtol_sigma * float(np.nanmax(ref.sigma)))
    if exact_components:
        np.testing.assert_array_equal(result.n_components, ref.n_components)
    else:
        assert np.mean(result.n_components == ref.n_components) > 0.97
        assert np.abs(result.n_components.astype(int) - ref.n_components).max() <= 1


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("estimator", ["mp", "exp2"])
def test_float64_backends_reproduce_the_reference(backend, estimator, lowrank_small):
    _, noisy, _ = lowrank_small
    ref = mppca(noisy, estimator=estimator, backend="reference")
    got = mppca(noisy, estimator=estimator, backend=backend)
    assert got.denoised.dtype == np.float64
    _assert_same(got, ref)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    "shape, radius",
    [
        ((7, 13, 6), 2),  # odd sizes: partial SIMD lane groups
        ((9, 8, 3), 2),  # fewer slices than the window
        ((10, 9, 1), 2),  # a single slice (2D windows of 25 voxels < 35 frames)
        ((6, 6, 6), 1),  # 27-voxel windows: fewer samples than frames
        ((11, 7, 8), (3, 1, 0)),  # anisotropic radius, one axis without a window
        ((5, 5, 5), 2),  # exactly one window
        ((40, 6, 5), 2),  # long axis: several lane groups along it
    ],
)
def test_geometry_edge_cases_match_the_reference(backend, shape, radius):
    _, noisy, _ = lowrank_rician(shape, snr=15, seed=sum(shape))
    ref = mppca(noisy, patch_radius=radius, backend="reference")
    got = mppca(noisy, patch_radius=radius, backend=backend)
    _assert_same(got, ref)


@needs_cpp
@pytest.mark.parametrize("estimator", ["mp", "exp2"])
def test_float32_cpp_agrees_with_the_float64_reference(estimator):
    clean, noisy, sigma = lowrank_rician((16, 13, 10), snr=30, seed=7)
    ref = mppca(noisy, estimator=estimator, backend="reference")
    got = mppca(noisy.astype(np.float32), estimator=estimator, backend="cpp")
    assert got.denoised.dtype == np.float32 and got.sigma.dtype == np.float32
    # float32 of data ~30 sigma: a few 1e-6 relative; a component flip moves a voxel by < 0.05 sigma.
    _assert_same(got, ref, rtol_data=2e-3, rtol_sigma=1e-3, exact_components=False)
    assert np.sqrt(np.mean((got.denoised - ref.denoised) ** 2)) < 1e-3 * sigma


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_float32_backends_agree_with_each_other(backend):
    _, noisy, sigma = lowrank_rician((14, 12, 8), snr=25, seed=8, dtype=np.float32)
    base = mppca(noisy, backend="numpy")
    got = mppca(noisy, backend=backend)
    np.testing.assert_allclose(got.denoised, base.denoised, rtol=0, atol=2e-3 * sigma * 25)
    assert np.mean(got.n_components == base.n_components) > 0.97


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_frames_first_layout_and_strided_input(backend, lowrank_small):
    _, noisy, _ = lowrank_small
    ref = mppca(noisy, backend="reference")
    cohort = np.ascontiguousarray(np.moveaxis(noisy, -1, 0).transpose(0, 3, 2, 1))  # (T, Z, Y, X)
    got = mppca(cohort, channel_axis=0, backend=backend)
    np.testing.assert_allclose(got.denoised, np.moveaxis(ref.denoised, -1, 0).transpose(0, 3, 2, 1), atol=1e-9)
    np.testing.assert_array_equal(got.n_components, ref.n_components.transpose(2, 1, 0))
    # A non-contiguous view (every other frame) is read in place and gives the copy's answer.
    view = noisy[:, ::-1, :, ::2]
    np.testing.assert_allclose(
        mppca(view, backend=backend).denoised, mppca(np.ascontiguousarray(view), backend="reference").denoised,
        atol=1e-9,
    )


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_mask_voxels_get_exactly_the_unmasked_result(backend, lowrank_small):
    _, noisy, _ = lowrank_small
    full = mppca(noisy, backend=backend)
    mask = np.zeros(noisy.shape[:3], bool)
    mask[2:7, 3:9, 0:4] = True
    mask[11, 10, 8] = True  # a lone voxel in the far corner
    got = mppca(noisy, mask=mask, backend=backend)
    np.testing.assert_allclose(got.denoised[mask], full.denoised[mask], rtol=0, atol=1e-10)
    np.testing.assert_array_equal(got.n_components[mask], full.n_components[mask])
    np.testing.assert_array_equal(got.denoised[~mask], noisy[~mask])
    assert np.isnan(got.sigma[~mask]).all() and (got.n_components[~mask] == -1).all()


@pytest.mark.gpu
def test_cupy_backend_matches_numpy_on_a_gpu(lowrank_small):  # pragma: no cover - needs a GPU
    import cupy

    _, noisy, _ = lowrank_small
    ref = mppca(noisy, backend="numpy")
    got = mppca(noisy, backend="cupy")
    _assert_same(got, ref)
    on_device = mppca(cupy.asarray(noisy.astype(np.float32)))
    assert on_device.backend == "cupy" and isinstance(on_device.denoised, cupy.ndarray)
    np.testing.assert_allclose(on_device.denoised.get(), ref.denoised, rtol=0, atol=1e-3 * np.abs(noisy).max())
