"""``mrfengine evaluate``: compare two sets of maps over a cohort store."""

from __future__ import annotations

import click

from ..metrics.definitions import CORE_FRACTION, LESION_THRESHOLD, REFERENCE_LESION_THRESHOLD, TISSUE_THRESHOLD
from ._common import READ_COHORT, backend_option, cache_option, method_option, no_cache_option, nthreads_option, \
    subjects_option
from ._outputs import force_option


def _deprecated_threshold(_ctx, _param, value):
    if value is not None:
        click.echo("warning: --threshold is deprecated; use --lesion-threshold", err=True)
    return value


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=READ_COHORT)
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for evaluation.json, table.md and the PNG figures.")
@click.option("--pred", default="conventional", show_default=True,
              help="Maps evaluated: truth, annotation, conventional (dictionary matching; lesion = annotation; "
                   "NAWM/GM = truth as a stand-in), conventional:NAME (the same with the T1/T2* a batch stored in "
                   "derived/NAME, e.g. conventional:denoise-match) or derived:NAME (subjects/<sub>/derived/NAME/{T1,T2star,lesion,"
                   "NAWM,GM}).")
@click.option("--ref", default="truth", show_default=True, help="Reference maps (same choices as --pred).")
@subjects_option("evaluate every complete subject")
@click.option("--lesion-threshold", default=LESION_THRESHOLD, show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="Operating threshold of the predicted lesion probability. A reference lesion fraction map "
                   f"(truth) is the annotation where it is >= {REFERENCE_LESION_THRESHOLD:g}, whatever this is.")
@click.option("--threshold", "threshold_alias", default=None, hidden=True, type=click.FloatRange(0, 1, min_open=True),
              callback=_deprecated_threshold, help="Deprecated name of --lesion-threshold.")
@click.option("--tissue-threshold", default=TISSUE_THRESHOLD, show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="NAWM/GM threshold of the tissue Dice (prediction and reference). The T1/T2* deviations per "
                   f"tissue are over tissue cores: true fraction >= {CORE_FRACTION:g}.")
@click.option("--no-figures", is_flag=True, help="Only the JSON and the table.")
@backend_option
@method_option
@cache_option
@no_cache_option
@nthreads_option()
@force_option
def evaluate(cohort, output_dir, pred, ref, subject_ids, lesion_threshold, threshold_alias, tissue_threshold, no_figures,
             backend, method, cache_dir, no_cache, n_threads, force) -> None:
    """Evaluate PRED maps against REF maps on a cohort: lesion Dice and
    detection rate, NAWM/GM Dice, T1/T2* relative deviation (overall and in
    the WM, GM and lesion cores), intra-observer Dice where a subject was
    annotated twice.
    Writes evaluation.json (per subject and per split), table.md (test split,
    mean ± SD, beside Hermann et al. 2021) and the figures (threshold sweeps,
    per-lesion Dice and volume, reliability, one overlay per test subject)."""
    from ..io.outputs import check_outputs
    from ..report.evaluate import REPORT_FILES, evaluate_cohort, parse_source
    from ..report.figures import FIGURE_FILES
    from ._common import make_cache, usage_error

    if threshold_alias is not None:
        if click.get_current_context().get_parameter_source("lesion_threshold").name != "DEFAULT":
            raise click.UsageError("give --lesion-threshold only (--threshold is its deprecated name)")
        lesion_threshold = threshold_alias
    subjects = subject_ids
    for option, spec in (("--pred", pred), ("--ref", ref)):  # a bad spelling is a usage error (exit 2)
        with usage_error(option):
            parse_source(spec)
    # every output checked before the work: an earlier evaluation is replaced only with --force
    check_outputs(output_dir, [*REPORT_FILES.values(), *(() if no_figures else FIGURE_FILES.values())], force=force)
    report = evaluate_cohort(
        cohort, pred=pred, ref=ref, out_dir=output_dir, lesion_threshold=lesion_threshold,
        tissue_threshold=tissue_threshold,
        subjects=subjects or None, backend=backend, method=method, cache=make_cache(cache_dir, no_cache),
        figures=not no_figures,
    )
    split = "test" if "test" in report["splits"] else "all"
    s = report["splits"][split]

    def fmt(key: str, percent: bool = False) -> str:
        v = s.get(key)
        if not v or not v["n"]:
            return "–"
        return f"{100 * v['mean']:.1f}%" if percent else f"{v['mean']:.2f}"

    click.echo(f"{report['settings']['pred']} vs {report['settings']['ref']}: {len(report['subjects'])} subjects; "
               f"{split}: lesion Dice {fmt('lesion_dice')}, intra-observer Dice {fmt('intra_observer_dice')}, "
               f"T1 deviation {fmt('T1_relative_deviation', True)}, T2* deviation "
               f"{fmt('T2star_relative_deviation', True)}")
    click.echo(f"wrote {report['files']['json']} and {len(report['files']) - 1} more file(s) to {output_dir}")


commands = [evaluate]
