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

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.models.blocks import MultiscaleDiscriminator, PatchGANConfig, Recomputable, conv_block, init_weights
from asaptrain.models.options import (ASAPNetConfig, ASAPNetDiscriminatorConfig, AsapInit,  # noqa: F401 - re-exported
                                      DiscriminatorConfig)
from asaptrain.models.pixel_mlp import PixelMLP, tile_coordinates  # noqa: F401 - re-exported
from asaptrain.models.traceable import tent_conv

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


class LowResStream(Recomputable, nn.Module):
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
        feats = self._maybe_recomputed(self.body, self.shrink(x))
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


def asapnet_discriminator(cond_channels: int, opts: DiscriminatorConfig | None = None,
                          image_channels: int = 3) -> MultiscaleDiscriminator:
    """ASAP-Net's (SPADE's) multiscale PatchGAN (options: ``ASAPNetDiscriminatorConfig``'s
    defaults); ``d_layers`` counts as SPADE does.

    SPADE's n_layers_D = 4 means four feature convs, the last one stride 1 (then the logit
    conv): the same network as pix2pixHD's n_layers_D = 3, which counts stride-2 convs only.
    Conv biases before the norm are dropped and weights are xavier gain 0.02, as in ASAP-Net.
    """
    o = opts if opts is not None else ASAPNetDiscriminatorConfig()
    if o.d_layers < ASAPNetDiscriminatorConfig.min_layers:  # options of another model's class
        raise ValueError(f"d_layers must be >= 2 (SPADE counting), got {o.d_layers}")
    return MultiscaleDiscriminator(PatchGANConfig(
        image_channels=image_channels, cond_channels=cond_channels, ndf=o.ndf, strided=o.d_layers - 1,
        num_d=o.num_d, norm=o.d_norm, bias_before_norm=False, init="xavier",
    ))
