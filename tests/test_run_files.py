"""A run's files on a local store and on the loopback S3 endpoint: appends, durable flushes, resume cut."""

from __future__ import annotations

import pytest

from asaptrain.data.store import Store
from asaptrain.train.run_files import RunFiles


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store.open(str(tmp_path))
    return Store.open(f"s3://{request.getfixturevalue('s3_bucket')}/x", request.getfixturevalue("s3_endpoint"))


def test_metrics_are_written_then_cut_back_on_resume(store):
    run = RunFiles(store, "r")
    for step in (1, 2):
        run.add_metrics({"step": step, "kind": "train"})
        run.flush()
    if store.is_s3:  # an object store waits for a durable flush instead of rewriting per log
        assert run.read_metrics() == []
    run.add_metrics({"step": 3, "kind": "train"})
    run.flush(durable=True)
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]
    run.truncate_after(2)  # resumed from the checkpoint at step 2
    run.add_metrics({"step": 3, "kind": "train", "again": True})
    run.flush(durable=True)
    records = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2, 3] and records[-1]["again"]


def test_non_finite_numbers_become_null(store):
    run = RunFiles(store, "n")
    run.add_metrics({"step": 1, "loss/g": float("nan")})
    run.flush(durable=True)
    assert run.read_metrics() == [{"step": 1, "loss/g": None}]
