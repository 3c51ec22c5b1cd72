"""DeblurGAN (Kupyn et al., CVPR 2018): a ResNet generator with a global residual, and an
unconditional PatchGAN critic.

    G = DeblurGANGenerator(DeblurGANConfig())     # (B, 3, H, W) blurred -> sharp, H, W % 4 == 0
    D = deblurgan_discriminator()

Generator: reflect 7x7 conv to 64, two stride-2 convs (128, 256), ``residual_blocks`` ResNet
blocks of two convs each (the paper's block and the published weights'; see
``blocks.ResnetBlock`` for the one-conv slip of the reference code since 2019), optional dropout
between the two convs, two transposed convs, reflect
7x7 conv, tanh; with ``residual``: clamp(input + output, -1, 1). Instance norm without affine;
init N(0, 0.02).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from asaptrain.models.blocks import (
    MultiscaleDiscriminator, NormKind, init_weights, resnet_trunk, rgb_head,
)
from asaptrain.models.pix2pixhd import pix2pixhd_discriminator


@dataclass
class DeblurGANConfig:
    """DeblurGAN generator hyperparameters (defaults: the GoPro model)."""

    channels: int = 3
    """Image channels in and out."""
    ngf: int = 64
    """Width of the first conv, in channels (doubles per downsampling)."""
    downsamplings: int = 2
    """Stride-2 convs in the encoder."""
    residual_blocks: int = 9
    """ResNet blocks (two 3x3 convs each) at the bottleneck."""
    dropout: float = 0.5
    """Dropout probability between the two convs of each block; 0 disables."""
    norm: NormKind = "instance"
    """Normalization (instance norm without affine)."""
    residual: bool = True
    """Output clamp(input + G(input), -1, 1) (DeblurGAN's learn_residual)."""

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if min(self.ngf, self.downsamplings, self.residual_blocks) < 1:
            raise ValueError(f"ngf, downsamplings and residual_blocks must be >= 1: {self}")


class DeblurGANGenerator(nn.Module):
    def __init__(self, cfg: DeblurGANConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DeblurGANConfig()
        self.trunk = resnet_trunk(cfg.channels, cfg.ngf, cfg.downsamplings, cfg.residual_blocks, cfg.norm,
                                  cfg.dropout)
        self.head = rgb_head(cfg.ngf, cfg.channels)
        init_weights(self, "normal", 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.trunk(x))
        if self.cfg.residual:
            y = (x + y.to(x.dtype)).clamp(-1.0, 1.0)
        return y


def deblurgan_discriminator(
    cond_channels: int = 0, ndf: int = 64, num_d: int = 1, n_layers: int = 3, norm: NormKind = "instance",
    image_channels: int = 3,
) -> MultiscaleDiscriminator:
    """DeblurGAN's PatchGAN critic (no sigmoid): pix2pixHD's discriminator, one scale and
    unconditional in its recipe."""
    return pix2pixhd_discriminator(cond_channels, ndf, num_d, n_layers, norm, image_channels)
