"""Config -> modules: the one place that reads a :class:`Config` to build G and D.

    G = build_generator(cfg); D = build_discriminator(cfg)
    x = ...  # (B, generator_in_channels(cfg), H, W)

Each model's own dataclass is filled from ``cfg.model`` / ``cfg.data`` here, so the models
stay usable with plain keyword arguments in a notebook.

Discriminator depth: ``model.d_layers`` is read the way each reference counts it. pix2pixHD
and DeblurGAN count stride-2 convs (3); SPADE/ASAP-Net count every feature conv including
the final stride-1 one (4). Both presets therefore build the same five-conv PatchGAN.
"""

from __future__ import annotations

import torch.nn as nn

from asaptrain.config.schema import Config, ConfigError
from asaptrain.models.asapnet import ASAPNetConfig, ASAPNetGenerator, asapnet_discriminator
from asaptrain.models.blocks import set_activation_checkpointing
from asaptrain.models.deblurgan import DeblurGANConfig, DeblurGANGenerator, deblurgan_discriminator
from asaptrain.models.hybrid import HybridConfig
from asaptrain.models.pix2pixhd import Pix2PixHDConfig, pix2pixhd_discriminator, pix2pixhd_generator

IMAGE_CHANNELS = 3


def generator_in_channels(cfg: Config) -> int:
    """labels2photo: one-hot labels (+1 instance-edge channel); deblur: RGB."""
    if cfg.data.task == "labels2photo":
        return cfg.data.num_labels + (1 if cfg.data.instance_edges else 0)
    return IMAGE_CHANNELS


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


def discriminator_in_channels(cfg: Config) -> int:
    """The image, plus the generator's input when the discriminator is conditional."""
    return IMAGE_CHANNELS + (generator_in_channels(cfg) if cfg.model.d_conditional else 0)


def _asap_init(cfg: Config) -> str:
    if cfg.model.asap_init != "auto":
        return cfg.model.asap_init
    return "hyper" if cfg.model.name == "hybrid" else "xavier"


def generator_config(cfg: Config):
    """The model's own hyperparameter dataclass for ``cfg``.

    ``config.schema.validate`` already refused, in config fields, what these dataclasses refuse;
    a ValueError here still comes back as a ConfigError naming the model.
    """
    m = cfg.model
    try:
        if m.name in ("asapnet", "hybrid"):  # the same generator; the hybrid's class only changes defaults
            return (HybridConfig if m.name == "hybrid" else ASAPNetConfig)(
                in_channels=generator_in_channels(cfg), out_channels=IMAGE_CHANNELS, residual=m.residual,
                tile_size=m.tile_size, lowres_downsample=m.lowres_downsample, lowres_width=m.lowres_width,
                lowres_max_channels=m.lowres_max_channels, lowres_blocks=m.lowres_blocks,
                lowres_norm=m.lowres_norm, padding=m.padding, mlp_depth=m.mlp_depth, mlp_width=m.mlp_width,
                mlp_input=m.mlp_input, init=_asap_init(cfg), mlp_context=m.mlp_context, tile_blend=m.tile_blend,
                blend_band=m.blend_band, mlp_layout=m.mlp_layout,
            )
        if m.name == "pix2pixhd":
            return Pix2PixHDConfig(
                in_channels=generator_in_channels(cfg), out_channels=IMAGE_CHANNELS, ngf=m.ngf,
                downsamplings=m.downsamplings, residual_blocks=m.residual_blocks, local_enhancers=m.local_enhancers,
                norm=m.g_norm,
            )
        return DeblurGANConfig(
            channels=IMAGE_CHANNELS, ngf=m.ngf, downsamplings=m.downsamplings, residual_blocks=m.residual_blocks,
            dropout=m.dropout, norm=m.g_norm, residual=m.residual,
        )
    except ValueError as exc:
        raise ConfigError(f"model ({m.name}): {exc}") from None


def build_generator(cfg: Config) -> nn.Module:
    """G for ``cfg``: ``G(x) -> (B, 3, H, W)`` in [-1, 1]."""
    gcfg = generator_config(cfg)
    if isinstance(gcfg, ASAPNetConfig):  # the hybrid's config too: the same generator
        G = ASAPNetGenerator(gcfg)
    elif isinstance(gcfg, Pix2PixHDConfig):
        G = pix2pixhd_generator(gcfg)
    else:
        G = DeblurGANGenerator(gcfg)
    set_activation_checkpointing(G, cfg.train.activation_checkpointing)
    return G


def build_discriminator(cfg: Config) -> nn.Module:
    """D for ``cfg``: ``D(image, cond=None) -> [[features..., logits] per scale]``."""
    m = cfg.model
    cond = generator_in_channels(cfg) if m.d_conditional else 0
    try:
        if m.name in ("asapnet", "hybrid"):
            return asapnet_discriminator(cond, m.ndf, m.num_d, m.d_layers, m.d_norm, IMAGE_CHANNELS)
        if m.name == "pix2pixhd":
            return pix2pixhd_discriminator(cond, m.ndf, m.num_d, m.d_layers, m.d_norm, IMAGE_CHANNELS)
        return deblurgan_discriminator(cond, m.ndf, m.num_d, m.d_layers, m.d_norm, IMAGE_CHANNELS)
    except ValueError as exc:
        raise ConfigError(f"model.d_* ({m.name}): {exc}") from None


def feature_matching_layer_weight(cfg: Config) -> float:
    """pix2pixHD's 4 / (n_layers + 1) factor on feature matching (1 at its n_layers = 3); 1 elsewhere."""
    return 4.0 / (cfg.model.d_layers + 1) if cfg.model.name == "pix2pixhd" else 1.0


__all__ = [
    "build_generator", "build_discriminator", "generator_in_channels", "size_multiple", "min_input_size", "discriminator_in_channels",
    "generator_config", "feature_matching_layer_weight",
]
