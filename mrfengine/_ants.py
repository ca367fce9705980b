"""antspyx, imported once with ITK's thread count settled (registration and segmentation).

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when it first runs, and
ANTs' multi-threaded metrics sum in an order that varies from run to run, so
the same inputs give results that differ in the last digits.  mrfengine
therefore runs ANTs on one thread unless the variable is set before it first
runs: reruns of a batch give the same bytes, and a batch runs one subject per
core anyway.  Set ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` (e.g. to the number
of cores) before starting mrfengine for speed at the cost of that
reproducibility.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["ITK_THREADS_VARIABLE", "ants_seed", "import_ants", "itk_threads"]

ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def import_ants() -> Any:
    """``import ants`` with ITK's thread count defaulting to 1 (module docstring).

    Raises
    ------
    ImportError
        antspyx is not installed, with how to install it.
    """
    os.environ.setdefault(ITK_THREADS_VARIABLE, "1")
    try:
        import ants
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError("the register and segment stages need antspyx: pip install antspyx") from exc
    return ants


def itk_threads() -> int:
    """The ITK thread count ANTs runs with (what the provenance records)."""
    try:
        return int(os.environ.get(ITK_THREADS_VARIABLE, "1"))
    except ValueError:
        return 0


@contextlib.contextmanager
def ants_seed(ants: Any, seed: int) -> Iterator[None]:
    """ANTs' random seed while active (``ants.registration`` passes it as ``--random-seed``:
    the metric's sampling), restored after."""
    old = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = old
