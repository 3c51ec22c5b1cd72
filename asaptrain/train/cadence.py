"""When the training loop evaluates, logs and checkpoints, and how it measures its own speed.

``Cadence.at(step, cfg)`` says what a finished step is followed by (the last step: all of it);
``Throughput`` keeps the images/s of each logging interval and the timed steps' phase times::

    when = Cadence.at(step, cfg)
    if when.eval: ...
    if when.report: ...   # every rank reports: a log line, a checkpoint, or both

Both are plain values (no tensors, no Ray), so the loop's schedule is testable alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from asaptrain.config.schema import Config
from asaptrain.train.gan import PhaseTimes


@dataclass(frozen=True)
class Cadence:
    """What follows one training step."""

    eval: bool
    """Evaluate on the validation set (rank 0)."""
    samples: bool
    """Write a sample grid with that evaluation."""
    log: bool
    """Write a metrics line and report it."""
    checkpoint: bool
    """Report a checkpoint (rank 0 saves the state)."""
    timed: bool
    """Time the step's phases (logged steps but the first, which is warm-up)."""

    @property
    def report(self) -> bool:
        """Every rank calls the reporter (a barrier): on logged and checkpointed steps."""
        return self.log or self.checkpoint

    @classmethod
    def at(cls, step: int, cfg: Config) -> "Cadence":
        t, last = cfg.train, step == cfg.train.steps
        log = step % t.log_every == 0 or last
        return cls(
            eval=step % cfg.eval.every == 0 or last,
            samples=step % t.sample_every == 0 or step in (0, t.steps),
            log=log,
            checkpoint=step % t.checkpoint_every == 0 or last,
            timed=step > 1 and log,
        )


@dataclass
class Throughput:
    """Images/s per logging interval, and per-step milliseconds averaged over the timed steps."""

    batch_size: int
    """Global batch, in images."""
    phases: PhaseTimes = field(default_factory=PhaseTimes)
    data_wait_ms: float = 0.0
    timed_steps: int = 0
    rates: list[float] = field(default_factory=list)
    """images/s of each logging interval so far."""
    _interval_start: float = field(default_factory=time.perf_counter)
    _interval_steps: int = 0

    def stepped(self, timed: bool, data_wait_s: float) -> None:
        """One training step done (``data_wait_s``: waiting for its batch)."""
        self._interval_steps += 1
        if timed:
            self.timed_steps += 1
            self.data_wait_ms += data_wait_s * 1000

    def interval_rate(self) -> float:
        """images/s since the last logged step (call before evaluating: that is not training)."""
        return self._interval_steps * self.batch_size / max(time.perf_counter() - self._interval_start, 1e-9)

    def logged(self, rate: float) -> None:
        """A logging interval closed at ``rate`` images/s; the next one starts now."""
        self.rates.append(rate)
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def steady_images_per_s(self) -> float:
        """Mean images/s over the intervals, the first (warm-up) left out when there are others."""
        steady = self.rates[1:] or self.rates
        return sum(steady) / max(len(steady), 1)

    def step_ms(self) -> dict[str, float]:
        """Milliseconds per timed step: data wait, forward, backward, optimizer and their total."""
        n = max(self.timed_steps, 1)
        ms = {"data_wait": self.data_wait_ms / n, "forward": self.phases.forward / n,
              "backward": self.phases.backward / n, "optimizer": self.phases.optimizer / n}
        ms["total"] = sum(ms.values())
        return ms
