"""mppca's contract: shapes, dtypes, options, errors, degenerate data."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mrfengine.backend import probe
from mrfengine.denoise import BACKENDS, mppca
from mrfengine.denoise._synthetic import lowrank_rician
from mrfengine.errors import BackendUnavailableError, ValidationError

needs_cpp = pytest.mark.skipif(not probe("cpp").available, reason="C++ extension not built")


@pytest.fixture(scope="module")
def noisy32():
    return lowrank_rician((10, 9, 7), snr=20, seed=11, dtype=np.float32)[1]


def test_result_shapes_and_dtypes(noisy32):
    r = mppca(noisy32)
    assert r.denoised.shape == noisy32.shape and r.denoised.dtype == np.float32
    assert r.sigma.shape == noisy32.shape[:3] and r.sigma.dtype == np.float32
    assert r.n_components.shape == noisy32.shape[:3] and r.n_components.dtype == np.int16
    assert r.window == (5, 5, 5) and r.estimator == "mp" and r.backend in BACKENDS
    assert (r.n_components >= 0).all() and np.isfinite(r.sigma).all()


def test_float64_stays_float64_unless_asked(noisy32):
    x = noisy32.astype(np.float64)
    assert mppca(x).denoised.dtype == np.float64
    asked = mppca(x, dtype=np.float32)
    assert asked.denoised.dtype == np.float32 and asked.sigma.dtype == np.float32
    np.testing.assert_allclose(asked.denoised, mppca(noisy32).denoised, rtol=1e-6, atol=1e-4)


def test_integer_input_is_computed_and_returned_as_float32(noisy32):
    ints = np.rint(noisy32 * 10).astype(np.int16)
    r = mppca(ints)
    assert r.denoised.dtype == np.float32
    np.testing.assert_allclose(r.denoised, mppca(ints.astype(np.float32)).denoised)


def test_same_input_same_bytes(noisy32):
    a, b = mppca(noisy32), mppca(noisy32)
    assert a.denoised.tobytes() == b.denoised.tobytes()


@pytest.mark.parametrize("backend", ["reference", "numpy", pytest.param("cpp", marks=needs_cpp)])
def test_constant_and_zero_regions_come_back_unchanged(backend):
    x = np.zeros((12, 8, 7, 35))
    x[6:] = np.linspace(1, 3, 35)  # constant in space, varying in frames
    r = mppca(x, backend=backend)
    np.testing.assert_allclose(r.denoised, x, atol=1e-12)
    assert (r.sigma == 0).all()
    # Own windows (start clip(a - 2, 0, 7), 5 planes) inside one region: nothing to keep;
    # straddling the step at a = 6: exactly its one component.
    start = np.clip(np.arange(12) - 2, 0, 7)
    straddles = (start < 6) & (start + 5 > 6)
    expected = np.broadcast_to(straddles[:, None, None].astype(np.int16), x.shape[:3])
    np.testing.assert_array_equal(r.n_components, expected)


def test_noise_only_data_are_smoothed_towards_their_mean():
    rng = np.random.default_rng(5)
    x = 100 + rng.normal(size=(12, 12, 10, 35))
    r = mppca(x)
    assert np.median(r.n_components) == 0
    assert np.std(r.denoised - 100) < 0.25 * np.std(x - 100)
    assert np.median(r.sigma) == pytest.approx(1.0, rel=0.03)


def test_nan_and_inf_are_rejected_with_a_count(noisy32):
    x = noisy32.copy()
    x[1, 2, 3, 4] = np.nan
    x[0, 0, 0, 0] = np.inf
    with pytest.raises(ValidationError, match="2 NaN/Inf"):
        mppca(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channel_axis": 4}, "channel_axis must be in"),
        ({"channel_axis": 1.0}, "channel_axis must be in"),
        ({"estimator": "exp1"}, "estimator"),
        ({"patch_radius": -1}, "patch_radius"),
        ({"patch_radius": (2, 2)}, "patch_radius"),
        ({"patch_radius": 1.5}, "patch_radius"),
        ({"backend": "fortran"}, "backend"),
        ({"dtype": np.int32}, "dtype"),
        ({"n_threads": -2}, "n_threads"),
        ({"mask": np.ones((10, 9), bool)}, "mask"),
    ],
)
def test_bad_options_name_themselves(noisy32, kwargs, message):
    with pytest.raises(ValidationError, match=message):
        mppca(noisy32, **kwargs)


def test_axis_is_a_deprecated_alias_of_channel_axis(noisy32):
    cohort = np.ascontiguousarray(np.moveaxis(noisy32, -1, 0))
    with pytest.warns(DeprecationWarning, match="mppca: the keyword 'axis' is deprecated; use 'channel_axis'"):
        old = mppca(cohort, axis=0)
    new = mppca(cohort, channel_axis=0)
    np.testing.assert_array_equal(old.denoised, new.denoised)
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError, match="give channel_axis only"):
        mppca(cohort, channel_axis=1, axis=0)


def test_bad_data_is_rejected():
    with pytest.raises(ValidationError, match="4D"):
        mppca(np.zeros((5, 5, 35)))
    with pytest.raises(ValidationError, match="real"):
        mppca(np.zeros((5, 5, 5, 35), complex))
    with pytest.raises(ValidationError, match="at least 2 frames"):
        mppca(np.zeros((5, 5, 5, 1)))
    with pytest.raises(ValidationError, match="fewer than 2 voxels"):
        mppca(np.zeros((5, 5, 5, 35)), patch_radius=0)


def test_unavailable_backend_raises_clearly(noisy32):
    if probe("cupy").available:
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailableError, match="cupy"):
        mppca(noisy32, backend="cupy")


def test_empty_mask_returns_the_input_and_warns(noisy32, caplog):
    with caplog.at_level(logging.WARNING, logger="mrfengine.denoise"):
        r = mppca(noisy32, mask=np.zeros(noisy32.shape[:3], bool))
    np.testing.assert_array_equal(r.denoised, noisy32)
    assert (r.n_components == -1).all() and np.isnan(r.sigma).all()
    assert "mask is empty" in caplog.text


def test_auto_logs_its_choice(noisy32, caplog):
    # the resolver's own logger: the CLI quiets it without -v, which sticks when CLI tests ran before
    with caplog.at_level(logging.INFO, logger="mrfengine.backend"):
        r = mppca(noisy32)
    assert f"mppca: backend 'auto' chose {r.backend!r}" in caplog.text
