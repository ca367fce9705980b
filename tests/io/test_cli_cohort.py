"""The cohort commands: simulate, validate, show, export, import."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.io import Cohort


def test_simulate_validate_show_export(tmp_path, capsys):
    c = str(tmp_path / "c.zarr")
    assert main(["simulate", c, "--preset", "tiny", "--n-subjects", "2", "--seed", "4", "--no-progress"]) == 0
    assert "2 subjects (64x64x12), 2 simulated" in capsys.readouterr().out
    assert main(["simulate", c, "--preset", "tiny", "--n-subjects", "2", "--seed", "4", "--no-progress"]) == 0
    assert "0 simulated, 2 already complete" in capsys.readouterr().out
    assert main(["simulate", c, "--preset", "tiny", "--n-subjects", "2", "--seed", "5", "--no-progress"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["validate", c, "--deep"]) == 0
    assert "valid (schema version 1); 2 complete subjects" in capsys.readouterr().out
    png = tmp_path / "m.png"
    assert main(["show", c, "--subjects", "2", "--output", str(png), "--slice", "5", "--slice", "7"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "nii"
    assert main(["export", c, "-o", str(out), "--subjects", "1", "--array", "truth/T2star", "--array", "mrf"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".bidsignore", "dataset_description.json",
        "sub-01/anat/sub-01_MRF.json", "sub-01/anat/sub-01_MRF.nii.gz",
        "sub-01/anat/sub-01_desc-truth_T2starmap.json", "sub-01/anat/sub-01_desc-truth_T2starmap.nii.gz"]
    assert json.loads((out / "sub-01/anat/sub-01_desc-truth_T2starmap.json").read_text())["Units"] == "s"


def test_import_and_errors(tmp_path, capsys, ras_series, nifti):
    data, affine = ras_series
    mrf = nifti(tmp_path / "sub-03_mrf.nii.gz", data, affine)
    les = nifti(tmp_path / "les.nii.gz", (data[..., 0] > 0.5).astype(np.uint8), affine)
    c = str(tmp_path / "c.zarr")
    assert main(["import", c, "--subject", "03", "--mrf", str(mrf), "--annotation", f"lesion={les}",
                 "--split", "test", "--group", "patient"]) == 0
    assert "imported sub-03" in capsys.readouterr().out
    sub = Cohort.open(c)["sub-03"]
    assert sub.split == "test" and "lesion" in sub.annotations
    bad = nifti(tmp_path / "three_d.nii.gz", data[..., 0], affine)
    assert main(["import", c, "--subject", "04", "--mrf", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "three_d.nii.gz" in err and "4D" in err
    assert main(["import", c, "--subject", "04", "--mrf", str(mrf), "--annotation", "lesion"]) == 2
    assert main(["validate", str(tmp_path)]) == 1
    assert "not a cohort" in capsys.readouterr().err


def test_mosaic_of_a_subject(tmp_path, small_cohort):
    from mrfengine.report.mosaic import save_subject_mosaic, subject_mosaic

    sub = small_cohort[small_cohort.subjects[1]]
    fig = subject_mosaic(sub, slices=[3, 6], frames=(0, 10, 34))
    # frames, T1, T2*, PD, B1, tissue, outline
    assert len(fig.axes) >= 2 * 9
    path = save_subject_mosaic(small_cohort, sub.id, tmp_path / "x.png")
    assert path.stat().st_size > 10_000
    from mrfengine.errors import ValidationError

    with pytest.raises(ValidationError, match="frame 35"):
        subject_mosaic(sub, frames=(35,))


def test_simulate_offers_the_phantoms_tissue_fraction_models():
    from mrfengine.cli.cohort import simulate
    from mrfengine.phantom.config import FRACTION_MODELS

    option = next(p for p in simulate.params if p.name == "tissue_fractions")
    assert tuple(option.type.choices) == FRACTION_MODELS
