"""``mrfengine batch COHORT.zarr``: a pipeline over a whole cohort on Dask."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ._common import nthreads_option, progress_option, subjects_option

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


def _table(rows: list[tuple[str, ...]], head: tuple[str, ...], *, right: tuple[int, ...] = (),
           wrap: dict[int, int] | None = None) -> list[str]:
    """Lines of a plain-text table: each column as wide as its widest cell (ids are never cut);
    the columns in ``wrap`` (index -> width) wrap at spaces onto continuation lines, never
    mid-word (a word longer than the width keeps its line)."""
    import textwrap

    wrap = wrap or {}
    cells = [[textwrap.wrap(c, wrap[i], break_long_words=False, break_on_hyphens=False) or [""]
              if i in wrap else [c] for i, c in enumerate(row)] for row in rows]
    widths = [max([len(h)] + [len(line) for row in cells for line in row[i]]) for i, h in enumerate(head)]

    def line(parts: list[str]) -> str:
        return "  ".join(p.rjust(w) if i in right else p.ljust(w)
                         for i, (p, w) in enumerate(zip(parts, widths))).rstrip()

    top = line(list(head))
    out = [top, "-" * (sum(widths) + 2 * (len(widths) - 1))]
    for row in cells:
        for k in range(max(len(c) for c in row)):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    return out


def _summary(report, cohort: str) -> None:
    rows = report.results
    failed = [r for r in rows if r.status == "failed"]
    ran = [r for r in rows if r.status != "skipped"]
    if ran:
        table = []
        for r in ran:
            stages = " ".join(f"{k} {v:.1f}" for k, v in r.timings_s.items() if k not in ("wall", "total"))
            total = r.timings_s.get("wall", r.timings_s.get("total", float("nan")))
            peak = f"{r.peak_memory_mb:,.0f}" if r.peak_memory_mb == r.peak_memory_mb and r.peak_memory_mb else "-"
            table.append((r.subject, r.status, f"{total:.1f}", stages, peak))
        for text in _table(table, ("subject", "status", "wall s", "stages (task seconds)", "peak MB"),
                           right=(2, 4), wrap={3: 44}):
            click.echo(text)
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


def _print_plan(plan, pipe, cohort: str) -> None:
    """``--dry-run``: what the batch would do per subject, and why."""
    click.echo(f"dry run: pipeline {pipe.name} ({' -> '.join(pipe.stages)}) on {cohort}; nothing is written")
    rows = [(p.subject, p.action, str(p.slabs) if p.slabs else "-", p.reason) for p in plan]
    if rows:
        for text in _table(rows, ("subject", "action", "slabs", "why"), right=(2,), wrap={3: 60}):
            click.echo(text)
    counts = {a: sum(p.action == a for p in plan) for a in ("run", "redo", "skip", "fail")}
    click.echo(f"{len(plan)} subject(s): {counts['run']} to run, {counts['redo']} to redo, {counts['skip']} to "
               f"skip (complete), {counts['fail']} would fail; {sum(p.slabs for p in plan)} slab task(s)")


def _config_text(pipe, fmt: str) -> str:
    """The effective pipeline as ``--config`` reads it back (every option, defaults filled in)."""
    import json

    doc: dict[str, Any] = {"pipeline": {"name": pipe.name, "stages": list(pipe.stages)}}
    for stage in pipe.stages:
        # TOML has no null: an option left at None is left out (its default is None too)
        opts = {k: v for k, v in pipe.options.get(stage, {}).items() if v is not None}
        if opts:
            doc[stage] = opts
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    import tomli_w

    return tomli_w.dumps(doc)


def _write_report(path: str, report) -> None:
    import dataclasses
    import json

    from .._atomic import atomic_write_text

    doc = {"pipeline": report.pipeline, "wall_s": report.wall_s, "n_workers": report.n_workers,
           "n_threads": report.n_threads, "stopped": report.stopped, "not_run": report.not_run,
           "results": [dataclasses.asdict(r) for r in report.results]}
    atomic_write_text(path, json.dumps(doc, indent=2, default=str))


def _check_report_path(path: str, *, force: bool) -> None:
    """Refuse a ``--run-report`` file that could not be written, or that exists (without
    ``--force``), before any work."""
    import os

    from ..io.outputs import check_outputs, check_writable_dir

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise click.BadParameter(f"{path} is a folder; give a file name", param_hint="--run-report")
    if not os.path.isdir(folder):
        raise click.BadParameter(f"{path}: its folder {folder} does not exist", param_hint="--run-report")
    check_writable_dir(folder, what="folder of the run report")
    check_outputs(folder, [os.path.basename(path)], force=force)


def _check_qc_dir(_ctx, _param, value):
    """``--report DIR`` is a folder of HTML pages; a ``.json`` name is the old run report."""
    import os

    if value is None:
        return None
    if str(value).lower().endswith(".json") or os.path.isfile(value):
        raise click.BadParameter(
            f"{value}: --report is now a folder for the HTML quality-control pages (index.html, sub-XX.html); "
            "the JSON run report (status, timings, errors per subject) is --run-report FILE.json")
    return value


def _check_qc_outputs(report_dir: str, cohort: str, ids: list[str], force: bool) -> None:
    """The HTML pages of ``--report DIR``, checked before any work (replaced only with --force)."""
    from ..io.cohort import Cohort
    from ..io.outputs import check_outputs, check_writable_dir
    from ..report.qc import INDEX_FILE, page_name

    check_writable_dir(report_dir, what="--report folder")
    sids = Cohort.open(cohort).select(ids or None)
    check_outputs(report_dir, [INDEX_FILE, *(page_name(s) for s in sids)], force=force)


def _write_qc(report_dir: str, cohort: str, report, force: bool) -> None:
    """``--report DIR``: the QC pages of the batch's complete subjects (done now or before)."""
    from ..report.qc import write_qc_report

    done = [r.subject for r in report.results if r.status in ("ok", "skipped")]
    if not done:
        click.echo(f"no QC pages: no subject of {report.pipeline} is complete", err=True)
        return
    qc = write_qc_report(cohort, report_dir, subjects=done, pipelines=[report.pipeline], force=force)
    warned = sum(1 for w in qc.warnings.values() if w)
    click.echo(f"QC report: {qc.index} ({len(qc.pages)} subject page(s), {warned} with warnings)")
    for sid, why in qc.failed.items():
        click.secho(f"error: QC page of {sid}: {why}", err=True, fg="red")


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
    import json
    import tomllib

    from ..errors import InputFileError, MRFEngineError
    from ..pipeline import Pipeline

    if config is not None:
        if stages is not None:
            raise click.UsageError("give --stages or --config, not both")
        is_json = config.lower().endswith(".json")
        kind = "JSON" if is_json else "TOML"
        try:
            with open(config, "rb") as fh:
                doc = json.loads(fh.read().decode("utf-8")) if is_json else tomllib.load(fh)
        except OSError as exc:
            raise InputFileError(f"{config}: cannot read the pipeline configuration ({exc.strerror or exc})") from exc
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{config}: not valid {kind} ({exc})") from exc
        except UnicodeDecodeError as exc:  # a binary file: TOML and JSON are UTF-8 text
            raise InputFileError(f"{config}: not a {kind} text file (not UTF-8: byte {exc.start} is "
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
@subjects_option("run every subject")
@click.option("--force", is_flag=True,
              help="Redo subjects whose maps are complete, and replace the --report pages and --run-report file "
                   "if they exist.")
@click.option("--dry-run", is_flag=True,
              help="Print which subjects would run, be redone or be skipped, and why, and exit: nothing is "
                   "written and no cluster starts.")
@click.option("--print-config", type=click.Choice(["toml", "json"]), is_flag=False, flag_value="toml", default=None,
              help="Print the effective pipeline (stages and every option, defaults filled in) as TOML (or "
                   "--print-config=json) that --config reads back, and exit.")
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
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              callback=_check_qc_dir,
              help="Also write the HTML quality-control pages of the maps (as 'mrfengine report': index.html and "
                   "one sub-XX.html per subject) into DIR after the run.")
@click.option("--run-report", "run_report_path", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.json",
              help="Also write the per-subject results (status, timings, errors, peak memory) as JSON.")
@nthreads_option("CPU threads of the kernels inside each task (C++ OpenMP, PyTorch); 0: all cores of the "
                 "worker's machine. Keep workers x threads-per-worker x N at most the cores.", default=1,
                 apply=False)
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
def batch(cohort, stages, config_path, name, subject_ids, force, dry_run, print_config, scheduler, n_workers,
          threads_per_worker, backend, slab_planes, report_dir, run_report_path, n_threads, job_system, jobs,
          job_cores, job_memory, walltime, queue, account, resource_spec,
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

    --dry-run prints what would be run, redone or skipped and why;
    --print-config prints the effective pipeline for --config; --report DIR
    writes the HTML quality-control pages of the maps after the run.

    Exit status: 0 every selected subject complete, 1 some failed (see the
    summary) or the store cannot be written, 2 usage error."""
    from ..errors import MRFEngineError
    from ..io.cohort import Cohort
    from ..pipeline.batch import SLAB_PLANES, batch_client, check_models, dashboard_link, run_batch

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
    if print_config:
        click.echo(_config_text(pipe, print_config), nl=False)
        return
    ids = subject_ids
    store = Cohort.open(cohort)  # a clear error before any cluster starts
    if dry_run:
        from ..pipeline.batch import plan_batch

        _print_plan(plan_batch(cohort, pipe, subjects=ids or None, force=force,
                               slab_planes=slab_planes or SLAB_PLANES), pipe, cohort)
        return
    if run_report_path:
        _check_report_path(run_report_path, force=force)
    if report_dir:
        _check_qc_outputs(report_dir, cohort, ids, force)
    # the network of a unet stage, checked against the subjects' acquisitions once, here
    check_models(store, store.select(ids or None, incomplete=True), pipe)
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
                                   slab_planes=slab_planes or SLAB_PLANES, on_event=display, n_threads=n_threads)
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
    if run_report_path:
        _write_report(run_report_path, report)
    if report_dir:
        _write_qc(report_dir, cohort, report, force)
    if not report.ok:
        failed = [r.subject for r in report.results if r.status == "failed"]
        why = [f"{len(failed)} subject(s) failed ({', '.join(failed)})"] if failed else []
        why += [f"{len(report.not_run)} not run"] if report.not_run else []
        why += ["stopped early"] if report.stopped else []
        click.secho(f"error: {cohort}: " + ", ".join(why) + "; see above", err=True, fg="red")
        click.get_current_context().exit(1)


commands = [batch]
