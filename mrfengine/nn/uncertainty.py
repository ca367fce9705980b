"""Monte-Carlo dropout: a per-voxel uncertainty map for every network output.

The paper's U-net has dropout 0.5 after its deepest encoder level and after
its bridge (:class:`~mrfengine.nn.UNet2d`); dropout is a training-time device
that inference switches off.  Gal and Ghahramani (2016) showed that keeping
it on at test time samples from an approximate posterior of the network's
weights: the spread of ``N`` such stochastic passes is a measure of the
network's (epistemic) uncertainty at each voxel.

How it runs here (:func:`mrfengine.nn.run_network` with ``mc_samples=N``):

* every module stays in eval mode; forward hooks on the dropout modules
  (``nn.Dropout`` element-wise, ``nn.Dropout1d/2d/3d`` channel-wise) apply a
  dropout mask, scaled by ``1 / (1 - p)`` as training does, during the
  stochastic passes only, so nothing else (a batch norm, were there one)
  changes behaviour;
* each slice's mask is drawn from its own ``torch.Generator`` seeded from
  ``(seed, pass, slice index, call)``: the result is reproducible for a seed,
  independent of ``batch_size``, and the global random state is untouched;
* each pass goes through the same padding, test-time augmentation,
  precision, output activation, conversion to physical units and clipping to
  :data:`~mrfengine.nn.inference.OUTPUT_RANGES` as the maps, so the standard
  deviation is of the quantity a user reads, in its units (ms for T1 and T2*,
  probability for the tissue outputs; a clipped probability's SD is at most
  0.5);
* the passes are folded into running float64 sums per batch of slices
  (Welford's algorithm): memory is one batch's worth, never ``N`` volumes;
* the maps themselves stay the deterministic pass (dropout off): asking for
  uncertainty never changes them.

The map is the population standard deviation over the passes (``ddof=0``,
the predictive spread of Gal and Ghahramani); ``N >= 2``.  Cost: ``N`` more
forward passes (times the test-time augmentation's transforms), see
``benchmarks/bench_uncertainty.py``.

References
----------
Gal Y, Ghahramani Z. Dropout as a Bayesian approximation: representing model
uncertainty in deep learning. ICML 2016, PMLR 48:1050-1059.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..errors import ValidationError

__all__ = ["MC_SEED", "MCDropout", "RunningMoments", "check_mc_samples", "check_mc_seed", "dropout_modules", "uncertainty_fields"]

MC_SEED = 0
"""Default seed of the dropout masks."""

_ELEMENTWISE = (nn.Dropout,)
_CHANNELWISE = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def check_mc_samples(value: object, *, what: str = "mc_samples") -> int:
    """``value`` as the number of stochastic passes: 0 (off) or an integer >= 2.

    Raises
    ------
    ValidationError
        On anything else (a bool, a float, 1, a negative number).
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (value != 0 and value < 2):
        raise ValidationError(f"{what} must be 0 (off) or an integer >= 2 (stochastic passes); got {value!r}")
    return int(value)


def check_mc_seed(value: object) -> int:
    """``value`` as a Monte-Carlo dropout seed: a non-negative integer (ValidationError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValidationError(f"mc_seed must be a non-negative integer; got {value!r}")
    return int(value)


def dropout_modules(module: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``module`` in forward-registration order.

    Raises
    ------
    ValidationError
        For a TorchScript module (its dropout cannot be hooked; resave the
        model as a state dict with :func:`mrfengine.nn.artifact.resave_model`) or
        an unsupported dropout kind (``AlphaDropout``).
    """
    if isinstance(module, torch.jit.ScriptModule):
        raise ValidationError("Monte-Carlo dropout needs the network as an nn.Module; this one is TorchScript: "
                              "resave it as a state dict (mrfengine.nn.artifact.resave_model, format='state_dict')")
    found = []
    for m in module.modules():
        if isinstance(m, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
            raise ValidationError(f"Monte-Carlo dropout does not handle {type(m).__name__}")
        if isinstance(m, _ELEMENTWISE + _CHANNELWISE):
            found.append(m)
    return found


class MCDropout:
    """Seeded dropout masks for the stochastic passes of a module (a context manager).

    Parameters
    ----------
    module : nn.Module
        The network; its dropout modules get forward hooks while the context
        is open (removed on exit).  It stays in eval mode.
    seed : int
        Seed of every mask (:data:`MC_SEED` by default).

    Use :meth:`sample` around each stochastic forward pass::

        with MCDropout(net, seed=0) as mc:
            y0 = net(x)                                  # deterministic
            with mc.sample(pass_index=0, slices=[4, 5]):
                y1 = net(x)                              # dropout on

    Outside :meth:`sample` the hooks do nothing.
    """

    def __init__(self, module: nn.Module, *, seed: int = MC_SEED) -> None:
        self.seed = check_mc_seed(seed)
        self.modules = dropout_modules(module)
        self.p = [float(m.p) for m in self.modules]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._state: tuple[int, tuple[int, ...]] | None = None
        self._calls = 0

    @property
    def active(self) -> bool:
        """Whether any dropout module drops anything (p > 0)."""
        return any(p > 0 for p in self.p)

    def __enter__(self) -> MCDropout:
        for index, m in enumerate(self.modules):
            self._handles.append(m.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._state = None

    @contextmanager
    def sample(self, pass_index: int, slices: list[int] | tuple[int, ...]) -> Iterator[None]:
        """Dropout on for the forward passes inside: pass ``pass_index`` of the
        batch holding slices ``slices`` (their indices in the volume, in batch order)."""
        self._state = (int(pass_index), tuple(int(z) for z in slices))
        self._calls = 0
        try:
            yield
        finally:
            self._state = None

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self._state is None:
            return None
        p = float(module.p)
        call = self._calls
        self._calls += 1
        if p <= 0:
            return None
        pass_index, slices = self._state
        if len(slices) != output.shape[0]:
            raise RuntimeError(f"MCDropout: a batch of {output.shape[0]} for {len(slices)} slice indices")
        channelwise = isinstance(module, _CHANNELWISE)
        shape = tuple(output.shape[1:2]) + (1,) * (output.dim() - 2) if channelwise else tuple(output.shape[1:])
        keep = 1.0 - p
        gen = torch.Generator(device=output.device)
        masks = []
        for z in slices:
            state = np.random.SeedSequence([self.seed, pass_index, z, call]).generate_state(1, np.uint64)[0]
            gen.manual_seed(int(state))
            masks.append(torch.rand(shape, generator=gen, device=output.device) < keep)
        mask = torch.stack(masks).to(output.dtype) * (1.0 / keep)
        return output * mask


class RunningMoments:
    """Mean and standard deviation of a stream of equal-shaped arrays (Welford, float64).

    ``update(x)`` folds one sample in; :meth:`std` gives the population
    standard deviation (``ddof=0``) of the samples so far.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.count += 1
        if self.mean is None:
            self.mean = x.copy()
            self._m2 = np.zeros_like(self.mean)
            return
        delta = x - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (x - self.mean)

    def std(self, ddof: int = 0) -> np.ndarray:
        if self._m2 is None or self.count <= ddof:
            raise ValidationError("RunningMoments: not enough samples")
        return np.sqrt(np.maximum(self._m2 / (self.count - ddof), 0.0))


def uncertainty_fields(samples: int, seed: int | None, module: nn.Module | None = None) -> dict[str, object]:
    """What an uncertainty map is, for a JSON sidecar or a stage's provenance."""
    fields: dict[str, object] = {
        "Method": "Monte-Carlo dropout (Gal and Ghahramani 2016): dropout on, every other module in eval mode",
        "MonteCarloSamples": int(samples),
        "MonteCarloSeed": seed,
        "Statistic": "population standard deviation (ddof=0) over the passes, in the output's units, after the "
                     "output activation, the conversion to physical units and the clipping to the physical range",
        "MapsFrom": "the deterministic pass (dropout off); the uncertainty never changes the maps",
    }
    if module is not None:
        fields["DropoutProbabilities"] = [float(m.p) for m in dropout_modules(module)]
    return fields
