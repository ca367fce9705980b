"""Out-of-core denoising of a zarr store, slab by slab with a halo."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from mrfengine.denoise import mppca, mppca_zarr
from mrfengine.denoise._synthetic import lowrank_rician
from mrfengine.errors import ValidationError


@pytest.fixture(scope="module")
def cohort_like():
    """(T, Z, Y, X) float32 series."""
    _, noisy, _ = lowrank_rician((13, 12, 11), snr=20, seed=31, dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(noisy, -1, 0))


def _arrays(root, series, chunk_z=3):
    t, z, y, x = series.shape
    src = root.create_array("src", shape=series.shape, chunks=(t, chunk_z, y, x), dtype="f4")
    src[...] = series
    dst = root.create_array("dst", shape=series.shape, chunks=(t, chunk_z, y, x), dtype="f4")
    sig = root.create_array("sigma", shape=(z, y, x), chunks=(chunk_z, y, x), dtype="f4")
    ncomp = root.create_array("ncomp", shape=(z, y, x), chunks=(chunk_z, y, x), dtype="i2")
    return src, dst, sig, ncomp


@pytest.mark.parametrize("slab_planes", [1, 3, 4, 100])
def test_slabs_reproduce_the_in_memory_result(tmp_path, cohort_like, slab_planes):
    root = zarr.open_group(tmp_path / "store.zarr", mode="w")
    src, dst, sig, ncomp = _arrays(root, cohort_like)
    info = mppca_zarr(src, dst, sigma=sig, n_components=ncomp, slab_planes=slab_planes)
    whole = mppca(cohort_like, channel_axis=0)
    assert info["slabs"] == -(-cohort_like.shape[1] // slab_planes)
    np.testing.assert_allclose(dst[...], whole.denoised, rtol=0, atol=2e-5 * float(np.abs(cohort_like).max()))
    np.testing.assert_allclose(sig[...], whole.sigma, rtol=1e-4)
    assert np.mean(ncomp[...] == whole.n_components) > 0.99
    assert dst.attrs["mrfengine_mppca"]["complete"] is True
    assert dst.attrs["mrfengine_mppca"]["channel_axis"] == 0


def test_float64_slabs_are_exact_to_rounding_and_honour_the_mask(tmp_path, cohort_like):
    series = cohort_like.astype(np.float64)
    root = zarr.open_group(tmp_path / "store.zarr", mode="w")
    src = root.create_array("src", shape=series.shape, chunks=(35, 2, 12, 11), dtype="f8")
    src[...] = series
    dst = root.create_array("dst", shape=series.shape, chunks=(35, 2, 12, 11), dtype="f8")
    mask = np.zeros(series.shape[1:], bool)
    mask[2:9, 3:10, 1:8] = True
    mask_store = root.create_array("mask", shape=mask.shape, chunks=(2, 12, 11), dtype=bool)
    mask_store[...] = mask
    mppca_zarr(src, dst, mask=mask_store, slab_planes=2, estimator="exp2")
    whole = mppca(series, channel_axis=0, mask=mask, estimator="exp2")
    np.testing.assert_allclose(dst[...], whole.denoised, rtol=0, atol=1e-10)


def test_memory_is_bounded_by_the_slab(tmp_path, cohort_like, monkeypatch):
    """No slab read is larger than slab + two halos."""
    import mrfengine.denoise.ooc as ooc

    root = zarr.open_group(tmp_path / "store.zarr", mode="w")
    src, dst, _, _ = _arrays(root, cohort_like)
    seen = []
    original = ooc._take

    def spy(arr, axis, start, stop):
        seen.append(stop - start)
        return original(arr, axis, start, stop)

    monkeypatch.setattr(ooc, "_take", spy)
    mppca_zarr(src, dst, slab_planes=2)
    assert max(seen) <= 2 + 2 * 4


def test_bad_arguments(tmp_path, cohort_like):
    root = zarr.open_group(tmp_path / "store.zarr", mode="w")
    src, dst, sig, _ = _arrays(root, cohort_like)
    wrong = root.create_array("wrong", shape=(35, 12, 12, 11), dtype="f4")
    with pytest.raises(ValidationError, match="destination"):
        mppca_zarr(src, wrong)
    ints = root.create_array("ints", shape=cohort_like.shape, dtype="i2")
    with pytest.raises(ValidationError, match="float"):
        mppca_zarr(src, ints)
    with pytest.raises(ValidationError, match="sigma"):
        mppca_zarr(src, dst, sigma=root.create_array("s2", shape=(3, 3, 3), dtype="f4"))
    with pytest.raises(ValidationError, match="slab_planes"):
        mppca_zarr(src, dst, slab_planes=0)
    with pytest.raises(ValidationError, match="channel_axis must be in"):
        mppca_zarr(src, dst, channel_axis=4)
    with pytest.warns(DeprecationWarning, match="mppca_zarr: the keyword 'axis'"), \
            pytest.raises(ValidationError, match="channel_axis must be in"):
        mppca_zarr(src, dst, axis=-5)
    src[0, 0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        mppca_zarr(src, dst)
    assert dst.attrs["mrfengine_mppca"]["complete"] is False
