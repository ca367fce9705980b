"""The network's maps of one series: what ``mrfengine predict`` and the batch's ``unet`` stage share.

Both run a trained U-net over a whole volume and differ only in where the
volume comes from and where the maps go (a NIfTI file and files beside it,
:func:`mrfengine.pipeline.predict_nifti`; a subject of a cohort store and its
derived group, :mod:`mrfengine.pipeline.stages`).  Everything between is
here, once:

* which model (:func:`resolve_model_path`: a path, or the default model),
  which device (:func:`torch_device`) and how many CPU threads
  (:func:`torch_threads`); the model loaded as weights only, TorchScript only
  when trusted (:func:`open_network`);
* the sequence the data are checked against (:func:`network_sequence`) and
  the card's checks (:func:`mrfengine.nn.check_card`);
* the run (:func:`network_maps`): the options checked (``mc_samples`` and
  ``mc_seed`` by :mod:`mrfengine.nn.uncertainty`, ``consistency`` by
  :func:`check_consistency`), the maps, their Monte-Carlo dropout uncertainty
  and the physics-consistency map, all under the outside rule
  (:func:`mrfengine.masking.apply_outside_rule`, every map 0 outside the
  brain mask) with the mask chosen by :func:`outside_mask`;
* what is recorded about it (:meth:`NetworkMaps.info` for a store's
  provenance, :meth:`NetworkMaps.sidecar_fields` for a sidecar, one list of
  facts named twice), and the warning when the input lies outside what the
  network was trained on (:attr:`NetworkMaps.warning`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import BackendUnavailableError, InputFileError, OptionError, ValidationError
from ..masking import MASK_METHOD, apply_outside_rule
from ..sequence import Sequence
from . import LoadedModel, load_model
from .inference import Prediction, run_network
from .uncertainty import MC_SEED, check_mc_samples, check_mc_seed

__all__ = ["DEVICES", "NetworkMaps", "check_brain_mask_options", "check_consistency", "network_maps", "network_sequence", "open_network",
           "outside_mask", "resolve_model_path", "torch_device", "torch_threads"]

DEVICES = ("auto", "cpu", "cuda")
"""Where a network may run: ``auto`` takes the GPU when torch sees one."""

#: The names that mean "the default model" (:func:`mrfengine.nn.default.default_model_path`).
_DEFAULT_NAMES = ("", "default")

#: The facts recorded about a run: the store provenance's key -> the sidecar's key.
_SIDECAR_NAMES = {
    "network": "Model",
    "model_file": "ModelFile",
    "sha256": "ModelSHA256",
    "training_cohort_hash": "TrainingCohortHash",
    "tissue_targets": "TissueTargets",
    "sequence": "Sequence",
    "sequence_digest": "SequenceDigest",
    "device": "Device",
    "precision": "Precision",
    "tta": "TestTimeAugmentation",
    "input_scale": "InputScale",
    "input_gain": "InputGain",
    "input_level": "InputLevel",
    "input_level_ratio": "InputLevelRatio",
    "brain_mask": "InputLevelMask",
    "input_shift": "InputShift",
    "outside_training": "InputOutsideTraining",
}


def resolve_model_path(model: str | os.PathLike | None = None, *, what: str = "model") -> Path:
    """The model file to run: ``model``, or the default model when it is None, ``""`` or ``"default"``.

    Parameters
    ----------
    model : path, optional
        ``NAME.pt`` (with ``NAME.card.json`` beside it) or the card itself.
    what : str
        How the caller names the option, for the message (``--model``,
        ``unet stage option 'model'``).

    Raises
    ------
    InputFileError
        ``model`` is not a file.
    NoDefaultModelError
        The default is asked for and none is installed
        (:func:`mrfengine.nn.default.default_model_path`).
    """
    if model is None or str(model) in _DEFAULT_NAMES:
        from .default import default_model_path

        return default_model_path()
    path = Path(model)
    if not path.is_file():
        raise InputFileError(f"{path}: no such model file ({what})")
    return path


def torch_device(request: str = "auto") -> str:
    """``"cuda"`` or ``"cpu"`` for a request of :data:`DEVICES`.

    Raises
    ------
    BackendUnavailableError
        ``"cuda"`` asked for and torch sees no CUDA device.
    ValidationError
        A request not in :data:`DEVICES`.
    """
    import torch

    if request not in DEVICES:
        raise ValidationError(f"device must be one of {DEVICES}; got {request!r}")
    if request == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device cuda requested but torch sees no CUDA device")
    return request


@contextlib.contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with ``n_threads`` CPU threads in torch (None or 0: as they are), restored after."""
    import torch

    old = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(check_int(n_threads, "threads"))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@functools.lru_cache(maxsize=4)
def _cached_network(path: str, mtime_ns: int, size: int, device: str, trust_model_code: bool) -> LoadedModel:
    return load_model(path, device=device, trust_model_code=trust_model_code)


def open_network(path: str | os.PathLike, *, device: str = "cpu", trust_model_code: bool = False,
                 cached: bool = False) -> LoadedModel:
    """The network of ``path``, read as weights only (TorchScript only when ``trust_model_code``).

    Parameters
    ----------
    path : path
        From :func:`resolve_model_path`.
    device : {"cpu", "cuda"}
    trust_model_code : bool
        Also load a TorchScript file, which runs code stored in it.
    cached : bool
        Share one loaded model per file (its path, modification time and
        size), device and trust, in this process (the batch's workers run many
        subjects); False reads the file again.

    Raises
    ------
    InputFileError, ValidationError
        From :func:`mrfengine.nn.load_model` (a changed model says so).
    """
    if not cached:
        return load_model(path, device=device, trust_model_code=trust_model_code)
    st = os.stat(path)
    return _cached_network(str(path), st.st_mtime_ns, st.st_size, device, bool(trust_model_code))


def network_sequence(card, sequence: Sequence | str | os.PathLike | None = None, *,
                     source: str | os.PathLike = "model") -> Sequence:
    """The acquisition data are checked against: ``sequence`` (a preset, a file or a
    :class:`~mrfengine.sequence.Sequence`) or, when None, the one the card describes.

    Raises
    ------
    ValidationError
        No sequence given and the card describes none (``source`` named).
    """
    from ..sequence import resolve_sequence

    if isinstance(sequence, Sequence):
        return sequence
    if sequence is not None:
        return resolve_sequence(str(sequence))
    description = (card.sequence or {}).get("description") if isinstance(card.sequence, Mapping) else None
    if isinstance(description, dict):
        return Sequence.from_dict(description)
    raise ValidationError(f"{source}: the model card does not describe its sequence; pass the sequence")


def check_consistency(card, *, what: str = "consistency") -> None:
    """Refuse the physics-consistency map for a network without it: it needs an
    MRF network with ``T1`` and ``T2star`` outputs.

    Raises
    ------
    OptionError
        Naming ``what`` (the option) and the network's outputs.
    """
    cfg = card.config
    if cfg.input_kind != "mrf" or not {"T1", "T2star"} <= set(cfg.output_names):
        raise OptionError(f"{what} needs an MRF network with T1 and T2star outputs; {cfg.name} takes "
                          f"{cfg.input_kind} and has {', '.join(cfg.output_names)}")


def check_brain_mask_options(mask_given: bool, brain_mask: bool) -> None:
    """Refuse a brain mask given together with ``brain_mask=False`` (the whole field of view).

    Raises
    ------
    OptionError
    """
    if mask_given and not brain_mask:
        raise OptionError("a brain mask and brain_mask=False (--mask and --no-brain-mask) exclude each other: give "
                          "the brain, or keep the whole field of view")


def outside_mask(mask: np.ndarray | None, made: np.ndarray | None, *, brain_mask: bool = True,
                 source: str = "given") -> tuple[np.ndarray | None, str]:
    """The brain mask the outside rule applies, and where it comes from.

    Parameters
    ----------
    mask : ndarray of bool (Z, Y, X), optional
        The brain given (a ``--mask`` file, a subject's ``brain_mask``).
    made : ndarray of bool (Z, Y, X), optional
        The one made from the series (:func:`mrfengine.masking.brain_mask_from_mrf`),
        used when no mask is given.
    brain_mask : bool
        False: no mask, the whole field of view (``mask`` must then be None).
    source : str
        What ``mask`` is, for the sidecars (``"given"``,
        :data:`mrfengine.masking.BRAIN_MASK_SOURCE`).

    Returns
    -------
    mask : ndarray of bool or None
    source : str
        ``source``, :data:`mrfengine.masking.MASK_METHOD` or ``"none"``.

    Raises
    ------
    OptionError
        A mask given with ``brain_mask=False``.
    ValidationError
        No mask given, none could be made and ``brain_mask`` is true.
    """
    check_brain_mask_options(mask is not None, brain_mask)
    if not brain_mask:
        return None, "none"
    if mask is not None:
        return np.asarray(mask).astype(bool, copy=False), source
    if made is not None:
        return made, MASK_METHOD
    raise ValidationError("no brain mask could be made from the series (no bright region in its mean image); "
                          "give a brain mask, or keep the whole field of view (--no-brain-mask, brain_mask=False)")


@dataclass(frozen=True)
class NetworkMaps:
    """What :func:`network_maps` returns: the maps of one volume under the outside rule, and their record.

    Attributes
    ----------
    maps : dict of str to ndarray (Z, Y, X) float32
        One map per network output in the card's units (ms, probabilities),
        0 outside :attr:`mask`.
    uncertainty : dict of str to ndarray (Z, Y, X) float32, or None
        Per output, the standard deviation over the Monte-Carlo dropout passes
        (``mc_samples``), 0 outside :attr:`mask`.
    consistency : ndarray (Z, Y, X) float32, or None
        The physics-consistency map (``consistency``), scored inside
        :attr:`mask` (every voxel with signal without one), 0 elsewhere.
    mask : ndarray of bool (Z, Y, X), or None
        The brain the outside rule applied (None: the whole field of view).
    mask_source : str
        Where :attr:`mask` comes from (:func:`outside_mask`).
    prediction : Prediction
        :func:`mrfengine.nn.run_network`'s report (the input's scaling, shift).
    model : LoadedModel
    sequence : Sequence or None
    device, precision, tta : str
    seconds : float
        Time of the network's passes.
    consistency_seconds : float
        Time of the physics-consistency map (0 without it).
    """

    maps: dict[str, np.ndarray]
    uncertainty: dict[str, np.ndarray] | None
    consistency: np.ndarray | None
    mask: np.ndarray | None
    mask_source: str
    prediction: Prediction
    model: LoadedModel
    sequence: Sequence | None
    device: str
    precision: str
    tta: str
    seconds: float
    consistency_seconds: float = 0.0

    @property
    def mask_made(self) -> bool:
        """Whether :attr:`mask` was made from the series (and is worth writing beside the maps)."""
        return self.mask_source == MASK_METHOD

    @property
    def warning(self) -> str | None:
        """Why the input lies outside what the network was trained on, or None when it does not."""
        if not self.prediction.outside_training:
            return None
        return self.prediction.warning(self.model.card.name)

    def info(self) -> dict[str, Any]:
        """The run's record, JSON-compatible: a cohort store's provenance of the ``unet`` stage
        (``model`` the file's absolute path, then the facts :meth:`sidecar_fields` names)."""
        card, scaling = self.model.card, self.prediction.scaling
        return {
            "model": os.path.abspath(self.model.path),
            "network": card.config.name,
            "model_file": Path(self.model.path).name,
            "sha256": card.artifact_sha256,
            "training_cohort_hash": card.training_cohort_hash,
            # where the NAWM/GM outputs' training targets came from (truth, or a segment stage's maps)
            "tissue_targets": card.tissue_targets,
            "sequence": None if self.sequence is None else self.sequence.name,
            "sequence_digest": None if self.sequence is None else self.sequence.digest(),
            "device": self.device,
            "precision": self.precision,
            "tta": self.tta,
            "input_scale": "subject" if scaling.rescaled else "absolute",
            "input_gain": scaling.gain,
            "input_level": scaling.level,
            "input_level_ratio": scaling.level_ratio,
            "brain_mask": scaling.mask_source,
            "input_shift": self.prediction.input_shift,
            "outside_training": self.prediction.outside_training,
        }

    def sidecar_fields(self) -> dict[str, Any]:
        """The facts of :meth:`info` under their sidecar names (``Model``, ``ModelSHA256``,
        ``InputScale``, ``InputOutsideTraining``, ...), for :func:`mrfengine.io.bids.map_sidecar`'s
        ``provenance``."""
        info = self.info()
        return {name: info[key] for key, name in _SIDECAR_NAMES.items()}

    def uncertainty_fields(self) -> dict[str, Any]:
        """What the uncertainty maps are (:func:`mrfengine.nn.uncertainty.uncertainty_fields`)."""
        from .uncertainty import uncertainty_fields

        return uncertainty_fields(self.prediction.mc_samples, self.prediction.mc_seed, self.model.module)


def _module_device(model: LoadedModel) -> str:
    for p in model.module.parameters():
        return p.device.type
    return "cpu"


def network_maps(
    volume: Any,
    model: LoadedModel,
    *,
    sequence: Sequence | None,
    mask: np.ndarray | None = None,
    mask_source: str = "given",
    brain_mask: bool = True,
    channel_axis: int = 1,
    batch_size: int = 4,
    precision: str = "float32",
    device: str | None = None,
    tta: str = "none",
    input_scale: str = "card",
    mc_samples: int = 0,
    mc_seed: int = MC_SEED,
    consistency: bool = False,
    consistency_option: str = "consistency",
    progress: Callable[[int], None] | None = None,
) -> NetworkMaps:
    """Run a network over a whole volume and apply the outside rule to everything it gives.

    Parameters
    ----------
    volume : array_like, (Z, C, Y, X) or (C, Z, Y, X)
        The MRF series (an MRF network) or the input maps in ms (a maps
        network); any lazily sliced array.  The card is checked against it
        by the caller (:func:`mrfengine.nn.check_card`).
    model : LoadedModel
    sequence : Sequence or None
        The acquisition (recorded; needed for ``consistency``).
    mask : ndarray of bool (Z, Y, X), optional
        The brain: the input's level is measured in it and every map is 0
        outside it.  Without one, a mask is made from the series
        (:func:`mrfengine.masking.brain_mask_from_mrf`) unless ``brain_mask``
        is false.
    mask_source : str
        What ``mask`` is (``"given"``, :data:`mrfengine.masking.BRAIN_MASK_SOURCE`).
    brain_mask : bool
        False: the whole field of view (no map is set to 0; the input's level
        is still measured in a mask made from the series).
    channel_axis : {1, 0}
    batch_size, precision, tta, input_scale
        As :func:`mrfengine.nn.run_network`.
    device : str, optional
        ``"cpu"`` or ``"cuda"`` (:func:`torch_device`); default where the model is.
    mc_samples : int
        0, or N >= 2 Monte-Carlo dropout passes for the uncertainty maps.
    mc_seed : int
        Seed of their dropout masks (>= 0).
    consistency : bool
        Also the physics-consistency map (an MRF network with T1 and T2*).
    consistency_option : str
        How the caller names ``consistency``, for its refusal.
    progress : callable, optional
        Called with the slices done.

    Raises
    ------
    OptionError
        ``consistency`` for a network without it; a ``mask`` with ``brain_mask=False``.
    ValidationError
        Bad ``mc_samples``/``mc_seed``, a volume that does not fit, a brain
        that cannot be found (no ``mask``, ``brain_mask`` true, none made).
    """
    card = model.card
    mc_samples = check_mc_samples(mc_samples)
    mc_seed = check_mc_seed(mc_seed)
    if consistency:
        check_consistency(card, what=consistency_option)
        if sequence is None:
            raise ValidationError("the physics consistency needs the series' sequence")
    check_brain_mask_options(mask is not None, brain_mask)
    is_mrf = card.config.input_kind == "mrf"
    t0 = time.perf_counter()
    result = run_network(volume, model, channel_axis=channel_axis, batch_size=batch_size, precision=precision,
                         device=device, progress=progress, tta=tta, input_scale=input_scale,
                         mask=mask if is_mrf else None, mc_samples=mc_samples, mc_seed=mc_seed)
    seconds = time.perf_counter() - t0
    rule_mask, rule_source = outside_mask(mask, result.scaling.mask if is_mrf else None, brain_mask=brain_mask,
                                          source=mask_source)
    maps = apply_outside_rule(result.maps, rule_mask)
    uncertainty = None if result.uncertainty is None else apply_outside_rule(result.uncertainty, rule_mask)
    agreement, consistency_seconds = None, 0.0
    if consistency:
        from .consistency import physics_consistency

        t1 = time.perf_counter()
        # scored inside the outside rule's brain (every voxel with signal without one), 0 elsewhere
        agreement = physics_consistency(volume, maps["T1"], maps["T2star"], sequence, mask=rule_mask,
                                        channel_axis=channel_axis)
        consistency_seconds = time.perf_counter() - t1
    return NetworkMaps(maps, uncertainty, agreement, rule_mask, rule_source, result, model, sequence,
                       str(device or _module_device(model)), precision, tta, seconds,
                       consistency_seconds)
