"""ASAP-Net (Shaham et al., CVPR 2021): a tiny low-res convnet predicts one pixelwise MLP per
S x S tile; the MLPs run at full resolution on the input pixels and their coordinates.

    G = ASAPNetGenerator(ASAPNetConfig(in_channels=36, mlp_input="all_but_last"))
    y = G(x)              # x: (B, 36, H, W), H and W multiples of tile_size -> (B, 3, H, W)

Speed: the full-resolution part is ``pixel_mlp.PixelMLP`` (on the CPU a grouped conv and
batched matmuls on channel-major tiles, cache-sized chunks of cells at a time; on CUDA
gathered rows for training and one fused Triton kernel for inference; no per-pixel weight
maps, no Python loop over pixels). The low-res stream runs on a 16-row grid and is tiny at
full resolution; its 1x1 head is applied channels-last so each cell's parameters come out
contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.models.blocks import (
    NORMS, MultiscaleDiscriminator, NormKind, PaddingKind, PatchGANConfig, conv_block, init_weights,
)
from asaptrain.models.pixel_mlp import LAYOUTS, MlpLayout, PixelMLP, tile_coordinates  # noqa: F401 - re-exported
from asaptrain.models.traceable import tent_conv

AsapInit = Literal["xavier", "normal", "hyper"]


@dataclass
class ASAPNetConfig:
    """Hyperparameters of the ASAP-Net generator (defaults: the Cityscapes model)."""

    in_channels: int = 36
    """Input channels: one-hot labels (+ instance edges last), or RGB."""
    out_channels: int = 3
    """Output image channels."""
    tile_size: int = 16
    """S: pixels per MLP cell edge; the low-res grid is (H / S, W / S)."""
    lowres_downsample: int = 16
    """Learned downsampling of the low-res stream (log2 of it stride-2 convs); S / this is a fixed shrink."""
    lowres_width: int = 64
    """Width of the low-res stream's first convs, in channels."""
    lowres_max_channels: int = 1024
    """Width of its last strided conv and its blocks, in channels."""
    lowres_blocks: int = 7
    """conv3x3-norm-ReLU blocks at grid resolution."""
    lowres_norm: NormKind = "instance"
    """Low-res normalization (instance = affine instance norm, ASAP-Net's default)."""
    padding: PaddingKind = "zero"
    """Padding of the low-res convs."""
    mlp_depth: int = 5
    """Linear layers per pixelwise MLP."""
    mlp_width: int = 64
    """Hidden width of the pixelwise MLPs, in channels."""
    mlp_input: Literal["all", "all_but_last"] = "all"
    """all_but_last: the last input channel (instance edges) reaches the low-res stream only."""
    residual: bool = False
    """Output clamp(input + MLP output, -1, 1) (needs in_channels == out_channels)."""
    mlp_context: int = 1
    """k (odd): each MLP sees the k x k input patch around its pixel (1 = the pixel only, ASAP-Net)."""
    tile_blend: bool = False
    """Mix neighbouring cells' MLPs near tile edges (see ``blend_band``): no seams at tile edges."""
    blend_band: int = 0
    """With tile_blend: pixels each side of a tile edge over which two cells' MLPs are mixed;
    0 = tile_size / 2 (bilinear between cell centres, 4x the MLP work; S / 4: 2.25x)."""
    mlp_layout: MlpLayout = "auto"
    """Unfused pixelwise path: auto (by device), rows or planes (see ``pixel_mlp``); one function."""
    init: AsapInit = "xavier"
    """xavier gain 0.02 (ASAP-Net), normal N(0, 0.02) (the published hybrid), or hyper (see below)."""
    last_layer_scale: float = 0.01
    """hyper init: scale of the predicted last MLP layer (small: output ~ input at init)."""

    def __post_init__(self) -> None:
        for name in ("tile_size", "lowres_downsample"):
            v = getattr(self, name)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 2, got {v}")
        if self.tile_size % self.lowres_downsample:
            raise ValueError(f"tile_size={self.tile_size} must be a multiple of "
                             f"lowres_downsample={self.lowres_downsample}")
        if self.lowres_norm not in NORMS:
            raise ValueError(f"lowres_norm must be one of {', '.join(NORMS)}, got {self.lowres_norm!r}")
        if self.mlp_input not in ("all", "all_but_last"):
            raise ValueError(f"mlp_input must be all or all_but_last, got {self.mlp_input!r}")
        if self.init not in ("xavier", "normal", "hyper"):
            raise ValueError(f"init must be xavier, normal or hyper, got {self.init!r}")
        if self.residual and self.in_channels != self.out_channels:
            raise ValueError(f"residual output needs in_channels == out_channels, got {self.in_channels} "
                             f"and {self.out_channels}")
        if self.mlp_layout not in LAYOUTS:
            raise ValueError(f"mlp_layout must be one of {', '.join(LAYOUTS)}, got {self.mlp_layout!r}")
        if self.mlp_context < 1 or self.mlp_context % 2 == 0:
            raise ValueError(f"mlp_context must be an odd number >= 1, got {self.mlp_context}")
        if not 0 <= self.blend_band <= self.tile_size // 2:
            raise ValueError(f"blend_band must be in 0..tile_size / 2 = {self.tile_size // 2}, got {self.blend_band}")
        if self.mlp_depth < 1 or self.mlp_width < 1 or self.lowres_blocks < 0:
            raise ValueError(f"mlp_depth and mlp_width must be >= 1, lowres_blocks >= 0: {self}")


class TentDownsample(nn.Module):
    """Fixed bilinear antialiased shrink by ``factor`` (a tent filter 2 x factor taps wide).

    Shrinks the input by S / lowres_downsample before the low-res stream, as ASAP-Net does
    when its total downsampling exceeds the learned factor. In the interior this is exactly
    ASAP-Net's separable tent [1, 3, ..., 2f-1, 2f-1, ..., 3, 1]; at the border the filter is
    renormalized instead of reflected, so a constant image stays constant. One fused kernel,
    no padded copy of the full-resolution input.
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.traceable = False
        """Run as a strided depthwise conv (``traceable.tent_conv``, the same filter) for ONNX export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.traceable:
            return tent_conv(x, self.factor)
        size = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class LowResStream(nn.Module):
    """Input (B, C, H, W) -> per-cell MLP parameters (B, H/S, W/S, num_params), channels last."""

    def __init__(self, cfg: ASAPNetConfig, num_params: int):
        super().__init__()
        shrink = cfg.tile_size // cfg.lowres_downsample
        self.shrink = TentDownsample(shrink) if shrink > 1 else nn.Identity()
        relu = lambda: nn.ReLU(True)  # noqa: E731
        kw = dict(padding_mode=cfg.padding, norm=cfg.lowres_norm, affine=True, act=None)
        width = cfg.lowres_width
        layers = conv_block(cfg.in_channels, width, 3, **kw) + [relu()]
        steps = int(math.log2(cfg.lowres_downsample))
        for i in range(steps):
            out = cfg.lowres_max_channels if i == steps - 1 else width
            layers += conv_block(width, out, 3, 2, **kw) + [relu()]
            width = out
        for _ in range(cfg.lowres_blocks):
            layers += conv_block(width, width, 3, **kw) + [relu()]
        self.body = nn.Sequential(*layers)
        # A 1x1 conv applied channels-last: each cell's parameters come out as one contiguous
        # row, the layout both MLP paths read (no transpose of the largest low-res tensor).
        self.head = nn.Linear(width, num_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(self.shrink(x))
        return self.head(feats.permute(0, 2, 3, 1))


class ASAPNetGenerator(nn.Module):
    """Low-res stream -> per-tile MLP parameters; pixelwise MLPs at full resolution."""

    MODULATION = 0.5
    """hyper init: std of the feature-driven part of each predicted weight, relative to the base."""

    def __init__(self, cfg: ASAPNetConfig):
        super().__init__()
        self.cfg = cfg
        mlp_in = cfg.in_channels - (1 if cfg.mlp_input == "all_but_last" else 0)
        band = (cfg.blend_band or cfg.tile_size // 2) if cfg.tile_blend else 0
        self.mlp = PixelMLP(mlp_in, cfg.out_channels, cfg.mlp_width, cfg.mlp_depth, cfg.tile_size, cfg.mlp_context,
                            band, cfg.mlp_layout)
        self.lowres = LowResStream(cfg, self.mlp.num_params)
        if cfg.init == "hyper":
            self._init_hyper()
        else:
            init_weights(self, cfg.init, 0.02)

    def _init_hyper(self) -> None:
        """Variance-preserving init for a norm-free low-res stream (the hybrid's default).

        ASAP-Net's xavier gain 0.02 relies on instance norm to restore the scale after every
        conv; without a norm, 13 such convs shrink the signal by ~0.02 each and the predicted
        MLPs are the same (zero) for every input. Here the convs are He-normal, and the head
        predicts each MLP weight as base + modulation: its bias holds one He-initialized MLP
        (so signal propagates through the MLP whatever the feature scale), its weight adds a
        feature-driven part with ``MODULATION`` x the base's std per unit feature. Predicted
        biases start at zero, and the last layer starts ``last_layer_scale`` times smaller, so
        that with the residual output G(x) ~ x at init while every input still matters.
        """
        init_weights(self.lowres.body, "kaiming")
        head = self.lowres.head
        fan = head.in_features
        with torch.no_grad():
            w_rows = torch.split(head.weight, self.mlp.splits, dim=0)
            b_rows = torch.split(head.bias, self.mlp.splits, dim=0)
            last = len(self.mlp.dims) - 2
            for i, cin in enumerate(self.mlp.dims[:-1]):
                gain = 2.0 / (1 + 0.01**2) if i < last else 1.0  # He for LeakyReLU(0.01); tanh last
                std = math.sqrt(gain / cin) * (self.cfg.last_layer_scale if i == last else 1.0)
                b_rows[2 * i].normal_(0.0, std)
                w_rows[2 * i].normal_(0.0, std * self.MODULATION / math.sqrt(fan))
                b_rows[2 * i + 1].zero_()
                w_rows[2 * i + 1].zero_()

    def mlp_channels(self, x: torch.Tensor) -> torch.Tensor:
        """The input channels the pixelwise MLPs see: all, or all but the last."""
        return x[:, :-1] if self.cfg.mlp_input == "all_but_last" else x

    def mlp_input(self, x: torch.Tensor) -> torch.Tensor:
        """What each MLP sees per pixel, as an image: with ``mlp_context`` k > 1 the k x k
        neighbourhood of the pixel (reflect-padded), so an MLP can undo a blur, which a function
        of one pixel's own value cannot. ``PixelMLP`` builds the same channels in its gather;
        this explicit form is the reference it is tested against."""
        x = self.mlp_channels(x)
        k = self.cfg.mlp_context
        if k == 1:
            return x
        b, c, h, w = x.shape
        patches = F.unfold(F.pad(x, (k // 2,) * 4, mode="reflect"), k)  # (B, C*k*k, H*W)
        return patches.view(b, c * k * k, h, w)

    def set_traceable(self, on: bool = True) -> ASAPNetGenerator:
        """Run (``on``) in ops whose sizes a trace keeps symbolic, for ONNX / TorchScript export:
        the pixelwise MLPs on aligned tiles and the antialiased shrink as a conv (``traceable.py``).
        The same function up to float rounding, slower than the training and inference paths."""
        for module in self.modules():
            if isinstance(module, (PixelMLP, TentDownsample)):
                module.traceable = on
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.cfg.tile_size
        if x.shape[-2] % S or x.shape[-1] % S:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} must be a multiple of tile_size={S} in both sides")
        params = self.lowres(x)
        y = self.mlp(self.mlp_channels(x), params)
        if self.cfg.residual:
            y = (x + y.to(x.dtype)).clamp(-1.0, 1.0)  # in the input's precision, not bf16
        return y


def asapnet_discriminator(
    cond_channels: int, ndf: int = 64, num_d: int = 2, n_layers: int = 4, norm: NormKind = "spectral_instance",
    image_channels: int = 3,
) -> MultiscaleDiscriminator:
    """ASAP-Net's (SPADE's) multiscale PatchGAN; ``n_layers`` counts as SPADE does.

    SPADE's n_layers_D = 4 means four feature convs, the last one stride 1 (then the logit
    conv): the same network as pix2pixHD's n_layers_D = 3, which counts stride-2 convs only.
    Conv biases before the norm are dropped and weights are xavier gain 0.02, as in ASAP-Net.
    """
    if n_layers < 2:
        raise ValueError(f"n_layers must be >= 2 (SPADE counting), got {n_layers}")
    return MultiscaleDiscriminator(PatchGANConfig(
        image_channels=image_channels, cond_channels=cond_channels, ndf=ndf, strided=n_layers - 1,
        num_d=num_d, norm=norm, bias_before_norm=False, init="xavier",
    ))
