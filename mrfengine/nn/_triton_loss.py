"""The multi-output elementwise loss as fused Triton kernels, and its dispatch.

One forward kernel reads prediction, target and mask once and writes one
partial sum per (row, block), where a row is one (sample, channel) plane and
each channel has its own loss kind (MSE, MAE or log-cosh) and weight; a
backward kernel writes the gradient with respect to the prediction in one
more pass.  Torch would run about ten elementwise operations per channel,
each with a temporary the size of the batch.  The partial sums are reduced in
torch, in a fixed order (no atomics), so results are deterministic.

:func:`fused_loss` is the public entry point: the Triton kernels for CUDA
tensors when Triton is installed, :func:`mrfengine.nn.losses.reference_fused_loss`
otherwise.  Under the Triton interpreter (``TRITON_INTERPRET=1`` set before
this module is imported) the kernels also run on CPU tensors, which is how
the tests hold them to the torch reference; ``impl="triton"`` forces them.

The formulas (masked channel means, weights normalised by their sum,
log-cosh with a Taylor polynomial below ``|x| = 0.25``) are those of
:mod:`mrfengine.nn.losses`; see there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..errors import BackendUnavailableError, ValidationError
from .configs import ELEMENTWISE_LOSSES
from .losses import LOG_COSH_SWITCH, LOGCOSH_COEF, _accumulation_dtype, parse_loss_inputs, reference_fused_loss

log = logging.getLogger(__name__)

__all__ = ["HAS_TRITON", "triton_status", "fused_loss", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "triton", "torch")
KIND_CODES = {"mse": 0, "mae": 1, "lcl": 2}
#: Elements per program: large, because the interpreter pays per program and
#: a GPU streams 1024-element blocks at full bandwidth.
BLOCK = 1024
#: CUDA limits the second grid axis; rows beyond it are launched in chunks.
_MAX_GRID_ROWS = 65535

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    _TRITON_DETAIL = f"triton {triton.__version__}"
except ImportError as exc:  # pragma: no cover - exercised where triton is absent
    HAS_TRITON = False
    _TRITON_DETAIL = f"triton not installed ({exc}); pip install mrfengine[nn]"
except Exception as exc:  # pragma: no cover - a broken install must not break `import mrfengine.nn`
    HAS_TRITON = False
    _TRITON_DETAIL = f"triton failed to import: {type(exc).__name__}: {exc}"
    log.debug("triton import failed", exc_info=True)

if HAS_TRITON:
    # Triton kernels may read module globals only as constexpr.
    _C0, _C1, _C2, _C3, _C4, _C5 = (tl.constexpr(v) for v in LOGCOSH_COEF)
    # tanh(x) = d/dx log(cosh(x)): the derivative of the same polynomial.
    _T0, _T1, _T2, _T3, _T4, _T5 = (tl.constexpr((2 * k + 2) * v) for k, v in enumerate(LOGCOSH_COEF))
    _SWITCH = tl.constexpr(LOG_COSH_SWITCH)
    _LN2 = tl.constexpr(0.6931471805599453)

    @triton.jit
    def _pointwise_loss(d, kind):
        a = tl.abs(d)
        # log-cosh: Taylor polynomial for small |d|, the overflow-free closed
        # form elsewhere (log1p(u) as log(1 + u): u = exp(-2|d|) < 0.61 there,
        # so 1 + u loses nothing that matters against |d| >= 0.25).
        s = tl.minimum(a, _SWITCH)
        s2 = s * s
        small = s2 * (_C0 + s2 * (_C1 + s2 * (_C2 + s2 * (_C3 + s2 * (_C4 + s2 * _C5)))))
        large = a + tl.log(1.0 + tl.exp(-2.0 * a)) - _LN2
        lcl = tl.where(a < _SWITCH, small, large)
        return tl.where(kind == 0, d * d, tl.where(kind == 1, a, lcl))

    @triton.jit
    def _pointwise_grad(d, kind):
        a = tl.abs(d)
        sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(d.dtype)
        s = tl.minimum(a, _SWITCH)
        s2 = s * s
        small = s * (_T0 + s2 * (_T1 + s2 * (_T2 + s2 * (_T3 + s2 * (_T4 + s2 * _T5)))))
        e = tl.exp(-2.0 * a)
        large = (1.0 - e) / (1.0 + e)
        tanh = sign * tl.where(a < _SWITCH, small, large)
        return tl.where(kind == 0, 2.0 * d, tl.where(kind == 1, sign, tanh))

    @triton.jit
    def _fused_loss_fwd_kernel(pred_ptr, target_ptr, mask_ptr, kinds_ptr, partial_ptr, row0, n_cols, n_channels,
                               n_blocks, HAS_MASK: tl.constexpr, MASK_PER_CHANNEL: tl.constexpr,
                               ACC: tl.constexpr, BLOCK: tl.constexpr):
        blk = tl.program_id(0)
        row = row0 + tl.program_id(1)
        c = row % n_channels
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n_cols
        base = row.to(tl.int64) * n_cols
        p = tl.load(pred_ptr + base + offs, mask=valid, other=0.0).to(ACC)
        t = tl.load(target_ptr + base + offs, mask=valid, other=0.0).to(ACC)
        kind = tl.load(kinds_ptr + c)
        loss = _pointwise_loss(p - t, kind)
        if HAS_MASK:
            mrow = row if MASK_PER_CHANNEL else row // n_channels
            m = tl.load(mask_ptr + mrow.to(tl.int64) * n_cols + offs, mask=valid, other=0.0).to(ACC)
            loss = loss * m
        loss = tl.where(valid, loss, 0.0)
        tl.store(partial_ptr + row.to(tl.int64) * n_blocks + blk, tl.sum(loss, axis=0))

    @triton.jit
    def _fused_loss_bwd_kernel(pred_ptr, target_ptr, mask_ptr, kinds_ptr, scale_ptr, grad_ptr, row0, n_cols,
                               n_channels, HAS_MASK: tl.constexpr, MASK_PER_CHANNEL: tl.constexpr,
                               ACC: tl.constexpr, BLOCK: tl.constexpr):
        blk = tl.program_id(0)
        row = row0 + tl.program_id(1)
        c = row % n_channels
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n_cols
        base = row.to(tl.int64) * n_cols
        p = tl.load(pred_ptr + base + offs, mask=valid, other=0.0).to(ACC)
        t = tl.load(target_ptr + base + offs, mask=valid, other=0.0).to(ACC)
        kind = tl.load(kinds_ptr + c)
        scale = tl.load(scale_ptr + c).to(ACC)
        g = _pointwise_grad(p - t, kind) * scale
        if HAS_MASK:
            mrow = row if MASK_PER_CHANNEL else row // n_channels
            m = tl.load(mask_ptr + mrow.to(tl.int64) * n_cols + offs, mask=valid, other=0.0).to(ACC)
            g = g * m
        tl.store(grad_ptr + base + offs, g.to(grad_ptr.dtype.element_ty), mask=valid)


def _interpreted() -> bool:
    """Whether the kernels were built for the Triton interpreter (they then run on CPU tensors)."""
    if not HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_fused_loss_fwd_kernel, InterpretedFunction)


def triton_status() -> tuple[bool, str]:
    """``(usable, detail)``: whether the Triton loss can run here and why (not)."""
    if not HAS_TRITON:
        return False, _TRITON_DETAIL
    if _interpreted():
        return True, f"{_TRITON_DETAIL} (interpreter: CPU tensors)"
    if torch.cuda.is_available():
        return True, f"{_TRITON_DETAIL} (CUDA)"
    return False, f"{_TRITON_DETAIL} installed but no CUDA device (set TRITON_INTERPRET=1 before import to interpret)"


def _tl_dtype(acc: torch.dtype):
    return tl.float64 if acc == torch.float64 else tl.float32


def _launch_rows(n_rows: int):
    for row0 in range(0, n_rows, _MAX_GRID_ROWS):
        yield row0, min(_MAX_GRID_ROWS, n_rows - row0)


class _FusedLoss(torch.autograd.Function):
    """Autograd wrapper: forward and backward kernels on (rows, columns) views."""

    @staticmethod
    def forward(ctx, pred, target, mask, kinds, coef, n_channels):  # noqa: D102 - autograd API
        n_rows, n_cols = pred.shape
        acc = coef.dtype
        n_blocks = triton.cdiv(n_cols, BLOCK)
        partial = torch.zeros((n_rows, max(n_blocks, 1)), dtype=acc, device=pred.device)
        per_channel_mask = mask is not None and mask.shape[0] == n_rows
        if n_cols:
            for row0, rows in _launch_rows(n_rows):
                _fused_loss_fwd_kernel[(n_blocks, rows)](
                    pred, target, pred if mask is None else mask, kinds, partial, row0, n_cols, n_channels, n_blocks,
                    HAS_MASK=mask is not None, MASK_PER_CHANNEL=per_channel_mask, ACC=_tl_dtype(acc), BLOCK=BLOCK)
        sums = partial.view(-1, n_channels, partial.shape[1]).sum(dim=(0, 2))
        ctx.save_for_backward(pred, target, mask, kinds, coef)
        ctx.n_channels = n_channels
        return (sums * coef).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102 - autograd API
        pred, target, mask, kinds, coef = ctx.saved_tensors
        n_rows, n_cols = pred.shape
        scale = (coef * grad_out.to(coef.dtype)).contiguous()
        grad = torch.empty_like(pred)
        n_blocks = triton.cdiv(n_cols, BLOCK)
        per_channel_mask = mask is not None and mask.shape[0] == n_rows
        if n_cols:
            for row0, rows in _launch_rows(n_rows):
                _fused_loss_bwd_kernel[(n_blocks, rows)](
                    pred, target, pred if mask is None else mask, kinds, scale, grad, row0, n_cols, ctx.n_channels,
                    HAS_MASK=mask is not None, MASK_PER_CHANNEL=per_channel_mask, ACC=_tl_dtype(coef.dtype),
                    BLOCK=BLOCK)
        grad_target = -grad if ctx.needs_input_grad[1] else None
        return grad, grad_target, None, None, None, None


def _triton_fused_loss(pred, target, kinds, weights, mask):
    n, c = pred.shape[0], pred.shape[1]
    acc = _accumulation_dtype(pred.dtype)
    n_cols = pred[0, 0].numel() if pred.numel() else int(torch.Size(pred.shape[2:]).numel())
    p = pred.reshape(n * c, n_cols).contiguous()
    t = target.reshape(n * c, n_cols).contiguous()
    w = torch.tensor(weights, dtype=acc, device=pred.device)
    if mask is None:
        m = None
        count = torch.full((c,), float(n * n_cols), dtype=acc, device=pred.device)
    else:
        m = mask.reshape(n * mask.shape[1], n_cols).contiguous()
        dims = [0, *range(2, mask.dim())]
        count = mask.sum(dim=dims).expand(c) if mask.shape[1] == 1 else mask.sum(dim=dims)
    # An empty mask contributes 0 instead of 0/0.
    coef = torch.where(count > 0, w / count.clamp_min(torch.finfo(acc).tiny), torch.zeros_like(w))
    codes = torch.tensor([KIND_CODES[k] for k in kinds], dtype=torch.int32, device=pred.device)
    loss = _FusedLoss.apply(p, t, m, codes, coef, c)
    return loss


def fused_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    kinds: Sequence[str] | str,
    weights: Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """The multi-output MSE / MAE / log-cosh loss, one kind and weight per channel.

    Parameters
    ----------
    pred, target : Tensor, (N, C, *spatial), float16/bfloat16/float32/float64
    kinds : str or sequence of str, (C,)
        ``mse``, ``mae`` or ``lcl`` per channel.
    weights : sequence of float, (C,), optional
        >= 0, not all zero, normalised by their sum; default equal.
    mask : Tensor, (N, [1 or C,] *spatial), optional
        Bool or float voxel weights (not differentiated).
    impl : {"auto", "triton", "torch"}
        ``auto``: the Triton kernels for CUDA tensors when Triton is
        installed, torch otherwise.  ``triton`` forces the kernels (on CPU
        tensors they need the Triton interpreter).

    Returns
    -------
    Tensor, 0-d, float32 (float64 for float64 inputs)
        ``sum_c w_c / sum(w) * masked_mean(loss_c(pred - target))``
        (:mod:`mrfengine.nn.losses`); differentiable in ``pred`` and ``target``
        (first order).

    Raises
    ------
    ValidationError
        On malformed arguments or an unknown ``impl``.
    BackendUnavailableError
        ``impl="triton"`` where the kernels cannot run.
    """
    if impl not in IMPLEMENTATIONS:
        raise ValidationError(f"impl must be one of {IMPLEMENTATIONS}; got {impl!r}")
    kinds, w, mask = parse_loss_inputs(pred, target, kinds, weights, mask, allowed=ELEMENTWISE_LOSSES)
    if impl == "auto":
        impl = "triton" if HAS_TRITON and pred.is_cuda else "torch"
        log.debug("fused_loss: %s implementation for %s tensors", impl, pred.device.type)
    if impl == "torch":
        return reference_fused_loss(pred, target, kinds=kinds, weights=w, mask=mask)
    if not HAS_TRITON:
        raise BackendUnavailableError(f"impl='triton' requested but {_TRITON_DETAIL}")
    if not pred.is_cuda and not _interpreted():
        raise BackendUnavailableError(
            f"impl='triton' on {pred.device.type} tensors needs the Triton interpreter (TRITON_INTERPRET=1 set "
            "before mrfengine.nn is imported) or CUDA tensors")
    return _triton_fused_loss(pred, target, kinds, w, mask)
