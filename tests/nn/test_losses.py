import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrfengine.errors import ValidationError
from mrfengine.nn import fused_loss, log_cosh, multi_output_loss, reference_fused_loss, soft_dice_loss

X = [0.0, 1e-6, -3e-4, 0.01, -0.1, 0.2499, 0.25, -0.2501, 0.5, -1.0, 3.0, 20.0, -45.0, 300.0, -1000.0]


def _exact_log_cosh(x: float) -> float:
    with mpmath.workdps(50):
        return float(mpmath.log(mpmath.cosh(mpmath.mpf(x))))


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 5e-6)])
def test_log_cosh_is_accurate_everywhere(dtype, rtol):
    x = torch.tensor(X, dtype=dtype, requires_grad=True)
    y = log_cosh(x)
    exact = torch.tensor([_exact_log_cosh(v) for v in X], dtype=torch.float64)
    assert torch.isfinite(y).all()
    np.testing.assert_allclose(y.detach().double().numpy(), exact.numpy(), rtol=rtol, atol=1e-300)
    (g,) = torch.autograd.grad(y.sum(), x)
    np.testing.assert_allclose(g.double().numpy(), np.tanh(np.array(X)), rtol=rtol * 4, atol=1e-300)


def test_the_closed_form_alone_would_cancel_for_small_residuals():
    # Why log_cosh switches to its Taylor polynomial: |x| + log1p(exp(-2|x|)) - log 2 in float32.
    x = torch.tensor([1e-3], dtype=torch.float32)
    naive = x.abs() + torch.log1p(torch.exp(-2 * x.abs())) - math.log(2.0)
    exact = _exact_log_cosh(1e-3)
    assert abs(naive.item() - exact) / exact > 1e-2
    assert abs(log_cosh(x).item() - exact) / exact < 1e-6


def _pair():
    pred = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    target = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]], dtype=torch.float64)
    return pred, target


def test_weighted_masked_channel_means_by_hand():
    pred, target = _pair()
    # channel 0 MSE: mean(1, 4) = 2.5; channel 1 MAE: mean(3, 1) = 2; weights 1:3
    assert reference_fused_loss(pred, target, kinds=["mse", "mae"], weights=[1, 3]).item() == pytest.approx(2.125)
    mask = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)  # (N, H, W): first voxel only
    assert reference_fused_loss(pred, target, kinds=["mse", "mae"], weights=[1, 3], mask=mask).item() == \
        pytest.approx(0.25 * 1 + 0.75 * 3)
    soft = torch.tensor([[[[0.5, 1.0]]]], dtype=torch.float64)  # float voxel weights, (N, 1, H, W)
    assert reference_fused_loss(pred, target, kinds="mse", weights=[1, 0], mask=soft).item() == \
        pytest.approx((0.5 * 1 + 4) / 1.5)
    per_channel = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]], dtype=torch.float64)  # channel 1 empty: adds 0
    assert reference_fused_loss(pred, target, kinds=["mse", "mae"], weights=[1, 3], mask=per_channel).item() == \
        pytest.approx(0.25 * 2.5)
    lcl = reference_fused_loss(pred, target, kinds="lcl").item()
    assert lcl == pytest.approx(np.mean([math.log(math.cosh(v)) for v in (1, 2, 3, -1)]), rel=1e-14)


def test_equal_weights_without_mask_is_the_plain_mean():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(3, 5, 7, 6, generator=g), torch.randn(3, 5, 7, 6, generator=g)
    torch.testing.assert_close(reference_fused_loss(p, t, kinds="mse"), F.mse_loss(p, t), rtol=1e-6, atol=0)
    torch.testing.assert_close(reference_fused_loss(p, t, kinds="mae"), F.l1_loss(p, t), rtol=1e-6, atol=0)


def test_low_precision_is_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(2, 3, 4, 4, generator=g).bfloat16().requires_grad_()
    t = torch.randn(2, 3, 4, 4, generator=g).bfloat16()
    loss = reference_fused_loss(p, t, kinds=["lcl", "mse", "mae"])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_fused_loss(p.float(), t.float(), kinds=["lcl", "mse", "mae"]).item(),
                                        rel=1e-6)
    loss.backward()
    assert p.grad.dtype == torch.bfloat16


def test_gradcheck_float64_torch_path():
    g = torch.Generator().manual_seed(2)
    p = (torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    t = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64) * 0.6
    mask = torch.rand(2, 1, 3, 4, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: fused_loss(x, t, kinds=["lcl", "mse", "lcl"], weights=[1, 2, 3], mask=mask, impl="torch"), (p,))
    # residuals on both sides of the log-cosh switch
    assert ((p - t).abs() < 0.25).any() and ((p - t).abs() > 0.25).any()


def test_soft_dice_known_answers():
    t = torch.zeros(1, 1, 2, 3, dtype=torch.float64)
    t[0, 0, 0] = 1.0  # three lesion voxels
    assert soft_dice_loss(t.clone(), t, logits=False).item() == pytest.approx(0.0)
    assert soft_dice_loss(torch.zeros_like(t), t, logits=False).item() == pytest.approx(1 - 1 / 4)
    assert soft_dice_loss(torch.zeros_like(t), torch.zeros_like(t), logits=False).item() == pytest.approx(0.0)
    half = torch.full_like(t, 0.5)  # 2*1.5 + 1 over 3 + 3 + 1
    assert soft_dice_loss(half, t, logits=False, smooth=1.0).item() == pytest.approx(1 - 4 / 7)
    logits = torch.where(t > 0, 30.0, -30.0).to(torch.float64)
    assert soft_dice_loss(logits, t).item() == pytest.approx(0.0, abs=1e-9)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ref = (torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64) > 0.5).double()
    assert torch.autograd.gradcheck(lambda v: soft_dice_loss(v, ref, smooth=0.5), (x,))


def test_multi_output_loss_combines_elementwise_and_dice_channels():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 4, 4, generator=g) > 0.3
    got = multi_output_loss(p, t, kinds=["mse", "dice", "lcl"], weights=[1, 2, 1], mask=mask)
    m = mask.unsqueeze(1).double()
    want = (0.5 * reference_fused_loss(p[:, [0, 2]], t[:, [0, 2]], kinds=["mse", "lcl"], mask=m)
            + 0.5 * soft_dice_loss(p[:, 1:2], t[:, 1:2], mask=m))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    only_dice = multi_output_loss(p[:, 1:2], t[:, 1:2], kinds=["dice"])
    torch.testing.assert_close(only_dice, soft_dice_loss(p[:, 1:2], t[:, 1:2]), rtol=1e-13, atol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"kinds": ["mse"]}, "one loss of"),
    ({"kinds": ["mse", "huber"]}, "one loss of"),
    ({"kinds": "mse", "weights": [1.0]}, "one number per channel"),
    ({"kinds": "mse", "weights": [0.0, 0.0]}, "not all zero"),
    ({"kinds": "mse", "weights": [1.0, -1.0]}, ">= 0"),
    ({"kinds": "mse", "mask": torch.ones(2, 3, 3)}, "mask must be"),
    ({"kinds": "mse", "impl": "cuda"}, "impl must be one of"),
])
def test_loss_arguments_are_checked(kwargs, match):
    p, t = torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4, 4)
    with pytest.raises(ValidationError, match=match):
        fused_loss(p, t, **kwargs)


def test_shape_and_dtype_mismatches_are_refused():
    with pytest.raises(ValidationError, match="shape of pred"):
        reference_fused_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), kinds="mse")
    with pytest.raises(ValidationError, match="one dtype"):
        reference_fused_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.float64), kinds="mse")
    with pytest.raises(ValidationError, match="must not require grad"):
        reference_fused_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), kinds="mse",
                             mask=torch.ones(1, 3, requires_grad=True))
    with pytest.raises(ValidationError, match="smooth"):
        soft_dice_loss(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3), smooth=0)
