"""The fused Triton loss against the torch reference, under the Triton interpreter.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports the
kernels, so they run here on CPU tensors; on a machine with a GPU the same
kernels are compiled for CUDA (the ``gpu`` test).
"""

import mpmath
import pytest
import torch

from mrfengine.errors import BackendUnavailableError
from mrfengine.nn import fused_loss, reference_fused_loss
from mrfengine.nn import _triton_loss

pytestmark = pytest.mark.skipif(not _triton_loss.triton_status()[0],
                                reason="needs triton (interpreter or CUDA): " + _triton_loss.triton_status()[1])

DEVICE = "cpu" if _triton_loss._interpreted() else "cuda"
KINDS = ["lcl", "mse", "mae", "lcl", "mse"]
WEIGHTS = [1.0, 2.0, 0.5, 0.0, 3.0]


def _case(shape, dtype, mask_kind, seed, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    p = (torch.randn(shape, generator=g) * scale).to(dtype)
    t = (torch.randn(shape, generator=g) * scale).to(dtype)
    p.view(-1)[:7] = t.view(-1)[:7]  # exact zeros of the residual (MAE and sign at 0)
    mask = {
        None: None,
        "shared": torch.rand((n, *shape[2:]), generator=g) > 0.4,
        "channel": torch.rand(shape, generator=g) > 0.5,
        "float": torch.rand((n, 1, *shape[2:]), generator=g),
    }[mask_kind]
    return p.to(DEVICE), t.to(DEVICE), None if mask is None else mask.to(DEVICE)


def _both(p, t, mask, kinds=KINDS, weights=WEIGHTS):
    out = []
    for impl in ("triton", "torch"):
        x = p.detach().clone().requires_grad_()
        y = t.detach().clone().requires_grad_()
        loss = fused_loss(x, y, kinds=kinds[: p.shape[1]], weights=weights[: p.shape[1]], mask=mask, impl=impl)
        loss.backward()
        out.append((loss.detach(), x.grad, y.grad))
    return out


@pytest.mark.parametrize("mask_kind", [None, "shared", "channel", "float"])
@pytest.mark.parametrize("shape", [(3, 5, 17, 19), (2, 5, 40, 40), (1, 1, 5, 3)])
def test_float32_values_and_gradients_match_the_reference(shape, mask_kind):
    (lt, gpt, gtt), (lr, gpr, gtr) = _both(*_case(shape, torch.float32, mask_kind, seed=sum(shape)))
    assert lt.dtype == lr.dtype == torch.float32
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=0)
    # gradients: every element to 1e-5 of its own value
    torch.testing.assert_close(gpt, gpr, rtol=1e-5, atol=0)
    torch.testing.assert_close(gtt, gtr, rtol=1e-5, atol=0)
    assert torch.equal(gtt, -gpt)


@pytest.mark.parametrize("mask_kind", [None, "shared"])
def test_bfloat16_matches_the_reference(mask_kind):
    (lt, gpt, _), (lr, gpr, _) = _both(*_case((2, 5, 33, 31), torch.bfloat16, mask_kind, seed=5))
    assert lt.dtype == torch.float32 and gpt.dtype == torch.bfloat16
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=0)  # both sum the same bf16 inputs in float32
    # gradients are rounded to bfloat16 (8 bits): one unit in the last place
    torch.testing.assert_close(gpt.float(), gpr.float(), rtol=2**-7, atol=2**-7 * gpr.abs().max().item() / 64)


def test_small_and_large_residuals_follow_log_cosh_and_tanh():
    values = [0.0, 1e-4, -0.01, 0.2, -0.3, 2.0, -15.0, 200.0]
    d = torch.tensor(values, dtype=torch.float64, device=DEVICE)
    p = d.view(1, 1, 1, -1).clone().requires_grad_()
    loss = fused_loss(p, torch.zeros_like(p), kinds="lcl", impl="triton")
    loss.backward()
    with mpmath.workdps(50):
        exact = [float(mpmath.log(mpmath.cosh(mpmath.mpf(v)))) for v in values]
        tanh = [float(mpmath.tanh(mpmath.mpf(v))) / len(values) for v in values]
    assert loss.item() == pytest.approx(sum(exact) / len(values), rel=1e-12)
    torch.testing.assert_close(p.grad.view(-1).cpu(), torch.tensor(tanh, dtype=torch.float64), rtol=1e-10, atol=0)


def test_gradcheck_float64_triton_path():
    p, t, mask = _case((2, 3, 3, 4), torch.float64, "float", seed=11, scale=0.4)
    p.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: fused_loss(x, t, kinds=["lcl", "mse", "mae"], weights=[1, 2, 3], mask=mask, impl="triton"), (p,),
        fast_mode=True)


def test_empty_mask_channel_and_empty_tensors_give_zero_not_nan():
    p, t, _ = _case((2, 2, 4, 4), torch.float32, None, seed=1)
    mask = torch.ones_like(p, dtype=torch.bool)
    mask[:, 1] = False
    (lt, gt, _), (lr, gr, _) = _both(p, t, mask, kinds=["mse", "lcl"], weights=[1, 1])
    torch.testing.assert_close(lt, lr, rtol=1e-6, atol=0)
    assert torch.count_nonzero(gt[:, 1]) == 0 and torch.isfinite(gt).all()
    empty = torch.zeros(0, 2, 4, 4, device=DEVICE)
    assert fused_loss(empty, empty, kinds="mse", impl="triton").item() == 0.0


def test_grid_rows_are_launched_in_chunks(monkeypatch):
    monkeypatch.setattr(_triton_loss, "_MAX_GRID_ROWS", 4)
    (lt, gt, _), (lr, gr, _) = _both(*_case((3, 5, 6, 7), torch.float32, "channel", seed=2))
    torch.testing.assert_close(lt, lr, rtol=1e-5, atol=0)
    torch.testing.assert_close(gt, gr, rtol=1e-5, atol=1e-6 * gr.abs().max().item())


def test_auto_uses_torch_on_cpu_and_triton_needs_a_way_to_run(monkeypatch):
    p = torch.zeros(1, 1, 2, 2)
    assert fused_loss(p, p + 1, kinds="mse").item() == 1.0  # auto on CPU: the torch reference
    monkeypatch.setattr(_triton_loss, "_interpreted", lambda: False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        fused_loss(p, p, kinds="mse", impl="triton")
    monkeypatch.setattr(_triton_loss, "HAS_TRITON", False)
    with pytest.raises(BackendUnavailableError, match="triton"):
        fused_loss(p, p, kinds="mse", impl="triton")


@pytest.mark.gpu
def test_compiled_kernels_match_on_a_gpu():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(8, 5, 64, 64, generator=g).cuda().requires_grad_()
    t = torch.randn(8, 5, 64, 64, generator=g).cuda()
    a = fused_loss(p, t, kinds=KINDS, weights=WEIGHTS)
    (ga,) = torch.autograd.grad(a, p)
    b = reference_fused_loss(p, t, kinds=KINDS, weights=WEIGHTS)
    (gb,) = torch.autograd.grad(b, p)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6 * gb.abs().max().item())
