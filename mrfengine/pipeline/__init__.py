"""Study-scale processing: named stages over arrays, derived groups in the cohort store, per-subject runs.

:mod:`.stages` (``Stage``, ``Pipeline``), :mod:`.derived` (writing and checking
``subjects/<sub>/derived/<pipeline>/``), :mod:`.run` (``run_subject``) and
:mod:`.batch` (``run_batch`` over a cohort on Dask, ``batch_client``).
"""

from .batch import BatchReport, batch_client, run_batch
from .derived import DERIVED_ARRAYS, derived_complete, remove_derived, write_derived
from .run import SubjectResult, run_subject
from .stages import STAGES, Pipeline, Stage, slice_dictionaries

__all__ = [
    "BatchReport",
    "batch_client",
    "run_batch",
    "DERIVED_ARRAYS",
    "STAGES",
    "Pipeline",
    "Stage",
    "SubjectResult",
    "derived_complete",
    "remove_derived",
    "run_subject",
    "slice_dictionaries",
    "write_derived",
]
