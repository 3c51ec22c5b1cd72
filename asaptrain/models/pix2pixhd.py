"""pix2pixHD (Wang et al., CVPR 2018): the global generator, the local enhancer, and its
multiscale discriminator.

    G = pix2pixhd_generator(Pix2PixHDConfig(in_channels=36))            # 512x1024 model
    G = pix2pixhd_generator(Pix2PixHDConfig(ngf=32, local_enhancers=1))  # 1024x2048 model
    D = pix2pixhd_discriminator(cond_channels=36)                      # two scales

Global generator: reflect 7x7 conv, 4 stride-2 convs, 9 ResNet blocks (reflection padding),
transposed-conv upsampling, reflect 7x7 conv, tanh; instance norm without affine; 182.55 M
parameters with 36 inputs. Init N(0, 0.02) for convs, N(1, 0.02) for norm weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.models.blocks import (
    MultiscaleDiscriminator, PatchGANConfig, ResnetBlock, conv_block, init_weights, resnet_trunk, rgb_head,
)
from asaptrain.models.options import DiscriminatorConfig, Pix2PixHDConfig, Pix2PixHDDiscriminatorConfig


class GlobalGenerator(nn.Module):
    """The global generator; ``features(x)`` stops before the RGB head (for the enhancer)."""

    def __init__(self, in_channels: int, out_channels: int, ngf: int, downsamplings: int, blocks: int, norm: str):
        super().__init__()
        self.trunk = resnet_trunk(in_channels, ngf, downsamplings, blocks, norm)
        self.head = rgb_head(ngf, out_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class LocalEnhancer(nn.Module):
    """Global generator (width ngf * 2^N) on the input avg-pooled N times, then N enhancers.

    Enhancer n downsamples its own-resolution input once, adds the coarser net's features,
    and upsamples through its ResNet blocks; the last one ends in the RGB head.
    """

    def __init__(self, cfg: Pix2PixHDConfig):
        super().__init__()
        n = cfg.local_enhancers
        self.global_net = GlobalGenerator(cfg.in_channels, cfg.out_channels, cfg.ngf * 2**n, cfg.downsamplings,
                                          cfg.residual_blocks, cfg.norm)
        del self.global_net.head  # pix2pixHD drops the global net's last pad-conv-tanh
        relu = lambda: nn.ReLU(True)  # noqa: E731
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(1, n + 1):
            width = cfg.ngf * 2 ** (n - i)
            kw = dict(norm=cfg.norm, bias_before_norm=True)
            self.down.append(nn.Sequential(
                *conv_block(cfg.in_channels, width, 7, padding=3, padding_mode="reflect", act=relu(), **kw),
                *conv_block(width, 2 * width, 3, 2, 1, act=relu(), **kw),
            ))
            self.up.append(nn.Sequential(
                *[ResnetBlock(2 * width, cfg.norm) for _ in range(cfg.local_residual_blocks)],
                *conv_block(2 * width, width, 3, 2, 1, act=relu(), transposed=True, **kw),
            ))
        self.head = rgb_head(cfg.ngf, cfg.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(len(self.down)):
            pyramid.append(F.avg_pool2d(pyramid[-1], 3, 2, 1, count_include_pad=False))
        feats = self.global_net.features(pyramid[-1])
        for i, (down, up) in enumerate(zip(self.down, self.up)):
            feats = up(down(pyramid[len(self.down) - 1 - i]) + feats)
        return self.head(feats)


def pix2pixhd_generator(cfg: Pix2PixHDConfig | None = None) -> nn.Module:
    """The global generator, or the local enhancer when ``cfg.local_enhancers`` > 0."""
    cfg = cfg or Pix2PixHDConfig()
    if cfg.local_enhancers:
        g: nn.Module = LocalEnhancer(cfg)
    else:
        g = GlobalGenerator(cfg.in_channels, cfg.out_channels, cfg.ngf, cfg.downsamplings, cfg.residual_blocks,
                            cfg.norm)
    init_weights(g, "normal", 0.02)
    return g


def pix2pixhd_discriminator(cond_channels: int, opts: DiscriminatorConfig | None = None,
                            image_channels: int = 3) -> MultiscaleDiscriminator:
    """pix2pixHD's multiscale discriminator (options: ``Pix2PixHDDiscriminatorConfig``'s defaults):
    ``d_layers`` stride-2 convs, a stride-1 conv, logits."""
    o = opts if opts is not None else Pix2PixHDDiscriminatorConfig()
    return MultiscaleDiscriminator(PatchGANConfig(
        image_channels=image_channels, cond_channels=cond_channels, ndf=o.ndf, strided=o.d_layers, num_d=o.num_d,
        norm=o.d_norm, bias_before_norm=True, init="normal",
    ))
