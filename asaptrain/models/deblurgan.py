"""DeblurGAN (Kupyn et al., CVPR 2018): a ResNet generator with a global residual, and an
unconditional PatchGAN critic.

    G = DeblurGANGenerator(DeblurGANConfig())     # (B, 3, H, W) blurred -> sharp, H, W % 4 == 0
    D = deblurgan_discriminator()

Generator: reflect 7x7 conv to 64, two stride-2 convs (128, 256), ``residual_blocks`` ResNet
blocks of two convs each (the paper's block and the published weights' (11.38 M parameters);
the one-conv block is in the reference code only since a 2019 change made after the weights
were released, see ``blocks.ResnetBlock``), optional dropout between the two convs, two
transposed convs, reflect 7x7 conv, tanh; with ``residual``: clamp(input + output, -1, 1).
Instance norm without affine; init N(0, 0.02).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from asaptrain.models.blocks import (
    MultiscaleDiscriminator, init_weights, resnet_trunk, rgb_head,
)
from asaptrain.models.options import DeblurGANConfig, DeblurGANDiscriminatorConfig, DiscriminatorConfig
from asaptrain.models.pix2pixhd import pix2pixhd_discriminator


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


def deblurgan_discriminator(cond_channels: int = 0, opts: DiscriminatorConfig | None = None,
                            image_channels: int = 3) -> MultiscaleDiscriminator:
    """DeblurGAN's PatchGAN critic (no sigmoid): pix2pixHD's discriminator, one scale and
    unconditional in its recipe (``DeblurGANDiscriminatorConfig``'s defaults)."""
    return pix2pixhd_discriminator(cond_channels, opts if opts is not None else DeblurGANDiscriminatorConfig(),
                                   image_channels)
