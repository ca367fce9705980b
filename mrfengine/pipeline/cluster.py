"""The Dask client a batch runs on: a local cluster sized to the machine (one
worker per GPU where there are GPUs, through dask-cuda if installed; else one
per core), or a running ``dask.distributed`` scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..errors import SchedulerError

__all__ = ["batch_client", "dashboard_link"]

log = logging.getLogger(__name__)


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) if cupy.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver: no GPU
        return 0


@contextlib.contextmanager
def batch_client(scheduler: str | None = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, dashboard: bool = True) -> Iterator[Any]:
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
        Tasks each local worker runs at once.
    processes : bool
        Local workers as processes (default) or threads of this process.
    dashboard : bool
        Serve the Dask dashboard (needs ``bokeh``) on a free port.
    """
    from distributed import Client, LocalCluster

    from ..backend import cpu_threads

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, timed out, malformed address
            raise SchedulerError(f"cannot reach the Dask scheduler at {scheduler!r} ({exc})") from exc
        try:
            client.wait_for_workers(1, timeout=60)
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
