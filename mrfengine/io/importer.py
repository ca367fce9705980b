"""NIfTI files of one subject into a cohort store.

:func:`import_subject` reads a 4D MRF series (any orientation, int16 with
``scl_slope``/``scl_inter`` or float, ``.nii`` or ``.nii.gz``) with optional
brain mask, annotation masks and reference images, checks them against each
other and the site's sequence, and writes one subject of the cohort
(``docs/cohort-format.md``), creating the cohort when needed.

Voxel order: the MRF keeps its own voxel order (the slice axis must stay the
acquisition's, so slices keep their excitation slots); its affine says how
voxels lie in the world.  Masks and reference images on the same grid in
another voxel order (e.g. RAS masks for an LAS series) are reoriented to the
MRF's order; anything on a different grid is an error naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from .._validate import check_name
from ..errors import InputFileError, StoreError, ValidationError
from ..sequence import Sequence, hermann2021
from .cohort import (
    SiteEntry,
    SubjectEntry,
    SubjectWriter,
    consolidate,
    create_cohort,
    drop_consolidated,
    normalize_subject_id,
    open_cohort_for_writing,
    register_subjects,
    subject_complete,
)
from .nifti import load_nifti

__all__ = ["import_subject", "align_to_grid"]

log = logging.getLogger(__name__)

_AFFINE_TOL_MM = 1e-3


def align_to_grid(
    data: np.ndarray,
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    *,
    path: str | os.PathLike,
    ref_path: str | os.PathLike,
) -> np.ndarray:
    """Reorder the axes of a 3D image so it matches a reference grid.

    Flips and axis permutations are allowed (the same voxels in another
    order); resampling is not.

    Raises
    ------
    InputFileError
        The image lies on another grid (shape or affine); the message names
        both files.
    """
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.io_orientation(ref_affine))
    moved = ornt.apply_orientation(data, transform)
    moved_affine = affine @ ornt.inv_ornt_aff(transform, data.shape)
    if moved.shape != tuple(ref_shape):
        raise InputFileError(
            f"{path}: shape {data.shape} does not match the MRF's {tuple(ref_shape)} ({ref_path}), "
            "even after reorientation"
        )
    if not np.allclose(moved_affine, ref_affine, atol=_AFFINE_TOL_MM):
        raise InputFileError(
            f"{path}: affine differs from the MRF's ({ref_path}); resample it onto the MRF grid first.\n"
            f"this file:\n{np.round(moved_affine, 4)}\nMRF:\n{np.round(ref_affine, 4)}"
        )
    return np.ascontiguousarray(moved)


def _slice_axis_last(data: np.ndarray, affine: np.ndarray, slice_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Permute spatial axes so the slice axis is the third (NIfTI k)."""
    if slice_axis == 2:
        return data, affine
    perm = [a for a in range(3) if a != slice_axis] + [slice_axis]
    data = np.transpose(data, perm + list(range(3, data.ndim)))
    affine = affine[:, perm + [3]]
    return data, affine


def _site_sequence(site: str, sequence: Sequence | None, n_slices: int, mrf_path: Path) -> Sequence:
    if sequence is not None:
        return sequence
    if site in ("1", "2"):
        if site == "2" and n_slices % 3:
            raise InputFileError(f"{mrf_path}: {n_slices} slices, but site 2 (SMS factor 3) needs a multiple of "
                                 "3; pass the sequence")
        return hermann2021(int(site), n_slices=n_slices)
    raise ValidationError(f"site {site!r} is new to the cohort: pass its sequence (a preset or file)")


def import_subject(
    cohort_path: str | os.PathLike,
    subject_id: str,
    mrf_path: str | os.PathLike,
    *,
    site: str = "1",
    sequence: Sequence | None = None,
    split: str = "none",
    group: str = "unknown",
    brain_mask: str | os.PathLike | None = None,
    annotations: Mapping[str, str | os.PathLike] | None = None,
    references: Mapping[str, str | os.PathLike] | None = None,
    slice_axis: int = 2,
    overwrite: bool = False,
) -> str:
    """Import one subject's NIfTI files into a cohort.

    Parameters
    ----------
    cohort_path : path
        An existing cohort, or a new path (a cohort is created there).
    subject_id : str
        ``sub-01`` or ``01``.
    mrf_path : path
        4D MRF series (X, Y, Z, frames), frames in acquisition order.
    site : str
        The site's name; a site new to the cohort needs ``sequence`` unless it
        is ``"1"`` or ``"2"`` (the hermann2021 protocols with this slice count).
    sequence : Sequence, optional
        Must agree with the cohort's sequence of ``site`` if it has one.
    split : {"train", "validation", "test", "none"}
    group : {"patient", "healthy", "unknown"}
    brain_mask : path, optional
        3D mask, nonzero inside; stored as ``brain_mask``.
    annotations : mapping of name to path, optional
        3D masks, nonzero = 1; stored as ``annotations/<name>`` (uint8).
    references : mapping of name to path, optional
        3D images (e.g. ``T2w``); stored as ``reference/<name>`` (float32).
    slice_axis : int
        Axis of the MRF's slices (0, 1 or 2); moved to the third position.
    overwrite : bool
        Replace a complete subject of that id.

    Returns
    -------
    str
        The subject id written.

    Raises
    ------
    InputFileError
        A file is missing, unreadable, truncated, has the wrong dimensions or
        frame count, or lies on another grid; the message names the file.
    StoreError
        The cohort path is not a cohort, has another schema version, the site
        has another sequence, or the subject exists and ``overwrite`` is false.
    """
    from .. import __version__

    # Every argument and every input file is checked before the store is touched; an
    # existing subject is replaced only at the end, by swapping in a complete staged copy.
    sid = normalize_subject_id(subject_id)
    entry = SubjectEntry(site, split, group)
    if slice_axis not in (0, 1, 2):
        raise ValidationError(f"slice_axis must be 0, 1 or 2; got {slice_axis!r}")
    for option, named in (("annotation", annotations), ("reference", references)):
        for name in (named or {}):
            check_name(name, f"{option} name")
    cohort_path = Path(cohort_path)
    mrf_path = Path(mrf_path)
    root = None
    existing_seq = None
    if cohort_path.exists():
        root, attrs = open_cohort_for_writing(cohort_path, drop_consolidated_now=False)  # dropped once checked
        if site in attrs.get("sites", {}):
            existing_seq = Sequence.from_dict(attrs["sites"][site]["sequence"])
        if subject_complete(cohort_path, sid) and not overwrite:
            raise StoreError(f"{cohort_path}: subject {sid} already exists; pass overwrite to replace it")

    if sequence is not None and existing_seq is not None and sequence.digest() != existing_seq.digest():
        raise StoreError(f"{cohort_path}: site {site!r} already has sequence {existing_seq.name!r} with another "
                         "timing; one site, one sequence")
    data, affine, header = load_nifti(mrf_path, ndim=4, magnitude=True)
    data, affine = _slice_axis_last(data, affine, slice_axis)
    nx, ny, nz = data.shape[:3]
    seq = existing_seq if existing_seq is not None else _site_sequence(site, sequence, nz, mrf_path)
    if data.shape[-1] != seq.n_measurements:
        raise InputFileError(f"{mrf_path}: expected {seq.n_measurements} frames (the measurements of "
                             f"{seq.name}) along the last axis; got shape {data.shape}")
    if nz != seq.n_slices:
        raise InputFileError(f"{mrf_path}: {nz} slices along axis {slice_axis}, but the sequence of site {site} "
                             f"({seq.name}) has {seq.n_slices}")
    if not np.all(np.isfinite(data)):
        raise InputFileError(f"{mrf_path}: contains NaN or Inf values")

    aux: dict[str, np.ndarray] = {}
    spec = [("brain_mask", brain_mask, "mask")] if brain_mask is not None else []
    spec += [(f"annotations/{k}", v, "mask") for k, v in (annotations or {}).items()]
    spec += [(f"reference/{k}", v, "image") for k, v in (references or {}).items()]
    for dest, p, kind in spec:
        arr, aff, _ = load_nifti(p, ndim=3)
        aligned = align_to_grid(arr, aff, (nx, ny, nz), affine, path=p, ref_path=mrf_path)
        if kind == "mask":
            if not np.all(np.isfinite(aligned)):
                raise InputFileError(f"{p}: mask contains NaN or Inf values")
            aux[dest] = (aligned != 0).astype(np.uint8)
        else:
            if not np.all(np.isfinite(aligned)):
                raise InputFileError(f"{p}: contains NaN or Inf values")
            aux[dest] = aligned.astype(np.float32)

    site_entry = SiteEntry(seq, None)
    if root is not None:  # every input checked: the store is about to change
        drop_consolidated(cohort_path)
    # An existing subject folder (complete or not) is replaced by a staged copy at the end.
    staging = root is not None and (cohort_path / "subjects" / sid).exists()
    if root is None:
        root = create_cohort(cohort_path, sites={site: site_entry}, kind="imported")
    if not staging:
        register_subjects(root, subjects={sid: entry}, sites={site: site_entry})
    zooms = header.get_zooms()
    xyz_unit, t_unit = header.get_xyzt_units()
    writer = SubjectWriter(
        root, sid, shape_zyx=(nz, ny, nx), affine=affine, n_frames=seq.n_measurements,
        attrs={
            "site": site,
            "group": group,
            "source": "imported",
            "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"]),
            "xyzt_units": [xyz_unit or "unknown", t_unit or "unknown"],
            "frame_interval": float(zooms[3]) if len(zooms) > 3 else 0.0,
            "orientation": "".join(nib.aff2axcodes(affine)),
            "imported_from": {"mrf": mrf_path.name, **{d: Path(p).name for d, p, _ in spec}},
            "imported_by": f"mrfengine {__version__}",
            "input_dtype": str(header.get_data_dtype()),
        },
        overwrite=True,
        staging=staging,
    )
    try:
        mrf = writer.create("mrf", dtype="float32", frames=True, attrs={"units": "arbitrary",
                                                                         "description": "MRF magnitude images"})
        for z in range(nz):
            mrf[:, z] = np.ascontiguousarray(data[:, :, z, :].transpose(2, 1, 0), dtype=np.float32)
        for dest, arr in aux.items():
            writer.write(dest, arr.transpose(2, 1, 0), attrs=_aux_attrs(dest))
        if staging:
            # The root entry (site, split, group) changes only once the new copy is complete.
            register_subjects(root, subjects={sid: entry}, sites={site: site_entry})
        writer.finish()
    except BaseException:
        writer.abort()  # only the staging group; the old subject is untouched
        raise
    consolidate(cohort_path)
    log.info("imported %s from %s into %s", sid, mrf_path, cohort_path)
    return sid


def _aux_attrs(dest: str) -> dict[str, Any]:
    if dest == "brain_mask":
        return {"description": "brain mask (imported)"}
    if dest.startswith("annotations/"):
        return {"description": "annotation mask (imported, nonzero = 1)"}
    return {"description": "reference image (imported)", "units": "arbitrary"}

