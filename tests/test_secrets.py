"""No credential reaches the store, the runs or Ray's logs: planted secrets after train, sweep, submit.

A Ray head of its own (``ray start --head``, its own temp dir) runs with the node's
own S3 credentials in its environment, as a cluster node would; this process, the driver, holds
different ones. After a train run and a sweep on an S3 store (real Ray, moto on loopback) and a
submitted job, neither the driver's nor the node's key id or secret may appear in any object in
the bucket or any file under the Ray temp dir (session logs, runtime-env agent log, Tune's
driver artifacts, spilled objects).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset

pytestmark = pytest.mark.slow

DRIVER = {"AWS_ACCESS_KEY_ID": f"DRVKEY{uuid.uuid4().hex[:14].upper()}",
          "AWS_SECRET_ACCESS_KEY": f"driver-secret-{uuid.uuid4().hex}"}
NODE = {"AWS_ACCESS_KEY_ID": f"NODEKEY{uuid.uuid4().hex[:13].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"node-secret-{uuid.uuid4().hex}"}
PLANTED = [v.encode() for v in (*DRIVER.values(), *NODE.values())]
RAY_TOKEN = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_bytes().strip()  # conftest's; a credential too


@pytest.fixture(scope="module")
def head(ray_start):
    """A Ray head whose environment holds NODE's credentials; this process holds DRIVER's.

    Yields ``(gcs address, dashboard URL, temp dir)``. Its own temp dir keeps its logs apart from
    every other Ray on the machine, and its address file there.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # Token auth stays on (conftest's token, on both sides): the submitted job goes through it too.
    saved = {k: os.environ.get(k) for k in DRIVER}
    os.environ.update(DRIVER)
    try:
        nodes = ray_start(env=NODE)  # the node's environment: this one's, NODE's credentials over DRIVER's
        ray.init(address=nodes.gcs, log_to_driver=False)
        yield nodes.gcs, nodes.dashboard, nodes.temp_dirs[0]
    finally:
        ray.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


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
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    found, count = [], 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            count += 1
            data = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            found += [f"s3://{bucket}/{obj['Key']}: {p.decode()[:7]}…" for p in planted if p in data]
    return found, count


def test_no_credential_in_store_runs_or_ray_logs(head, s3_endpoint, s3_bucket):
    from asaptrain import submit as sub
    from asaptrain.data.convert import convert
    from asaptrain.data.store import Store
    from asaptrain.data.synth import synth_plan
    from asaptrain.sweep.speed import reference_config, reference_preset
    from asaptrain.sweep.tune import sweep
    from asaptrain.train.launch import fit

    _, dashboard, temp = head
    uri = f"s3://{s3_bucket}/asap"
    store = Store.open(uri, s3_endpoint=s3_endpoint)
    convert(synth_plan("photos", 12, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    cfg = apply_overrides(get_preset("hybrid-smoke"), [
        f"storage.store={json.dumps(uri)}", f"storage.s3_endpoint={json.dumps(s3_endpoint)}", "train.steps=2",
        "train.log_every=1", "eval.every=2", "train.checkpoint_every=2", "train.sample_every=2",
        "scaling.num_workers=1", "scaling.use_gpu=false",
        "eval.images=4"])
    # The train run is DeblurGAN's reference recipe for the sweep after it, which reuses it rather
    # than training one more run.
    result = fit(reference_config(cfg, reference_preset(cfg)), name="planted", progress=False)
    assert result.status == "finished", result.error
    summary = sweep(cfg, trials=1, name="planted-sweep", space={"optim.g_lr": {"choice": [1e-4]}},
                    search="random", progress=False)
    assert [t["status"] for t in summary["trials"]] == ["finished"], summary["trials"]
    assert store.child("sweeps", "planted-sweep").read_json("sweep.json")["reference"]["run"] == "planted"
    assert store.exists("sweeps/planted-sweep/tune/tuner.pkl")  # what used to carry the keys
    job = sub.submit("aggregate", ["--out", os.path.join(temp, "report")], address=dashboard, store=uri,
                     s3_endpoint=s3_endpoint, python=sys.executable)
    state = sub.wait_for_job(job, dashboard, timeout_s=300)
    assert state == "SUCCEEDED", sub.logs(job, dashboard)[-3000:]

    in_bucket, objects = _leaks_in_bucket(s3_endpoint, s3_bucket, [*PLANTED, RAY_TOKEN])
    in_ray = _leaks_in_files(temp)
    assert objects > 20 and any(Path(temp).rglob("runtime_env_agent.log"))  # there was much to look through
    assert in_bucket + in_ray == [], "credentials written to:\n" + "\n".join(in_bucket + in_ray)


def test_trials_get_no_credentials_from_the_driver(monkeypatch):
    """Tune copies the driver's AWS_* variables into every trial's runtime env unless told not to."""
    import ray.tune.execution.class_cache as class_cache

    from asaptrain.data.s3 import keep_credentials_out_of_tune

    for name, value in DRIVER.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)
    keep_credentials_out_of_tune()

    class Trainable:
        pass

    remote = class_cache._ActorClassCache().get(Trainable)
    env = remote._default_options["runtime_env"]["env_vars"]
    assert env and not set(env) & set(DRIVER), env  # Tune's own settings still pass
