"""fp16 training with a loss scale per network, on the CPU (autocast fp16 and the scale's kernel run there):
every preset trains, an overflow is skipped and counted (not a failure until many in a row) with its
losses still logged, the scale grows and backs off as GradScaler's does, the scales survive a resume,
and WGAN-GP's penalty in fp16 is finite and equal to fp32's."""

from __future__ import annotations

import math

import pytest
import torch
from reporting import ListReporter
from test_train_loop import CPU, CrashAfter, Crash, passthrough, smoke, tensors

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import SMOKE_PRESETS, get_preset
from asaptrain.config.schema import ConfigError
from asaptrain.train.gan import GanStep, NonFiniteLoss
from asaptrain.train.loss_scale import INIT_SCALE
from asaptrain.train.losses import WGANGP
from asaptrain.train.loop import build_state, train_loop
from asaptrain.train.nets import build_discriminator, min_input_size
from asaptrain.train.objective import Objective
from asaptrain.train.state import from_bytes, to_bytes


def fp16(name, *extra):
    """``name`` in fp16 at 32x32 (or the smallest crop its generator takes), two images a batch:
    autocast fp16 is emulated on a CPU (about 10x slower than fp32), and the loss scale's rules do
    not depend on the image size."""
    small = max(32, min_input_size(get_preset(name)))
    return smoke(name, "train.precision=fp16", f"data.crop_height={small}", f"data.crop_width={small}",
                 "train.batch_size=2", *extra)


@pytest.mark.parametrize("name", SMOKE_PRESETS)
def test_every_smoke_preset_trains_in_fp16_with_finite_losses(name):
    # Two steps, one log line, one evaluation show what four did (finite losses, a clean last step,
    # the scales only ever halved) at half the CPU: fp16 runs emulated on a CPU.
    cfg = fp16(name, "train.steps=2", "eval.every=2")
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg), passthrough, CPU, rep)
    assert state.step == 2 and [m["step"] for m, _ in rep.reports] == [2]
    for metrics, _ in rep.reports:  # every log line
        for key in ("loss/g", "loss/d"):
            assert math.isfinite(metrics[key]), (key, metrics)
    metrics = rep.reports[-1][0]
    assert not metrics["skipped"]
    for net in ("d", "g"):
        scale = metrics[f"fp16/scale/{net}"]
        assert 1 <= scale <= INIT_SCALE and math.log2(scale).is_integer()  # halved from 2^16 per overflow
    d_updates = sum(m["fp16/skipped/d"] for m, _ in rep.reports)
    assert metrics["fp16/scale/d"] == INIT_SCALE / 2**d_updates  # 2 steps: too few clean updates to grow


def test_an_overflow_is_skipped_counted_and_halves_the_scale_leaving_weights_and_moments():
    cfg = fp16("deblurgan-smoke", "optim.d_steps=1")
    state = build_state(cfg, CPU, lambda m: m)
    for scale in state.loss_scales.values():
        scale.value.fill_(2.0**100)  # every fp16 gradient overflows
    weights = [p.detach().clone() for net in (state.generator, state.discriminator) for p in net.parameters()]
    step = GanStep(cfg, state)
    batch = next(tensors(cfg))
    result = step(batch["x"], batch["y"], 1)
    assert result.scale_skips == {"D": 1, "G": 1} and not result.skipped
    # The losses were computed (finite: only the scaled gradients overflowed) and are reported.
    assert {"d", "g"} <= set(result.losses) and all(torch.isfinite(v) for v in result.losses.values())
    assert all(float(s.value) == 2.0**99 and int(s.growth_tracker) == 0 for s in state.loss_scales.values())
    after = [p.detach() for net in (state.generator, state.discriminator) for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, after))
    for opt in (state.g_opt, state.d_opt):
        for s in opt.state.values():
            assert float(s["step"]) == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any()
    # With a scale that fits, the next step updates and the scale's clean run starts counting.
    for scale in state.loss_scales.values():
        scale.value.fill_(1.0)
    result = step(batch["x"], batch["y"], 2)
    assert result.scale_skips == {} and "d" in result.losses and "g" in result.losses
    assert all(int(s.growth_tracker) == 1 for s in state.loss_scales.values())
    assert not torch.equal(weights[0], state.generator.parameters().__next__().detach())


def test_the_scale_doubles_after_growth_interval_clean_updates_and_halves_on_an_overflow():
    """GradScaler's rule, per network: ``growth_interval`` clean updates in a row double the scale
    (and restart the count); an overflow halves it and restarts the count; the weights stay."""
    cfg = fp16("deblurgan-smoke", "optim.d_steps=1", "train.fp16_growth_interval=2")
    state = build_state(cfg, CPU, lambda m: m)
    for scale in state.loss_scales.values():
        scale.value.fill_(2.0**10)  # fits: no overflow but the forced one
    step = GanStep(cfg, state)
    clean, poisoned = next(tensors(cfg)), next(tensors(cfg, poison=True))
    # step: (batch, scale after it, growth tracker after it)
    plan = [(clean, 2**10, 1), (clean, 2**11, 0), (clean, 2**11, 1), (poisoned, 2**10, 0), (clean, 2**10, 1),
            (clean, 2**11, 0)]
    for n, (batch, value, tracker) in enumerate(plan, start=1):
        before = [p.detach().clone() for p in state.generator.parameters()]
        result = step(batch["x"], batch["y"], n)
        for name, scale in state.loss_scales.items():
            assert (float(scale.value), int(scale.growth_tracker)) == (value, tracker), (n, name)
        if batch is poisoned:
            assert result.scale_skips == {"D": 1, "G": 1}
            assert all(torch.equal(a, b.detach()) for a, b in zip(before, state.generator.parameters()))
        else:
            assert result.scale_skips == {}


def test_fp16_growth_interval_is_validated():
    with pytest.raises(ConfigError, match="train.fp16_growth_interval must be >= 1"):
        fp16("asapnet-smoke", "train.fp16_growth_interval=0")


def test_overflows_are_counted_per_report_and_stop_the_run_only_after_fp16_max_skips_in_a_row():
    # A NaN in every target: every update of both networks is non-finite.
    cfg = fp16("deblurgan-smoke", "optim.d_steps=1", "train.fp16_max_skips=10")
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg, poison=True), passthrough, CPU, rep)
    assert state.step == 4
    for metrics, _ in rep.reports:  # log_every=2: two overflowed updates per network per report
        assert metrics["fp16/skipped/d"] == 2 and metrics["fp16/skipped/g"] == 2 and not metrics["skipped"]
        assert math.isnan(metrics["loss/d"]) and math.isnan(metrics["loss/g"])  # computed (NaN), and logged
    assert rep.reports[-1][0]["fp16/scale/d"] == INIT_SCALE / 2**4
    stop = apply_overrides(cfg, ["train.fp16_max_skips=3", "train.steps=6"])
    with pytest.raises(NonFiniteLoss, match=r"step 4: .*4 D updates in a row overflowed .*fp16_max_skips=3"):
        train_loop(stop, tensors(stop, poison=True), passthrough, CPU, ListReporter())
    skip = apply_overrides(stop, ["train.nonfinite=skip"])
    rep = ListReporter()
    train_loop(skip, tensors(skip, poison=True), passthrough, CPU, rep)
    assert [m["skipped"] for m, _ in rep.reports] == [False, True, True]  # steps 4..6 past the limit


def test_fp16_max_skips_is_validated():
    with pytest.raises(ConfigError, match="train.fp16_max_skips must be >= 1"):
        fp16("asapnet-smoke", "train.fp16_max_skips=0")


def test_fp16_resume_from_checkpoint_equals_uninterrupted_run_scales_included():
    # Growth every 3 clean updates: G's scale doubles at steps 3 and 6, so a resume at step 4
    # that lost the scale (or its count of clean updates) would end on another scale.
    cfg = fp16("deblurgan-smoke", "train.steps=6", "train.fp16_growth_interval=3")
    full = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter())
    batches = tensors(cfg)
    rep = CrashAfter(4)
    with pytest.raises(Crash):
        train_loop(cfg, batches, passthrough, CPU, rep)
    saved = from_bytes(to_bytes(rep.last_state))
    assert set(saved["loss_scales"]) == {"D", "G"}
    g = saved["loss_scales"]["G"]
    assert (float(g["scale"]), int(g["growth_tracker"])) != (INIT_SCALE, 0)  # not a fresh scale's state
    resumed = train_loop(cfg, batches, passthrough, CPU, ListReporter(), checkpoint=saved)
    assert resumed.step == 6
    assert float(full.loss_scales["G"].value) > INIT_SCALE  # it grew
    for name, scale in full.loss_scales.items():
        assert torch.equal(resumed.loss_scales[name].value, scale.value)
        assert torch.equal(resumed.loss_scales[name].growth_tracker, scale.growth_tracker)
        assert resumed.loss_scales[name].overflows_in_row == scale.overflows_in_row
    for net in ("generator", "discriminator"):
        for a, b in zip(getattr(resumed, net).parameters(), getattr(full, net).parameters()):
            torch.testing.assert_close(a, b)


def test_a_checkpoint_without_loss_scales_loads_into_an_fp16_run():
    """Checkpoints written before fp16 (or by an fp32 run) have no scales: fp16 starts fresh ones."""
    cfg = smoke("asapnet-smoke", "train.steps=2")
    rep = ListReporter()
    train_loop(cfg, tensors(cfg), passthrough, CPU, rep)
    saved = from_bytes(to_bytes(rep.last_state))
    assert saved["loss_scales"] is None
    del saved["loss_scales"]
    state = build_state(fp16("asapnet-smoke", "train.steps=2"), CPU, lambda m: m)
    state.load_state_dict(saved)
    assert all(float(s.value) == INIT_SCALE and int(s.growth_tracker) == 0 for s in state.loss_scales.values())


def test_wgan_gp_penalty_in_fp16_is_finite_and_equals_fp32s():
    """The penalty's D pass runs in fp32 under fp16 autocast: finite at every loss scale and equal
    to the fp32 run's up to fp32 rounding (the interpolates go through D as a batch of their own
    there, whose conv kernels may sum in another order: 1e-5 relative is ~100 fp32 ulps). Taken in
    fp16 at the first loss scale instead, the same gradient overflows and the penalty is NaN."""
    torch.manual_seed(0)
    D = build_discriminator(smoke("deblurgan-smoke"))
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    terms = {}
    for precision in ("fp32", "fp16"):
        cfg = smoke("deblurgan-smoke", f"train.precision={precision}")
        torch.manual_seed(1)  # the same interpolates
        terms[precision] = Objective(cfg, D, WGANGP(cfg.loss.gp_weight), None, "cpu").d_terms(None, fake, real)
    half, exact = terms["fp16"]["d_gp"], terms["fp32"]["d_gp"]
    assert half.dtype == torch.float32 and half.requires_grad and torch.isfinite(half)
    torch.testing.assert_close(half, exact, rtol=1e-5, atol=0)
    # The D update's scaled gradients at the first scale stay finite through the penalty's graph.
    D.zero_grad(set_to_none=True)
    (sum(terms["fp16"].values()) * INIT_SCALE).backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    # Why: the first-order gradient in fp16 at the loss scale (2^16 > 65504, fp16's largest).
    loss = WGANGP(10.0)
    at = loss.interpolates(real, fake)
    with torch.autocast("cpu", dtype=torch.float16):
        outs = D(at, None)
    score = sum(o[-1].float().sum() for o in outs) * INIT_SCALE
    (grad,) = torch.autograd.grad(score, at)
    assert torch.isnan(grad).any()


def test_bench_train_times_an_fp16_wgan_gp_step():
    """``bench train --precision fp16`` counts FLOPs through the penalty's fp32 pass too."""
    from asaptrain.perf.train import bench_preset

    row = bench_preset(fp16("deblurgan-smoke", "optim.d_steps=1"), CPU, steps=1, warmup=0, batch=1)
    assert row["precision"] == "fp16" and row["tflop_per_step"] > 0 and row["ms_per_step"] > 0
