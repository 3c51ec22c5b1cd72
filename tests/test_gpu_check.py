"""The GPU check script's CPU rehearsal: every stage of ``bench/gpu.sh`` runs (tiny sizes, few
steps, on the CPU) with the packages the GPU machine lacks hidden, and writes its JSON.

A stage that would crash or hang there for a reason a CPU can show (a missing import, a wrong
option, a file it expects and does not get) fails here instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("setup", "correct", "models-1024", "models-512", "models-720", "models-compile", "compare-256", "train",
            "ray", "predict")


def _gpu_image_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'bench' / 'gpu_image'}:{ROOT}"}


def test_import_blocker_hides_what_the_gpu_machine_lacks():
    code = ("import importlib.metadata as m, importlib.util as u\n"
            "try:\n    import boto3\nexcept ModuleNotFoundError as e:\n    print('blocked', 'GPU machine' in str(e))\n"
            "print(u.find_spec('torch') is not None)\n"
            "try:\n    m.version('torch-fidelity')\nexcept m.PackageNotFoundError:\n    print('no metadata')\n")
    out = subprocess.run([sys.executable, "-c", code], env=_gpu_image_env(), capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[:3] == ["blocked True", "True", "no metadata"], out.stdout + out.stderr


def test_local_store_commands_run_without_boto3(tmp_path):
    """A local store needs no boto3 (the GPU machine has none), also where a file is missing."""
    proc = subprocess.run([sys.executable, "-m", "asaptrain", "data", "synth", "--kind", "photos", "--count", "2",
                           "--val-count", "1", "--size", "32x32", "--out", str(tmp_path / "photos")],
                          env=_gpu_image_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "photos" / "manifest.json").is_file()


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_stage_and_writes_its_json(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET_S": "0"}  # optional stages: skipped
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python3: this venv's
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", "bench/gpu.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    stages = {r["stage"]: r for r in map(json.loads, (out / "stages.jsonl").read_text().splitlines())}
    failed = {n: (r["status"], (out / f"{n}.log").read_text()[-1500:] if (out / f"{n}.log").exists() else "")
              for n, r in stages.items() if n in REQUIRED and r["status"] != "ok"}
    assert not failed, failed
    assert set(REQUIRED) <= set(stages), proc.stdout[-3000:]
    for name in REQUIRED:
        assert stages[name]["json"] and (out / f"{name}.json").stat().st_size > 2, name
    assert stages["sweep"]["status"] == stages["smoke"]["status"] == "skipped"
    correct = json.loads((out / "correct.json").read_text())
    assert correct["kernel"] and all("max_abs_error" in r for r in correct["kernel"])
    assert [r["dtype"] for r in correct["layouts"]] == ["fp32", "bf16"]
    assert all(r["rows_ms"] > 0 and r["planes_ms"] > 0 and r["max_abs_error"] < 0.1 for r in correct["layouts"])
    assert len(correct["train"]) == 4 and all(r["finite"] and r["error"] is None for r in correct["train"])
    assert json.loads((out / "ray.json").read_text())["data_wait_share"] is not None
    summary = (out / "summary.txt").read_text()
    assert all(name in summary for name in REQUIRED) and "device: cpu" in summary
