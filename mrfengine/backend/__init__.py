"""Which compute backends exist here, probed once and never raising on import.

``HAS_CUPY`` is true only when a CUDA device is usable, not merely when the
``cupy`` import works (it imports fine on machines without a GPU).
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

log = logging.getLogger(__name__)

__all__ = ["BackendInfo", "probe", "backends", "is_simulated", "get_ext", "get_array_module", "cpu_threads"]


@dataclass(frozen=True)
class BackendInfo:
    """Whether a backend can run here, and why not when it cannot."""

    name: str
    available: bool
    detail: str


def cpu_threads() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=None)
def get_ext() -> ModuleType | None:
    """The compiled extension ``mrfengine._ext``, or None when it was not built."""
    try:
        return importlib.import_module("mrfengine._ext")
    except ImportError as exc:
        log.debug("mrfengine._ext unavailable: %s", exc)
        return None


def _probe_cpp() -> BackendInfo:
    ext = get_ext()
    if ext is None:
        return BackendInfo("cpp", False, "extension mrfengine._ext not built (reinstall with a C++17 compiler)")
    return BackendInfo("cpp", True, f"C++/OpenMP extension, {ext.max_threads()} threads")


def _probe_numba() -> BackendInfo:
    try:
        numba = importlib.import_module("numba")
    except ImportError:
        return BackendInfo("numba", False, "numba not installed (pip install mrfengine[numba])")
    return BackendInfo("numba", True, f"numba {numba.__version__}")


def _probe_cupy() -> BackendInfo:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return BackendInfo("cupy", False, "cupy not installed (pip install mrfengine[gpu])")
    try:
        if not cupy.cuda.is_available():
            return BackendInfo("cupy", False, f"cupy {cupy.__version__} installed but no CUDA device found")
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # driver/runtime errors vary by platform
        return BackendInfo("cupy", False, f"cupy {cupy.__version__} cannot reach a GPU: {exc}")
    return BackendInfo("cupy", True, f"cupy {cupy.__version__}, {n} CUDA device(s)")


def _probe_numba_cuda() -> BackendInfo:
    try:
        numba = importlib.import_module("numba")
        cuda = importlib.import_module("numba.cuda")
    except ImportError:
        return BackendInfo("numba-cuda", False, "numba not installed (pip install mrfengine[numba])")
    if numba.config.ENABLE_CUDASIM:
        return BackendInfo("numba-cuda", True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): for tests, very slow")
    try:
        ok = cuda.is_available()
    except Exception as exc:  # driver errors vary
        return BackendInfo("numba-cuda", False, f"numba cannot reach a GPU: {exc}")
    if not ok:
        return BackendInfo("numba-cuda", False, "no CUDA device/driver found by numba")
    return BackendInfo("numba-cuda", True, f"numba {numba.__version__} on {cuda.get_current_device().name}")


def is_simulated(name: str) -> bool:
    """True when backend ``name`` runs on a simulator (never chosen by ``auto``)."""
    return name == "numba-cuda" and probe(name).detail.startswith("CUDA simulator")


@lru_cache(maxsize=None)
def probe(name: str) -> BackendInfo:
    """Probe one backend by name: ``numpy``, ``cpp``, ``numba``, ``cupy`` or ``numba-cuda``."""
    if name == "numpy":
        import numpy

        return BackendInfo("numpy", True, f"numpy {numpy.__version__} (reference)")
    probes = {"cpp": _probe_cpp, "numba": _probe_numba, "cupy": _probe_cupy, "numba-cuda": _probe_numba_cuda}
    if name not in probes:
        from ..errors import ValidationError

        raise ValidationError(f"unknown backend {name!r}; known: numpy, {', '.join(probes)}")
    return probes[name]()


def backends() -> list[BackendInfo]:
    """All known backends with their availability."""
    return [probe(n) for n in ("numpy", "cpp", "numba", "cupy", "numba-cuda")]


def get_array_module(x: object) -> ModuleType:
    """``cupy`` for CuPy arrays, else ``numpy`` (SigPy's convention)."""
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        return importlib.import_module("cupy")
    return importlib.import_module("numpy")


HAS_EXT: bool = get_ext() is not None
