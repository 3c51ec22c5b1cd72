"""When the training loop evaluates, logs and checkpoints, and how it measures its own speed.

``Cadence.at(step, cfg)`` says what a finished step is followed by (the last step: all of it);
``Throughput`` keeps the images/s of each logging interval and, through its ``PhaseTimer``, the
timed steps' milliseconds per part (forward, backward, optimizer)::

    when = Cadence.at(step, cfg)
    meter.timer.begin(when.timed)
    ...                   # the GAN step times its parts with meter.timer
    meter.stepped(when.timed, data_wait_s)
    if when.eval: ...
    if when.calls_reporter: ...   # every rank reports: a log line, a checkpoint, or both

``Cadence`` is a plain value (no tensors, no Ray), so the loop's schedule is testable alone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from asaptrain.config.schema import Config


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
    def calls_reporter(self) -> bool:
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


class PhaseTimer:
    """Milliseconds per part of a step (``forward``, ``backward``, ``optimizer``), summed over
    the timed steps. Every part is also a ``record_function`` range (``G.forward``, ``D.backward``,
    ...) for ``torch.profiler``, timed or not.

    On CUDA a timed part is a pair of CUDA events, read at :meth:`end` (one sync per timed step,
    none inside it); on the CPU, ``time.perf_counter`` around the part::

        timer.begin(timed)
        with timer("forward", "G"):
            fake = G(x)
        timer.end()
    """

    PARTS = ("forward", "backward", "optimizer")

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.ms = dict.fromkeys(self.PARTS, 0.0)
        """Milliseconds per part, summed over the timed steps so far."""
        self.on = False
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def begin(self, timed: bool) -> None:
        """A step starts; its parts are timed when ``timed``."""
        self.on = timed

    @contextlib.contextmanager
    def __call__(self, part: str, phase: str):
        """Times ``part`` of ``phase`` (when on) around the body."""
        with torch.profiler.record_function(f"{phase}.{part}"):
            if not self.on:
                yield
            elif self.cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                yield
                stop.record()
                self._events.append((part, start, stop))
            else:
                t0 = time.perf_counter()
                yield
                self.ms[part] += (time.perf_counter() - t0) * 1000

    def end(self) -> None:
        """The step is done: its CUDA events are read (waiting for the last) and timing stops."""
        if self._events:
            self._events[-1][2].synchronize()
            for part, start, stop in self._events:
                self.ms[part] += start.elapsed_time(stop)
            self._events.clear()
        self.on = False


@dataclass
class Throughput:
    """Images/s per logging interval, and per-step milliseconds averaged over the timed steps."""

    batch_size: int
    """Global batch, in images."""
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    """Milliseconds per part of the timed steps (give it the device: CUDA events on a GPU)."""
    data_wait_ms: float = 0.0
    timed_steps: int = 0
    rates: list[float] = field(default_factory=list)
    """images/s of each logging interval so far."""
    _interval_start: float = field(default_factory=time.perf_counter)
    _interval_steps: int = 0

    def stepped(self, timed: bool, data_wait_s: float) -> None:
        """One training step done (``data_wait_s``: waiting for its batch); its timing is read."""
        self.timer.end()
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
        ms = {"data_wait": self.data_wait_ms / n, **{part: v / n for part, v in self.timer.ms.items()}}
        ms["total"] = sum(ms.values())
        return ms
