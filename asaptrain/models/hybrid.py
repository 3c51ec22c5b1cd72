"""The hybrid: ASAP-Net's generator and discriminator trained to deblur (RGB -> RGB).

The one published hybrid (lionelsnaw/ASAPNet_experiments) produced darkened images with a
black spot in the same place in every output. Each cause is a field of
:class:`HybridConfig`, defaulting to the sound choice:

==================  ===========================  =====================================
field               published (failed)           default here
==================  ===========================  =====================================
residual            off: a tanh MLP must         on: clamp(input + MLP), and the MLP's
                    reproduce absolute intensity last layer starts small, so G(x) ~ x
mlp_input           all_but_last: the blue       all: every channel reaches the MLP
                    channel never reaches it
tile_size           32 (crop 1024 at aspect 2)   16
lowres_norm         spectral + instance norm     none (instance norm is StyleGAN2's
                                                 "droplet" mechanism)
padding             zero                         reflect (pix2pixHD's fix for its spot)
init                every conv N(0, 0.02)        hyper: variance-preserving low-res convs
tile_blend          off: each pixel uses its     on: within blend_band = 4 px of a tile
                    tile's MLP, so every tile    edge two cells' MLPs mix linearly; no
                    edge is a step in the output seams (2.25x the nearest-cell MLP)
lowres stream       ASAP-Net's 64 -> 1024        32 -> 256 channels, 3 blocks: sized for
                    channels, 7 blocks           deblurring
mlp_context         1: a pixel's own colour      5: the 5 x 5 neighbourhood (9.1 of
                    (cannot undo a blur)         DeblurGAN's 99 GFLOPs in all)
==================  ===========================  =====================================

With reflect padding and no activation norm, a constant image gives identical low-res
features in every cell, hence identical tiles: no place in the frame is special.
``published_failure()`` rebuilds the failed configuration for tests and ablations. The hybrid's
generator is ASAP-Net's (``ASAPNetGenerator(HybridConfig())``); this module is plain Python, so
the run config reads these defaults without loading torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from asaptrain.models.options import ASAPNetConfig, AsapInit, MlpInput, NormKind, PaddingKind


@dataclass
class HybridConfig(ASAPNetConfig):
    """ASAP-Net's generator hyperparameters with the sound defaults for RGB -> RGB deblurring.

    Only the defaults differ from :class:`ASAPNetConfig` (whose fields document themselves):
    residual output on, every channel reaches the MLPs, no low-res normalization (instance
    norm can make a fixed-location spot), reflection padding (zero padding marks the frame),
    the variance-preserving "hyper" init, each MLP sees its pixel's 5 x 5 neighbourhood, and
    pixels near tile edges blend neighbouring cells' MLPs (no seams); a low-res stream sized for
    deblurring rather than for ASAP-Net's 35-channel label maps.
    """

    in_channels: int = 3
    out_channels: int = 3
    residual: bool = True
    mlp_input: MlpInput = "all"
    lowres_norm: NormKind = "none"
    padding: PaddingKind = "reflect"
    init: AsapInit = "hyper"
    mlp_context: int = 5
    tile_blend: bool = True
    blend_band: int = 4
    lowres_width: int = 32
    lowres_max_channels: int = 256
    lowres_blocks: int = 3


def published_failure(**overrides) -> HybridConfig:
    """The configuration of the published hybrid that failed (see the module docstring)."""
    cfg = HybridConfig(residual=False, mlp_input="all_but_last", tile_size=32, lowres_norm="spectral_instance",
                       padding="zero", init="normal", mlp_context=1, tile_blend=False, lowres_width=64,
                       lowres_max_channels=1024, lowres_blocks=7)
    return dataclasses.replace(cfg, **overrides)
