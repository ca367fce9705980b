import numpy as np
import pytest

from mrfengine import Dictionary, match, match_slices
from mrfengine.backend import probe
from mrfengine.dictionary import ParameterGrid, SliceDictionaries, fingerprints, simulate_dictionary
from mrfengine.errors import BackendUnavailableError, ValidationError
from mrfengine.sequence import hermann2021

HAS_CPP = probe("cpp").available
BACKENDS = ["numpy"] + [b for b in ("cpp", "numba") if probe(b).available]
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")


@pytest.fixture(scope="module")
def paper_slot7():
    return simulate_dictionary(hermann2021(1), 7, dtype=np.float64)


def random_dictionary(rng, n_atoms, n_frames, dtype=np.float32):
    atoms = np.abs(rng.normal(size=(n_atoms, n_frames))) + 0.05
    return Dictionary(atoms.astype(dtype), {"T1": np.arange(n_atoms, dtype=float), "k": np.arange(n_atoms)})


def test_noise_free_atoms_are_recovered_exactly(paper_slot7):
    d = paper_slot7
    rng = np.random.default_rng(1)
    idx = rng.choice(d.n_atoms, 3000, replace=False)
    scale = rng.uniform(0.3, 2.0, idx.size)
    r = match(d.atoms[idx] * scale[:, None], d, backend="numpy", method="brute")
    np.testing.assert_array_equal(r.index, idx)
    for k in ("T1", "T2star", "B1"):
        np.testing.assert_array_equal(r.params[k], d.params[k][idx])
    np.testing.assert_allclose(r.m0, scale, rtol=1e-5)
    np.testing.assert_allclose(r.correlation, 1.0, rtol=1e-6)
    assert r.matched.all()


@pytest.mark.parametrize(
    "backend, method", [(b, m) for b in BACKENDS for m in ("brute", "structured") if (b, m) != ("numba", "structured")]
)
def test_float32_recovers_atoms_up_to_float32_resolution(backend, method):
    """float32 cannot separate atoms whose cosine differs from 1 by < ~1e-6:
    in the paper grid, T2* neighbours above ~900 ms.  Below that, exact."""
    d = simulate_dictionary(hermann2021(1), 7)
    rng = np.random.default_rng(2)
    idx = rng.choice(d.n_atoms, 4000, replace=False)
    r = match(d.atoms[idx] * 1.7, d, backend=backend, method=method)
    assert r.method == method
    short = d.params["T2star"][idx] < 300
    np.testing.assert_array_equal(r.index[short], idx[short])
    dn = d.normalized.astype(np.float64)
    cos = np.einsum("ij,ij->i", dn[idx], dn[r.index])
    assert cos.min() > 1 - 1e-6


@needs_cpp
@pytest.mark.parametrize("n_atoms", [1, 17, 31, 32, 33, 1000, 4099])
@pytest.mark.parametrize("n_frames", [3, 35, 100])
def test_cpp_agrees_with_numpy_on_odd_sizes(n_atoms, n_frames):
    rng = np.random.default_rng(n_atoms * 1000 + n_frames)
    d = random_dictionary(rng, n_atoms, n_frames)
    x = np.abs(rng.normal(size=(37, n_frames))).astype(np.float32)
    a = match(x, d, backend="numpy")
    b = match(x, d, backend="cpp")
    # Indices agree except where float32 rounding separates near-ties; the
    # chosen atom's score must then equal the reference's best.
    differ = a.index != b.index
    np.testing.assert_allclose(b.correlation[differ], a.correlation[differ], rtol=1e-5)
    assert differ.mean() < 0.05
    np.testing.assert_allclose(b.correlation, a.correlation, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_voxel_and_ties(backend):
    atoms = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]], dtype=np.float32)
    d = Dictionary(atoms, {"T1": [10.0, 20.0, 30.0, 40.0]})
    r = match(np.array([2.0, 4.0, 6.0]), d, backend=backend)
    # Atoms 0, 2 and 3 are the same direction: the first wins (numpy argmax rule).
    assert r.index.shape == () and int(r.index) == 0 and float(r.params["T1"]) == 10.0
    assert float(r.m0) == pytest.approx(2.0)
    assert float(r.correlation) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_voxels_are_masked_or_rejected(backend, caplog):
    rng = np.random.default_rng(3)
    d = random_dictionary(rng, 50, 35)
    x = np.abs(rng.normal(size=(6, 35))).astype(np.float32)
    x[1, 4] = np.nan
    x[2, 0] = np.inf
    x[3] = 0.0
    mask = np.ones(6, bool)
    mask[5] = False
    r = match(x, d, mask=mask, backend=backend)
    np.testing.assert_array_equal(r.matched, [True, False, False, False, True, False])
    np.testing.assert_array_equal(r.index[~r.matched], -1)
    assert np.all(np.isnan(r.params["T1"][~r.matched]))
    assert np.all(r.m0[~r.matched] == 0) and np.all(r.correlation[~r.matched] == 0)
    assert r.params["k"].dtype == np.float64  # integer parameters become float for NaN
    assert "2 voxel(s) with NaN/Inf frames and 1 all-zero voxel(s)" in caplog.text
    with pytest.raises(ValidationError, match="NaN/Inf"):
        match(x, d, backend=backend, invalid="raise")
    # Masking the bad voxels away is enough for invalid="raise".
    ok = np.array([True, False, False, False, True, True])
    assert match(x, d, mask=ok, invalid="raise", backend=backend).matched.sum() == 3


def test_shapes_axes_and_errors():
    rng = np.random.default_rng(4)
    d = random_dictionary(rng, 40, 35)
    x = np.abs(rng.normal(size=(4, 5, 35))).astype(np.float32)
    r = match(x, d)
    assert r.params["T1"].shape == (4, 5) and r.m0.shape == (4, 5) and r.index.shape == (4, 5)
    r0 = match(np.moveaxis(x, -1, 0), d, channel_axis=0)
    np.testing.assert_array_equal(r0.index, r.index)
    with pytest.raises(ValidationError, match=r"must have 35 frames .* along axis 2; got shape \(4, 5, 34\)"):
        match(x[..., :34], d)
    with pytest.raises(ValidationError, match="mask must have the signals' spatial shape"):
        match(x, d, mask=np.ones((5, 4), bool))
    with pytest.raises(ValidationError, match="channel_axis 3 is out of range"):
        match(x, d, channel_axis=3)
    with pytest.warns(DeprecationWarning, match="match: the keyword 'axis' is deprecated; use 'channel_axis'"):
        old = match(np.moveaxis(x, -1, 0), d, axis=0)
    np.testing.assert_array_equal(old.index, r.index)
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError, match="give channel_axis only"):
        match(x, d, channel_axis=2, axis=0)
    with pytest.raises(ValidationError, match="backend must be"):
        match(x, d, backend="fortran")
    with pytest.raises(ValidationError, match="mrfengine.Dictionary"):
        match(x, np.ones((3, 35)))
    with pytest.raises(ValidationError, match="numeric"):
        match(np.array(["a"] * 35), d)
    empty = match(np.zeros((0, 35), np.float32), d)
    assert empty.index.shape == (0,)


def test_unavailable_backend_is_an_error_and_auto_falls_back(monkeypatch):
    import mrfengine.backend as backend
    from mrfengine.backend import BackendInfo

    monkeypatch.setattr(backend, "probe", lambda name: BackendInfo(name, name == "numpy", "missing for the test"))
    rng = np.random.default_rng(5)
    d = random_dictionary(rng, 20, 35)
    x = np.abs(rng.normal(size=(3, 35)))
    with pytest.raises(BackendUnavailableError, match="missing for the test"):
        match(x, d, backend="cpp")
    assert match(x, d).backend == "numpy"


@pytest.mark.parametrize("backend", BACKENDS)
def test_complex_signals_on_every_backend(backend):
    rng = np.random.default_rng(6)
    atoms = rng.normal(size=(30, 35)) + 1j * rng.normal(size=(30, 35))
    d = Dictionary(atoms, {"T1": np.arange(30.0)})
    x = atoms[[4, 9]] * np.array([[2 * np.exp(1j)], [0.5 * np.exp(-2j)]])
    r = match(x, d, backend=backend)
    assert backend == "auto" or r.backend == backend
    np.testing.assert_array_equal(r.index, [4, 9])
    np.testing.assert_allclose(r.m0, [2 * np.exp(1j), 0.5 * np.exp(-2j)], rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_svd_compressed_search_rescored_exactly(backend, paper_slot7):
    d = paper_slot7
    rng = np.random.default_rng(7)
    seq = hermann2021(1)
    t1, t2, b1 = rng.uniform(700, 1600, 500), rng.uniform(30, 90, 500), rng.uniform(0.7, 1.3, 500)
    clean = fingerprints(seq, 7, t1, t2, b1, 0.8)
    noisy = np.abs(clean + 0.004 * (rng.normal(size=clean.shape) + 1j * rng.normal(size=clean.shape)))
    full = match(noisy, d, backend=backend)
    same = match(noisy, d, backend=backend, rank=d.n_frames)
    # Full rank finds the same atoms, up to float32 near-ties in the C++ kernel.
    np.testing.assert_allclose(same.correlation, full.correlation, rtol=1e-6)
    assert (same.index == full.index).mean() > 0.99
    low = match(noisy, d, backend=backend, rank=10)
    assert low.rank == 10 and (low.index == full.index).mean() > 0.8
    # Correlation and M0 are recomputed with the full atom: never above the full search's best.
    assert np.all(low.correlation <= full.correlation + 1e-6)
    dn = d.normalized
    expect = np.einsum("ij,ij->i", noisy, dn[low.index]) / np.linalg.norm(noisy, axis=1)
    np.testing.assert_allclose(low.correlation, expect, rtol=1e-5)


@pytest.mark.parametrize(
    "backend, method", [(b, m) for b in BACKENDS for m in ("brute", "structured") if (b, m) != ("numba", "structured")]
)
def test_noisy_matching_is_accurate(backend, method):
    from mrfengine.testing import random_fingerprints

    seq = hermann2021(1)
    d = simulate_dictionary(seq, 12)
    noisy, truth = random_fingerprints(seq, 12, 2000, np.random.default_rng(8), snr=50.0)
    r = match(noisy, d, backend=backend, method=method)
    assert r.method == method
    assert np.median(np.abs(r.params["T1"] / truth["T1"] - 1)) < 0.03
    assert np.median(np.abs(r.params["T2star"] / truth["T2star"] - 1)) < 0.03
    assert np.median(np.abs(r.m0 / 0.8 - 1)) < 0.03


def test_match_slices_uses_each_slices_dictionary():
    seq = hermann2021(2, n_slices=6)  # SMS 3: 2 slots
    grid = ParameterGrid.geometric((300, 3000), (10, 1000), 0.1, (0.8, 1.2, 0.1))
    sd = SliceDictionaries(seq, grid, cache=False)
    rng = np.random.default_rng(9)
    shape = (3, 4)
    vol = np.empty(shape + (6, 35))
    truth = []
    for z in range(6):
        d = sd.for_slice(z)
        idx = rng.integers(0, d.n_atoms, shape)
        vol[:, :, z] = d.atoms[idx]
        truth.append(idx)
    r = match_slices(vol, sd, slice_axis=2, channel_axis=-1, backend="numpy")
    assert r.index.shape == (3, 4, 6)
    for z in range(6):
        d = sd.for_slice(z)
        # Each voxel finds a perfect match in its own slice's dictionary (with
        # 2 slots, short T1 recover fully, so the atom itself may be a twin).
        np.testing.assert_allclose(r.correlation[:, :, z], 1.0, rtol=1e-5)
        single = match(vol[:, :, z], d, backend="numpy")
        np.testing.assert_array_equal(r.index[:, :, z], single.index)
    # The frame axis first and slices last works too; the mask follows the spatial axes.
    mask = np.zeros((3, 4, 6), bool)
    mask[1:, :, ::2] = True
    r2 = match_slices(np.moveaxis(vol, -1, 0), sd, slice_axis=3, channel_axis=0, mask=mask, backend="numpy")
    np.testing.assert_array_equal(r2.matched, mask)
    np.testing.assert_array_equal(r2.index[mask], r.index[mask])
    with pytest.raises(ValidationError, match="slices"):
        match_slices(vol[:, :, :5], sd, slice_axis=2)
    with pytest.raises(ValidationError, match="must differ"):
        match_slices(vol, sd, slice_axis=3, channel_axis=-1)
    # The frame axis's former name still works, with a DeprecationWarning.
    with pytest.warns(DeprecationWarning, match="match_slices: the keyword 'axis' is deprecated; use 'channel_axis'"):
        r3 = match_slices(np.moveaxis(vol, -1, 0), sd, slice_axis=3, axis=0, mask=mask, backend="numpy")
    np.testing.assert_array_equal(r3.index, r2.index)
