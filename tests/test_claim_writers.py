"""`import`, `evaluate` and the converters claim the folder they write, as `train`, `predict` and
`export` do: while another command holds it (a live owner, a fresh heartbeat) each is refused,
naming that command, and writes nothing; a claim whose owner died is taken over; each leaves no
claim behind when it ends."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from asaptrain.data.claim import CLAIM_FILE, ClaimRefused
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.evaluate import EvaluateConfig, evaluate
from asaptrain.importers import import_checkpoint
from test_evaluate import make_pairs, make_run
from test_import import DATA, FIXTURES, fixture_config


@pytest.fixture
def live_pid():
    """The pid of a process that is alive for the whole test (a claim's owner that has not died)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _plant(store: Store, folder: str, pid: int, command: str, age_s: float = 0.0) -> None:
    """A claim held by ``asaptrain COMMAND`` (pid on this host) with a heartbeat ``age_s`` old."""
    owner = {"host": socket.gethostname(), "pid": pid, "command": command}
    rel = f"{folder}/{CLAIM_FILE}" if folder else CLAIM_FILE
    store.write_json(rel, {"owner": owner, "token": "planted", "claimed": time.time() - age_s,
                           "heartbeat": time.time() - age_s})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _import(store: Store, name: str) -> dict:
    f = FIXTURES["deblurgan"]
    return import_checkpoint(f["importer"], str(DATA / f["file"]), fixture_config("deblurgan"), store, name,
                             f["preset"])


def test_import_is_refused_while_another_command_holds_the_run(tmp_path, live_pid):
    store = Store.open(str(tmp_path / "store"))
    _plant(store, "runs/mine", live_pid, "train")
    with pytest.raises(ClaimRefused, match=rf"run 'mine' .* is in use by `asaptrain train` \(pid {live_pid} "):
        _import(store, "mine")
    assert store.list("runs/mine", recursive=True) == [f"runs/mine/{CLAIM_FILE}"]  # nothing written
    meta = _import(store, "other")
    assert meta["status"] == "imported" and not store.exists(f"runs/other/{CLAIM_FILE}")


def test_import_takes_over_the_claim_of_an_import_that_died(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    _plant(store, "runs/mine", _dead_pid(), "import")
    assert _import(store, "mine")["status"] == "imported"
    assert not store.exists(f"runs/mine/{CLAIM_FILE}")


def test_evaluate_is_refused_while_another_command_holds_the_run(tmp_path, live_pid):
    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "deblur")
    ds = store.child("datasets", "pairs")
    make_pairs(ds)
    _plant(run, "", live_pid, "train --resume")
    ec = EvaluateConfig(run=run.uri, dataset=ds.uri, local=True)
    with pytest.raises(ClaimRefused, match=rf"is in use by `asaptrain train --resume` \(pid {live_pid} "):
        evaluate(ec)
    assert not [p for p in run.list(recursive=True) if p.startswith("eval-")]
    run.delete(CLAIM_FILE)
    assert evaluate(ec)["images"] == 3 and run.exists("eval-val.json") and not run.exists(CLAIM_FILE)


def test_a_conversion_is_refused_while_another_writes_the_dataset(tmp_path, live_pid):
    ds = Store.open(str(tmp_path / "store")).child("datasets", "synth-photos")
    _plant(ds, "", live_pid, "data gopro")
    with pytest.raises(ClaimRefused, match=rf"dataset .*synth-photos is in use by `asaptrain data gopro` "
                                           rf"\(pid {live_pid} "):
        convert(synth_plan("photos", 4, (32, 32), seed=0, val_count=1), ds)
    assert ds.list(recursive=True) == [CLAIM_FILE]


def test_a_rerun_conversion_takes_over_a_dead_ones_claim_and_leaves_none(tmp_path):
    ds = Store.open(str(tmp_path / "store")).child("datasets", "synth-photos")
    _plant(ds, "", _dead_pid(), "data synth")
    summary = convert(synth_plan("photos", 4, (32, 32), seed=0, val_count=1), ds)
    assert summary.splits["train"]["rows"] == 4 and ds.exists("manifest.json") and not ds.exists(CLAIM_FILE)


def test_a_conversion_into_s3_claims_there_too(s3_endpoint, s3_bucket, live_pid):
    ds = Store.open(f"s3://{s3_bucket}/datasets/photos", s3_endpoint=s3_endpoint)
    _plant(ds, "", live_pid, "data pairs")
    with pytest.raises(ClaimRefused, match="is in use by `asaptrain data pairs`"):
        convert(synth_plan("photos", 4, (32, 32), seed=0, val_count=1), ds)
    assert ds.list(recursive=True) == [CLAIM_FILE]
    ds.delete(CLAIM_FILE)
    convert(synth_plan("photos", 4, (32, 32), seed=0, val_count=1), ds)
    assert ds.exists("manifest.json") and not ds.exists(CLAIM_FILE)
