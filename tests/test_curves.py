"""Live curves: a training run writes TensorBoard event files into its run directory, local or
S3, that TensorBoard's own reader loads (losses, images/s, learning rates, blur, eval, samples)."""

from __future__ import annotations

import itertools

import pytest
import torch
from reporting import ListReporter

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.train.curves import TensorBoardSink, scalars
from asaptrain.train.loop import train_loop
from asaptrain.train.nets import generator_in_channels
from asaptrain.train.run_files import RunFiles

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

CPU = torch.device("cpu")


def batches(cfg):
    g = torch.Generator().manual_seed(0)
    c, h, w, b = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width, cfg.train.batch_size
    for _ in itertools.count():
        yield {"x": torch.rand(b, c, h, w, generator=g) * 2 - 1, "y": torch.rand(b, 3, h, w, generator=g) * 2 - 1}


def passthrough(batch, cfg, strength, generator):
    return batch["x"], batch["y"]


def smoke(*extra):
    return apply_overrides(get_preset("deblurgan-smoke"), [
        "train.steps=4", "train.log_every=2", "train.checkpoint_every=2", "eval.every=2", "train.sample_every=2",
        "eval.images=2", "eval.batch_size=2", *extra])


class KeepStates(ListReporter):
    """Keeps every checkpoint's state by step (to resume from an earlier one)."""

    def __init__(self):
        super().__init__()
        self.states = {}

    def report(self, metrics, state):
        super().report(metrics, state)
        if state is not None:
            self.states[metrics["step"]] = state


def train(cfg, files, checkpoint=None):
    files.attach(TensorBoardSink(files.dir))
    val = next(batches(apply_overrides(cfg, ["train.batch_size=2"])))
    rep = KeepStates()
    train_loop(cfg, batches(cfg), passthrough, CPU, rep, run=files, val=(val["x"], val["y"]), checkpoint=checkpoint)
    return rep


def load_events(path: str):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def assert_curves(acc, steps=(2, 4)):
    tags = acc.Tags()
    for tag in ("loss/g", "loss/d", "images_per_s", "lr/g", "lr/d", "blur_strength", "val/psnr", "val/ssim"):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/g")] == list(steps)
    assert all(e.value > 0 for e in acc.Scalars("images_per_s"))
    assert [e.step for e in acc.Scalars("val/psnr")] == [0, *steps]  # eval at the start too
    assert "samples" in tags["images"]


def test_scalars_name_train_and_eval_values_apart():
    step, values = scalars({"step": 3, "kind": "eval", "psnr": 21.5, "fid": None, "fid_reason": "off",
                            "ssim": float("nan")})
    assert (step, values) == (3, {"val/psnr": 21.5})
    assert scalars({"step": 2, "kind": "train", "loss/g": 1.0, "skipped": False})[1] == {"loss/g": 1.0, "skipped": 0.0}


def test_local_run_writes_event_files_tensorboard_reads(tmp_path):
    files = RunFiles(Store.open(str(tmp_path / "store")), "run")
    train(smoke(), files)
    assert any(n.startswith("events.out.tfevents.") for n in files.dir.list(""))
    assert_curves(load_events(str(tmp_path / "store" / "runs" / "run")))
    # `tensorboard --logdir STORE/runs` lists the run under its own name.
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    logdir = EventMultiplexer()
    logdir.AddRunsFromDirectory(str(tmp_path / "store" / "runs"))
    logdir.Reload()
    assert list(logdir.Runs()) == ["run"]


def test_resumed_run_shows_each_step_once(tmp_path):
    cfg = smoke()
    store = Store.open(str(tmp_path / "store"))
    first = train(cfg, RunFiles(store, "run"))
    # The worker group restarts from the step-2 checkpoint: steps 3-4 are trained again.
    train(cfg, RunFiles(store, "run"), checkpoint=first.states[2])
    assert len([n for n in store.child("runs", "run").list("") if "tfevents" in n]) == 2
    acc = load_events(str(tmp_path / "store" / "runs" / "run"))
    assert [e.step for e in acc.Scalars("loss/g")] == [2, 4]


def test_s3_run_uploads_event_files_tensorboard_reads_from_s3(s3_endpoint, s3_bucket, monkeypatch):
    files = RunFiles(Store.open(f"s3://{s3_bucket}/exp", s3_endpoint), "run")
    train(smoke(), files)
    names = [n for n in files.dir.list("") if n.startswith("events.out.tfevents.")]
    assert len(names) == 1
    # TensorBoard reads s3:// itself through boto3, which takes the endpoint from the
    # environment (what `AWS_ENDPOINT_URL=... tensorboard --logdir s3://...` does).
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    assert_curves(load_events(f"s3://{s3_bucket}/exp/runs/run"))
