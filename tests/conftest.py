"""Test configuration shared by the whole suite.

GPU code is tested here without a GPU: Triton kernels through its interpreter
and Numba CUDA kernels through the CUDA simulator; both switches must be set
before the kernel modules are imported, hence at the top of this file.
Tests that need a real GPU carry ``@pytest.mark.gpu`` and are skipped when
none is found.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

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
