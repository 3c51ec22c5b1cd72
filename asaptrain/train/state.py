"""One state dict for the whole run: G, D, EMA, both optimizers and schedulers, step,
curriculum and RNG. One function saves it, one restores it; files load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import io
import random
import re
from dataclasses import dataclass
from typing import Any

import torch

from asaptrain.train.dist import unwrap

STATE_FILE = "state.pt"


@dataclass
class RunState:
    generator: torch.nn.Module
    discriminator: torch.nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    g_sched: torch.optim.lr_scheduler.LRScheduler
    d_sched: torch.optim.lr_scheduler.LRScheduler
    schedule: Any
    """The blur-strength schedule (curriculum); has state_dict / load_state_dict."""
    ema: torch.nn.Module | None = None
    step: int = 0
    """Generator updates done."""

    def state_dict(self) -> dict:
        return {
            "generator": unwrap(self.generator).state_dict(),
            "discriminator": unwrap(self.discriminator).state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "g_sched": self.g_sched.state_dict(),
            "d_sched": self.d_sched.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
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
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.g_sched.load_state_dict(state["g_sched"])
        self.d_sched.load_state_dict(state["d_sched"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), None))

    def inference_generator(self) -> torch.nn.Module:
        """The generator to evaluate and export: the EMA copy when there is one."""
        return self.ema if self.ema is not None else unwrap(self.generator)


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


def to_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def from_bytes(data: bytes, map_location="cpu") -> dict:
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load_file(path: str, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


_TORCH_HINTS = ("weights only load failed", "weights_only", "add_safe_globals", "check the documentation")


def load_error_text(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to load it
    with ``weights_only=False`` (which would run the code it names): ``UnpicklingError: Trying
    to load unsupported GLOBAL posix.system whose module posix is blocked.``"""
    text = str(exc).strip()
    older = re.search(r"WeightsUnpickler error: (.*?)(?:\s+Please use|\s+Check the documentation|$)", text, re.S)
    if older:  # torch < 2.6 puts the hint and the reason in one paragraph
        text = older.group(1)
    kept = [p.strip() for p in text.split("\n\n") if p.strip() and not any(h in p.lower() for h in _TORCH_HINTS)]
    if not kept and text.lower().startswith("weights only load failed"):
        kept = ["it holds objects other than tensors and containers"]
    reason = " ".join(" ".join(kept).split()) if kept else " ".join(text.split())
    return f"{type(exc).__name__}: {reason[:500]}" if reason else type(exc).__name__
