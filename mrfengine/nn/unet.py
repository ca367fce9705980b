"""The 2D U-net of Hermann et al. (2021) as a configurable module.

The network maps the 35 MRF-EPI magnitude images of a slice (or, for the
comparison network MSE-2-1, its T1 and T2* maps) to output maps, one channel
per map.  The layout follows MATLAB's ``unetLayers`` that the authors used:

* encoder: ``depth`` levels, each two 3x3 convolutions ('same' padding) with
  ReLU, then 2x2 max-pooling; ``base_filters`` filters at the first level,
  doubling per level;
* bridge: two 3x3 convolutions with ReLU and ``base_filters * 2**depth``
  filters (512 for the paper's 32 filters and depth 4);
* dropout (``dropout``, 0.5 in the paper) after the deepest encoder level
  (before pooling; the skip connection leaves after it) and after the bridge;
* decoder: a 2x2 transposed convolution with stride 2 halving the filters
  (followed by ReLU, as ``unetLayers`` does; ``up_relu``), concatenation with
  the skip connection, two 3x3 convolutions with ReLU;
* a 1x1 convolution to ``out_channels`` with no activation;
* no batch normalisation.

In-plane sizes must be multiples of ``2**depth`` (16 for the paper's
network); :mod:`mrfengine.nn.inference` pads whole slices to that.

References
----------
Hermann I, et al. Lesion probability mapping in MS patients using a regression
network on MR fingerprinting. BMC Med Imaging 2021;21:107.
Ronneberger O, Fischer P, Brox T. U-net: convolutional networks for biomedical
image segmentation. MICCAI 2015, LNCS 9351:234-241.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_int
from ..errors import ValidationError

__all__ = ["UNet2d", "init_weights"]


class _DoubleConv(nn.Sequential):
    """Two 3x3 'same' convolutions, each followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """Transposed 2x2 convolution (stride 2), optional ReLU, concatenation with
    the skip connection, then two 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, *, up_relu: bool) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.act = nn.ReLU(inplace=True) if up_relu else nn.Identity()
        self.conv = _DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.act(self.up(x))], dim=1))


class UNet2d(nn.Module):
    """The paper's 2D U-net (see the module docstring for the layout).

    Parameters
    ----------
    in_channels : int
        Input images per slice (35 MRF frames; 2 for T1/T2* maps).
    out_channels : int
        Output maps (5: T1, T2*, NAWM, GM, lesion; or 1: lesion).
    depth : int
        Encoder levels (pooling steps); 4 in the paper.
    base_filters : int
        Filters at the first level, doubling per level; 32 in the paper.
    dropout : float
        Dropout probability after the deepest encoder level and the bridge,
        in [0, 1); 0.5 in the paper.  Active only in training mode.
    up_relu : bool
        ReLU after each transposed convolution, as MATLAB's ``unetLayers``.

    Notes
    -----
    Input: float tensor (N, in_channels, H, W) with H and W multiples of
    ``2**depth``; output: (N, out_channels, H, W), unbounded (no activation).
    Weights start from He initialisation (:func:`init_weights`), as in
    ``unetLayers``; pass a seed there for reproducible networks.

    Raises
    ------
    ValidationError
        On a non-positive channel, depth or filter count or a dropout outside
        [0, 1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        depth: int = 4,
        base_filters: int = 32,
        dropout: float = 0.5,
        up_relu: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.depth = check_int(depth, "depth")
        self.base_filters = check_int(base_filters, "base_filters")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= float(dropout) < 1.0:
            raise ValidationError(f"dropout must be a probability in [0, 1); got {dropout!r}")
        self.dropout_p = float(dropout)
        self.size_multiple = 2**self.depth

        filters = [self.base_filters * 2**k for k in range(self.depth + 1)]
        self.encoders = nn.ModuleList(
            _DoubleConv(self.in_channels if k == 0 else filters[k - 1], filters[k]) for k in range(self.depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.encoder_dropout = nn.Dropout(self.dropout_p)
        self.bridge = _DoubleConv(filters[self.depth - 1], filters[self.depth])
        self.bridge_dropout = nn.Dropout(self.dropout_p)
        self.decoders = nn.ModuleList(
            _Up(filters[k + 1], filters[k], up_relu=up_relu) for k in reversed(range(self.depth))
        )
        self.head = nn.Conv2d(filters[0], self.out_channels, 1)
        init_weights(self, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ValueError, not ValidationError (its subclass): TorchScript compiles only built-in exceptions.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet2d expects input (N, {self.in_channels}, H, W); got {list(x.shape)}")
        if x.shape[2] % self.size_multiple != 0 or x.shape[3] % self.size_multiple != 0:
            raise ValueError(f"UNet2d input height and width must be multiples of {self.size_multiple}; "
                             f"got {list(x.shape)} (pad the slices, see mrfengine.nn.inference)")
        skips: list[torch.Tensor] = []
        n_enc = len(self.encoders)
        for k, enc in enumerate(self.encoders):
            x = enc(x)
            if k == n_enc - 1:
                x = self.encoder_dropout(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge_dropout(self.bridge(x))
        for k, dec in enumerate(self.decoders):
            x = dec(x, skips[n_enc - 1 - k])
        return self.head(x)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, depth={self.depth}, "
                f"base_filters={self.base_filters}, dropout={self.dropout_p}")


def init_weights(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """He (Kaiming normal, fan-in, ReLU gain) weights and zero biases for every
    convolution of ``model``, drawn from a generator seeded with ``seed``:
    the same seed gives the same weights, bit for bit.  Returns ``model``."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                w = torch.empty(module.weight.shape, dtype=torch.float32)
                nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=gen)
                module.weight.copy_(w)
                if module.bias is not None:
                    module.bias.zero_()
    return model
