"""Issue 17, cases 5 and 6: NIfTI headers that lie, and inputs that gave silently wrong numbers.

* 5: a header's claimed size is checked against the file (``.nii``), gzip's
  expansion limit (``.nii.gz``) and a memory cap before any voxel is read;
* 6: complex/RGB voxels and negative magnitudes are refused; a dictionary's
  given norms must be its atoms' own; MP-PCA and matching are scale-equivariant
  over the float32 range, and a non-finite result is an error.
"""

from __future__ import annotations

import gzip
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrfengine import Dictionary, match
from mrfengine.backend import probe
from mrfengine.denoise import mppca
from mrfengine.dictionary import ParameterGrid, simulate_dictionary
from mrfengine.errors import DictionaryError, InputFileError, ValidationError
from mrfengine.io import load_nifti, save_nifti
from mrfengine.sequence import hermann2021

from _hostile import run_cli

FRAMES = hermann2021().n_measurements  # 35
COMMANDS = ("import", "match", "predict")
MPPCA_BACKENDS = ["numpy", "reference"] + [b for b in ("cpp", "numba") if probe(b).available]
MATCH_BACKENDS = ["numpy"] + [b for b in ("cpp", "numba") if probe(b).available]
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def cli_args(command: str, path, tmp_path) -> list[str]:
    if command == "import":
        return ["import", tmp_path / "c.zarr", "--subject", "sub-01", "--mrf", path]
    return [command, path, "-o", tmp_path / "out"]


def header_only_gz(path, shape, dtype=np.float32, tail: bytes = b"\0" * 64, header=nib.Nifti1Header):
    """A tiny .nii.gz: a real header claiming ``shape``, then a few bytes of "data"."""
    hdr = header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + tail))
    return path


def series_nifti(path, data, dtype=None):
    img = nib.Nifti1Image(np.asarray(data), np.diag([1.0, 1.0, 3.0, 1.0]))
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def peak_bytes(fn) -> int:
    """Peak traced allocation (numpy's buffers included) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- 5: header memory bomb
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "shape, header",
    [((1024, 1024, 14, 35), nib.Nifti1Header), ((2**15 - 1, 2**15 - 1, 2**10, 35), nib.Nifti1Header),
     ((2**24, 2**24, 2**10, 35), nib.Nifti2Header)],
    ids=["2GB", "huge", "nifti2-huge"],
)
def test_memory_bomb_is_refused_before_reading(command, shape, header, tmp_path, capsys):
    bomb = header_only_gz(tmp_path / "bomb.nii.gz", shape, header=header)
    assert bomb.stat().st_size < 200
    t0 = time.perf_counter()
    peak = peak_bytes(lambda: run_cli(cli_args(command, bomb, tmp_path), capsys, code=1,
                                      says=("bomb.nii.gz", "claims")))
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a {bomb.stat().st_size}-byte file"
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "out").exists()


def test_memory_cap_is_configurable(tmp_path, monkeypatch):
    # A real 64 KiB image of zeros (gzip compresses it ~1000:1) passes gzip's
    # bound; the cap alone refuses it, and says how to raise the cap.
    path = series_nifti(tmp_path / "zeros.nii.gz", np.zeros((16, 16, 4, 16), np.float32))
    monkeypatch.setenv("MRFENGINE_MAX_NIFTI_BYTES", "4096")
    with pytest.raises(InputFileError, match=r"zeros\.nii\.gz: header claims .* over the limit .*MRFENGINE_MAX"):
        load_nifti(path)
    monkeypatch.setenv("MRFENGINE_MAX_NIFTI_BYTES", "lots")
    with pytest.raises(ValidationError, match="MRFENGINE_MAX_NIFTI_BYTES"):
        load_nifti(path)
    monkeypatch.delenv("MRFENGINE_MAX_NIFTI_BYTES")
    assert load_nifti(path)[0].shape == (16, 16, 4, 16)


def test_truncated_nii_names_claim_and_size(tmp_path, capsys):
    good = series_nifti(tmp_path / "full.nii", np.ones((4, 4, 60, FRAMES), np.float32))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(good.read_bytes()[:5000])
    r = run_cli(cli_args("import", cut, tmp_path), capsys, code=1, says=("cut.nii", "truncated"))
    assert f"file has {5000:,}" in r.err
    assert not (tmp_path / "c.zarr").exists()


def test_truncated_gzip_stream_is_a_clean_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = series_nifti(tmp_path / "full.nii.gz", rng.random((4, 4, 60, FRAMES)).astype(np.float32))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    run_cli(cli_args("match", cut, tmp_path), capsys, code=1, says=("cut.nii.gz", "cannot read"))


@pytest.mark.parametrize("shape", [(4, 4, 4, 0), (2, 2, 2, 2, 2, 2)], ids=["empty", "6d"])
def test_bad_dimensions_are_refused(shape, tmp_path):
    path = header_only_gz(tmp_path / "dims.nii.gz", shape)
    with pytest.raises(InputFileError, match=r"dims\.nii\.gz: header claims"):
        load_nifti(path)


@FAST
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32, np.float64]),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_valid_nifti_round_trips(tmp_path, shape, dtype, gz, seed):
    data = (np.random.default_rng(seed).random(shape) * 100).astype(dtype)
    path = save_nifti(data, np.eye(4), tmp_path / ("x.nii.gz" if gz else "x.nii"))
    got, affine, _ = load_nifti(path, dtype=np.float64)
    np.testing.assert_array_equal(got, data.astype(np.float64))
    np.testing.assert_array_equal(affine, np.eye(4))


@FAST
@given(
    dims=st.lists(st.integers(-3, 2**15 - 1), min_size=8, max_size=8),
    datatype=st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1792, 2304, 7, 9999]),
    vox_offset=st.floats(-1e9, 1e12) | st.just(float("nan")),
    gz=st.booleans(),
)
def test_property_forged_header_is_refused_not_allocated(tmp_path, dims, datatype, vox_offset, gz):
    """Any header field forged (raw bytes: dims, datatype, offset): a clean
    InputFileError or a successful small read, never MemoryError, never GBs."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2, 2, 2))
    raw = bytearray(hdr.binaryblock)
    raw[40:56] = np.asarray(dims, dtype="<i2").tobytes()  # dim[0..7], int16 in NIfTI-1
    raw[70:72] = np.int16(datatype).tobytes()
    raw[108:112] = np.float32(vox_offset).tobytes()
    blob = bytes(raw) + b"\0" * 4 + b"\1" * 32
    path = tmp_path / ("f.nii.gz" if gz else "f.nii")
    path.write_bytes(gzip.compress(blob) if gz else blob)

    def load():
        try:
            load_nifti(path)
        except InputFileError as exc:
            assert "f.nii" in str(exc)

    assert peak_bytes(load) < 16 * 2**20


# --------------------------------------------------------------------------- 6: complex, RGB, negatives
@pytest.mark.parametrize("command", COMMANDS)
def test_complex_series_is_refused(command, tmp_path, capsys):
    rng = np.random.default_rng(1)
    data = (rng.random((4, 4, 60, FRAMES)) + 1j * rng.random((4, 4, 60, FRAMES))).astype(np.complex64)
    path = series_nifti(tmp_path / "cplx.nii.gz", data)
    run_cli(cli_args(command, path, tmp_path), capsys, code=1, says=("cplx.nii.gz", "complex"))
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "out").exists()


def test_rgb_image_is_refused(tmp_path):
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = series_nifti(tmp_path / "rgb.nii.gz", rgb)
    with pytest.raises(InputFileError, match=r"rgb\.nii\.gz: voxel type .* not a real-valued image"):
        load_nifti(path, ndim=3)


@pytest.mark.parametrize("command", COMMANDS)
def test_negative_magnitudes_are_refused(command, tmp_path, capsys):
    data = np.ones((4, 4, 60, FRAMES), np.float32)
    data[1, 2, 3, 4] = -0.5
    data[0, 0, 0, :] = -1.0
    path = series_nifti(tmp_path / "neg.nii.gz", data)
    r = run_cli(cli_args(command, path, tmp_path), capsys, code=1, says=("neg.nii.gz", "negative"))
    assert "2 voxel(s)" in r.err
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "out").exists()


def test_rounding_sized_negatives_of_scaled_int16_become_zero(tmp_path):
    data = np.ones((3, 3, 3, 4), np.float32) * 1000
    data[0, 0, 0, 0] = -1e-4  # -1e-7 of the peak: rounding, not a signed value
    path = series_nifti(tmp_path / "ok.nii.gz", data)
    got, _, _ = load_nifti(path, ndim=4, magnitude=True)
    assert got.min() == 0.0
    # Masks and references are not magnitudes: their signs are kept.
    assert load_nifti(path, ndim=4)[0].min() < 0


# --------------------------------------------------------------------------- 6: norms
def _atoms(rng, n=40, t=12):
    return np.abs(rng.normal(size=(n, t))).astype(np.float32) + 0.05


def test_wrong_norms_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    atoms = _atoms(rng)
    params = {"T1": np.arange(len(atoms), dtype=float)}
    true = np.linalg.norm(atoms.astype(np.float64), axis=1)
    for bad, words in [(true * 2, "differ from the atoms"), (true[:5], "shape"), (-true, "positive"),
                       (np.where(np.arange(len(true)) == 3, np.nan, true), "finite")]:
        with pytest.raises(DictionaryError, match=words):
            Dictionary(atoms, params, norms=bad)
    d = Dictionary(atoms, params, norms=true.astype(np.float32))  # float32 rounding is fine
    np.testing.assert_allclose(d.norms, true, rtol=1e-14)  # its own norms, not the float32 ones given
    # A saved dictionary whose norms were tampered with is refused on load, naming the file.
    path = d.save(tmp_path / "d.npz")
    with np.load(path) as z:
        parts = dict(z)
    parts["norms"] = parts["norms"] * 3
    np.savez(tmp_path / "tampered.npz", **parts)
    with pytest.raises(InputFileError, match=r"tampered\.npz: norms differ"):
        Dictionary.load(tmp_path / "tampered.npz")


@FAST
@given(seed=st.integers(0, 2**16), factor=st.floats(0.5, 2.0), n=st.integers(1, 30))
def test_property_norms_must_be_the_atoms_own(seed, factor, n):
    atoms = _atoms(np.random.default_rng(seed), n=n)
    true = np.linalg.norm(atoms.astype(np.float64), axis=1)
    params = {"T1": np.arange(n, dtype=float)}
    if abs(factor - 1) > 1e-4:
        with pytest.raises(DictionaryError):
            Dictionary(atoms, params, norms=true * factor)
    m = match(atoms * 2.0, Dictionary(atoms, params, norms=true), backend="numpy")
    np.testing.assert_allclose(m.m0, 2.0, rtol=1e-5)


# --------------------------------------------------------------------------- 6: MP-PCA scale
@pytest.fixture(scope="module")
def mppca_data():
    rng = np.random.default_rng(0)
    return np.abs(rng.normal(1.0, 0.3, size=(7, 6, 5, 10))).astype(np.float32)


@pytest.mark.parametrize("backend", MPPCA_BACKENDS)
@pytest.mark.parametrize("scale", [1e-20, 1e19, 1e25, 1e37])
def test_mppca_is_scale_equivariant(backend, scale, mppca_data):
    ref = mppca(mppca_data, backend=backend)
    got = mppca(mppca_data * np.float32(scale), backend=backend)
    assert np.isfinite(got.denoised).all() and np.isfinite(got.sigma).all()
    np.testing.assert_array_equal(got.n_components, ref.n_components)
    np.testing.assert_allclose(got.denoised / scale, ref.denoised, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sigma / scale, ref.sigma, rtol=1e-4)


@FAST
@given(exponent=st.integers(-30, 30), backend=st.sampled_from(MPPCA_BACKENDS[:1] + MPPCA_BACKENDS[2:]),
       shape=st.tuples(st.integers(3, 6), st.integers(3, 6), st.integers(2, 5), st.integers(4, 12)),
       seed=st.integers(0, 2**16))
def test_property_mppca_scale(exponent, backend, shape, seed):
    x = np.abs(np.random.default_rng(seed).normal(1.0, 0.3, size=shape)).astype(np.float32)
    a = np.float32(10.0**exponent)
    ref = mppca(x, backend=backend, patch_radius=1)
    got = mppca(x * a, backend=backend, patch_radius=1)
    # Rare windows at the MP threshold may keep one component more or less (rounding).
    same = (got.n_components == ref.n_components).all(axis=(1, 2))
    assert same.mean() > 0.5
    ok = np.broadcast_to(same[:, None, None, None], x.shape)
    np.testing.assert_allclose((got.denoised / a)[ok], ref.denoised[ok], rtol=1e-4, atol=1e-5)


def test_mppca_nonfinite_output_is_an_error_not_ok(monkeypatch, mppca_data):
    import mrfengine.denoise.api as api

    real = api._finalize

    def overflowing(x, out, *args, **kwargs):
        sigma, n = real(x, out, *args, **kwargs)
        out[0, 0, 0, 0] = np.inf  # what a float32 overflow of the estimate leaves
        return sigma, n

    monkeypatch.setattr(api, "_finalize", overflowing)
    with pytest.raises(ValidationError, match="1 non-finite value"):
        mppca(mppca_data, backend="numpy")


def test_mppca_nonfinite_input_counts_voxels(mppca_data):
    bad = mppca_data.copy()
    bad[0, 0, 0, :3] = np.nan
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(ValidationError, match=r"4 NaN/Inf value\(s\) in 2 voxel\(s\)"):
        mppca(bad, backend="numpy")


# --------------------------------------------------------------------------- 6: matching scale
@pytest.fixture(scope="module")
def small_mrf_dictionary():
    grid = ParameterGrid(t1_ms=tuple(np.geomspace(200, 4000, 12)), t2star_ms=tuple(np.geomspace(5, 500, 12)),
                         b1=(0.9, 1.0, 1.1))
    return simulate_dictionary(hermann2021(1), 3, grid=grid)


@pytest.mark.parametrize("backend", MATCH_BACKENDS)
@pytest.mark.parametrize("method", ["brute", "structured"])
@pytest.mark.parametrize("scale", [1e-38, 1e-30, 1e30, 3e37])
def test_match_is_scale_equivariant(backend, method, scale, small_mrf_dictionary):
    d = small_mrf_dictionary
    if method == "structured" and backend == "numba":
        pytest.skip("numba has no structured search")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, d.n_atoms, 60)
    x = (d.atoms[idx] * rng.uniform(0.5, 2.0, (60, 1))).astype(np.float32)
    x += rng.normal(0, 0.01 * x.mean(), x.shape).astype(np.float32)
    ref = match(x, d, backend=backend, method=method)
    got = match(x * np.float32(scale), d, backend=backend, method=method)
    np.testing.assert_array_equal(got.index, ref.index)
    for k in ("T1", "T2star", "B1"):
        np.testing.assert_array_equal(got.params[k], ref.params[k])
    np.testing.assert_allclose(got.m0 / scale, ref.m0, rtol=1e-5)
    np.testing.assert_allclose(got.correlation, ref.correlation, rtol=1e-6)


@FAST
@given(exponent=st.integers(-30, 30), backend=st.sampled_from(MATCH_BACKENDS),
       n_atoms=st.integers(1, 50), n_frames=st.integers(2, 24), n_vox=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_property_match_scale(exponent, backend, n_atoms, n_frames, n_vox, seed):
    rng = np.random.default_rng(seed)
    atoms = _atoms(rng, n_atoms, n_frames)
    d = Dictionary(atoms, {"T1": np.arange(n_atoms, dtype=float)})
    x = np.abs(rng.normal(size=(n_vox, n_frames))).astype(np.float32) + 0.01
    a = np.float32(10.0**exponent)
    ref = match(x, d, backend=backend)
    got = match(x * a, d, backend=backend)
    # Ties aside (equal scores within rounding), the same atom wins.
    agree = got.index == ref.index
    dn = d.normalized.astype(np.float64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    tie = np.abs(np.einsum("ij,ij->i", xn, dn[got.index]) - np.einsum("ij,ij->i", xn, dn[ref.index])) < 1e-5
    assert (agree | tie).all()
    np.testing.assert_allclose((got.m0 / a)[agree], ref.m0[agree], rtol=1e-5)


def test_match_m0_sign_is_the_least_squares_scale():
    """Signed real data stay allowed in the library: M0 is negative exactly where x ~ -|m0| d."""
    rng = np.random.default_rng(5)
    atoms = _atoms(rng)
    d = Dictionary(atoms, {"T1": np.arange(len(atoms), dtype=float)})
    r = match(np.stack([atoms[3] * 2.0, -atoms[7] * 0.5]), d, backend="numpy")
    np.testing.assert_array_equal(r.index, [3, 7])
    np.testing.assert_allclose(r.m0, [2.0, -0.5], rtol=1e-6)


def test_denoise_then_match_pipeline_at_1e37_gives_the_maps_of_1():
    """The batch pipeline's stages on a series scaled by 1e37: the same maps, M0 scaled
    (before: 99% of T1 values differed, silently, and the status said ok)."""
    from mrfengine.dictionary import fingerprints
    from mrfengine.pipeline import Pipeline
    from mrfengine.pipeline.stages import run_stages

    seq = hermann2021(1, n_slices=12)  # the tiny cohort's sequence
    z, y, x = seq.n_slices, 6, 6
    rng = np.random.default_rng(0)
    t1, t2 = rng.uniform(600, 1500, y * x), rng.uniform(40, 90, y * x)
    mrf = np.stack([fingerprints(seq, seq.slot_of_slice(k), t1_ms=t1, t2star_ms=t2, b1=np.ones(y * x),
                                 m0=np.ones(y * x)).T.reshape(-1, y, x) for k in range(z)], axis=1)
    mrf = np.abs(mrf + rng.normal(0, 0.002, mrf.shape)).astype(np.float32)
    pipe = Pipeline.from_stages("denoise,match")
    ref = run_stages(pipe, {"mrf": mrf, "mask": None, "sequence": seq})[0]["derived"]
    big = run_stages(pipe, {"mrf": mrf * np.float32(1e37), "mask": None, "sequence": seq})[0]["derived"]
    assert np.isfinite(big["T1"]).all()
    # 1e37 is no power of two: float32 rounding may move a near-tie to its grid neighbour.
    same = np.ones(ref["T1"].shape, dtype=bool)
    for k in ("T1", "T2star", "B1"):
        same &= big[k] == ref[k]
    assert same.mean() > 0.97, f"{same.mean():.1%} of voxels kept their maps"
    np.testing.assert_allclose((big["M0"] / 1e37)[same], ref["M0"][same], rtol=1e-4)


def test_forged_claim_within_gzip_ratio_is_counted_not_allocated(tmp_path, capsys):
    """Incompressible bytes: the gzip file is as large as its content (256 KiB), so a 240 MiB
    claim passes gzip's ratio bound; the stream is counted before an array is allocated."""
    noise = np.random.default_rng(0).bytes(256 * 1024)
    bomb = header_only_gz(tmp_path / "dense.nii.gz", (512, 512, 240), tail=noise)
    assert bomb.stat().st_size * 1100 > 512 * 512 * 240 * 4
    peak = peak_bytes(lambda: run_cli(cli_args("match", bomb, tmp_path), capsys, code=1,
                                      says=("dense.nii.gz", "truncated", "gzip stream holds")))
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


def test_out_of_core_mppca_is_scale_equivariant(tmp_path, mppca_data):
    """``mppca_zarr`` goes through the same scaled core, slab by slab."""
    import zarr

    from mrfengine.denoise import mppca_zarr

    series = np.ascontiguousarray(np.moveaxis(mppca_data, -1, 0)) * np.float32(1e37)  # (T, Z, Y, X)
    root = zarr.open_group(tmp_path / "s.zarr", mode="w")
    src = root.create_array("src", shape=series.shape, chunks=(series.shape[0], 2) + series.shape[2:], dtype="f4")
    src[...] = series
    dst = root.create_array("dst", shape=series.shape, chunks=src.chunks, dtype="f4")
    mppca_zarr(src, dst, channel_axis=0, slab_planes=2, backend="numpy")
    ref = mppca(mppca_data, backend="numpy").denoised
    np.testing.assert_allclose(np.moveaxis(dst[...], 0, -1) / 1e37, ref, rtol=1e-4, atol=1e-5)
