"""The GAN step as explicit phases around loss objects (StyleGAN3's ``accumulate_gradients``).

One step = generator forward once, ``d_steps`` discriminator updates on the detached output,
then one generator update through the discriminator. Each discriminator call sees real and
fake (and, for WGAN-GP, the interpolates) concatenated into one batch: one forward per
phase, which is also what DDP expects (no second forward before a backward).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from asaptrain.train import dist
from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.init_from import fixed_global_params
from asaptrain.train.losses import feature_matching
from asaptrain.train.nets import feature_matching_layer_weight


class NonFiniteLoss(UserError):
    """A loss or gradient became NaN/inf; the message names the step, phase and terms."""


@dataclass
class PhaseTimes:
    """Milliseconds spent per part of a step (measured only on timed steps)."""

    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: bool = False


def _split(outs: list[list[torch.Tensor]], sizes: list[int]) -> list[list[list[torch.Tensor]]]:
    """Split every tensor of multi-scale D outputs along the batch into ``sizes`` parts."""
    parts = [[[] for _ in outs] for _ in sizes]
    for s, scale in enumerate(outs):
        for feat in scale:
            for i, chunk in enumerate(torch.split(feat, sizes)):
                parts[i][s].append(chunk)
    return parts


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
    """A scalar device tensor, nonzero where the loss or a gradient is non-finite on any rank.

    Not read on the host: the optimizer skips on it on the device, and the step reads all its
    phases' flags at once at its end (one host sync per step, not one per phase).
    """
    grads = [p.grad for p in params if p.grad is not None]
    bad = ~torch.isfinite(loss.detach().float())
    if grads:
        bad = bad | ~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
    return dist.max_over_ranks(bad.float().reshape(()))  # a scalar, as the fused optimizers take it


def _step_unless(opt: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """``opt.step()`` that leaves weights, moments and step count as they were where ``bad`` is
    nonzero, decided on the device: the fused optimizers' ``found_inf`` skip, which
    ``torch.amp.GradScaler`` drives the same way."""
    if not all(group.get("fused") for group in opt.param_groups):
        # Optimizer state from a checkpoint written before the optimizers were fused keeps
        # ``fused`` off: such an optimizer has no device-side skip, so read the flag here.
        if not bool(bad):
            opt.step()
        return
    opt.found_inf = bad
    try:
        opt.step()
    finally:
        del opt.found_inf


class GanStep:
    """Holds G, D, their optimizers and the losses; ``__call__`` runs one full step."""

    def __init__(self, cfg: Config, generator, discriminator, g_opt, d_opt, gan_loss, perceptual, device):
        self.cfg = cfg
        self.G, self.D = generator, discriminator
        self.g_opt, self.d_opt = g_opt, d_opt
        self.gan_loss, self.perceptual = gan_loss, perceptual
        self.device = device
        self.cuda = device.type == "cuda"
        self.fm_layer_weight = feature_matching_layer_weight(cfg)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        self.g_params = [p for p in generator.parameters() if p.requires_grad]
        self.d_params = [p for p in discriminator.parameters() if p.requires_grad]
        # pix2pixHD's second stage: the global generator held fixed for the first steps. Its
        # gradients are dropped before the G update, so Adam neither moves it nor keeps moments
        # for it, and it starts with fresh moments when the steps are over (as a new optimizer).
        self.fixed_until = cfg.train.fix_global_steps
        self.fixed_params = fixed_global_params(generator) if self.fixed_until else []
        self._fixing = False

    # ------------------------------------------------------------------ timing helpers
    def _mark(self, timed: bool) -> float:
        if timed and self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _cond(self, x: torch.Tensor) -> torch.Tensor | None:
        return x if self.cfg.model.d_conditional else None

    def _run_d(self, images: torch.Tensor, cond: torch.Tensor | None):
        with self.autocast:
            return self.D(images, cond)

    # ------------------------------------------------------------------ phases
    def d_phase(self, x, fake, real, times: PhaseTimes, timed: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One discriminator update; returns its loss terms and its non-finite flag (unread)."""
        t0 = self._mark(timed)
        n = real.shape[0]
        batch = [real, fake.detach()]
        if self.gan_loss.has_penalty:
            batch.append(self.gan_loss.interpolates(real, fake))
        cond = self._cond(x)
        outs = self._run_d(torch.cat(batch), None if cond is None else torch.cat([cond] * len(batch)))
        parts = _split(outs, [n] * len(batch))
        terms = {"d_adv": self.gan_loss.d_loss(parts[0], parts[1])}
        if self.gan_loss.has_penalty:
            terms["d_gp"] = self.gan_loss.penalty_at(parts[2], batch[2])
        return self._update("D", terms, self.d_opt, self.d_params, times, timed, t0)

    def g_phase(self, x, fake, real, times: PhaseTimes, timed: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One generator update through D; returns its loss terms and its non-finite flag (unread)."""
        t0 = self._mark(timed)
        lc = self.cfg.loss
        with _frozen(self.d_params):
            n = real.shape[0]
            cond = self._cond(x)
            need_real = lc.feature_matching_weight > 0
            images = torch.cat([fake, real]) if need_real else fake
            conds = None if cond is None else (torch.cat([cond, cond]) if need_real else cond)
            outs = self._run_d(images, conds)
            parts = _split(outs, [n, n]) if need_real else [outs]
            terms = {"g_adv": lc.gan_weight * self.gan_loss.g_loss(parts[0])}
            if need_real:
                real_feats = [[f.detach() for f in scale] for scale in parts[1]]
                terms["g_fm"] = lc.feature_matching_weight * feature_matching(real_feats, parts[0], self.fm_layer_weight)
            if self.perceptual is not None:
                with self.autocast:
                    terms["g_perceptual"] = lc.perceptual_weight * self.perceptual(fake, real).float()
            if lc.l1_weight > 0:
                terms["g_l1"] = lc.l1_weight * (fake.float() - real.float()).abs().mean()
            return self._update("G", terms, self.g_opt, self.g_params, times, timed, t0)

    def _update(self, phase: str, terms: dict[str, torch.Tensor], opt, params, times: PhaseTimes, timed: bool,
                t0: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Backward and the optimizer step of one phase begun at ``t0``, skipped on the device
        where anything is non-finite. Returns the phase's terms and their sum (``"d"`` / ``"g"``),
        and the non-finite flag, unread."""
        loss = sum(terms.values())
        t1 = self._mark(timed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if phase == "G" and self._fixing:
            for p in self.fixed_params:
                p.grad = None
        t2 = self._mark(timed)
        bad = _nonfinite(loss, params)
        _step_unless(opt, bad)
        t3 = self._mark(timed)
        times.forward += (t1 - t0) * 1000
        times.backward += (t2 - t1) * 1000
        times.optimizer += (t3 - t2) * 1000
        return {**terms, phase.lower(): loss}, bad

    def _check(self, step: int, phases: list[tuple[str, dict[str, torch.Tensor], torch.Tensor]]) -> list[bool]:
        """Which phases were finite everywhere (one host read for the whole step); a non-finite
        one (its update already skipped on the device) is reported with its terms, or raises."""
        ok = [not b for b in torch.stack([bad for _, _, bad in phases]).tolist()]
        for (phase, terms, _), fine in zip(phases, ok):
            if fine:
                continue
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            if self.cfg.train.nonfinite == "skip":
                print(f"[asaptrain] step {step}: non-finite {phase} gradients ({values}); step skipped", flush=True)
                continue
            raise NonFiniteLoss(
                f"step {step}: non-finite {phase} loss/gradients ({values}); lower optim.g_lr/optim.d_lr, "
                f"try train.precision=fp32, or set train.nonfinite=skip to skip such steps"
            )
        return ok

    def __call__(self, x: torch.Tensor, real: torch.Tensor, step: int, times: PhaseTimes, timed: bool) -> StepResult:
        self._fixing = step <= self.fixed_until
        t0 = self._mark(timed)
        with self.autocast:
            fake = self.G(x)
        fake = fake.float()
        times.forward += (self._mark(timed) - t0) * 1000
        phases = [("D", *self.d_phase(x, fake, real, times, timed)) for _ in range(self.cfg.optim.d_steps)]
        phases.append(("G", *self.g_phase(x, fake, real, times, timed)))
        result = StepResult()
        for (_, terms, _), fine in zip(phases, self._check(step, phases)):
            if fine:
                result.losses.update(terms)
            else:
                result.skipped = True
        return result
