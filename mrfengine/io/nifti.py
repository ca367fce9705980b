"""NIfTI in and out: checked loading, atomic saving, the input's affine kept."""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from .._atomic import atomic_path
from ..errors import InputFileError, ValidationError

__all__ = ["load_nifti", "save_nifti", "nifti_suffix", "check_nifti_header", "max_nifti_bytes"]

MAX_NIFTI_BYTES_ENV = "MRFENGINE_MAX_NIFTI_BYTES"
"""Environment variable that overrides :data:`DEFAULT_MAX_NIFTI_BYTES` (a byte count, e.g. ``32e9``)."""

DEFAULT_MAX_NIFTI_BYTES = 8 * 2**30
"""The most memory one NIfTI image may claim (in its file dtype, and again as the
float32/float64 array it is read into): 8 GiB, many times an MRF series of a whole
brain (256 x 256 x 60 x 35 float32 is 0.5 GiB)."""

GZIP_MAX_RATIO = 1100
"""The most a ``.nii.gz`` may claim to expand, uncompressed bytes over file bytes.
DEFLATE cannot compress more than 1032:1 (a run of one byte value), so a header
that claims more than this is lying or the file is truncated; it is refused
before anything is read.  Real images stay far below: measured with gzip, an
MRF series with noise (float32) 1.2:1, a brain mask 170:1 (uint8) and 370:1
(float32), a volume of zeros 1026:1."""

GZIP_VERIFY_BYTES = 64 * 2**20
"""A ``.nii.gz`` that claims more than this is first decompressed as a stream
(16 MiB at a time, nothing kept) to check that it holds what its header claims,
before the array is allocated: a forged header within gzip's ratio can then not
make the reader allocate memory for data that are not there.  Costs about 0.6x
the read time, on large files only (measured: a 110 MB float32 series read in
1.1 s, 1.85 s with the check)."""

MAX_NIFTI_DIMS = 5
"""Images may have at most this many dimensions, the fifth a singleton."""

_MAGNITUDE_TOLERANCE = 1e-6
"""Negative values of a magnitude series within this fraction of its largest
value (rounding of a scaled integer file) are set to 0; beyond it the file is refused."""


def max_nifti_bytes() -> int:
    """The memory limit of one NIfTI image: ``$MRFENGINE_MAX_NIFTI_BYTES`` or :data:`DEFAULT_MAX_NIFTI_BYTES`.

    Raises
    ------
    ValidationError
        The environment variable is not a positive number of bytes.
    """
    raw = os.environ.get(MAX_NIFTI_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_NIFTI_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < 2**63):
        raise ValidationError(f"{MAX_NIFTI_BYTES_ENV}={raw!r}: expected a positive number of bytes (e.g. 32e9)")
    return int(value)


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**28 else f"{n:,} bytes"


def check_nifti_header(path: str | os.PathLike, header, *, out_itemsize: int = 4) -> tuple[int, ...]:
    """Refuse a header whose claims cannot be true of its file, or are too large to read.

    Called by :func:`load_nifti` after the header is read and before any voxel
    data are: nothing is allocated for a claim that is refused.

    Checks, each naming the file and the numbers:

    * dimensions: at most :data:`MAX_NIFTI_DIMS` (the fifth a singleton), every
      one at least 1;
    * the voxel type: real numbers only; complex (``complex64``/``complex128``)
      and RGB/structured types are refused (reading them as real would keep a
      part of the data silently);
    * ``.nii``: the file holds ``vox_offset + voxels x bytes per voxel`` bytes;
    * ``.nii.gz``: the claimed bytes are at most :data:`GZIP_MAX_RATIO` times
      the file's (beyond DEFLATE's limit: a lie or a truncated file), and a
      claim over :data:`GZIP_VERIFY_BYTES` is checked against the stream's
      length, read without keeping it;
    * both: the claimed bytes, and the float array they are read into
      (``out_itemsize`` bytes a voxel), are within :func:`max_nifti_bytes`.

    Returns
    -------
    tuple of int
        The data shape.

    Raises
    ------
    InputFileError
    """
    path = Path(path)
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset())
    except Exception as exc:  # noqa: BLE001 - any malformed field
        raise InputFileError(f"{path}: malformed NIfTI header: {exc}") from exc
    if not shape or len(shape) > MAX_NIFTI_DIMS or (len(shape) == MAX_NIFTI_DIMS and shape[-1] != 1):
        raise InputFileError(
            f"{path}: header claims {len(shape)} dimensions {shape}; at most 4 (and a singleton fifth) are read"
        )
    if min(shape) < 1:
        raise InputFileError(f"{path}: header claims an empty dimension in shape {shape}")
    if dtype.kind == "c":
        raise InputFileError(
            f"{path}: complex data ({dtype}); pass magnitude images (e.g. numpy.abs of the complex series)"
        )
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise InputFileError(f"{path}: voxel type {dtype} (RGB or structured) is not a real-valued image")
    n_voxels = math.prod(shape)
    claimed = n_voxels * dtype.itemsize
    limit = max_nifti_bytes()
    in_memory = n_voxels * max(int(out_itemsize), dtype.itemsize)
    if max(claimed, in_memory) > limit:
        raise InputFileError(
            f"{path}: header claims shape {shape} ({dtype}), {_gib(in_memory)} in memory, over the limit of "
            f"{_gib(limit)}; raise {MAX_NIFTI_BYTES_ENV} if the image is real"
        )
    size = path.stat().st_size
    if nifti_suffix(path) == ".nii":
        need = offset + claimed
        if size < need:
            raise InputFileError(f"{path}: truncated: header claims {need:,} bytes, file has {size:,}")
    else:
        need = max(offset, 348) + claimed
        if need > GZIP_MAX_RATIO * size:
            raise InputFileError(
                f"{path}: header claims {need:,} bytes uncompressed, more than gzip can hold in a "
                f"{size:,}-byte file (at most {GZIP_MAX_RATIO}:1); truncated or corrupt"
            )
        if need > GZIP_VERIFY_BYTES:
            held = _gzip_length(path, need)
            if held < need:
                raise InputFileError(f"{path}: truncated: header claims {need:,} bytes, the gzip stream holds {held:,}")
    return shape


def _gzip_length(path: Path, need: int) -> int:
    """Bytes the gzip file decompresses to, counted up to ``need`` in bounded memory."""
    import gzip

    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < need:
                chunk = fh.read(min(16 * 2**20, need - total))
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError(f"{path}: cannot read NIfTI data (truncated or corrupt?): {exc}") from exc
    return total


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
    magnitude: bool = False,
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI image with its scaling applied, checking what was asked.

    The header is checked before any voxel data are read
    (:func:`check_nifti_header`): a claimed size the file cannot hold, or one
    over :func:`max_nifti_bytes`, complex or RGB voxels, and more than 4
    dimensions are refused.  Every NIfTI read of mrfengine (``import``,
    ``match``, ``predict``, masks and references) goes through here.

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
    magnitude : bool
        The image is a magnitude series (MRF input): negative values are
        refused (NaN/Inf are left to the caller).  Values above
        ``-1e-6 x`` the largest magnitude (rounding of scaled integers) are
        set to 0.

    Returns
    -------
    data : ndarray
    affine : ndarray, (4, 4)
        The image's best affine (sform, else qform).
    header : Nifti1Header

    Raises
    ------
    InputFileError
        Missing, unreadable, truncated or corrupt file, a header that claims
        more than the file holds or more than the memory limit, complex or RGB
        voxels, negative magnitudes, or the wrong shape; the message names the
        file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    if not nifti_suffix(path):
        raise InputFileError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    out_dtype = np.float64 if dtype == np.float64 else np.float32
    try:
        img = nib.load(str(path))  # the header only
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as exc:
        raise InputFileError(f"{path}: cannot read the NIfTI header (truncated or corrupt?): {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputFileError(f"{path}: not a NIfTI-1/2 image ({type(img).__name__})")
    shape = check_nifti_header(path, img.header, out_itemsize=np.dtype(out_dtype).itemsize)
    try:
        data = np.asarray(img.dataobj, dtype=out_dtype)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as exc:
        raise InputFileError(f"{path}: cannot read NIfTI data (truncated or corrupt?): {exc}") from exc
    if data.shape != shape:
        raise InputFileError(f"{path}: read shape {data.shape}, but the header claims {shape}")
    if magnitude:
        data = _check_magnitude(path, data)
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


def _check_magnitude(path: Path, data: np.ndarray) -> np.ndarray:
    """Refuse negative values of a magnitude series; clear rounding-sized ones."""
    with np.errstate(invalid="ignore"):
        negative = data < 0
        if not negative.any():
            return data
        finite = np.isfinite(data)
        peak = float(np.max(np.abs(data), where=finite, initial=0.0))
        tol = _MAGNITUDE_TOLERANCE * peak
        bad = negative & (data < -tol)
    if bad.any():
        voxels = int(bad.reshape(-1, data.shape[-1]).any(axis=1).sum()) if data.ndim > 1 else int(bad.sum())
        raise InputFileError(
            f"{path}: {voxels} voxel(s) have negative values (min {float(data[bad].min()):.6g}); MRF input must "
            "be magnitude images (e.g. numpy.abs of the complex series)"
        )
    data[negative] = 0.0
    return data


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
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
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
