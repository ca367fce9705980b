"""``mrfengine report``: an HTML quality-control page per subject and a cohort index."""

from __future__ import annotations

import click

from ._common import READ_COHORT, split_subjects
from ._outputs import force_option


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=READ_COHORT)
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html and one sub-XX.html per subject.")
@click.option("--subjects", "subject_ids", multiple=True, metavar="SUB",
              help="Subject(s) to report, repeatable or comma-separated (default: every complete subject).")
@click.option("--pipeline", "pipelines", multiple=True, metavar="NAME",
              help="Derived group(s) to show, repeatable or comma-separated (default: every complete "
                   "derived/<NAME>/ of each subject).")
@click.option("--slices", "n_slices", default=12, show_default=True, type=click.IntRange(1, 64),
              help="Slices per mosaic, spread over the brain.")
@force_option
def report(cohort, output_dir, subject_ids, pipelines, n_slices, force) -> None:
    """Write an HTML quality-control page per subject (as MRIQC and fMRIPrep do) and an
    index page linking them: for each derived group, an orientation check of input against
    output with anatomical labels, a lesion overlay, every map as an axial mosaic with its colour
    bar and unit, the provenance, the timings per stage and the warnings.  Pages are
    self-contained (images embedded, no JavaScript, no network)."""
    from ..io.cohort import Cohort
    from ..report.qc import subject_pipelines, write_qc_report

    subjects = split_subjects(subject_ids, every="report every subject")
    names = [p.strip() for v in pipelines for p in v.split(",") if p.strip()]
    if pipelines and not names:
        raise click.BadParameter("no pipeline named; leave --pipeline out to show every derived group",
                                 param_hint="--pipeline")
    store = Cohort.open(cohort)
    if names:
        known: set[str] = set()
        for sid in store.select(subjects or None):
            complete, incomplete = subject_pipelines(store, store[sid])
            known.update(complete, incomplete)
        unknown = [p for p in names if p not in known]
        if unknown:
            raise click.BadParameter(f"no selected subject has derived/{unknown[0]}/; derived groups in the "
                                     f"cohort: {', '.join(sorted(known)) or '(none: run mrfengine batch)'}",
                                     param_hint="--pipeline")
    result = write_qc_report(store, output_dir, subjects=subjects or None, pipelines=names or None,
                             n_slices=n_slices, force=force)
    warned = sum(1 for w in result.warnings.values() if w)
    click.echo(f"wrote {len(result.pages)} subject page(s) and {result.index} ({warned} with warnings)")
    if result.failed:
        for sid, why in result.failed.items():
            click.secho(f"error: {sid}: {why}", err=True, fg="red")
        raise click.exceptions.Exit(1)


commands = [report]
