"""``mrfengine match SERIES --dictionary FILE`` (and ``match_nifti(dictionary=...)``): another tool's
dictionary for every slice, any frame count, a map per parameter it holds; mismatches refused."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from mrfengine.cli import main
from mrfengine.dictionary import Dictionary

N_FRAMES = 150  # not the Hermann sequence's 35: any length
T1 = np.array([400.0, 900.0, 1600.0, 2800.0])
T2 = np.array([30.0, 80.0, 250.0])
DF = np.array([-20.0, 0.0, 20.0])


def _atoms():
    """Complex FISP-like atoms (T1 x T2 x df), 36 x 150: the phase turns with the off-resonance."""
    t1, t2, df = (g.ravel() for g in np.meshgrid(T1, T2, DF, indexing="ij"))
    t = np.linspace(10.0, 4000.0, N_FRAMES)
    fa = 0.15 + 0.2 * np.abs(np.sin(np.arange(N_FRAMES) / 25.0))
    mag = np.abs(1 - 2 * np.exp(-t / t1[:, None])) * np.exp(-((t % 400.0) / t2[:, None])) * np.sin(fa)
    atoms = mag * np.exp(2j * np.pi * df[:, None] * t / 1e4)
    return atoms, t1, t2, df


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 4 x 3 x 2 magnitude series of chosen atoms (M0 500..1000) and the dictionary as a MATLAB v5
    struct: complex atoms frames x atoms, a look-up table in seconds, the off-resonance in Hz."""
    root = tmp_path_factory.mktemp("match_dictionary")
    atoms, t1, t2, df = _atoms()
    rng = np.random.default_rng(3)
    idx = rng.integers(0, len(t1), size=(4, 3, 2))
    m0 = rng.uniform(500, 1000, size=idx.shape)
    # two slices of different tissue: the one dictionary serves every slice
    data = (np.abs(atoms[idx]) * m0[..., None]).astype(np.float32)
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(root / "sub-01_mrf.nii.gz"))
    scipy.io.savemat(root / "dict.mat", {"dict": {"D": atoms.T, "lut": np.stack([t1 / 1000, t2 / 1000], 1),
                                                  "df": df, "df_units": "Hz"}})
    return {"root": root, "idx": idx, "t1": t1, "t2": t2, "affine": affine}


def _map(out, suffix):
    (path,) = out.rglob(f"*_{suffix}.nii.gz")
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine, json.loads(path.with_name(path.name[:-7] + ".json").read_text())


def test_match_with_a_matlab_dictionary_writes_a_map_per_parameter(case, capsys):
    out = case["root"] / "maps"
    args = ["match", str(case["root"] / "sub-01_mrf.nii.gz"), "-o", str(out), "--backend", "numpy",
            "--dictionary", str(case["root"] / "dict.mat"), "--dictionary-params", "T1,T2"]
    # the look-up table holds seconds and the file does not say so: refused, not guessed
    assert main(args) == 1
    assert "dict.mat: T1 values lie in [0.4, 2.8]" in capsys.readouterr().err
    assert main([*args, "--dictionary-units", "T1=s,T2=s"]) == 0
    t1, affine, side = _map(out, "T1map")
    np.testing.assert_allclose(affine, case["affine"])
    np.testing.assert_allclose(t1, case["t1"][case["idx"]] / 1000, rtol=1e-6)  # seconds, every slice exact
    t2, _, side2 = _map(out, "T2map")
    np.testing.assert_allclose(t2, case["t2"][case["idx"]] / 1000, rtol=1e-6)
    run = side["Provenance"]
    assert side["Units"] == side2["Units"] == "s" and run["DictionaryFrames"] == N_FRAMES
    assert run["DictionaryFormat"] == "matlab-v5" and run["DictionaryMatchedByMagnitude"] is True
    assert side["Sources"][-1].endswith(":dict.mat") and run["Dictionary"] == side["Sources"][-1]
    df, _, side_df = _map(out, "df")  # the off-resonance under its own name, in the file's unit
    assert side_df["Units"] == "Hz" and set(np.unique(df)) <= {-20.0, 20.0, 0.0}
    corr, _, _ = _map(out, "correlation")
    assert corr.min() > 0.9999
    assert not list(out.rglob("*T2starmap*")) and not list(out.rglob("*TB1map*"))  # not in this dictionary
    from tests.bids_validation import assert_valid_bids

    assert_valid_bids(out)  # the derivative, df map included (its suffix in .bidsignore)
    # an existing output is not replaced unless --force
    assert main([*args, "--dictionary-units", "T1=s,T2=s"]) != 0
    assert main([*args, "--dictionary-units", "T1=s,T2=s", "--force"]) == 0


def test_match_nifti_takes_a_dictionary_object(case, tmp_path):
    from mrfengine.pipeline import match_nifti

    atoms, t1, t2, _ = _atoms()
    d = Dictionary(np.abs(atoms), {"T1": t1, "T2star": t2})
    result = match_nifti(case["root"] / "sub-01_mrf.nii.gz", tmp_path, dictionary=d, backend="numpy")
    assert set(result.files) == {"T1", "T2star", "M0", "correlation"} and result.n_slices == 2
    assert result.info["dictionary_digest"] == d.digest and result.info["n_matched"] == 24
    np.testing.assert_allclose(np.asarray(nib.load(result.files["T2star"]).dataobj),
                               case["t2"][case["idx"]] / 1000, rtol=1e-6)


def test_dictionary_frame_count_and_option_mistakes_are_refused(case, capsys, tmp_path):
    atoms, t1, t2, _ = _atoms()
    short = tmp_path / "short.npz"
    np.savez(short, atoms=np.abs(atoms[:, :100]), T1=t1, T2=t2)
    series = str(case["root"] / "sub-01_mrf.nii.gz")
    assert main(["match", series, "-o", str(tmp_path / "o"), "--dictionary", str(short)]) == 1
    err = capsys.readouterr().err
    assert "sub-01_mrf.nii.gz: the series has 150 frames" in err and "short.npz have 36 or 100" in err
    assert main(["match", series, "-o", str(tmp_path / "o"), "--dictionary", str(short), "--sequence",
                 "hermann2021"]) == 2
    assert "--sequence and --dictionary exclude each other" in capsys.readouterr().err
    assert main(["match", series, "-o", str(tmp_path / "o"), "--dictionary-units", "T1=s"]) == 2
    assert "--dictionary-units describe(s) a --dictionary FILE" in capsys.readouterr().err
    assert main(["match", series, "-o", str(tmp_path / "o"), "--dictionary", str(case["root"] / "dict.mat"),
                 "--dictionary-params", "T1", "--dictionary-params", "T2=lut[:,1]"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.nii.gz"))
