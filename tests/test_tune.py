"""The hybrid sweep under real Ray: 4 tiny trials on CPU, ASHA, best.toml that trains."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from reporting import ListReporter

from asaptrain.config.io import apply_overrides, load_toml
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.config.presets import get_preset
from asaptrain.sweep.space import SweepError, default_space, load_space
from asaptrain.train.loop import train_loop
from asaptrain.train.nets import generator_in_channels
from asaptrain.sweep.tune import sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_cluster):
    s = Store.open(str(tmp_path_factory.mktemp("store")))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), s.child("datasets", "synth-photos"))
    return s


def tiny(store):
    return apply_overrides(get_preset("hybrid-smoke"), [
        f"storage.store={json.dumps(store.uri)}", "train.steps=6", "train.log_every=1", "eval.every=1",
        "train.checkpoint_every=6", "train.sample_every=6", "scaling.num_workers=1", "scaling.use_gpu=false",
        "scaling.resources_per_worker={CPU = 0.5}", "eval.images=4"])


def random_batches(cfg):
    """Endless (input, target) batches of the config's shape, as the loop's model batches."""
    g = torch.Generator().manual_seed(0)
    shape = (cfg.train.batch_size, generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width)
    while True:
        yield torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape[0], 3, *shape[2:], generator=g) * 2 - 1


def test_space_file_narrows_and_checks(tmp_path, store):
    base = tiny(store)
    path = tmp_path / "space.toml"
    path.write_text('mode = "narrow"\n[space]\n"model.mlp_depth" = { choice = [3] }\n')
    space = load_space(str(path), base)
    assert space["model.mlp_depth"] == {"choice": [3]} and set(default_space(base)) <= set(space)
    path.write_text('mode = "replace"\n[space]\n"optim.g_lr" = { loguniform = [1e-4, 1e-3] }\n')
    assert list(load_space(str(path), base)) == ["optim.g_lr"]
    path.write_text('[space]\n"model.nosuch" = { choice = [1] }\n')
    with pytest.raises(SweepError, match="model.nosuch"):
        load_space(str(path), base)
    path.write_text('[space]\n"loss.gan" = { choice = ["hinge", "bce"] }\n')  # every value is checked
    with pytest.raises(SweepError, match="loss.gan must be one of"):
        load_space(str(path), base)
    for bad, says in (('{ choice = [] }', "non-empty list"), ('{ loguniform = [0.0, 1e-3] }', "lo > 0"),
                      ('{ uniform = [1e-3, 1e-4] }', "lo < hi"), ('{ uniform = ["a", "b"] }', "lo < hi")):
        path.write_text(f'[space]\n"optim.g_lr" = {bad}\n')
        with pytest.raises(SweepError, match=f"{path}: optim.g_lr: .*{says}"):
            load_space(str(path), base)


def test_cpu_sweep_stops_early_and_best_config_trains(store, capsys):
    base = tiny(store)
    space = {
        "optim.g_lr": {"choice": [1e-3, 3e-5]},
        "model.mlp_width": {"choice": [8, 16]},
        "curriculum.kind": {"choice": ["fixed", "linear"]},
    }
    summary = sweep(base, trials=4, name="cpu-sweep", space=space, grace_reports=1, reduction_factor=2,
                    search="random", progress=False)
    trials = summary["trials"]
    assert len(trials) == 4
    assert all(t["status"] != "error" for t in trials), trials
    assert any(t["status"] == "stopped early" for t in trials), trials  # ASHA cut at least one
    sweep_dir = store.child("sweeps", "cpu-sweep")
    on_disk = sweep_dir.read_json("sweep.json")
    assert on_disk["best"]["params"] == summary["best"]["params"]
    assert sweep_dir.exists("trials.png")
    # Speed next to quality: every trial timed beside DeblurGAN's reference, trained once for it.
    ref = on_disk["reference"]
    assert ref["preset"] == "deblurgan-smoke" and not ref["reused"] and ref["error"] is None
    assert store.child("sweeps", "references", ref["run"]).exists("run.json")
    assert ref["best_val_psnr"] > 0 and ref["ms_per_image"] > 0 and ref["gflops"] > 0
    assert on_disk["speed"]["device"] == "cpu" and on_disk["speed"]["error"] is None
    assert all(t["ms_per_image"] > 0 and t["gflops"] > 0 and t["speedup"] > 0 for t in on_disk["trials"])
    assert on_disk["front"] and set(on_disk["front"]) <= {t["trial"] for t in trials}
    below = on_disk["selection"]["below_speedup"]
    assert on_disk["best"]["below_speedup"] is below and below is (on_disk["best"]["speedup"] < 2.5)
    best_path = sweep_dir.path("best.toml")
    header = open(best_path).read().split("\n\n")[0]
    assert header.startswith("# Best config of sweep cpu-sweep") and ("BELOW THE SPEEDUP" in header) is below
    best = load_toml(best_path)
    for key, value in summary["best"]["params"].items():
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == value
    # best.toml trains: two steps of it in the loop every Ray Train worker runs (Ray Train itself is
    # tested in test_train_ray.py; a third Ray run here would prove nothing more).
    best = apply_overrides(best, ["train.steps=2", "train.log_every=1", "train.checkpoint_every=2"])
    reporter = ListReporter()
    assert train_loop(best, random_batches(best), lambda b, *_: b, torch.device("cpu"), reporter).step == 2
    assert [m["step"] for m, _ in reporter.reports] == [1, 2]
    assert all(isinstance(m["loss/g"], float) for m, _ in reporter.reports)
    # An existing sweep name is refused unless resumed; resuming a finished sweep (a job restarted
    # after its end) reruns nothing, times nothing again, and says so.
    with pytest.raises(SweepError, match="--resume cpu-sweep"):
        sweep(base, trials=4, name="cpu-sweep", space=space, progress=False)
    capsys.readouterr()
    again = sweep(base, trials=4, resume="cpu-sweep", progress=False)
    assert again == on_disk and sweep_dir.read_json("sweep.json") == on_disk
    assert "sweep 'cpu-sweep' already finished 4 trials" in capsys.readouterr().out
    assert len(store.child("sweeps", "references").list("")) == 1  # the reference: trained once


def test_tune_cli_help():
    from asaptrain.cli import main

    res = CliRunner().invoke(main, ["tune", "--help"])
    assert res.exit_code == 0 and "--gpus-per-trial" in res.output and "--resume" in res.output


def test_a_placement_group_no_actor_uses_is_freed_at_the_second_look(ray_cluster):
    """What a stopped trial's Train run left reserved once: the worker group's placement group that
    its controller made while restarting the group, just before it was killed itself. The group
    stays while the sweep's driver lives, and the next trial's data read (one whole CPU) waited
    forever for its CPU. Removed once found empty at two looks 5 s apart; kept: a group in use, one
    of the shape Tune reserves for a trial's driver, and one there before the sweep began."""
    import time

    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from asaptrain.sweep.groups import StrayGroups, groups_now
    from asaptrain.sweep.tune import TRIAL_DRIVER_CPUS, dashboard_url

    @ray.remote(num_cpus=0)
    class Controller:
        def make_group(self):
            group = placement_group([{"CPU": 0.5}])
            ray.get(group.ready(), timeout=60)
            return group.id.hex()

    @ray.remote(num_cpus=0)
    class Worker:
        def ping(self):
            return True

    own = placement_group([{"CPU": 0.25}])  # the driver's own, from before the sweep
    ray.get(own.ready(), timeout=60)
    before = groups_now()
    controller = Controller.remote()
    stray = ray.get(controller.make_group.remote(), timeout=120)
    ray.kill(controller)  # killed with its group reserved; this driver (the group's job) lives on
    busy, tunes = placement_group([{"CPU": 0.5}]), placement_group([{"CPU": TRIAL_DRIVER_CPUS}])
    try:
        ray.get([busy.ready(), tunes.ready()], timeout=60)
        worker = Worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(busy)).remote()
        assert ray.get(worker.ping.remote(), timeout=120)
        groups = StrayGroups(ray.get_runtime_context().get_job_id(), dashboard_url(),
                             keep=[{"CPU": TRIAL_DRIVER_CPUS}], spare=before, confirm_s=5)
        now, seen, freed = 100.0, None, {}
        deadline = time.monotonic() + 90  # the state API's view may lag the cluster by seconds
        while stray not in freed and time.monotonic() < deadline:
            freed.update({g: now for g in groups.free(now=now)})
            seen = now if seen is None and stray in groups.empty_since else seen
            now += 1
            time.sleep(0.5)
        assert stray in freed, "a placement group no actor uses was never freed"
        assert freed[stray] - seen >= 5  # only at a look 5 s after the first that found it empty
        table = placement_group_table()
        assert table[stray]["state"] == "REMOVED"
        assert {table[g.id.hex()]["state"] for g in (busy, tunes, own)} == {"CREATED"}
    finally:
        for group in (busy, tunes, own):
            remove_placement_group(group)
