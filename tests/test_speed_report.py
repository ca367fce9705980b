"""benchmarks/speed_report.py: pytest-benchmark JSON -> the speed report table, the regression check, the README."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "speed_report.py"
_spec = importlib.util.spec_from_file_location("speed_report", _PATH)
sr = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("speed_report", sr)
_spec.loader.exec_module(sr)


def _case(pipeline, stage, seconds, size="small", **extra):
    info = {"pipeline": pipeline, "stage": stage, "size": size, "voxels": 1000, "slices": 8, **extra}
    return {"name": f"test_stage[{pipeline}_{stage}]", "stats": {"min": seconds, "median": 2 * seconds, "rounds": 3},
            "extra_info": info}


def _results(tmp_path, *, size="small", ref_denoise=40.0, mrf_match=0.5, unet=0.2, name="r.json"):
    cases = [
        _case("reference", "denoise", ref_denoise / 4, size, scale=4.0, extrapolated=True, slices_timed=2,
              voxels_timed=250, tool="dipy mppca"),
        _case("mrfengine", "denoise", 2.0, size),
        _case("reference", "match", 10.0, size),
        _case("mrfengine", "match", mrf_match, size),
        _case("unet", "unet", unet, size),
        {"name": "test_other", "stats": {"min": 1.0}, "extra_info": {}},  # another benchmark: ignored
    ]
    path = tmp_path / name
    path.write_text(json.dumps({"benchmarks": cases, "datetime": "2026-12-07T00:00:00",
                                "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}}}))
    return path


def test_table_sums_stages_and_scales_extrapolated_cases(tmp_path):
    summary = sr.load_results(_results(tmp_path))
    assert summary.stages == ["denoise", "match"]
    assert summary.reference_total == pytest.approx(50.0)  # 10 s timed x scale 4, + 10 s
    assert summary.mrfengine_total == pytest.approx(2.5)
    assert summary.ratios == pytest.approx({"denoise": 20.0, "match": 20.0, "end_to_end": 20.0,
                                            "unet_end_to_end": 250.0})
    text = sr.render(summary)
    assert "| denoise | 40.0 s [1] | 2.00 s | 20.0x |" in text
    assert "| **end to end** (denoise + match) | **50.0 s** | **2.50 s** | **20.0x** |" in text
    assert "**250x**" in text
    assert "[1] reference denoise: timed on 2 of 8 slices, 250 of 1,000 brain voxels" in text
    assert "apply at full size" in text and "Test CPU, 2 cores" in text


def test_full_size_states_each_target_met_or_not(tmp_path):
    text = sr.render(sr.load_results(_results(tmp_path, size="full", ref_denoise=990.0, unet=1.0)))
    # reference 1,000 s: conventional 2.5 s is 400x (>= 100x), the U-net 1,000x (>= 1,000x)
    assert "mrfengine conventional end to end >= 100x: met (400x)" in text
    assert "U-net end to end >= 1,000x: met (1,000x)" in text
    text = sr.render(sr.load_results(_results(tmp_path, size="full", ref_denoise=990.0, unet=2.0)))
    assert "U-net end to end >= 1,000x: **not met** (500x)" in text


def test_regression_detected_and_exit_status(tmp_path, capsys):
    good = _results(tmp_path)
    baseline = tmp_path / "baseline.json"
    assert sr.main([str(good), "--write-baseline", str(baseline)]) == 0
    assert json.loads(baseline.read_text())["ratios"]["match"] == 20.0
    report = tmp_path / "out" / "report.md"
    assert sr.main([str(good), "--baseline", str(baseline), "-o", str(report)]) == 0
    assert "No regression." in report.read_text()
    # mrfengine's match 4x slower: its ratio 5x < 20x / 3; end to end 50 / 4 = 12.5x is still above 20 / 3
    slow = _results(tmp_path, mrf_match=2.0, name="slow.json")
    capsys.readouterr()
    assert sr.main([str(slow), "--baseline", str(baseline), "--tolerance", "3"]) == 1
    out, err = capsys.readouterr()
    assert "REGRESSION: match: 5.00x is below the baseline's 20.0x / 3 = 6.67x" in err
    assert "end_to_end" not in err and "**REGRESSION**" in out
    assert sr.main([str(slow), "--baseline", str(baseline), "--tolerance", "5"]) == 0


def test_bad_inputs_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert sr.main([str(bad)]) == 2
    assert "bad.json: not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"benchmarks": [_case("reference", "denoise", 1.0)]}))
    assert sr.main([str(bad)]) == 2
    assert "stage 'denoise' has no mrfengine time" in capsys.readouterr().err
    full = _results(tmp_path, size="full", name="full.json")
    baseline = tmp_path / "b.json"
    baseline.write_text(json.dumps({"size": "small", "ratios": {"match": 1.0}}))
    assert sr.main([str(full), "--baseline", str(baseline)]) == 1
    assert "do not compare" in capsys.readouterr().err


def test_readme_section_replaced_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\n\nintro\n{sr.README_START}\nold table\n{sr.README_END}\n\nafter\n")
    assert sr.main([str(_results(tmp_path)), "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and "| **end to end**" in text
    assert text.startswith("# B\n\nintro\n") and text.endswith(f"{sr.README_END}\n\nafter\n")
    readme.write_text("no markers\n")
    assert sr.main([str(_results(tmp_path)), "--update-readme", str(readme)]) == 2
