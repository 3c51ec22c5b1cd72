"""The training step's memory estimate, checked against a measured step; activation checkpointing."""

from __future__ import annotations

import copy
import json
import resource

import pytest
import torch
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.models import set_activation_checkpointing
from asaptrain.train.memory import MARGIN, DoesNotFit, check_fits, estimate_step_memory
from asaptrain.train.nets import build_generator, generator_in_channels

SIZES = {"asapnet-smoke": (64, 128), "pix2pixhd-smoke": (64, 128), "deblurgan-smoke": (64, 64),
         "hybrid-smoke": (64, 64)}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", sorted(SIZES))
def test_estimate_is_within_15_percent_of_a_measured_step(name):
    """The estimate allocates nothing; the measurement runs the same two steps on real CPU tensors
    and counts the live storages. Both include the perceptual network, Adam's moments, WGAN-GP's
    interpolates where the preset has them."""
    cfg = get_preset(name)
    h, w = SIZES[name]
    rss_before = _rss_mib()
    est = estimate_step_memory(cfg, 2, h, w)
    rss_after_estimate = _rss_mib()
    measured = estimate_step_memory(cfg, 2, h, w, measure=True)
    print(f"{name} {h}x{w} batch 2: estimate {est.peak_bytes / 2**20:.1f} MiB, measured "
          f"{measured.peak_bytes / 2**20:.1f} MiB; process peak RSS {rss_before:.0f} -> {rss_after_estimate:.0f} "
          f"(estimate) -> {_rss_mib():.0f} MiB (measured step)")
    assert abs(est.peak_bytes - measured.peak_bytes) <= 0.15 * measured.peak_bytes
    assert est.parts["optimizer"] == 2 * est.parts["gradients"]  # Adam: two moments per trainable weight
    assert est.parts["activations_and_temporaries"] > 0


def test_the_perceptual_network_is_counted_in_the_estimate_and_the_measurement():
    """A preset with a VGG19 perceptual loss (every full preset has one): its features' weights are
    in both, and the estimate stays within 15 % of the measured step."""
    base = apply_overrides(get_preset("deblurgan-smoke"), ["loss.perceptual=none"])
    cfg = apply_overrides(base, ["loss.perceptual=vgg19-conv3_3", "loss.perceptual_weight=100"])
    est, without = estimate_step_memory(cfg, 2, 32, 32), estimate_step_memory(base, 2, 32, 32)
    vgg_conv3_3_bytes = 4 * sum(o * i * 9 + o for i, o in ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256),
                                                           (256, 256), (256, 256)))  # conv1_1 .. conv3_3
    assert est.parts["weights"] - without.parts["weights"] >= vgg_conv3_3_bytes
    measured = estimate_step_memory(cfg, 2, 32, 32, measure=True)
    assert abs(est.peak_bytes - measured.peak_bytes) <= 0.15 * measured.peak_bytes


def test_a_run_that_holds_its_global_generator_first_is_estimated_at_its_later_peak():
    """``train.fix_global_steps``: Adam holds no moments for the global generator in the first
    steps; the estimate is of the steps after, with every weight's two moments."""
    cfg = apply_overrides(get_preset("pix2pixhd-smoke"), ["model.local_enhancers=1", "train.fix_global_steps=5"])
    est = estimate_step_memory(cfg, 1, 64, 128)
    assert est.parts["optimizer"] == 2 * est.parts["gradients"] > 0


def test_estimate_grows_with_the_batch_and_counts_ddp_buckets_and_ema():
    cfg = get_preset("deblurgan-smoke")
    one, four = estimate_step_memory(cfg, 1, 64, 64), estimate_step_memory(cfg, 4, 64, 64)
    assert four.parts["activations_and_temporaries"] > 3 * one.parts["activations_and_temporaries"]
    ddp = estimate_step_memory(apply_overrides(cfg, ["optim.ema_decay=0.999"]), 1, 64, 64, world_size=2)
    assert ddp.parts["ddp_buckets"] == ddp.parts["gradients"] > 0 and ddp.parts["ema"] > 0
    assert ddp.peak_bytes >= one.peak_bytes + ddp.parts["ddp_buckets"] + ddp.parts["ema"]


def test_activation_checkpointing_saves_memory_with_the_same_results():
    """Same output and gradients with recomputation (dropout's random state replayed), less memory."""
    for name, extra in (("deblurgan-smoke", ["model.dropout=0.5"]), ("asapnet-smoke", []),
                        ("pix2pixhd-smoke", ["model.local_enhancers=1"])):
        cfg = apply_overrides(get_preset(name), extra)
        torch.manual_seed(0)
        G = build_generator(cfg).train()
        G_ckpt = copy.deepcopy(G)
        assert set_activation_checkpointing(G_ckpt, True) > 0
        x = torch.rand(2, generator_in_channels(cfg), 64, 128) * 2 - 1
        results = []
        for net in (G, G_ckpt):
            torch.manual_seed(1)
            out = net(x)
            out.square().mean().backward()
            results.append((out.detach(), [p.grad for p in net.parameters()]))
        torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
        for a, b in zip(results[0][1], results[1][1]):
            torch.testing.assert_close(a, b)  # the same ops again: equal up to summation order
        plain = estimate_step_memory(cfg, 2, 64, 128)
        ckpt = estimate_step_memory(apply_overrides(cfg, ["train.activation_checkpointing=true"]), 2, 64, 128)
        assert ckpt.peak_bytes < plain.peak_bytes, name


def test_a_run_that_does_not_fit_is_refused_naming_settings_that_fit(capsys):
    cfg = apply_overrides(get_preset("pix2pixhd-smoke"), ["train.batch_size=8", "data.crop_height=64",
                                                         "data.crop_width=128"])
    est = estimate_step_memory(cfg, 8, 64, 128)
    small = int(est.peak_bytes / MARGIN * 0.6)  # the full batch does not fit, a quarter of it does
    with pytest.raises(DoesNotFit) as err:
        check_fits(cfg, small, "a test GPU")
    text = str(err.value)
    assert "a test GPU" in text and "--set train.batch_size=" in text and "train.memory_check=warn" in text
    fits = [part for part in text.split("--set ")[1:] if part.startswith("train.batch_size=")]
    batch = int(fits[0].split("=")[1].split()[0].rstrip(".|"))
    assert estimate_step_memory(cfg, batch, 64, 128).peak_bytes <= small * MARGIN < est.peak_bytes
    warned = check_fits(apply_overrides(cfg, ["train.memory_check=warn"]), small, "a test GPU")
    assert warned is not None and "warning" in capsys.readouterr().out
    assert check_fits(apply_overrides(cfg, ["train.memory_check=off"]), small, "a test GPU") is None
    assert check_fits(cfg, est.peak_bytes * 2, "a big GPU").peak_bytes == est.peak_bytes


def test_models_memory_command_prints_the_estimate():
    res = CliRunner().invoke(main, ["models", "memory", "--preset", "hybrid-smoke", "--size", "64x64", "--batch", "2",
                                    "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["batch"] == 2 and out["height"] == 64 and out["peak_bytes"] > sum(
        v for k, v in out["parts"].items() if k in ("weights", "gradients", "optimizer"))
    table = CliRunner().invoke(main, ["models", "memory", "--preset", "hybrid-smoke", "--size", "64x64"])
    assert table.exit_code == 0 and "peak" in table.output
