"""Fixtures for the I/O tests: NIfTI files built with nibabel, a small cohort."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


def write_nifti(path, data, affine, *, int16=False, qcode=1, scode=1, units=("mm", "sec"), zooms4=None):
    """A NIfTI-1 file with the header fields a test wants.  ``int16`` stores
    the (float) data as int16 with nibabel's own scl_slope / scl_inter."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    img.header.set_xyzt_units(*units)
    if zooms4 is not None:
        img.header.set_zooms(img.header.get_zooms()[:3] + (zooms4,))
    if int16:
        img.set_data_dtype(np.int16)
    nib.save(img, str(path))
    return path


@pytest.fixture
def ras_series(tmp_path):
    """A float32 MRF series (X, Y, Z, 35) = (10, 8, 12, 35), RAS, 1 x 1.5 x 3 mm."""
    rng = np.random.default_rng(0)
    data = rng.random((10, 8, 12, 35)).astype(np.float32)
    affine = np.diag([1.0, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-5.0, -6.0, 10.0)
    return data, affine


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    from mrfengine.phantom import cohort_preset, simulate_cohort

    path = tmp_path_factory.mktemp("io") / "small.zarr"
    return simulate_cohort(path, config=cohort_preset("tiny", n_subjects=2), seed=1)


@pytest.fixture
def nifti():
    """:func:`write_nifti`, for tests to build their input files."""
    return write_nifti
