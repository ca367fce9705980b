"""Summaries, the JSON record and the markdown table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.report import tables


def test_summarize_skips_undefined_values():
    s = tables.summarize([0.5, None, 0.7, float("nan"), 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7)
    assert s["sd"] == pytest.approx(0.2)  # sample SD of 0.5, 0.7, 0.9
    one = tables.summarize([0.4])
    assert one["n"] == 1 and math.isnan(one["sd"])
    assert tables.summarize([])["n"] == 0


def test_split_summaries_and_markdown():
    records = {
        "a": {"summary": {"lesion_dice": 0.5, "lesion_detection_rate": 1.0, "T1_relative_deviation": 0.05}},
        "b": {"summary": {"lesion_dice": 0.7, "lesion_detection_rate": None, "T1_relative_deviation": 0.03}},
        "c": {"summary": {"lesion_dice": 0.9, "intra_observer_dice": 0.6}},
    }
    splits = {"a": "test", "b": "test", "c": "train"}
    summ = tables.split_summaries(records, splits)
    assert list(summ) == ["test", "train", "all"]
    assert summ["test"]["lesion_dice"]["mean"] == pytest.approx(0.6)
    assert summ["test"]["lesion_detection_rate"]["n"] == 1
    assert summ["all"]["lesion_dice"]["n"] == 3
    md = tables.markdown_table(summ)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| Measure |") and set(lines[1]) <= set("|-:")
    assert "| Lesion Dice (33%) | 0.60 ± 0.14 | 2 | 0.61 ± 0.09 |" in md
    assert "| Lesion detection rate (33%) | 1.00 | 1 | 0.85 ± 0.25 |" in md
    assert "| T1 relative deviation | 4.0% ± 1.4% | 2 | 5.2% |" in md
    assert "Intra-observer Dice (all subjects annotated twice) | 0.60 | 1 | 0.68 ± 0.15 |" in md
    assert "NAWM" not in md  # rows without data are left out
    with pytest.raises(ValidationError, match="split"):
        tables.markdown_table(summ, split="validation")
    with pytest.raises(ValidationError, match="missing"):
        tables.split_summaries(records, {"a": "test"})


def test_report_json_is_strict_and_atomic(tmp_path, cohort):
    records, splits, _ = cohort
    report = tables.build_report(records, splits, settings={"lesion_threshold": 0.33})
    path = tables.write_json(report, tmp_path / "out" / "evaluation.json")
    assert [p.name for p in path.parent.iterdir()] == ["evaluation.json"]  # no temporary left
    text = path.read_text()
    assert "NaN" not in text
    back = json.loads(text)
    assert back["schema"] == tables.SCHEMA
    assert back["subjects"]["sub-04"]["split"] == "test"
    assert back["splits"]["test"]["lesion_dice"]["n"] == 2
    assert len(back["subjects"]["sub-01"]["lesion"]["sweep"]["dice"]) == 101


def test_to_jsonable_converts_numpy_and_nan():
    got = tables.to_jsonable({"a": np.float32(0.5), "b": np.array([1.0, np.nan]), "c": (np.int64(3), True)})
    assert got == {"a": 0.5, "b": [1.0, None], "c": [3, True]}
    with pytest.raises(ValidationError):
        tables.to_jsonable({"x": object()})
