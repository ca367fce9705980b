"""Fixtures of the hostile suite; its helpers (:func:`run_cli`, :func:`snapshot`) are in ``_hostile.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def _pristine_cohort(tmp_path_factory):
    """A tiny simulated cohort (2 subjects), made once; tests get their own copy."""
    from mrfengine.phantom import cohort_preset, simulate_cohort

    path = tmp_path_factory.mktemp("hostile") / "pristine.zarr"
    simulate_cohort(path, config=cohort_preset("tiny", n_subjects=2), seed=3)
    return path


@pytest.fixture
def cohort(tmp_path, _pristine_cohort) -> Path:
    """A private copy of the tiny cohort, free to damage."""
    dst = tmp_path / "cohort.zarr"
    shutil.copytree(_pristine_cohort, dst)
    return dst
