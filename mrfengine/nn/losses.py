"""Training losses: MSE, MAE, log-cosh (LCL) and soft Dice, per output channel.

These are the readable torch references.  The elementwise losses of several
output channels at once (each channel its own kind and weight, an optional
mask) also have a fused Triton kernel (:mod:`mrfengine.nn._triton_loss`),
which :func:`fused_loss` uses for CUDA tensors; the tests hold it to
:func:`reference_fused_loss`.

Conventions
-----------
* ``pred`` and ``target`` are (N, C, *spatial); channel ``c`` has loss kind
  ``kinds[c]`` and weight ``weights[c]`` (>= 0, normalised by their sum).
* The loss of one elementwise channel is the (masked) mean over the batch
  and the spatial axes; the total is the weighted mean over channels::

      L = sum_c w_c / sum(w) * sum_{n,s} m[n,c,s] l_c(p - t) / sum_{n,s} m[n,c,s]

  With unit weights and no mask this is the plain elementwise mean (what
  ``torch.nn.functional.mse_loss`` returns for all-MSE channels).  A channel
  whose mask is empty contributes 0.
* Half-precision inputs are computed in float32 and the loss returned in
  float32 (as autocast does for losses); float64 stays float64.
* Log-cosh: ``log(cosh(x)) = |x| + log1p(exp(-2|x|)) - log(2)`` never
  overflows, but for ``|x| << 1`` its terms cancel (relative error ~1e-7 /
  x**2).  Below ``|x| = 0.25`` the Taylor polynomial ``x^2/2 - x^4/12 +
  x^6/45 - 17x^8/2520 + 31x^10/14175 - 691x^12/935550`` is used instead
  (truncation error under 1e-10 relative there), so the loss and its
  gradient (tanh) are accurate everywhere.  The authors' code ran a Huber loss under this name by
  mistake; this is the log-cosh loss itself.
* Soft Dice (Milletari et al. 2016) of channel c over the batch and the
  spatial axes: ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with
  ``p = sigmoid(output)`` (a Dice output is a logit) and smoothing ``s``.

References
----------
Hermann I, et al. BMC Med Imaging 2021;21:107 (the losses of Table 1).
Milletari F, Navab N, Ahmadi S-A. V-Net: fully convolutional neural networks
for volumetric medical image segmentation. 3DV 2016:565-571.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ValidationError
from .configs import ELEMENTWISE_LOSSES, LOSS_KINDS

__all__ = [
    "LOG_COSH_SWITCH",
    "log_cosh",
    "elementwise_loss",
    "reference_fused_loss",
    "soft_dice_loss",
    "multi_output_loss",
    "parse_loss_inputs",
]

#: Below this |x| log-cosh uses its Taylor polynomial (see the module docstring).
LOG_COSH_SWITCH = 0.25
_LN2 = math.log(2.0)
# log(cosh(x)) = sum_k LOGCOSH_COEF[k] * x**(2k+2) for small x
LOGCOSH_COEF = (1.0 / 2.0, -1.0 / 12.0, 1.0 / 45.0, -17.0 / 2520.0, 31.0 / 14175.0, -691.0 / 935550.0)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def log_cosh(x: torch.Tensor) -> torch.Tensor:
    """``log(cosh(x))`` elementwise, accurate for all finite ``x`` (see the module docstring)."""
    a = x.abs()
    large = a + torch.log1p(torch.exp(-2.0 * a)) - _LN2
    # The polynomial sees a clamped argument, so its (unused) values for large
    # |x| stay finite and torch.where routes no NaN into the gradient.
    s = torch.clamp(a, max=LOG_COSH_SWITCH)
    s2 = s * s
    small = torch.zeros_like(s2)
    for coef in reversed(LOGCOSH_COEF):  # Horner in x**2
        small = small * s2 + coef
    small = small * s2
    return torch.where(a < LOG_COSH_SWITCH, small, large)


def elementwise_loss(diff: torch.Tensor, kind: str) -> torch.Tensor:
    """The pointwise loss of ``diff = pred - target``: ``mse`` (x^2), ``mae`` (|x|) or ``lcl`` (log cosh x)."""
    if kind == "mse":
        return diff * diff
    if kind == "mae":
        return diff.abs()
    if kind == "lcl":
        return log_cosh(diff)
    raise ValidationError(f"elementwise loss kind must be one of {ELEMENTWISE_LOSSES}; got {kind!r}")


def parse_loss_inputs(
    pred: torch.Tensor,
    target: torch.Tensor,
    kinds: Sequence[str],
    weights: Sequence[float] | None,
    mask: torch.Tensor | None,
    *,
    allowed: Sequence[str] = LOSS_KINDS,
) -> tuple[tuple[str, ...], tuple[float, ...], torch.Tensor | None]:
    """Check the arguments of a multi-output loss; return kinds, normalised
    weights (summing to 1) and the mask as (N, 1 or C, *spatial) in float32
    (float64 for float64 predictions), or None.

    Raises
    ------
    ValidationError
        On mismatched shapes or dtypes, unknown kinds, negative or all-zero
        weights, or a mask of the wrong shape.
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise ValidationError(f"pred and target must be torch tensors; got {type(pred).__name__} and "
                              f"{type(target).__name__}")
    if pred.dim() < 2:
        raise ValidationError(f"pred must be (N, C, *spatial); got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValidationError(f"target must have the shape of pred {tuple(pred.shape)}; got {tuple(target.shape)}")
    if not pred.is_floating_point() or target.dtype != pred.dtype:
        raise ValidationError(f"pred and target must be floating point of one dtype; "
                              f"got {pred.dtype} and {target.dtype}")
    if target.device != pred.device:
        raise ValidationError(f"pred and target must be on one device; got {pred.device} and {target.device}")
    n_channels = pred.shape[1]
    kinds = (kinds,) * n_channels if isinstance(kinds, str) else tuple(kinds)
    if len(kinds) != n_channels or any(k not in allowed for k in kinds):
        raise ValidationError(f"kinds must name one loss of {tuple(allowed)} per channel ({n_channels}); got {kinds}")
    if weights is None:
        w = (1.0,) * n_channels
    else:
        w = tuple(float(v) for v in weights)
        if len(w) != n_channels:
            raise ValidationError(f"weights must hold one number per channel ({n_channels}); got {len(w)}")
    if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
        raise ValidationError(f"weights must be finite, >= 0 and not all zero; got {w}")
    total = sum(w)
    w = tuple(v / total for v in w)
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise ValidationError(f"mask must be a torch tensor or None; got {type(mask).__name__}")
        if mask.device != pred.device:
            raise ValidationError(f"mask must be on the device of pred ({pred.device}); got {mask.device}")
        if mask.requires_grad:
            raise ValidationError("mask must not require grad: the losses are not differentiable in the mask")
        spatial = tuple(pred.shape[2:])
        n = pred.shape[0]
        if mask.dim() == pred.dim() - 1 and tuple(mask.shape) == (n, *spatial):
            mask = mask.unsqueeze(1)
        if mask.dim() != pred.dim() or mask.shape[0] != n or mask.shape[1] not in (1, n_channels) \
                or tuple(mask.shape[2:]) != spatial:
            raise ValidationError(f"mask must be (N, *spatial), (N, 1, *spatial) or (N, C, *spatial) for pred "
                                  f"{tuple(pred.shape)}; got {tuple(mask.shape)}")
        mask = mask.to(_accumulation_dtype(pred.dtype))
    return kinds, w, mask


def _masked_channel_means(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(C,) means of ``values`` (N, C, *spatial) over all axes but 1, weighted by ``mask``."""
    dims = [0, *range(2, values.dim())]
    if mask is None:
        return values.mean(dim=dims)
    m = mask.to(values.dtype)
    num = (values * m).sum(dim=dims)
    den = m.expand_as(values).sum(dim=dims) if m.shape[1] == 1 else m.sum(dim=dims)
    # An empty mask contributes 0 instead of 0/0.
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(values.dtype).tiny), torch.zeros_like(num))


def reference_fused_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kinds: Sequence[str] | str,
    weights: Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The multi-output elementwise loss in plain torch (the reference of the Triton kernel).

    Parameters
    ----------
    pred, target : Tensor, (N, C, *spatial), float16/bfloat16/float32/float64
    kinds : str or sequence of str, (C,)
        ``mse``, ``mae`` or ``lcl`` per channel (one string for all).
    weights : sequence of float, (C,), optional
        >= 0, not all zero; normalised by their sum.  Default: equal.
    mask : Tensor, (N, [1 or C,] *spatial), optional
        Bool or float voxel weights (not differentiated).

    Returns
    -------
    Tensor, 0-d, float32 (float64 for float64 inputs)
        See the module docstring for the formula.

    Raises
    ------
    ValidationError
        On malformed arguments (:func:`parse_loss_inputs`).
    """
    kinds, w, mask = parse_loss_inputs(pred, target, kinds, weights, mask, allowed=ELEMENTWISE_LOSSES)
    acc = _accumulation_dtype(pred.dtype)
    diff = pred.to(acc) - target.to(acc)
    per_channel = torch.stack([elementwise_loss(diff[:, c], kinds[c]) for c in range(diff.shape[1])], dim=1)
    means = _masked_channel_means(per_channel, None if mask is None else mask.to(acc))
    return (means * torch.tensor(w, dtype=acc, device=means.device)).sum()


def soft_dice_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    smooth: float = 1.0,
    logits: bool = True,
) -> torch.Tensor:
    """Soft Dice loss per channel over the batch and spatial axes, averaged over channels.

    Parameters
    ----------
    pred : Tensor, (N, C, *spatial)
        Logits (``logits=True``: ``sigmoid`` is applied) or probabilities.
    target : Tensor, (N, C, *spatial)
        Reference probabilities or masks in [0, 1].
    mask : Tensor, optional
        Voxels that count (as in :func:`reference_fused_loss`).
    smooth : float
        Added to numerator and denominator (> 0): an empty target and an
        empty prediction give loss 0, not 0/0.
    logits : bool
        Whether ``pred`` holds logits.

    Returns
    -------
    Tensor, 0-d, float32 (float64 for float64 inputs), in [0, 1)
        ``mean_c [1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)]``.
    """
    _, _, mask = parse_loss_inputs(pred, target, "dice", None, mask, allowed=("dice",))
    if not (isinstance(smooth, (int, float)) and math.isfinite(smooth) and smooth > 0):
        raise ValidationError(f"smooth must be a positive number; got {smooth!r}")
    acc = _accumulation_dtype(pred.dtype)
    p = pred.to(acc)
    p = torch.sigmoid(p) if logits else p
    t = target.to(acc)
    if mask is not None:
        m = mask.to(acc)
        p, t = p * m, t * m
    dims = [0, *range(2, p.dim())]
    inter = (p * t).sum(dim=dims)
    denom = p.sum(dim=dims) + t.sum(dim=dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def multi_output_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kinds: Sequence[str] | str,
    weights: Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
    dice_smooth: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """The loss of a network with one loss kind per output channel.

    Elementwise channels (``mse``, ``mae``, ``lcl``) go through
    :func:`mrfengine.nn.fused_loss` (the Triton kernel on CUDA, torch
    elsewhere, or as ``impl`` says); ``dice`` channels through
    :func:`soft_dice_loss` (their outputs are logits).  The total is
    ``sum_c w_c / sum(w) * L_c``.

    Parameters
    ----------
    pred, target : Tensor, (N, C, *spatial)
    kinds : sequence of str, (C,)
        One of ``mse``, ``mae``, ``lcl``, ``dice`` per channel
        (:attr:`NetworkConfig.loss_kinds`).
    weights : sequence of float, (C,), optional
        :attr:`NetworkConfig.loss_weights`; default equal.
    mask : Tensor, optional
        Voxels that count.
    dice_smooth : float
        Smoothing of the Dice channels.
    impl : {"auto", "triton", "torch"}
        Implementation of the elementwise part.

    Returns
    -------
    Tensor, 0-d, float32 (float64 for float64 inputs)
    """
    from ._triton_loss import fused_loss

    kinds, w, mask = parse_loss_inputs(pred, target, kinds, weights, mask)
    elem = [c for c, k in enumerate(kinds) if k != "dice"]
    dice = [c for c, k in enumerate(kinds) if k == "dice"]
    terms = []
    if elem:
        share = sum(w[c] for c in elem)
        p, t, m = pred, target, mask
        if len(elem) < len(kinds):
            p, t = pred[:, elem], target[:, elem]
            m = None if mask is None else (mask if mask.shape[1] == 1 else mask[:, elem])
        terms.append(share * fused_loss(p, t, kinds=[kinds[c] for c in elem], weights=[w[c] for c in elem], mask=m,
                                   impl=impl))
    for c in dice:
        m = None if mask is None else mask[:, c:c + 1] if mask.shape[1] > 1 else mask
        terms.append(w[c] * soft_dice_loss(pred[:, c:c + 1], target[:, c:c + 1], mask=m, smooth=dice_smooth))
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]
