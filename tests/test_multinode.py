"""Two real Ray nodes on one machine: a head and a second node (`ray start`, 2 CPUs each, their
own temp dirs and ports, loopback), data and checkpoints on the loopback S3 store. Training with
two workers placed on different nodes (SPREAD) over gloo, through `asaptrain submit train`; the
workers' node ids differ, their weights agree, the run is in the bucket, and `asaptrain aggregate`
reports it. (The CLI run against a cluster from outside, RAY_ADDRESS set by hand:
test_cluster_restart.py.)

The nodes come from conftest's ``ray_start``, which stops only the Ray processes it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_nodes(ray_start):
    """(GCS address, dashboard URL) of a head and a second node, 2 CPUs each, on 127.0.0.1."""
    nodes = ray_start(nodes=2)  # token auth is on: the nodes, the driver and submit share conftest's token
    return nodes.gcs, nodes.dashboard


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


def test_submit_train_spreads_two_workers_over_two_nodes_then_aggregate(two_nodes, dataset_store, s3_endpoint,
                                                                       tmp_path):
    """`asaptrain submit train` to the cluster's dashboard, as a user submits a job: the job's
    `train` (RAY_ADDRESS set by Ray) places its two workers on two nodes; then `asaptrain aggregate`
    of the bucket reports the run."""
    gcs, dashboard = two_nodes
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
    # Every model has a row in the tables, run or not: the submitted run must be in the hybrid's.
    report = json.loads((out / "report.json").read_text())
    row = next(r for r in report["tasks"]["deblur"]["rows"] if r["model"] == "hybrid")
    assert row["run"] == "submitted" and row["step"] == 4 and row["psnr"] is not None
    assert [r["name"] for r in report["runs"]] == ["submitted"]
