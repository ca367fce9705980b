"""Training: ``mrfengine train CONFIG.toml``, the loop and its one optimisation step.

:func:`make_optimizer` (Adam, the paper's learning rate 1e-4), :func:`train_step`
and :func:`evaluate_batch` are the step; :func:`train` the run around it, with
checkpoints from :mod:`mrfengine.nn.checkpoint` and target scaling from
:mod:`mrfengine.nn.targets`.

One run trains one network configuration (Table 1 of the paper) on the
training split of a cohort store with Adam, and after each epoch

* validates on *whole* slices of the validation split (:func:`validate`,
  through :func:`mrfengine.metrics.evaluate_subject`, the definitions
  ``mrfengine evaluate`` uses): lesion Dice and detection rate at a
  probability threshold of 33%, NAWM and GM Dice at 80% (mean over slices)
  and the mean relative deviation of T1 and T2* inside the brain, for the
  outputs the network has: the paper's measures, so an epoch can be chosen
  on every one of them;
* writes ``checkpoint.pt`` (atomic; model, optimiser, history), the metrics
  table ``metrics.csv`` and its plot ``metrics.png``.

At the end the network is exported (its weights only, a state dict:
:func:`mrfengine.nn.save_model`) to ``model.pt`` with its card
``model.card.json`` (input normalisation, sequence digest, cohort hash,
validation metrics).

A run is deterministic for a seed: the network's initial weights, the patches
of epoch ``e`` and the dropout masks of epoch ``e`` all derive from
``(seed, e)``, so a run resumed from the checkpoint of epoch ``e`` ends with
the same weights as an uninterrupted one (on one device and thread setting).

The settings file (TOML)::

    cohort = "cohort.zarr"          # relative paths: to the settings file
    network = "MSE-5"               # a Table 1 configuration
    output_dir = "runs/mse5"
    epochs = 100
    batch_size = 64
    learning_rate = 1e-4
    patches_per_slice = 64
    seed = 0
    # optional: patch_size = 64, lesion_oversampling = 5, depth, base_filters,
    # map_source = "truth" | "derived:<name>"  (where the T1/T2* targets come from),
    # tissue_targets = "truth" | "derived:<pipeline>"  (where the NAWM/GM targets come from:
    #                          truth/WM and truth/GM, or derived/<pipeline>/NAWM and .../GM,
    #                          the probability maps of 'mrfengine batch --stages
    #                          denoise,match,segment', as the paper's came from SPM;
    #                          validation then scores NAWM/GM against the same maps),
    # device = "auto" | "cpu" | "cuda",
    # bf16 = false, compile = false, threads,
    # lesion_centring = "voxel" | "lesion"  (what an oversampled patch is centred on: a
    #                          random lesion voxel, or a random lesion, so small ones count),
    # patch_centring = "uniform" | "brain"  (where the other patches lie: anywhere in the
    #                          slice, or centred on a brain voxel, less compute on background),
    # loss_weights = { lesion = 2.0 }  (per-output loss weights replacing the network's;
    #                          outputs not named keep theirs),
    # init_model = "mse5.pt"  (start from a saved network of the same configuration and
    #                          keep its normalisation: continue training a shipped model)
    # trust_model_code = false  (true: init_model may be a TorchScript file, which runs code
    #                          stored in the file; only for models you trust)
    # input_scale = "subject" | "absolute"  (subject, the default: every subject's MRF series
    #                          rescaled to the training data's intensity level, as at
    #                          inference, so the network is free of the input's global
    #                          scale; an init_model of absolute scale is converted)

Settings are checked before any work, each against a sane range (e.g.
``0 < learning_rate <= 1``, ``patch_size <= 1024``); a run whose loss or
weights become non-finite stops with an error that names the learning rate.

References
----------
Hermann I, et al. Magn Reson Med. 2021;86:471-486 (training: Adam, lr 1e-4,
64 x 64 patches, lesion slices oversampled x5).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._atomic import atomic_write_bytes
from .._validate import check_int, check_name
from ..errors import BackendUnavailableError, InputFileError, ValidationError
from ..metrics.definitions import LESION_THRESHOLD, TISSUE_THRESHOLD  # nn.train's names before metrics had them
from .checkpoint import load_checkpoint, save_checkpoint
from .configs import NetworkConfig, get_config
from .data import (
    LESION_CENTRING,
    PATCH_CENTRING,
    TISSUE_OUTPUTS,
    PatchSampler,
    _parse_map_source,
    check_target_arrays,
    fit_cohort_normalisation,
)
from .losses import multi_output_loss
from .targets import _check_channels, to_physical_units

INPUT_SCALES = ("subject", "absolute")
"""``subject``: every subject's MRF series is rescaled to the training data's intensity
level before the network (trained and run free of the input's global scale, the card's
``subject_level``); ``absolute``: taken at the simulator's scale (models before it)."""

log = logging.getLogger(__name__)

__all__ = ["TrainSettings", "TrainResult", "load_settings", "train", "cohort_hash", "validate",
           "CHECKPOINT_NAME", "METRICS_CSV", "METRICS_PNG", "MODEL_NAME", "LESION_THRESHOLD",
           "TISSUE_THRESHOLD", "LEGACY_VALIDATION_KEYS", "upgrade_history_row", "make_optimizer", "train_step",
           "evaluate_batch"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
METRICS_PNG = "metrics.png"
MODEL_NAME = "model.pt"
_CSV_FIELDS = ("epoch", "train_loss", "lesion_dice", "lesion_detection_rate", "NAWM_dice_slice_mean",
               "GM_dice_slice_mean", "T1_reldev", "T2star_reldev")


@dataclass(frozen=True)
class TrainSettings:
    """What ``mrfengine train`` reads from its TOML file (see the module notes)."""

    cohort: str
    network: str
    output_dir: str
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-4
    patches_per_slice: int = 64
    seed: int = 0
    patch_size: int | None = None
    lesion_oversampling: int | None = None
    depth: int | None = None
    base_filters: int | None = None
    map_source: str = "truth"
    device: str = "auto"
    bf16: bool = False
    compile: bool = False
    threads: int | None = None
    init_model: str | None = None
    lesion_centring: str = "voxel"
    patch_centring: str = "uniform"
    loss_weights: dict[str, float] | None = None
    trust_model_code: bool = False
    input_scale: str = "subject"
    tissue_targets: str = "truth"

    def __post_init__(self) -> None:
        for key in ("cohort", "network", "output_dir", "map_source", "device", "tissue_targets"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValidationError(f"{key} must be a non-empty string; got {getattr(self, key)!r}")
        for key in ("epochs", "batch_size", "patches_per_slice"):
            check_int(getattr(self, key), key, minimum=1, maximum=_MAXIMA[key])
        if self.init_model is not None and (not isinstance(self.init_model, str) or not self.init_model):
            raise ValidationError(f"init_model must be the path of a saved model; got {self.init_model!r}")
        check_int(self.seed, "seed", minimum=0, maximum=2**63 - 1)
        for key in ("patch_size", "lesion_oversampling", "depth", "base_filters", "threads"):
            if getattr(self, key) is not None:
                check_int(getattr(self, key), key, minimum=1, maximum=_MAXIMA[key])
        cfg = get_config(self.network) if isinstance(self.network, str) and self.network else None
        if cfg is not None:
            depth = cfg.depth if self.depth is None else self.depth
            filters = cfg.base_filters if self.base_filters is None else self.base_filters
            if filters * 2**depth > _MAX_BRIDGE_FILTERS:
                raise ValidationError(f"base_filters * 2**depth (the deepest level's filters) must be at most "
                                      f"{_MAX_BRIDGE_FILTERS}; got {filters} * 2**{depth} = {filters * 2**depth}")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and 0 < lr <= 1):
            raise ValidationError(f"learning_rate must be a number in (0, 1] (the paper's is 1e-4); got {lr!r}")
        for key in ("bf16", "compile", "trust_model_code"):
            if not isinstance(getattr(self, key), bool):
                raise ValidationError(f"{key} must be true or false; got {getattr(self, key)!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValidationError(f"device must be 'auto', 'cpu' or 'cuda'; got {self.device!r}")
        if self.lesion_centring not in LESION_CENTRING:
            raise ValidationError(f"lesion_centring must be one of {LESION_CENTRING}; got {self.lesion_centring!r}")
        if self.patch_centring not in PATCH_CENTRING:
            raise ValidationError(f"patch_centring must be one of {PATCH_CENTRING}; got {self.patch_centring!r}")
        if self.input_scale not in INPUT_SCALES:
            raise ValidationError(f"input_scale must be one of {INPUT_SCALES}; got {self.input_scale!r}")
        tissue = _parse_map_source(self.tissue_targets, "tissue_targets")
        if tissue is not None:
            check_name(tissue, "the pipeline of tissue_targets = 'derived:<pipeline>'")
            if cfg is not None and not set(TISSUE_OUTPUTS) & set(cfg.output_names):
                raise ValidationError(f"tissue_targets = {self.tissue_targets!r}, but network {self.network} has "
                                      f"no {' or '.join(TISSUE_OUTPUTS)} output (its outputs: "
                                      f"{', '.join(cfg.output_names)}); leave tissue_targets at 'truth'")
        if self.loss_weights is not None:
            if not isinstance(self.loss_weights, Mapping) or not self.loss_weights:
                raise ValidationError("loss_weights must be a table of output name = weight, e.g. "
                                      f"{{ lesion = 2.0 }}; got {self.loss_weights!r}")
            outputs = [o.name for o in get_config(self.network).outputs]
            for name, w in self.loss_weights.items():
                if name not in outputs:
                    raise ValidationError(f"loss_weights names {name!r}, which network {self.network} does not "
                                          f"output (its outputs: {', '.join(outputs)})")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
                    raise ValidationError(f"loss_weights.{name} must be a number >= 0; got {w!r}")
            # Plain floats: the settings travel in checkpoints and cards (weights_only, JSON).
            object.__setattr__(self, "loss_weights", {k: float(v) for k, v in self.loss_weights.items()})

    def network_config(self) -> NetworkConfig:
        """The named configuration with this run's overrides applied."""
        from dataclasses import replace

        cfg = get_config(self.network)
        if self.depth is not None or self.base_filters is not None:
            cfg = cfg.with_architecture(depth=self.depth, base_filters=self.base_filters)
        changes: dict[str, Any] = {"learning_rate": float(self.learning_rate), "batch_size": self.batch_size,
                                   "epochs": self.epochs, "patches_per_slice": self.patches_per_slice}
        if self.patch_size is not None:
            changes["patch_size"] = self.patch_size
        if self.lesion_oversampling is not None:
            changes["lesion_oversampling"] = self.lesion_oversampling
        if self.loss_weights is not None:
            changes["outputs"] = tuple(replace(o, weight=self.loss_weights.get(o.name, o.weight))
                                       for o in cfg.outputs)
        return replace(cfg, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Upper bounds of the integer settings: far beyond any sensible run, below what exhausts a machine.
_MAXIMA = {"epochs": 100_000, "batch_size": 65_536, "patches_per_slice": 65_536, "patch_size": 1024,
           "lesion_oversampling": 1000, "depth": 8, "base_filters": 1024, "threads": 4096}
#: The deepest level's filters, ``base_filters * 2**depth`` (512 in the paper).
_MAX_BRIDGE_FILTERS = 4096


def load_settings(path: str | os.PathLike) -> TrainSettings:
    """Read a training settings TOML file; relative ``cohort`` and
    ``output_dir`` are taken relative to the file's folder.

    Raises
    ------
    InputFileError
        Missing or malformed file (names it).
    ValidationError
        Unknown or missing keys, bad values (the message names the file).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputFileError(f"{path}: settings file not found") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read the training settings: {exc}") from exc
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValidationError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    missing = [k for k in ("cohort", "network", "output_dir") if k not in data]
    if missing:
        raise ValidationError(f"{path}: missing settings {missing}")
    for key in ("cohort", "output_dir", "init_model"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(path.parent / data[key])
    try:
        return TrainSettings(**data)
    except ValidationError as exc:
        raise ValidationError(f"{path}: {exc}") from exc


def cohort_hash(cohort) -> str:
    """SHA-256 of the cohort's root attributes and its complete subjects'
    attributes (geometry, generator, split, lesion tables): identifies the
    training data without reading the arrays."""
    h = hashlib.sha256()
    h.update(json.dumps(cohort.attrs, sort_keys=True, default=str).encode())
    for sid in cohort.subjects:
        h.update(json.dumps(cohort[sid].attrs, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run wrote its outputs, and its last validation metrics."""

    output_dir: Path
    model_path: Path
    checkpoint_path: Path
    metrics_csv: Path
    metrics_png: Path
    history: tuple[dict[str, float], ...]


# ------------------------------------------------------------------ one step
def make_optimizer(model: torch.nn.Module, config: NetworkConfig) -> torch.optim.Adam:
    """Adam over the model's parameters with ``config.learning_rate`` (the paper's optimiser)."""
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def _loss(model, inputs, targets, config, mask, impl):
    if inputs.dim() != 4 or inputs.shape[1] != config.in_channels:
        raise ValidationError(f"inputs must be (N, {config.in_channels}, H, W) for network {config.name}; "
                              f"got {tuple(inputs.shape)}")
    _check_channels(targets, config, "targets")
    pred = model(inputs)
    return multi_output_loss(pred, targets.to(pred.dtype), kinds=config.loss_kinds, weights=config.loss_weights,
                             mask=mask, impl=impl)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: NetworkConfig,
    mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> float:
    """One optimisation step on a batch; returns the batch loss before the step.

    Parameters
    ----------
    model : UNet2d
        Put in training mode (dropout active).
    optimizer : torch.optim.Optimizer
    inputs : Tensor, (N, C_in, H, W)
        Normalised network inputs.
    targets : Tensor, (N, C_out, H, W)
        In network units (:func:`to_network_units`).
    config : NetworkConfig
        Loss kinds and weights per output.
    mask : Tensor, optional
        Voxels that count in the loss.
    impl : {"auto", "triton", "torch"}
        Implementation of the elementwise loss (:func:`mrfengine.nn.fused_loss`).

    Returns
    -------
    float
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(model, inputs, targets, config, mask, impl)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def evaluate_batch(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    config: NetworkConfig,
    mask: torch.Tensor | None = None,
) -> float:
    """The loss of a batch in evaluation mode (no dropout, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(_loss(model, inputs, targets, config, mask, "auto"))
    finally:
        model.train(was_training)


# ------------------------------------------------------------------ validation
def _pad_to(x: np.ndarray, multiple: int, fill: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return x
    out = np.empty(x.shape[:-2] + (h + ph, w + pw), dtype=x.dtype)
    out[...] = fill
    out[..., :h, :w] = x
    return out


def validate(
    model: torch.nn.Module,
    sampler: PatchSampler,
    *,
    device: torch.device | str = "cpu",
    autocast: bool = False,
) -> dict[str, float]:
    """Validation metrics on whole slices of ``sampler``'s split.

    The prediction is set to 0 outside the subject's brain mask, as the
    ``unet`` stage of ``mrfengine batch`` writes it.  Each validation
    subject's slices are stacked into a volume and compared with its training
    targets by :func:`mrfengine.metrics.evaluate_subject`, the function
    ``mrfengine evaluate`` and the demo use (one definition of every
    figure, at :data:`~mrfengine.metrics.LESION_THRESHOLD` and
    :data:`~mrfengine.metrics.TISSUE_THRESHOLD`; the reference lesion mask
    is the target ``>= REFERENCE_LESION_THRESHOLD``); the subjects' records
    are then pooled over the split as below.

    Returns
    -------
    dict
        For the outputs the network has (the columns of ``metrics.csv``):

        ``lesion_dice``
            At :data:`LESION_THRESHOLD`, *pooled* over all voxels of the
            split (one Dice of the split's summed overlap and volumes, not a
            mean of the subjects' Dice); NaN when neither prediction nor
            annotation has a lesion.
        ``lesion_detection_rate``
            The paper's rule (3D lesions of at least 10 voxels, detected by
            one voxel at :data:`LESION_THRESHOLD`), per subject, averaged over
            the subjects with lesions; NaN when none has one.
        ``NAWM_dice_slice_mean``, ``GM_dice_slice_mean``
            At :data:`TISSUE_THRESHOLD` (80%), the mean of the per-slice Dice
            over the slices of all subjects where either mask is non-empty
            (the paper's "mean dice coefficients along all subjects and
            slices"); named ``NAWM_dice`` and ``GM_dice`` in older checkpoints
            and cards (:data:`LEGACY_VALIDATION_KEYS`).
        ``T1_reldev``, ``T2star_reldev``
            Mean relative deviation inside the brain, pooled over the
            voxels of all subjects.
    """
    from ..metrics import evaluate_subject

    config = sampler.config
    names = config.output_names
    paths = sampler.target_paths
    fill = sampler.background()[:, None, None]
    by_subject: dict[str, list[int]] = {}
    for i, ref_slice in enumerate(sampler.slices):
        by_subject.setdefault(ref_slice.subject, []).append(i)
    records = []
    was_training = model.training
    model.eval()
    try:
        for sid, indices in by_subject.items():
            subject = sampler.cohort[sid]
            brain = subject.brain_mask
            pred, ref, inside = [], [], []
            for i in indices:
                z = sampler.slices[i].z
                x = sampler.normalised_input(i)
                h, w = x.shape[-2:]
                xin = torch.from_numpy(_pad_to(x, config.size_multiple, fill)[None]).to(device)
                with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                                     enabled=autocast):
                    out = model(xin)
                b = np.ones((h, w), bool) if brain is None else np.asarray(brain[z]) > 0
                pred.append(np.where(b, to_physical_units(out.float(), config)[0, :, :h, :w].cpu().numpy(), 0.0))
                ref.append([np.asarray(subject.array(p)[z], dtype=np.float32) for p in paths])
                inside.append(b)
            p_vol = np.stack(pred, axis=1).astype(np.float32)  # (outputs, Z, Y, X)
            r_vol = np.asarray(ref, dtype=np.float32).transpose(1, 0, 2, 3)
            dx, dy, dz = subject.voxel_size_mm
            records.append(evaluate_subject({n: p_vol[k] for k, n in enumerate(names)},
                                            {n: r_vol[k] for k, n in enumerate(names)},
                                            mask=np.stack(inside), voxel_size=(dz, dy, dx), slice_axis=0,
                                            extras=False))
    finally:
        model.train(was_training)
    return _pool_validation(records, names)


def _pool_validation(records: list[dict[str, Any]], names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The split's validation figures from the subjects' :func:`evaluate_subject` records (see :func:`validate`)."""
    from ..metrics.overlap import dice_from_counts

    nan = float("nan")
    metrics: dict[str, float] = {}
    if "lesion" in names:
        counts = [sum(r["lesion"][k] for r in records) for k in ("n_overlap_voxels", "n_pred_voxels", "n_ref_voxels")]
        metrics["lesion_dice"] = float(dice_from_counts(*counts))
        rates = [r["summary"]["lesion_detection_rate"] for r in records]
        rates = [v for v in rates if v is not None]
        metrics["lesion_detection_rate"] = float(np.mean(rates)) if rates else nan
    for n in ("NAWM", "GM"):
        if n in names:
            v = np.concatenate([np.asarray(r[n]["dice_per_slice"], dtype=np.float64) for r in records])
            metrics[f"{n}_dice_slice_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else nan
    for n in ("T1", "T2star"):
        if n in names:
            weights = np.array([r[n]["n_voxels"] for r in records], dtype=np.float64)
            values = np.array([r[n]["relative_deviation"] for r in records], dtype=np.float64)
            ok = weights > 0
            metrics[f"{n}_reldev"] = float(np.sum(values[ok] * weights[ok]) / weights[ok].sum()) if ok.any() else nan
    return metrics


#: Validation keys of earlier versions, as checkpoints and cards may hold them, and their names now.
LEGACY_VALIDATION_KEYS = {"NAWM_dice": "NAWM_dice_slice_mean", "GM_dice": "GM_dice_slice_mean"}


def upgrade_history_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A validation row (a checkpoint's or a card's history) with the keys of earlier
    versions renamed (:data:`LEGACY_VALIDATION_KEYS`); the figures are the same."""
    return {LEGACY_VALIDATION_KEYS.get(k, k): v for k, v in row.items()}


# ------------------------------------------------------------------ outputs
def _write_csv(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row.get(k), float)
                             else row.get(k)) for k in _CSV_FIELDS})
    atomic_write_bytes(path, buf.getvalue().encode())


def _write_plot(path: Path, history: list[dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax_loss, ax_overlap, ax_dev = fig.subplots(1, 3)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title=title)
    panels = (
        (ax_overlap, "validation overlap", 1.0,
         (("lesion_dice", f"lesion Dice @ {LESION_THRESHOLD:g}"),
          ("lesion_detection_rate", f"detection rate @ {LESION_THRESHOLD:g}"),
          ("NAWM_dice_slice_mean", f"NAWM Dice @ {TISSUE_THRESHOLD:g} (slice mean)"),
          ("GM_dice_slice_mean", f"GM Dice @ {TISSUE_THRESHOLD:g} (slice mean)"))),
        (ax_dev, "validation rel. deviation (%)", 100.0,
         (("T1_reldev", "T1"), ("T2star_reldev", "T2*"))),
    )
    for ax, ylabel, factor, series in panels:
        for key, label in series:
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else factor * v for v in values], "o-", label=label)
        ax.set(xlabel="epoch", ylabel=ylabel)
        if ax.lines:
            ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------ the loop
@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """torch.use_deterministic_algorithms for the run (warn only where an op
    has no deterministic kernel), restored afterwards."""
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, epoch, 7]).integers(0, 2**62))


def _training_sequence(cohort, subjects: list[str]):
    sites = Counter(cohort[s].site for s in subjects)
    site = sites.most_common(1)[0][0]
    digests = {s: cohort.sequence(s).digest() for s in sites}
    if len(set(digests.values())) > 1:
        log.info("training subjects come from sites with different sequences %s; the model card accepts each "
                 "(site %s's is its main one)", sorted(sites), site)
    return cohort.sequence(site), digests


def train(
    settings: TrainSettings,
    *,
    resume: bool = False,
    progress: Callable[[Any, int, str], Any] | None = None,
) -> TrainResult:
    """Train, validate, checkpoint and export one network.

    Parameters
    ----------
    settings : TrainSettings
    resume : bool
        Continue from ``output_dir/checkpoint.pt`` (the settings must be the
        same apart from ``epochs``).  Without it an existing checkpoint is
        refused.
    progress : callable, optional
        ``progress(iterable, total, description)`` wrapping the batches of an
        epoch (the CLI passes a tqdm bar).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValidationError
        Bad settings, no training or validation subject, a checkpoint in the
        way (or missing, with ``resume``), or one from other settings.
    """
    from ..io import Cohort
    from .artifact import save_model
    from .card import read_card

    out = Path(settings.output_dir)
    _check_output_dir(out)
    ckpt_path = out / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise ValidationError(f"{ckpt_path} exists: pass resume (--resume) to continue that run, or choose another "
                              "output_dir")
    if resume and not ckpt_path.exists():
        raise ValidationError(f"cannot resume: {ckpt_path} not found")
    device = _device(settings.device)
    config = settings.network_config()
    # the starting network is checked (card, hash, format, weights) before any other work
    initial = _initial_model(settings, config) if settings.init_model and not resume else None
    if settings.threads:
        torch.set_num_threads(settings.threads)
    cohort = Cohort.open(settings.cohort)
    if ((cohort.generator or {}).get("config") or {}).get("held_apart"):
        raise ValidationError(f"{settings.cohort}: a held-apart cohort (preset heldout) is for 'mrfengine evaluate' "
                              "only; training on it, or choosing epochs by it, would void its figures")
    train_subjects = cohort.subjects_in("train")
    if not train_subjects:
        raise ValidationError(f"{settings.cohort}: no subject in the 'train' split")
    if not cohort.subjects_in("validation"):
        raise ValidationError(f"{settings.cohort}: no subject in the 'validation' split")
    # every target of every subject read (derived tissue maps above all) is there before any work
    check_target_arrays(cohort, config, [*train_subjects, *cohort.subjects_in("validation")],
                        map_source=settings.map_source, tissue_targets=settings.tissue_targets)

    with _deterministic():
        model = config.build(seed=settings.seed).to(device)
        if initial is not None:
            model.load_state_dict(initial.module.state_dict())
        # the starting network's card goes into this run's record; read it now, so that a
        # resumed run whose init_model has gone fails at once rather than after its epochs
        origin = _origin_record(initial.card if initial is not None else read_card(settings.init_model)) \
            if settings.init_model else None
        optimizer = make_optimizer(model, config)
        history: list[dict[str, float]] = []
        start_epoch = 0
        if resume:
            ckpt = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, restore_rng=False,
                                   map_location=device)
            stored = dict(ckpt.extra.get("settings", {}))
            now = settings.to_dict()
            # A checkpoint from before a setting existed ran with its default.
            defaults = {f.name: f.default for f in fields(TrainSettings)}
            diff = sorted(k for k in now if k not in ("epochs", "output_dir", "cohort", "device", "threads",
                                                      "trust_model_code")
                          and stored.get(k, defaults.get(k)) != now[k])
            if diff:
                changes = ", ".join(f"{k}: {stored.get(k, defaults.get(k))!r} there, {now[k]!r} now" for k in diff)
                raise ValidationError(f"{ckpt_path} was written with other settings ({changes}); "
                                      "only epochs may change on resume")
            normalisation = ckpt.normalisation
            if normalisation.scale_free != (settings.input_scale == "subject") and config.input_kind == "mrf":
                raise ValidationError(f"{ckpt_path} was trained with input_scale = "
                                      f"{'subject' if normalisation.scale_free else 'absolute'}; only epochs may "
                                      "change on resume")
            history = [upgrade_history_row(h) for h in ckpt.extra.get("history", [])]
            start_epoch = ckpt.epoch
            log.info("resuming %s after epoch %d", config.name, start_epoch)
        else:
            scale_free = settings.input_scale == "subject" and config.input_kind == "mrf"
            if initial is not None:  # its normalisation, rescaled inputs from now on if asked
                normalisation = initial.card.normalisation
                if scale_free != normalisation.scale_free:
                    normalisation = normalisation.with_subject_level(
                        normalisation.reference_level if scale_free else None)
            else:
                normalisation = fit_cohort_normalisation(cohort, config, split="train", map_source=settings.map_source,
                                                         scale_free=scale_free)
        common = dict(seed=settings.seed, map_source=settings.map_source, tissue_targets=settings.tissue_targets)
        train_sampler = PatchSampler(cohort, config, normalisation, split="train",
                                     lesion_centring=settings.lesion_centring,
                                     patch_centring=settings.patch_centring, **common)
        val_sampler = PatchSampler(cohort, config, normalisation, split="validation", augment=False, **common)
        step_model: torch.nn.Module = model
        if settings.compile:
            step_model = torch.compile(model)
        out.mkdir(parents=True, exist_ok=True)
        amp = torch.autocast(device.type, dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext()
        for epoch in range(start_epoch, settings.epochs):
            torch.manual_seed(_epoch_seed(settings.seed, epoch))
            batches = train_sampler.batches(epoch, settings.batch_size)
            n = train_sampler.n_batches(settings.batch_size)
            if progress is not None:
                batches = progress(batches, n, f"epoch {epoch + 1}/{settings.epochs}")
            total = 0.0
            for x, y in batches:
                with amp:
                    try:
                        loss = train_step(step_model, optimizer, x.to(device), y.to(device), config=config)
                    except ValidationError as exc:
                        if _finite_weights(model):
                            raise
                        raise _diverged(settings, epoch) from exc  # the loss refused the network's non-finite output
                if not math.isfinite(loss):
                    raise _diverged(settings, epoch)
                total += loss
            row: dict[str, float] = {"epoch": epoch + 1, "train_loss": total / n}
            row.update(validate(model, val_sampler, device=device, autocast=settings.bf16))
            history.append(row)
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, epoch=epoch + 1, config=config,
                            normalisation=normalisation,
                            extra={"settings": _plain(settings.to_dict()), "history": [_plain(h) for h in history]})
            _write_csv(out / METRICS_CSV, history)
            _write_plot(out / METRICS_PNG, history, config.name)

    sequence, digests = _training_sequence(cohort, train_subjects)
    final = {k: v for k, v in (history[-1] if history else {}).items() if k != "epoch"}
    metrics = {"validation": {k: _json_number(v) for k, v in final.items()},
               "epochs": len(history), "seed": settings.seed, "training_site_sequences": digests,
               "lesion_threshold": LESION_THRESHOLD, "training_run": _training_record(settings, history, origin)}
    model_path = out / MODEL_NAME
    save_model(model.cpu(), model_path, config=config, normalisation=normalisation,
               sequence=sequence if config.input_kind == "mrf" else None, cohort_hash=cohort_hash(cohort),
               training_sequences=[cohort.sequence(site) for site in sorted(digests)]
               if config.input_kind == "mrf" else (),
               metrics=metrics, tissue_targets=settings.tissue_targets)
    return TrainResult(out, model_path, ckpt_path, out / METRICS_CSV, out / METRICS_PNG, tuple(history))


def _initial_model(settings: TrainSettings, config: NetworkConfig):
    """The saved network ``init_model`` to start from; its configuration must be the run's."""
    from .artifact import load_model

    loaded = load_model(settings.init_model, trust_model_code=settings.trust_model_code)
    got, want = loaded.card.config, config
    same = (got.name, got.in_channels, got.out_channels, got.depth, got.base_filters, got.output_names) == \
        (want.name, want.in_channels, want.out_channels, want.depth, want.base_filters, want.output_names)
    if not same:
        raise ValidationError(f"{settings.init_model}: network {got.name} (depth {got.depth}, {got.base_filters} "
                              f"filters) cannot start a run of {want.name} (depth {want.depth}, {want.base_filters} "
                              "filters)")
    log.info("starting from the weights and normalisation of %s", settings.init_model)
    return loaded


def _check_output_dir(out: Path) -> None:
    """Refuse an ``output_dir`` that is a file, or lies under one, before any work."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "is" if p == out else f"lies under {p}, which is"
                raise ValidationError(f"output_dir {out} {where} an existing file, not a folder; choose another "
                                      "output_dir")
            return


def _finite_weights(model: torch.nn.Module) -> bool:
    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _diverged(settings: TrainSettings, epoch: int) -> ValidationError:
    return ValidationError(
        f"training diverged in epoch {epoch + 1}: the loss or the network's weights became non-finite; "
        f"learning_rate = {settings.learning_rate:g} is likely too high (the paper's is 1e-4), or the cohort's "
        "training data hold non-finite values")


def _json_number(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _origin_record(card) -> dict[str, Any]:
    """What a run started from ``init_model`` records of that network: its SHA-256 and its own record."""
    return {"sha256": card.artifact_sha256, "epochs": card.metrics.get("epochs"),
            "validation": card.metrics.get("validation"), "training_run": card.metrics.get("training_run")}


def _training_record(settings: TrainSettings, history: list[dict[str, float]],
                     origin: dict[str, Any] | None) -> dict[str, Any]:
    """How the network was trained, for its card: the settings (file names, not
    this machine's paths), the per-epoch validation history and, for a run
    started from ``init_model``, :func:`_origin_record` of that network, so a
    card carries its whole training lineage."""
    record: dict[str, Any] = {k: v for k, v in settings.to_dict().items()
                              if k not in ("output_dir", "device", "trust_model_code")}
    record["cohort"] = Path(settings.cohort).name
    record["history"] = [{k: _json_number(v) for k, v in h.items()} for h in history]
    if origin is not None:
        record["init_model"] = Path(settings.init_model).name
        record["initialised_from"] = origin
    return record


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Only what ``torch.load(weights_only=True)`` reads: numbers, strings, None
    and tables of them (``loss_weights``); anything else as its string."""
    return {k: (v if v is None or isinstance(v, (bool, int, float, str)) else
                _plain(v) if isinstance(v, Mapping) else str(v)) for k, v in d.items()}
