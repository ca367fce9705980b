"""The trained network that ships with mrfengine, and how it is packaged.

The default model is the MSE-5 U-net of Hermann et al. (2021, Table 1)
trained on the synthetic cohort, stored as package data::

    mrfengine/models/mse5/model.pt          a state dict (weights only), float16
    mrfengine/models/mse5/model.card.json   its model card

The weights are data: :func:`mrfengine.nn.load_model` reads them with
``torch.load(weights_only=True)`` into mrfengine's own U-net built from the
card's configuration, so loading the shipped model runs no code from a file.

``mrfengine predict`` uses it when no ``--model`` is given.  The environment
variable ``MRFENGINE_MODEL`` (a ``NAME.pt`` with ``NAME.card.json`` beside it)
replaces it, e.g. for a network trained on one's own data.

:func:`package_model` turns a training run's ``model.pt`` (float32, as
``mrfengine train`` writes it) into the shipped files: the weights stored as
float16 to halve the size (31.2 MB -> 15.6 MB for MSE-5) as a data-only
state dict, the card's normalisation, sequence, metrics and training cohort
hash kept.  See
``mrfengine/models/README.md``.

References
----------
Hermann I, et al. Lesion probability mapping in MS patients using a regression
network on MR fingerprinting. BMC Med Imaging. 2021;21:107.
doi:10.1186/s12880-021-00636-x
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import InputFileError
from .artifact import resave_model
from .card import ModelCard

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_ENV",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_FILE",
    "NoDefaultModelError",
    "default_model_path",
    "package_model",
]

MODEL_ENV = "MRFENGINE_MODEL"
"""Environment variable naming a model (``NAME.pt``) that replaces the shipped one."""

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "mse5"
"""The package-data folder of the shipped model (``model.pt`` + ``model.card.json``)."""

DEFAULT_MODEL_FILE = "model.pt"


class NoDefaultModelError(InputFileError):
    """No model was given and none is shipped: the installation lacks ``models/mse5/model.pt``."""


def default_model_path() -> Path:
    """The model to use when none is given.

    ``$MRFENGINE_MODEL`` when it is set (and not empty), otherwise the shipped
    ``mrfengine/models/mse5/model.pt``.  The card beside it is checked when
    the model is loaded (:func:`mrfengine.nn.load_model`), not here.

    Returns
    -------
    Path
        An existing ``.pt`` (or ``.card.json``, when the variable names one).

    Raises
    ------
    InputFileError
        ``$MRFENGINE_MODEL`` names a file that does not exist (the message
        names it and the variable).
    NoDefaultModelError
        The variable is not set and this installation ships no model (the
        message names the folder and says how to pass one).
    """
    override = os.environ.get(MODEL_ENV, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise InputFileError(f"{path}: model named by the environment variable {MODEL_ENV} not found "
                                 f"(it must be a NAME.pt saved by mrfengine, with NAME.card.json beside it)")
        log.info("using the model %s from %s", path, MODEL_ENV)
        return path
    path = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise NoDefaultModelError(
            f"no default model is installed: {path} does not exist (this installation ships no trained "
            f"network in {DEFAULT_MODEL_DIR}); pass --model NAME.pt (a network saved by mrfengine, e.g. "
            f"'mrfengine train', with NAME.card.json beside it) or set {MODEL_ENV}=NAME.pt")
    return path


def package_model(
    src: str | os.PathLike,
    dst_dir: str | os.PathLike,
    *,
    weights_dtype: str = "float16",
    format: str = "state_dict",
    trust_model_code: bool = False,
) -> Path:
    """Write a trained network as a shippable model: ``dst_dir/model.pt`` and ``model.card.json``.

    Parameters
    ----------
    src : path
        A saved model, e.g. a training run's ``model.pt`` (its card beside
        it); its card and hash are checked.
    dst_dir : path
        The folder to write, e.g. :data:`DEFAULT_MODEL_DIR`; created if
        missing.  Files of the same names there are replaced atomically.
    weights_dtype : {"float16", "float32"}
        Storage of the weights (float16 halves the file; the network still
        computes in float32 after loading).
    format : {"state_dict", "torchscript"}
        The shipped file's format: a data-only state dict (the default; what
        ``mrfengine predict`` loads without running code from the file).
    trust_model_code : bool
        Accept a TorchScript ``src`` (it runs code stored in the file): only
        for a run of one's own.

    Returns
    -------
    Path
        ``dst_dir/model.pt``.

    Raises
    ------
    InputFileError, ValidationError
        As :func:`mrfengine.nn.artifact.resave_model`.
    """
    dst = Path(dst_dir) / DEFAULT_MODEL_FILE
    card: ModelCard = resave_model(src, dst, weights_dtype=weights_dtype, format=format,
                                   trust_model_code=trust_model_code)
    log.info("packaged %s (%s) into %s: %d bytes", src, card.name, dst, dst.stat().st_size)
    return dst
