"""Named presets as code: each paper's recipe, and a tiny ``*-smoke`` variant of each.

A preset is a function of nothing that returns a full :class:`Config`; ``get_preset`` hands
out a fresh copy, so callers may mutate it. Values follow the reference code's defaults
(tamarott/ASAPNet, NVIDIA/pix2pixHD, KupynOrest/DeblurGAN); epochs are converted to steps at
the datasets' sizes (Cityscapes train 2975 images, GoPro train 2103 pairs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from asaptrain.config.model import model_defaults
from asaptrain.config.schema import (
    Config,
    ConfigError,
    CurriculumConfig,
    DataConfig,
    EvalConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
)
from asaptrain.config.validate import validate

CITYSCAPES_TRAIN_IMAGES = 2975
GOPRO_TRAIN_PAIRS = 2103


def _asapnet_cityscapes() -> Config:
    # 200 epochs constant + 100 linear decay, batch 32 at 256x512.
    steps = 300 * CITYSCAPES_TRAIN_IMAGES // 32
    return Config(
        data=DataConfig(
            task="labels2photo", dataset="datasets/cityscapes", crop_height=256, crop_width=512,
            load_height=256, load_width=512, instance_edges=True,
        ),
        # ASAPNetConfig's defaults are the Cityscapes model (ASAPNetDiscriminatorConfig's its discriminator);
        # the instance edges reach the low-res stream only.
        model=model_defaults("asapnet", mlp_input="all_but_last"),
        loss=LossConfig(
            gan="hinge", feature_matching_weight=10.0, perceptual="vgg19-multi", perceptual_weight=10.0,
            vgg_input="raw",
        ),
        optim=OptimConfig(g_lr=1e-4, d_lr=4e-4, beta1=0.0, beta2=0.9, d_steps=1, decay_start=200 / 300),
        curriculum=CurriculumConfig(kind="fixed", start=0.0, end=0.0),
        train=TrainConfig(steps=steps, batch_size=32, checkpoint_every=2000, sample_every=2000),
        eval=EvalConfig(every=2000, images=500, batch_size=8),
    )


def _pix2pixhd_cityscapes() -> Config:
    # Global generator at 512x1024: 100 epochs + 100 decay, batch 1.
    return Config(
        data=DataConfig(
            task="labels2photo", dataset="datasets/cityscapes", crop_height=512, crop_width=1024,
            load_height=512, load_width=1024, flip=True, instance_edges=True,
        ),
        # Pix2PixHDConfig's defaults are the 512x1024 global generator; no global residual (labels in).
        model=model_defaults("pix2pixhd", residual=False),
        loss=LossConfig(
            gan="lsgan", feature_matching_weight=10.0, perceptual="vgg19-multi", perceptual_weight=10.0,
            vgg_input="raw",
        ),
        optim=OptimConfig(g_lr=2e-4, d_lr=2e-4, beta1=0.5, beta2=0.999, d_steps=1, decay_start=0.5),
        curriculum=CurriculumConfig(kind="fixed", start=0.0, end=0.0),
        train=TrainConfig(steps=200 * CITYSCAPES_TRAIN_IMAGES, batch_size=1, checkpoint_every=5000,
                          sample_every=5000),
        eval=EvalConfig(every=10000, images=500, batch_size=2),
    )


def _pix2pixhd_cityscapes_1024() -> Config:
    """The published 1024x2048 model (label2city_1024p): ngf 32 and one local enhancer around the
    512p global generator, 36 inputs, 3 discriminator scales; 50 + 50 epochs started from the 512p
    run (`train --init-from`), the global generator held fixed for the first 10."""
    cfg = _pix2pixhd_cityscapes()
    cfg.data = dataclasses.replace(cfg.data, crop_height=1024, crop_width=2048, load_height=1024, load_width=2048)
    cfg.model = dataclasses.replace(cfg.model, ngf=32, local_enhancers=1, num_d=3)
    cfg.optim = dataclasses.replace(cfg.optim, decay_start=0.5)
    cfg.train = dataclasses.replace(cfg.train, steps=100 * CITYSCAPES_TRAIN_IMAGES,
                                    fix_global_steps=10 * CITYSCAPES_TRAIN_IMAGES)
    cfg.eval = dataclasses.replace(cfg.eval, batch_size=1)
    return cfg


def _deblurgan_gopro() -> Config:
    # 150 epochs constant + 150 decay, batch 1, 256 crops, 5 critic steps (WGAN-GP), on GoPro's
    # real blurred/sharp pairs: nothing is blurred during training, so no curriculum.
    return Config(
        data=DataConfig(task="deblur", dataset="datasets/gopro", crop_height=256, crop_width=256, blur="stored"),
        # DeblurGANConfig's defaults are the GoPro model; DeblurGANDiscriminatorConfig's its unconditional critic.
        model=model_defaults("deblurgan"),
        loss=LossConfig(gan="wgan-gp", gp_weight=10.0, perceptual="vgg19-conv3_3", perceptual_weight=100.0,
                        vgg_input="raw"),
        optim=OptimConfig(g_lr=1e-4, d_lr=1e-4, beta1=0.5, beta2=0.999, d_steps=5, decay_start=0.5),
        curriculum=CurriculumConfig(kind="none"),
        train=TrainConfig(steps=300 * GOPRO_TRAIN_PAIRS, batch_size=1, checkpoint_every=5000,
                          sample_every=5000),
        eval=EvalConfig(every=10000, images=200, batch_size=4),
    )


def _hybrid_deblur() -> Config:
    """ASAP-Net's generator and discriminator trained with DeblurGAN's recipe.

    Every cause of the published hybrid's failure is set to the sound choice: global residual
    on, every input channel reaches the MLP, S = 16, no activation normalization in the low-res
    stream (instance norm is the droplet mechanism), reflection padding. And each pixel's MLP
    sees its 5 x 5 neighbourhood: a function of one pixel's own colour cannot undo a blur
    (at the smoke size 3 x 3 stayed 0.27 dB below DeblurGAN, 5 x 5 went 0.09 dB above it, for
    a sixth more GFLOPs; 7 x 7 gained 0.09 dB more on one seed for 1.15x the time, and is the
    sweep's to choose).

    The low-res stream is sized for deblurring, not for ASAP-Net's label maps: with 16-px
    tiles its grid grows with the image, and at 1024 channels and 7 blocks it alone cost 44 of
    53 GFLOPs per 256 x 256 image (DeblurGAN: 99). Here 32 -> 256 channels and 3 blocks; the
    MLPs mix neighbouring cells within 4 px of a tile edge (2.25x the nearest-cell MLP, not 4x).
    The perceptual loss is DeblurGAN's as its code computes it (``loss.vgg_input = "raw"``): the
    recipe's weight of 100 was chosen against raw VGG features.

    Data as in the study: GoPro's sharp frames with random motion blur whose strength rises from
    almost none to heavy (the curriculum), evaluated on GoPro's real blurred/sharp test pairs.
    """
    cfg = _deblurgan_gopro()
    # HybridConfig's defaults (models/hybrid.py) are the hybrid's generator; ASAP-Net's discriminator.
    cfg.model = model_defaults("hybrid")
    cfg.loss.l1_weight = 0.0
    cfg.train.batch_size = 16
    cfg.train.steps = 300 * GOPRO_TRAIN_PAIRS // 16
    cfg.data.blur = "synthetic"
    cfg.curriculum = CurriculumConfig(kind="linear", start=0.2, end=0.8, warmup_steps=0, ramp_steps=0)
    return cfg


SMOKE_WIDTH = 1 / 4
"""Smoke presets: every channel count of the full preset times this (both models of a pair alike)."""
SMOKE_DEPTH = 1 / 4
"""Smoke presets: every block count (residual blocks, low-res blocks) times this, at least 1."""


def _smoke(base: Callable[[], Config], crop: tuple[int, int], dataset: str) -> Config:
    """The full recipe scaled down until it trains in seconds on a CPU: the same losses and
    phases, every width and block count scaled by the same factors for every model, and the
    same pixel geometry (strides, tile size, blend band, MLP depth), so the smoke models rank
    by speed as the full ones do. Only the crop, steps and batch are the smoke run's own."""
    cfg = base()
    m = cfg.model

    def width(n: int) -> int:
        return max(1, round(n * SMOKE_WIDTH))

    def depth(n: int) -> int:
        return max(1, round(n * SMOKE_DEPTH)) if n else 0

    cfg.data = dataclasses.replace(
        cfg.data, dataset=dataset, crop_height=crop[0], crop_width=crop[1], load_height=0, load_width=0,
        shuffle_buffer_rows=16,
    )
    cfg.model = dataclasses.replace(
        m, ngf=width(m.ngf), ndf=width(m.ndf), mlp_width=width(m.mlp_width), lowres_width=width(m.lowres_width),
        lowres_max_channels=width(m.lowres_max_channels), residual_blocks=depth(m.residual_blocks),
        lowres_blocks=depth(m.lowres_blocks),
    )
    cfg.loss = dataclasses.replace(cfg.loss, perceptual="none", l1_weight=max(cfg.loss.l1_weight, 10.0))
    cfg.optim = dataclasses.replace(cfg.optim, d_steps=min(cfg.optim.d_steps, 2), decay_start=1.0)
    cfg.train = TrainConfig(steps=20, batch_size=4, log_every=5, checkpoint_every=10, sample_every=10,
                            keep_checkpoints=2, max_failures=1)
    cfg.eval = EvalConfig(every=10, images=4, batch_size=4, fid=False)
    return cfg


def _smoke_labels(base: Callable[[], Config]) -> Callable[[], Config]:
    return lambda: _smoke(base, (64, 128), "datasets/synth-scenes")


def _smoke_photos(base: Callable[[], Config]) -> Callable[[], Config]:
    """Synthetic photos hold no blurred inputs: the smoke runs blur the sharp ones (DeblurGAN's
    at a fixed strength 0.5 where its paper preset reads GoPro's real pairs)."""

    def make() -> Config:
        cfg = _smoke(base, (64, 64), "datasets/synth-photos")
        cfg.data.blur = "synthetic"
        if cfg.curriculum.kind == "none":
            cfg.curriculum = CurriculumConfig(kind="fixed", start=0.5, end=0.5)
        return cfg

    return make


PRESETS: dict[str, Callable[[], Config]] = {
    "asapnet-cityscapes": _asapnet_cityscapes,
    "pix2pixhd-cityscapes": _pix2pixhd_cityscapes,
    "pix2pixhd-cityscapes-1024": _pix2pixhd_cityscapes_1024,
    "deblurgan-gopro": _deblurgan_gopro,
    "hybrid-deblur": _hybrid_deblur,
    "asapnet-smoke": _smoke_labels(_asapnet_cityscapes),
    "pix2pixhd-smoke": _smoke_labels(_pix2pixhd_cityscapes),
    "deblurgan-smoke": _smoke_photos(_deblurgan_gopro),
    "hybrid-smoke": _smoke_photos(_hybrid_deblur),
}

SMOKE_PRESETS = tuple(name for name in PRESETS if name.endswith("-smoke"))

HYBRID_OF = {"deblurgan-smoke": "hybrid-smoke", "deblurgan-gopro": "hybrid-deblur"}
"""Each DeblurGAN preset and the hybrid preset of the same scale (a sweep's speed reference)."""


def get_preset(name: str) -> Config:
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}") from None
    return validate(factory())
