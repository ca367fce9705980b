"""Network configurations: the architecture, its outputs and their losses.

The eight networks of Table 1 of Hermann et al. (2021) are named
configurations (:data:`CONFIGS`, :func:`get_config`)::

    name      loss  inputs              outputs
    MSE-5     MSE   35 MRF frames       T1, T2*, NAWM, GM, lesion
    MAE-5     MAE   35 MRF frames       T1, T2*, NAWM, GM, lesion
    LCL-5     LCL   35 MRF frames       T1, T2*, NAWM, GM, lesion
    MSE-1     MSE   35 MRF frames       lesion
    MAE-1     MAE   35 MRF frames       lesion
    LCL-1     LCL   35 MRF frames       lesion
    DICE-1    Dice  35 MRF frames       lesion
    MSE-2-1   MSE   T1 and T2* maps     lesion

All share the paper's U-net (depth 4, 32 filters, dropout 0.5) and training
settings (Adam, learning rate 1e-4, batch 64, 100 epochs, 64 random 64x64
patches per slice, slices with lesions oversampled five times).

Target scaling
--------------
The network regresses scaled targets so that every output is of order one
and no channel dominates a summed loss: ``value = output * scale`` in the
output's unit.  T1 is learnt in seconds (scale 1000 ms), T2* in units of
100 ms (scale 100 ms: white matter 0.53, grey matter 0.66), probabilities as
they are (scale 1).  Dice outputs are logits: their probability is
``sigmoid(output)`` (the Dice loss applies the same sigmoid); every other
output has no activation, as in the paper.

References
----------
Hermann I, et al. Lesion probability mapping in MS patients using a regression
network on MR fingerprinting. BMC Med Imaging 2021;21:107, Table 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .._validate import check_int
from ..errors import ValidationError
from ..maps import NETWORK_MAPS

if TYPE_CHECKING:  # keep torch out of the import of this module
    from .unet import UNet2d

__all__ = [
    "LOSS_KINDS",
    "ELEMENTWISE_LOSSES",
    "INPUT_KINDS",
    "OutputSpec",
    "NetworkConfig",
    "CONFIGS",
    "get_config",
    "paper_outputs",
]

#: Every loss a configuration may name; the first three are elementwise
#: (fused in :func:`mrfengine.nn.fused_loss`), Dice is a region loss.
LOSS_KINDS = ("mse", "mae", "lcl", "dice")
ELEMENTWISE_LOSSES = ("mse", "mae", "lcl")
#: ``mrf``: the magnitude images of the MRF series, one channel per frame;
#: ``maps``: quantitative maps (MSE-2-1 takes T1 and T2*).
INPUT_KINDS = ("mrf", "maps")
ACTIVATIONS = ("none", "sigmoid")


@dataclass(frozen=True)
class OutputSpec:
    """One output map of a network.

    Attributes
    ----------
    name : str
        ``T1``, ``T2star``, ``NAWM``, ``GM`` or ``lesion`` for the paper's
        networks (any identifier is allowed).
    unit : str
        Unit of ``output * scale``: ``ms`` for times, ``1`` for probabilities.
    scale : float
        Physical value = network output (after ``activation``) x ``scale``.
    loss : str
        One of :data:`LOSS_KINDS`.
    weight : float
        Weight of this output in the summed loss (>= 0; the weights are
        normalised by their sum).
    activation : str
        ``none`` or ``sigmoid`` (required for, and only for, the Dice loss).
    target : str
        Where the training target lives in a subject of the cohort store
        (e.g. ``truth/T1``, ``annotations/lesion``): the sampler reads it.
    description : str
        For model cards and sidecars.
    """

    name: str
    unit: str
    scale: float
    loss: str
    weight: float = 1.0
    activation: str = "none"
    target: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValidationError(f"output name must be an identifier such as 'T1'; got {self.name!r}")
        if self.loss not in LOSS_KINDS:
            raise ValidationError(f"output {self.name}: loss must be one of {LOSS_KINDS}; got {self.loss!r}")
        if self.activation not in ACTIVATIONS:
            raise ValidationError(f"output {self.name}: activation must be one of {ACTIVATIONS}; "
                                  f"got {self.activation!r}")
        if (self.loss == "dice") != (self.activation == "sigmoid"):
            raise ValidationError(f"output {self.name}: the Dice loss needs activation 'sigmoid' (its output is a "
                                  f"logit) and other losses 'none'; got loss {self.loss!r} with activation "
                                  f"{self.activation!r}")
        for key in ("scale", "weight"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValidationError(f"output {self.name}: {key} must be a finite number; got {value!r}")
        if not self.scale > 0:
            raise ValidationError(f"output {self.name}: scale must be positive; got {self.scale!r}")
        if not self.weight >= 0:
            raise ValidationError(f"output {self.name}: weight must be >= 0; got {self.weight!r}")


def paper_outputs(loss: str, *, lesion_only: bool = False) -> tuple[OutputSpec, ...]:
    """The paper's five outputs (or its lesion output alone), all with ``loss``.

    T1 and T2* targets are the reference maps of the cohort (``truth/``); the
    NAWM and GM probabilities its tissue fractions (``truth/WM`` is the
    normal-appearing white matter, lesions excluded); the lesion target the
    manual annotation (``annotations/lesion``), as in the paper.
    """
    activation = "sigmoid" if loss == "dice" else "none"

    def output(name: str, scale: float, target: str, **kw: Any) -> OutputSpec:
        spec = NETWORK_MAPS[name]  # unit and description from the one map registry
        return OutputSpec(name, spec.unit, scale, loss, target=target, description=spec.description, **kw)

    lesion = output("lesion", 1.0, "annotations/lesion", activation=activation)
    if lesion_only:
        return (lesion,)
    return (
        output("T1", 1000.0, "truth/T1"),
        output("T2star", 100.0, "truth/T2star"),
        output("NAWM", 1.0, "truth/WM"),
        output("GM", 1.0, "truth/GM"),
        lesion,
    )


@dataclass(frozen=True)
class NetworkConfig:
    """A network: architecture, inputs, outputs with their losses, training settings.

    Attributes
    ----------
    name : str
        E.g. ``MSE-5``.
    input_kind : str
        ``mrf`` (magnitude frames of the MRF series) or ``maps``.
    in_channels : int
        35 for the paper's MRF-EPI series; 2 for MSE-2-1.
    input_names : tuple of str
        For ``maps`` inputs the map of each channel (``("T1", "T2star")``,
        in ms); empty for ``mrf`` (channel k is frame k).
    outputs : tuple of OutputSpec
        One per output channel, in channel order.
    depth, base_filters, dropout, up_relu
        The U-net (:class:`mrfengine.nn.UNet2d`).
    learning_rate, batch_size, epochs, patch_size, patches_per_slice, lesion_oversampling
        Training settings of the paper (Adam).

    Raises
    ------
    ValidationError
        On inconsistent fields (unknown input kind, channel counts, duplicate
        output names, all loss weights zero, ...).
    """

    name: str
    outputs: tuple[OutputSpec, ...]
    input_kind: str = "mrf"
    in_channels: int = 35
    input_names: tuple[str, ...] = ()
    depth: int = 4
    base_filters: int = 32
    dropout: float = 0.5
    up_relu: bool = True
    learning_rate: float = 1e-4
    batch_size: int = 64
    epochs: int = 100
    patch_size: int = 64
    patches_per_slice: int = 64
    lesion_oversampling: int = 5
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValidationError(f"config name must be a non-empty string; got {self.name!r}")
        if self.input_kind not in INPUT_KINDS:
            raise ValidationError(f"{self.name}: input_kind must be one of {INPUT_KINDS}; got {self.input_kind!r}")
        for key in ("in_channels", "depth", "base_filters", "batch_size", "epochs", "patch_size", "patches_per_slice",
                    "lesion_oversampling"):
            check_int(getattr(self, key), f"{self.name}: {key}")
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "input_names", tuple(self.input_names))
        if not self.outputs or not all(isinstance(o, OutputSpec) for o in self.outputs):
            raise ValidationError(f"{self.name}: outputs must be a non-empty sequence of OutputSpec; "
                                  f"got {self.outputs!r}")
        names = [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise ValidationError(f"{self.name}: output names must be unique; got {names}")
        if sum(o.weight for o in self.outputs) <= 0:
            raise ValidationError(f"{self.name}: at least one output needs a positive loss weight")
        if self.input_kind == "maps" and len(self.input_names) != self.in_channels:
            raise ValidationError(f"{self.name}: a 'maps' network names each of its {self.in_channels} input maps; "
                                  f"got input_names {self.input_names}")
        if self.input_kind == "mrf" and self.input_names:
            raise ValidationError(f"{self.name}: an 'mrf' network takes frames, not named maps; got {self.input_names}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValidationError(f"{self.name}: dropout must be in [0, 1); got {self.dropout!r}")
        if self.patch_size % 2**self.depth:
            raise ValidationError(f"{self.name}: patch_size must be a multiple of 2**depth = {2**self.depth}; "
                                  f"got {self.patch_size}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValidationError(f"{self.name}: learning_rate must be positive; got {self.learning_rate!r}")

    # ----------------------------------------------------------------- views
    @property
    def out_channels(self) -> int:
        return len(self.outputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def loss_kinds(self) -> tuple[str, ...]:
        return tuple(o.loss for o in self.outputs)

    @property
    def loss_weights(self) -> tuple[float, ...]:
        return tuple(float(o.weight) for o in self.outputs)

    @property
    def size_multiple(self) -> int:
        """In-plane sizes the network accepts are multiples of this."""
        return 2**self.depth

    def build(self, *, seed: int = 0) -> UNet2d:
        """A freshly initialised :class:`~mrfengine.nn.UNet2d` (He weights from ``seed``)."""
        from .unet import UNet2d, init_weights

        net = UNet2d(self.in_channels, self.out_channels, depth=self.depth, base_filters=self.base_filters,
                     dropout=self.dropout, up_relu=self.up_relu)
        return init_weights(net, seed=seed)

    def with_architecture(self, *, depth: int | None = None, base_filters: int | None = None) -> NetworkConfig:
        """The same configuration with another depth or filter count (tests use tiny ones)."""
        patch = self.patch_size
        new_depth = self.depth if depth is None else depth
        if patch % 2**new_depth:
            patch = 2**new_depth * max(1, patch // 2**new_depth)
        return replace(self, depth=new_depth, base_filters=self.base_filters if base_filters is None else base_filters,
                       patch_size=patch)

    # ------------------------------------------------------------- JSON I/O
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible description (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["input_names"] = list(self.input_names)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build from :meth:`to_dict` output; raises ValidationError on unknown or missing fields."""
        if not isinstance(data, dict):
            raise ValidationError(f"a network configuration must be a mapping; got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"unknown network configuration fields {unknown}; expected some of {sorted(known)}")
        if "name" not in data or "outputs" not in data:
            raise ValidationError("a network configuration needs at least 'name' and 'outputs'")
        d = dict(data)
        out_known = set(OutputSpec.__dataclass_fields__)
        outputs = []
        for o in d["outputs"]:
            if not isinstance(o, dict) or set(o) - out_known:
                raise ValidationError(f"{d['name']}: each output must be a mapping with fields from "
                                      f"{sorted(out_known)}; got {o!r}")
            try:
                outputs.append(OutputSpec(**o))
            except TypeError as exc:
                raise ValidationError(f"{d['name']}: malformed output {o!r}: {exc}") from exc
        d["outputs"] = tuple(outputs)
        d["input_names"] = tuple(d.get("input_names", ()))
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValidationError(f"malformed network configuration {d.get('name')!r}: {exc}") from exc


def _paper(name: str, loss: str, *, lesion_only: bool, maps_input: bool = False, description: str) -> NetworkConfig:
    if maps_input:
        return NetworkConfig(name, paper_outputs(loss, lesion_only=lesion_only), input_kind="maps", in_channels=2,
                             input_names=("T1", "T2star"), description=description)
    return NetworkConfig(name, paper_outputs(loss, lesion_only=lesion_only), description=description)


#: Table 1 of the paper, by name.
CONFIGS: dict[str, NetworkConfig] = {
    c.name: c
    for c in (
        _paper("MSE-5", "mse", lesion_only=False,
               description="Network 1: MSE, 35 MRF frames -> 5 maps (the paper's best)"),
        _paper("MAE-5", "mae", lesion_only=False, description="Network 2: MAE, 35 MRF frames -> 5 maps"),
        _paper("LCL-5", "lcl", lesion_only=False, description="Network 3: log-cosh, 35 MRF frames -> 5 maps"),
        _paper("MSE-1", "mse", lesion_only=True, description="Network 4: MSE, 35 MRF frames -> lesion"),
        _paper("MAE-1", "mae", lesion_only=True, description="Network 5: MAE, 35 MRF frames -> lesion"),
        _paper("LCL-1", "lcl", lesion_only=True, description="Network 6: log-cosh, 35 MRF frames -> lesion"),
        _paper("DICE-1", "dice", lesion_only=True, description="Network 7: soft Dice, 35 MRF frames -> lesion"),
        _paper("MSE-2-1", "mse", lesion_only=True, maps_input=True,
               description="Network 8: MSE, T1 and T2* maps -> lesion (conventional comparison)"),
    )
}


def get_config(name: str) -> NetworkConfig:
    """The named configuration of Table 1 (case-insensitive), e.g. ``get_config("MSE-5")``.

    Raises
    ------
    ValidationError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(name, str):
        for key, config in CONFIGS.items():
            if key.lower() == name.strip().lower():
                return config
    raise ValidationError(f"unknown network configuration {name!r}; known: {', '.join(CONFIGS)}")
