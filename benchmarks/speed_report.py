"""The speed report (issue 20): per-stage and end-to-end times and ratios from pytest-benchmark JSON.

``benchmarks/bench_speed_report.py`` times, on one subject in one session, the
conventional pipeline as the paper's authors ran it (``reference``: dipy's
MP-PCA, numpy brute-force matching), mrfengine's conventional pipeline
(``mrfengine``: its pipeline stages) and the U-net (``unet``: one stage from
the MRF series to the maps).  Each case stores ``pipeline``, ``stage`` and,
where only part of the subject was timed, ``scale`` (the subject's time over
the timed time) in ``extra_info``.  This script turns the saved JSON into a
markdown table, checks the ratios against a committed baseline and pastes the
table into ``benchmarks/README.md``::

    python benchmarks/speed_report.py RESULTS.json [--baseline benchmarks/speed_baseline_small.json]
        [--tolerance 3.0] [-o report.md] [--update-readme benchmarks/README.md]
        [--write-baseline benchmarks/speed_baseline_small.json]

Ratios, not seconds, are compared: the machine that runs CI differs from the
one that measured the baseline.  Exit status: 0 when every ratio is at least
``baseline / tolerance``, 1 when one is below (a regression, named on stderr
and in the report), 2 when the input cannot be read.

Standard library only, so it runs wherever the JSON is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The issue's end-to-end targets at full size (a paper-sized subject on 2 cores),
#: as ratios of the reference pipeline's time: the paper ran 3 h against 1 min.
TARGETS: Mapping[str, float] = {"end_to_end": 100.0, "unet_end_to_end": 1000.0}

#: The pipelines a case may belong to.
PIPELINES = ("reference", "mrfengine", "unet")

#: What each ratio key means, for the report's messages.
RATIO_LABELS = {"end_to_end": "mrfengine conventional end to end", "unet_end_to_end": "U-net end to end"}

#: The statistic of each case's rounds that the report uses: the least disturbed
#: round on a shared machine.
STATISTIC = "min"

README_START = "<!-- speed-report:start -->"
README_END = "<!-- speed-report:end -->"


class ReportError(Exception):
    """The results (or baseline, or README) cannot be used; the message names the file."""


@dataclass(frozen=True)
class Record:
    """One timed case: seconds for the whole subject (extrapolated where ``note`` says so)."""

    pipeline: str
    stage: str
    seconds: float
    note: str = ""
    tool: str = ""


def case_seconds(stats: Mapping[str, float], extra: Mapping[str, object]) -> float:
    """A case's seconds for the whole subject: the :data:`STATISTIC` of its rounds times its ``scale``."""
    return float(stats[STATISTIC]) * float(extra.get("scale", 1.0))  # type: ignore[arg-type]


def case_note(extra: Mapping[str, object]) -> str:
    """How a case's time was obtained, when not by timing the whole subject."""
    if not extra.get("extrapolated"):
        return ""
    timed, total = extra.get("slices_timed"), extra.get("slices")
    vt, v = extra.get("voxels_timed"), extra.get("voxels")
    what = f"{timed} of {total} slices" if timed is not None and total is not None else "part of the subject"
    if vt is not None and v is not None:
        what += f", {int(vt):,} of {int(v):,} brain voxels"  # type: ignore[call-overload]
    scale = float(extra.get("scale", 1.0))  # type: ignore[arg-type]
    return f"timed on {what}, scaled by the voxel count (x{scale:.2f})"


@dataclass
class Summary:
    """Per-stage and end-to-end times of the three pipelines, and their ratios."""

    stages: list[str]
    reference: dict[str, Record]
    mrfengine: dict[str, Record]
    unet: Record | None
    context: dict[str, object] = field(default_factory=dict)

    @property
    def reference_total(self) -> float:
        return sum(r.seconds for r in self.reference.values())

    @property
    def mrfengine_total(self) -> float:
        return sum(r.seconds for r in self.mrfengine.values())

    @property
    def ratios(self) -> dict[str, float]:
        """``<stage>``: reference / mrfengine per stage; ``end_to_end`` and ``unet_end_to_end``:
        the reference's total over mrfengine's conventional total and over the U-net's time."""
        out = {s: self.reference[s].seconds / self.mrfengine[s].seconds for s in self.stages}
        out["end_to_end"] = self.reference_total / self.mrfengine_total
        if self.unet is not None:
            out["unet_end_to_end"] = self.reference_total / self.unet.seconds
        return out


def summarise(records: Iterable[Record], context: Mapping[str, object] | None = None) -> Summary:
    """Group the cases by pipeline and stage; every conventional stage needs a reference and a mrfengine time.

    Raises
    ------
    ReportError
        An unknown pipeline, a case given twice, a stage timed for one pipeline only, no stage at all.
    """
    stages: list[str] = []
    by: dict[str, dict[str, Record]] = {p: {} for p in PIPELINES}
    for r in records:
        if r.pipeline not in PIPELINES:
            raise ReportError(f"case {r.pipeline}/{r.stage}: unknown pipeline {r.pipeline!r} "
                              f"(expected one of {', '.join(PIPELINES)})")
        if r.stage in by[r.pipeline]:
            raise ReportError(f"case {r.pipeline}/{r.stage} appears twice")
        if not r.seconds > 0:
            raise ReportError(f"case {r.pipeline}/{r.stage}: time {r.seconds!r} s is not positive")
        by[r.pipeline][r.stage] = r
        if r.pipeline != "unet" and r.stage not in stages:
            stages.append(r.stage)
    if not stages:
        raise ReportError("no conventional stage was timed (no 'reference' or 'mrfengine' case)")
    for s in stages:
        missing = [p for p in ("reference", "mrfengine") if s not in by[p]]
        if missing:
            raise ReportError(f"stage {s!r} has no {' and no '.join(missing)} time; a ratio needs both")
    if len(by["unet"]) > 1:
        raise ReportError(f"the U-net is one stage; got {sorted(by['unet'])}")
    unet = next(iter(by["unet"].values()), None)
    return Summary(stages, by["reference"], by["mrfengine"], unet, dict(context or {}))


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from exc


def load_results(path: str | Path) -> Summary:
    """Read a pytest-benchmark JSON file and summarise its speed-report cases (others are ignored)."""
    path = Path(path)
    data = _read_json(path, "results")
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ReportError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    records, sizes, rounds, context = [], set(), {}, {}
    for case in data["benchmarks"]:
        extra = case.get("extra_info") or {}
        if "pipeline" not in extra:
            continue
        stats = case.get("stats") or {}
        if STATISTIC not in stats:
            raise ReportError(f"{path}: case {case.get('name')!r} has no '{STATISTIC}' time")
        records.append(Record(str(extra["pipeline"]), str(extra.get("stage", "")), case_seconds(stats, extra),
                              case_note(extra), str(extra.get("tool", ""))))
        sizes.add(extra.get("size"))
        rounds[f"{extra['pipeline']}/{extra.get('stage')}"] = stats.get("rounds")
        for key in ("voxels", "slices", "shape"):
            if key in extra:
                context.setdefault(key, extra[key])
    if not records:
        raise ReportError(f"{path}: no speed-report cases (run benchmarks/bench_speed_report.py "
                          f"with --benchmark-json=FILE)")
    if len(sizes) != 1:
        raise ReportError(f"{path}: cases of several sizes {sorted(map(str, sizes))}; one run, one size")
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    context.update(size=sizes.pop(), rounds=rounds, datetime=data.get("datetime"),
                   cpu=cpu.get("brand_raw"), cores=cpu.get("count"), source=path.name)
    try:
        return summarise(records, context)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from None


def _seconds(t: float) -> str:
    if t >= 120:
        return f"{t:,.0f} s ({t / 60:.1f} min)"
    return f"{t:.1f} s" if t >= 10 else f"{t:.2f} s" if t >= 0.1 else f"{t * 1000:.1f} ms"


def _ratio(r: float) -> str:
    return f"{r:,.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def render(summary: Summary) -> str:
    """The report as markdown: a table of stages, the end-to-end rows, notes and the targets."""
    ctx = summary.context
    ratios = summary.ratios
    notes: list[str] = []

    def cell(rec: Record) -> str:
        text = _seconds(rec.seconds)
        if rec.note:
            notes.append(f"{rec.pipeline} {rec.stage}: {rec.note}")
            text += f" [{len(notes)}]"
        return text

    size = ctx.get("size")
    subject = []
    shape = ctx.get("shape")
    if isinstance(shape, list) and len(shape) == 4:  # (slices, rows, columns, frames)
        subject.append(f"{shape[0]} slices of {shape[1]} x {shape[2]}, {shape[3]} frames")
    if ctx.get("voxels"):
        subject.append(f"{int(ctx['voxels']):,} brain voxels")  # type: ignore[call-overload]
    header = f"Speed report, {size} size" + (f" ({'; '.join(subject)})" if subject else "")
    if ctx.get("datetime"):
        header += ", " + str(ctx["datetime"])[:16].replace("T", " ")
    if ctx.get("cpu"):
        header += f", {ctx['cpu']}"
    if ctx.get("cores"):
        header += f", {ctx['cores']} cores"
    lines = [header + f"; the {STATISTIC} of each case's rounds.", "",
             "| stage | reference (paper's tools) | mrfengine | ratio |", "| --- | --- | --- | --- |"]
    for s in summary.stages:
        lines.append(f"| {s} | {cell(summary.reference[s])} | {cell(summary.mrfengine[s])} | {_ratio(ratios[s])} |")
    lines.append(f"| **end to end** ({' + '.join(summary.stages)}) | **{_seconds(summary.reference_total)}** | "
                 f"**{_seconds(summary.mrfengine_total)}** | **{_ratio(ratios['end_to_end'])}** |")
    if summary.unet is not None:
        lines.append(f"| **U-net** end to end (MRF series to maps, one stage) | "
                     f"**{_seconds(summary.reference_total)}** | **{cell(summary.unet)}** | "
                     f"**{_ratio(ratios['unet_end_to_end'])}** |")
    else:
        lines.append("| U-net | | not measured | |")
    lines.append("")
    tools = [f"{r.stage}: {r.tool}" for r in summary.reference.values() if r.tool]
    if tools:
        lines.append("Reference: " + "; ".join(tools) + ".")
    mine = [f"{r.stage}: {r.tool}" for r in [*summary.mrfengine.values(), summary.unet] if r is not None and r.tool]
    if mine:
        lines.append("mrfengine: " + "; ".join(mine) + ".")
    for k, n in enumerate(notes, 1):
        lines.append(f"[{k}] {n}.")
    lines.append("")
    if size == "full":
        parts = []
        for key, target in TARGETS.items():
            got = ratios.get(key)
            verdict = ("not measured" if got is None else
                       f"{'met' if got >= target else '**not met**'} ({_ratio(got)})")
            parts.append(f"{RATIO_LABELS[key]} >= {target:,.0f}x: {verdict}")
        lines.append("Targets (issue 20, full size, 2 cores): " + "; ".join(parts) + ".")
    else:
        lines.append("The targets (" + ", ".join(f"{RATIO_LABELS[k]} >= {v:,.0f}x" for k, v in TARGETS.items())
                     + ") apply at full size; small-size ratios only guard against regressions.")
    return "\n".join(lines) + "\n"


def load_baseline(path: str | Path) -> dict[str, object]:
    """Read a baseline written by ``--write-baseline``: ``{"size": ..., "ratios": {name: ratio}}``."""
    path = Path(path)
    data = _read_json(path, "baseline")
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, dict) or not ratios or not all(
            isinstance(v, (int, float)) and v > 0 for v in ratios.values()):
        raise ReportError(f"{path}: a baseline is {{\"size\": ..., \"ratios\": {{name: positive number}}}}")
    return data


def compare(ratios: Mapping[str, float], baseline: Mapping[str, object], tolerance: float,
            size: object = None) -> list[str]:
    """The regressions: each baseline ratio the results miss or fall below ``baseline / tolerance``."""
    if not tolerance >= 1:
        raise ReportError(f"tolerance must be >= 1; got {tolerance}")
    if size is not None and baseline.get("size") not in (None, size):
        return [f"the baseline was measured at {baseline.get('size')} size, the results at {size} size; "
                f"ratios of different sizes do not compare"]
    failures = []
    for key, base in baseline["ratios"].items():  # type: ignore[union-attr]
        got = ratios.get(key)
        floor = float(base) / tolerance
        if got is None:
            failures.append(f"{key}: no ratio in the results (the baseline has {_ratio(float(base))})")
        elif got < floor:
            failures.append(f"{key}: {_ratio(got)} is below the baseline's {_ratio(float(base))} / {tolerance:g} "
                            f"= {_ratio(floor)}")
    return failures


def check_section(ratios: Mapping[str, float], baseline: Mapping[str, object], tolerance: float,
                  failures: list[str], source: str) -> str:
    lines = [f"Regression check against {source} (fails below baseline / {tolerance:g}):", "",
             "| ratio | measured | baseline | floor |", "| --- | --- | --- | --- |"]
    for key, base in baseline["ratios"].items():  # type: ignore[union-attr]
        got = ratios.get(key)
        lines.append(f"| {key} | {'-' if got is None else _ratio(got)} | {_ratio(float(base))} | "
                     f"{_ratio(float(base) / tolerance)} |")
    lines.append("")
    lines.append("**REGRESSION**: " + "; ".join(failures) if failures else "No regression.")
    return "\n".join(lines) + "\n"


def update_readme(path: str | Path, section: str) -> None:
    """Replace the text between :data:`README_START` and :data:`README_END` in ``path`` by ``section``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if (text.count(README_START) != 1 or text.count(README_END) != 1
            or text.index(README_START) > text.index(README_END)):
        raise ReportError(f"{path}: needs one '{README_START}' line followed by one '{README_END}' line")
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    path.write_text(pattern.sub(lambda _: f"{README_START}\n{section.rstrip()}\n{README_END}", text))


def baseline_json(summary: Summary, note: str = "") -> str:
    data = {"size": summary.context.get("size"),
            "note": note or ("ratios of a speed-report run (python benchmarks/speed_report.py RESULTS.json "
                             "--write-baseline ...); CI fails when a ratio falls below baseline / tolerance"),
            "measured": summary.context.get("datetime"),
            "machine": f"{summary.context.get('cpu')}, {summary.context.get('cores')} cores",
            "ratios": {k: round(v, 3) for k, v in summary.ratios.items()}}
    return json.dumps(data, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON of benchmarks/bench_speed_report.py")
    parser.add_argument("--baseline",
                        help="committed ratios to compare with (e.g. benchmarks/speed_baseline_small.json)")
    parser.add_argument("--tolerance", type=float, default=3.0,
                        help="a ratio below baseline / TOLERANCE is a regression (default 3.0)")
    parser.add_argument("-o", "--output", help="also write the report (markdown) to this file")
    parser.add_argument("--update-readme", metavar="README",
                        help=f"paste the table between {README_START} and {README_END} in README")
    parser.add_argument("--write-baseline", metavar="PATH", help="write the measured ratios as a new baseline")
    args = parser.parse_args(argv)
    try:
        summary = load_results(args.results)
        report = render(summary)
        failures: list[str] = []
        if args.baseline:
            baseline = load_baseline(args.baseline)
            failures = compare(summary.ratios, baseline, args.tolerance, summary.context.get("size"))
            report += "\n" + check_section(summary.ratios, baseline, args.tolerance, failures,
                                           Path(args.baseline).name)
        print(report, end="")
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(report)
        if args.update_readme:
            update_readme(args.update_readme, render(summary))
        if args.write_baseline:
            Path(args.write_baseline).write_text(baseline_json(summary))
    except ReportError as exc:
        print(f"speed_report: {exc}", file=sys.stderr)
        return 2
    for f in failures:
        print(f"speed_report: REGRESSION: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
