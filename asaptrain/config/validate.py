"""Validation of a config tree (``config/schema.py``): every cross-field check, each refusal a
:class:`~asaptrain.config.schema.ConfigError` naming the field and what it accepts. The model's
own options are checked by building its dataclasses (``models/options.py``), so a config that
validates also builds; their refusals come back naming the ``model.`` key.

    cfg = validate(Config(train=TrainConfig(steps=20)))
    generator_config(cfg)       # the named model's own option dataclass, checked
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from asaptrain.config.model import discriminator_options, generator_options, option_message
from asaptrain.config.schema import SECTIONS, Config, ConfigError
from asaptrain.models.options import OptionError


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_numbers(cfg: Config) -> None:
    """Every number finite (an inf learning rate or NaN weight passes every ``> 0`` test), every
    loss weight and per-worker resource >= 0."""
    for section in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            values = value.items() if isinstance(value, dict) else [(None, value)]
            for key, v in values:
                where = f"{section}.{f.name}" + (f".{key}" if key is not None else "")
                if isinstance(v, float):
                    _check(math.isfinite(v), f"{where} must be a finite number, got {v}")
                if key is not None:  # scaling.resources_per_worker: Ray resource amounts
                    _check(v >= 0, f"{where} must be >= 0 (an amount of a Ray resource), got {v}")
    for f in dataclasses.fields(cfg.loss):
        if f.name.endswith("_weight") and f.type in ("float", float):
            value = getattr(cfg.loss, f.name)
            _check(value >= 0, f"loss.{f.name} must be >= 0 (0 disables the term), got {value}")


def reject_url_credentials(url: str, where: str, bare_host: bool = False) -> None:
    """ConfigError when ``url`` carries a ``user:password@`` part; the message shows it without.

    ``bare_host``: a value without a scheme is a host (an endpoint), not a local path. Endpoints
    and store URIs end up in configs, run metadata and job entrypoints, so credentials are
    refused rather than stripped: they belong in AWS_* variables or an AWS profile.
    """
    rest = url.split("://", 1)[1] if "://" in url else (url if bare_host else "")
    netloc = rest.split("/", 1)[0]
    if "@" in netloc:
        shown = url.replace(netloc, netloc.rsplit("@", 1)[1], 1)
        raise ConfigError(
            f"{where} {shown!r} carries a user name or password (user:password@host); remove it and give the "
            "credentials as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE: URLs are written into "
            "configs, run metadata and job submissions")


def validate(cfg: Config) -> Config:
    """Cross-field checks; raises ConfigError naming the field. Returns ``cfg``."""
    d, m, t, o, c, e, s = cfg.data, cfg.model, cfg.train, cfg.optim, cfg.curriculum, cfg.eval, cfg.scaling
    _check_numbers(cfg)
    for name in ("crop_height", "crop_width"):
        _check(getattr(d, name) > 0, f"data.{name} must be > 0, got {getattr(d, name)}")
    _check(d.num_labels >= 0, f"data.num_labels must be >= 0 (0: the count in the dataset's manifest), got {d.num_labels}")
    for name in ("load_height", "load_width", "max_bad_images", "shuffle_buffer_rows", "prefetch_batches"):
        _check(getattr(d, name) >= 0, f"data.{name} must be >= 0, got {getattr(d, name)}")
    _check(0 <= d.blur_jpeg_quality <= 100, f"data.blur_jpeg_quality must be in 0..100, got {d.blur_jpeg_quality}")
    _check(d.blur_noise_std >= 0, f"data.blur_noise_std must be >= 0, got {d.blur_noise_std}")
    tasks = ("deblur", "image2image") if m.name in ("deblurgan", "hybrid") else ("labels2photo", "image2image")
    _check(d.task in tasks, f"data.task must be {' or '.join(map(repr, tasks))} for model.name={m.name!r}, got {d.task!r}")
    _check_blur(cfg)
    _check_model(cfg)
    for name in ("g_lr", "d_lr"):
        _check(getattr(o, name) > 0, f"optim.{name} must be > 0, got {getattr(o, name)}")
    for name in ("beta1", "beta2"):
        _check(0 <= getattr(o, name) < 1, f"optim.{name} must be in [0, 1), got {getattr(o, name)}")
    _check(o.d_steps >= 1, f"optim.d_steps must be >= 1, got {o.d_steps}")
    _check(0 <= o.decay_start <= 1, f"optim.decay_start must be in [0, 1], got {o.decay_start}")
    _check(0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
    for name in ("start", "end"):
        _check(0 <= getattr(c, name) <= 1, f"curriculum.{name} must be in [0, 1], got {getattr(c, name)}")
    for name in ("warmup_steps", "ramp_steps"):
        _check(getattr(c, name) >= 0, f"curriculum.{name} must be >= 0, got {getattr(c, name)}")
    _check(c.stages >= 1, f"curriculum.stages must be >= 1, got {c.stages}")
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "sample_every"):
        _check(getattr(t, name) > 0, f"train.{name} must be > 0, got {getattr(t, name)}")
    _check(t.max_failures >= 0, f"train.max_failures must be >= 0, got {t.max_failures}")
    _check(t.fp16_max_skips >= 1, f"train.fp16_max_skips must be >= 1 (overflowing updates skipped in a row before "
           f"train.nonfinite applies), got {t.fp16_max_skips}")
    _check(t.fp16_growth_interval >= 1, f"train.fp16_growth_interval must be >= 1 (clean updates in a row before the "
           f"fp16 loss scale doubles), got {t.fp16_growth_interval}")
    _check(0 <= t.fix_global_steps <= t.steps,
           f"train.fix_global_steps must be in [0, train.steps={t.steps}], got {t.fix_global_steps}")
    _check(t.fix_global_steps == 0 or (cfg.model.name == "pix2pixhd" and cfg.model.local_enhancers >= 1),
           f"train.fix_global_steps={t.fix_global_steps} needs a pix2pixhd model with model.local_enhancers >= 1 "
           f"(it holds the global generator fixed), got {cfg.model.name} with {cfg.model.local_enhancers}")
    _check(cfg.storage.claim_stale_s >= 5, f"storage.claim_stale_s must be >= 5 seconds, got {cfg.storage.claim_stale_s}")
    _check(0 <= cfg.storage.outage_s <= 3600, f"storage.outage_s must be in [0, 3600] seconds, got {cfg.storage.outage_s}")
    _check(s.num_workers >= 1, f"scaling.num_workers must be >= 1, got {s.num_workers}")
    _check(
        t.batch_size % s.num_workers == 0,
        f"train.batch_size={t.batch_size} does not split evenly across scaling.num_workers="
        f"{s.num_workers}; make the batch a multiple of the workers",
    )
    _check(
        s.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        f"scaling.placement_strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {s.placement_strategy!r}",
    )
    for name in ("every", "images", "batch_size"):
        _check(getattr(e, name) > 0, f"eval.{name} must be > 0, got {getattr(e, name)}")
    _check(0 <= e.blur_strength <= 1, f"eval.blur_strength must be in [0, 1], got {e.blur_strength}")
    _check(bool(cfg.storage.store), "storage.store must not be empty")
    reject_url_credentials(cfg.storage.store, "storage.store")
    reject_url_credentials(cfg.storage.s3_endpoint, "storage.s3_endpoint", bare_host=True)
    return cfg


def _check_blur(cfg: Config) -> None:
    """Where the input comes from, whether a blur curriculum can act on it, and what plain
    image-to-image cannot have (instance edges, an MLP that drops the blue channel)."""
    d, c, m = cfg.data, cfg.curriculum, cfg.model
    if d.task == "image2image":
        _check(d.blur != "synthetic", "data.blur='synthetic' blurs the target into the input, which "
                                      "data.task='image2image' never does; set data.blur='stored' (or 'auto')")
        _check(not d.instance_edges, "data.instance_edges=true needs label maps with instance maps, but "
                                     "data.task='image2image' feeds RGB images; set data.instance_edges=false")
        _check(m.mlp_input == "all", f"model.mlp_input={m.mlp_input!r} keeps the last input channel (blue, for "
                                     "data.task='image2image') out of the pixelwise MLPs; set model.mlp_input=all")
    if d.task != "deblur":
        return
    if d.blur == "stored":
        _check(c.kind == "none", f"curriculum.kind={c.kind!r} cannot act with data.blur='stored': the inputs are "
                                 "the dataset's own blurred photos and nothing is blurred during training; set "
                                 "curriculum.kind='none', or data.blur='synthetic' to blur the sharp targets")
    if d.blur == "synthetic":
        _check(c.kind != "none", "curriculum.kind='none' gives no blur strength, but data.blur='synthetic' blurs "
                                 "every input at the curriculum's strength; choose a curriculum (fixed, linear, "
                                 "cosine, step, band) or data.blur='stored'")


def _check_model(cfg: Config) -> None:
    """The model section: its cross-section rules and the discriminator here; the generator's own
    options by building its dataclass (``generator_config``), whose checks are the only ones."""
    m, d = cfg.model, cfg.data  # the task itself is checked in ``validate`` (image2image: every model)
    if d.task == "labels2photo":
        _check(not m.residual, f"model.residual=true needs an image input, but {m.name} maps label maps to "
                               f"photos; set model.residual=false")
    if m.name == "asapnet" and m.mlp_input == "all_but_last" and d.task == "labels2photo":
        _check(d.instance_edges, "model.mlp_input='all_but_last' keeps the last input channel (the instance "
                                 "edges) out of the MLPs, but data.instance_edges=false, so a label channel "
                                 "would be dropped; set model.mlp_input=all or data.instance_edges=true")
    discriminator_config(cfg)
    generator_config(cfg)
    if m.name in ("asapnet", "hybrid"):
        for name, size in (("crop_height", d.crop_height), ("crop_width", d.crop_width)):
            _check(size % m.tile_size == 0, f"data.{name}={size} must be a multiple of model.tile_size={m.tile_size}")


IMAGE_CHANNELS = 3
"""Channels of every image a generator makes (and of its input when it deblurs): RGB."""


def generator_in_channels(cfg: Config) -> int:
    """labels2photo: one-hot labels (+1 instance-edge channel); deblur: RGB."""
    if cfg.data.task == "labels2photo":
        return cfg.data.num_labels + (1 if cfg.data.instance_edges else 0)
    return IMAGE_CHANNELS


def discriminator_config(cfg: Config) -> Any:
    """The named model's discriminator options (``models/options.py``) for ``cfg``; what they
    refuse is a ConfigError naming the ``model.`` key."""
    try:
        return discriminator_options(cfg.model)
    except OptionError as exc:
        raise ConfigError(f"{option_message(exc)} ({cfg.model.name})") from None


def generator_config(cfg: Config) -> Any:
    """The named model's own hyperparameter dataclass (``models/options.py``) for ``cfg``; what it
    refuses is a ConfigError naming the ``model.`` key."""
    try:
        return generator_options(cfg.model, generator_in_channels(cfg), IMAGE_CHANNELS)
    except OptionError as exc:
        raise ConfigError(f"{option_message(exc)} ({cfg.model.name})") from None


__all__ = ["validate", "reject_url_credentials", "discriminator_config", "generator_config", "generator_in_channels",
           "IMAGE_CHANNELS"]
