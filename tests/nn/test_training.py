import pytest
import torch

from mrfengine.errors import InputFileError, ValidationError
from mrfengine.nn import (
    Normalisation,
    evaluate_batch,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    to_network_units,
    to_physical_units,
    train_step,
)


def _batch(seed=0, n=4, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 35, size, size, generator=g)
    # targets in physical units: T1 ~ 800-1400 ms, T2* ~ 50-70 ms, probabilities
    maps = [800 + 600 * torch.rand(n, size, size, generator=g), 50 + 20 * torch.rand(n, size, size, generator=g)]
    maps += [torch.rand(n, size, size, generator=g) for _ in range(3)]
    y = torch.stack(maps, dim=1)
    return x, y


def test_unit_conversions_by_construction(tiny_config):
    cfg = tiny_config("MSE-5")
    y = torch.tensor([1200.0, 60.0, 0.3, 0.6, 0.1]).view(1, 5, 1, 1)
    net = to_network_units(y, cfg)
    torch.testing.assert_close(net.view(-1), torch.tensor([1.2, 0.6, 0.3, 0.6, 0.1]))
    torch.testing.assert_close(to_physical_units(net, cfg), y)
    dice = tiny_config("DICE-1")
    torch.testing.assert_close(to_physical_units(torch.zeros(1, 1, 2, 2), dice), torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValidationError, match=r"\(N, 5, \*spatial\)"):
        to_network_units(torch.zeros(1, 4, 2, 2), cfg)


def test_training_steps_fit_a_batch(tiny_config):
    """Constant tissue-like targets: a few Adam steps must learn them (known optimum: loss 0)."""
    import dataclasses

    cfg = dataclasses.replace(tiny_config("MSE-5"), dropout=0.0)
    net = cfg.build(seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)  # the paper's 1e-4 needs more steps than a test should take
    x, _ = _batch(n=2)
    y = torch.tensor([1100.0, 60.0, 0.7, 0.2, 0.05]).view(1, 5, 1, 1).expand(2, 5, 8, 8)
    t = to_network_units(y, cfg)
    first = evaluate_batch(net, x, t, config=cfg)
    losses = [train_step(net, opt, x, t, config=cfg) for _ in range(60)]
    assert losses[0] == pytest.approx(first)
    assert evaluate_batch(net, x, t, config=cfg) < 0.05 * first
    assert make_optimizer(net, cfg).param_groups[0]["lr"] == 1e-4


def test_checkpoint_resume_continues_bit_for_bit(tmp_path, tiny_config):
    cfg = tiny_config("LCL-5")
    x, y = _batch(1)
    t = to_network_units(y, cfg)
    torch.manual_seed(1)
    net = cfg.build(seed=2)
    opt = make_optimizer(net, cfg)
    for _ in range(3):
        train_step(net, opt, x, t, config=cfg)
    norm = Normalisation.identity(35)
    path = save_checkpoint(tmp_path / "ck" / "epoch3.pt", model=net, optimizer=opt, epoch=3, config=cfg,
                           normalisation=norm, extra={"best_dice": 0.4})
    train_step(net, opt, x, t, config=cfg)  # dropout draws from the RNG saved above
    fresh = cfg.build(seed=99)
    fresh_opt = make_optimizer(fresh, cfg)
    ck = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert (ck.epoch, ck.config, ck.normalisation, ck.extra) == (3, cfg, norm, {"best_dice": 0.4})
    train_step(fresh, fresh_opt, x, t, config=cfg)
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_errors(tmp_path, tiny_config):
    cfg = tiny_config("MSE-5")
    with pytest.raises(InputFileError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt")
    path = save_checkpoint(tmp_path / "a.pt", model=cfg.build(), optimizer=None, epoch=0, config=cfg,
                           normalisation=Normalisation.identity(35))
    with pytest.raises(ValidationError, match="does not fit the checkpoint"):
        load_checkpoint(path, model=tiny_config("MSE-1").build())
    with pytest.raises(ValidationError, match="no optimiser state"):
        net = cfg.build()
        load_checkpoint(path, model=net, optimizer=make_optimizer(net, cfg))
