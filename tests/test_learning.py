"""Training really learns: a smoke deblurring run beats its blurred input on validation."""

from __future__ import annotations

import json

import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.config.presets import get_preset
from asaptrain.train.launch import fit
from asaptrain.train.run_files import RunFiles

pytestmark = pytest.mark.slow


def test_hybrid_smoke_deblurs_synthetic_photos(tmp_path, ray_cluster):
    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 48, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    # Train at the strength it is validated at, with the adversarial term small next to L1, and
    # decay the learning rate over the second half as the paper recipes do: the last evaluation
    # then reflects what was learned rather than the noise of the last few steps (measured on
    # 2 CPUs: +0.19 to +0.22 dB over 4 runs and 3 seeds; without the decay +0.09 to +0.18).
    cfg = apply_overrides(get_preset("hybrid-smoke"), [
        f"storage.store={json.dumps(store.uri)}", "train.steps=200", "train.log_every=50", "eval.every=50",
        "train.checkpoint_every=200", "train.sample_every=200", "curriculum.kind=fixed", "curriculum.start=0.5",
        "eval.blur_strength=0.5", "optim.g_lr=1e-3", "optim.d_lr=5e-4", "optim.decay_start=0.5", "loss.gan_weight=0.1",
        "scaling.num_workers=1", "scaling.use_gpu=false", "scaling.resources_per_worker={CPU = 1}",
    ])
    result = fit(cfg, name="learns", progress=False)
    assert result.status == "finished", result.error
    evals = [r for r in RunFiles(store, "learns").read_metrics() if r["kind"] == "eval"]
    first, last = evals[0], evals[-1]
    assert abs(first["psnr"] - first["input_psnr"]) < 0.1  # residual hybrid starts at the identity
    gain = last["psnr"] - last["input_psnr"]
    assert gain > 0.1, f"validation PSNR {last['psnr']:.3f} dB vs blurred input {last['input_psnr']:.3f} dB"
    assert last["ssim"] > last["input_ssim"]
