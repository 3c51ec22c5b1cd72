"""The four generator / discriminator pairs as plain ``nn.Module``s (no Ray, no I/O).

Each model takes its own small dataclass of hyperparameters (``options.py``, ``hybrid.py``: plain
Python); ``asaptrain.config`` builds its ``[model]`` table from those dataclasses and
``asaptrain.train.nets`` builds the modules. Images are NCHW in [-1, 1];
``D(image, cond=None)`` returns one list per scale of [features..., patch logits].

    from asaptrain.models import ASAPNetConfig, ASAPNetGenerator
    G = ASAPNetGenerator(ASAPNetConfig(in_channels=3, residual=True))

Names load their module on first use, so that reading the options (``asaptrain.models.options``)
does not import torch.
"""

import importlib

_HOME = {
    "ASAPNetConfig": "options", "DeblurGANConfig": "options", "Pix2PixHDConfig": "options",
    "HybridConfig": "hybrid", "published_failure": "hybrid",
    "ASAPNetGenerator": "asapnet", "asapnet_discriminator": "asapnet",
    "MultiscaleDiscriminator": "blocks", "PatchGANConfig": "blocks", "ResnetBlock": "blocks", "init_weights": "blocks",
    "set_activation_checkpointing": "blocks",
    "DeblurGANGenerator": "deblurgan", "deblurgan_discriminator": "deblurgan",
    "PixelMLP": "pixel_mlp", "tile_coordinates": "pixel_mlp",
    "GlobalGenerator": "pix2pixhd", "LocalEnhancer": "pix2pixhd", "pix2pixhd_discriminator": "pix2pixhd",
    "pix2pixhd_generator": "pix2pixhd",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = list(_HOME)
