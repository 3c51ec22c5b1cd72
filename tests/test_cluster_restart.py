"""A job's driver killed (kill -9) and the same command run again, as KubeRay's backoffLimit
does: `train --resume auto` continues the run from its last checkpoint with no metrics line
twice, and `tune --resume auto` continues the trial that was running from its own checkpoint.
The drivers are real subprocesses (the jobs/ entrypoints) joined to this module's Ray."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from ray_actors import cluster_snapshot

from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.train.orphan_groups import orphaned_groups
from asaptrain.train.run_reader import newest_loadable
from asaptrain.train.run_files import RunFiles

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ONE_CPU_WORKER = ["scaling.num_workers=1", "scaling.use_gpu=false", "scaling.resources_per_worker={CPU = 0.5}"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_cluster):
    s = Store.open(str(tmp_path_factory.mktemp("store")))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), s.child("datasets", "synth-photos"))
    return s


def _driver(script: str, args: list[str], log: Path) -> subprocess.Popen:
    import ray

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / script), *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def _wait(proc: subprocess.Popen, log: Path, timeout_s: float) -> int:
    """The driver's exit code; a driver still running after ``timeout_s`` is killed (its whole
    session) and the test fails with its log's end and what the cluster held then."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        held = cluster_snapshot()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail(f"the driver did not end within {timeout_s:.0f} s; the cluster held:\n{held}\n"
                    f"its log ends:\n{log.read_text()[-4000:]}")


def _train_steps(run: RunFiles) -> list[int]:
    try:
        return [r["step"] for r in run.read_metrics() if r.get("kind") == "train"]
    except Exception:  # a line being appended: look again
        return []


def _kill_when(proc: subprocess.Popen, ready, log: Path, timeout_s: float = 400.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"the driver ended before the moment to kill it:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"never reached the moment to kill the driver:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_ended(proc, log)


def _wait_ended(proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    """Wait until Ray has marked the killed driver's job ended and ended its actors (but the
    detached ones: Ray Train's placement group cleaner outlives its job by design)."""
    from ray._private.state import state

    deadline = time.monotonic() + timeout_s
    while True:
        jobs = [job for job in state.job_table() if job["DriverPid"] == proc.pid]
        if jobs and jobs[-1]["IsDead"]:
            live = [a["ActorClassName"] for a in state.actor_table(None).values()
                    if a["JobID"] == jobs[-1]["JobID"] and a["State"] != "DEAD" and not a["IsDetached"]]
            if not live:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"{timeout_s:.0f} s after the driver was killed, Ray has not ended its job:\n"
                        f"{cluster_snapshot()}\nits log ends:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def _check_once_each(run: RunFiles, steps: int) -> None:
    records = run.read_metrics()
    train = [r["step"] for r in records if r.get("kind") == "train"]
    assert train == list(range(1, steps + 1)), train
    twice = [k for k, n in Counter((r.get("kind"), r["step"]) for r in records).items() if n > 1]
    assert not twice, twice


# The train run below is DeblurGAN on the hybrid sweep's inputs (its blur curriculum, steps and
# evaluation): the sweep after it reuses the finished run as its speed reference instead of
# training one first.
AS_THE_SWEEPS_REFERENCE = ["curriculum.kind=linear", "curriculum.start=0.2", "curriculum.end=0.8", "eval.every=2",
                           "eval.images=4"]


def test_killed_train_driver_rerun_continues_from_its_checkpoint(store, tmp_path):
    args = ["--preset", "deblurgan-smoke", "--store", store.uri, "--name", "restarted", "--resume", "auto",
            "--steps", "10", "--no-progress", *[a for kv in ONE_CPU_WORKER + AS_THE_SWEEPS_REFERENCE + [
                "train.log_every=1", "train.checkpoint_every=6", "train.sample_every=100"]
                for a in ("--set", kv)]]
    run = RunFiles(store, "restarted")
    first = _driver("train.py", args, tmp_path / "first.log")
    _kill_when(first, lambda: any(s in (7, 8) for s in _train_steps(run)), tmp_path / "first.log")
    assert run.read_run()["status"] == "running"  # kill -9: nobody marked it
    found = newest_loadable(run.dir)
    at_kill = max(_train_steps(run))
    assert found.state["step"] == 6 and at_kill > 6, (found.rel, at_kill)  # lines past the checkpoint exist

    second = _driver("train.py", args, tmp_path / "second.log")  # the same command, as a restarted job
    assert _wait(second, tmp_path / "second.log", 400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    out = (tmp_path / "second.log").read_text()
    assert "continuing run 'restarted' from step 6" in out, out[-3000:]
    _check_once_each(run, 10)
    meta = run.read_run()
    assert meta["status"] == "finished" and meta["steps_done"] == 10 and meta["error"] is None
    assert orphaned_groups() == []  # what the killed job may have left, the rerun's driver freed
    # Once more after the end: a job restarted after its run finished has nothing to do, and says so.
    third = _driver("train.py", args, tmp_path / "third.log")
    assert _wait(third, tmp_path / "third.log", 200) == 0 and "already finished 10 steps" in (tmp_path / "third.log").read_text()
    _check_once_each(run, 10)


# A driver whose actor keeps reserving placement groups of CPU (as Ray Train's controller does
# when it restarts its worker group) while the driver is killed; with KEEP, a detached actor of the
# same job first reserves one group that outlives the job by Ray's rule.
RESERVER = """
import os, sys, threading, time
import ray
from ray.util.placement_group import placement_group
cpu, keep = float(sys.argv[1]), sys.argv[2] == "KEEP"
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=0)
class Reserver:
    def keep_one(self):
        return placement_group([{"CPU": 0.02}]).id.hex()

    def keep_reserving(self):
        def reserve():
            while True:
                placement_group([{"CPU": cpu}])
                time.sleep(0.005)
        threading.Thread(target=reserve, daemon=True).start()

kept = ray.get(Reserver.options(name="kept", namespace="reservers", lifetime="detached").remote().keep_one.remote()) if keep else "-"
ray.get(Reserver.remote().keep_reserving.remote())
print("kept", kept, flush=True)
time.sleep(600)
"""


def _leave_orphans(tmp_path: Path, cpu: float, keep: bool = False) -> tuple[list, str]:
    """Kill a :data:`RESERVER` driver until Ray has left at least one of its groups reserved
    (every kill has so far; a few tries in case one does not): (the orphans, the kept group's id)."""
    import ray

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    for attempt in range(3):
        log = tmp_path / f"reserver{attempt}.log"
        proc = subprocess.Popen([sys.executable, "-c", RESERVER, str(cpu), "KEEP" if keep else "-"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while "kept " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_ended(proc, log)
        if left := orphaned_groups():
            return left, log.read_text().split("kept ")[1].split()[0]
    pytest.fail("every kill let Ray free the job's groups: the orphans this test needs were not made")


def _wait_free_cpus(at_least: float = 0.0, at_most: float = math.inf, timeout_s: float = 60.0) -> None:
    """Wait until the CPUs this module's Ray has free are within [at_least, at_most]."""
    import ray

    deadline = time.monotonic() + timeout_s
    while not at_least - 1e-6 <= ray.available_resources().get("CPU", 0) <= at_most + 1e-6:
        assert time.monotonic() < deadline, cluster_snapshot()
        time.sleep(0.5)


def test_a_driver_frees_the_groups_that_a_killed_job_left(ray_cluster, tmp_path):
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    ours = placement_group([{"CPU": 0.03}])  # this live job's own group: never an orphan
    ray.get(ours.ready(), timeout=60)
    left, kept = _leave_orphans(tmp_path, cpu=0.01, keep=True)
    total = ray.cluster_resources()["CPU"]
    assert ray.available_resources().get("CPU", 0) < total - 0.03 - 0.02 - 1e-6  # the orphans hold CPU

    # The next driver that connects frees them, and says so; a live job's and a detached actor's stay.
    out = subprocess.run([sys.executable, "-c", "from asaptrain.train.driver import ensure_ray; ensure_ray()"],
                         env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"freed {len(left)} placement group(s) that ended jobs left reserved" in out.stdout, out.stdout
    assert orphaned_groups() == []
    states = {g: placement_group_table().get(g, {}).get("state") for g in (ours.id.hex(), kept)}
    assert states == {ours.id.hex(): "CREATED", kept: "CREATED"}, states
    ray.kill(ray.get_actor("kept", namespace="reservers"))
    remove_placement_group(ours)
    _wait_free_cpus(at_least=ray.cluster_resources()["CPU"])  # every CPU free again


def test_resume_auto_needs_a_name(store):
    from asaptrain.config.io import apply_overrides
    from asaptrain.config.presets import get_preset
    from asaptrain.train.launch import RunError, fit

    cfg = apply_overrides(get_preset("deblurgan-smoke"), [f"storage.store={json.dumps(store.uri)}"])
    with pytest.raises(RunError, match="--resume auto needs --name"):
        fit(cfg, resume="auto", progress=False)


def test_killed_sweep_resumes_the_trial_that_was_running(store, tmp_path, ray_cluster):
    args = ["--preset", "hybrid-smoke", "--store", store.uri, "--name", "killed-sweep", "--resume", "auto",
            "--trials", "1", "--steps", "10", "--workers-per-trial", "1", "--gpus-per-trial", "0", "--search", "random",
            "--no-progress", *[a for kv in ["scaling.resources_per_worker={CPU = 0.5}", "train.log_every=1",
                                            "train.checkpoint_every=4", "eval.every=2", "eval.images=4",
                                            "train.sample_every=100"] for a in ("--set", kv)]]
    runs = store.child("sweeps", "killed-sweep", "runs")

    def trial() -> RunFiles | None:
        names = sorted({p.split("/")[0] for p in runs.list("")}) if store.exists("sweeps/killed-sweep/runs") else []
        return RunFiles(store, names[0], "sweeps/killed-sweep/runs") if names else None

    first = _driver("tune_hybrid.py", args, tmp_path / "first.log")
    # Killed past its first checkpoint (step 4), before its end; on a loaded machine the trial may
    # pass the second (step 8) before a look sees step 5.
    _kill_when(first, lambda: trial() is not None and any(s >= 5 for s in _train_steps(trial())),
               tmp_path / "first.log", timeout_s=1200)  # DeblurGAN's reference run trains first, unless reused
    run = trial()
    checkpoint = newest_loadable(run.dir).state["step"]
    assert checkpoint in (4, 8) and max(_train_steps(run)) < 10, (checkpoint, _train_steps(run))

    # Ray Train's controller may leave its worker group's placement group reserved as the killed
    # driver's job ends (about one kill in ten here); make sure groups are left, holding enough CPU
    # that the trial's reads could never start beside them: the rerun frees them first.
    _leave_orphans(tmp_path, cpu=0.5)
    # A group left pending is placed once Ray has removed the others.
    _wait_free_cpus(at_most=ray_cluster.cluster_resources()["CPU"] - 0.5)
    second = _driver("tune_hybrid.py", args, tmp_path / "second.log")
    assert _wait(second, tmp_path / "second.log", 900) == 0, (tmp_path / "second.log").read_text()[-4000:]
    assert f"continuing run '{run.name}' from step {checkpoint}" in (tmp_path / "second.log").read_text()
    assert "placement group(s) that ended jobs left reserved" in (tmp_path / "second.log").read_text()
    summary = store.child("sweeps", "killed-sweep").read_json("sweep.json")
    (row,) = summary["trials"]
    assert row["status"] == "finished" and row["steps"] == 10 and row["error"] is None, row
    assert row["run"] == run.name
    meta = run.read_run()
    assert meta["status"] == "finished" and meta["steps_done"] == 10 and meta["error"] is None, meta
    _check_once_each(run, 10)
    assert orphaned_groups() == []
