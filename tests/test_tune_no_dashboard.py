"""Without Ray's dashboard a sweep whose trials run in turn would hang on Ray 2.60: it must say so."""

from __future__ import annotations

import json
import os

import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.sweep.tune import SweepError, dashboard_ok, sweep


@pytest.fixture
def ray_without_dashboard():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield
    ray.shutdown()


def test_sweep_refuses_to_hang_without_the_dashboard(ray_without_dashboard, tmp_path):
    assert not dashboard_ok()
    convert(synth_plan("photos", 4, (64, 64), seed=0, val_count=2), Store.open(str(tmp_path)).child("datasets", "synth-photos"))
    cfg = apply_overrides(get_preset("hybrid-smoke"), [f"storage.store={json.dumps(str(tmp_path))}",
                                                        "scaling.resources_per_worker={CPU = 0.5}"])
    with pytest.raises(SweepError, match="dashboard"):
        sweep(cfg, trials=3, progress=False, name="no-dash")
    # Refused before anything of the sweep was written.
    assert not (tmp_path / "sweeps" / "no-dash").exists()
