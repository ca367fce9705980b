import pytest
import torch

from mrfengine.errors import ValidationError
from mrfengine.nn import UNet2d, get_config, init_weights


def _paper_parameter_count(c_in: int, c_out: int, base: int = 32, depth: int = 4) -> int:
    """Weights + biases of the paper's U-net, counted layer by layer from its description."""
    f = [base * 2**k for k in range(depth + 1)]
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    n = 0
    for k in range(depth):  # encoder: two 3x3 convs per level
        n += conv(c_in if k == 0 else f[k - 1], f[k], 3) + conv(f[k], f[k], 3)
    n += conv(f[depth - 1], f[depth], 3) + conv(f[depth], f[depth], 3)  # bridge
    for k in reversed(range(depth)):  # decoder: 2x2 up-conv, then two 3x3 convs on the concatenation
        n += conv(f[k + 1], f[k], 2) + conv(2 * f[k], f[k], 3) + conv(f[k], f[k], 3)
    return n + conv(f[0], c_out, 1)


@pytest.mark.parametrize("name,c_in,c_out", [("MSE-5", 35, 5), ("MSE-1", 35, 1), ("MSE-2-1", 2, 1)])
def test_paper_network_has_the_described_layers(name, c_in, c_out):
    net = get_config(name).build()
    assert (net.in_channels, net.out_channels, net.depth, net.size_multiple) == (c_in, c_out, 4, 16)
    assert sum(p.numel() for p in net.parameters()) == _paper_parameter_count(c_in, c_out)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(m.out_channels for m in convs) == 512  # the bridge
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert [d.p for d in drops] == [0.5, 0.5]


@pytest.mark.parametrize("depth,size", [(1, (6, 10)), (2, (8, 12)), (3, (16, 24))])
def test_output_keeps_the_input_size(depth, size):
    net = UNet2d(3, 2, depth=depth, base_filters=4).eval()
    y = net(torch.randn(2, 3, *size))
    assert y.shape == (2, 2, *size)


def test_rejects_sizes_that_do_not_divide_and_wrong_channels():
    net = UNet2d(3, 2, depth=2, base_filters=4)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 10, 8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.zeros(1, 4, 8, 8))


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"base_filters": -1}, {"dropout": 1.0}, {"dropout": True}])
def test_constructor_checks_its_arguments(kwargs):
    with pytest.raises(ValidationError):
        UNet2d(3, 2, **kwargs)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    net = UNet2d(2, 1, depth=2, base_filters=4)
    x = torch.randn(1, 2, 8, 8)
    net.train()
    a, b = net(x), net(x)
    assert not torch.equal(a, b)
    net.eval()
    assert torch.equal(net(x), net(x))
    with torch.no_grad():
        no_drop = UNet2d(2, 1, depth=2, base_filters=4, dropout=0.0)
        no_drop.load_state_dict(net.state_dict())
        assert torch.equal(no_drop.train()(x), net(x))


def test_he_initialisation_is_seeded():
    a = init_weights(UNet2d(3, 2, depth=2, base_filters=4), seed=7)
    b = init_weights(UNet2d(3, 2, depth=2, base_filters=4), seed=7)
    c = init_weights(UNet2d(3, 2, depth=2, base_filters=4), seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoders.0.0.weight"], sc["encoders.0.0.weight"])
    assert all(torch.count_nonzero(v) == 0 for k, v in sa.items() if k.endswith("bias"))
    # He: std = sqrt(2 / fan_in) for a 3x3 conv with 3 input channels (fan_in 27)
    w = init_weights(UNet2d(3, 64, depth=1, base_filters=256), seed=0).encoders[0][0].weight
    assert abs(w.std().item() - (2 / 27) ** 0.5) < 0.02 * (2 / 27) ** 0.5


def test_torchscript_matches_eager():
    net = UNet2d(3, 2, depth=2, base_filters=4).eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(scripted(x), net(x))
