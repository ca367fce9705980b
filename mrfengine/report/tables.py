"""Cohort figures as numbers: per-split summaries, the JSON record, the paper's table.

Input is what :func:`mrfengine.metrics.evaluate_subject` returns, one record
per subject, and a subject -> split mapping (``"train"``, ``"validation"``,
``"test"``).  Nothing here reads a cohort store.

Summaries are NaN-aware: a subject whose value is undefined (e.g. the
detection rate of a lesion-free subject) is left out and ``n`` says how many
subjects were averaged.  SD is the sample standard deviation (``ddof=1``),
NaN for fewer than two values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..errors import ValidationError
from ..metrics.definitions import CORE_FRACTION, CORE_SUFFIX, LESION_THRESHOLD, TISSUE_THRESHOLD

__all__ = [
    "SCHEMA",
    "PAPER_RESULTS",
    "summarize",
    "split_summaries",
    "build_report",
    "to_jsonable",
    "write_json",
    "write_text",
    "format_mean_sd",
    "TableRow",
    "default_rows",
    "markdown_table",
]

SCHEMA = "mrfengine.evaluation/1"

# Hermann et al., BMC Med Imaging 21:107, 2021; test set, network MSE-5:
# (mean, SD or None).  Intra-observer Dice: 0.68 +- 0.15 in the Results
# (0.68 +- 0.23 in the Discussion), ten patients annotated twice.
PAPER_RESULTS: dict[str, tuple[float, float | None]] = {
    "lesion_dice": (0.61, 0.09),
    "lesion_detection_rate": (0.85, 0.25),
    "intra_observer_dice": (0.68, 0.15),
    "NAWM_dice_slice_mean": (0.92, 0.04),
    "GM_dice_slice_mean": (0.91, 0.03),
    "T1_relative_deviation": (0.052, None),
    "T2star_relative_deviation": (0.051, None),
}


def summarize(values: Iterable[float | None]) -> dict[str, float | int]:
    """``{"mean", "sd", "n"}`` over the finite values (None and NaN left out).

    ``mean`` is NaN for no value, ``sd`` (ddof=1) NaN for fewer than two.
    """
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n}


def _check_splits(records: Mapping[str, Any], splits: Mapping[str, str]) -> None:
    missing = sorted(set(records) - set(splits))
    if missing:
        raise ValidationError(f"splits must name a split for every subject; missing {missing}")
    for sid, rec in records.items():
        if not isinstance(rec, Mapping) or not isinstance(rec.get("summary"), Mapping):
            raise ValidationError(f"records[{sid!r}] must be a dict with a 'summary' dict (evaluate_subject's output)")


def split_summaries(records: Mapping[str, Mapping[str, Any]], splits: Mapping[str, str]) -> dict[str, dict[str, dict]]:
    """Summaries of every headline metric per split, plus ``"all"`` subjects.

    Parameters
    ----------
    records : mapping of subject id to evaluate_subject's dict
    splits : mapping of subject id to split name

    Returns
    -------
    dict
        ``{split: {metric: {"mean", "sd", "n"}}}``, splits sorted, ``"all"`` last.
    """
    _check_splits(records, splits)
    groups: dict[str, list[str]] = {}
    for sid in records:
        groups.setdefault(str(splits[sid]), []).append(sid)
    groups = {k: groups[k] for k in sorted(groups)}
    groups["all"] = list(records)
    out: dict[str, dict[str, dict]] = {}
    for split, sids in groups.items():
        names: list[str] = []
        for sid in sids:
            names += [k for k in records[sid]["summary"] if k not in names]
        out[split] = {k: summarize(records[sid]["summary"].get(k) for sid in sids) for k in names}
    return out


def build_report(
    records: Mapping[str, Mapping[str, Any]],
    splits: Mapping[str, str],
    *,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation record: settings, per-subject details, per-split summaries.

    Returns
    -------
    dict
        ``{"schema", "settings", "subjects": {id: {"split", ...record}},
        "splits": split_summaries(...)}``; write it with :func:`write_json`.
    """
    _check_splits(records, splits)
    return {
        "schema": SCHEMA,
        "settings": dict(settings or {}),
        "subjects": {sid: {"split": str(splits[sid]), **rec} for sid, rec in records.items()},
        "splits": split_summaries(records, splits),
    }


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: NumPy arrays and scalars converted, NaN/Inf as None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise ValidationError(f"cannot write a {type(obj).__name__} to JSON")


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` atomically (a temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as strict JSON (NaN as null), atomically."""
    return write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n", path)


def format_mean_sd(summary: Mapping[str, Any] | None, *, percent: bool = False, digits: int = 2) -> str:
    """``0.61 ± 0.09`` (or ``5.2% ± 1.1%``); ``–`` without values, no SD below two."""
    if not summary or not summary.get("n"):
        return "–"
    mean, sd = summary["mean"], summary.get("sd")
    scale, unit, d = (100.0, "%", max(digits - 1, 0)) if percent else (1.0, "", digits)
    text = f"{mean * scale:.{d}f}{unit}"
    if sd is not None and math.isfinite(sd):
        text += f" ± {sd * scale:.{d}f}{unit}"
    return text


def _paper(key: str, percent: bool) -> str:
    if key not in PAPER_RESULTS:
        return "–"
    mean, sd = PAPER_RESULTS[key]
    return format_mean_sd({"mean": mean, "sd": float("nan") if sd is None else sd, "n": 1}, percent=percent)


@dataclass(frozen=True)
class TableRow:
    """One row: the label shown, the summary key, the split it reads, percent or not."""

    label: str
    key: str
    split: str | None = None  # None: the table's split
    percent: bool = False


def default_rows(
    summaries: Mapping[str, Mapping[str, Any]],
    *,
    lesion_threshold: float = LESION_THRESHOLD,
    tissue_threshold: float = TISSUE_THRESHOLD,
    core_fraction: float = CORE_FRACTION,
    tissue_mark: str = "",
) -> list[TableRow]:
    """The paper's measures, then MSSEG-2016, calibration and per-tissue deviations
    (only those some split has).

    Labels say each figure's definition: the threshold, whole volume or mean
    over slices, and for a per-tissue deviation the tissue core (true
    fraction >= ``core_fraction``).  ``tissue_mark`` is appended to the
    NAWM/GM Dice labels (a footnote mark).
    """
    lt, tt = f"{lesion_threshold * 100:g}%", f"{tissue_threshold * 100:g}%"
    rows = [
        TableRow(f"Lesion Dice ({lt})", "lesion_dice"),
        TableRow(f"Lesion detection rate ({lt})", "lesion_detection_rate"),
        TableRow("Intra-observer Dice (all subjects annotated twice)", "intra_observer_dice", split="all"),
        TableRow(f"Lesion-wise F1, MSSEG-2016 ({lt})", "lesion_msseg_f1"),
        TableRow(f"Lesion-wise precision, MSSEG-2016 ({lt})", "lesion_msseg_precision"),
        TableRow(f"Lesion detection rate, MSSEG-2016 ({lt})", "lesion_msseg_detection_rate"),
        TableRow("Lesion expected calibration error", "lesion_ece"),
        TableRow(f"NAWM Dice ({tt}, mean over slices){tissue_mark}", "NAWM_dice_slice_mean"),
        TableRow(f"NAWM Dice ({tt}, whole volume){tissue_mark}", "NAWM_dice_volume"),
        TableRow(f"GM Dice ({tt}, mean over slices){tissue_mark}", "GM_dice_slice_mean"),
        TableRow(f"GM Dice ({tt}, whole volume){tissue_mark}", "GM_dice_volume"),
        TableRow("T1 relative deviation", "T1_relative_deviation", percent=True),
        TableRow("T2* relative deviation", "T2star_relative_deviation", percent=True),
    ]
    present = list(dict.fromkeys(k for s in summaries.values() for k in s))  # first-seen order
    for quantity, label in (("T1", "T1"), ("T2star", "T2*")):
        prefix = f"{quantity}_relative_deviation_"
        for key in (k for k in present if k.startswith(prefix)):
            tissue = key[len(prefix):]
            if tissue.endswith(CORE_SUFFIX):
                tissue = f"{tissue.removesuffix(CORE_SUFFIX)} core (true fraction ≥ {core_fraction * 100:g}%)"
            rows.append(TableRow(f"{label} relative deviation, {tissue}", key, percent=True))
    return [r for r in rows if r.key in present]


def markdown_table(
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
    *,
    split: str = "test",
    rows: list[TableRow] | None = None,
    lesion_threshold: float = LESION_THRESHOLD,
    tissue_threshold: float = TISSUE_THRESHOLD,
    core_fraction: float = CORE_FRACTION,
    paper_column: bool = True,
    tissue_from_truth: Sequence[str] = (),
) -> str:
    """A markdown table of mean ± SD (n) on one split, beside the paper's figures.

    Parameters
    ----------
    summaries : dict
        :func:`split_summaries`' output (or ``build_report(...)["splits"]``).
    split : str
        The split shown (the paper reports the test split).
    rows : list of TableRow, optional
        Default :func:`default_rows`.
    paper_column : bool
        Add Hermann et al. 2021's test-set values where they exist.
    tissue_from_truth : sequence of str
        Names of the sources whose NAWM/GM maps are the ground-truth tissue
        fractions (``conventional``): the NAWM/GM rows are marked and a note
        beneath the table says so.

    Returns
    -------
    str
        GitHub-flavoured markdown, ending in a newline.

    Raises
    ------
    ValidationError
        ``split`` is not in ``summaries``.
    """
    if split not in summaries:
        raise ValidationError(f"split {split!r} not in the summaries; have {sorted(summaries)}")
    mark = " †" if tissue_from_truth else ""
    if rows is None:
        rows = default_rows(summaries, lesion_threshold=lesion_threshold, tissue_threshold=tissue_threshold,
                            core_fraction=core_fraction, tissue_mark=mark)
    head = ["Measure", f"{split}: mean ± SD", "n"]
    if paper_column:
        head.append("Hermann et al. 2021 (test)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        s = summaries.get(row.split or split, {}).get(row.key)
        cells = [row.label, format_mean_sd(s, percent=row.percent), str(s["n"]) if s else "0"]
        if paper_column:
            cells.append(_paper(row.key, row.percent))
        lines.append("| " + " | ".join(cells) + " |")
    if tissue_from_truth:
        names = " and ".join(f"`{n}`" for n in tissue_from_truth)
        lines += ["", f"† Reference: truth tissue fractions. The NAWM/GM maps of {names} are the subjects' "
                      "ground-truth tissue fractions (a stand-in: no segmentation stage makes them), so these rows "
                      "say nothing about a pipeline; against `truth` they are 1 by construction."]
    return "\n".join(lines) + "\n"
