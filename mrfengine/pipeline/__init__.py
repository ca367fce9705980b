"""Study-scale processing: named stages over arrays, derived groups in the cohort store, per-subject runs.

:mod:`.stages` (``Stage``, ``Pipeline``), :mod:`.derived` (writing and checking
``subjects/<sub>/derived/<pipeline>/``), :mod:`.run` (``run_subject``) and
:mod:`.batch` (``run_batch`` over a cohort on Dask, ``batch_client``); one NIfTI series in,
maps out (:mod:`.nifti`: ``predict_nifti``, ``match_nifti``, ``denoise_nifti``, behind ``mrfengine predict``,
``match`` and ``denoise``).
"""

from .batch import BatchReport, batch_client, run_batch
from .derived import DERIVED_ARRAYS, derived_complete, remove_derived, write_derived
from .nifti import DenoiseResult, NiftiResult, denoise_nifti, match_nifti, predict_nifti
from .run import SubjectResult, run_subject
from .stages import STAGES, Pipeline, Stage, slice_dictionaries

__all__ = [
    "BatchReport",
    "batch_client",
    "run_batch",
    "DERIVED_ARRAYS",
    "DenoiseResult",
    "NiftiResult",
    "STAGES",
    "Pipeline",
    "Stage",
    "SubjectResult",
    "denoise_nifti",
    "derived_complete",
    "match_nifti",
    "predict_nifti",
    "remove_derived",
    "run_subject",
    "slice_dictionaries",
    "write_derived",
]
