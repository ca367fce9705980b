"""mrfengine evaluate on a tiny simulated cohort (simulated once per module)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mrfengine.cli import main
from mrfengine.errors import StoreError, ValidationError
from mrfengine.io import Cohort
from mrfengine.metrics import dice
from mrfengine.report.evaluate import evaluate_cohort, parse_source

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mrfengine.phantom import simulate_cohort

    root = tmp_path_factory.mktemp("evaluate")
    path = root / "tiny.zarr"
    simulate_cohort(path, preset="tiny", seed=0)
    return path, root / "dictionaries"


@pytest.fixture(scope="module")
def conventional(tiny):
    path, cache = tiny
    out = path.parent / "conventional"
    return evaluate_cohort(path, out_dir=out, cache=cache), out


def _intra(cohort):
    out = {}
    for s in cohort:
        if "lesion_repeat" in s.annotations:
            out[s.id] = dice(np.asarray(s.annotations["lesion"][:]) > 0,
                             np.asarray(s.annotations["lesion_repeat"][:]) > 0)
    return out


def test_truth_against_truth_is_perfect(tiny):
    path, _ = tiny
    rep = evaluate_cohort(path, pred="truth", ref="truth")
    c = Cohort.open(path)
    assert set(rep["subjects"]) == set(c.subjects)
    for sid, rec in rep["subjects"].items():
        s = rec["summary"]
        assert rec["split"] == c.split[sid]
        for key in ("T1", "T2star"):
            assert s[f"{key}_relative_deviation"] == 0.0
            for tissue in ("WM_core", "GM_core"):
                assert s[f"{key}_relative_deviation_{tissue}"] == 0.0
        assert s["NAWM_dice_volume"] == 1.0 and s["GM_dice_volume"] == 1.0 and s["NAWM_dice_slice_mean"] == 1.0
        assert rec["tissue_cores"] == {"WM": "truth/WM", "GM": "truth/GM", "lesion": "truth/lesion"}
        has_lesion = bool((np.asarray(c[sid].truth["lesion"][:]) >= 0.5).any())
        assert s["lesion_dice"] == (1.0 if has_lesion else None)
    assert rep["splits"]["test"]["lesion_dice"]["mean"] == 1.0


def test_conventional_against_truth_json_table_and_figures(tiny, conventional):
    path, _ = tiny
    rep, out = conventional
    c = Cohort.open(path)
    assert rep["settings"]["pred"] == "conventional" and rep["settings"]["ref"] == "truth"
    on_disk = json.loads((out / "evaluation.json").read_text())
    assert on_disk["schema"] == "mrfengine.evaluation/1"
    assert set(on_disk["subjects"]) == set(c.subjects)
    assert set(on_disk["splits"]) == {"train", "validation", "test", "all"}
    for sid, rec in on_disk["subjects"].items():
        s = rec["summary"]
        # The conventional lesion map is the annotation: its Dice with the true mask is known.
        sub = c[sid]
        ann = np.asarray(sub.annotations["lesion"][:]) > 0
        true = np.asarray(sub.truth["lesion"][:]) >= 0.5  # the reference annotation, not the operating 0.33
        want = dice(ann, true)
        assert s["lesion_dice"] == (None if np.isnan(want) else pytest.approx(want))
        for key in ("T1", "T2star"):  # matching noisy, partial-volume data: small but not zero
            assert 0.0 < s[f"{key}_relative_deviation"] < 0.3
            assert 0.0 < s[f"{key}_relative_deviation_WM_core"] < 0.15
        assert rec["n_unmatched"] == 0
    test = on_disk["splits"]["test"]
    for key in ("T1", "T2star"):
        for tissue in ("WM_core", "GM_core", "lesion_core"):
            assert test[f"{key}_relative_deviation_{tissue}"]["n"] == len(c.subjects_in("test"))
    assert rep["settings"]["tissue_maps_from_truth"] == ["conventional"]
    assert (rep["settings"]["lesion_threshold"], rep["settings"]["reference_lesion_threshold"]) == (0.33, 0.5)
    table = (out / "table.md").read_text()
    assert "| T1 relative deviation, WM core (true fraction ≥ 90%) |" in table
    assert "| T2* relative deviation, lesion core (true fraction ≥ 90%) |" in table
    # the conventional NAWM/GM are the truth fractions: the rows say so
    assert "| NAWM Dice (80%, mean over slices) † |" in table and "| GM Dice (80%, whole volume) † |" in table
    assert "† Reference: truth tissue fractions" in table and "`conventional`" in table
    assert "| Intra-observer Dice" in table and "Lesion Dice (33%)" in table
    assert "| Subject | Intra-observer Dice | Lesion Dice (conventional) |" in table
    for name in ("threshold_sweep", "lesion_volume", "reliability", "overlays"):
        png = out / f"{name}.png"
        assert rep["files"][name] == str(png)
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    assert not list(out.glob(".*tmp*"))


def test_intra_observer_dice_beside_the_model(tiny, conventional):
    path, _ = tiny
    rep, _ = conventional
    want = _intra(Cohort.open(path))
    assert want, "the tiny cohort should have a subject annotated twice"
    io = rep["intra_observer"]
    assert set(io["subjects"]) == set(want)
    for sid, d in want.items():
        assert 0.0 < d < 1.0
        assert io["subjects"][sid]["intra_observer_dice"] == pytest.approx(d)
        assert io["subjects"][sid]["lesion_dice"] == rep["subjects"][sid]["summary"]["lesion_dice"]
        assert rep["subjects"][sid]["summary"]["intra_observer_dice"] == pytest.approx(d)
    assert rep["splits"]["all"]["intra_observer_dice"]["n"] == len(want)


def test_derived_source_reads_the_stage_group_and_skips_missing_maps(tiny, tmp_path):
    import zarr

    src, _ = tiny
    path = tmp_path / "copy.zarr"
    shutil.copytree(src, path)
    sid = "sub-05"
    group = zarr.open_group(str(path / "subjects" / sid), mode="a")
    t1 = np.asarray(group["truth/T1"][:])
    group.create_array("derived/scaled/T1", data=(t1 * 1.25).astype(np.float32))
    attrs = dict(group.attrs["mrfengine_subject"])
    attrs["arrays"] = list(attrs["arrays"]) + ["derived/scaled/T1"]
    group.attrs["mrfengine_subject"] = attrs
    rep = evaluate_cohort(path, pred="derived:scaled", ref="truth", subjects=[sid])
    rec = rep["subjects"][sid]
    assert rec["maps"] == ["T1"]
    s = rec["summary"]
    assert s["T1_relative_deviation"] == pytest.approx(0.25, abs=1e-6)
    assert s["T1_relative_deviation_WM_core"] == pytest.approx(0.25, abs=1e-6)
    assert "lesion_dice" not in s and "T2star_relative_deviation" not in s
    with pytest.raises(StoreError, match="derived/scaled"):
        evaluate_cohort(path, pred="derived:scaled", subjects=["sub-01"])


def test_stored_conventional_source_reads_a_batch_group(tiny, tmp_path):
    """conventional:<name> = the batch's matched T1/T2* + annotation lesion + truth tissue stand-ins."""
    from mrfengine.pipeline import run_subject

    src, _ = tiny
    path = tmp_path / "copy.zarr"
    shutil.copytree(src, path)
    sid = "sub-02"
    assert run_subject(path, sid, "match").status == "ok"
    stored = parse_source("conventional:match").maps(Cohort.open(path)[sid])
    fly = parse_source("conventional").maps(Cohort.open(path)[sid])
    assert set(stored) == set(fly) == {"T1", "T2star", "lesion", "NAWM", "GM"}
    for key in stored:  # the same matcher, stored or on the fly
        np.testing.assert_array_equal(stored[key], fly[key])
    rep = evaluate_cohort(path, pred="conventional:match", ref="conventional", subjects=[sid], figures=False)
    assert rep["subjects"][sid]["summary"]["T1_relative_deviation"] == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(StoreError, match="derived/match/T1"):
        parse_source("conventional:match").maps(Cohort.open(path)["sub-01"])
    with pytest.raises(ValidationError, match="conventional:<name>"):
        parse_source("conventional:")
    assert parse_source("conventional:match").tissue_from_truth is False  # until a subject falls back
    source = parse_source("conventional:match")
    source.maps(Cohort.open(path)[sid])
    assert source.tissue_from_truth is True  # no segment stage in the group: the truth stand-ins


def test_stored_conventional_source_takes_the_segment_stages_tissue_maps(tiny, tmp_path):
    from mrfengine.pipeline.derived import write_derived

    src, _ = tiny
    path = tmp_path / "copy.zarr"
    shutil.copytree(src, path)
    sid = "sub-02"
    shape = Cohort.open(path)[sid].shape
    seg = {"T1": np.full(shape, 800, np.float32), "T2star": np.full(shape, 50, np.float32),
           "NAWM": np.full(shape, 0.25, np.float32), "GM": np.full(shape, 0.5, np.float32)}
    write_derived(path, sid, "seg", seg)
    source = parse_source("conventional:seg")
    maps = source.maps(Cohort.open(path)[sid])
    np.testing.assert_array_equal(maps["NAWM"], seg["NAWM"])
    np.testing.assert_array_equal(maps["GM"], seg["GM"])
    assert source.tissue_from_truth is False
    rep = evaluate_cohort(path, pred="conventional:seg", ref="truth", subjects=[sid], figures=False)
    assert "tissue_maps_from_truth" not in rep["settings"]


def test_bad_sources_and_subjects(tiny):
    path, _ = tiny
    with pytest.raises(ValidationError, match="map source"):
        parse_source("magic")
    with pytest.raises(ValidationError, match="stage name"):
        parse_source("derived:")
    with pytest.raises(StoreError, match="no complete subject 'sub-99'"):
        evaluate_cohort(path, pred="truth", subjects=["sub-99"])
    with pytest.raises(ValidationError, match="lesion_threshold"):
        evaluate_cohort(path, pred="truth", lesion_threshold=0)
    with pytest.warns(DeprecationWarning, match="lesion_threshold"):
        old = evaluate_cohort(path, pred="annotation", subjects=["sub-05"], threshold=0.4)
    assert old["settings"]["lesion_threshold"] == 0.4

    class OnlyT1:  # any object with name and maps() plugs in
        name = "only-T1"

        def maps(self, subject):
            return {"T1": np.asarray(subject.truth["T1"][:])}

    rep = evaluate_cohort(path, pred=OnlyT1(), ref="truth", subjects=["sub-02"])
    assert rep["subjects"]["sub-02"]["summary"]["T1_relative_deviation"] == 0.0
    with pytest.raises(ValidationError, match="share no map"):
        evaluate_cohort(path, pred=OnlyT1(), ref="annotation", subjects=["sub-02"])


def test_cli_exit_codes(tiny, tmp_path, capsys):
    path, cache = tiny
    out = tmp_path / "out"
    code = main(["evaluate", str(path), "-o", str(out), "--pred", "truth", "--subjects", "5,sub-02",
                 "--no-figures", "--cache-dir", str(cache)])
    assert code == 0
    text = capsys.readouterr().out
    assert "truth vs truth: 2 subjects" in text and "lesion Dice 1.00" in text
    rep = json.loads((out / "evaluation.json").read_text())
    assert sorted(rep["subjects"]) == ["sub-02", "sub-05"] and (out / "table.md").is_file()
    assert not list(out.glob("*.png"))

    assert main(["evaluate", str(tmp_path), "-o", str(tmp_path / "x")]) == 1
    assert "not a cohort" in capsys.readouterr().err
    assert main(["evaluate", str(path), "-o", str(tmp_path / "x"), "--pred", "magic"]) == 2  # a bad option value
    err = capsys.readouterr().err
    assert "--pred" in err and "magic" in err, err
    assert main(["evaluate", str(path), "-o", str(tmp_path / "x"), "--lesion-threshold", "2"]) == 2
    assert main(["evaluate", str(path), "-o", str(tmp_path / "x"), "--threshold", "2"]) == 2
    # --threshold: the deprecated name of --lesion-threshold, hidden from the help
    assert "--threshold" not in capsys.readouterr().out + _help(capsys).replace("--lesion-threshold", "")
    assert main(["evaluate", str(path), "-o", str(tmp_path / "y"), "--pred", "annotation", "--subjects", "5",
                 "--no-figures", "--threshold", "0.4"]) == 0
    assert "--threshold is deprecated" in capsys.readouterr().err
    assert json.loads((tmp_path / "y" / "evaluation.json").read_text())["settings"]["lesion_threshold"] == 0.4
    assert main(["evaluate", str(path), "-o", str(tmp_path / "z"), "--threshold", "0.4",
                 "--lesion-threshold", "0.5"]) == 2


def _help(capsys):
    assert main(["evaluate", "--help"]) == 0
    return capsys.readouterr().out
