"""Training under real Ray Train: 2 CPU workers (gloo DDP) with the default resources, faults, names.
(Each smoke preset's run on two workers: test_e2e.py, which checks the runs of `asaptrain smoke`; a
run's files on an S3 store, with no credential in them: test_multinode.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from ray_actors import actors, actors_started

from asaptrain.config.io import apply_overrides
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.config.presets import get_preset
from asaptrain.train.launch import RunError, choose_name, fit
from asaptrain.train.run_files import RunFiles

pytestmark = pytest.mark.slow

# Two workers with the default resources: on two CPUs each is planned half a CPU, which leaves
# Ray Data's decode tasks theirs (train/resources.py). At Ray's default of one CPU each, a run
# sat at 0 rows forever; the first run below is bounded, so that would fail it.
TWO_WORKERS = ["scaling.num_workers=2", "scaling.use_gpu=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_cluster):
    s = Store.open(str(tmp_path_factory.mktemp("store")))
    convert(synth_plan("photos", 24, (64, 64), seed=0, val_count=4), s.child("datasets", "synth-photos"))
    return s


def smoke_cfg(name: str, store: Store, *extra: str):
    return apply_overrides(get_preset(name), [f"storage.store={json.dumps(store.uri)}", "train.steps=4",
                                              "train.log_every=2", "train.checkpoint_every=2", "eval.every=4",
                                              "train.sample_every=4", *extra])


def test_wgan_gp_preset_trains_in_fp16_on_two_workers(store):
    """fp16 under DDP: the critic's penalty pass (a second D forward, in fp32) and the loss scales
    keep both replicas identical, and the scales' metrics reach the run's files."""
    cfg = smoke_cfg("deblurgan-smoke", store, *TWO_WORKERS, "train.precision=fp16")
    assert cfg.scaling.resources_per_worker == {}
    splits = actors_started("SplitCoordinator")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", fit(cfg, preset="deblurgan-smoke", progress=False)),
                              daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "a 4-step run of 2 workers with the default resources on 2 CPUs ran past 300 s"
    result = out["r"]
    assert result.status == "finished", result.error
    assert actors_started("SplitCoordinator") - splits == 1  # two workers share one read of the dataset
    files = RunFiles(store, result.name)
    timing = files.dir.read_json("timing.json")
    assert timing["replica_checksums"][0] == pytest.approx(timing["replica_checksums"][1], rel=0, abs=1e-9)
    train = [r for r in files.read_metrics() if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for r in train:
        assert all(isinstance(r[k], float) for k in ("loss/d", "loss/g")), r  # logged, finite (NaN is written as null)
        assert r["fp16/scale/d"] >= 1 and r["fp16/skipped/d"] >= 0 and not r["skipped"]


def test_replicas_that_differ_are_named_across_two_gloo_workers(ray_cluster, tmp_path):
    """``check_replicas`` over 2 real Ray Train workers (gloo): equal weights pass; a tensor changed
    on rank 1 only is named on both ranks, so both stop at the same checkpoint."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def worker(config):
        import torch

        from asaptrain.train import dist

        torch.manual_seed(0)
        nets = {"G": torch.nn.Linear(3, 3), "D": torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))}
        outcome = []
        for perturb in (False, True):
            if perturb and dist.rank() == 1:
                with torch.no_grad():
                    nets["D"][1].weight[0, 0] += 1e-3
            try:
                dist.check_replicas(nets)
                outcome.append("same")
            except dist.ReplicaMismatch as exc:
                outcome.append(str(exc))
        with open(f"{config['out']}/rank{dist.rank()}.txt", "w") as fh:
            fh.write("\n".join(outcome))

    TorchTrainer(worker, train_loop_config={"out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="replicas")).fit()
    for rank in (0, 1):
        same, differ = (tmp_path / f"rank{rank}.txt").read_text().split("\n")
        assert same == "same"
        assert differ.startswith("replicas differ at D.1.weight (rank 0: sum ") and "rank 1: sum" in differ


def test_run_names_are_never_silently_reused(store):
    cfg = smoke_cfg("deblurgan-smoke", store)
    name, start = choose_name(store, cfg, "deblurgan-smoke", None, None)
    assert name.startswith("deblurgan-smoke-") and start == 0
    RunFiles(store, "taken").write_run(name="taken", status="finished", steps_done=4)
    with pytest.raises(RunError, match="--resume taken"):
        choose_name(store, cfg, None, "taken", None)
    with pytest.raises(RunError, match="already finished 4 steps"):
        choose_name(store, cfg, None, None, "taken")
    with pytest.raises(RunError, match="no run"):
        choose_name(store, cfg, None, None, "nothing-here")
    assert choose_name(store, apply_overrides(cfg, ["train.steps=8"]), None, None, "taken") == ("taken", 4)


def test_an_epoch_of_shards_starts_one_footer_reader_not_thirty_two(store, monkeypatch):
    """Ray Data lists Parquet files through a pool of FooterReader actors, 32 by default, started
    again for every execution (every epoch of every worker): a Python process each, on a 2-core
    machine too. A dataset of a few shards needs one; a user's own
    RAY_DATA_PARQUET_FOOTER_NUM_ACTORS is kept, and the variable is left as it was found."""
    from asaptrain.data.pipeline import train_dataset
    from asaptrain.data.shards import FOOTER_READERS_ENV

    def started_by_epochs(epochs: int) -> int:
        before = actors_started("FooterReader")
        ds = train_dataset(smoke_cfg("hybrid-smoke", store), store)
        for epoch in range(epochs):
            assert sum(len(next(iter(b.values()))) for b in ds.iter_batches(batch_size=4)) == 24, epoch
        return actors_started("FooterReader") - before

    monkeypatch.delenv(FOOTER_READERS_ENV, raising=False)
    started = started_by_epochs(2)
    assert 1 <= started <= 3, f"{started} FooterReader actors for one read and two epochs of one shard"
    assert FOOTER_READERS_ENV not in os.environ
    monkeypatch.setenv(FOOTER_READERS_ENV, "4")
    assert started_by_epochs(1) == 4
    assert os.environ[FOOTER_READERS_ENV] == "4"


def _train_worker_pids() -> list[int]:
    """The live Train workers of this test's own Ray."""
    return sorted(a.pid for a in actors("RayTrainWorker", alive=True) if a.pid)


def test_killed_worker_resumes_from_checkpoint_without_gaps(store):
    """Kill one worker process mid-run: the group restarts from the last checkpoint and every
    step appears exactly once in metrics.jsonl."""
    steps = 16  # a checkpoint before the kill, steps after it
    cfg = smoke_cfg("deblurgan-smoke", store, *TWO_WORKERS, f"train.steps={steps}", "train.log_every=1",
                    "train.checkpoint_every=4", "eval.every=100", "train.max_failures=2")
    name = "fault-test"
    killed: list[int] = []

    def killer() -> None:
        files = RunFiles(store, name)
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            p = files.read_progress()
            if p and 6 <= p["step"] < steps - 4:
                pids = _train_worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = fit(cfg, name=name, progress=False)
    thread.join(timeout=5)
    assert killed, "the test never found a worker to kill"
    assert result.status == "finished", result.error
    train_steps = [r["step"] for r in RunFiles(store, name).read_metrics() if r["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1))
