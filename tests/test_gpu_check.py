"""The GPU check script's CPU rehearsal: every stage of ``bench/gpu.sh``, required and optional,
runs (tiny sizes, 1-2 steps, on the CPU) with the packages the GPU machine lacks hidden, writes
its JSON, and has its key numbers in ``summary.txt``; and the script's budget table (the required
stages within 6 minutes with set-up) is the one its header states.

A stage that would crash or hang there for a reason a CPU can show (a missing import, a wrong
option, a file it expects and does not get) fails here instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import typing
from pathlib import Path

import pytest

from asaptrain.config.schema import Precision

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("setup", "correct", "import", "compare-256", "compare-720", "models-720", "train", "profile", "ray",
            "evaluate")
OPTIONAL = ("models-1024", "models-512", "models-compile", "predict", "sweep")
SCRIPT = ROOT / "bench" / "gpu.sh"
FIXTURES = json.loads((ROOT / "tests" / "data" / "official" / "fixtures.json").read_text())


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


def _budgets() -> dict[str, tuple[int, str]]:
    """Each stage's GPU budget (s) and kind, as the script runs it (setup included)."""
    script = SCRIPT.read_text()
    budgets = {m[0]: (int(m[1]), m[2]) for m in re.findall(r"^\s*stage (\S+?) (\d+)/\d+ (required|optional)", script,
                                                             re.M)}
    compare = budgets.pop("compare-$tag")  # one line, two stages
    budgets.update({"compare-256": compare, "compare-720": compare})
    budgets["setup"] = (int(re.search(r"^SETUP_BUDGET=(\d+)/\d+", script, re.M)[1]), "required")
    return budgets


def test_required_budgets_fit_six_minutes_and_the_header_table_says_so():
    """The required stages' GPU budgets, setup included, add up to at most 360 s, and the header's
    table gives every stage, in the order it runs, with the budget the script enforces."""
    script = SCRIPT.read_text()
    budgets = _budgets()
    assert {n for n, (_, kind) in budgets.items() if kind == "required"} == set(REQUIRED)
    assert {n for n, (_, kind) in budgets.items() if kind == "optional"} == set(OPTIONAL)
    total = sum(b for b, kind in budgets.values() if kind == "required")
    assert total <= 360
    assert f"Required, in this order, {total} s together with setup" in script
    header = script[:script.index("set -uo pipefail")]
    table = re.findall(r"^#   (\S+)\s+(\d+)  ", header, re.M)
    assert [name for name, _ in table] == [*REQUIRED, *OPTIONAL]
    assert {name: int(b) for name, b in table} == {name: b for name, (b, _) in budgets.items()}
    # A stage past its budget gets SIGTERM, then SIGKILL soon after: the table is what it costs.
    assert "timeout --kill-after=5 \"$budget\"" in script


def test_summary_keeps_every_stage_when_one_has_no_json(tmp_path):
    """A stage that failed before writing its JSON says so in summary.txt; the others keep their numbers."""
    rows = [{"stage": "setup", "status": "ok", "rc": 0, "seconds": 3, "budget_s": 20, "json": True},
            {"stage": "train", "status": "failed", "rc": 1, "seconds": 4, "budget_s": 60, "json": False},
            {"stage": "ray", "status": "ok", "rc": 0, "seconds": 30, "budget_s": 65, "json": True},
            {"stage": "sweep", "status": "skipped", "rc": None, "seconds": 0, "budget_s": 60, "json": False}]
    (tmp_path / "stages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "setup.json").write_text(json.dumps({"python": "3.12.3", "torch": "2.11.0", "cuda": "13.0",
                                                      "gpu": "NVIDIA H100 80GB HBM3", "ray": "2.60.0"}))
    (tmp_path / "ray.json").write_text(json.dumps({
        "images_per_s": 123.4, "step_ms": {"data_wait": 5.0, "total": 50.0}, "data_wait_share": 0.1, "gpu": "H100",
        "gpu_count": 1, "batch_size": 16, "height": 256, "width": 256, "precision": "bf16"}))
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_summary.py"), str(tmp_path), "480"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    blocks = _summary_blocks(out)
    assert list(blocks) == ["setup", "train", "ray", "sweep"]
    assert blocks["train"][0] == "failed" and "no numbers" in blocks["train"][1][0]
    assert "123 images/s" in blocks["ray"][1][0] and "data-wait share 10.0%" in blocks["ray"][1][0]
    assert "NVIDIA H100 80GB HBM3" in blocks["setup"][1][0] and blocks["sweep"] == ("skipped", [])
    assert "device: NVIDIA H100 80GB HBM3" in out.splitlines()[-1]


def _summary_blocks(text: str) -> dict[str, tuple[str, list[str]]]:
    """summary.txt as {stage: (status, [its key-number lines])}."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines()[1:-1]:
        if line.startswith("    "):
            blocks[next(reversed(blocks))][1].append(line.strip())
        else:
            name, status = line.split()[:2]
            blocks[name] = (status, [])
    return blocks


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_stage_and_writes_its_json(tmp_path):
    """As the GPU machine runs it (``GPU_CHECK_PACK=...tar.gz bench/gpu.sh OUT``), on the CPU."""
    out, pack = tmp_path / "gpu-check", tmp_path / "back" / "gpu-check.tar.gz"
    pack.parent.mkdir()
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET_S": "86400",  # no optional stage skipped
           "GPU_CHECK_PACK": str(pack)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # python3: this venv's
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", "bench/gpu.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)  # each stage has its own guard; a loaded 2-core CPU is slow
    stages = {r["stage"]: r for r in map(json.loads, (out / "stages.jsonl").read_text().splitlines())}
    failed = {n: (r["status"], (out / f"{n}.log").read_text()[-1500:] if (out / f"{n}.log").exists() else "")
              for n, r in stages.items() if r["status"] != "ok"}
    assert not failed, failed
    assert list(stages) == [*REQUIRED, *OPTIONAL], proc.stdout[-3000:]  # required first, in order of value
    for name in stages:
        assert stages[name]["json"] and (out / f"{name}.json").stat().st_size > 2, name
    correct = json.loads((out / "correct.json").read_text())
    assert correct["kernel"] and all("max_abs_error" in r for r in correct["kernel"])
    assert [r["dtype"] for r in correct["layouts"]] == ["fp32", "bf16"]
    assert all(r["rows_ms"] > 0 and r["planes_ms"] > 0 and r["max_abs_error"] < 0.1 for r in correct["layouts"])
    assert len(correct["train"]) == 4 and all(r["finite"] and r["error"] is None for r in correct["train"])
    profiled = json.loads((out / "profile.json").read_text())["presets"]
    assert [(r["model"], r["error"]) for r in profiled] == [("hybrid", None), ("deblurgan", None)]
    assert all(r["top_ops"] and r["top_ops"][0]["self_ms"] > 0 for r in profiled)
    assert {p["range"] for r in profiled for p in r["phases"]} >= {"D.forward", "G.forward", "G.backward"}
    assert "hybrid-smoke" in (out / "profile.txt").read_text()

    # import: every fixture, fp32 and bf16, with Ray hidden too; on the CPU the "device" output is
    # the CPU output (the same module, input and kernels), and bf16 autocast really ran
    rows = json.loads((out / "import.json").read_text())["fixtures"]
    assert {(r["fixture"], r["precision"]) for r in rows} == {(k, p) for k in FIXTURES for p in ("fp32", "bf16")}
    assert all(r["error"] is None and r["finite"] for r in rows)
    assert all(r["max_abs_error_vs_cpu"] == 0.0 for r in rows if r["precision"] == "fp32")
    assert all(r["max_abs_error_vs_official"] > 0 for r in rows if r["precision"] == "bf16")

    train = json.loads((out / "train.json").read_text())
    assert {r["precision"] for r in train} == set(typing.get_args(Precision))  # every precision offered
    assert len(train) == len(typing.get_args(Precision))  # one preset on the CPU
    assert json.loads((out / "ray.json").read_text())["data_wait_share"] is not None
    # The sweep's DeblurGAN reference is the ray stage's run (one Ray Train run fewer on the CPU).
    reference = json.loads((out / "sweep.json").read_text())["reference"]
    assert reference["reused"] and reference["run"] == "gpu-ray" and reference["error"] is None, reference
    evaluation = json.loads((out / "evaluate.json").read_text())
    assert evaluation["images"] == 2 and evaluation["psnr"] is not None and evaluation["ssim"] is not None
    assert evaluation["fid"] is None and evaluation["fid_reason"] and "not requested" not in evaluation["fid_reason"]
    assert evaluation["images_per_s"] > 0 and evaluation["mode"] == "local"
    # The ray, predict and sweep stages joined the one Ray that bench/gpu_ray.py held (none started its own).
    address = (out / "ray-address").read_text()
    for name in ("ray", "predict", "sweep"):
        assert f"Connecting to existing Ray cluster at address: {address}" in (out / f"{name}.log").read_text(), name
    assert "Ray shut down" in (out / "ray-head.log").read_text()
    with tarfile.open(pack) as tar:  # what comes back: every stage's JSON and log, the summary, no store
        packed = {Path(n).as_posix().removeprefix("./") for n in tar.getnames()}
    assert {f"{n}.json" for n in stages} | {f"{n}.log" for n in stages if n != "setup"} | {"summary.txt"} <= packed
    assert not any(n.startswith("store") for n in packed)
    summary = (out / "summary.txt").read_text()
    blocks = _summary_blocks(summary)
    assert list(blocks) == [*REQUIRED, *OPTIONAL] and "device: cpu" in summary.splitlines()[-1]
    for name, (status, lines) in blocks.items():  # every stage: its status and its key numbers
        assert status == "ok" and lines and not any(line.startswith("no numbers") for line in lines), (name, lines)
        assert re.search(r"\d", " ".join(lines)), (name, lines)
