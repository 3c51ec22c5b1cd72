"""The GAN step: phases as data, timing around each call (StyleGAN3's training_loop.py).

One step = the generator's forward once, then the phases in order: ``optim.d_steps``
discriminator updates on the detached output, then one generator update through the
discriminator. A :class:`Phase` names its network, optimizer and loss terms
(``train/objective.py``, the math only); :meth:`GanStep.run_phase` runs each as forward,
backward and optimizer step, each inside the timer (``record_function`` ranges for the profiler;
CUDA events or ``perf_counter`` on timed steps)::

    step = GanStep(cfg, state, perceptual, timer)
    result = step(x, real, step_number)     # StepResult: loss terms, skipped or not

A non-finite loss or gradient skips that phase's update on the device (:func:`step_optimizer`);
the step reads every phase's flag at once at its end, one host sync per step. In fp16 each
network has a loss scale (``train/loss_scale.py``): an overflow is the scale's to handle (the
update skipped, the scale halved, counted in ``StepResult.scale_skips``, its loss terms still
reported: they were computed, only the update was not applied), and ``train.nonfinite`` applies
only once a network's updates overflow ``train.fp16_max_skips`` times in a row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train import dist
from asaptrain.train.cadence import PhaseTimer
from asaptrain.train.init_from import fixed_global_params
from asaptrain.train.loss_scale import LossScale, loss_scales
from asaptrain.train.losses import build_gan_loss
from asaptrain.train.objective import Objective
from asaptrain.train.state import RunState

Terms = dict[str, torch.Tensor]


class NonFiniteLoss(UserError):
    """A loss or gradient became NaN/inf; the message names the step, phase and terms."""


@dataclass
class StepResult:
    losses: Terms = field(default_factory=dict)
    """The last update of each phase's terms, unless it failed as non-finite (fp16 overflows included)."""
    skipped: bool = False
    """An update was skipped as non-finite under ``train.nonfinite=skip``."""
    scale_skips: dict[str, int] = field(default_factory=dict)
    """fp16: updates per network (``"D"``, ``"G"``) skipped for a loss-scale overflow, not failures."""


@dataclass(frozen=True)
class Phase:
    """One kind of update within a step."""

    name: str
    """``"D"`` or ``"G"``: the network it updates; its terms' sum is logged as ``loss/d`` or ``loss/g``."""
    module: torch.nn.Module
    """The network this phase trains."""
    opt: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    """``module``'s trainable parameters (their gradients are checked for non-finite values)."""
    terms: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Terms]
    """``(x, fake, real) -> named loss terms``: the math, from ``train/objective.py``."""
    repeats: int = 1
    """Updates per step (``optim.d_steps`` for D)."""
    frozen: list[torch.nn.Parameter] = field(default_factory=list)
    """Parameters held without gradients during the phase (D's in the G phase)."""


def require_fused(opt: torch.optim.Optimizer) -> None:
    """Refuse an optimizer that would ignore :func:`step_optimizer`'s device-side skip."""
    if not all(group.get("fused") for group in opt.param_groups):
        raise ValueError(f"{type(opt).__name__} must be built with fused=True: only the fused step reads "
                         "found_inf, so an unfused one would apply a non-finite update")


def step_optimizer(opt: torch.optim.Optimizer, skip: torch.Tensor, grad_scale: torch.Tensor | None = None) -> None:
    """``opt.step()``, left undone on the device where ``skip`` (a float scalar) is nonzero:
    weights, moments and step count stay as they were, and the host waits for nothing.

    This is the contract torch's fused Adam / AdamW keep with ``torch.amp.GradScaler``: during
    ``step()`` they read the attributes ``found_inf`` (skip where nonzero) and ``grad_scale``
    (divide every gradient by it first) off the optimizer (torch/optim/adam.py), so only a fused
    optimizer is accepted. A loss scaler (fp16) plugs in here: the gradients' scale goes in as
    ``grad_scale``, its overflow check into ``skip``, its scale update after this call.
    """
    require_fused(opt)
    opt.found_inf = skip
    if grad_scale is not None:
        opt.grad_scale = grad_scale
    try:
        opt.step()
    finally:
        del opt.found_inf
        if grad_scale is not None:
            del opt.grad_scale


@contextlib.contextmanager
def _frozen(params: list[torch.nn.Parameter]):
    """``params`` without gradients inside (D during the G phase), trainable again after."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _nonfinite(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """A float scalar on the device, nonzero where the loss or a gradient is non-finite on any
    rank. Not read on the host: the optimizer skips on it, and the step reads all its phases'
    flags at once at its end."""
    grads = [p.grad for p in params if p.grad is not None]
    bad = ~torch.isfinite(loss.detach().float())
    if grads:
        bad = bad | ~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
    return dist.max_over_ranks(bad.float().reshape(()))


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class GanStep:
    """The phases of one run's GAN step; ``__call__`` runs one full step."""

    def __init__(self, cfg: Config, state: RunState, perceptual: torch.nn.Module | None = None,
                 timer: PhaseTimer | None = None) -> None:
        self.cfg, self.G = cfg, state.generator
        device = next(self.G.parameters()).device
        self.timer = timer or PhaseTimer(device)  # off unless begun: no timing, ranges only
        D = state.discriminator
        self.objective = Objective(cfg, D, build_gan_loss(cfg.loss), perceptual, device.type)
        self.autocast = self.objective.autocast
        d_params = _trainable(D)
        self.phases = [
            Phase("D", D, state.d_opt, d_params, self.objective.d_terms, repeats=cfg.optim.d_steps),
            Phase("G", self.G, state.g_opt, _trainable(self.G), self.objective.g_terms, frozen=d_params),
        ]
        # pix2pixHD's second stage: the global generator held fixed for the first steps. Its
        # gradients are dropped before the G update, so Adam neither moves it nor keeps moments
        # for it, and it starts with fresh moments when the steps are over (as a new optimizer).
        self.fixed_until = cfg.train.fix_global_steps
        self.fixed_params = fixed_global_params(self.G) if self.fixed_until else []
        self._fixing = False
        # fp16: the run's loss scales (checkpointed with it); a state without them (the memory
        # estimate's) gets fresh ones.
        self.scales: dict[str, LossScale] = {}
        if cfg.train.precision == "fp16":
            self.scales = getattr(state, "loss_scales", None) or loss_scales(device, cfg.train.fp16_growth_interval)

    def run_phase(self, phase: Phase, x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> tuple[Terms, torch.Tensor]:
        """One update of ``phase``: its terms, backward, the optimizer step unless non-finite.
        Returns the terms with their sum (``"d"`` / ``"g"``) and the non-finite flag, unread."""
        timer, key = self.timer, phase.name.lower()
        with _frozen(phase.frozen):
            with timer("forward", phase.name):
                terms = phase.terms(x, fake, real)
                loss = sum(terms.values())
            scale = self.scales.get(phase.name)
            with timer("backward", phase.name):
                phase.opt.zero_grad(set_to_none=True)
                (loss if scale is None else loss * scale.value).backward()
                if phase.name == "G" and self._fixing:
                    for p in self.fixed_params:
                        p.grad = None
            with timer("optimizer", phase.name):
                bad = _nonfinite(loss, phase.params)  # on the scaled gradients: an overflow is caught
                step_optimizer(phase.opt, bad, None if scale is None else scale.value)
                if scale is not None:
                    scale.update(bad)
        return {**terms, key: loss}, bad

    def __call__(self, x: torch.Tensor, real: torch.Tensor, step: int) -> StepResult:
        self._fixing = step <= self.fixed_until
        with self.timer("forward", "G"), self.autocast:
            fake = self.G(x)
        fake = fake.float()
        done = [(phase.name, *self.run_phase(phase, x, fake, real))
                for phase in self.phases for _ in range(phase.repeats)]
        result = StepResult()
        for (_, terms, _), computed in zip(done, self._check(step, done, result)):
            if computed:
                result.losses.update(terms)
        return result

    def _check(self, step: int, done: list[tuple[str, Terms, torch.Tensor]], result: StepResult) -> list[bool]:
        """Which updates' terms to report (one host read for the whole step): the finite ones,
        and in fp16 those the loss scale skipped within ``train.fp16_max_skips`` in a row
        (counted in ``result.scale_skips``). Any other non-finite one (its update already skipped
        on the device) is printed with its terms and marks ``result.skipped``, or raises."""
        ok = [not b for b in torch.stack([bad for _, _, bad in done]).tolist()]
        report = []
        for (name, terms, _), fine in zip(done, ok):
            report.append(fine)
            scale = self.scales.get(name)
            in_row = scale.count_overflow(not fine) if scale is not None else 0
            if fine:
                continue
            if scale is not None and in_row <= self.cfg.train.fp16_max_skips:
                result.scale_skips[name] = result.scale_skips.get(name, 0) + 1
                report[-1] = True
                continue
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            if scale is not None:
                values += (f"; {in_row} {name} updates in a row overflowed the fp16 loss scale "
                           f"(train.fp16_max_skips={self.cfg.train.fp16_max_skips})")
            if self.cfg.train.nonfinite == "skip":
                result.skipped = True
                print(f"[asaptrain] step {step}: non-finite {name} gradients ({values}); step skipped", flush=True)
                continue
            raise NonFiniteLoss(
                f"step {step}: non-finite {name} loss/gradients ({values}); lower optim.g_lr/optim.d_lr, "
                f"try train.precision=fp32, or set train.nonfinite=skip to skip such steps"
            )
        return report
