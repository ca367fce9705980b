"""Input and output: NIfTI, BIDS-style derivative names and sidecars, the cohort store."""

from .bids import MAP_SPECS, derivative_name, entity_prefix, write_sidecar
from .cohort import Cohort, Subject, validate_cohort
from .exporter import export_array, export_subject
from .importer import import_subject
from .nifti import load_mask_like, load_nifti, nifti_suffix, save_nifti

__all__ = [
    "load_nifti",
    "load_mask_like",
    "save_nifti",
    "nifti_suffix",
    "MAP_SPECS",
    "derivative_name",
    "entity_prefix",
    "write_sidecar",
    "Cohort",
    "Subject",
    "validate_cohort",
    "import_subject",
    "export_array",
    "export_subject",
]
