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


def test_the_smoke_studys_deblurgan_run_is_its_sweeps_reference(tmp_path):
    """The study's DeblurGAN run trains the recipe the sweep looks for, so the sweep reuses it
    instead of training DeblurGAN a second time (before, the two differed in their curriculum)."""
    from asaptrain.config.io import replace
    from asaptrain.config.presets import get_preset
    from asaptrain.sweep.speed import _recipe, reference_config

    store = Store.open(str(tmp_path))
    plan = smoke_plan(store.uri, None, steps=2, trials=2, use_gpu=False, gpus=0)
    own = replace(get_preset("deblurgan-smoke"), {**plan.changes, **plan.preset_changes["deblurgan-smoke"]})
    sweep_base = replace(get_preset(plan.sweep_preset), {**plan.changes, **plan.sweep_changes})
    assert _recipe(own, store) == _recipe(reference_config(sweep_base, "deblurgan-smoke"), store)
    assert own.curriculum == get_preset("hybrid-smoke").curriculum != get_preset("deblurgan-smoke").curriculum
