"""Two real Ray nodes on one machine: a head and a second node (`ray start`, 2 CPUs each, their
own temp dirs and ports, loopback), data and checkpoints on the loopback S3 store. Training with
two workers placed on different nodes (SPREAD) over gloo, run directly and through
`asaptrain submit train`; the workers' node ids differ, their weights agree, the run is in the bucket.

Only the Ray processes these tests started are stopped, by their pids (found by the temp dirs in
their command lines): never `ray stop`, which would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from netports import free_block, free_ports

from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.slow


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free, so nothing collides with another Ray on this machine."""
    p, workers = free_ports(6), free_block(61)
    return [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}", f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}", f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]


def _pids_under(*dirs: str) -> list[int]:
    """Processes whose command line names one of ``dirs`` (the nodes' temp dirs): ours only."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(d in cmd for d in dirs):
            pids.append(int(entry.name))
    return pids


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([RAY, "start", *args], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ray start {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _stop(dirs: list[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_under(*dirs):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _pids_under(*dirs) and time.time() < deadline:
            time.sleep(0.3)


@pytest.fixture(scope="module")
def two_nodes():
    """(GCS address, dashboard URL) of a head and a second node, 2 CPUs each, on 127.0.0.1."""
    # Short paths: Ray's unix sockets live under the temp dir (at most ~107 bytes).
    dirs = [tempfile.mkdtemp(prefix="r2h", dir="/tmp"), tempfile.mkdtemp(prefix="r2w", dir="/tmp")]
    gcs, dash, client = free_ports(3)
    # Token auth is on (conftest's token): the nodes, the driver and submit present the same token.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)  # the nodes' workers import this checkout
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    common = ["--num-cpus=2", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
              "--object-store-memory=300000000"]  # 300 MB each: the machine is shared
    try:
        _ray_start(["--head", f"--port={gcs}", f"--temp-dir={dirs[0]}", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                    *common, *_node_ports()], env)
        _ray_start([f"--address=127.0.0.1:{gcs}", f"--temp-dir={dirs[1]}", *common, *_node_ports()], env)
        yield f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
    finally:
        _stop(dirs)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def _train_args(store_uri: str, endpoint: str, name: str) -> list[str]:
    return ["--preset", "hybrid-smoke", "--store", store_uri, "--s3-endpoint", endpoint, "--name", name,
            "--workers", "2", "--steps", "4", "--no-progress",
            "--set", "scaling.placement_strategy=\"SPREAD\"", "--set", "scaling.use_gpu=false",
            "--set", "scaling.resources_per_worker={CPU = 1}", "--set", "train.log_every=2",
            "--set", "train.checkpoint_every=4", "--set", "eval.every=4", "--set", "train.sample_every=4",
            "--set", "eval.images=4", "--set", "train.batch_size=4"]


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


def test_train_spreads_two_workers_over_two_nodes(two_nodes, dataset_store, s3_endpoint):
    gcs, _ = two_nodes
    bucket, store = dataset_store
    env = {**os.environ, "RAY_ADDRESS": gcs, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "asaptrain", "train",
                           *_train_args(f"s3://{bucket}/x", s3_endpoint, "spread")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_run(store, bucket, s3_endpoint, "spread", gcs)


def test_submit_train_to_the_two_node_cluster(two_nodes, dataset_store, s3_endpoint):
    gcs, dashboard = two_nodes
    bucket, store = dataset_store
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = _train_args(f"s3://{bucket}/x", s3_endpoint, "submitted")
    proc = subprocess.run([sys.executable, "-m", "asaptrain", "submit", "train", "--address", dashboard,
                           "--python", sys.executable, "--", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_run(store, bucket, s3_endpoint, "submitted", gcs)
    assert json.loads(json.dumps(store.child("runs", "submitted").read_json("run.json")))  # readable metadata
