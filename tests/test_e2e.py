"""End to end, as a user runs it: the README's main command (`asaptrain smoke`) at its smallest
settings, run once; the study, then each of its four Ray Train runs, checked in full. (`asaptrain
submit` to a cluster, then `asaptrain aggregate`: test_multinode.py.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from asaptrain.config.presets import SMOKE_PRESETS, get_preset
from asaptrain.data.store import Store
from asaptrain.train.run_files import RunFiles

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SmokeStudy:
    """What :func:`smoke_study` ran and where."""

    store: Path
    """The study's local store: datasets, runs, sweeps, reports."""
    result: subprocess.CompletedProcess
    """The command's exit status and output."""
    steps: int
    """Training steps of every run."""

    def run_of(self, preset: str) -> str:
        """The name of the study's run of ``preset`` (its ``run.json`` names the preset)."""
        names = [p.name for p in (self.store / "runs").iterdir()
                 if json.loads((p / "run.json").read_text()).get("preset") == preset]
        assert len(names) == 1, (preset, names)
        return names[0]


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory) -> SmokeStudy:
    """``asaptrain smoke`` run once for this module, as a user runs it (its own process, its own
    local Ray): four smoke presets trained on two CPU workers each, the hybrid's sweep (one trial:
    the search itself is tested in test_tune.py), the report."""
    steps = 4
    store = tmp_path_factory.mktemp("smoke-study") / "store"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run([str(Path(sys.executable).with_name("asaptrain")), "smoke", "--store", str(store),
                             "--steps", str(steps), "--trials", "1", "--no-progress"],
                            capture_output=True, text=True, timeout=1500, cwd=ROOT, env=env)
    return SmokeStudy(store, result, steps)


def test_readme_main_command_smoke(smoke_study):
    """`asaptrain smoke` with the smallest settings that still run every step (its four runs are
    checked one by one below)."""
    res, store = smoke_study.result, smoke_study.store
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    # Every model has a row in the tables, run or not: each row must name its trained run.
    report = json.loads((store / "reports" / "report.json").read_text())
    rows = {r["model"]: r for task in report["tasks"].values() for r in task["rows"]}
    for model in ("asapnet", "pix2pixhd", "deblurgan", "hybrid"):
        assert rows[model]["run"] and rows[model]["psnr"] is not None, rows[model]
        assert rows[model]["run"] in (store / "reports" / "report.md").read_text()
    # One sweep, and no sweeps/references: its DeblurGAN reference is the study's own DeblurGAN run
    # (DeblurGAN trained once).
    sweeps = list((store / "sweeps").iterdir())
    assert len(sweeps) == 1 and (sweeps[0] / "best.toml").exists(), sweeps
    reference = json.loads((sweeps[0] / "sweep.json").read_text())["reference"]
    assert reference["reused"] and reference["run"] == rows["deblurgan"]["run"], reference
    assert "report:" in res.stdout


def cfg_width(preset: str) -> int:
    return get_preset(preset).data.crop_width


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_smoke_preset_trains_on_two_workers(preset, smoke_study, tmp_path):
    """Each smoke preset's run of `asaptrain smoke` under Ray Train (two CPU workers, gloo DDP): every
    file a finished run must have, in full."""
    assert smoke_study.result.returncode == 0, smoke_study.result.stdout[-3000:] + smoke_study.result.stderr[-3000:]
    steps = smoke_study.steps
    files = RunFiles(Store.open(str(smoke_study.store)), smoke_study.run_of(preset))
    run = files.read_run()
    assert run["status"] == "finished" and run["steps_done"] == steps and run["world_size"] == 2
    timing = files.dir.read_json("timing.json")
    # DDP kept both replicas identical: the same weight fingerprint on rank 0 and rank 1.
    assert len(timing["replica_checksums"]) == 2
    assert timing["replica_checksums"][0] == pytest.approx(timing["replica_checksums"][1], rel=0, abs=1e-9)
    assert timing["images_per_s"] > 0 and timing["world_size"] == 2 and timing["inference"][0]["ms"] > 0
    records = files.read_metrics()
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, steps + 1))  # log_every 1
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, steps // 2, steps] and all(r["psnr"] > 0 and 0 < r["ssim"] <= 1
                                                                        for r in evals)
    assert evals[-1]["fid"] is None and evals[-1]["fid_reason"]
    if preset.startswith(("deblurgan", "hybrid")):
        assert evals[-1]["input_psnr"] is not None
    assert "[model]" in files.dir.read_text("config.toml")
    samples = files.dir.list("samples")
    assert samples, "no sample grid written"
    with Image.open(io.BytesIO(files.dir.read_bytes(samples[-1]))) as im:
        assert im.size[0] > cfg_width(preset) and im.size[1] > 3 * 64  # 3 rows: input, output, target
    assert any(p.startswith("checkpoint_") for p in files.dir.list(""))
    if preset in ("deblurgan-smoke", "asapnet-smoke"):
        check_infer(files, preset, tmp_path)


def check_infer(files: RunFiles, preset: str, tmp_path) -> None:
    """`asaptrain infer` on an odd-sized input, forced through several blended tiles."""
    import numpy as np
    from click.testing import CliRunner

    from asaptrain.cli import main

    src = tmp_path / "input.png"
    rng = np.random.default_rng(0)
    if preset.startswith("asapnet"):
        Image.fromarray(rng.integers(0, 34, (70, 150), dtype=np.uint8), mode="L").save(src)
    else:
        Image.fromarray(rng.integers(0, 255, (70, 150, 3), dtype=np.uint8)).save(src)
    res = CliRunner().invoke(main, ["infer", "--run", files.dir.uri, str(src), "--out", str(tmp_path / "out"),
                                    "--tile", "64", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "out" / "input.png") as out:
        assert out.size == (150, 70) and out.mode == "RGB"
