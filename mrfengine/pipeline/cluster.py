"""The Dask client a batch runs on: a local cluster sized to the machine (one
worker per GPU where there are GPUs, through dask-cuda if installed; else one
per core), a running ``dask.distributed`` scheduler, or workers submitted as
batch jobs to SLURM, PBS or SGE through dask-jobqueue (:class:`JobSpec`,
the ``hpc`` extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

from ..errors import BackendUnavailableError, OptionError, SchedulerError

__all__ = ["JOB_SYSTEMS", "JobSpec", "batch_client", "dashboard_link", "job_resources", "job_script", "job_warnings",
           "jobqueue_class"]

log = logging.getLogger(__name__)


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) if cupy.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver: no GPU
        return 0


@contextlib.contextmanager
def batch_client(scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, dashboard: bool = True, job_queue: JobSpec | None = None, jobs: int = 1,
                 worker_timeout: float | None = None) -> Iterator[Any]:
    """A :class:`distributed.Client` for :func:`run_batch`, closed on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (``tcp://host:8786``);
        its workers must see the cohort's path and have mrfengine installed.
        Default: a local cluster on this machine.
    n_workers : int, optional
        Local workers.  Default: one per GPU when GPUs are present (with
        dask-cuda's ``LocalCUDACluster`` if installed), else one per core.
    threads_per_worker : int
        Tasks each worker runs at once (local workers, and each worker
        process of a batch job).
    processes : bool
        Local workers as processes (default) or threads of this process.
    dashboard : bool
        Serve the Dask dashboard (needs ``bokeh``) on a free port.
    job_queue : JobSpec, optional
        Submit the workers as batch jobs of SLURM, PBS or SGE instead
        (dask-jobqueue; the scheduler runs in this process).  Each job runs
        ``cores / threads_per_worker`` worker processes, so a job runs one
        task per core, as the local cluster does.  The jobs are cancelled
        when the client closes, also on an exception or Ctrl-C.
    jobs : int
        Batch jobs to submit (with ``job_queue``).
    worker_timeout : float, optional
        Seconds to wait for the first worker to join before
        :class:`SchedulerError`: default 60 for a running scheduler, 600 for
        batch jobs (which may wait in the queue).

    Raises
    ------
    SchedulerError
        The scheduler cannot be reached, has no worker, a job cannot be
        submitted or none started a worker within ``worker_timeout``.
    BackendUnavailableError
        ``job_queue`` without dask-jobqueue installed (the ``hpc`` extra).
    OptionError
        ``job_queue`` with ``scheduler`` or ``n_workers``, or job resources
        that do not fit (see :class:`JobSpec`).
    """
    from distributed import Client, LocalCluster

    from ..backend import cpu_threads

    if job_queue is not None:
        if scheduler is not None:
            raise OptionError("give a scheduler address or a job queue (--cluster), not both")
        if n_workers is not None:
            raise OptionError("the workers of a job queue are set per job (cores / threads per worker), "
                              "not by n_workers (--workers)")
        with _jobqueue_client(job_queue, jobs=jobs, threads_per_worker=threads_per_worker, dashboard=dashboard,
                              worker_timeout=JOB_WORKER_TIMEOUT_S if worker_timeout is None else worker_timeout
                              ) as client:
            yield client
        return
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, timed out, malformed address
            raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler!r} ({exc})") from exc
        try:
            client.wait_for_workers(1, timeout=60 if worker_timeout is None else worker_timeout)
        except Exception as exc:  # noqa: BLE001 - dask raises TimeoutError/OSError
            client.close()
            raise SchedulerError(f"the scheduler at {scheduler} has no workers ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return
    # The scheduler serves HTTP whether or not the dashboard pages are on (they need
    # bokeh): always on a free port, never the default 8787 another cluster may hold.
    dash = ":0"
    no_pages = {} if dashboard else {"scheduler_kwargs": {"dashboard": False}}
    gpus = _gpu_count()
    cluster = None
    if gpus and n_workers is None:
        try:
            from dask_cuda import LocalCUDACluster

            cluster = LocalCUDACluster(dashboard_address=dash, threads_per_worker=threads_per_worker,
                                       silence_logs=logging.ERROR, **no_pages)
        except ImportError:
            log.warning("%d GPU(s) but dask-cuda is not installed: one local worker uses GPU 0 "
                        "(pip install dask-cuda for one worker per GPU)", gpus)
            n_workers = 1
    if cluster is None:
        n = n_workers or max(1, cpu_threads() // max(1, threads_per_worker))
        memory = _total_memory()
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=processes,
                               dashboard_address=dash, silence_logs=logging.ERROR,
                               memory_limit=int(memory / n) if memory else "auto", **no_pages)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of ``client``'s cluster, or None when none is served."""
    try:
        import bokeh  # noqa: F401 - the dashboard's pages need it
    except ImportError:
        return None
    try:
        info = client.scheduler_info()
        services = info.get("services", {})
        if "dashboard" not in services:
            return None
        return client.dashboard_link
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- batch jobs (dask-jobqueue)
#: The job queues ``--cluster`` knows: name -> (dask-jobqueue class, the system's name, its queue listing command).
JOB_SYSTEMS = {"slurm": ("SLURMCluster", "SLURM", "squeue"), "pbs": ("PBSCluster", "PBS", "qstat"),
               "sge": ("SGECluster", "SGE", "qstat")}
#: Cores of one batch job when neither the options nor the dask config (``jobqueue.<system>.cores``) say.
DEFAULT_JOB_CORES = 8
#: Memory per core of a job when not given: a worker process running one slab task peaks at ~2 GB
#: (benchmarks/README.md, "peak RSS per worker"); twice that leaves room for the dictionary and spikes.
DEFAULT_GB_PER_CORE = 4
#: Seconds the batch waits for the first job to start a worker (jobs may wait in the queue).
JOB_WORKER_TIMEOUT_S = 600.0
#: What the job script would connect to; the scheduler's address is only known once it starts.
_PLACEHOLDER_ADDRESS = "tcp://<insert-scheduler-address-here>:8786"
#: dask-jobqueue's walltime when nobody configured one (its jobqueue.yaml).
_SHIPPED_WALLTIME = "00:30:00"
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """The batch jobs that run a batch's Dask workers (``mrfengine batch --cluster``).

    Every field left at None takes the dask-jobqueue configuration's value
    (``~/.config/dask/jobqueue.yaml``, section ``jobqueue.<system>``) where it
    has one, else the site's default (walltime, queue) or mrfengine's
    (:data:`DEFAULT_JOB_CORES` cores, :data:`DEFAULT_GB_PER_CORE` GB per core).

    Attributes
    ----------
    system : {'slurm', 'pbs', 'sge'}
    cores : int, optional
        Cores per job.  A job runs ``cores / threads_per_worker`` worker
        processes: one task per core.
    memory : str, optional
        Memory per job, e.g. ``"32GB"``; each worker process may use its share.
    walltime : str, optional
        ``HH:MM:SS`` (SLURM also ``D-HH:MM:SS``).  A job that reaches it
        stops its workers; their tasks move to the other jobs.
    queue : str, optional
        Queue (SLURM: partition).
    account : str, optional
        Account charged (SLURM, PBS ``-A``; SGE: the project, ``-P``).
    resource_spec : str, optional
        PBS and SGE ``-l`` resources (PBS default:
        ``select=1:ncpus=<cores>:mem=<memory>``; SGE has none: memory is a
        site resource such as ``h_vmem=4G``).
    extra_directives : tuple of str
        More scheduler directives, each a line of the header (``--gres=gpu:1``,
        ``-pe smp 8``, ``-l place=scatter``), after the configured ones.
    prologue : tuple of str
        Shell lines run before the worker (``module load ...``,
        ``source /shared/venv/bin/activate``), after the configured ones.
    local_directory : str, optional
        The workers' scratch folder, node-local storage ideally
        (``$TMPDIR``: expanded when the job runs).
    interface : str, optional
        Network interface of the scheduler and workers (``ib0``) when the
        default one does not reach the compute nodes.
    """

    system: str
    cores: int | None = None
    memory: str | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    resource_spec: str | None = None
    extra_directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    local_directory: str | None = None
    interface: str | None = None

    def __post_init__(self) -> None:
        if self.system not in JOB_SYSTEMS:
            raise OptionError(f"unknown job queue {self.system!r}; known: {', '.join(JOB_SYSTEMS)}")
        if self.cores is not None and self.cores < 1:
            raise OptionError(f"cores per job must be at least 1, not {self.cores}")
        if self.walltime is not None:
            if not _WALLTIME.match(self.walltime):
                raise OptionError(f"walltime {self.walltime!r} is not HH:MM:SS (or minutes, MM:SS; SLURM also "
                                  f"D-HH:MM:SS)")
            if "-" in self.walltime and self.system != "slurm":
                raise OptionError(f"walltime {self.walltime!r}: days as D-HH:MM:SS are SLURM's; "
                                  f"{JOB_SYSTEMS[self.system][1]} takes HH:MM:SS")
        if self.resource_spec is not None and self.system == "slurm":
            raise OptionError("a resource specification (-l) is for PBS and SGE; on SLURM give directives as "
                              "job-extra lines (--job-extra '--gres=gpu:1')")
        object.__setattr__(self, "extra_directives", tuple(self.extra_directives))
        object.__setattr__(self, "prologue", tuple(self.prologue))


def jobqueue_class(system: str) -> type:
    """dask-jobqueue's cluster class of ``system`` (``slurm``, ``pbs``, ``sge``).

    Raises
    ------
    BackendUnavailableError
        dask-jobqueue is not installed (``pip install 'mrfengine[hpc]'``).
    """
    name, label, _ = JOB_SYSTEMS[system]
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise BackendUnavailableError(f"running the workers as {label} jobs needs dask-jobqueue, which is not "
                                      f"installed: pip install 'mrfengine[hpc]' ({exc})") from exc
    return getattr(dask_jobqueue, name)


def job_resources(spec: JobSpec, threads_per_worker: int = 1) -> dict[str, Any]:
    """The keyword arguments of dask-jobqueue's cluster (and job) class for ``spec``.

    ``cores`` and ``memory`` are always set (options, else the dask config,
    else mrfengine's defaults), and ``processes = cores / threads_per_worker``;
    the other fields only when given, so the dask config's values apply.

    Raises
    ------
    OptionError
        ``threads_per_worker`` does not divide the cores, or the memory is
        not a size.
    BackendUnavailableError
        dask-jobqueue is not installed.
    """
    import dask
    from dask.utils import format_bytes, parse_bytes

    jobqueue_class(spec.system)  # its import loads the jobqueue.* config defaults
    conf = f"jobqueue.{spec.system}"
    cores = int(spec.cores or dask.config.get(f"{conf}.cores", None) or DEFAULT_JOB_CORES)
    if threads_per_worker < 1 or cores % threads_per_worker:
        raise OptionError(f"{threads_per_worker} thread(s) per worker do not divide the {cores} cores of a job: "
                          f"each job runs cores / threads-per-worker worker processes")
    processes = cores // threads_per_worker
    memory = spec.memory or dask.config.get(f"{conf}.memory", None) or f"{DEFAULT_GB_PER_CORE * cores}GB"
    try:
        nbytes = parse_bytes(str(memory))
    except (ValueError, TypeError) as exc:
        raise OptionError(f"job memory {memory!r} is not a size such as '32GB' or '64GiB'") from exc
    if nbytes < 1e6:
        raise OptionError(f"job memory {memory!r} is {format_bytes(nbytes)}: give a unit, e.g. '32GB'")
    kw: dict[str, Any] = {"cores": cores, "memory": str(memory), "processes": processes}
    if dask.config.get(f"{conf}.name", None) in (None, "dask-worker"):
        kw["job_name"] = "mrfengine-worker"
    for key in ("walltime", "queue", "resource_spec", "local_directory", "interface"):
        if getattr(spec, key) is not None:
            kw[key] = getattr(spec, key)
    if spec.account is not None:
        kw["project" if spec.system == "sge" else "account"] = spec.account
    if spec.extra_directives:
        kw["job_extra_directives"] = [*(dask.config.get(f"{conf}.job-extra-directives", None) or []),
                                      *spec.extra_directives]
    if spec.prologue:
        kw["job_script_prologue"] = [*(dask.config.get(f"{conf}.job-script-prologue", None) or []),
                                     *spec.prologue]
    return kw


def job_warnings(spec: JobSpec, resources: dict[str, Any]) -> list[str]:
    """What may go wrong with these jobs (``resources``: :func:`job_resources`):
    too little memory per worker process; on SGE, no parallel environment for
    several cores and no memory request (both are site-specific resources)."""
    import dask
    from dask.utils import format_bytes, parse_bytes

    conf = f"jobqueue.{spec.system}"
    cores, processes, memory = resources["cores"], resources["processes"], resources["memory"]
    nbytes = parse_bytes(memory)
    out = []
    walltime = resources.get("walltime") or dask.config.get(f"{conf}.walltime", None)
    if spec.walltime is None and walltime == _SHIPPED_WALLTIME:
        out.append(f"the jobs end after {walltime} (dask-jobqueue's default walltime) and are not replaced: give "
                   f"--walltime long enough for the batch (a rerun resumes where it stopped)")
    if nbytes / processes < 2e9:
        out.append(f"each of a job's {processes} worker process(es) gets {format_bytes(nbytes / processes)} of the "
                   f"job's {memory}: a slab task peaks at ~2 GB; give more memory per job (--job-memory) or fewer, "
                   f"threaded workers (--threads-per-worker)")
    if spec.system == "sge":
        directives = [*(dask.config.get(f"{conf}.job-extra-directives", None) or []), *spec.extra_directives]
        if cores > 1 and not any(d.strip().startswith("-pe") for d in directives):
            out.append(f"SGE: a job gets one slot unless it asks for a parallel environment for its {cores} cores: "
                       f"add --job-extra '-pe smp {cores}' (the environment's name is the site's)")
        if "resource_spec" not in resources and not dask.config.get(f"{conf}.resource-spec", None):
            out.append(f"SGE: the jobs request no memory (the workers are limited to {memory}): give the site's "
                       f"resource, e.g. --resource-spec 'h_vmem={max(1, math.ceil(nbytes / cores / 2**30))}G' "
                       f"(often per slot)")
    return out


def job_script(spec: JobSpec, *, threads_per_worker: int = 1) -> str:
    """The script each batch job runs, as dask-jobqueue would submit it
    (``cluster.job_script()``), with a placeholder for the scheduler's
    address; nothing is started or submitted."""
    cls = jobqueue_class(spec.system)
    kw = job_resources(spec, threads_per_worker)
    for message in job_warnings(spec, kw):
        log.warning("%s", message)
    try:
        return cls.job_cls(_PLACEHOLDER_ADDRESS, name="dummy-name", **kw).job_script()
    except (TypeError, ValueError) as exc:  # a configuration the job class refuses
        raise OptionError(f"{JOB_SYSTEMS[spec.system][1]} job: {exc}") from exc


@contextlib.contextmanager
def _jobqueue_client(spec: JobSpec, *, jobs: int, threads_per_worker: int, dashboard: bool,
                     worker_timeout: float) -> Iterator[Any]:
    import dask
    from distributed import Client

    cls = jobqueue_class(spec.system)
    _, label, lister = JOB_SYSTEMS[spec.system]
    if jobs < 1:
        raise OptionError(f"at least one job, not {jobs}")
    kw = job_resources(spec, threads_per_worker)
    for message in job_warnings(spec, kw):
        log.warning("%s", message)
    submit = cls.job_cls.submit_command.split()[0]
    if shutil.which(submit) is None:
        raise SchedulerError(f"{label}'s submit command {submit!r} is not on PATH: run mrfengine batch --cluster "
                             f"{spec.system} on a login node of the {label} cluster (--print-job-script shows the "
                             f"job script without submitting it)")
    # The scheduler runs here; its dashboard on a free port (the site's configured options win).
    options = {"dashboard_address": ":0", "dashboard": dashboard}
    options.update(dask.config.get(f"jobqueue.{spec.system}.scheduler-options", None) or {})
    # Jobs end (their walltime) and are not replaced: once none is left, the tasks waiting for a
    # worker fail after worker_timeout (their subjects are reported failed; a rerun resumes)
    # instead of the batch waiting for ever.  A configured timeout wins.
    no_workers = dask.config.get("distributed.scheduler.no-workers-timeout", None) or f"{worker_timeout}s"
    with dask.config.set({"distributed.scheduler.no-workers-timeout": no_workers}):
        cluster = cls(scheduler_options=options, **kw)
    client = None
    try:
        async def submit_jobs() -> None:
            # On the cluster's loop: scale() only schedules the submission, and awaiting the same
            # pass here (before that callback runs, it reuses this one) makes a refused job (a
            # wrong queue or account) fail now, with the submit command's message, instead of
            # being logged while the batch waits for workers.
            cluster.scale(jobs=jobs)
            correct_state = getattr(cluster, "_correct_state", None)  # distributed's SpecCluster
            if correct_state is not None:
                await correct_state()

        # tornado logs the same failure of the scheduled callback as a traceback: the error below says it.
        tornado_log = logging.getLogger("tornado.application")
        level = tornado_log.level
        tornado_log.setLevel(logging.CRITICAL)
        try:
            cluster.sync(submit_jobs)
        except Exception as exc:  # noqa: BLE001 - dask-jobqueue raises RuntimeError with the command's output
            said = re.search(r"stderr:\s*(\S.*)", str(exc), re.DOTALL)  # dask-jobqueue quotes the command's output
            detail = " ".join((said.group(1) if said else str(exc)).split())
            raise SchedulerError(f"{label} refused the worker job: {submit}: {detail}") from exc
        finally:
            tornado_log.setLevel(level)
        client = Client(cluster)
        try:
            client.wait_for_workers(1, timeout=worker_timeout)
        except Exception as exc:  # noqa: BLE001 - dask raises TimeoutError/OSError
            ids = ", ".join(str(getattr(j, "job_id", "?")) for j in cluster.workers.values())
            raise SchedulerError(
                f"none of the {jobs} {label} job(s) ({ids}) started a worker within {worker_timeout:g} s: "
                f"see {lister}; the queue may be busy (--worker-timeout), or the workers cannot reach the "
                f"scheduler at {cluster.scheduler_address} (--interface; the jobs' output files say)") from exc
        yield client
    finally:
        # Cancels every job (also on an exception or Ctrl-C in the batch): no worker outlives the batch.
        if client is not None:
            client.close()
        try:
            cluster.close()
        except AssertionError:
            # distributed's last check that every job object it made is closed: dask-jobqueue's
            # jobs never say so (Job.close cancels without setting the status), which trips it
            # when one is still referenced; the jobs were cancelled before the check.
            log.debug("closing the %s cluster", label, exc_info=True)
