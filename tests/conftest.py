"""Test configuration shared by the whole suite.

Without a GPU, GPU code is tested anyway: Triton kernels through its
interpreter and Numba CUDA kernels through the CUDA simulator.  Both switches
must be set before the kernel modules are imported, hence at the top of this
file, and only when no CUDA device is found: on a GPU machine the kernels run
compiled.  Tests that need a real GPU carry ``@pytest.mark.gpu``; they are
skipped when none is found and fail when they would run the interpreter or
the simulator (a switch set by hand), so a green ``gpu`` test ran GPU code.
"""

from __future__ import annotations

import os

_SWITCHES = ("TRITON_INTERPRET", "NUMBA_ENABLE_CUDASIM")


def _cuda_device() -> bool:
    """A CUDA device torch can use (without importing any kernel module)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch, no driver: no device
        return False


if not _cuda_device():
    for _name in _SWITCHES:
        os.environ.setdefault(_name, "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the dictionary cache of the tests out of the user's home."""
    root = tmp_path_factory.mktemp("mrfengine-cache")
    old = os.environ.get("MRFENGINE_CACHE_DIR")
    os.environ["MRFENGINE_CACHE_DIR"] = str(root)
    yield root
    if old is None:
        os.environ.pop("MRFENGINE_CACHE_DIR", None)
    else:
        os.environ["MRFENGINE_CACHE_DIR"] = old


def _gpu_found() -> tuple[bool, str]:
    from mrfengine.backend import probe

    cupy = probe("cupy")
    if cupy.available:
        return True, cupy.detail
    try:
        import torch
    except ImportError:
        return False, cupy.detail
    if torch.cuda.is_available():
        return True, "torch CUDA"
    return False, f"{cupy.detail}; torch sees no CUDA device"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    found, detail = _gpu_found()
    if found:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU (none found: {detail})")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "gpu" in item.keywords:
        on = [name for name in _SWITCHES if os.environ.get(name, "0") not in ("", "0")]
        if on:
            pytest.fail(f"a gpu test would run the interpreter or simulator ({', '.join(on)} set); unset them")
