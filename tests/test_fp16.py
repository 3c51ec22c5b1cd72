"""fp16 training with a loss scale per network, on the CPU (autocast fp16 and the scale's kernel run there):
every preset trains, an overflow is skipped and counted (not a failure until many in a row), the
scales survive a resume, and WGAN-GP's penalty in fp16 stays within fp16's rounding of fp32's."""

from __future__ import annotations

import math

import pytest
import torch
from reporting import ListReporter
from test_train_loop import CPU, CrashAfter, Crash, passthrough, smoke, tensors

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import SMOKE_PRESETS
from asaptrain.config.schema import ConfigError
from asaptrain.train.gan import GanStep, NonFiniteLoss
from asaptrain.train.loss_scale import INIT_SCALE
from asaptrain.train.losses import WGANGP
from asaptrain.train.loop import build_state, train_loop
from asaptrain.train.nets import build_discriminator
from asaptrain.train.state import from_bytes, to_bytes


def fp16(name, *extra):
    return smoke(name, "train.precision=fp16", *extra)


@pytest.mark.parametrize("name", SMOKE_PRESETS)
def test_every_smoke_preset_trains_in_fp16_with_finite_losses(name):
    # 8 steps: WGAN-GP's critic overflows at the first scales (its penalty's gradient is taken at
    # the scale), and backs off to one that fits within its first updates, as GradScaler does.
    cfg = fp16(name, "train.steps=8", "train.log_every=4", "train.checkpoint_every=4", "eval.every=4")
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg), passthrough, CPU, rep)
    assert state.step == 8
    metrics = rep.reports[-1][0]
    for key in ("loss/g", "loss/d"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert not metrics["skipped"]
    for net in ("d", "g"):
        scale = metrics[f"fp16/scale/{net}"]
        assert 1 <= scale <= INIT_SCALE and math.log2(scale).is_integer()  # halved from 2^16 per overflow
    d_updates = sum(m["fp16/skipped/d"] for m, _ in rep.reports)
    assert metrics["fp16/scale/d"] == INIT_SCALE / 2**d_updates  # 8 steps: too few clean updates to grow


def test_an_overflow_is_skipped_counted_and_halves_the_scale_leaving_weights_and_moments():
    cfg = fp16("deblurgan-smoke", "optim.d_steps=1")
    state = build_state(cfg, CPU, lambda m: m)
    for scale in state.loss_scales.values():
        scale.value.fill_(2.0**100)  # every fp16 gradient overflows
    weights = [p.detach().clone() for net in (state.generator, state.discriminator) for p in net.parameters()]
    step = GanStep(cfg, state)
    batch = next(tensors(cfg))
    result = step(batch["x"], batch["y"], 1)
    assert result.scale_skips == {"D": 1, "G": 1} and not result.skipped and result.losses == {}
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


def test_overflows_are_counted_per_report_and_stop_the_run_only_after_fp16_max_skips_in_a_row():
    # A NaN in every target: every update of both networks is non-finite.
    cfg = fp16("deblurgan-smoke", "optim.d_steps=1", "train.fp16_max_skips=10")
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg, poison=True), passthrough, CPU, rep)
    assert state.step == 4
    for metrics, _ in rep.reports:  # log_every=2: two overflowed updates per network per report
        assert metrics["fp16/skipped/d"] == 2 and metrics["fp16/skipped/g"] == 2 and not metrics["skipped"]
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
    cfg = fp16("deblurgan-smoke", "train.steps=6")
    full = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter())
    batches = tensors(cfg)
    rep = CrashAfter(4)
    with pytest.raises(Crash):
        train_loop(cfg, batches, passthrough, CPU, rep)
    saved = from_bytes(to_bytes(rep.last_state))
    assert set(saved["loss_scales"]) == {"D", "G"}
    resumed = train_loop(cfg, batches, passthrough, CPU, ListReporter(), checkpoint=saved)
    assert resumed.step == 6
    for name, scale in full.loss_scales.items():
        # The growth tracker (clean updates in a row) differs from a fresh scale's after 6 steps.
        assert int(scale.growth_tracker) > 0
        assert torch.equal(resumed.loss_scales[name].value, scale.value)
        assert torch.equal(resumed.loss_scales[name].growth_tracker, scale.growth_tracker)
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


def test_wgan_gp_penalty_in_fp16_matches_fp32_within_fp16_rounding():
    """The bound: each fp16 layer rounds its inputs and weights to 11 significant bits (2 x 2^-11 =
    2^-10 relative, sums kept in fp32), so the gradient norm n through D's L conv layers is off by
    at most about L x 2^-10 relative, and the penalty 10 (n - 1)^2 by 2n / |n - 1| times that."""
    cfg = smoke("deblurgan-smoke")
    torch.manual_seed(0)
    D = build_discriminator(cfg)
    layers = sum(isinstance(m, torch.nn.Conv2d) for m in D.modules())
    loss = WGANGP(cfg.loss.gp_weight)
    real, fake = torch.rand(4, 3, 64, 64) * 2 - 1, torch.rand(4, 3, 64, 64) * 2 - 1
    points = loss.interpolates(real, fake)
    exact = loss.penalty_at(D(points, None), points).detach()
    for scale in (2.0**8, 2.0**12):
        at = points.detach().clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.float16):
            outs = D(at, None)
        half = loss.penalty_at(outs, at, torch.tensor(scale))
        assert half.dtype == torch.float32 and half.requires_grad
        n = 1 + math.sqrt(float(exact) / cfg.loss.gp_weight)  # the norm, from the fp32 penalty (n > 1 here)
        bound = 2 * n / (n - 1) * layers * 2.0**-10
        assert abs(float(half) - float(exact)) <= bound * float(exact), (float(half), float(exact), bound)
