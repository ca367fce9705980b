"""A tiny simulated cohort, built once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory):
    from mrfengine.phantom import simulate_cohort

    path = tmp_path_factory.mktemp("phantom") / "tiny.zarr"
    return simulate_cohort(path, preset="tiny", seed=7)
