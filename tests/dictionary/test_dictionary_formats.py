"""Dictionary.load for the files other MRF tools write: .npz, HDF5, MATLAB v5 and v7.3 (HDF5 with a
MATLAB userblock and MATLAB's axis order), real and complex, long fingerprints; ambiguous and
truncated files refused naming the file."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from mrfengine import Dictionary
from mrfengine.dictionary.io import dictionary_arrays, load_dictionary
from mrfengine.errors import DictionaryError, InputFileError

h5py = pytest.importorskip("h5py")

N_FRAMES = 1200  # long fingerprints (FISP / bSSFP lengths)
T1_GRID = np.array([300.0, 800.0, 1500.0, 3000.0])
T2_GRID = np.array([20.0, 60.0, 200.0])


def _fisp_like(complex_: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 atoms x 1200 frames: inversion recovery times a T2 decay over a varying schedule; complex with
    an off-resonance-like phase that depends on T2 (so the phase matters)."""
    t1, t2 = (g.ravel() for g in np.meshgrid(T1_GRID, T2_GRID, indexing="ij"))
    t = np.linspace(10.0, 6000.0, N_FRAMES)
    fa = 0.2 + 0.15 * np.sin(np.arange(N_FRAMES) / 40.0)
    atoms = (1 - 2 * np.exp(-t / t1[:, None])) * np.exp(-((t % 300.0) / t2[:, None])) * np.sin(fa)
    if complex_:
        atoms = atoms * np.exp(1j * (np.arange(N_FRAMES) * 0.01) * (50.0 / t2[:, None]))
    return atoms, t1, t2


def _same(d: Dictionary, atoms: np.ndarray, t1_ms: np.ndarray, t2_ms: np.ndarray) -> None:
    assert d.n_frames == N_FRAMES and d.n_atoms == atoms.shape[0]
    assert np.iscomplexobj(d.atoms) == np.iscomplexobj(atoms)
    np.testing.assert_allclose(d.atoms, atoms, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d.params["T1"], t1_ms, rtol=1e-9)
    np.testing.assert_allclose(d.params["T2"], t2_ms, rtol=1e-9)


def _write_v73(path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 behind a 512-byte userblock that starts with the MATLAB
    header text, every array's axes reversed (column-major), complex as a compound {real, imag}, cell
    arrays of strings as object references to uint16 char arrays under #refs#."""
    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")

        def char(group, name, text):
            ds = group.create_dataset(name, data=np.array([[ord(c)] for c in text], np.uint16))  # MATLAB 1 x L
            ds.attrs["MATLAB_class"] = np.bytes_("char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            return ds

        def put(group, name, value):
            if isinstance(value, dict):
                g = group.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("struct")
                for k, v in value.items():
                    put(g, k, v)
            elif isinstance(value, list):  # a 1 x n cell of strings
                targets = [char(refs, f"{name}{i}", s) for i, s in enumerate(value)]
                ds = group.create_dataset(name, (len(value), 1), dtype=h5py.ref_dtype)
                for i, target in enumerate(targets):
                    ds[i, 0] = target.ref
                ds.attrs["MATLAB_class"] = np.bytes_("cell")
            else:
                arr = np.atleast_2d(np.asarray(value))  # MATLAB has no 1-D arrays: a vector is 1 x n
                if np.iscomplexobj(arr):
                    stored = np.empty(arr.T.shape, np.dtype([("real", "<f8"), ("imag", "<f8")]))
                    stored["real"], stored["imag"] = arr.T.real, arr.T.imag
                else:
                    stored = arr.T
                ds = group.create_dataset(name, data=stored)
                ds.attrs["MATLAB_class"] = np.bytes_("double")

        for name, value in variables.items():
            put(f, name, value)
    with open(path, "r+b") as fh:
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
        fh.write(header.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")


# ------------------------------------------------------------------------------------------------ formats
def test_mrfengine_own_npz_round_trips_through_the_new_reader(tmp_path):
    atoms, t1, t2 = _fisp_like(False)
    d = Dictionary(atoms.astype(np.float32), {"T1": t1, "T2": t2}, metadata={"sequence": "x"})
    back = Dictionary.load(d.save(tmp_path / "own"))
    assert back.digest == d.digest and back.metadata == {"sequence": "x"}


def test_plain_npz_with_named_arrays_either_orientation(tmp_path, caplog):
    atoms, t1, t2 = _fisp_like(False)
    np.savez(tmp_path / "a.npz", atoms=atoms, T1=t1, T2=t2)
    d = Dictionary.load(tmp_path / "a.npz")
    _same(d, atoms, t1, t2)
    assert d.metadata["source"]["layout"] == "atoms x frames" and d.metadata["units_assumed"] == ["T1", "T2"]
    # taken as ms (T1 up to 3000 cannot be seconds), and said so: not silently
    assert "a.npz: no unit given for T1, T2; taken as ms (values up to T1 3000, T2 200)" in caplog.text
    # frames x atoms, lower-case names, and saved without an extension: found by content, names made canonical
    with open(tmp_path / "b_dictionary", "wb") as fh:
        np.savez(fh, signals=atoms.T, t1=t1, t2=t2, TR=np.full(N_FRAMES, 10.0))
    d = Dictionary.load(tmp_path / "b_dictionary")
    _same(d, atoms, t1, t2)
    assert d.metadata["source"]["layout"] == "frames x atoms" and set(d.params) == {"T1", "T2"}


def test_hdf5_complex_compound_atoms_and_a_parameter_table_in_seconds(tmp_path):
    atoms, t1, t2 = _fisp_like(True)
    path = tmp_path / "fisp.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("dictionary")
        sig = np.empty(atoms.shape, np.dtype([("r", "<f4"), ("i", "<f4")]))
        sig["r"], sig["i"] = atoms.real, atoms.imag
        g.create_dataset("signals", data=sig)
        entries = np.empty(len(t1), np.dtype([("T1", "<f8"), ("T2", "<f8"), ("B1", "<f8")]))
        entries["T1"], entries["T2"], entries["B1"] = t1 / 1000, t2 / 1000, 1.0
        ds = g.create_dataset("entries", data=entries)
        ds.attrs["units"] = np.array([b"s", b"s", b"1"])
    d = Dictionary.load(path)
    _same(d, atoms, t1, t2)
    assert d.dtype == np.complex64 and d.metadata["source"]["complex"] == "compound real/imag"
    assert d.metadata["units"] == {"T1": "ms", "T2": "ms", "B1": "1"}
    assert d.metadata["units_converted"] == {"T1": "s -> ms", "T2": "s -> ms"}
    assert dictionary_arrays(path)["dictionary/signals"] == f"{len(t1)} x {N_FRAMES} complex (compound real/imag)"


def test_matlab_v5_struct_with_lut_complex_and_normalised_atoms(tmp_path):
    atoms, t1, t2 = _fisp_like(True)
    norms = np.linalg.norm(atoms, axis=1)
    lut = np.stack([t1, t2], axis=1)
    path = tmp_path / "dict.mat"
    scipy.io.savemat(path, {"dict": {"D": atoms / norms[:, None], "lut": lut, "normD": norms}})
    with pytest.raises(InputFileError, match=r"dict\.mat.*dict\.lut.*no names.*params=\('T1', 'T2'\)") as err:
        Dictionary.load(path)
    assert "dict.D (12 x 1200 complex" in str(err.value)  # the listing of what the file holds
    d = Dictionary.load(path, params=("T1", "T2"))
    _same(d, atoms, t1, t2)  # scaled back by normD
    assert d.metadata["source"]["denormalised_with"] == "dict.normD"
    assert d.metadata["source"]["params"] == {"T1": "dict.lut[:, 0]", "T2": "dict.lut[:, 1]"}
    # the same by name, and MATLAB's look_up_names beside the table
    d = Dictionary.load(path, atoms="D", params={"T1": "dict.lut[:, 0]", "T2": "lut[:, 1]"})
    _same(d, atoms, t1, t2)
    scipy.io.savemat(path, {"dict": atoms.T.astype(np.complex64), "look_up": lut,
                            "look_up_names": np.array(["T1", "T2"], dtype=object)})
    _same(Dictionary.load(path), atoms, t1, t2)


def test_matlab_v5_frames_by_atoms_with_grid_vectors_names_the_lut_columns(tmp_path):
    atoms, t1, t2 = _fisp_like(False)
    path = tmp_path / "bssfp.mat"
    scipy.io.savemat(path, {"dict": atoms.T, "lut": np.stack([t1, t2], 1), "T1": T1_GRID, "T2": T2_GRID,
                            "RFpulses": np.ones(N_FRAMES), "TR": np.full(N_FRAMES, 10.0)})
    d = Dictionary.load(path)
    _same(d, atoms, t1, t2)
    assert d.metadata["source"]["layout"] == "frames x atoms"


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_matlab_v73_transposed_axes_compound_complex_and_cell_names(tmp_path, complex_):
    atoms, t1, t2 = _fisp_like(complex_)
    path = tmp_path / "dict73.mat"
    # as MATLAB holds them: dict frames x atoms, look_up atoms x 3, look_up_names a 1 x 3 cell
    _write_v73(path, {"dict": atoms.T, "look_up": np.stack([t1, t2, np.ones_like(t1)], 1),
                      "look_up_names": ["T1", "T2", "B1"], "TR": np.full(N_FRAMES, 10.0)})
    with open(path, "rb") as fh:
        assert fh.read(19) == b"MATLAB 7.3 MAT-file"
    listed = dictionary_arrays(path)
    assert listed["dict"].startswith(f"{N_FRAMES} x {len(t1)}") and listed["look_up"] == f"{len(t1)} x 3 real"
    d = Dictionary.load(path)
    _same(d, atoms, t1, t2)
    assert d.metadata["source"]["format"] == "matlab-v7.3" and d.metadata["source"]["layout"] == "frames x atoms"
    assert np.all(d.params["B1"] == 1.0) and d.dtype == (np.complex128 if complex_ else np.float64)


# ------------------------------------------------------------------------------------------------ refusals
def test_two_candidates_for_the_atoms_are_refused_naming_both(tmp_path):
    atoms, t1, t2 = _fisp_like(False)
    np.savez(tmp_path / "two.npz", dict=atoms, atoms=atoms * 2, T1=t1, T2=t2)
    with pytest.raises(InputFileError, match=r"two\.npz: more than one array could hold the atoms \(dict, atoms\)"):
        Dictionary.load(tmp_path / "two.npz")
    assert Dictionary.load(tmp_path / "two.npz", atoms="atoms").atoms[0, 5] == pytest.approx(2 * atoms[0, 5])
    with pytest.raises(InputFileError, match=r"two\.npz: array 'nope' is not in the file; it holds dict"):
        Dictionary.load(tmp_path / "two.npz", atoms="nope")


def test_square_atoms_need_their_layout(tmp_path):
    rng = np.random.default_rng(0)
    atoms = np.abs(rng.normal(size=(30, 30))) + 0.1
    np.savez(tmp_path / "sq.npz", D=atoms, lut=np.stack([np.linspace(300, 3000, 30), np.linspace(20, 200, 30)], 1))
    with pytest.raises(InputFileError, match=r"sq\.npz.*square \(30 x 30\).*layout="):
        Dictionary.load(tmp_path / "sq.npz", params=("T1", "T2"), n_frames=30)
    d = Dictionary.load(tmp_path / "sq.npz", params=("T1", "T2"), layout="frames x atoms")
    np.testing.assert_array_equal(d.atoms, atoms.T)  # float64 in the file: kept float64
    assert d.params["T1"][-1] == 3000 and d.metadata["source"]["layout"] == "frames x atoms"
    with pytest.raises(DictionaryError, match=r"sq\.npz.*neither axis has the 35 frames"):
        Dictionary.load(tmp_path / "sq.npz", params=("T1", "T2"), n_frames=35)


def test_times_in_seconds_without_a_unit_are_refused_and_converted_when_given(tmp_path):
    atoms, t1, t2 = _fisp_like(False)
    np.savez(tmp_path / "s.npz", atoms=atoms, T1=t1 / 1000, T2=t2 / 1000, B1=np.ones_like(t1))
    with pytest.raises(DictionaryError, match=r"s\.npz: T1 values lie in \[0\.3, 3\].*units=\{'T1': 's'\}"):
        Dictionary.load(tmp_path / "s.npz")
    d = Dictionary.load(tmp_path / "s.npz", units={"T1": "s", "t2": "s", "B1": "1"})
    _same(d, atoms, t1, t2)
    assert d.metadata["units"] == {"T1": "ms", "T2": "ms", "B1": "1"} and "units_assumed" not in d.metadata
    with pytest.raises(DictionaryError, match="not a time unit"):
        Dictionary.load(tmp_path / "s.npz", units={"T1": "fortnights", "T2": "s"})
    with pytest.raises(DictionaryError, match="units given for T2star"):
        Dictionary.load(tmp_path / "s.npz", units={"T1": "s", "T2": "s", "T2star": "s"})


def test_no_parameters_and_foreign_files_are_refused(tmp_path):
    atoms, _, _ = _fisp_like(False)
    np.savez(tmp_path / "bare.npz", atoms=atoms)
    with pytest.raises(InputFileError, match=r"bare\.npz: no per-atom parameters.*--dictionary-params"):
        Dictionary.load(tmp_path / "bare.npz")
    (tmp_path / "notes.mat").write_text("not a MAT file at all, just text " * 10)
    with pytest.raises(InputFileError, match=r"notes\.mat"):
        Dictionary.load(tmp_path / "notes.mat")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01" * 100)
    with pytest.raises(InputFileError, match=r"x\.bin: not a dictionary file mrfengine can read"):
        Dictionary.load(tmp_path / "x.bin")
    with pytest.raises(InputFileError, match=r"missing\.h5: dictionary file not found"):
        Dictionary.load(tmp_path / "missing.h5")
    # object arrays need pickle: never loaded (the array is skipped, so nothing is left to be the atoms)
    np.savez(tmp_path / "pickled.npz", atoms=np.array([object()] * 3, dtype=object))
    with pytest.raises(InputFileError, match=r"pickled\.npz: cannot tell which array holds the atoms"):
        Dictionary.load(tmp_path / "pickled.npz")


@pytest.mark.parametrize("fmt", ["npz", "hdf5", "mat-v5", "mat-v7.3"])
def test_truncated_files_are_refused_naming_the_file(tmp_path, fmt):
    atoms, t1, t2 = _fisp_like(False)
    path = tmp_path / f"cut.{fmt}"
    if fmt == "npz":
        np.savez(path, atoms=atoms, T1=t1, T2=t2)
    elif fmt == "hdf5":
        with h5py.File(path, "w") as f:
            f["atoms"], f["T1"], f["T2"] = atoms, t1, t2
    elif fmt == "mat-v5":
        scipy.io.savemat(path, {"dict": atoms, "T1": t1, "T2": t2})
    else:
        _write_v73(path, {"dict": atoms.T, "T1": t1, "T2": t2})
    assert Dictionary.load(path).n_frames == N_FRAMES
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError, match=rf"cut\.{fmt}"):
        Dictionary.load(path)


def test_load_dictionary_is_dictionary_load_and_refuses_a_bare_string_for_params(tmp_path):
    atoms, t1, t2 = _fisp_like(False)
    np.savez(tmp_path / "a.npz", atoms=atoms, lut=np.stack([t1, t2], 1))
    assert load_dictionary(tmp_path / "a.npz", params=["T1", "T2"]).digest == \
        Dictionary.load(tmp_path / "a.npz", params=("T1", "T2")).digest
    with pytest.raises(DictionaryError, match="params must be a mapping or a sequence"):
        Dictionary.load(tmp_path / "a.npz", params="T1")
    with pytest.raises(InputFileError, match=r"NAME\[:, j\].*not MATLAB"):
        Dictionary.load(tmp_path / "a.npz", params={"T1": "lut(:, 1)"})


def test_hdf5_without_h5py_is_a_clear_error(tmp_path, monkeypatch):
    atoms, t1, t2 = _fisp_like(False)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["atoms"], f["T1"], f["T2"] = atoms, t1, t2
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # as if not installed
    with pytest.raises(InputFileError, match=r"d\.h5: reading HDF5 and MATLAB v7\.3 dictionaries needs h5py: pip install 'mrfengine\[hdf5\]'"):
        Dictionary.load(path)
    np.savez(tmp_path / "d.npz", atoms=atoms, T1=t1, T2=t2)  # the other formats do not need it
    assert Dictionary.load(tmp_path / "d.npz").n_atoms == len(t1)
