"""The four generator / discriminator pairs as plain ``nn.Module``s (no Ray, no I/O).

Each model takes its own small dataclass of hyperparameters; ``asaptrain.train.nets`` maps the
run's :class:`~asaptrain.config.Config` onto them. Images are NCHW in [-1, 1];
``D(image, cond=None)`` returns one list per scale of [features..., patch logits].
"""

from asaptrain.models.asapnet import ASAPNetConfig, ASAPNetGenerator, asapnet_discriminator
from asaptrain.models.blocks import (
    MultiscaleDiscriminator, PatchGANConfig, ResnetBlock, init_weights, set_activation_checkpointing,
)
from asaptrain.models.deblurgan import DeblurGANConfig, DeblurGANGenerator, deblurgan_discriminator
from asaptrain.models.hybrid import HybridConfig, HybridGenerator, published_failure
from asaptrain.models.pixel_mlp import PixelMLP, tile_coordinates
from asaptrain.models.pix2pixhd import (
    GlobalGenerator, LocalEnhancer, Pix2PixHDConfig, pix2pixhd_discriminator, pix2pixhd_generator,
)

__all__ = [
    "ASAPNetConfig", "ASAPNetGenerator", "PixelMLP", "asapnet_discriminator", "tile_coordinates",
    "MultiscaleDiscriminator", "PatchGANConfig", "ResnetBlock", "init_weights", "set_activation_checkpointing",
    "DeblurGANConfig", "DeblurGANGenerator", "deblurgan_discriminator",
    "HybridConfig", "HybridGenerator", "published_failure",
    "GlobalGenerator", "LocalEnhancer", "Pix2PixHDConfig", "pix2pixhd_discriminator", "pix2pixhd_generator",
]
