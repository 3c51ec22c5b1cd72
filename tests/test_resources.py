"""Resource planning: CPU workers leave Ray Data a CPU, or the run is refused at once; a sweep
checks its dataset before any trial. (Two workers with the default resources train on two CPUs
in test_train_ray.py, under a bound: a hang fails instead of waiting.)"""

from __future__ import annotations

import json

import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.shards import ManifestError
from asaptrain.data.store import Store
from asaptrain.train.resources import ResourceError, worker_resources


def cfg(*sets: str):
    return apply_overrides(get_preset("deblurgan-smoke"), list(sets))


@pytest.mark.parametrize("workers, cpus, driver, want", [
    (2, 2, 0, 0.5), (1, 2, 0, 1.0), (1, 2, 0.25, 0.75), (2, 2, 0.25, 0.37), (4, 16, 0, 1.0), (4, 2, 0, 0.25)])
def test_default_cpu_workers_leave_ray_data_a_cpu(workers, cpus, driver, want):
    per = worker_resources(cfg(f"scaling.num_workers={workers}"), use_gpu=False, cluster_cpus=cpus,
                           driver_cpus=driver)
    assert per == {"CPU": want}
    assert workers * per["CPU"] + driver + 1 <= cpus


def test_what_cannot_fit_is_refused_with_what_to_set():
    with pytest.raises(ResourceError, match=r"scaling.resources_per_worker=\{CPU = 0.5\}"):
        worker_resources(cfg("scaling.num_workers=2", "scaling.resources_per_worker={CPU = 1}"), False, 2)
    with pytest.raises(ResourceError, match="fewer workers"):
        worker_resources(cfg(), False, 1)
    assert worker_resources(cfg("scaling.resources_per_worker={CPU = 0.5}"), False, 2) == {"CPU": 0.5}
    assert worker_resources(cfg(), True, 1) is None  # GPU workers: Ray's default, whatever the CPUs
    assert worker_resources(cfg("scaling.resources_per_worker={GPU = 0.5}"), True, 1) == {"GPU": 0.5}


def test_sweep_of_a_missing_dataset_fails_before_any_trial(tmp_path):
    from asaptrain.sweep.tune import sweep

    store = Store.open(str(tmp_path / "store"))
    base = cfg(f"storage.store={json.dumps(store.uri)}", "data.dataset=datasets/nowhere")
    with pytest.raises(ManifestError, match="datasets/nowhere/manifest.json does not exist"):
        sweep(base, trials=2, name="s", progress=False)
    assert not store.exists("sweeps")  # nothing written, no Ray started
