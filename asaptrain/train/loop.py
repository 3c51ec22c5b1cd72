"""The per-worker training loop, the same with and without Ray.

``train_loop(cfg, batches, ...)`` builds the run state, restores it from a checkpoint if one
is given, and runs GAN steps until ``train.steps``. It reports through a small reporter
(Ray's calls ``ray.train.report``; tests record into a list) and, on rank 0, writes the run's
files. It reads no environment and touches no process group (``asaptrain.train.dist`` does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from asaptrain.train import dist
from asaptrain.config.io import to_dict
from asaptrain.config.schema import Config
from asaptrain.train.curriculum import build_blur_schedule
from asaptrain.train.losses import build_gan_loss, build_perceptual
from asaptrain.train.metrics import (
    FidScorer,
    device_name,
    find_inception_weights,
    inference_ms,
    psnr_per_image,
    ssim_per_image,
    to_unit,
)
from asaptrain.train.nets import build_discriminator, build_generator, generator_in_channels
from asaptrain.models.pixel_mlp import pixel_path
from asaptrain.train.cadence import Cadence, PhaseTimer, Throughput
from asaptrain.train.gan import GanStep
from asaptrain.train.init_from import InitPlan, apply_init
from asaptrain.train.run_files import EVAL_KIND, RunFiles
from asaptrain.train.state import RunState, make_ema, update_ema
from asaptrain.train.visual import training_samples


class Reporter(Protocol):
    """Where the loop's reports go: Ray's calls ``ray.train.report``; tests record into a list."""

    def report(self, metrics: dict, state: dict | None) -> None:
        """Called by every rank the same number of times; ``state`` only on checkpoints."""


def lr_lambda(total_steps: int, decay_start: float) -> Callable[[int], float]:
    """Constant, then linear decay to zero from ``decay_start * total_steps`` (the papers' schedule)."""
    start = int(decay_start * total_steps)

    def factor(step: int) -> float:
        if step < start or total_steps <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (total_steps - start))

    return factor


def build_state(cfg: Config, device: torch.device, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> RunState:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    G, D = build_generator(cfg).to(device), build_discriminator(cfg).to(device)
    if cfg.train.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    ema = make_ema(G) if cfg.optim.ema_decay > 0 else None
    G, D = wrap(G), wrap(D)
    if cfg.train.compile:  # after the DDP wrap: DDP's graph-splitting optimizer needs to see DDP
        G = torch.compile(G)
        # WGAN-GP's penalty differentiates D's gradient (a double backward), which a compiled
        # graph cannot do: D stays eager there.
        D = D if build_gan_loss(cfg.loss).has_penalty else torch.compile(D)
    o = cfg.optim
    # Fused: it can skip a non-finite step on the device (``gan.step_optimizer``), with no host sync.
    g_opt = torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=(o.beta1, o.beta2), fused=True)
    d_opt = torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=(o.beta1, o.beta2), fused=True)
    f = lr_lambda(cfg.train.steps, o.decay_start)
    return RunState(
        generator=G, discriminator=D, g_opt=g_opt, d_opt=d_opt,
        g_lr_schedule=torch.optim.lr_scheduler.LambdaLR(g_opt, f),
        d_lr_schedule=torch.optim.lr_scheduler.LambdaLR(d_opt, f),
        blur_schedule=build_blur_schedule(cfg.curriculum, cfg.train.steps, seed=cfg.train.seed), ema=ema, config=to_dict(cfg),
    )


@torch.no_grad()
def score_validation(cfg: Config, generator: torch.nn.Module, val: tuple[torch.Tensor, torch.Tensor], device, fid_weights):
    """PSNR/SSIM (per-image means), the blurred input's PSNR/SSIM for deblurring, FID or its reason."""
    x_all, y_all = val
    was_training = generator.training
    generator.eval()
    psnr, ssim, in_psnr, in_ssim = [], [], [], []
    fid = FidScorer(fid_weights[0], device) if (cfg.eval.fid and fid_weights[0]) else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    first = None
    for i in range(0, x_all.shape[0], cfg.eval.batch_size):
        x = x_all[i : i + cfg.eval.batch_size].to(device)
        y = to_unit(y_all[i : i + cfg.eval.batch_size].to(device))
        with autocast:
            out = generator(x)
        fake = to_unit(out)
        if first is None:
            first = (x.cpu(), out.float().cpu(), y_all[i : i + cfg.eval.batch_size])
        psnr.append(psnr_per_image(fake, y))
        ssim.append(ssim_per_image(fake, y))
        if cfg.data.task == "deblur":
            inp = to_unit(x[:, :3])
            in_psnr.append(psnr_per_image(inp, y))
            in_ssim.append(ssim_per_image(inp, y))
        if fid is not None:
            fid.update(y, fake)
    generator.train(was_training)
    record = {"psnr": float(torch.cat(psnr).mean()), "ssim": float(torch.cat(ssim).mean())}
    record["input_psnr"] = float(torch.cat(in_psnr).mean()) if in_psnr else None
    record["input_ssim"] = float(torch.cat(in_ssim).mean()) if in_ssim else None
    if not cfg.eval.fid:
        record["fid"], record["fid_reason"] = None, "disabled (eval.fid = false)"
    elif fid is None:
        record["fid"], record["fid_reason"] = None, fid_weights[1]
    else:
        res = fid.compute()
        record["fid"], record["fid_reason"] = res.value, res.reason
    return record, first


def train_loop(
    cfg: Config,
    batches: Iterator[dict],
    to_model_batch: Callable,
    device: torch.device,
    reporter: Reporter,
    run: RunFiles | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint: dict | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    weights_store=None,
    init: InitPlan | None = None,
) -> RunState:
    """Train until ``cfg.train.steps``; ``run`` and ``val`` are used on rank 0 only.
    ``weights_store``: the Store whose ``weights/`` folder holds VGG19 / Inception weights. A new
    run (no ``checkpoint``) starts its networks from ``init`` when given (``train --init-from``)."""
    check_device_memory(cfg, device)
    state = build_state(cfg, device, wrap)
    if checkpoint is None and init is not None:
        apply_init(state, init)
    _restore(cfg, state, checkpoint, run if dist.is_main() else None)
    loop = _Loop(cfg, state, device, reporter, run, val, weights_store)
    if state.step == 0:
        loop.validate(0, Cadence.at(0, cfg))
    elif loop.run is not None:  # resumed: every report carries the latest validation numbers (Tune needs them)
        evals = loop.run.read_metrics().evals()
        loop.last_eval = {k: v for k, v in (evals[-1] if evals else {}).items() if k not in ("step", "kind")}
    while state.step < cfg.train.steps:
        step = state.step + 1
        when = Cadence.at(step, cfg)
        result, strength = loop.train_step(step, when, batches, to_model_batch)
        rate = loop.meter.interval_rate()  # before evaluating, which is not training
        if when.eval:
            loop.validate(step, when)
        if when.calls_reporter:
            loop.report_step(step, when, result.skipped, strength, rate)
    loop.finish()
    return state


def check_device_memory(cfg: Config, device: torch.device) -> None:
    """Before anything is allocated on a GPU: a step whose estimate does not fit the device is
    refused (or warned about, ``train.memory_check``) with the settings that would fit."""
    if device.type != "cuda" or cfg.train.memory_check == "off":
        return
    from asaptrain.train.memory import check_fits

    total = torch.cuda.get_device_properties(device).total_memory
    check_fits(cfg, total, torch.cuda.get_device_name(device), world_size=dist.world_size())


def _restore(cfg: Config, state: RunState, checkpoint: dict | None, run: RunFiles | None) -> None:
    """Resume from ``checkpoint`` (dropping the run's records past it), and seed each rank apart."""
    seed = cfg.train.seed
    if checkpoint is None:
        torch.manual_seed(seed * 1000 + dist.rank())  # dropout / penalty randomness differs per rank
        if run is not None and run.dir.exists("metrics.jsonl"):  # a restart before any checkpoint: from 0
            run.truncate_after(-1)
        return
    planned = [list(state.g_lr_schedule.base_lrs), list(state.d_lr_schedule.base_lrs)]  # the config's, before the load
    state.load_state_dict(checkpoint)  # also restores the RNG state rank 0 saved
    _follow_plan(cfg, state, planned)
    if dist.rank() != 0:  # the others draw anew from the step on, each still its own stream
        torch.manual_seed(seed * 1000 + dist.rank() + 1_000_003 * state.step)
    if run is not None:
        run.truncate_after(state.step)


def _follow_plan(cfg: Config, state: RunState, base_lrs: list[list[float]]) -> None:
    """Make the restored run the run ``cfg`` plans from step 0: a resume with another
    ``train.steps`` (or other ``optim.*_lr``, ``curriculum.*``) continues on the new plan's
    learning rates and blur strengths, not on the checkpoint's (an extended run whose lr had
    decayed to 0 goes back up to where the longer plan has it)."""
    for sched, bases in ((state.g_lr_schedule, base_lrs[0]), (state.d_lr_schedule, base_lrs[1])):
        sched.base_lrs = list(bases)
        # LambdaLR keeps the lambdas of ``cfg`` (functions are not in its state dict); the lr
        # the next step trains with is the plan's at the steps done so far.
        lrs = [base * fn(state.step) for base, fn in zip(bases, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched.last_epoch, sched._last_lr = state.step, lrs
    state.blur_schedule = build_blur_schedule(cfg.curriculum, cfg.train.steps, seed=cfg.train.seed)


class _Loop:
    """One worker's run between steps: the GAN step, evaluation, reports, the closing timing."""

    def __init__(self, cfg: Config, state: RunState, device: torch.device, reporter: Reporter,
                 run: RunFiles | None, val, weights_store) -> None:
        self.cfg, self.state, self.device, self.reporter = cfg, state, device, reporter
        self.main = dist.is_main()
        self.run, self.val = (run, val) if self.main else (None, None)
        t = cfg.train
        self.blur_rng = torch.Generator(device=device).manual_seed(t.seed * 7919 + dist.rank() * 104729 + state.step)
        self.meter = Throughput(t.batch_size, PhaseTimer(device))
        self.step_fn = GanStep(cfg, state, _perceptual_on(cfg, weights_store, device), self.meter.timer)
        self.fid_weights = find_inception_weights(cfg.eval.inception_weights, weights_store) \
            if (self.main and cfg.eval.fid) else (None, "")
        self.last_eval: dict = {}
        self.loss_tensors: dict[str, torch.Tensor] = {}  # read (a device sync) only when logging

    def train_step(self, step: int, when: Cadence, batches: Iterator[dict], to_model_batch: Callable):
        """One GAN step on the next batch (blurred at the curriculum's strength), then schedules and EMA."""
        cfg, state = self.cfg, self.state
        w0 = time.perf_counter()
        batch = next(batches)
        strength = state.blur_schedule.strength(step)
        x, y = to_model_batch(batch, cfg, strength, self.blur_rng)
        if cfg.train.channels_last:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        wait_s = time.perf_counter() - w0
        self.meter.timer.begin(when.timed)
        result = self.step_fn(x, y, step)
        self.meter.stepped(when.timed, wait_s)
        # The schedules count steps, skipped ones (non-finite losses) included.
        state.g_lr_schedule.step()
        state.d_lr_schedule.step()
        if state.ema is not None:
            update_ema(state.ema, state.generator, cfg.optim.ema_decay)
        state.step = step
        if result.losses:
            self.loss_tensors = result.losses
        return result, strength

    def validate(self, step: int, when: Cadence) -> None:
        """Validation metrics (rank 0, when it has a validation set) and, when due, a sample grid."""
        if self.val is None:
            return
        record, first = score_validation(self.cfg, self.state.inference_generator(), self.val, self.device, self.fid_weights)
        self.last_eval = record
        if self.run is not None:
            self.run.add_metrics({"step": step, "kind": EVAL_KIND, **record})
            if when.samples:
                x, out, y = first
                self.run.write_samples(step, training_samples(x, out, y, self.cfg.data.task, self.cfg.data.num_labels))

    def report_step(self, step: int, when: Cadence, skipped: bool, strength: float, rate: float) -> None:
        """Every rank reports (a log line, a checkpoint or both); rank 0 writes the run's files.
        Before a checkpoint the ranks' G and D are compared: a diverged replica stops the run."""
        if when.log:
            metrics = self._log(step, when, skipped, strength, rate)
        else:
            metrics = {"step": step}
            if self.run is not None:
                self.run.flush(durable=True)
        # Every report carries the latest validation numbers (Tune's schedulers need them in each).
        metrics.update({f"val_{k}": v for k, v in self.last_eval.items() if isinstance(v, float)})
        if when.checkpoint:
            dist.check_replicas({"G": self.state.generator, "D": self.state.discriminator})
        self.reporter.report(metrics, self.state.state_dict() if (when.checkpoint and self.main) else None)

    def _log(self, step: int, when: Cadence, skipped: bool, strength: float, rate: float) -> dict:
        state, steps = self.state, self.cfg.train.steps
        losses = {f"loss/{k}": float(v.detach()) for k, v in self.loss_tensors.items()}
        metrics = {
            "step": step, "kind": "train", **losses, "lr/g": state.g_opt.param_groups[0]["lr"],
            "lr/d": state.d_opt.param_groups[0]["lr"], "blur_strength": strength, "images_per_s": rate,
            "skipped": skipped,
        }
        if self.run is not None:
            self.run.add_metrics(metrics)
            self.run.flush(durable=when.checkpoint)
            self.run.write_progress({"step": step, "steps": steps, "images_per_s": rate, **losses,
                                     **{f"val/{k}": v for k, v in self.last_eval.items() if k in ("psnr", "ssim")}})
        self.meter.logged(rate)
        return {k: v for k, v in metrics.items() if k != "kind"}

    def finish(self) -> None:
        """Weights' fingerprints from every rank, then (rank 0) the run's timing.json."""
        cfg, state, device = self.cfg, self.state, self.device
        # A fingerprint of the weights on every rank: DDP replicas must stay identical.
        checksums = dist.gather(sum(float(p.detach().double().sum()) for p in
                                    [*dist.unwrap(state.generator).parameters(),
                                     *dist.unwrap(state.discriminator).parameters()]))
        if self.run is None:
            return
        self.run.flush(durable=True)
        step_ms, world = self.meter.step_ms(), dist.world_size()
        self.run.write_timing({
            "images_per_s": self.meter.steady_images_per_s(), "step_ms": step_ms,
            "data_wait_share": step_ms["data_wait"] / step_ms["total"] if step_ms["total"] else None,
            "gpu": device_name(device), "gpu_count": world if device.type == "cuda" else 0, "world_size": world,
            "batch_size": cfg.train.batch_size, "per_worker_batch": cfg.train.batch_size // world,
            "height": cfg.data.crop_height, "width": cfg.data.crop_width, "precision": cfg.train.precision,
            "replica_checksums": checksums, "inference": _inference_rows(cfg, state, device),
        })
        self.run.close()  # the curve sinks: last events uploaded, MLflow run ended


def _perceptual_on(cfg: Config, store, device):
    module = build_perceptual(cfg.loss, store=store)
    return module.to(device) if module is not None else None


def _inference_rows(cfg: Config, state: RunState, device: torch.device) -> list[dict]:
    G = state.inference_generator()
    was_training = G.training  # the EMA copy is always in eval mode, the live G in training mode
    rows = []
    dtypes = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    for dtype in dtypes:
        ms = inference_ms(G, generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width, device,
                          bf16=dtype == "bf16", repeats=20 if device.type == "cuda" else 3, warmup=3 if device.type == "cuda" else 1)
        rows.append({"height": cfg.data.crop_height, "width": cfg.data.crop_width, "batch": 1, "ms": ms,
                     "dtype": dtype, "gpu": device_name(device), "pixel_path": pixel_path(G)})
    G.train(was_training)
    return rows
