"""End to end, as a user runs it: a real Ray head on loopback, `asaptrain submit`, `asaptrain
aggregate`, and the README's main command (`asaptrain smoke`) at its smallest settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra})
    return env


@pytest.fixture(scope="module")
def ray_head(ray_start):
    """A Ray head of its own on 127.0.0.1 (`ray start --head`); its dashboard URL."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    return ray_start().dashboard


def _run(args: list[str], timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "asaptrain"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=_env(**env))


def test_submit_train_job_then_aggregate(ray_head, tmp_path):
    from asaptrain.data.convert import convert
    from asaptrain.data.store import Store
    from asaptrain.data.synth import synth_plan

    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    sets = ["--set", "train.checkpoint_every=2", "--set", "eval.every=2", "--set", "train.log_every=1",
            "--set", "scaling.resources_per_worker={CPU = 0.5}", "--set", "scaling.use_gpu=false"]
    res = _run(["submit", "train", "--address", ray_head, "--store", store.uri, "--python", sys.executable,
                "--", "--preset", "deblurgan-smoke", "--name", "submitted", "--steps", "2", "--workers", "1",
                "--no-progress", *sets])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "SUCCEEDED" in res.stdout + res.stderr
    run_dir = store.child("runs", "submitted")
    assert run_dir.read_json("run.json")["status"] == "finished"
    assert [r["step"] for r in map(json.loads, run_dir.read_text("metrics.jsonl").splitlines())
            if r["kind"] == "train"] == [1, 2]
    assert run_dir.exists("timing.json") and run_dir.list("samples")
    out = tmp_path / "report"
    agg = _run(["aggregate", "--store", store.uri, "--out", str(out)])
    assert agg.returncode == 0, agg.stdout[-3000:] + agg.stderr[-3000:]
    assert "submitted" in (out / "report.md").read_text()
    # Every model has a row in the tables, run or not: the submitted run must be in deblurgan's.
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["tasks"]["deblur"]["rows"] if r["model"] == "deblurgan")
    assert row["run"] == "submitted" and row["step"] == 2 and row["psnr"] is not None
    assert [r["name"] for r in report["runs"]] == ["submitted"]


def test_readme_main_command_smoke(tmp_path):
    """`asaptrain smoke` with the smallest settings that still run every step."""
    store = tmp_path / "store"
    res = _run(["smoke", "--store", str(store), "--steps", "2", "--trials", "2", "--no-progress"], timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    # Every model has a row in the tables, run or not: each row must name its trained run.
    report = json.loads((store / "reports" / "report.json").read_text())
    rows = {r["model"]: r for task in report["tasks"].values() for r in task["rows"]}
    for model in ("asapnet", "pix2pixhd", "deblurgan", "hybrid"):
        assert rows[model]["run"] and rows[model]["psnr"] is not None, rows[model]
        assert rows[model]["run"] in (store / "reports" / "report.md").read_text()
    sweeps = [p for p in (store / "sweeps").iterdir() if p.name != "references"]  # the speed references' folder
    assert len(sweeps) == 1 and (sweeps[0] / "best.toml").exists()
    assert "report:" in res.stdout
