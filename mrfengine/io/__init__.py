"""Input and output: NIfTI, BIDS derivatives (layout, names, sidecars), the cohort store."""

from .bids import DerivativeFile, ensure_derivative_root, entity_prefix, output_entities, write_sidecar
from .cohort import Cohort, Subject, validate_cohort
from .exporter import export_array, export_subject
from .importer import import_subject
from .nifti import load_mask_like, load_nifti, nifti_suffix, save_nifti

__all__ = [
    "load_nifti",
    "load_mask_like",
    "save_nifti",
    "nifti_suffix",
    "DerivativeFile",
    "ensure_derivative_root",
    "entity_prefix",
    "output_entities",
    "write_sidecar",
    "Cohort",
    "Subject",
    "validate_cohort",
    "import_subject",
    "export_array",
    "export_subject",
]
