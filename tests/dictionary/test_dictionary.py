import numpy as np
import pytest

from mrfengine import Dictionary
from mrfengine.dictionary import (
    DictionaryCache,
    ParameterGrid,
    SliceDictionaries,
    fingerprints,
    geometric_range,
    paper_grid,
    simulate_dictionary,
)
from mrfengine.errors import DictionaryError, InputFileError
from mrfengine.sequence import Sequence, hermann2021


def small_grid():
    return ParameterGrid.geometric((300, 3000), (10, 1000), 0.2, (0.8, 1.2, 0.2))


def test_paper_grid():
    g = paper_grid()
    n_b1, n_t1, n_t2 = g.shape
    assert (n_b1, n_t1, n_t2) == (9, 51, 114)
    np.testing.assert_allclose(g.t1_ms[:2], [300.0, 315.0])
    assert g.t1_ms[-1] <= 3500 < g.t1_ms[-1] * 1.05
    assert g.t2star_ms[-1] <= 2500 < g.t2star_ms[-1] * 1.05
    np.testing.assert_allclose(g.b1, np.round(np.arange(0.6, 1.41, 0.1), 10))
    p = g.atom_parameters()
    assert g.n_atoms == p["T1"].size == 43416
    assert np.all(p["T2star"] <= p["T1"])
    # No (T1, T2*, B1) combination twice.
    assert len(set(zip(p["T1"].tolist(), p["T2star"].tolist(), p["B1"].tolist()))) == g.n_atoms


def test_geometric_range():
    np.testing.assert_allclose(geometric_range(10, 12.1, 0.1), [10, 11, 12.1])
    with pytest.raises(DictionaryError):
        geometric_range(0, 10, 0.1)


def test_grid_validation():
    with pytest.raises(DictionaryError, match="strictly increasing"):
        ParameterGrid((300.0, 200.0), (10.0,), (1.0,))
    with pytest.raises(DictionaryError, match="no atom left"):
        ParameterGrid((100.0,), (200.0,), (1.0,))
    g = ParameterGrid((100.0,), (200.0,), (1.0,), drop_t2star_above_t1=False)
    assert g.n_atoms == 1


def test_atoms_are_the_signal_model():
    seq = hermann2021(1)
    grid = small_grid()
    d = simulate_dictionary(seq, 11, grid, dtype=np.float64)
    p = d.params
    ref = fingerprints(seq, 11, p["T1"], p["T2star"], p["B1"])
    np.testing.assert_allclose(d.atoms, ref, rtol=1e-12)
    assert d.params["T1"].dtype == np.float64
    d32 = simulate_dictionary(seq, 11, grid)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32.atoms, d.atoms, rtol=1e-6)
    np.testing.assert_allclose(d.norms, np.linalg.norm(d.atoms, axis=1))
    np.testing.assert_allclose(np.linalg.norm(d.normalized, axis=1), 1.0)
    assert d.metadata["slot"] == 11 and d.metadata["sequence"]["name"] == seq.name


def test_each_slot_has_its_own_dictionary():
    seq = hermann2021(1)
    g = small_grid()
    a, b = simulate_dictionary(seq, 3, g), simulate_dictionary(seq, 4, g)
    assert not np.allclose(a.atoms, b.atoms)
    sd = SliceDictionaries(hermann2021(2), g, cache=False)
    assert sd.for_slice(0) is sd.for_slice(20) is sd.for_slice(40)
    assert sd.for_slice(0) is not sd.for_slice(1)


def test_dictionary_validation():
    good = np.ones((3, 4))
    with pytest.raises(DictionaryError, match="2-D"):
        Dictionary(np.ones(4), {"T1": [1]})
    with pytest.raises(DictionaryError, match="NaN or Inf"):
        Dictionary(np.array([[1.0, np.nan]]), {"T1": [1]})
    with pytest.raises(DictionaryError, match="all zero"):
        Dictionary(np.array([[1.0, 1.0], [0.0, 0.0]]), {"T1": [1, 2]})
    with pytest.raises(DictionaryError, match=r"shape \(3,\)"):
        Dictionary(good, {"T1": [1, 2]})
    with pytest.raises(DictionaryError, match="non-empty mapping"):
        Dictionary(good, {})
    d = Dictionary(good, {"T1": [1, 2, 3]})
    with pytest.raises(ValueError):
        d.atoms[0, 0] = 5  # read-only
    assert d.dtype == np.float64 and len(d) == 3
    assert Dictionary(np.ones((3, 4), dtype=np.int16), {"T1": [1, 2, 3]}).dtype == np.float32


def test_svd_compression():
    d = simulate_dictionary(hermann2021(1), 0, small_grid(), dtype=np.float64)
    full = d.compress(d.n_frames)
    assert full.energy == pytest.approx(1.0)
    np.testing.assert_allclose(full.basis.T @ full.basis, np.eye(d.n_frames), atol=1e-10)
    c = d.compress(energy=0.9999)
    assert c.energy >= 0.9999 and c.rank < d.n_frames
    # Energy kept equals the reconstructed norm of the normalised atoms.
    rec = c.atoms @ c.basis.T
    kept = np.sum(rec**2) / np.sum(d.normalized**2)
    assert kept == pytest.approx(c.energy, rel=1e-9)
    assert d.compress(energy=0.9999) is c  # cached
    c5 = d.compress(5)
    assert c5.rank == 5 and c5.atoms.shape == (d.n_atoms, 5)
    with pytest.raises(DictionaryError):
        d.compress(0)
    with pytest.raises(DictionaryError):
        d.compress(energy=1.5)


def test_save_load(tmp_path):
    d = simulate_dictionary(hermann2021(1), 2, small_grid())
    path = d.save(tmp_path / "d.npz")
    e = Dictionary.load(path)
    np.testing.assert_array_equal(e.atoms, d.atoms)
    for k in d.params:
        np.testing.assert_array_equal(e.params[k], d.params[k])
    assert e.metadata == d.metadata and e.digest == d.digest
    np.testing.assert_array_equal(e.norms, d.norms)
    with np.load(path) as z:
        assert "norms" in z.files
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputFileError, match="cut.npz"):
        Dictionary.load(tmp_path / "cut.npz")
    with pytest.raises(InputFileError, match="nothing.npz"):
        Dictionary.load(tmp_path / "nothing.npz")


def test_cache_never_simulates_twice(tmp_path, monkeypatch):
    import mrfengine.dictionary.build as build

    seq = hermann2021(1)
    grid = small_grid()
    first = SliceDictionaries(seq, grid, cache=tmp_path)
    d = first[5]
    key = DictionaryCache.key(seq, 5, grid, np.dtype(np.float32))
    assert (tmp_path / f"{key}.npz").is_file()

    def fail(*a, **k):
        raise AssertionError("simulated again")

    monkeypatch.setattr(build, "simulate_dictionary", fail)
    again = SliceDictionaries(seq, grid, cache=tmp_path)[5]
    np.testing.assert_array_equal(again.atoms, d.atoms)
    # A different sequence, grid or dtype is a different key.
    assert DictionaryCache.key(hermann2021(2), 5, grid, np.dtype(np.float32)) != key
    assert DictionaryCache.key(seq, 5, paper_grid(), np.dtype(np.float32)) != key
    assert DictionaryCache.key(seq, 5, grid, np.dtype(np.float64)) != key
    assert DictionaryCache.key(seq, 6, grid, np.dtype(np.float32)) != key


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    seq = hermann2021(1)
    grid = small_grid()
    key = DictionaryCache.key(seq, 1, grid, np.dtype(np.float32))
    (tmp_path / f"{key}.npz").write_bytes(b"garbage")
    d = SliceDictionaries(seq, grid, cache=tmp_path)[1]
    ref = simulate_dictionary(seq, 1, grid)
    np.testing.assert_array_equal(d.atoms, ref.atoms)
    assert Dictionary.load(tmp_path / f"{key}.npz").digest == ref.digest
