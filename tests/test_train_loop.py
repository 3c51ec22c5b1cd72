"""The per-worker loop without Ray (world size 1): phases, checkpoints, resume, non-finite losses."""

from __future__ import annotations

import itertools
import sys
import warnings

import pytest
import torch
from reporting import ListReporter

from asaptrain.config.io import apply_overrides
from asaptrain.train.nets import generator_in_channels
from asaptrain.config.presets import SMOKE_PRESETS, get_preset
from asaptrain.data.store import Store
from asaptrain.train.gan import NonFiniteLoss
from asaptrain.train.loop import build_state, lr_lambda, train_loop
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import from_bytes, to_bytes

CPU = torch.device("cpu")


def tensors(cfg, n=None, poison=False):
    """Random (x, y) batches of the config's shape; the loop's batch dict carries them as is."""
    g = torch.Generator().manual_seed(0)
    c, h, w = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width
    b = cfg.train.batch_size
    for _ in itertools.count() if n is None else range(n):
        x = torch.rand(b, c, h, w, generator=g) * 2 - 1
        y = torch.rand(b, 3, h, w, generator=g) * 2 - 1
        if poison:
            y[0, 0, 0, 0] = float("nan")
        yield {"x": x, "y": y}


def passthrough(batch, cfg, strength, generator):
    return batch["x"], batch["y"]


def smoke(name, *extra):
    return apply_overrides(get_preset(name), ["train.steps=4", "train.log_every=2", "train.checkpoint_every=2",
                                              "eval.every=2", *extra])


@pytest.mark.parametrize("name", SMOKE_PRESETS)
def test_every_smoke_preset_trains_and_reports(name):
    cfg = smoke(name)
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg), passthrough, CPU, rep, val=None)
    assert state.step == 4
    assert [m["step"] for m, _ in rep.reports] == [2, 4]
    assert all(has_ckpt for _, has_ckpt in rep.reports)
    metrics = rep.reports[-1][0]
    assert "loss/g" in metrics and "loss/d" in metrics and metrics["lr/g"] > 0
    if cfg.loss.gan == "wgan-gp":
        assert "loss/d_gp" in metrics


class Crash(RuntimeError):
    pass


class CrashAfter(ListReporter):
    """Records like ListReporter, then fails right after the report of ``step`` (a dying worker)."""

    def __init__(self, step):
        super().__init__()
        self.crash_step = step

    def report(self, metrics, state):
        super().report(metrics, state)
        if metrics["step"] == self.crash_step:
            raise Crash(f"worker died after step {self.crash_step}")


def test_resume_from_checkpoint_equals_uninterrupted_run():
    cfg = smoke("hybrid-smoke", "train.steps=6", "data.crop_height=32", "data.crop_width=32", "train.batch_size=2")
    full = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter())
    batches = tensors(cfg)
    rep = CrashAfter(4)
    with pytest.raises(Crash):
        train_loop(cfg, batches, passthrough, CPU, rep)
    state = from_bytes(to_bytes(rep.last_state))  # the bytes a checkpoint holds, loaded weights_only
    assert state["step"] == 4
    resumed = train_loop(cfg, batches, passthrough, CPU, ListReporter(), checkpoint=state)
    assert resumed.step == 6
    assert resumed.blur_schedule.state_dict() == full.blur_schedule.state_dict()
    for a, b in zip(resumed.generator.parameters(), full.generator.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(resumed.discriminator.parameters(), full.discriminator.parameters()):
        torch.testing.assert_close(a, b)


def test_compile_leaves_a_wgan_gp_discriminator_eager():
    """WGAN-GP's penalty needs a double backward through D, which a compiled graph lacks."""
    compiled = torch._dynamo.eval_frame.OptimizedModule
    wgan = build_state(smoke("deblurgan-smoke", "train.compile=true"), CPU, lambda m: m)
    assert isinstance(wgan.generator, compiled) and not isinstance(wgan.discriminator, compiled)
    hinge = build_state(smoke("asapnet-smoke", "train.compile=true"), CPU, lambda m: m)
    assert isinstance(hinge.generator, compiled) and isinstance(hinge.discriminator, compiled)


def test_compile_wraps_the_ddp_module_not_the_other_way_round():
    """DDP's graph-splitting optimizer only sees a compiled DDP module, so the wrap comes first."""
    compiled = torch._dynamo.eval_frame.OptimizedModule
    wrapped = []
    state = build_state(smoke("asapnet-smoke", "train.compile=true"), CPU, lambda m: wrapped.append(m) or m)
    assert len(wrapped) == 2 and not any(isinstance(m, compiled) for m in wrapped)
    assert state.generator._orig_mod is wrapped[0] and state.discriminator._orig_mod is wrapped[1]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gan_step_reads_the_device_once_per_step_not_once_per_phase(monkeypatch, precision):
    """The non-finite check must not stall the host on each of the 1 + d_steps phases (nor, in
    fp16, the loss scales' updates)."""
    reads = []
    for name in ("__bool__", "item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(("asaptrain/train/gan.py", "asaptrain/train/objective.py", "asaptrain/train/dist.py",
                                "asaptrain/train/cadence.py", "asaptrain/train/loss_scale.py")):
                reads.append(f"{caller.rsplit('/', 1)[1]}:{sys._getframe(1).f_lineno}")
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # 32x32, two images a batch: what is counted does not depend on the size (fp16 is emulated on a CPU).
    cfg = smoke("deblurgan-smoke", "train.steps=2", "optim.d_steps=5", "train.log_every=10", "train.checkpoint_every=10",
                "eval.every=10", f"train.precision={precision}", "data.crop_height=32", "data.crop_width=32",
                "train.batch_size=2")
    train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter())
    assert len(reads) == 2, f"host reads {reads} over 2 steps of 6 phases"


def test_a_flagged_step_leaves_weights_and_moments_alone():
    """The fused optimizer skips on the device where the flag is set."""
    from asaptrain.train.gan import step_optimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1, fused=True)
    w.grad = torch.ones(3)
    step_optimizer(opt, torch.tensor(1.0))
    assert torch.equal(w.detach(), torch.ones(3)) and all(float(s["step"]) == 0 for s in opt.state.values())
    step_optimizer(opt, torch.tensor(0.0))
    assert (w.detach() < 1).all() and float(opt.state[w]["step"]) == 1
    assert not hasattr(opt, "found_inf")  # the flag lives only for the call


def test_an_unfused_optimizer_is_refused_it_would_apply_a_flagged_step():
    from asaptrain.train.gan import step_optimizer

    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    with pytest.raises(ValueError, match="fused=True"):
        step_optimizer(torch.optim.Adam([w], lr=0.1), torch.tensor(1.0))
    assert torch.equal(w.detach(), torch.ones(3))


def test_grad_scale_divides_the_gradients_as_a_loss_scaler_needs():
    """The hook for an fp16 loss scaler: gradients 1024x too large with grad_scale 1024 step as unscaled."""
    from asaptrain.train.gan import step_optimizer

    torch.manual_seed(0)
    grad = torch.randn(5)
    steps = []
    for scale in (None, 1024.0):
        w = torch.nn.Parameter(torch.ones(5))
        opt = torch.optim.Adam([w], lr=0.1, fused=True)
        for _ in range(3):
            w.grad = grad * (scale or 1.0)
            step_optimizer(opt, torch.tensor(0.0), None if scale is None else torch.tensor(scale))
        steps.append(w.detach().clone())
    torch.testing.assert_close(steps[0], steps[1])


def test_a_checkpoint_from_unfused_optimizers_loads_into_fused_ones():
    """Optimizer state saved with fused off (before the optimizers were fused) still skips on the device."""
    cfg = smoke("deblurgan-smoke", "train.steps=2", "optim.d_steps=1")
    rep = ListReporter()
    train_loop(cfg, tensors(cfg), passthrough, CPU, rep)
    saved = from_bytes(to_bytes(rep.last_state))
    for key in ("g_opt", "d_opt"):
        for group in saved[key]["param_groups"]:
            group["fused"] = None
    state = build_state(cfg, CPU, lambda m: m)
    state.load_state_dict(saved)
    assert all(g["fused"] for opt in (state.g_opt, state.d_opt) for g in opt.param_groups)
    resumed = train_loop(apply_overrides(cfg, ["train.steps=3"]), tensors(cfg), passthrough, CPU, ListReporter(),
                         checkpoint=saved)
    assert resumed.step == 3


def test_timing_json_splits_the_timed_steps_into_data_wait_forward_backward_optimizer(tmp_path):
    cfg = smoke("deblurgan-smoke", "train.steps=3", "train.log_every=1", "optim.d_steps=1")
    run = RunFiles(Store.open(str(tmp_path)), "timed")
    train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter(), run=run)
    ms = run.dir.read_json("timing.json")["step_ms"]
    assert list(ms) == ["data_wait", "forward", "backward", "optimizer", "total"]
    assert all(ms[k] > 0 for k in ("forward", "backward", "optimizer"))
    assert ms["total"] == pytest.approx(sum(v for k, v in ms.items() if k != "total"))


def test_lr_schedule_constant_then_linear_to_zero():
    f = lr_lambda(100, 0.5)
    assert f(0) == 1 and f(49) == 1 and f(50) == 1 and abs(f(75) - 0.5) < 1e-9 and f(100) == 0


def test_nonfinite_loss_stops_and_names_the_step():
    cfg = smoke("deblurgan-smoke")
    with pytest.raises(NonFiniteLoss) as err:
        train_loop(cfg, tensors(cfg, poison=True), passthrough, CPU, ListReporter())
    assert "step 1" in str(err.value) and "train.nonfinite=skip" in str(err.value)


def test_nonfinite_loss_skip_leaves_weights_untouched():
    cfg = smoke("deblurgan-smoke", "train.nonfinite=skip", "train.steps=2", "optim.d_steps=1")
    torch.manual_seed(cfg.train.seed)
    from asaptrain.train.nets import build_generator

    before = [p.clone() for p in build_generator(cfg).parameters()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train_loop(cfg, tensors(cfg, poison=True), passthrough, CPU, ListReporter())
    assert state.step == 2
    for a, b in zip(before, state.generator.parameters()):
        assert torch.equal(a, b.detach())
    # Adam's moments and step count stay as they were, and no scheduler-order warning is raised.
    for opt in (state.g_opt, state.d_opt):
        for s in opt.state.values():
            assert float(s["step"]) == 0 and not s["exp_avg"].any()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def _forward_backward(cfg, G, D, x, y, memory_format=torch.contiguous_format):
    """G's output, D's logits and every parameter's gradient of one loss, before any optimizer step."""
    G = G.to(memory_format=memory_format)
    D = D.to(memory_format=memory_format)
    x, y = x.contiguous(memory_format=memory_format), y.contiguous(memory_format=memory_format)
    out = G(x)
    logits = [scale[-1] for scale in D(out, x if cfg.model.d_conditional else None)]
    loss = (out - y).abs().mean() + sum(lg.mean() for lg in logits)
    loss.backward()
    values = {"G(x)": out.detach(), **{f"D logits {i}": lg.detach() for i, lg in enumerate(logits)}}
    for prefix, net in (("G.", G), ("D.", D)):
        values.update({prefix + k: p.grad for k, p in net.named_parameters() if p.grad is not None})
    return values


@pytest.mark.parametrize("name", ["hybrid-smoke", "deblurgan-smoke"])
def test_channels_last_changes_outputs_and_gradients_by_fp32_rounding_only(name):
    """channels_last reorders fp32 sums, nothing more. Adam's first steps turn that noise into
    lr-sized steps, so weights after training are not compared; outputs and gradients before any
    step are. The bound is derived, not tuned to one CPU: the same forward and backward in float64
    is the reference, the contiguous fp32 run's own distance from it measures fp32 rounding on this
    CPU's kernels, and channels_last (another summation order) may be a small factor further."""
    from asaptrain.train.nets import build_discriminator, build_generator
    cfg = smoke(name)
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    batch = next(tensors(cfg))
    import copy
    ref = _forward_backward(cfg, copy.deepcopy(G).double(), copy.deepcopy(D).double(),
                            batch["x"].double(), batch["y"].double())
    plain = _forward_backward(cfg, copy.deepcopy(G), copy.deepcopy(D), batch["x"], batch["y"])
    cl = _forward_backward(cfg, copy.deepcopy(G), copy.deepcopy(D), batch["x"], batch["y"], torch.channels_last)
    assert set(ref) == set(plain) == set(cl) and len(ref) > 10
    eps = torch.finfo(torch.float32).eps
    net_scale = {net: max(v.abs().max().item() for k, v in ref.items() if k.startswith(net)) for net in ("G", "D")}
    for k, exact in ref.items():
        scale = exact.abs().max().item()
        rounding = (plain[k].double() - exact).abs().max().item()
        err = (cl[k].double() - exact).abs().max().item()
        # 8x: another blocking of the same sums (a max over all elements); 16 ulp of the tensor's
        # largest value, and one ulp of its network's largest: floors for tensors the contiguous
        # kernels compute almost exactly, or that are rounding noise (a bias before instance norm)
        bound = 8 * rounding + 16 * eps * scale + eps * net_scale[k[0]]
        assert err <= bound, f"{k}: channels_last off by {err:.3g} (bound {bound:.3g}, fp32 rounding {rounding:.3g})"


def test_channels_last_and_bf16_train_as_switches():
    """Both switches run the whole loop with finite losses (their numerics are checked above)."""
    cfg = smoke("hybrid-smoke", "train.steps=2", "optim.d_steps=1")
    for switch in ("train.channels_last=true", "train.precision=bf16"):
        rep = ListReporter()
        state = train_loop(apply_overrides(cfg, [switch]), tensors(cfg), passthrough, CPU, rep)
        assert state.step == 2 and all(torch.isfinite(torch.tensor(v)) for k, v in rep.reports[-1][0].items()
                                       if k.startswith("loss/")), switch


def test_generator_ema_is_kept_checkpointed_and_used_for_evaluation():
    cfg = smoke("deblurgan-smoke", "optim.ema_decay=0.5", "train.steps=2", "optim.d_steps=1")
    rep = ListReporter()
    state = train_loop(cfg, tensors(cfg), passthrough, CPU, rep)
    assert state.ema is not None and state.inference_generator() is state.ema
    ema, live = dict(state.ema.named_parameters()), dict(state.generator.named_parameters())
    assert any(not torch.equal(ema[k], live[k]) for k in live)  # an average, not a copy
    saved = from_bytes(to_bytes(rep.last_state))
    assert saved["ema"] is not None and set(saved["ema"]) == set(state.ema.state_dict())


def test_ema_generator_stays_in_eval_mode_after_the_runs_timing(tmp_path):
    """The closing inference timing must not leave the EMA copy (dropout, norms) in training mode."""
    cfg = smoke("deblurgan-smoke", "optim.ema_decay=0.5", "train.steps=2", "optim.d_steps=1", "model.dropout=0.5")
    run = RunFiles(Store.open(str(tmp_path)), "ema")
    state = train_loop(cfg, tensors(cfg), passthrough, CPU, ListReporter(), run=run)
    assert run.dir.exists("timing.json")
    assert not state.ema.training and not any(m.training for m in state.ema.modules())
    assert state.generator.training
