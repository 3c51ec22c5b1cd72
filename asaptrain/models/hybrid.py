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
==================  ===========================  =====================================

With reflect padding and no activation norm, a constant image gives identical low-res
features in every cell, hence identical tiles: no place in the frame is special.
``published_failure()`` rebuilds the failed configuration for tests and ablations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from asaptrain.models.asapnet import ASAPNetConfig, ASAPNetGenerator, AsapInit, asapnet_discriminator
from asaptrain.models.blocks import MultiscaleDiscriminator, NormKind, PaddingKind


@dataclass
class HybridConfig:
    """The hybrid generator's hyperparameters; ASAP-Net's, with sound defaults for deblurring."""

    channels: int = 3
    """Image channels in and out."""
    residual: bool = True
    """Output clamp(input + MLP output, -1, 1)."""
    mlp_input: str = "all"
    """Which input channels reach the pixelwise MLPs ("all_but_last" drops blue: the failure)."""
    tile_size: int = 16
    """S: pixels per MLP cell edge."""
    lowres_downsample: int = 16
    """Learned downsampling of the low-res stream."""
    lowres_width: int = 64
    """Width of the low-res stream's first convs, in channels."""
    lowres_max_channels: int = 1024
    """Width of the low-res blocks, in channels."""
    lowres_blocks: int = 7
    """conv-norm-ReLU blocks at grid resolution."""
    lowres_norm: NormKind = "none"
    """Low-res normalization (instance norm can make a fixed-location spot)."""
    padding: PaddingKind = "reflect"
    """Low-res padding (zero padding marks the frame's border and corners)."""
    mlp_depth: int = 5
    """Linear layers per pixelwise MLP."""
    mlp_width: int = 64
    """Hidden width of the pixelwise MLPs, in channels."""
    mlp_context: int = 3
    """k: each MLP sees the k x k patch around its pixel (deblurring needs neighbours; 1 = ASAP-Net)."""
    init: AsapInit = "hyper"
    """hyper (variance-preserving), xavier (ASAP-Net) or normal N(0, 0.02) (the published hybrid)."""
    last_layer_scale: float = 0.01
    """hyper init: scale of the predicted last MLP layer."""

    def asapnet(self) -> ASAPNetConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "channels"}
        return ASAPNetConfig(in_channels=self.channels, out_channels=self.channels, **fields)


def published_failure(**overrides) -> HybridConfig:
    """The configuration of the published hybrid that failed (see the module docstring)."""
    cfg = HybridConfig(residual=False, mlp_input="all_but_last", tile_size=32, lowres_norm="spectral_instance",
                       padding="zero", init="normal", mlp_context=1)
    return dataclasses.replace(cfg, **overrides)


class HybridGenerator(ASAPNetGenerator):
    """ASAP-Net's generator on RGB input; ``HybridGenerator()`` is the sound default."""

    def __init__(self, cfg: HybridConfig | None = None):
        cfg = cfg or HybridConfig()
        super().__init__(cfg.asapnet())
        self.hybrid_cfg = cfg


def hybrid_discriminator(
    conditional: bool = True, ndf: int = 64, num_d: int = 2, n_layers: int = 4, norm: NormKind = "spectral_instance",
    channels: int = 3,
) -> MultiscaleDiscriminator:
    """ASAP-Net's multiscale PatchGAN; conditional = it sees the blurred input beside the image."""
    return asapnet_discriminator(channels if conditional else 0, ndf, num_d, n_layers, norm, image_channels=channels)
