"""The hybrid's search space: which config fields a sweep samples, and from what.

A space maps dotted config keys to one sampler each, ``{"choice" | "grid": [...]}`` or
``{"uniform" | "loguniform": [lo, hi]}``; ``default_space`` centres it on a base config, a TOML
file narrows or replaces it (``load_space``), and every entry is checked against the config
before a trial starts, so a typo fails at once with the field's name::

    space = load_space("narrow.toml", base)      # or default_space(base)
    cfg = trial_config(base, {"model.mlp_depth": 4, "optim.g_lr": 2e-4})
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from asaptrain.config.schema import Config
from asaptrain.config.io import replace
from asaptrain.errors import UserError


class SweepError(UserError):
    """A sweep that cannot start or resume; the message says what to change."""


def default_space(base: Config) -> dict[str, dict]:
    """The search space around ``base``: ``{"section.field": {"choice"|"uniform"|"loguniform": [...]}}``."""
    m, d = base.model, base.data
    tiles = [s for s in (8, 16, 32) if s >= m.lowres_downsample and d.crop_height % s == 0 and d.crop_width % s == 0]
    space: dict[str, dict] = {
        "model.mlp_depth": {"choice": [3, 4, 5, 6]},
        "model.mlp_width": {"choice": sorted({max(8, m.mlp_width // 2), m.mlp_width, m.mlp_width * 2})},
        # The low-res stream is most of the hybrid's cost: its width and depth are searched both ways.
        "model.lowres_width": {"choice": sorted({max(8, m.lowres_width // 2), m.lowres_width, m.lowres_width * 2})},
        "model.lowres_max_channels": {"choice": sorted({max(8, m.lowres_max_channels // 2), m.lowres_max_channels,
                                                         m.lowres_max_channels * 2})},
        "model.lowres_blocks": {"choice": sorted({max(0, m.lowres_blocks - 2), m.lowres_blocks, m.lowres_blocks + 2})},
        "model.tile_size": {"choice": tiles or [m.tile_size]},
        # 7 x 7 fits the speed target at full size since the planes layout (3.9x DeblurGAN at
        # 256 x 256 on a 2-core CPU, bench compare).
        "model.mlp_context": {"choice": [1, 3, 5, 7]},
        "model.tile_blend": {"choice": [True, False]},
        # With tile_blend: px mixed each side of a tile edge; 0 = tile_size / 2 (the full bilinear
        # blend, 4x the MLP work), 4 = 2.25x at 16-px tiles. Every choice fits the smallest tile (8).
        "model.blend_band": {"choice": [0, 2, 4]},
        "model.lowres_norm": {"choice": ["none", "spectral", "group", "instance"]},
        "model.padding": {"choice": ["reflect", "replicate", "zero"]},
        "model.residual": {"choice": [True, False]},
        "optim.g_lr": {"loguniform": [3e-5, 3e-4]},
        "optim.d_lr": {"loguniform": [3e-5, 4e-4]},
        "optim.d_steps": {"choice": sorted({1, 2, base.optim.d_steps})},
        "loss.gan_weight": {"loguniform": [0.1, 2.0]},
        "loss.l1_weight": {"loguniform": [1.0, 100.0]},
    }
    if blurs_in_training(base):
        space.update({
            "curriculum.kind": {"choice": ["fixed", "linear", "cosine", "step", "band"]},
            "curriculum.start": {"uniform": [0.0, 0.4]},
            "curriculum.end": {"uniform": [0.5, 1.0]},
            "curriculum.warmup_steps": {"choice": [0, base.train.steps // 10]},
        })
    if base.loss.perceptual != "none":
        space["loss.perceptual_weight"] = {"loguniform": [10.0, 200.0]}
    return space


def blurs_in_training(base: Config) -> bool:
    """Whether a blur curriculum acts on ``base``'s training inputs (synthetic blur of a deblur task)."""
    return base.data.task == "deblur" and base.data.blur != "stored" and base.curriculum.kind != "none"


def space_notes(base: Config) -> list[str]:
    """What the sweep says about its space and its reference (printed, and kept in sweep.json)."""
    c = base.curriculum
    if not blurs_in_training(base):
        return [f"no curriculum dimensions: data.blur={base.data.blur!r} and data.task={base.data.task!r} train "
                "on stored inputs, which no blur strength changes"]
    return [f"trials and the DeblurGAN reference train on the same inputs: {base.data.dataset}'s sharp targets "
            f"blurred during training (data.blur={base.data.blur!r}); the reference keeps the base config's "
            f"curriculum ({c.kind} {c.start:g} -> {c.end:g}), the trials sample theirs; both are validated on the "
            "same inputs (the stored blurred pairs of the val split where the dataset has them)"]


def load_space(path: str, base: Config) -> dict[str, dict]:
    """A TOML space file: ``mode = "narrow"`` (default: replace the listed keys) or ``"replace"``.

        mode = "narrow"
        [space]
        "model.mlp_depth" = { choice = [4, 5] }
        "optim.g_lr" = { loguniform = [1e-4, 2e-4] }
    """
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"search space file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"search space file {path} is not valid TOML: {exc}") from None
    mode = raw.get("mode", "narrow")
    if mode not in ("narrow", "replace"):
        raise SweepError(f"{path}: mode must be 'narrow' or 'replace', got {mode!r}")
    given = raw.get("space", {})
    if not isinstance(given, dict):
        raise SweepError(f"{path}: [space] must be a table of \"section.field\" = {{choice = [...]}} entries")
    for key, spec in given.items():
        _check_entry(path, key, spec, base)
    return {**(default_space(base) if mode == "narrow" else {}), **given}


def _check_entry(where: str, key: str, spec: Any, base: Config) -> None:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("choice", "uniform", "loguniform", "grid"):
        raise SweepError(f"{where}: {key} must be one of {{choice = [...]}}, {{grid = [...]}}, "
                         f"{{uniform = [lo, hi]}}, {{loguniform = [lo, hi]}}; got {spec!r}")
    kind, values = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: {key}: {kind} needs a non-empty list of values, got {values!r}")
    else:
        numbers = isinstance(values, list) and len(values) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numbers or not values[0] < values[1] or (kind == "loguniform" and values[0] <= 0):
            raise SweepError(f"{where}: {key}: {kind} needs [lo, hi] with lo < hi"
                             f"{' and lo > 0' if kind == 'loguniform' else ''}, got {values!r}")
    for value in values:  # every value must be one the field accepts (both bounds of a range)
        try:
            replace(base, {key: value})
        except UserError as exc:
            raise SweepError(f"{where}: {key}: {exc}") from None


def to_tune(space: dict[str, dict]) -> dict[str, Any]:
    """The space as Ray Tune search objects (``tune.choice`` and friends), keyed the same."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        out[key] = {
            "choice": lambda v: tune.choice(v), "grid": lambda v: tune.grid_search(v),
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v),
        }[kind](values)
    return out


def trial_config(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with a trial's sampled values (dotted keys) applied and validated."""
    return replace(base, dict(sorted(params.items())), source="sweep")
