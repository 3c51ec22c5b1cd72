"""Blur-strength curricula: which blur strength (in [0, 1], see ``data/blur.py``) each step trains at.

Pure Python, no Ray. The training loop asks once per step::

    schedule = build_blur_schedule(cfg.curriculum, total_steps=cfg.train.steps, seed=cfg.train.seed)
    strength = schedule.strength(step)

Every kind holds ``start`` for ``warmup_steps``, then moves toward ``end`` over ``ramp_steps``
(0 = the rest of training), then holds ``end``. ``progress(step)`` is that movement's
fraction in [0, 1]:

* ``none``    no strength at all (``None``): the inputs are stored blurred photos (``data.blur =
  "stored"``), and nothing is blurred during training.
* ``fixed``   ``start`` at every step (``end`` is ignored).
* ``linear``  ``start + (end - start) · progress``.
* ``cosine``  ``start + (end - start) · (1 - cos(π · progress)) / 2``: slow at both ends.
* ``step``    ``stages`` equal plateaus from ``start`` to ``end``: plateau
  ``i = min(floor(progress · stages), stages - 1)`` trains at ``start + (end - start) · i / (stages - 1)``.
* ``band``    a random strength, uniform in ``[start, start + (end - start) · progress]``: a
  band anchored at ``start`` that widens to the whole range, so easy samples keep appearing
  after hard ones come in.

The band's draw at step ``s`` is a pure function of ``(seed, s)`` (numpy's SeedSequence),
not the next number of a stateful generator. So asking twice for one step, or from every
rank, gives the same strength, and a run restored from a checkpoint draws exactly the
sequence it would have drawn, even when it replays steps after a failure.
``state_dict()`` carries the seed and every parameter, as trained; a resumed run follows
the schedule its config plans (``train.loop``: a longer ``--steps`` stretches the ramp).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from asaptrain.config.schema import CurriculumConfig, ConfigError

KINDS = ("none", "fixed", "linear", "cosine", "step", "band")


@dataclass
class BlurSchedule:
    """A blur-strength curriculum over ``total_steps`` generator updates."""

    kind: str
    start: float
    end: float
    warmup_steps: int
    ramp_steps: int
    total_steps: int
    stages: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"curriculum.kind must be one of {', '.join(KINDS)}; got {self.kind!r}")

    @property
    def ramp_length(self) -> int:
        """Steps the schedule moves over: ``ramp_steps``, or all steps after warm-up when 0."""
        return self.ramp_steps if self.ramp_steps > 0 else max(self.total_steps - self.warmup_steps, 1)

    def progress(self, step: int) -> float:
        """Fraction of the ramp done at ``step``, in [0, 1]."""
        return min(max((step - self.warmup_steps) / self.ramp_length, 0.0), 1.0)

    def strength(self, step: int) -> float | None:
        """Blur strength in [0, 1] at ``step`` (0-based); None for kind "none"."""
        if self.kind == "none":
            return None
        p = self.progress(step)
        span = self.end - self.start
        if self.kind == "fixed":
            value = self.start
        elif self.kind == "linear":
            value = self.start + span * p
        elif self.kind == "cosine":
            value = self.start + span * (1 - math.cos(math.pi * p)) / 2
        elif self.kind == "step":
            stage = min(math.floor(p * self.stages), self.stages - 1)
            value = self.start + span * (stage / (self.stages - 1) if self.stages > 1 else 0.0)
        else:  # band
            u = np.random.default_rng((self.seed, max(step, 0))).random()
            value = self.start + span * p * u
        return min(max(float(value), 0.0), 1.0)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the schedule (kind, parameters, seed) a checkpoint was trained with."""
        for key, value in state.items():
            if key not in self.__dataclass_fields__:
                raise ValueError(f"unknown curriculum state field {key!r} in checkpoint")
            setattr(self, key, value)
        self.__post_init__()


def build_blur_schedule(cfg: CurriculumConfig, total_steps: int, seed: int = 0) -> BlurSchedule:
    """The schedule ``cfg`` describes for a run of ``total_steps`` steps; ``seed`` feeds "band"."""
    if total_steps < 1:
        raise ConfigError(f"train.steps must be > 0, got {total_steps}")
    return BlurSchedule(
        kind=cfg.kind, start=cfg.start, end=cfg.end, warmup_steps=cfg.warmup_steps, ramp_steps=cfg.ramp_steps,
        total_steps=total_steps, stages=cfg.stages, seed=seed,
    )


__all__ = ["BlurSchedule", "build_blur_schedule", "KINDS"]
