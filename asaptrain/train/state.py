"""One state dict for the whole run: G, D, EMA, both optimizers and schedulers, step,
curriculum, fp16 loss scales and RNG, and the run's resolved config as a plain dict (``CONFIG_KEY``: the form
``config.toml`` holds, so a checkpoint alone rebuilds its generator). One function saves it,
one restores it; files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import io
import random
from dataclasses import dataclass
from typing import Any

import torch

from asaptrain.errors import load_error_text  # noqa: F401 - where checkpoints' refusals are worded
from asaptrain.train.dist import unwrap

STATE_FILE = "state.pt"
CONFIG_KEY = "config"
"""The checkpoint entry holding ``config.io.to_dict(cfg)`` (plain dicts, strings and numbers only)."""


@dataclass
class RunState:
    generator: torch.nn.Module
    discriminator: torch.nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    g_lr_schedule: torch.optim.lr_scheduler.LRScheduler
    """The generator's learning-rate schedule (its checkpoint key: ``g_sched``)."""
    d_lr_schedule: torch.optim.lr_scheduler.LRScheduler
    """The discriminator's learning-rate schedule (its checkpoint key: ``d_sched``)."""
    blur_schedule: Any
    """The blur-strength curriculum; has state_dict / load_state_dict (its checkpoint key: ``schedule``)."""
    ema: torch.nn.Module | None = None
    step: int = 0
    """Generator updates done."""
    config: dict | None = None
    """The run's config as ``to_dict`` gives it, saved with the weights (never restored from them)."""
    loss_scales: dict | None = None
    """fp16: ``{"D": LossScale, "G": LossScale}`` (``train/loss_scale.py``); None in fp32 / bf16."""

    def state_dict(self) -> dict:
        return {
            CONFIG_KEY: self.config,
            "generator": unwrap(self.generator).state_dict(),
            "discriminator": unwrap(self.discriminator).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            # The keys stay as the first checkpoints wrote them: those still load.
            "g_sched": self.g_lr_schedule.state_dict(),
            "d_sched": self.d_lr_schedule.state_dict(),
            "schedule": self.blur_schedule.state_dict(),
            "step": self.step,
            "loss_scales": {k: v.state_dict() for k, v in self.loss_scales.items()} if self.loss_scales else None,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this rank's device
                "python": list(random.getstate()[1]),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.generator).load_state_dict(state["generator"])
        unwrap(self.discriminator).load_state_dict(state["discriminator"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.g_opt.load_state_dict(_as_built(state["g_opt"], self.g_opt))
        self.d_opt.load_state_dict(_as_built(state["d_opt"], self.d_opt))
        self.g_lr_schedule.load_state_dict(state["g_sched"])
        self.d_lr_schedule.load_state_dict(state["d_sched"])
        self.blur_schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        # A checkpoint from before fp16 (or from another precision) has none: the scales start fresh.
        saved_scales = state.get("loss_scales") or {}
        for name, scale in (self.loss_scales or {}).items():
            if name in saved_scales:
                scale.load_state_dict(saved_scales[name])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), None))

    def inference_generator(self) -> torch.nn.Module:
        """The generator to evaluate and export: the EMA copy when there is one."""
        return self.ema if self.ema is not None else unwrap(self.generator)


_IMPLEMENTATION = ("fused", "foreach", "capturable")
"""Optimizer switches that say how it runs, not what it learned."""


def _as_built(saved: dict, opt: torch.optim.Optimizer) -> dict:
    """A saved optimizer state with ``opt``'s implementation switches: a checkpoint written before
    the optimizers were fused loads into fused ones (which skip a non-finite step on the device)."""
    groups = [{**g, **{k: live[k] for k in _IMPLEMENTATION if k in live}}
              for g, live in zip(saved["param_groups"], opt.param_groups)]
    return {**saved, "param_groups": groups}


def make_ema(generator: torch.nn.Module) -> torch.nn.Module:
    ema = copy.deepcopy(unwrap(generator)).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, generator: torch.nn.Module, decay: float) -> None:
    src = unwrap(generator)
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in src.parameters()], 1 - decay)
    for b_ema, b in zip(ema.buffers(), src.buffers()):
        b_ema.copy_(b)


def generator_checkpoint(config: dict, generator: dict, step: int = 0, ema: dict | None = None) -> dict:
    """A checkpoint holding a generator only (no D, optimizers or RNG): what ``infer``, ``predict``,
    ``export`` and evaluation read from a run directory; ``config`` is ``to_dict(cfg)``."""
    return {CONFIG_KEY: config, "generator": generator, "ema": ema, "step": step}


def to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def from_bytes(data: bytes, map_location="cpu") -> dict:
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load_file(path: str, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


