"""Whole-slice inference: a 4D volume in, one map per network output out.

The network is fully convolutional, so whole slices go through it at once
(no patches, no seams): each batch of slices is normalised with the card's
per-channel mean and std, padded to a multiple of ``2**depth`` (16 for the
paper's network) with what an empty voxel normalises to, run, cropped back,
passed through the output activation (sigmoid for Dice outputs) and scaled
to physical units, then clipped to the outputs' physical ranges
(:data:`OUTPUT_RANGES`: probabilities to [0, 1], T1 to 0-5000 ms and T2* to
0-3000 ms), so no map holds a value no tissue can have.

Scale-free input: a card whose normalisation has a ``subject_level``
(:mod:`mrfengine.nn.normalisation`) has the series rescaled to it first, the
level measured inside the brain mask (given, or made from the series with
:func:`mrfengine.masking.brain_mask_from_mrf`).  :func:`run_network` also
reports how far the normalised input lies from the training data
(``input_shift``, below); :func:`predict_volume` returns the maps alone.

Speed on CPU (``benchmarks/bench_nn.py``): channels-last memory layout lets
oneDNN run the convolutions in its blocked layout without reordering, and
bfloat16 autocast halves the arithmetic cost on CPUs with AVX-512 BF16 or
AMX, at about three significant digits in the outputs.

Test-time augmentation (``tta``): the training patches are rotated by
multiples of 90 degrees and flipped, so the network is trained to be
equivariant under those eight in-plane transforms (the dihedral group of the
square).  ``tta="flip"`` also runs each slice mirrored left-right and
``tta="dihedral"`` all eight transforms; each output is transformed back and
the outputs (probabilities after the output activation) are averaged, as
nnU-Net's mirroring does.  It costs one forward pass per transform.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validate import check_int
from ..errors import ValidationError
from .artifact import LoadedModel
from .normalisation import input_level
from .targets import to_physical_units
from .uncertainty import MC_SEED, MCDropout, RunningMoments, check_mc_samples

log = logging.getLogger(__name__)

__all__ = ["INPUT_SCALES", "OUTPUT_RANGES", "PRECISIONS", "SHIFT_WARNING", "TTA_MODES", "InputScaling", "Prediction",
           "input_scaling", "predict_volume", "pad_amounts", "run_network"]

OUTPUT_RANGES: dict[str, tuple[float, float]] = {"1": (0.0, 1.0), "T1": (0.0, 5000.0), "T2star": (0.0, 3000.0)}
"""Physical ranges the outputs are clipped to: by unit ``"1"`` (probabilities and
fractions) and by name for the relaxation times in ms (T1 of CSF at 3 T is about
4,300 ms, T2* of CSF below 3,000 ms); any other ms output is clipped at 0 from below."""

INPUT_SCALES = ("card", "subject", "absolute")
"""How the input's global scale is taken: ``subject`` rescales the series to the
training data's level (scale-free), ``absolute`` takes it as it is, ``card`` does
what the model's card says (``subject`` when its normalisation has a ``subject_level``)."""

SHIFT_WARNING = 2.0
"""``input_shift`` above which the input is reported as unlike the training data:
the largest over channels of the brain's mean normalised input, in training
standard deviations.  The training data have 0 by construction; nine simulated
paper-sized subjects (both tissue-fraction models, both sites, one the network
never saw) gave 0.48-0.58; one of them scaled by 300 gave 2,549 and by 1e-3 gave
8.4 (``benchmarks/README.md``)."""


@dataclass(frozen=True)
class InputScaling:
    """How an input series is brought to the training data's scale.

    Attributes
    ----------
    gain : float
        The factor the series is multiplied by (1 when not rescaled).
    level : float or None
        The series' intensity level (:data:`~mrfengine.nn.normalisation.LEVEL_STATISTIC`);
        None for networks that take maps.
    level_ratio : float or None
        ``level`` over the training data's (:attr:`Normalisation.reference_level`):
        1 for data at the training scale, whether rescaled or not.
    mask : ndarray of bool (Z, Y, X) or None
        The brain mask the level (and ``input_shift``) was measured in.
    mask_source : str
        ``"given"``, ``"from the series"`` (:func:`mrfengine.masking.brain_mask_from_mrf`)
        or ``"none"``.
    rescaled : bool
        Whether ``gain`` was applied (:data:`INPUT_SCALES`).
    """

    gain: float
    level: float | None
    level_ratio: float | None
    mask: np.ndarray | None
    mask_source: str
    rescaled: bool


@dataclass(frozen=True)
class Prediction:
    """What :func:`run_network` returns: the maps and how the input was taken.

    Attributes
    ----------
    maps : dict of str to ndarray (Z, Y, X) float32
        One map per output of the card, in its units, clipped to :data:`OUTPUT_RANGES`.
    scaling : InputScaling
    input_shift : float or None
        Largest over channels of the mean normalised input inside the brain
        mask (training standard deviations); None without a mask.  Above
        :data:`SHIFT_WARNING` the input lies outside what the network was
        trained on, and a warning is logged.
    uncertainty : dict of str to ndarray (Z, Y, X) float32, or None
        With ``mc_samples``: per output, the standard deviation over the
        Monte-Carlo dropout passes, in the output's units
        (:mod:`mrfengine.nn.uncertainty`); None otherwise.
    mc_samples : int
        Stochastic passes behind ``uncertainty`` (0: none).
    mc_seed : int or None
        Seed of their dropout masks.
    """

    maps: dict[str, np.ndarray]
    scaling: InputScaling
    input_shift: float | None
    uncertainty: dict[str, np.ndarray] | None = None
    mc_samples: int = 0
    mc_seed: int | None = None

    @property
    def outside_training(self) -> bool:
        return self.input_shift is not None and self.input_shift > SHIFT_WARNING

    def warning(self, network: str) -> str:
        """Why the input is unlike the training data, and what to do (for :attr:`outside_training`)."""
        text = (f"the input lies outside what network {network} was trained on: its brain's mean normalised input "
                f"is {self.input_shift:.1f} training standard deviations from the training data's in one frame "
                f"(above {SHIFT_WARNING:g})")
        ratio = self.scaling.level_ratio
        if not self.scaling.rescaled and ratio is not None and not 0.8 < ratio < 1.25:
            return (f"{text}; its intensity level is {ratio:.3g} times the training data's: rescale it to the "
                    "training level (input scale 'subject': --input-scale subject, [unet] input_scale = \"subject\")")
        return f"{text}; check the sequence, the brain mask and the data before trusting the maps"

PRECISIONS = ("float32", "bfloat16")

#: Test-time augmentation modes and the (quarter turns, mirror) transforms each averages.
TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "dihedral": tuple((k, f) for f in (False, True) for k in range(4)),
}


def _forward_tta(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 transforms: tuple[tuple[int, bool], ...], memory_format: torch.memory_format) -> torch.Tensor:
    """Mean of ``module``'s outputs over in-plane transforms of ``x`` (N, C, H, W),
    each output transformed back to the input's orientation."""
    total = None
    for k, mirror in transforms:
        t = x
        if mirror:
            t = torch.flip(t, dims=(3,))
        if k:
            t = torch.rot90(t, k, dims=(2, 3))
        if k or mirror:
            t = t.contiguous(memory_format=memory_format)
        y = module(t)
        if k:
            y = torch.rot90(y, -k, dims=(2, 3))
        if mirror:
            y = torch.flip(y, dims=(3,))
        total = y if total is None else total + y
    assert total is not None
    return total if len(transforms) == 1 else total / len(transforms)


def pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """``(before, after)`` padding that makes ``size`` a multiple of ``multiple``, split evenly."""
    total = (-size) % multiple
    return total // 2, total - total // 2


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _read_slices(volume: Any, z0: int, z1: int, channel_axis: int) -> np.ndarray:
    """Slices ``z0:z1`` as float32 (B, C, Y, X); works on numpy and lazily sliced arrays (zarr)."""
    block = np.asarray(volume[z0:z1] if channel_axis == 1 else volume[:, z0:z1], dtype=np.float32)
    return block if channel_axis == 1 else block.transpose(1, 0, 2, 3)


def input_scaling(volume: Any, model: LoadedModel, *, mask: Any = None, channel_axis: int = 1,
                  input_scale: str = "card") -> InputScaling:
    """Measure ``volume``'s intensity level and the gain that brings it to the training data's.

    Parameters
    ----------
    volume : array_like, (Z, C, Y, X) or (C, Z, Y, X)
    model : LoadedModel
    mask : array_like of bool, (Z, Y, X), optional
        The brain; default made from the series (:func:`mrfengine.masking.brain_mask_from_mrf`).
    channel_axis : {1, 0}
    input_scale : {"card", "subject", "absolute"}
        Whether the gain is applied (:data:`INPUT_SCALES`); the level is measured either way.

    Raises
    ------
    ValidationError
        A mask of the wrong shape, an empty mask, a series whose level is not
        positive (rescaling only), or an unknown ``input_scale``.
    """
    from ..masking import brain_mask_from_mean, mean_image

    if input_scale not in INPUT_SCALES:
        raise ValidationError(f"input_scale must be one of {INPUT_SCALES}; got {input_scale!r}")
    norm = model.card.normalisation
    shape = tuple(getattr(volume, "shape", ()))
    zyx = (shape[1 - channel_axis],) + shape[2:] if len(shape) == 4 else None
    given = None
    if mask is not None:
        given = np.asarray(mask).astype(bool, copy=False)
        if given.shape != zyx:
            raise ValidationError(f"the brain mask has shape {given.shape}; the volume's slices are {zyx}")
    if model.card.config.input_kind != "mrf":  # maps in ms: no arbitrary gain to remove
        return InputScaling(1.0, None, None, given, "given" if given is not None else "none", False)
    rescale = input_scale == "subject" or (input_scale == "card" and norm.scale_free)
    mean = mean_image(volume, channel_axis=channel_axis)
    try:
        brain, source = (given, "given") if given is not None else (brain_mask_from_mean(mean), "from the series")
        level = input_level(mean, brain)
        gain = norm.gain(level)  # refuses a level that is not positive
    except ValidationError:
        if rescale:
            raise
        # not rescaled: the level is a diagnostic only, and a series with no brain to find still runs
        log.info("no brain mask could be made from the series: its intensity level is not measured")
        return InputScaling(1.0, None, None, None, "none", False)
    return InputScaling(gain if rescale else 1.0, level, 1.0 / gain, brain, source, rescale)


def predict_volume(
    volume: Any,
    model: LoadedModel,
    *,
    channel_axis: int = 1,
    batch_size: int = 4,
    precision: str = "float32",
    channels_last: bool = True,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
    tta: str = "none",
    mask: Any = None,
    input_scale: str = "card",
) -> dict[str, np.ndarray]:
    """The maps of :func:`run_network` (same parameters), without its report."""
    return run_network(volume, model, channel_axis=channel_axis, batch_size=batch_size, precision=precision,
                       channels_last=channels_last, device=device, progress=progress, tta=tta, mask=mask,
                       input_scale=input_scale).maps


def run_network(
    volume: Any,
    model: LoadedModel,
    *,
    channel_axis: int = 1,
    batch_size: int = 4,
    precision: str = "float32",
    channels_last: bool = True,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
    tta: str = "none",
    mask: Any = None,
    scaling: InputScaling | None = None,
    input_scale: str = "card",
    mc_samples: int = 0,
    mc_seed: int = MC_SEED,
) -> Prediction:
    """Run a network over every slice of a volume.

    Parameters
    ----------
    volume : array_like, (Z, C, Y, X) or (C, Z, Y, X)
        The MRF magnitude series (C = 35 frames) or, for a maps network, its
        input maps in ms.  Any array that slices lazily (numpy, zarr) works:
        only ``batch_size`` slices are read at a time.  Non-finite values are
        replaced by 0 (a warning is logged).
    model : LoadedModel
        From :func:`mrfengine.nn.load_model`.
    channel_axis : {1, 0}
        1 for (Z, C, Y, X), 0 for (C, Z, Y, X) (the cohort store's ``mrf``).
    batch_size : int
        Slices per forward pass.
    precision : {"float32", "bfloat16"}
        bfloat16 runs the network under autocast (faster on CPUs with
        AVX-512 BF16/AMX and on GPUs; about three significant digits).
    channels_last : bool
        Run in channels-last memory layout (faster with oneDNN and cuDNN).
        The module's parameters are converted in place to the layout asked.
    device : str or torch.device, optional
        Where to run; default where the module's parameters are.  The module
        is moved there.
    progress : callable, optional
        Called with the number of slices finished after each batch.
    tta : {"none", "flip", "dihedral"}
        Test-time augmentation: average the network's outputs over the slice
        and its left-right mirror ("flip", 2 passes) or over all eight
        90-degree rotations and mirrors ("dihedral", 8 passes).  A turned
        slice keeps both padded sizes multiples of ``2**depth``, so any
        slice shape works.
    mask : array_like of bool, (Z, Y, X), optional
        The brain: where the input's level and ``input_shift`` are measured.
        Default: made from the series (for a scale-free card).  The maps are
        not masked.
    scaling : InputScaling, optional
        From :func:`input_scaling` (computed here when not given).
    input_scale : {"card", "subject", "absolute"}
        Whether the series is rescaled to the training data's level
        (:data:`INPUT_SCALES`; used when ``scaling`` is not given).
    mc_samples : int
        0 (default): no uncertainty.  N >= 2: also run N stochastic passes with
        the network's dropout on (Monte-Carlo dropout,
        :mod:`mrfengine.nn.uncertainty`) and return each output's standard
        deviation over them in ``uncertainty``; the maps stay the
        deterministic pass.  Costs N more passes (times ``tta``'s).
    mc_seed : int
        Seed of the dropout masks: the same seed gives the same uncertainty,
        whatever ``batch_size``; the global random state is untouched.

    Returns
    -------
    Prediction
        ``maps``: one map per output of the card (e.g. ``T1``, ``T2star`` in
        ms, ``NAWM``, ``GM``, ``lesion`` probabilities), in the card's units,
        clipped to :data:`OUTPUT_RANGES`; ``scaling``; ``input_shift``;
        ``uncertainty`` with ``mc_samples``.

    Raises
    ------
    ValidationError
        On a volume that is not 4D, whose channel count is not the network's,
        or on bad options.
    """
    card = model.card
    cfg = card.config
    if channel_axis not in (0, 1):
        raise ValidationError(f"channel_axis must be 0 (C, Z, Y, X) or 1 (Z, C, Y, X); got {channel_axis!r}")
    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) != 4:
        raise ValidationError(f"volume must be 4D (Z, C, Y, X) or (C, Z, Y, X); got shape {shape}")
    if shape[channel_axis] != cfg.in_channels:
        raise ValidationError(f"volume must have {cfg.in_channels} channels along axis {channel_axis} for network "
                              f"{cfg.name}; got shape {shape}")
    batch_size = check_int(batch_size, "batch_size")
    if precision not in PRECISIONS:
        raise ValidationError(f"precision must be one of {PRECISIONS}; got {precision!r}")
    if tta not in TTA_MODES:
        raise ValidationError(f"tta must be one of {tuple(TTA_MODES)}; got {tta!r}")
    transforms = TTA_MODES[tta]
    mc_samples = check_mc_samples(mc_samples)
    mc = MCDropout(model.module, seed=mc_seed) if mc_samples else None
    if scaling is None:
        scaling = input_scaling(volume, model, mask=mask, channel_axis=channel_axis, input_scale=input_scale)
    brain = scaling.mask
    n_slices = shape[1 - channel_axis]
    ny, nx = shape[2], shape[3]
    dev = _module_device(model.module) if device is None else torch.device(device)
    module = model.module.to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    module.eval()

    multiple = cfg.size_multiple
    (top, bottom), (left, right) = pad_amounts(ny, multiple), pad_amounts(nx, multiple)
    scale_np, offset_np = card.normalisation.scale_and_offset()
    scale_np = (scale_np * np.float32(scaling.gain)).astype(np.float32)  # (g x - mean) / std
    scale = torch.from_numpy(scale_np).to(dev).view(1, -1, 1, 1)
    offset = torch.from_numpy(offset_np).to(dev).view(1, -1, 1, 1)
    maps = {name: np.empty((n_slices, ny, nx), dtype=np.float32) for name in cfg.output_names}
    spread = {name: np.zeros((n_slices, ny, nx), dtype=np.float32) for name in cfg.output_names} if mc else None
    lows, highs = _output_ranges(cfg)
    shift_sum = np.zeros(cfg.in_channels)
    shift_count = 0
    n_bad = 0
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    with torch.inference_mode(), autocast, mc if mc is not None else contextlib.nullcontext():
        for z0 in range(0, n_slices, batch_size):
            z1 = min(n_slices, z0 + batch_size)
            block = _read_slices(volume, z0, z1, channel_axis)
            finite = np.isfinite(block)
            if not finite.all():
                n_bad += int(block.size - finite.sum())
                block = np.where(finite, block, np.float32(0))
            if brain is not None:
                inside = block.transpose(1, 0, 2, 3)[:, brain[z0:z1]].astype(np.float64)  # (C, voxels)
                shift_sum += (inside * scale_np[:, None] + offset_np[:, None]).sum(axis=1)
                shift_count += inside.shape[1]
            x = torch.from_numpy(np.ascontiguousarray(block)).to(dev)
            # Padding holds what an empty (zero) voxel normalises to.
            padded = offset.expand(z1 - z0, -1, ny + top + bottom, nx + left + right).contiguous(
                memory_format=memory_format)
            padded[:, :, top:top + ny, left:left + nx] = x * scale + offset
            def run() -> np.ndarray:
                y = _forward_tta(lambda t: to_physical_units(module(t).float(), cfg), padded, transforms,
                                 memory_format)
                y = y[:, :, top:top + ny, left:left + nx].cpu().numpy()
                for k in range(len(cfg.output_names)):
                    np.clip(y[:, k], lows[k], highs[k], out=y[:, k])
                return y

            y = run()
            for k, name in enumerate(cfg.output_names):
                maps[name][z0:z1] = y[:, k]
            if mc is not None and mc.active:  # dropout 0 drops nothing: the SD is 0, no pass needed
                moments = RunningMoments()
                for s in range(mc_samples):
                    with mc.sample(s, range(z0, z1)):
                        moments.update(run())
                sd = moments.std()
                for k, name in enumerate(cfg.output_names):
                    spread[name][z0:z1] = sd[:, k]
            if progress is not None:
                progress(z1)
    if n_bad:
        log.warning("predict_volume: %d non-finite input values were replaced by 0", n_bad)
    shift = float(np.abs(shift_sum / shift_count).max()) if shift_count else None
    result = Prediction(maps, scaling, shift, spread, mc_samples, mc_seed if mc_samples else None)
    if result.outside_training:
        log.warning("%s", result.warning(cfg.name))
    return result


def _output_ranges(cfg) -> tuple[list[float], list[float]]:
    """Lower and upper clip of each output (:data:`OUTPUT_RANGES`)."""
    lows, highs = [], []
    for o in cfg.outputs:
        lo, hi = OUTPUT_RANGES.get(o.name, OUTPUT_RANGES.get(o.unit, (0.0 if o.unit == "ms" else -np.inf, np.inf)))
        lows.append(lo)
        highs.append(hi)
    return lows, highs
