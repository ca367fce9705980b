"""Benchmark configuration.

``MRFENGINE_BENCH_SIZE=full`` runs the sizes the issues set targets for
(whole brains, paper grids); the default ``small`` keeps every case to a
second or so, so CI can run the suite with ``--benchmark-disable`` as a smoke
test.  Figures are recorded in ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

import pytest


def bench_size() -> str:
    size = os.environ.get("MRFENGINE_BENCH_SIZE", "small")
    if size not in ("small", "full"):
        raise ValueError(f"MRFENGINE_BENCH_SIZE must be 'small' or 'full'; got {size!r}")
    return size


@pytest.fixture(scope="session")
def full() -> bool:
    return bench_size() == "full"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Benchmarks never read a warm dictionary cache by accident."""
    os.environ["MRFENGINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("bench-cache"))
