"""``mrfengine bids``: a tiny BIDS dataset (two participants of 12 x 12 x 4-6 voxels, sites 1 and 2, a lesion
mask in a derivative dataset) through the BIDS-App entry end to end, participant labels, resume, and the
errors that name the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.denoise._synthetic import mrf_phantom
from mrfengine.sequence import hermann2021
from mrfengine.tissue import TISSUES

pytest.importorskip("bids", reason="mrfengine bids needs pybids (the bids extra; dev installs it)")

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
#: sub-01: site 1 named by SequenceName (what `mrfengine export` writes); sub-02: site 2 by its SMS factor.
PARTICIPANTS = (("01", 1, 4, {"SequenceName": "hermann2021-site1"}),
                ("02", 2, 6, {"MultibandAccelerationFactor": 3}))


def _save(data, path: Path) -> None:
    img = nib.Nifti1Image(np.asarray(data), AFFINE)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def make_dataset(root: Path) -> dict[str, dict]:
    """A raw BIDS dataset of MRF series (suffix MRF, listed in .bidsignore) with T2w references, and a
    derivative dataset (``derivatives/masks``) with sub-01's lesion mask and both brain masks (found with a
    filter file: the brain-mask query is opt-in); returns each participant's phantom."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny MRF", "BIDSVersion": "1.10.0", "Authors": ["A. Author", "B. Author"]}))
    (root / ".bidsignore").write_text("*_MRF.*\n")
    (root / "README").write_text("A tiny MRF-EPI dataset for the tests of mrfengine bids: two participants, "
                                 "a synthetic head phantom each, one from each hermann2021 site.\n")
    (root / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    phantoms = {}
    for label, site, nz, meta in PARTICIPANTS:
        ph = mrf_phantom((12, 12, nz), sequence=hermann2021(site, n_slices=nz), seed=int(label))
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        _save(ph["noisy"].astype(np.float32), anat / f"sub-{label}_MRF.nii.gz")
        (anat / f"sub-{label}_MRF.json").write_text(json.dumps(meta))
        _save((ph["fractions"] @ np.array([0.6, 0.5, 1.0])).astype(np.float32), anat / f"sub-{label}_T2w.nii.gz")
        (anat / f"sub-{label}_T2w.json").write_text(json.dumps({"EchoTime": 0.1, "RepetitionTime": 4.0}))
        phantoms[label] = ph
    masks = root / "derivatives" / "masks"
    (masks / "dataset_description.json").parent.mkdir(parents=True)
    (masks / "dataset_description.json").write_text(json.dumps(
        {"Name": "manual masks", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "manual"}]}))
    for label, ph in phantoms.items():
        (masks / f"sub-{label}" / "anat").mkdir(parents=True)
        _save(ph["brain"].astype(np.uint8), masks / f"sub-{label}" / "anat" / f"sub-{label}_desc-brain_mask.nii.gz")
    lesion = np.zeros((12, 12, 4), np.uint8)
    lesion[5:7, 5:7, 1:3] = 1
    _save(lesion, masks / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz")
    return phantoms


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bids-app")
    phantoms = make_dataset(root / "ds")
    filters = root / "filters.json"  # the brain masks too (a subject's own mask: no mask made from the series)
    filters.write_text(json.dumps({"brainmask": {"desc": "brain", "suffix": "mask"}}))
    return {"root": root, "ds": root / "ds", "masks": root / "ds" / "derivatives" / "masks",
            "filters": filters, "phantoms": phantoms}


def _run(dataset, out: Path, work: Path, *extra: str) -> int:
    return main(["-q", "bids", str(dataset["ds"]), str(out), "participant", "-w", str(work),
                 "--derivatives", str(dataset["masks"]), "--bids-filter-file", str(dataset["filters"]),
                 "--nthreads", "1", *extra])


@pytest.fixture(scope="module")
def first_run(dataset) -> dict:
    """Both participants through the app once (the other tests resume from its work folder)."""
    out, work = dataset["root"] / "out", dataset["root"] / "work"
    assert _run(dataset, out, work) == 0
    return {"out": out, "work": work}


def _images(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.nii.gz"))}


def test_participants_run_end_to_end_into_a_derivative_dataset(dataset, first_run):
    out = first_run["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "mrfengine"
    raw = desc["DatasetLinks"]["raw"]  # the input dataset, named (a path relative to OUTPUT_DIR, or a URI)
    assert (Path(raw.removeprefix("file://")) if raw.startswith("file:") else out / raw).resolve() == \
        dataset["ds"].resolve()
    assert {"URL": raw} in desc["SourceDatasets"]
    for label, _site, nz, _meta in PARTICIPANTS:
        anat = out / f"sub-{label}" / "anat"
        t1_files = list(anat.glob(f"sub-{label}_*desc-denoisematch*_T1map.nii.gz"))
        assert len(t1_files) == 1, sorted(p.name for p in anat.iterdir())
        t1 = nib.load(t1_files[0])
        assert t1.shape == (12, 12, nz) and np.allclose(t1.affine, AFFINE)
        side = json.loads(t1_files[0].with_name(t1_files[0].name.replace(".nii.gz", ".json")).read_text())
        assert side["Units"] == "s"
        # The physics, in seconds as BIDS stores T1map: white matter's T1 near the phantom's (within 30 %: at
        # 12 x 12 voxels its "white matter" holds some grey matter too), and shorter than that of the brain's
        # edge (grey matter and CSF in partial volume).
        frac = dataset["phantoms"][label]["fractions"]
        data = np.asarray(t1.dataobj)
        wm, edge = data[frac[..., 0] > 0.8], data[(frac[..., 0] < 0.2) & (data > 0)]  # 0: outside the mask
        assert wm.size > 20 and edge.size > 20
        assert abs(np.median(wm) - TISSUES["WM"].t1_ms / 1000) < 0.3 * TISSUES["WM"].t1_ms / 1000
        assert np.median(edge) > 1.3 * np.median(wm)
        # the participant's brain mask (from --derivatives, by the filter file) leaves with the maps, which are
        # 0 outside it
        mask = np.asarray(nib.load(anat / f"sub-{label}_desc-brain_mask.nii.gz").dataobj)
        assert np.array_equal(mask > 0, dataset["phantoms"][label]["brain"]) and not data[mask == 0].any()
        assert side["BrainMask"] == f"bids::sub-{label}/anat/sub-{label}_desc-brain_mask.nii.gz"
        # traceable to the raw data: the series and the brain mask (the masks dataset: raw2), then the work
        # cohort's array the exporter read
        links = {k: (Path(v.removeprefix("file://")) if v.startswith("file:") else out / v).resolve()
                 for k, v in desc["DatasetLinks"].items()}
        assert links["raw"] == dataset["ds"].resolve() and links["raw2"] == dataset["masks"].resolve()
        assert side["Sources"] == [f"bids:raw:sub-{label}/anat/sub-{label}_MRF.nii.gz",
                                   f"bids:raw2:sub-{label}/anat/sub-{label}_desc-brain_mask.nii.gz",
                                   f"bids:cohort:subjects/sub-{label}/derived/denoise-match/T1"]
    # the inputs landed in the work cohort: sub-01's lesion mask (from --derivatives) and both T2w references
    from mrfengine.io import Cohort

    c = Cohort.open(first_run["work"] / "mrfengine" / "cohort.zarr")
    assert c.subjects == ["sub-01", "sub-02"] and {c[s].site for s in c.subjects} == {"1", "2"}
    assert "annotations/lesion" in c["sub-01"].arrays and "annotations/lesion" not in c["sub-02"].arrays
    assert all("reference/T2w" in c[s].arrays and "brain_mask" in c[s].arrays for s in c.subjects)


def test_input_and_output_pass_the_bids_validator(dataset, first_run):
    from tests.bids_validation import assert_valid_bids

    assert_valid_bids(dataset["ds"])  # the raw convention: suffix MRF, listed in .bidsignore
    assert_valid_bids(first_run["out"])


def test_a_rerun_resumes_and_force_redoes(dataset, first_run, capsys):
    out, work = first_run["out"], first_run["work"]
    before = _images(out)
    capsys.readouterr()
    assert _run(dataset, out, work) == 0
    captured = capsys.readouterr()
    assert "0 done, 2 complete already" in captured.out
    assert captured.err == ""  # -q: no progress lines
    assert _images(out) == before  # nothing rewritten
    # An output removed is exported again from the work cohort, nothing recomputed.
    gone = next(iter(before))
    (out / gone).unlink()
    assert _run(dataset, out, work, "--participant-label", gone[4:6]) == 0
    assert "1 done" in capsys.readouterr().out and (out / gone).is_file()
    after = _images(out)
    assert {k: v for k, v in after.items() if k != gone} == {k: v for k, v in before.items() if k != gone}


def test_participant_labels_and_force(dataset, first_run, tmp_path, capsys):
    out = tmp_path / "out"
    # sub- or not, comma-separated or repeated: sub-02 only; the work folder's maps are reused
    assert _run(dataset, out, first_run["work"], "--participant-label", "sub-02") == 0
    assert sorted(p.name for p in out.iterdir()) == [".bidsignore", "dataset_description.json", "sub-02"]
    stamp = _images(out)
    capsys.readouterr()
    assert _run(dataset, out, first_run["work"], "--participant_label", "02", "--force") == 0
    assert "1 done" in capsys.readouterr().out
    assert all(_images(out)[k] > v for k, v in stamp.items())  # recomputed and rewritten
    # space-separated after the option, the BIDS-Apps spelling (the others arrive as trailing arguments)
    both = tmp_path / "both"
    assert _run(dataset, both, first_run["work"], "--participant-label", "01", "sub-02") == 0
    assert sorted(p.name for p in both.glob("sub-*")) == ["sub-01", "sub-02"]


def _copy_dataset(dataset, tmp_path: Path) -> Path:
    ds = tmp_path / "ds"
    shutil.copytree(dataset["ds"], ds)
    return ds


def _error(capsys) -> str:
    return capsys.readouterr().err


def test_input_problems_are_named(dataset, tmp_path, capsys):
    base = ["-q", "bids"]
    out, work = str(tmp_path / "out"), str(tmp_path / "work")
    # not a BIDS dataset
    (tmp_path / "plain").mkdir()
    assert main([*base, str(tmp_path / "plain"), out, "participant", "-w", work]) == 1
    assert "plain: not a BIDS dataset (no dataset_description.json" in _error(capsys)
    # a label the dataset lacks: the ones it has are listed
    assert main([*base, str(dataset["ds"]), out, "participant", "-w", work, "--participant-label", "07"]) == 1
    assert "participant '07' is not in" in (err := _error(capsys)) and "01, 02" in err
    # a participant without MRF series
    ds = _copy_dataset(dataset, tmp_path)
    (ds / "sub-03" / "anat").mkdir(parents=True)
    shutil.copy(ds / "sub-01" / "anat" / "sub-01_T2w.nii.gz", ds / "sub-03" / "anat" / "sub-03_T2w.nii.gz")
    assert main([*base, str(ds), out, "participant", "-w", work]) == 1
    assert "no MRF series for sub-03" in _error(capsys)
    # two candidates: both named, and a filter file picks one
    anat = ds / "sub-01" / "anat"
    shutil.copy(anat / "sub-01_MRF.nii.gz", anat / "sub-01_acq-fast_MRF.nii.gz")
    assert main([*base, str(ds), out, "participant", "-w", work, "--participant-label", "01"]) == 1
    err = _error(capsys)
    assert "2 MRF files match" in err and "sub-01_acq-fast_MRF.nii.gz" in err and "--bids-filter-file" in err
    # nothing was written before the problem was found
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"mrf": {"acquisition": None}, "t2w": {"acquisition": None}}))
    from mrfengine.io.bids_input import (
        find_inputs,
        load_filter_file,
        merge_queries,
        open_layout,
    )

    layout = open_layout(ds)
    found = find_inputs(layout, "01", merge_queries(load_filter_file(filt)))
    assert found.mrf.name == "sub-01_MRF.nii.gz" and found.lesion is None  # no --derivatives given


def test_usage_errors_exit_2(dataset, tmp_path, capsys):
    args = ["bids", str(dataset["ds"]), str(tmp_path / "out")]
    assert main([*args, "group"]) == 2
    assert "no group level" in _error(capsys)
    assert main([*args, "participant", "--participant-label", ","]) == 2
    assert main([*args, "participant", "01"]) == 2  # a label without --participant-label
    assert "unexpected argument(s) 01" in _error(capsys)
    bad = tmp_path / "f.json"
    bad.write_text(json.dumps({"mfr": {}}))
    assert main([*args, "participant", "--bids-filter-file", str(bad)]) == 2
    assert "unknown query mfr" in _error(capsys)
    bad.write_text("{not json")
    assert main([*args, "participant", "--bids-filter-file", str(bad)]) == 2
    assert "f.json: not valid JSON" in _error(capsys)


def test_sidecar_must_agree_with_the_sequence(dataset, tmp_path, capsys):
    ds = _copy_dataset(dataset, tmp_path)
    side = ds / "sub-02" / "anat" / "sub-02_MRF.json"
    side.write_text(json.dumps({"MultibandAccelerationFactor": 3, "SliceTiming": [0.0] * 6}))
    assert main(["-q", "bids", str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--participant-label", "02", "--nthreads", "1"]) == 1
    assert "sub-02_MRF.nii.gz: its sidecar's SliceTiming does not match the slice order of hermann2021-site2" \
        in _error(capsys)
    # a series that is not 4D, and a T2w off the series' grid: named, and the participant fails alone
    side.write_text(json.dumps({"MultibandAccelerationFactor": 3}))
    mrf = ds / "sub-02" / "anat" / "sub-02_MRF.nii.gz"
    series = np.asarray(nib.load(mrf).dataobj)  # read before the file is replaced
    _save(series[..., 0], mrf)
    assert main(["-q", "bids", str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--participant-label", "02"]) == 1
    assert "sub-02_MRF.nii.gz: an MRF series is 4D (X, Y, Z, frames); this image has shape (12, 12, 6)" \
        in _error(capsys)
    _save(series, mrf)
    t2w = ds / "sub-02" / "anat" / "sub-02_T2w.nii.gz"
    _save(np.zeros((10, 12, 6), np.float32), t2w)
    assert main(["-q", "bids", str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
                 "--participant-label", "02"]) == 1
    assert "sub-02_T2w.nii.gz: shape (10, 12, 6) does not match the MRF's (12, 12, 6)" in _error(capsys)
    assert not (tmp_path / "out" / "sub-02").exists()


def test_work_and_output_folders_of_others_are_refused(dataset, first_run, tmp_path, capsys):
    ds = _copy_dataset(dataset, tmp_path)  # another dataset (another path) with the first run's work folder
    assert main(["-q", "bids", str(ds), str(tmp_path / "out"), "participant", "-w", str(first_run["work"]),
                 "--participant-label", "01"]) == 1
    assert "belongs to the BIDS dataset" in _error(capsys)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["-q", "bids", str(dataset["ds"]), str(other), "participant", "-w", str(tmp_path / "w")]) == 1
    assert "not empty and no derivative dataset of mrfengine" in _error(capsys)
    assert (other / "notes.txt").read_text() == "mine"


def test_derivatives_inside_the_dataset_link_it_relatively(dataset, first_run, capsys):
    """``BIDS_DIR/derivatives/mrfengine`` (fMRIPrep's habit) names the raw dataset ``../..``; anywhere else
    inside the raw dataset is refused (it would become part of it)."""
    ds = dataset["ds"]
    inside = ds / "sub-01" / "maps"
    assert _run(dataset, inside, first_run["work"], "--participant-label", "01") == 1
    assert "inside the BIDS dataset" in _error(capsys) and not inside.exists()
    out = ds / "derivatives" / "mrfengine"
    try:
        assert _run(dataset, out, first_run["work"], "--participant-label", "01") == 0
        desc = json.loads((out / "dataset_description.json").read_text())
        assert desc["DatasetLinks"]["raw"] == "../.." and {"URL": "../.."} in desc["SourceDatasets"]
        assert (out / "sub-01" / "anat" / "sub-01_desc-denoisematch_T1map.nii.gz").is_file()
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the module's dataset stays as the other tests built it
