"""``mrfengine batch COHORT.zarr``: a pipeline over a whole cohort on Dask."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ._common import progress_option, split_subjects

#: The job queues of --cluster (pipeline.cluster.JOB_SYSTEMS, not imported at start-up; a test keeps them equal).
JOB_SYSTEMS = ("slurm", "pbs", "sge")

DEFAULT_STAGES = "denoise,match"
#: The stage names --help lists (mrfengine.pipeline.STAGES, not imported at start-up; a test keeps them equal).
KNOWN_STAGES = ("mask", "denoise", "match", "unet", "write", "register", "segment")


def _fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN / inf
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class _Display:
    """Progress of a batch: a tqdm bar on a terminal (subjects, stage times,
    throughput, ETA), one log line per subject otherwise."""

    def __init__(self, enabled: bool | None) -> None:
        self.tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.total = 0
        self.done = 0
        self.failed = 0
        self.slabs_total = 0
        self.slabs_done = 0
        self.stage_s: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        getattr(self, f"_on_{kind}")(payload)

    def _rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def _stages(self) -> str:
        if not self.done and not self.slabs_done:
            return ""
        n = max(1, self.done)
        keys = [k for k in self.stage_s if k not in ("write",)]
        return " ".join(f"{k} {self.stage_s[k] / n:.1f}s" for k in keys)

    def _on_start(self, p: dict[str, Any]) -> None:
        self.total = len(p["subjects"])
        self.slabs_total = p["slabs"]
        click.echo(f"{self.total} subject(s) to run, {len(p['skipped'])} already complete (skipped); "
                   f"{p['slabs']} slab task(s) on {p['n_workers']} worker(s), {p['n_threads']} thread(s)", err=True)
        self.t0 = time.perf_counter()
        if self.tty and self.total:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="subjects", unit="subj", file=sys.stderr, dynamic_ncols=True)

    def _on_slab(self, p: dict[str, Any]) -> None:
        self.slabs_done += 1
        for k, v in p["timings_s"].items():
            self.stage_s[k] = self.stage_s.get(k, 0.0) + float(v)
        if self.bar is not None:
            self.bar.set_postfix_str(f"slabs {self.slabs_done}/{self.slabs_total} {self._stages()}", refresh=True)

    def _on_subject(self, p: dict[str, Any]) -> None:
        r = p["result"]
        self.done += 1
        self.failed += r.status == "failed"
        if self.bar is not None:
            self.bar.update(1)
            if r.status == "failed":
                self.bar.write(f"FAILED {r.error}", file=sys.stderr)
            return
        state = "ok" if r.status == "ok" else f"FAILED: {r.error}"
        if not r.timings_s:  # refused before any work (an unreadable subject): no rate to show
            click.echo(f"[{self.done}/{self.total}] {r.subject} {state}", err=True)
            return
        rate = self._rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        took = r.timings_s.get("wall")
        click.echo(f"[{self.done}/{self.total}] {r.subject} {state}"
                   + (f" in {took:.1f} s" if took and r.status == "ok" else "")
                   + f"; {rate * 60:.1f} subjects/min, ETA {_fmt_duration(eta)}", err=True)

    def _on_stopped(self, p: dict[str, Any]) -> None:
        self.close()
        click.secho(f"error: {p['reason']}", err=True, fg="red")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _summary(report, cohort: str) -> None:
    rows = report.results
    failed = [r for r in rows if r.status == "failed"]
    ran = [r for r in rows if r.status != "skipped"]
    if ran:
        head = f"{'subject':<10}{'status':<9}{'wall s':>8}  {'stages (task seconds)':<44}{'peak MB':>8}"
        click.echo(head)
        click.echo("-" * len(head))
        for r in ran:
            stages = " ".join(f"{k} {v:.1f}" for k, v in r.timings_s.items() if k not in ("wall", "total"))
            total = r.timings_s.get("wall", r.timings_s.get("total", float("nan")))
            peak = f"{r.peak_memory_mb:,.0f}" if r.peak_memory_mb == r.peak_memory_mb and r.peak_memory_mb else "-"
            click.echo(f"{r.subject:<10}{r.status:<9}{total:>8.1f}  {stages[:44]:<44}{peak:>8}")
    for r in failed:
        click.secho(f"  {r.subject}: {r.error}", err=True, fg="red")
    n_ok, n_skip = report.count("ok"), report.count("skipped")
    throughput = n_ok / report.wall_s * 60 if report.wall_s > 0 else 0.0
    click.echo(f"{len(rows)} subject(s): {n_ok} done, {n_skip} already complete, {len(failed)} failed"
               + (f", {len(report.not_run)} not run" if report.not_run else "")
               + f"; {_fmt_duration(report.wall_s)} wall, {throughput:.1f} subjects/min")
    if n_ok or n_skip:
        click.echo(f"maps: {cohort}/subjects/<subject>/derived/{report.pipeline}/ "
                   f"(NIfTI: mrfengine export {cohort} -o OUTDIR --pipeline {report.pipeline})")


def _write_report(path: str, report) -> None:
    import dataclasses
    import json

    from .._atomic import atomic_write_text

    doc = {"pipeline": report.pipeline, "wall_s": report.wall_s, "n_workers": report.n_workers,
           "n_threads": report.n_threads, "stopped": report.stopped, "not_run": report.not_run,
           "results": [dataclasses.asdict(r) for r in report.results]}
    atomic_write_text(path, json.dumps(doc, indent=2, default=str))


def _check_report_path(path: str) -> None:
    """Refuse a ``--report`` file that could not be written, before any work."""
    import os

    from ..io.outputs import check_writable_dir

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint="--report")
    if not os.path.isdir(folder):
        raise click.BadParameter(f"{path}: its folder {folder} does not exist", param_hint="--report")
    check_writable_dir(folder, what="folder of the report")


def _quiet_dask() -> None:
    """Dask's INFO chatter (scheduler/nanny start and stop) hides the progress;
    keep its warnings unless mrfengine runs at debug level."""
    import logging

    import distributed  # noqa: F401 - configures its loggers on import

    level = logging.WARNING if logging.getLogger().level <= logging.DEBUG else logging.ERROR
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def _job_spec(job_system: str | None, *, scheduler: str | None, n_workers: int | None, threads_per_worker: int,
              jobs: int | None, print_job_script: bool, **resources):
    """The batch jobs of ``--cluster`` (a :class:`~mrfengine.pipeline.cluster.JobSpec`), or None;
    options that exclude each other are usage errors (exit 2)."""
    from ..errors import OptionError
    from ..pipeline.cluster import JobSpec, job_resources

    given = [f"--{k.replace('_', '-')}" for k, v in resources.items() if v not in (None, ())]
    if job_system is None:
        needs = given + (["--jobs"] if jobs is not None else []) + (["--print-job-script"] if print_job_script else [])
        if needs:
            raise click.UsageError(f"{', '.join(needs)}: only with --cluster slurm|pbs|sge")
        return None
    if scheduler is not None:
        raise click.UsageError("give --cluster (submit workers as batch jobs) or --scheduler (use a running "
                               "scheduler), not both")
    if n_workers is not None:
        raise click.UsageError("--workers is for the local cluster; with --cluster each job runs "
                               "job-cores / threads-per-worker workers")
    r = resources
    try:
        spec = JobSpec(job_system, cores=r["job_cores"], memory=r["job_memory"], walltime=r["walltime"],
                       queue=r["queue"], account=r["account"], resource_spec=r["resource_spec"],
                       extra_directives=tuple(r["job_extra"]), prologue=tuple(r["job_prologue"]),
                       local_directory=r["local_directory"], interface=r["interface"])
        # Resources that do not fit (and no dask-jobqueue: its error names the extra), before any work.
        job_resources(spec, threads_per_worker)
    except OptionError as exc:
        raise click.UsageError(str(exc)) from exc
    return spec


#: Folders a compute node does not share with the login node.
_NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")


def _warn_if_not_shared(cohort: str) -> None:
    """The workers of another machine read and write the cohort through its path: warn when
    that path is node-local (it exists there, if at all, as another folder)."""
    import os

    if "://" in cohort and not cohort.startswith("file://"):
        return  # object storage (s3://, gs://, ...): every node reaches it by its URL
    path = os.path.realpath(cohort.removeprefix("file://"))
    local = [d for d in _NODE_LOCAL if path == d or path.startswith(d + os.sep)]
    if local:
        click.secho(f"warning: {cohort} is under {local[0]}, local to each machine as a rule: workers on other "
                    f"nodes would not find it; put the cohort on storage every node shares", err=True, fg="yellow")


def _describe_jobs(spec, jobs: int, threads_per_worker: int, client) -> str:
    import dask

    from ..pipeline.cluster import JOB_SYSTEMS, job_resources

    kw = job_resources(spec, threads_per_worker)
    walltime = kw.get("walltime") or dask.config.get(f"jobqueue.{spec.system}.walltime", None) or "the queue's"
    address = client.scheduler.address
    return (f"{jobs} {JOB_SYSTEMS[spec.system][1]} job(s) of {kw['cores']} cores, {kw['memory']}, walltime "
            f"{walltime} ({kw['processes']} worker(s) x {threads_per_worker} thread(s) each) on {address}")


def _pipeline(stages: str | None, config: str | None, name: str | None):
    import tomllib

    from ..errors import InputFileError, MRFEngineError
    from ..pipeline import Pipeline

    if config is not None:
        if stages is not None:
            raise click.UsageError("give --stages or --config, not both")
        try:
            with open(config, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise InputFileError(f"{config}: cannot read the pipeline configuration ({exc.strerror or exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InputFileError(f"{config}: not valid TOML ({exc})") from exc
        except UnicodeDecodeError as exc:  # a binary file: TOML is UTF-8 text
            raise InputFileError(f"{config}: not a TOML text file (not UTF-8: byte {exc.start} is "
                                 f"0x{exc.object[exc.start]:02x})") from exc
        try:
            pipe = Pipeline.from_dict(doc)
        except MRFEngineError as exc:
            raise type(exc)(f"{config}: {exc}") from exc
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InputFileError(f"{config}: not a pipeline description ({type(exc).__name__}: {exc})") from exc
        if name is not None:
            pipe = Pipeline(name, pipe.stages, pipe.options)
        return pipe
    return Pipeline.from_stages(stages or DEFAULT_STAGES, name=name)


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=click.Path(file_okay=False))
@click.option("--stages", default=None,
              help=f"Stages to run, comma-separated (default: {DEFAULT_STAGES}; 'mask' and 'write' are added). "
                   f"Known: {', '.join(KNOWN_STAGES)}; the whole conventional pipeline: "
                   "denoise,match,register,segment.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="A TOML pipeline description ([pipeline] name, stages; one table of options per stage).")
@click.option("--name", default=None,
              help="Name of the derived group written per subject (default: the stage names, e.g. denoise-match).")
@click.option("--subjects", "subject_ids", multiple=True,
              help="Subject(s) to run: sub-07 or 07, repeatable or comma-separated (default: all).")
@click.option("--force", is_flag=True, help="Redo subjects whose maps are complete.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="A running dask.distributed scheduler (tcp://host:8786) whose workers see the cohort "
                   "(default: a local cluster on this machine).")
@click.option("--workers", "n_workers", type=click.IntRange(1), default=None,
              help="Local workers (default: one per GPU, else one per core).")
@click.option("--threads-per-worker", type=click.IntRange(1), default=1, show_default=True,
              help="Tasks each worker runs at once (a local worker, or each worker process of a --cluster job).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "numpy", "cpp", "numba", "cupy", "numba-cuda"]),
              help="Kernel backend, chosen inside each task (auto: a worker's GPU, else C++, Numba, numpy).")
@click.option("--slab-planes", type=click.IntRange(1), default=None,
              help="Planes per slab task (default 32: a 60-slice subject makes two). Keep it when rerunning: "
                   "the maps depend on it in the last bits.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-subject results (status, timings, errors, peak memory) as JSON.")
@click.option("--cluster", "job_system", type=click.Choice(JOB_SYSTEMS), default=None,
              help="Run the workers as batch jobs of this queue (dask-jobqueue: pip install 'mrfengine[hpc]'); "
                   "the scheduler runs here, on the login node. The cohort must be on storage the compute nodes "
                   "share.")
@click.option("--jobs", type=click.IntRange(1), default=None,
              help="[--cluster] Batch jobs to submit (default 1); each runs job-cores / threads-per-worker "
                   "worker processes.")
@click.option("--job-cores", type=click.IntRange(1), default=None,
              help="[--cluster] Cores per job (default: the dask config's jobqueue.<queue>.cores, else 8).")
@click.option("--job-memory", default=None, metavar="SIZE",
              help="[--cluster] Memory per job, e.g. 32GB or 64GiB (default: 4GB per core).")
@click.option("--walltime", default=None, metavar="HH:MM:SS",
              help="[--cluster] Walltime of each job (default: the dask config's, 30 min as shipped); jobs "
                   "that end are not replaced.")
@click.option("--queue", default=None, help="[--cluster] Queue (SLURM: partition).")
@click.option("--account", default=None, help="[--cluster] Account to charge (SGE: project, -P).")
@click.option("--resource-spec", default=None, metavar="SPEC",
              help="[--cluster] PBS/SGE -l resources (PBS default select=1:ncpus=CORES:mem=MEMORY; "
                   "SGE: e.g. h_vmem=4G).")
@click.option("--job-extra", multiple=True, metavar="DIRECTIVE",
              help="[--cluster] Another scheduler directive, repeatable: '--gres=gpu:1', '-pe smp 8'.")
@click.option("--job-prologue", multiple=True, metavar="LINE",
              help="[--cluster] A shell line run before the worker starts, repeatable: 'module load python'.")
@click.option("--local-directory", default=None, metavar="DIR",
              help="[--cluster] The workers' scratch folder on the compute node, e.g. '$TMPDIR'.")
@click.option("--interface", default=None, metavar="NAME",
              help="[--cluster] Network interface of scheduler and workers, e.g. ib0.")
@click.option("--worker-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Wait this long for the first worker (default 600 for --cluster, 60 for --scheduler); "
                   "tasks with no worker left fail after it too (--cluster).")
@click.option("--print-job-script", is_flag=True,
              help="[--cluster] Print the job script each job would run (the scheduler's address left as a "
                   "placeholder) and exit: nothing is submitted, the cohort is not read.")
@progress_option
def batch(cohort, stages, config_path, name, subject_ids, force, scheduler, n_workers, threads_per_worker, backend,
          slab_planes, report_path, job_system, jobs, job_cores, job_memory, walltime, queue, account, resource_spec,
          job_extra, job_prologue, local_directory, interface, worker_timeout, print_job_script,
          show_progress) -> None:
    """Run a pipeline (default: MP-PCA denoising, then dictionary matching
    with each slice's own dictionary) over every subject of a cohort, on a
    local Dask cluster or an existing one (--scheduler).

    Maps go into the cohort, subjects/<sub>/derived/<name>/, with per-stage
    timings and provenance; a subject is complete only once its completion
    record is written, last.  A rerun skips complete subjects and redoes
    interrupted ones; a failing subject is reported while the others go on.

    With --cluster slurm|pbs|sge the workers run as --jobs batch jobs
    (dask-jobqueue), cancelled when the batch ends or is interrupted;
    --print-job-script shows the job script without submitting anything.

    Exit status: 0 every selected subject complete, 1 some failed (see the
    summary) or the store cannot be written, 2 usage error."""
    from ..errors import MRFEngineError
    from ..io.cohort import Cohort
    from ..pipeline.batch import SLAB_PLANES, batch_client, dashboard_link, run_batch

    spec = _job_spec(job_system, scheduler=scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker,
                     jobs=jobs, job_cores=job_cores,
                     job_memory=job_memory, walltime=walltime, queue=queue, account=account,
                     resource_spec=resource_spec, job_extra=job_extra, job_prologue=job_prologue,
                     local_directory=local_directory, interface=interface, print_job_script=print_job_script)
    if worker_timeout is not None and spec is None and scheduler is None:
        raise click.UsageError("--worker-timeout is for --cluster or --scheduler (a local cluster's workers start "
                               "with it)")
    if spec is not None or scheduler is not None:
        _warn_if_not_shared(cohort)
    if print_job_script:
        from ..pipeline.cluster import job_script

        click.echo(job_script(spec, threads_per_worker=threads_per_worker), nl=False)
        return
    pipe = _pipeline(stages, config_path, name)
    ids = split_subjects(subject_ids, every="run every subject")
    if report_path:
        _check_report_path(report_path)
    Cohort.open(cohort)  # a clear error before any cluster starts
    display = _Display(show_progress)
    _quiet_dask()
    click.echo(f"pipeline {pipe.name}: {' -> '.join(pipe.stages)} on {cohort}", err=True)
    try:
        with batch_client(scheduler, n_workers=n_workers, threads_per_worker=threads_per_worker, job_queue=spec,
                          jobs=jobs or 1, worker_timeout=worker_timeout) as client:
            link = dashboard_link(client)
            where = scheduler or (_describe_jobs(spec, jobs or 1, threads_per_worker, client) if spec
                                  else "a local cluster")
            click.echo(f"scheduler: {where}; dashboard: {link or 'not available (pip install bokeh)'}", err=True)
            try:
                report = run_batch(cohort, pipe, client, subjects=ids or None, force=force, backend=backend,
                                   slab_planes=slab_planes or SLAB_PLANES, on_event=display)
            finally:
                display.close()
    except KeyboardInterrupt:
        display.close()
        click.secho("interrupted: finished subjects are kept; rerun the same command to go on", err=True, fg="red")
        click.get_current_context().exit(130)
    except MRFEngineError:
        raise
    except OSError as exc:
        raise MRFEngineError(f"cannot start or reach the Dask cluster ({exc})") from exc
    _summary(report, cohort)
    if report_path:
        _write_report(report_path, report)
    if not report.ok:
        failed = [r.subject for r in report.results if r.status == "failed"]
        why = [f"{len(failed)} subject(s) failed ({', '.join(failed)})"] if failed else []
        why += [f"{len(report.not_run)} not run"] if report.not_run else []
        why += ["stopped early"] if report.stopped else []
        click.secho(f"error: {cohort}: " + ", ".join(why) + "; see above", err=True, fg="red")
        click.get_current_context().exit(1)


commands = [batch]
