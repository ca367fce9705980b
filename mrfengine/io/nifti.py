"""NIfTI in and out: checked loading, atomic saving, the input's affine kept."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputFileError

__all__ = ["load_nifti", "save_nifti", "nifti_suffix"]


def nifti_suffix(path: str | os.PathLike) -> str:
    """``.nii.gz`` or ``.nii`` (the full suffix), '' for anything else."""
    name = Path(path).name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    return ""


def load_nifti(
    path: str | os.PathLike,
    *,
    ndim: int | None = None,
    n_frames: int | None = None,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI image with its scaling applied, checking what was asked.

    Parameters
    ----------
    path : path
        ``.nii`` or ``.nii.gz``.
    ndim : int, optional
        Required number of dimensions (e.g. 4 for an MRF series); trailing
        singleton dimensions beyond it are dropped first.
    n_frames : int, optional
        Required length of the last axis (frames of a 4D series).
    dtype : float32 or float64
        Output dtype; integer data with ``scl_slope``/``scl_inter`` are scaled.

    Returns
    -------
    data : ndarray
    affine : ndarray, (4, 4)
        The image's best affine (sform, else qform).
    header : Nifti1Header

    Raises
    ------
    InputFileError
        Missing, unreadable, truncated or corrupt file, or the wrong shape;
        the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    if not nifti_suffix(path):
        raise InputFileError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64 if dtype == np.float64 else np.float32)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise InputFileError(f"{path}: cannot read NIfTI data (truncated or corrupt?): {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputFileError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    while ndim is not None and data.ndim > ndim and data.shape[-1] == 1:
        data = data[..., 0]
    if ndim is not None and data.ndim != ndim:
        raise InputFileError(f"{path}: expected a {ndim}D image; got shape {data.shape}")
    if n_frames is not None and data.shape[-1] != n_frames:
        raise InputFileError(
            f"{path}: expected {n_frames} frames along the last axis; got shape {data.shape}"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputFileError(f"{path}: the affine is singular or not finite:\n{affine}")
    return data, affine, img.header


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    *,
    header: nib.Nifti1Header | None = None,
    xyzt_units: tuple[str, str] = ("mm", "sec"),
    qform_code: int | None = None,
    sform_code: int | None = None,
    frame_interval: float | None = None,
) -> Path:
    """Write ``data`` as NIfTI-1 with ``affine`` (both qform and sform, code 1
    unless ``header`` carries others), atomically (temporary name, then rename).

    Parameters
    ----------
    data : ndarray
        Stored in its own dtype (bool is stored as uint8).
    affine : ndarray, (4, 4)
    path : path
        ``.nii`` or ``.nii.gz``.
    header : Nifti1Header, optional
        A header to copy geometry codes and voxel sizes from.
    xyzt_units : (str, str)
        Spatial and temporal units.
    qform_code, sform_code : int, optional
        Codes to write (0 keeps that form unset); override ``header``'s.
    frame_interval : float, optional
        The fourth voxel size (pixdim[4]) of a 4D image, in the time unit.
    """
    path = Path(path)
    suffix = nifti_suffix(path)
    if not suffix:
        raise InputFileError(f"{path}: output must end in .nii or .nii.gz")
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.header.set_data_dtype(arr.dtype)
    if hdr is not None:
        qcode = int(hdr["qform_code"]) or 1
        scode = int(hdr["sform_code"]) or 1
    else:
        qcode = scode = 1
    qcode = qcode if qform_code is None else int(qform_code)
    scode = scode if sform_code is None else int(sform_code)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    img.header.set_xyzt_units(*xyzt_units)
    if frame_interval is not None and arr.ndim == 4:
        img.header.set_zooms(img.header.get_zooms()[:3] + (float(frame_interval),))
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.tmp{os.getpid()}{suffix}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_mask_like(
    path: str | os.PathLike, shape: tuple[int, ...], affine: np.ndarray, *, reference: str | os.PathLike
) -> np.ndarray:
    """A 3D mask (nonzero = inside) that must lie on the grid of ``reference``.

    Raises
    ------
    InputFileError
        The mask is not 3D, or its shape or affine differ from ``shape`` and
        ``affine`` (those of ``reference``); the message names both files.
    """
    mask, m_aff, _ = load_nifti(path, ndim=3)
    if mask.shape != tuple(shape):
        raise InputFileError(f"{path}: mask shape {mask.shape} differs from the input's {tuple(shape)} ({reference})")
    if not np.allclose(m_aff, affine, atol=1e-3):
        raise InputFileError(f"{path}: mask affine differs from the input's ({reference})")
    return mask != 0
