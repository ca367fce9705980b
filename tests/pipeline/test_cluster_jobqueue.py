"""``mrfengine batch --cluster slurm|pbs|sge``: the workers as batch jobs through dask-jobqueue.

No batch system here: the job scripts are checked as text (and against dask-jobqueue's own
cluster object), the command line is checked to submit nothing with --print-job-script, and
one test runs a real job through stand-ins for ``sbatch``/``scancel`` that start the script
in the background and kill it.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner


from mrfengine.cli import batch as batch_cli
from mrfengine.cli import cli
from mrfengine.errors import BackendUnavailableError, OptionError, SchedulerError
from mrfengine.pipeline import cluster as cluster_mod
from mrfengine.pipeline.cluster import JobSpec, batch_client, job_resources, job_script

pytest.importorskip("dask_jobqueue")  # the hpc extra (in dev)

RESOURCES = dict(cores=16, memory="64GiB", walltime="12:00:00", queue="compute", account="neuro",
                 prologue=("module load python/3.11",), local_directory="$TMPDIR")
#: What each queue's header must say for RESOURCES (SGE: cores and memory are site resources, given as such).
HEADERS = {
    "slurm": (dict(extra_directives=("--constraint=avx2",)),
              ["#SBATCH --cpus-per-task=16", "#SBATCH --mem=64G", "#SBATCH -t 12:00:00", "#SBATCH -p compute",
               "#SBATCH -A neuro", "#SBATCH --constraint=avx2", "#SBATCH -J mrfengine-worker"]),
    "pbs": (dict(extra_directives=("-l place=scatter",)),
            ["#PBS -l select=1:ncpus=16:mem=64GB", "#PBS -l walltime=12:00:00", "#PBS -q compute", "#PBS -A neuro",
             "#PBS -l place=scatter", "#PBS -N mrfengine-worker"]),
    "sge": (dict(extra_directives=("-pe smp 16",), resource_spec="h_vmem=4G"),
            ["#$ -pe smp 16", "#$ -l h_vmem=4G", "#$ -l h_rt=12:00:00", "#$ -q compute", "#$ -P neuro",
             "#$ -N mrfengine-worker"]),
}


def _worker_line(script: str) -> str:
    lines = [ln for ln in script.splitlines() if ln.strip()]
    assert "-m distributed.cli.dask_worker" in lines[-1], script
    return lines[-1]


@pytest.mark.parametrize("system", sorted(HEADERS))
def test_the_job_script_of_each_queue_holds_the_requested_resources(system, caplog):
    extra, expected = HEADERS[system]
    script = job_script(JobSpec(system, **RESOURCES, **extra), threads_per_worker=2)
    lines = script.splitlines()
    for line in expected:
        assert line in lines, f"{line!r} not in\n{script}"
    worker = _worker_line(script)
    # One task per core, as the local cluster: 16 cores / 2 threads = 8 worker processes of 2 threads,
    # each with its share of the job's memory.
    args = worker.split()
    assert args[0] == sys.executable
    assert args[args.index("--nworkers") + 1] == "8" and args[args.index("--nthreads") + 1] == "2"
    assert args[args.index("--memory-limit") + 1] == "8.00GiB"
    assert args[args.index("--local-directory") + 1] == "$TMPDIR"  # expanded on the node, when the job runs
    assert lines.index("module load python/3.11") < lines.index(worker)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # nothing missing: no warning


def test_defaults_one_worker_per_core_and_the_dask_config_wins():
    import dask

    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        kw = job_resources(JobSpec("slurm"))
    assert (kw["cores"], kw["memory"], kw["processes"]) == (8, "32GB", 8)
    assert "walltime" not in kw and "queue" not in kw  # left to the configuration
    config = {"jobqueue.pbs.cores": 12, "jobqueue.pbs.memory": "48GB", "jobqueue.pbs.walltime": "08:00:00"}
    with dask.config.set(config):
        kw = job_resources(JobSpec("pbs"), threads_per_worker=3)
        script = job_script(JobSpec("pbs"), threads_per_worker=3)
    assert (kw["cores"], kw["memory"], kw["processes"]) == (12, "48GB", 4)
    assert "#PBS -l walltime=08:00:00" in script
    assert kw == job_resources(JobSpec("pbs", cores=12, memory="48GB"), threads_per_worker=3)  # options equal config


def test_the_printed_script_is_the_one_dask_jobqueue_submits():
    """Built without starting anything, it equals the script of a real SLURMCluster, scheduler address aside."""
    from dask_jobqueue import SLURMCluster

    spec = JobSpec("slurm", cores=4, memory="16GiB", walltime="01:00:00", queue="short",
                   extra_directives=("--exclusive",), prologue=("source /shared/venv/bin/activate",))
    printed = job_script(spec, threads_per_worker=2)
    with SLURMCluster(scheduler_options={"dashboard_address": ":0", "dashboard": False},
                      **job_resources(spec, threads_per_worker=2)) as cluster:
        real = cluster.job_script()
        address = cluster.scheduler_address
    assert real == printed.replace("tcp://<insert-scheduler-address-here>:8786", address)


@pytest.mark.parametrize("spec, message", [
    (dict(system="lsf"), "unknown job queue"),
    (dict(system="slurm", walltime="two hours"), "not HH:MM:SS"),
    (dict(system="pbs", walltime="1-00:00:00"), "SLURM's"),
    (dict(system="slurm", resource_spec="mem=4G"), "for PBS and SGE"),
])
def test_malformed_job_specs_are_refused(spec, message):
    with pytest.raises(OptionError, match=message):
        JobSpec(**spec)


@pytest.mark.parametrize("kw, threads, message", [
    (dict(cores=8), 3, "do not divide the 8 cores"),
    (dict(memory="plenty"), 1, "not a size"),
    (dict(memory="64"), 1, "give a unit"),
])
def test_resources_that_do_not_fit_are_refused(kw, threads, message):
    with pytest.raises(OptionError, match=message):
        job_resources(JobSpec("slurm", **kw), threads_per_worker=threads)


def test_risky_jobs_are_named_in_warnings():
    warn = cluster_mod.job_warnings
    spec = JobSpec("sge", cores=8, memory="8GB")
    text = " ".join(warn(spec, job_resources(spec)))
    assert "-pe smp 8" in text and "--resource-spec" in text  # SGE's site-specific slots and memory
    assert "8 worker process(es) gets 0.93 GiB" in text and "~2 GB" in text  # below a slab task's peak
    assert "default walltime" in text
    good = JobSpec("sge", cores=8, memory="32GB", walltime="04:00:00", extra_directives=("-pe smp 8",),
                   resource_spec="h_vmem=4G")
    assert warn(good, job_resources(good)) == []


# --------------------------------------------------------------------------- the command line
@pytest.fixture(autouse=True)
def _root_logging_restored():
    """The command reconfigures the root logger onto CliRunner's stderr, which closes after the call."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def no_submission(monkeypatch):
    """Fail the test if anything would start a job-queue cluster or run a queue command."""
    from dask_jobqueue import core

    def refuse(*args, **kwargs):
        raise AssertionError("a job was submitted or a job-queue cluster started")

    monkeypatch.setattr(core.Job, "_call", staticmethod(refuse))
    monkeypatch.setattr(core.Job, "_submit_job", refuse)
    monkeypatch.setattr(core.JobQueueCluster, "__init__", refuse)
    monkeypatch.setattr(cluster_mod, "_jobqueue_client", refuse)


def _run(*args: str):
    return CliRunner().invoke(cli, ["batch", *args], catch_exceptions=False)


@pytest.mark.parametrize("system, header", [("slurm", "#SBATCH --cpus-per-task=4"),
                                            ("pbs", "#PBS -l select=1:ncpus=4:mem=16GB"),
                                            ("sge", "#$ -l h_vmem=4G")])
def test_print_job_script_prints_and_submits_nothing(system, header, no_submission, tmp_path):
    shared = tmp_path / "not-read.zarr"  # the cohort is not read: it need not exist
    extra = ["--resource-spec", "h_vmem=4G", "--job-extra", "-pe smp 4"] if system == "sge" else []
    r = _run(str(shared), "--cluster", system, "--jobs", "3", "--job-cores", "4", "--job-memory", "16GiB",
             "--walltime", "02:00:00", "--queue", "q1", "--account", "acct", *extra, "--print-job-script")
    assert r.exit_code == 0, r.output
    assert header in r.stdout and "--nworkers 4 --nanny" in r.stdout and "q1" in r.stdout and "acct" in r.stdout
    assert r.stdout.startswith("#!") and r.stdout.rstrip().endswith(_worker_line(r.stdout))
    assert "warning: " in r.stderr and "under /tmp" in r.stderr  # pytest's tmp_path is node-local
    assert not shared.exists()


@pytest.mark.parametrize("args, message", [
    (["--cluster", "slurm", "--scheduler", "tcp://host:8786"], "not both"),
    (["--jobs", "4"], "--jobs: only with --cluster"),
    (["--job-memory", "32GB", "--queue", "q"], "--job-memory, --queue: only with --cluster"),
    (["--print-job-script"], "--print-job-script: only with --cluster"),
    (["--worker-timeout", "30"], "--worker-timeout is for --cluster or --scheduler"),
    (["--cluster", "pbs", "--workers", "4"], "--workers is for the local cluster"),
    (["--cluster", "slurm", "--job-cores", "6", "--threads-per-worker", "4"], "do not divide"),
    (["--cluster", "slurm", "--job-memory", "a lot"], "not a size"),
    (["--cluster", "sge", "--walltime", "2-00:00:00"], "SLURM's"),
    (["--cluster", "condor"], "'condor' is not one of"),
    (["--cluster", "slurm", "--jobs", "0"], "0 is not in the range"),
])
def test_option_conflicts_exit_2(args, message, no_submission, tmp_path):
    r = _run(str(tmp_path / "c.zarr"), *args, "--print-job-script" if "--cluster" in args else "--no-progress")
    assert r.exit_code == 2, r.output
    assert message in r.stderr


def test_without_dask_jobqueue_the_error_names_the_extra_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import dask_jobqueue -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'mrfengine\[hpc\]'"), \
            batch_client(job_queue=JobSpec("slurm")):
        pytest.fail("a client without dask-jobqueue")
    r = _run(str(tmp_path / "missing.zarr"), "--cluster", "slurm", "--jobs", "2")
    assert r.exit_code == 1
    assert "mrfengine[hpc]" in r.stderr and "dask-jobqueue" in r.stderr
    assert "missing.zarr" not in r.stderr  # refused before the cohort is even opened


def test_the_command_line_passes_the_jobs_to_the_client(monkeypatch, tmp_path):
    from mrfengine.io.cohort import SiteEntry, create_cohort
    from mrfengine.pipeline import batch as batch_mod
    from mrfengine.sequence import hermann2021

    cohort = tmp_path / "c.zarr"
    create_cohort(cohort, sites={"1": SiteEntry(hermann2021(1, n_slices=4))})
    seen = {}

    def fake_client(scheduler=None, **kw):
        seen.update(kw, scheduler=scheduler)
        raise SchedulerError("no SLURM here")

    monkeypatch.setattr(batch_mod, "batch_client", fake_client)
    r = _run(str(cohort), "--cluster", "slurm", "--jobs", "5", "--job-cores", "4", "--job-memory", "16GB",
             "--walltime", "3:00:00", "--job-extra", "--gres=gpu:1", "--job-extra", "--exclusive",
             "--threads-per-worker", "2", "--worker-timeout", "900", "--no-progress")
    assert r.exit_code == 1 and "no SLURM here" in r.stderr
    assert seen["job_queue"] == JobSpec("slurm", cores=4, memory="16GB", walltime="3:00:00",
                                        extra_directives=("--gres=gpu:1", "--exclusive"))
    assert (seen["jobs"], seen["threads_per_worker"], seen["worker_timeout"], seen["scheduler"]) == (5, 2, 900, None)


def test_the_cli_lists_the_queues_the_engine_knows():
    assert tuple(batch_cli.JOB_SYSTEMS) == tuple(cluster_mod.JOB_SYSTEMS)


# --------------------------------------------------------------------------- a job, run for real
_SBATCH = """#!/usr/bin/env bash
# sbatch's stand-in: keeps the script (sbatch copies it), runs it in its own session, prints the job id.
echo "sbatch $*" >> "$FAKE_QUEUE_LOG"
script=$(mktemp) && cp "$1" "$script"
setsid bash "$script" > "$FAKE_QUEUE_LOG.$$.out" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
_SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >> "$FAKE_QUEUE_LOG"
kill -TERM -- "-$1" 2>/dev/null
exit 0
"""


def _fake_slurm(tmp_path: Path, monkeypatch, sbatch: str = _SBATCH) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", sbatch), ("scancel", _SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    log = tmp_path / "queue.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUEUE_LOG", str(log))
    return log


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_submitted_job_runs_a_worker_and_is_cancelled_at_the_end(tmp_path, monkeypatch):
    log = _fake_slurm(tmp_path, monkeypatch)
    spec = JobSpec("slurm", cores=2, memory="8GiB", walltime="00:10:00")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of the batch
        with batch_client(job_queue=spec, jobs=1, dashboard=False, worker_timeout=120) as client:
            pids = client.run(os.getpid)  # the job's worker processes: one per core
            assert len(client.scheduler_info()["workers"]) >= 1
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            raise KeyboardInterrupt
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["sbatch", "scancel"], calls
    assert all(_gone(pid) for pid in pids.values()), "a worker outlived the cancelled job"


def test_a_refused_job_or_one_that_never_starts_is_a_scheduler_error(tmp_path, monkeypatch):
    log = _fake_slurm(tmp_path, monkeypatch, sbatch="#!/usr/bin/env bash\necho 'sbatch: error: invalid partition' >&2\n"
                                                   "exit 1\n")
    refused = "SLURM refused the worker job: sbatch: sbatch: error: invalid partition"
    with pytest.raises(SchedulerError, match=refused), \
            batch_client(job_queue=JobSpec("slurm", cores=1, memory="4GB"), jobs=1, dashboard=False):
        pytest.fail("a client without a job")
    # Accepted but never started (a busy queue): a clear error after the timeout, and the job is cancelled.
    (tmp_path / "bin" / "sbatch").write_text('#!/usr/bin/env bash\necho "sbatch $*" >> "$FAKE_QUEUE_LOG"\n'
                                             'echo "Submitted batch job 4242"\n')
    with pytest.raises(SchedulerError, match=r"none of the 1 SLURM job\(s\) \(4242\) started a worker within 1 s"), \
            batch_client(job_queue=JobSpec("slurm", cores=1, memory="4GB"), jobs=1, dashboard=False, worker_timeout=1):
        pytest.fail("a client without a worker")
    assert log.read_text().splitlines()[-1] == "scancel 4242"


def test_no_submit_command_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no qsub anywhere
    with pytest.raises(SchedulerError, match=r"'qsub' is not on PATH.*--print-job-script"), \
            batch_client(job_queue=JobSpec("pbs", cores=1, memory="4GB")):
        pytest.fail("a client without qsub")
