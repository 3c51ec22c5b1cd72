"""The study keeps going when one of its steps fails: the failure is recorded in its runs."""

from __future__ import annotations

import io

from rich.console import Console

from asaptrain.data.store import Store
from asaptrain.experiment import retrain_best, smoke_plan


def test_a_failed_retrain_of_the_best_config_is_recorded_and_the_study_goes_on(tmp_path):
    store = Store.open(str(tmp_path))
    plan = smoke_plan(str(tmp_path), None, steps=4, trials=2, use_gpu=False, gpus=0)
    out = io.StringIO()
    # The sweep's best.toml is gone (or was never written): no run can start from it.
    record = retrain_best(store, plan, {"name": "sweep-x", "best": {"params": {}}}, False, Console(file=out))
    assert record["status"] == "failed" and record["name"] is None and "best.toml" in record["error"]
    store.child("sweeps", "sweep-x").write_text("best.toml", "[train]\nsteps = 0\n")
    record = retrain_best(store, plan, {"name": "sweep-x", "best": {"params": {}}}, False, Console(file=out))
    assert record["status"] == "failed" and "train.steps must be > 0" in record["error"]
    assert "hybrid-smoke-best" in out.getvalue()


def test_smoke_plan_changes_are_typed():
    plan = smoke_plan("/tmp/s", "http://127.0.0.1:9", steps=8, trials=2, use_gpu=False, gpus=0)
    assert plan.changes["train.steps"] == 8 and plan.changes["train.log_every"] == 2
    assert plan.changes["scaling.resources_per_worker"] == {"CPU": 0.5}
    assert plan.changes["storage.s3_endpoint"] == "http://127.0.0.1:9"
