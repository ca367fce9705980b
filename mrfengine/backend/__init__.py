"""Which compute backends exist here, probed once and never raising on import,
and :func:`resolve`, the one place a kernel family (``match``, ``mppca``)
turns a requested backend name into the implementation that runs.

``probe("cupy")`` is available only when a CUDA device is usable, not merely
when the ``cupy`` import works (it imports fine on machines without a GPU).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

log = logging.getLogger(__name__)

__all__ = ["BackendInfo", "probe", "backends", "resolve", "is_simulated", "get_ext", "get_array_module",
           "cpu_threads"]


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


_EXT_REFUSED: list[str] = []  # why a built mrfengine._ext failed to import (get_ext)


@lru_cache(maxsize=None)
def get_ext() -> ModuleType | None:
    """The compiled extension ``mrfengine._ext``, or None when it cannot run here.

    None when it was not built, and when it was built but refuses to load:
    ``MRFENGINE_ISA`` names kernels this build lacks or this CPU cannot run
    (the extension never falls back from a forced level), or the build is
    broken.  A refusal is logged as a warning and is the detail of
    ``probe("cpp")``.
    """
    try:
        return importlib.import_module("mrfengine._ext")
    except ModuleNotFoundError as exc:
        log.debug("mrfengine._ext unavailable: %s", exc)
        return None
    except ImportError as exc:
        _EXT_REFUSED.append(str(exc))
        log.warning("the C++ backend is unavailable: mrfengine._ext refused to load: %s", exc)
        return None


def _probe_cpp() -> BackendInfo:
    ext = get_ext()
    if ext is None:
        if _EXT_REFUSED:
            return BackendInfo("cpp", False, f"extension mrfengine._ext refused to load: {_EXT_REFUSED[-1]}")
        return BackendInfo("cpp", False, "extension mrfengine._ext not built (reinstall with a C++17 compiler)")
    if not hasattr(ext, "isa"):  # an extension built before run-time ISA dispatch
        return BackendInfo("cpp", True, f"C++/OpenMP extension, {ext.max_threads()} threads")
    runs = ", ".join(name for name, supported, _ in ext.isa_levels() if supported)
    return BackendInfo("cpp", True, f"C++/OpenMP extension, {ext.isa()} kernels (this CPU runs: {runs}; "
                                    f"MRFENGINE_ISA forces one), {ext.max_threads()} threads")


def _import(module: str, backend: str, extra: str) -> ModuleType | BackendInfo:
    """``module``, or why ``backend`` cannot run without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return BackendInfo(backend, False, f"{module.split('.')[0]} not installed (pip install mrfengine[{extra}])")


def _probe_numba() -> BackendInfo:
    numba = _import("numba", "numba", "numba")
    if isinstance(numba, BackendInfo):
        return numba
    return BackendInfo("numba", True, f"numba {numba.__version__}")


def _probe_cupy() -> BackendInfo:
    cupy = _import("cupy", "cupy", "gpu")
    if isinstance(cupy, BackendInfo):
        return cupy
    try:
        if not cupy.cuda.is_available():
            return BackendInfo("cupy", False, f"cupy {cupy.__version__} installed but no CUDA device found")
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # driver/runtime errors vary by platform
        return BackendInfo("cupy", False, f"cupy {cupy.__version__} cannot reach a GPU: {exc}")
    return BackendInfo("cupy", True, f"cupy {cupy.__version__}, {n} CUDA device(s)")


def _probe_numba_cuda() -> BackendInfo:
    cuda = _import("numba.cuda", "numba-cuda", "numba")
    if isinstance(cuda, BackendInfo):
        return cuda
    numba = importlib.import_module("numba")
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


_PROBES = {"cpp": _probe_cpp, "numba": _probe_numba, "cupy": _probe_cupy, "numba-cuda": _probe_numba_cuda}
KNOWN = ("numpy", *_PROBES)
"""The backends :func:`probe` knows, in :func:`backends`' order."""


@lru_cache(maxsize=None)
def probe(name: str) -> BackendInfo:
    """Probe one backend by name: ``numpy``, ``cpp``, ``numba``, ``cupy`` or ``numba-cuda``."""
    if name == "numpy":
        import numpy

        return BackendInfo("numpy", True, f"numpy {numpy.__version__} (reference)")
    if name not in _PROBES:
        from ..errors import ValidationError

        raise ValidationError(f"unknown backend {name!r}; known: {', '.join(KNOWN)}")
    return _PROBES[name]()


def backends() -> list[BackendInfo]:
    """All known backends with their availability."""
    return [probe(n) for n in KNOWN]


def resolve(
    requested: str,
    *,
    kernel: str,
    implemented: Sequence[str],
    auto: Sequence[str],
    refused: Mapping[str, str] | None = None,
) -> str:
    """The backend that runs one call of a kernel family.

    Parameters
    ----------
    requested : str
        ``"auto"`` or a backend name, as the user gave it.
    kernel : str
        The kernel family (``"match"``, ``"mppca"``): named in messages and
        in the log line of ``auto``'s choice.
    implemented : sequence of str
        The backends the family implements: names :func:`probe` knows, or
        pure-Python implementations of the family's own (mppca's
        ``"reference"``), which can always run.
    auto : sequence of str
        What ``"auto"`` tries, in order; it takes the first that is
        available, not simulated (:func:`is_simulated`) and not refused.
    refused : mapping of str to str, optional
        Implemented backends that cannot take this call, each with the
        reason (e.g. ``"matches real data only"`` for complex signals).

    Returns
    -------
    str
        The chosen backend's name (logged at INFO when ``requested`` is
        ``"auto"``).

    Raises
    ------
    ValidationError
        ``requested`` is neither ``"auto"`` nor one of ``implemented``.
    BackendUnavailableError
        ``requested`` is implemented but cannot run here (not installed, no
        GPU, ...) or is refused for this call; or nothing in ``auto`` can.
    """
    from ..errors import BackendUnavailableError, ValidationError

    refused = refused or {}

    def why_not(name: str) -> str | None:
        if name in refused:
            return f"cannot run this call: {refused[name]}"
        if name not in KNOWN:
            return None  # the family's own pure-Python implementation
        info = probe(name)
        return None if info.available else f"is not available here: {info.detail}"

    if requested == "auto":
        for name in auto:
            if why_not(name) is None and not (name in KNOWN and is_simulated(name)):
                log.info("%s: backend 'auto' chose %r", kernel, name)
                return name
        raise BackendUnavailableError(f"{kernel}: no backend can run this call (tried {', '.join(auto)})")
    if requested not in implemented:
        raise ValidationError(
            f"{kernel}: backend must be 'auto' or one of {', '.join(implemented)}; got {requested!r}"
        )
    reason = why_not(requested)
    if reason is not None:
        raise BackendUnavailableError(f"{kernel}: backend {requested!r} {reason}")
    return requested


def get_array_module(x: object) -> ModuleType:
    """``cupy`` for CuPy arrays, else ``numpy`` (SigPy's convention)."""
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        return importlib.import_module("cupy")
    return importlib.import_module("numpy")


HAS_EXT: bool = get_ext() is not None
