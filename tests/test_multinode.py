"""Two real Ray nodes on one machine: a head and a second node (`ray start`, 2 CPUs each, their
own temp dirs and ports, loopback), data and checkpoints on the loopback S3 store. Training with
two workers placed on different nodes (SPREAD) over gloo, through `asaptrain submit train`; the
workers' node ids differ, their weights agree, the run is in the bucket, and `asaptrain aggregate`
reports it. (The CLI run against a cluster from outside, RAY_ADDRESS set by hand:
test_cluster_restart.py.)

Then no credential reaches the store, the runs or Ray's logs: the nodes run with their own S3
credentials in their environment, as a cluster's nodes would; this process, the driver, holds
different ones. After that submitted train run, a sweep driven from here (which reuses the run
as its DeblurGAN reference) and a submitted job, neither the driver's nor the nodes' key id or
secret, nor the Ray auth token, may appear in any object in the bucket or any file under either
node's temp dir (session logs, runtime-env agent log, Tune's driver artifacts, spilled objects).

The nodes come from conftest's ``ray_start``, which stops only the Ray processes it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

DRIVER = {"AWS_ACCESS_KEY_ID": f"DRVKEY{uuid.uuid4().hex[:14].upper()}",
          "AWS_SECRET_ACCESS_KEY": f"driver-secret-{uuid.uuid4().hex}"}
NODE = {"AWS_ACCESS_KEY_ID": f"NODEKEY{uuid.uuid4().hex[:13].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"node-secret-{uuid.uuid4().hex}"}
PLANTED = [v.encode() for v in (*DRIVER.values(), *NODE.values())]
RAY_TOKEN = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_bytes().strip()  # conftest's; a credential too

# The run trained below is DeblurGAN on the hybrid sweep's inputs (its blur curriculum, steps and
# evaluation), so the sweep after it reuses it as its speed reference instead of training one.
RECIPE = ["train.steps=4", "train.log_every=2", "train.checkpoint_every=4", "eval.every=4", "train.sample_every=4",
          "eval.images=4", "train.batch_size=4"]
AS_THE_SWEEPS_REFERENCE = ["curriculum.kind=\"linear\"", "curriculum.start=0.2", "curriculum.end=0.8"]


@pytest.fixture(scope="module")
def two_nodes(ray_start):
    """(GCS address, dashboard URL, temp dirs) of a head and a second node, 2 CPUs each, on
    127.0.0.1, with NODE's credentials in their environment; this process holds DRIVER's."""
    saved = {k: os.environ.get(k) for k in DRIVER}
    os.environ.update(DRIVER)
    try:  # token auth is on: the nodes, the driver and submit share conftest's token
        nodes = ray_start(nodes=2, env=NODE)
        yield nodes.gcs, nodes.dashboard, nodes.temp_dirs
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _train_args(store_uri: str, endpoint: str, name: str) -> list[str]:
    sets = [*RECIPE, *AS_THE_SWEEPS_REFERENCE, "scaling.placement_strategy=\"SPREAD\"", "scaling.use_gpu=false",
            "scaling.resources_per_worker={CPU = 1}"]
    return ["--preset", "deblurgan-smoke", "--store", store_uri, "--s3-endpoint", endpoint, "--name", name,
            "--workers", "2", "--no-progress", *[a for kv in sets for a in ("--set", kv)]]


@pytest.fixture(scope="module")
def dataset_store(two_nodes, s3_endpoint):
    import boto3

    bucket = f"multinode-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    store = Store.open(f"s3://{bucket}/x", s3_endpoint)
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    return bucket, store


def _check_run(store: Store, bucket: str, endpoint: str, name: str, gcs: str) -> None:
    import boto3

    keys = {o["Key"] for page in boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            .get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"x/runs/{name}/") for o in page.get("Contents", [])}
    for want in ("config.toml", "run.json", "metrics.jsonl", "timing.json"):
        assert f"x/runs/{name}/{want}" in keys, sorted(keys)
    assert any("checkpoint" in k for k in keys), sorted(keys)
    timing = store.child("runs", name).read_json("timing.json")
    sums = timing["replica_checksums"]
    assert timing["world_size"] == 2 and len(sums) == 2 and sums[0] == sums[1], sums
    nodes = store.child("runs", name).read_json("worker_nodes.json")
    assert len(nodes) == 2 and nodes[0] != nodes[1], nodes


def test_submit_train_spreads_two_workers_over_two_nodes_then_aggregate(two_nodes, dataset_store, s3_endpoint,
                                                                       tmp_path):
    """`asaptrain submit train` to the cluster's dashboard, as a user submits a job: the job's
    `train` (RAY_ADDRESS set by Ray) places its two workers on two nodes; then `asaptrain aggregate`
    of the bucket reports the run."""
    gcs, dashboard, _ = two_nodes
    bucket, store = dataset_store
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = _train_args(f"s3://{bucket}/x", s3_endpoint, "submitted")
    proc = subprocess.run([sys.executable, "-m", "asaptrain", "submit", "train", "--address", dashboard,
                           "--python", sys.executable, "--", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SUCCEEDED" in proc.stdout + proc.stderr
    _check_run(store, bucket, s3_endpoint, "submitted", gcs)
    run = store.child("runs", "submitted")
    assert run.read_json("run.json")["status"] == "finished"
    assert [r["step"] for r in map(json.loads, run.read_text("metrics.jsonl").splitlines())
            if r["kind"] == "train"] == [2, 4]
    assert run.list("samples")

    out = tmp_path / "report"
    agg = subprocess.run([sys.executable, "-m", "asaptrain", "aggregate", "--store", f"s3://{bucket}/x",
                          "--s3-endpoint", s3_endpoint, "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert agg.returncode == 0, agg.stdout[-3000:] + agg.stderr[-3000:]
    assert "submitted" in (out / "report.md").read_text()
    # Every model has a row in the tables, run or not: the submitted run must be in DeblurGAN's.
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["tasks"]["deblur"]["rows"] if r["model"] == "deblurgan")
    assert row["run"] == "submitted" and row["step"] == 4 and row["psnr"] is not None
    assert [r["name"] for r in report["runs"]] == ["submitted"]


def _leaks_in_files(root: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:  # sockets, files removed while walking
                continue
            found += [f"{path}: {p.decode()[:7]}…" for p in PLANTED if p in data]
    return found


def _leaks_in_bucket(endpoint: str, bucket: str, planted: list[bytes]) -> tuple[list[str], int]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    found, count = [], 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            count += 1
            data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            found += [f"s3://{bucket}/{obj['Key']}: {p.decode()[:7]}…" for p in planted if p in data]
    return found, count


def test_no_credential_in_store_runs_or_ray_logs(two_nodes, dataset_store, s3_endpoint):
    """After the submitted run above, a sweep driven from this process and a submitted job."""
    import ray

    from asaptrain import submit as sub
    from asaptrain.sweep.tune import sweep

    gcs, dashboard, temps = two_nodes
    bucket, store = dataset_store
    uri = f"s3://{bucket}/x"
    cfg = apply_overrides(get_preset("hybrid-smoke"), [
        f"storage.store={json.dumps(uri)}", f"storage.s3_endpoint={json.dumps(s3_endpoint)}", *RECIPE,
        "scaling.num_workers=1", "scaling.use_gpu=false"])
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=gcs, log_to_driver=False)
    try:
        summary = sweep(cfg, trials=1, name="planted-sweep", space={"optim.g_lr": {"choice": [1e-4]}},
                        search="random", progress=False)
    finally:
        ray.shutdown()
    assert [t["status"] for t in summary["trials"]] == ["finished"], summary["trials"]
    reference = store.child("sweeps", "planted-sweep").read_json("sweep.json")["reference"]
    assert reference["reused"] and reference["run"] == "submitted", reference
    assert store.exists("sweeps/planted-sweep/tune/tuner.pkl")  # what used to carry the keys
    job = sub.submit("aggregate", ["--out", os.path.join(temps[0], "report")], address=dashboard, store=uri,
                     s3_endpoint=s3_endpoint, python=sys.executable)
    state = sub.wait_for_job(job, dashboard, timeout_s=300)
    assert state == "SUCCEEDED", sub.logs(job, dashboard)[-3000:]

    in_bucket, objects = _leaks_in_bucket(s3_endpoint, bucket, [*PLANTED, RAY_TOKEN])
    in_ray = [leak for temp in temps for leak in _leaks_in_files(temp)]
    assert objects > 20 and any(Path(temps[0]).rglob("runtime_env_agent.log"))  # there was much to look through
    assert in_bucket + in_ray == [], "credentials written to:\n" + "\n".join(in_bucket + in_ray)
