"""Input and output: NIfTI, BIDS-style derivative names and sidecars."""

from .bids import MAP_SPECS, derivative_name, entity_prefix, write_sidecar
from .nifti import load_nifti, nifti_suffix, save_nifti

__all__ = [
    "load_nifti",
    "save_nifti",
    "nifti_suffix",
    "MAP_SPECS",
    "derivative_name",
    "entity_prefix",
    "write_sidecar",
]
