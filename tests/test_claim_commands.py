"""Two commands into one place, started together the way a user starts them (two processes).

Two `asaptrain train --name dup`: exactly one trains, the other is refused before it joins Ray,
naming the first (its pid and host); the run holds one command's files only. Two `asaptrain
predict --out` into one S3 prefix on the loopback endpoint: likewise. Both processes join this
process's Ray (RAY_ADDRESS), as two users' commands join one cluster.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import asaptrain
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.train.loop import train_loop
from reporting import ListReporter
from asaptrain.train.nets import generator_in_channels
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

pytestmark = pytest.mark.slow
RAY_SHARED = True  # conftest.ray_cluster: the commands join it and kill nothing of it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(asaptrain.__file__)))  # the package under test
CLAIM_FILE = "_claim.json"  # asaptrain.data.claim.CLAIM_FILE, spelled out so that this runs on any version


def _env(ray_cluster) -> dict[str, str]:
    return dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address,
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _together(argv: list[str], ray_cluster, timeout_s: float = 600) -> list[tuple[int, int, str]]:
    """Start two identical commands at once; (pid, exit code, output) of each."""
    env = _env(ray_cluster)
    procs = [subprocess.Popen([sys.executable, "-m", "asaptrain", *argv], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    for p, out in zip(procs, outs):
        print(f"$ asaptrain {' '.join(argv)}\n[pid {p.pid}, exit {p.returncode}]\n{out[-1500:]}")
    return [(p.pid, p.returncode, out) for p, out in zip(procs, outs)]


def _one_proceeds(results, command: str) -> tuple[int, str]:
    codes = sorted(code for _, code, _ in results)
    assert codes == [0, 2], [(code, out[-800:]) for _, code, out in results]
    winner = next(pid for pid, code, _ in results if code == 0)
    refused = next(out for _, code, out in results if code == 2)
    assert f"in use by `asaptrain {command}` (pid {winner} on host {socket.gethostname()}" in refused, refused
    assert "Traceback" not in refused
    return winner, refused


def test_two_trains_with_one_name(tmp_path, ray_cluster):
    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    argv = ["train", "--preset", "deblurgan-smoke", "--name", "dup", "--store", store.uri, "--steps", "2",
            "--workers", "1", "--no-progress", "--set", "scaling.resources_per_worker={CPU = 0.5}",
            "--set", "scaling.use_gpu=false", "--set", "train.log_every=1", "--set", "train.checkpoint_every=2",
            "--set", "eval.every=2", "--set", "train.sample_every=2"]
    _one_proceeds(_together(argv, ray_cluster), "train")
    files = RunFiles(store, "dup")
    assert files.read_run()["status"] == "finished"
    steps = [json.loads(line)["step"] for line in files.dir.read_text("metrics.jsonl").splitlines()
             if '"step"' in line and "loss/g" in line]
    assert steps == sorted(set(steps)), steps  # one writer: no step twice
    assert not files.dir.exists(CLAIM_FILE)  # released at the end


def _make_run(store: Store) -> Store:
    cfg = apply_overrides(get_preset("deblurgan-smoke"), ["train.steps=1", "train.batch_size=2", "train.log_every=1",
                                                         "train.checkpoint_every=1", "optim.ema_decay=0.5"])
    g = torch.Generator().manual_seed(0)
    c, h, w = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width
    batches = iter([{"x": torch.rand(2, c, h, w, generator=g) * 2 - 1, "y": torch.rand(2, 3, h, w, generator=g) * 2 - 1}])
    rep = ListReporter()
    train_loop(cfg, batches, lambda b, *_: (b["x"], b["y"]), torch.device("cpu"), rep)
    files = RunFiles(store, "r")
    files.write_config(cfg)
    files.dir.write_bytes("checkpoint_000001/state.pt", to_bytes(rep.last_state))
    return files.dir


def test_two_predicts_into_one_s3_prefix(tmp_path, s3_endpoint, s3_bucket, ray_cluster):
    run = _make_run(Store.open(str(tmp_path / "store")))
    images = tmp_path / "blurry"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        (images / f"img{i}.png").write_bytes(buf.getvalue())
    out = f"s3://{s3_bucket}/sharp"
    argv = ["predict", "--run", run.uri_for(), "--images", str(images), "--out", out, "--s3-endpoint", s3_endpoint]
    winner, _ = _one_proceeds(_together(argv, ray_cluster), "predict")
    store = Store.open(out, s3_endpoint=s3_endpoint)
    manifest = store.read_json("predictions.json")
    assert manifest["counts"]["written"] == 6 and manifest["counts"]["bad"] == 0
    assert sorted(store.list(suffix=".png")) == [f"img{i}.png" for i in range(6)]
    assert not store.exists(CLAIM_FILE)
