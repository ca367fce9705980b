"""``mrfengine denoise`` (and ``pipeline.denoise_nifti`` behind it): MP-PCA of a 4D NIfTI series, as
MRtrix3's dwidenoise, with the noise and rank maps; the same result as ``mppca`` on the same data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.denoise import mppca
from mrfengine.denoise._synthetic import mrf_phantom
from mrfengine.io.bids import SIDECAR_KEYS
from mrfengine.io.nifti import load_nifti
from mrfengine.masking import MASK_METHOD
from mrfengine.pipeline import denoise_nifti

_C, _S = np.cos(0.2), np.sin(0.2)  # oblique: rotated 0.2 rad about z, the x axis flipped
AFFINE = np.array([[-1.2 * _C, -1.2 * _S, 0.0, 90.0], [-1.2 * _S, 1.2 * _C, 0.0, -120.0], [0.0, 0.0, 3.0, -30.0],
                   [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 16 x 16 x 8 x 35 MRF phantom (Rician noise of known sigma, SNR 50) with an oblique affine, a
    frame interval and a description in its header, and the phantom's brain as a mask file."""
    root = tmp_path_factory.mktemp("denoise")
    ph = mrf_phantom((16, 16, 8), seed=3)
    img = nib.Nifti1Image(ph["noisy"].astype(np.float32), AFFINE)
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms(img.header.get_zooms()[:3] + (80.0,))
    img.header["descrip"] = b"scanner protocol XYZ"
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)
    nib.save(img, str(root / "sub-01_mrf.nii.gz"))
    nib.save(nib.Nifti1Image(ph["brain"].astype(np.uint8), AFFINE), str(root / "brain.nii.gz"))
    return {"root": root, "in": root / "sub-01_mrf.nii.gz", "mask": root / "brain.nii.gz", "noisy": ph["noisy"],
            "brain": ph["brain"], "sigma": ph["sigma"]}


def _sidecar(path):
    name = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.name[: -len(".nii")]
    return json.loads(path.with_name(name + ".json").read_text())


def test_denoise_equals_mppca_keeps_the_header_and_writes_noise_and_rank(series, tmp_path, capsys):
    out, noise, rank = tmp_path / "den" / "sub-01_desc-mppca_mrf.nii.gz", tmp_path / "sigma.nii.gz", tmp_path / "rank.nii"
    code = main(["denoise", str(series["in"]), str(out), "--noise", str(noise), "--rank", str(rank),
                 "--mask", str(series["mask"]), "--backend", "numpy"])
    assert code == 0, capsys.readouterr().err
    assert "denoised 960 voxels in the mask" in capsys.readouterr().out
    brain = series["brain"]
    data, _, _ = load_nifti(series["in"], ndim=4)  # the phantom's values, in nibabel's (Fortran) layout
    np.testing.assert_array_equal(data, series["noisy"])
    want = mppca(data, channel_axis=-1, mask=brain, backend="numpy")

    img = nib.load(str(out))
    got = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.float32 and got.shape == series["noisy"].shape
    np.testing.assert_array_equal(got, want.denoised)
    np.testing.assert_array_equal(got[~brain], series["noisy"][~brain])  # outside the mask: the input unchanged
    assert not np.array_equal(got[brain], series["noisy"][brain])
    # the geometry kept, the input's description not
    hdr = img.header
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    np.testing.assert_allclose(hdr.get_qform(), nib.load(str(series["in"])).header.get_qform(), atol=1e-6)
    np.testing.assert_allclose(hdr.get_qform(), AFFINE, atol=1e-5)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 2)
    assert hdr.get_xyzt_units() == ("mm", "msec") and hdr.get_zooms()[3] == pytest.approx(80.0)
    assert hdr["descrip"].tobytes().strip(b"\0") == b""

    sidecar = _sidecar(out)
    assert list(sidecar) == [k for k in SIDECAR_KEYS if k in sidecar]  # the one schema
    # Sources as BIDS URIs: files outside any dataset are seen from OUT's folder through the link "input"
    assert sidecar["Sources"] == ["bids:input:sub-01_mrf.nii.gz", "bids:input:brain.nii.gz"]
    assert sidecar["Units"] == "arbitrary"
    prov = sidecar["Provenance"]
    assert (prov["Estimator"], prov["Window"], prov["Backend"], prov["Producer"]) == ("mp", [5, 5, 5], "numpy",
                                                                                      "denoise")
    assert prov["MaskSource"] == "given" and prov["OutsideMask"].startswith("the input's values")

    sig = nib.load(str(noise))
    s = np.asarray(sig.dataobj)
    assert sig.get_data_dtype() == np.float32 and s.shape == brain.shape
    np.testing.assert_allclose(sig.affine, AFFINE, atol=1e-6)
    np.testing.assert_array_equal(s[brain], want.sigma[brain])
    assert np.all(s[~brain] == 0) and np.isfinite(s).all()
    # the true noise level (Rician sigma of the phantom) in the brain, within 10%
    assert np.median(s[brain]) == pytest.approx(series["sigma"], rel=0.10)
    side = _sidecar(noise)
    assert (side["Units"], side["BrainMask"], side["BrainMaskSource"], side["OutsideBrainValue"]) == \
        ("arbitrary", "bids:input:brain.nii.gz", "given", 0.0)

    r = nib.load(str(rank))
    k = np.asarray(r.dataobj)
    assert r.get_data_dtype() == np.int16
    np.testing.assert_array_equal(k[brain], want.n_components[brain])
    assert np.all(k[~brain] == 0)
    # WM/GM/CSF mixtures over a smooth B1 field: a few components, far fewer than the 35 frames
    assert k[brain].min() >= 1 and 3 <= np.median(k[brain]) <= 15 and k.max() < 35
    assert _sidecar(rank)["Units"] == "1"


def test_default_brain_mask_int16_with_scl_slope_and_exp2(series, tmp_path):
    """An int16 file with scl_slope (a scanner's storage): read scaled, sigma in the scaled units;
    without --mask a brain mask is made from the series and named in the sidecars."""
    gain = 1000.0
    img = nib.Nifti1Image(series["noisy"] * gain, AFFINE)
    img.set_data_dtype(np.int16)  # nibabel picks scl_slope / scl_inter
    src = tmp_path / "sub-02_mrf.nii.gz"
    nib.save(img, str(src))
    assert float(nib.load(str(src)).header["scl_slope"]) not in (0.0, 1.0)
    scaled, _, _ = load_nifti(src, ndim=4)

    result = denoise_nifti(src, tmp_path / "out.nii.gz", noise_path=tmp_path / "sigma.nii.gz", estimator="exp2",
                           n_threads=1)
    assert result.info["mask_source"] == MASK_METHOD and result.info["estimator"] == "exp2"
    out = np.asarray(nib.load(str(result.files["denoised"])).dataobj)
    made = np.asarray(nib.load(str(result.files["mppca_sigma"])).dataobj) > 0
    assert 0.3 < made.mean() < 0.8 and made.sum() == result.info["voxels"]  # the head, not the field of view
    want = mppca(scaled, channel_axis=-1, mask=made, estimator="exp2", n_threads=1)
    np.testing.assert_allclose(out, want.denoised, rtol=1e-6, atol=1e-6 * gain)
    sigma = np.asarray(nib.load(str(result.files["mppca_sigma"])).dataobj)
    assert np.median(sigma[made & series["brain"]]) == pytest.approx(series["sigma"] * gain, rel=0.15)
    side = _sidecar(result.files["mppca_sigma"])
    assert side["BrainMask"] is None and side["BrainMaskSource"] == MASK_METHOD
    assert _sidecar(result.files["denoised"])["Sources"] == ["bids::sub-02_mrf.nii.gz"]  # in OUT's own folder


def test_refuses_to_overwrite_without_force(series, tmp_path, capsys):
    out, noise = tmp_path / "out.nii.gz", tmp_path / "sigma.nii.gz"
    args = ["denoise", str(series["in"]), str(out), "--no-brain-mask", "--patch-radius", "1"]
    assert main(args) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(args + ["--noise", str(noise)]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert out.read_bytes() == before and not noise.exists()  # nothing written, not even the new output
    assert main(args + ["--noise", str(noise), "--force", "--patch-radius", "2,2,1"]) == 0
    assert _sidecar(out)["Provenance"]["Window"] == [5, 5, 3] and noise.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary left


@pytest.mark.parametrize("args, words", [
    (["--estimator", "exp3"], "exp3"),
    (["--patch-radius", "a"], "--patch-radius"),
    (["--patch-radius", "1,2"], "--patch-radius"),
    (["--patch-radius", "0"], "patch_radius"),
    (["--nthreads", "-1"], "--nthreads"),
    (["--backend", "gpu"], "gpu"),
    (["--mask", "m.nii.gz", "--no-brain-mask"], "exclude each other"),
])
def test_bad_options_exit_2(series, tmp_path, capsys, args, words):
    assert main(["denoise", str(series["in"]), str(tmp_path / "o.nii.gz"), *args]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_bad_outputs_exit_2(series, tmp_path, capsys):
    assert main(["denoise", str(series["in"]), str(tmp_path / "out.mif")]) == 2
    assert "NIfTI file name" in capsys.readouterr().err
    assert main(["denoise", str(series["in"]), str(series["in"]), "--force"]) == 2
    assert "same file as the input" in capsys.readouterr().err
    assert main(["denoise", str(series["in"]), str(tmp_path / "o.nii.gz"), "--noise", str(tmp_path / "o.nii.gz")]) == 2
    assert "same file as the denoised output" in capsys.readouterr().err


def test_bad_inputs_exit_1_naming_the_file(series, tmp_path, capsys):
    flat = tmp_path / "t1w.nii.gz"
    nib.save(nib.Nifti1Image(series["noisy"][..., 0], AFFINE), str(flat))
    assert main(["denoise", str(flat), str(tmp_path / "o.nii.gz"), "--no-brain-mask"]) == 1
    err = capsys.readouterr().err
    assert str(flat) in err and "4D" in err

    holed = series["noisy"].copy()
    holed[3, 4, 5, 6] = np.nan
    bad = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(holed, AFFINE), str(bad))
    assert main(["denoise", str(bad), str(tmp_path / "o.nii.gz"), "--no-brain-mask"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "1 NaN/Inf value(s) in 1 voxel(s)" in err

    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    assert main(["denoise", str(broken), str(tmp_path / "o.nii.gz")]) == 1
    assert str(broken) in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz")]) == 1
    assert "file not found" in capsys.readouterr().err

    small = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), AFFINE), str(small))
    assert main(["denoise", str(series["in"]), str(tmp_path / "o.nii.gz"), "--mask", str(small)]) == 1
    assert "mask shape" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_backend_choices_and_registry_entries():
    from mrfengine.cli.denoise import DENOISE_BACKENDS
    from mrfengine.denoise import BACKENDS
    from mrfengine.io.exporter import export_name
    from mrfengine.maps import derived_spec
    from mrfengine.pipeline.derived import _array_attributes

    assert DENOISE_BACKENDS == ("auto", *BACKENDS)
    # the batch's derived arrays of the denoise stage have units and descriptions, and export names
    assert derived_spec("mppca_sigma").unit == "arbitrary" and derived_spec("mppca_rank").unit == "1"
    assert _array_attributes("mppca_sigma")["description"].startswith("Noise standard deviation")
    assert export_name("derived/denoise-match/mppca_sigma") == ("desc-denoisematch_noise", "arbitrary", 1.0)
