"""The paper's operating points and reference definitions, in one place.

Every figure mrfengine prints (``mrfengine evaluate``, the training
validation, the demo) reads its thresholds and its reference masks from
here, so that "lesion Dice" or "T1 deviation in WM" means one thing
wherever it appears.

Constants
---------
:data:`LESION_THRESHOLD` (0.33)
    Operating threshold of a *predicted* lesion probability map (Hermann et
    al. 2021: "a threshold of 33%").
:data:`TISSUE_THRESHOLD` (0.8)
    Threshold of the NAWM and GM probability maps, applied to the prediction
    and to the reference alike for the tissue Dice ("a commonly used
    threshold of 80%").
:data:`REFERENCE_LESION_THRESHOLD` (0.5)
    Turns a *true* lesion volume-fraction map (a simulated subject's
    ``truth/lesion``) into the reference annotation: a voxel is lesion when
    lesion fills at least half of it.  A binary annotation is the same at
    this threshold.  It is not the prediction's operating threshold: the
    reference must not move when the operating point does.
:data:`CORE_FRACTION` (0.9)
    T1 and T2* deviations "in WM, GM and lesions" are over tissue *cores*:
    voxels whose true fraction of that tissue is at least 0.9, so that
    partial-volume voxels at tissue borders do not enter a tissue's figure.

Options that set these are named ``lesion_threshold`` and
``tissue_threshold`` in Python and ``--lesion-threshold`` and
``--tissue-threshold`` on the command line.

References
----------
Hermann et al., "Accelerated white matter lesion analysis based on
simultaneous T1 and T2* quantification using magnetic resonance
fingerprinting and deep learning", BMC Med Imaging 21:107, 2021
(Statistics).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ValidationError
from ._validate import as_array, parse_threshold, threshold_in_dtype

__all__ = [
    "LESION_THRESHOLD",
    "TISSUE_THRESHOLD",
    "REFERENCE_LESION_THRESHOLD",
    "CORE_FRACTION",
    "CORE_SUFFIX",
    "reference_lesion_mask",
    "core_masks",
]

#: Operating threshold of a predicted lesion probability (the paper's 33%).
LESION_THRESHOLD = 0.33
#: NAWM/GM probability threshold of the tissue Dice, prediction and reference (the paper's 80%).
TISSUE_THRESHOLD = 0.8
#: A true lesion volume fraction at or above this is the reference lesion annotation.
REFERENCE_LESION_THRESHOLD = 0.5
#: Tissue cores: voxels whose true fraction of the tissue is at least this.
CORE_FRACTION = 0.9
#: Suffix of a tissue-core name (``WM_core``) in the per-tissue deviation keys.
CORE_SUFFIX = "_core"


def reference_lesion_mask(lesion: ArrayLike, name: str = "reference lesion") -> np.ndarray:
    """The reference lesion annotation of a lesion map.

    Parameters
    ----------
    lesion : array_like
        A binary annotation (bool, or 0/1 numbers) or a true lesion
        volume-fraction map with values in [0, 1].
    name : str
        Used in error messages.

    Returns
    -------
    ndarray, bool
        ``lesion`` itself when bool, else ``lesion >= REFERENCE_LESION_THRESHOLD``
        (the same as ``> 0`` for a 0/1 annotation).

    Raises
    ------
    ValidationError
        Non-numeric values, NaN/Inf, or values outside [0, 1].
    """
    a = as_array(lesion, name, min_ndim=0)
    if a.dtype == bool:
        return a
    if not np.isfinite(a).all():
        raise ValidationError(f"{name} holds NaN/Inf; a lesion annotation or fraction map must be finite")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValidationError(f"{name} must be a binary annotation or a lesion fraction in [0, 1]; got values "
                              f"from {a.min()!r} to {a.max()!r}")
    return a >= threshold_in_dtype(REFERENCE_LESION_THRESHOLD, a.dtype)


def core_masks(
    fractions: Mapping[str, ArrayLike],
    *,
    core_fraction: float = CORE_FRACTION,
) -> dict[str, np.ndarray]:
    """Tissue cores: voxels whose true tissue fraction is ``>= core_fraction``.

    Parameters
    ----------
    fractions : mapping of str to array_like
        True volume fractions in [0, 1] by tissue, e.g. ``{"WM": truth/WM,
        "GM": truth/GM, "lesion": truth/lesion}``.
    core_fraction : float
        In (0, 1]; the paper's tissue figures use :data:`CORE_FRACTION`.

    Returns
    -------
    dict of str to ndarray, bool
        ``{"<tissue>_core": mask}`` in the order of ``fractions``.

    Raises
    ------
    ValidationError
        A bad ``core_fraction``, or a fraction map that is not numeric.
    """
    t = parse_threshold(core_fraction, "core_fraction")
    if not 0.0 < t <= 1.0:
        raise ValidationError(f"core_fraction must be in (0, 1]; got {core_fraction!r}")
    out: dict[str, np.ndarray] = {}
    for tissue, fraction in fractions.items():
        f = as_array(fraction, f"fractions[{tissue!r}]", min_ndim=0)
        with np.errstate(invalid="ignore"):
            out[f"{tissue}{CORE_SUFFIX}"] = f >= threshold_in_dtype(t, f.dtype)
    return out
