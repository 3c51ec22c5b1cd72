"""End to end, as a user runs it: the README's main command (`asaptrain smoke`) at its smallest
settings. (`asaptrain submit` to a cluster, then `asaptrain aggregate`: test_multinode.py.)"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_readme_main_command_smoke(smoke_study):
    """`asaptrain smoke` with the smallest settings that still run every step (run once per test run,
    its four runs are checked one by one in test_train_ray.py)."""
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
