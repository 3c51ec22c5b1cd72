"""Config -> modules: the one place that reads a :class:`Config` to build G and D.

    G = build_generator(cfg); D = build_discriminator(cfg)
    x = ...  # (B, generator_in_channels(cfg), H, W)

The generator's options are its model's own dataclass (``models/options.py``), which the
``[model]`` table is generated from: ``generator_config`` (``config/validate.py``) hands it back,
checked, with the channels the task decides; nothing here copies a field.

Discriminator depth: ``model.d_layers`` is read the way each reference counts it. pix2pixHD
and DeblurGAN count stride-2 convs (3); SPADE/ASAP-Net count every feature conv including
the final stride-1 one (4). Both presets therefore build the same five-conv PatchGAN.
"""

from __future__ import annotations

import torch.nn as nn

from asaptrain.config.schema import Config
from asaptrain.config.validate import (IMAGE_CHANNELS, discriminator_config, generator_config,  # noqa: F401
                                       generator_in_channels)
from asaptrain.models.asapnet import ASAPNetGenerator, asapnet_discriminator
from asaptrain.models.deblurgan import DeblurGANGenerator, deblurgan_discriminator
from asaptrain.models.pix2pixhd import pix2pixhd_discriminator, pix2pixhd_generator
from asaptrain.models.blocks import set_activation_checkpointing


def size_multiple(cfg: Config) -> int:
    """Height and width the generator accepts are multiples of this (pixels): the tile for the
    pixelwise models, the total stride of the convolutional ones (a local enhancer halves once more)."""
    m = cfg.model
    if m.name in ("asapnet", "hybrid"):
        return m.tile_size
    return 2 ** (m.downsamplings + (m.local_enhancers if m.name == "pix2pixhd" else 0))


def min_input_size(cfg: Config) -> int:
    """The smallest height or width (pixels) the generator runs at: two multiples, so the coarsest
    feature map has more than one pixel for instance norm and reflection padding."""
    return 2 * size_multiple(cfg)


def build_generator(cfg: Config) -> nn.Module:
    """G for ``cfg``: ``G(x) -> (B, 3, H, W)`` in [-1, 1]."""
    build = {"asapnet": ASAPNetGenerator, "hybrid": ASAPNetGenerator,  # the hybrid: ASAP-Net's, other defaults
             "pix2pixhd": pix2pixhd_generator, "deblurgan": DeblurGANGenerator}[cfg.model.name]
    G = build(generator_config(cfg))
    set_activation_checkpointing(G, cfg.train.activation_checkpointing)
    return G


def build_discriminator(cfg: Config) -> nn.Module:
    """D for ``cfg``: ``D(image, cond=None) -> [[features..., logits] per scale]``."""
    opts = discriminator_config(cfg)  # the model's own options, checked (ConfigError naming the key)
    cond = generator_in_channels(cfg) if opts.d_conditional else 0
    build = {"asapnet": asapnet_discriminator, "hybrid": asapnet_discriminator,
             "pix2pixhd": pix2pixhd_discriminator}.get(cfg.model.name, deblurgan_discriminator)
    return build(cond, opts, IMAGE_CHANNELS)


def feature_matching_layer_weight(cfg: Config) -> float:
    """pix2pixHD's 4 / (n_layers + 1) factor on feature matching (1 at its n_layers = 3); 1 elsewhere."""
    return 4.0 / (cfg.model.d_layers + 1) if cfg.model.name == "pix2pixhd" else 1.0


__all__ = [
    "build_generator", "build_discriminator", "generator_in_channels", "size_multiple", "min_input_size",
    "generator_config", "feature_matching_layer_weight",
]
