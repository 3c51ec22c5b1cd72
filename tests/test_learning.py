"""Training really learns: a smoke deblurring run beats its blurred input on validation.

The loop, the data pipeline and the run's files are the ones a Ray Train worker uses (Ray Data
reads and decodes the shards, ``to_model_batch`` blurs on the device, rank 0 writes
``metrics.jsonl``); the loop runs in this process. Ray Train around it (controller, worker
group, checkpoints through Ray) is tested on short runs in test_e2e.py and test_train_ray.py:
150 steps under it would add its start-up and one Ray worker's single thread, not a finding.
"""

from __future__ import annotations

import json

import pytest
import torch
from reporting import ListReporter

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.pipeline import TrainBatches, to_model_batch, train_dataset, validation_set
from asaptrain.data.store import Store, resolve_dataset
from asaptrain.data.synth import synth_plan
from asaptrain.train.loop import train_loop
from asaptrain.train.run_files import RunFiles

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

pytestmark = pytest.mark.slow


def test_hybrid_smoke_deblurs_synthetic_photos(tmp_path, ray_cluster):
    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 48, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    # Train at the strength it is validated at, with the adversarial term small next to L1, and
    # decay the learning rate over the second half as the paper recipes do: the last evaluation
    # then reflects what was learned rather than the noise of the last few steps. Measured on
    # 2 CPUs (Intel Xeon), last evaluation over the blurred input for train.seed 0, 1 and 2:
    # +0.33, +0.20 and +0.28 dB after these 150 steps; +0.35, +0.36 and +0.42 dB after 200;
    # after 100, +0.32, +0.09 and +0.14 (one seed under the 0.1 dB asked below), so not fewer.
    cfg = apply_overrides(get_preset("hybrid-smoke"), [
        f"storage.store={json.dumps(store.uri)}", "train.steps=150", "train.log_every=50", "eval.every=50",
        "train.checkpoint_every=150", "train.sample_every=150", "curriculum.kind=fixed", "curriculum.start=0.5",
        "eval.blur_strength=0.5", "optim.g_lr=1e-3", "optim.d_lr=5e-4", "optim.decay_start=0.5", "loss.gan_weight=0.1",
    ])
    cpu, files = torch.device("cpu"), RunFiles(store, "learns")
    files.write_config(cfg)
    batches = TrainBatches(train_dataset(cfg, store), cfg, cpu, cfg.train.batch_size,
                           ds_store=resolve_dataset(cfg.data.dataset, store))
    reporter = ListReporter()
    state = train_loop(cfg, iter(batches), to_model_batch, cpu, reporter, run=files, val=validation_set(cfg, store, cpu),
                       weights_store=store)
    assert state.step == 150 and reporter.last_state is not None
    assert batches.epoch >= 10  # 150 batches of 4 from 48 images: the pipeline went round epoch after epoch
    evals = files.read_metrics().evals()
    assert [r["step"] for r in evals] == [0, 50, 100, 150]
    first, last = evals[0], evals[-1]
    assert abs(first["psnr"] - first["input_psnr"]) < 0.1  # residual hybrid starts at the identity
    gain = last["psnr"] - last["input_psnr"]
    assert gain > 0.1, f"validation PSNR {last['psnr']:.3f} dB vs blurred input {last['input_psnr']:.3f} dB"
    assert last["ssim"] > last["input_ssim"]
