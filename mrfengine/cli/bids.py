"""``mrfengine bids BIDS_DIR OUTPUT_DIR participant``: the BIDS-App entry (as fMRIPrep, MRIQC)."""

from __future__ import annotations

import click

from ._common import backend_option, nthreads_option

ANALYSIS_LEVELS = ("participant", "group")


def _split(values, option: str) -> list[str]:
    ids = [s.strip() for v in values for s in v.replace(",", " ").split() if s.strip()]
    if values and not ids:
        raise click.BadParameter("no label given; leave it out to run every participant", param_hint=option)
    return ids


def _filters(_ctx, _param, value):
    if value is None:
        return None
    from ..errors import InputFileError
    from ..io.bids_input import load_filter_file

    try:
        return value, load_filter_file(value)
    except InputFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--bids-filter-file") from None


def _pipelines(stages, config, name, model):
    from ..pipeline import Pipeline
    from .batch import _pipeline

    pipes = [_pipeline(stages, config, name)]
    if model is not None:
        if any("unet" in p.stages for p in pipes):
            raise click.UsageError("--model runs the U-net as a pipeline of its own (desc-unet); the pipeline of "
                                   "--stages/--config already has a unet stage: give its model there")
        from ..errors import ValidationError

        try:
            pipes.append(Pipeline.from_dict({"pipeline": {"name": "unet", "stages": ["unet"]},
                                             "unet": {"model": str(model)}}))
        except ValidationError as exc:
            raise click.BadParameter(str(exc), param_hint="--model") from None
    names = [p.name for p in pipes]
    if len(set(names)) != len(names):
        raise click.UsageError(f"two pipelines named {names[0]!r}; give --name")
    return pipes


class _Events:
    """One line per participant and step on stderr (progress lines not with -q; errors always)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, kind: str, p) -> None:
        failed = (kind in ("imported", "exported") and p.get("error")) or kind == "stopped" or (
            kind == "subject" and p["result"].status == "failed")
        if self.quiet and not failed:
            return
        if kind == "found":
            files = ", ".join(f"{k} {v.name}" for k, v in p["files"].items())
            click.echo(f"{p['subject']}: {files}", err=True)
        elif kind == "imported":
            if p["error"]:
                click.secho(f"{p['subject']}: import failed: {p['error']}", err=True, fg="red")
            elif p["imported"]:
                click.echo(f"{p['subject']}: imported into the work cohort", err=True)
        elif kind == "start":
            click.echo(f"pipeline: {len(p['subjects'])} participant(s) to run, {len(p['skipped'])} complete "
                       f"already", err=True)
        elif kind == "subject":
            r = p["result"]
            if r.status == "failed":
                click.secho(f"{r.subject}: FAILED: {r.error}", err=True, fg="red")
            else:
                took = r.timings_s.get("wall") or r.timings_s.get("total")
                click.echo(f"{r.subject}: maps {r.status}" + (f" in {took:.1f} s" if took else ""), err=True)
        elif kind == "stopped":
            click.secho(f"error: {p['reason']}", err=True, fg="red")
        elif kind == "exported":
            if p["error"]:
                click.secho(f"error: {p['error']}", err=True, fg="red")
            else:
                click.echo(f"{p['subject']}: {len(p['outputs'])} image(s) written", err=True)


class _BidsCommand(click.Command):
    """The usage line without the trailing labels (:data:`_MORE_LABELS`): they belong to --participant-label."""

    def collect_usage_pieces(self, ctx):
        pieces = super().collect_usage_pieces(ctx)
        return pieces[:-1] if pieces and pieces[-1].startswith(_MORE_LABELS) else pieces


#: Metavar of the labels after the first one of ``--participant-label 01 02 03`` (the BIDS-Apps spelling,
#: space-separated): click gives an option one value, so the others arrive as trailing arguments.
_MORE_LABELS = "[MORE_LABELS]"


@click.command("bids", cls=_BidsCommand)
@click.argument("bids_dir", metavar="BIDS_DIR", type=click.Path(file_okay=False))
@click.argument("output_dir", metavar="OUTPUT_DIR", type=click.Path(file_okay=False))
@click.argument("analysis_level", metavar="{participant,group}", type=click.Choice(ANALYSIS_LEVELS))
@click.argument("more_labels", nargs=-1, metavar=_MORE_LABELS)
@click.option("--participant-label", "--participant_label", "labels", multiple=True, metavar="LABEL",
              help="Participant(s) to run: 01 or sub-01; space-separated after the positional arguments "
                   "(--participant-label 01 02, the BIDS-Apps spelling), comma-separated or repeated "
                   "(default: all).")
@click.option("-w", "--work-dir", default="work", show_default=True, type=click.Path(file_okay=False),
              help="Work folder (as fMRIPrep's): the zarr cohort the participants are imported into, and "
                   "what a rerun resumes from. One work folder per BIDS dataset.")
@click.option("--derivatives", multiple=True, type=click.Path(file_okay=False), metavar="PATH",
              help="A derivative dataset to search for lesion (and brain) masks, repeatable.")
@click.option("--bids-filter-file", "filters", default=None, type=click.Path(dir_okay=False), callback=_filters,
              metavar="FILE",
              help="JSON object replacing the pybids queries of 'mrf', 't2w', 'lesion' and 'brainmask' "
                   "(entity -> value; null: absent, \"*\": present), e.g. "
                   '{"mrf": {"acquisition": "MRF", "session": "1"}}.')
@click.option("--stages", default=None,
              help="Stages, comma-separated (default: denoise,match; as mrfengine batch). With a register stage "
                   "the T2w must lie on the MRF's grid.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A TOML pipeline description, as for mrfengine batch.")
@click.option("--name", default=None,
              help="Name of the pipeline (its maps leave as desc-<name, letters and digits>; default: the stage "
                   "names, e.g. denoise-match -> desc-denoisematch).")
@click.option("--model", default=None, metavar="MODEL",
              help="Also run a trained U-net (a .pt file, or 'default': the shipped model) as a pipeline of its "
                   "own; its maps leave as desc-unet.")
@click.option("--site", default=None, type=click.Choice(["1", "2"]),
              help="The hermann2021 protocol of series whose sidecar names no sequence (default 1, with a "
                   "warning).")
@click.option("--sequence", "sequence_spec", default=None,
              help="The sequence of every series (a preset or a file), instead of their sidecars'.")
@nthreads_option("CPU threads in all (as fMRIPrep's --nthreads): N tasks at once, each kernel on one thread; "
                 "0: one task per core.", apply=False)
@backend_option
@click.option("--force", is_flag=True,
              help="Import, compute and export again participants that are complete (their derivatives are "
                   "replaced).")
def bids(bids_dir, output_dir, analysis_level, more_labels, labels, work_dir, derivatives, filters, stages, config_path, name,
         model, site, sequence_spec, n_threads, backend, force) -> None:
    """Run mrfengine on a BIDS dataset (the BIDS-Apps calling convention).

    Each participant's MRF series (anat/sub-<label>[_ses-<label>]_MRF.nii.gz
    by default: BIDS has no MRF suffix yet, list '*_MRF.*' in .bidsignore),
    T2w reference and lesion mask (label-lesion_mask, in the dataset or a
    --derivatives dataset) are found with pybids and imported into a zarr
    cohort in the work folder; the pipeline runs on it with the batch engine
    and the maps are written to OUTPUT_DIR, a BIDS derivative dataset
    (sub-<label>/anat/sub-<label>_desc-<pipeline>_T1map.nii.gz, ...).

    The series' sequence comes from its JSON sidecar: SequenceName
    (hermann2021-site1/-site2, or a preset), MRFSequenceFile (a sequence
    file), or MultibandAccelerationFactor (1: site 1, 3: site 2); SliceTiming
    and SequenceDigest, when present, are checked against it.

    A rerun resumes: unchanged participants are not imported again, complete
    maps are not recomputed, complete derivatives not rewritten (--force
    redoes them).  The group level is not implemented (exit 2).

    Exit status: 0 every participant complete, 1 some failed or an input
    problem (named), 2 usage error."""
    from ..errors import MRFEngineError
    from ..pipeline.batch import batch_client
    from ..pipeline.bids_app import run_bids_app
    from ..sequence import resolve_sequence
    from . import _verbosity

    if analysis_level == "group":
        raise click.UsageError("mrfengine has no group level: run 'participant' (the maps of every participant "
                               "are in OUTPUT_DIR; 'mrfengine evaluate' compares a cohort's maps with a reference)")
    if more_labels and not labels:
        raise click.UsageError(f"unexpected argument(s) {' '.join(more_labels)!s}; participants are chosen with "
                               "--participant-label")
    ids = _split(labels, "--participant-label") + _split(more_labels, "--participant-label")
    filter_path, filters = filters or (None, None)
    pipes = _pipelines(stages, config_path, name, model)
    seq = None
    if sequence_spec is not None:
        try:
            seq = resolve_sequence(sequence_spec)
        except (MRFEngineError, OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--sequence") from None
    from .batch import _quiet_dask

    _quiet_dask()
    workers = n_threads or None

    def client():
        # One worker: a thread of this process (no start-up cost); more: one process each. Each task's
        # kernels run on one thread (run_batch's n_threads), so N tasks use N cores.
        return batch_client(n_workers=workers, threads_per_worker=1, processes=workers != 1, dashboard=False)

    try:
        report = run_bids_app(bids_dir, output_dir, pipes, client, participants=ids, work_dir=work_dir,
                              derivatives=derivatives, filters=filters, filter_file=filter_path, site=site,
                              sequence=seq, force=force, backend=backend,
                              on_event=_Events(_verbosity(click.get_current_context())["quiet"]))
    except KeyboardInterrupt:
        click.secho("interrupted: finished participants are kept; rerun the same command to go on", err=True,
                    fg="red")
        click.get_current_context().exit(130)
    done = sum(p.status == "done" for p in report.participants)
    complete = sum(p.status == "complete" for p in report.participants)
    failed = [p for p in report.participants if p.status == "failed"]
    click.echo(f"{len(report.participants)} participant(s): {done} done, {complete} complete already, "
               f"{len(failed)} failed; derivatives in {report.output_dir} ({report.wall_s:.1f} s)")
    if not report.ok:
        for p in failed:
            click.secho(f"error: {p.error}", err=True, fg="red")
        click.get_current_context().exit(1)


commands = [bids]
