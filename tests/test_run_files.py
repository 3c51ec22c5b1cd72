"""A run's files on a local store and on the loopback S3 endpoint: appends, durable flushes, resume cut."""

from __future__ import annotations

import pytest

from asaptrain.data.store import Store
from asaptrain.train.run_files import MetricsError, RunFiles


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


def test_torn_last_line_is_dropped_and_a_bad_middle_line_is_named(store):
    run = RunFiles(store, "t")
    run.add_metrics({"step": 1, "kind": "train"})
    run.add_metrics({"step": 2, "kind": "train"})
    run.flush(durable=True)
    good = run.dir.read_text("metrics.jsonl")
    run.dir.write_text("metrics.jsonl", good + '{"step": 3, "kin')  # a crash mid-append
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.truncate_after(2)  # what a resume does: the torn line is gone from the file too
    assert run.dir.read_text("metrics.jsonl") == good
    run.dir.write_text("metrics.jsonl", '{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl line 2"):
        run.read_metrics()
