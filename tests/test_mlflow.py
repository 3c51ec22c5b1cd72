"""`asaptrain train --mlflow URI`: a Ray Train run sends its curves to MLflow through Ray's
integration (``setup_mlflow`` in the rank-0 worker).

The tracking store is a real MLflow server on loopback with a sqlite backend when
``ASAPTRAIN_MLFLOW_SERVER`` names the ``mlflow`` executable of a full MLflow install (the
server needs Flask, SQLAlchemy, scikit-learn, ...; the package's ``mlflow`` extra is only the
client, mlflow-skinny), else MLflow's file backend. Skipped without the mlflow client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest
from netports import free_port

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.train.curves import MlflowTarget, TrackingError, check_mlflow
from asaptrain.train.run_files import RunFiles

mlflow = pytest.importorskip("mlflow")
RAY_SHARED = True  # conftest.ray_cluster


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    server = os.environ.get("ASAPTRAIN_MLFLOW_SERVER")
    if not server:
        # MLflow 3 refuses its file backend unless asked: conftest sets MLFLOW_ALLOW_FILE_STORE
        # before any Ray starts, so the shared Ray's workers have it.
        assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true"
        yield f"file://{root}/mlruns"
        return
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen([server, "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(1)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_unreachable_server_and_credentials_in_the_uri_fail_at_once():
    start = time.monotonic()
    with pytest.raises(TrackingError, match="does not answer"):
        check_mlflow(MlflowTarget(f"http://127.0.0.1:{free_port()}"), timeout_s=2)
    assert time.monotonic() - start < 10
    with pytest.raises(TrackingError, match="no credentials in the URI"):
        check_mlflow(MlflowTarget("http://user:secret@127.0.0.1:5000"))


@pytest.mark.slow
def test_train_sends_the_curves_to_mlflow(tracking_uri, ray_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    from asaptrain.train.launch import fit

    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=2), store.child("datasets", "synth-photos"))
    cfg = apply_overrides(get_preset("deblurgan-smoke"), [
        f"storage.store={json.dumps(store.uri)}", "train.steps=4", "train.log_every=2", "train.checkpoint_every=4",
        "eval.every=4", "train.sample_every=4", "eval.images=2", "scaling.num_workers=1", "scaling.use_gpu=false"])
    result = fit(cfg, preset="deblurgan-smoke", progress=False, mlflow=MlflowTarget(tracking_uri, "asaptrain-test"))
    assert result.status == "finished", result.error

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("asaptrain-test").experiment_id])
    assert [r.info.run_name for r in runs] == [result.name]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/g")] == [2, 4]
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "images_per_s"))
    for key in ("loss/d", "lr/g", "blur_strength", "val/psnr", "val/ssim"):
        assert key in run.data.metrics, key
    assert run.data.params["model.name"] == "deblurgan" and run.data.params["train.steps"] == "4"
    assert "samples/00000004.png" in [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    # The same Ray worker wrote TensorBoard's event files into the run directory.
    assert any("tfevents" in n for n in RunFiles(store, result.name).dir.list(""))
