"""The synthetic MS cohort: anatomy from the MNI152 template, tissue maps,
lesions and annotations, MRF-EPI signals, and their generation into a cohort
store.

Start with :func:`simulate_cohort`::

    from mrfengine.phantom import simulate_cohort
    cohort = simulate_cohort("tiny.zarr", preset="tiny", seed=0)
    subject = cohort[cohort.subjects[0]]
    subject.mrf[:, 6]          # (35, 64, 64) float32, slice 6
    subject.truth["T1"][6]     # ms
"""

from .config import (
    PRESETS,
    AnatomyConfig,
    AnnotationConfig,
    CohortConfig,
    DistortionConfig,
    GridConfig,
    LesionConfig,
    RandomisationConfig,
    SiteConfig,
    TissueConfig,
    cohort_preset,
)
from .randomise import SubjectDraw, draw_subject
from .generate import SubjectPlan, plan_cohort, simulate_cohort, simulate_subject, site_sequence

__all__ = [
    "simulate_cohort",
    "simulate_subject",
    "plan_cohort",
    "site_sequence",
    "SubjectPlan",
    "cohort_preset",
    "PRESETS",
    "CohortConfig",
    "GridConfig",
    "SiteConfig",
    "AnatomyConfig",
    "TissueConfig",
    "LesionConfig",
    "AnnotationConfig",
    "DistortionConfig",
    "RandomisationConfig",
    "SubjectDraw",
    "draw_subject",
]
