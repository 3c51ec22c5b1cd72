"""Claims of run and output folders (data/claim.py), on a local disk and on the loopback S3 endpoint.

Two processes that claim one folder at the same moment: exactly one gets it, the other is told
who holds it. A held claim's heartbeat moves; a claim whose owner died is taken over by a
resume, and only by one taker.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import pytest

from asaptrain.data.claim import CLAIM_FILE, ClaimRefused, claim
from asaptrain.data.store import Store
from asaptrain.errors import UserError


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store.open(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return Store.open(f"s3://{bucket}/store", s3_endpoint=endpoint)


def _plant(store: Store, rel: str, owner: dict, age_s: float) -> None:
    """A claim another command left: its owner and a heartbeat ``age_s`` seconds old."""
    store.write_json(rel, {"owner": owner, "token": "planted", "claimed": time.time() - age_s,
                           "heartbeat": time.time() - age_s})


def test_one_holder_and_the_second_is_told_who(store):
    held = claim(store, "runs/a", {"host": "h1", "pid": 11, "command": "train"}, what="run 'a'")
    try:
        record = store.read_json(f"runs/a/{CLAIM_FILE}")
        assert record["owner"] == {"host": "h1", "pid": 11, "command": "train"}
        with pytest.raises(ClaimRefused, match=r"run 'a' is in use by `asaptrain train` \(pid 11 on host h1\)"):
            claim(store, "runs/a", what="run 'a'")
    finally:
        held.release()
    assert not store.exists(f"runs/a/{CLAIM_FILE}")
    claim(store, "runs/a").release()  # free again


def test_the_heartbeat_moves_while_held(store):
    held = claim(store, "out", heartbeat_s=0.2)
    try:
        first = store.read_json(f"out/{CLAIM_FILE}")["heartbeat"]
        deadline = time.time() + 10
        while store.read_json(f"out/{CLAIM_FILE}")["heartbeat"] == first:
            assert time.time() < deadline, "the heartbeat never moved"
            time.sleep(0.1)
        assert not held.lost
    finally:
        held.release()


def test_a_stale_claim_is_taken_over_only_when_allowed(store):
    _plant(store, f"runs/b/{CLAIM_FILE}", {"host": "elsewhere", "pid": 5}, age_s=120)
    with pytest.raises(ClaimRefused, match="stopped 1[0-9]{2} s ago .* resume it"):
        claim(store, "runs/b", take_stale=False, stale_s=60)
    held = claim(store, "runs/b", take_stale=True, stale_s=60)
    try:
        assert store.read_json(f"runs/b/{CLAIM_FILE}")["owner"]["pid"] == os.getpid()
    finally:
        held.release()
    _plant(store, f"runs/c/{CLAIM_FILE}", {"host": "elsewhere", "pid": 5}, age_s=10)
    with pytest.raises(ClaimRefused, match="in use by pid 5 on host elsewhere"):
        claim(store, "runs/c", take_stale=True, stale_s=60)  # fresh: the owner may be alive


def test_an_owner_on_this_host_that_died_is_stale_at_once(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _plant(store, f"runs/d/{CLAIM_FILE}", {"host": socket.gethostname(), "pid": int(dead.stdout)}, age_s=1)
    claim(store, "runs/d", stale_s=3600).release()


def test_a_claim_taken_over_is_lost_to_its_old_holder(store):
    held = claim(store, "runs/e", heartbeat_s=3600)
    _plant(store, f"runs/e/{CLAIM_FILE}", {"host": "other", "pid": 9}, age_s=0)  # as if taken over
    held.beat()
    assert held.lost
    held.release()  # leaves the new holder's claim alone
    assert store.read_json(f"runs/e/{CLAIM_FILE}")["owner"]["host"] == "other"


def _race(uri: str, endpoint: str | None, go, start_at, done, queue) -> None:
    store = Store.open(uri, s3_endpoint=endpoint)
    queue.put(("ready", os.getpid()))
    go.wait(timeout=120)  # every process has imported and opened the store
    time.sleep(max(0.0, start_at.value - time.time()))
    try:
        held = claim(store, "runs/race", heartbeat_s=3600)
        queue.put(("won", os.getpid()))
        done.wait(timeout=120)  # held until every other process has tried
        held.release()
    except ClaimRefused as exc:
        queue.put(("refused", str(exc)))


@pytest.mark.parametrize("stale", [False, True], ids=["new", "taking-over-a-stale-claim"])
def test_processes_claiming_at_the_same_moment_get_one_winner(store, stale):
    """Four processes released at one instant, onto an empty folder or onto a dead command's claim."""
    if stale:
        _plant(store, f"runs/race/{CLAIM_FILE}", {"host": "gone", "pid": 1}, age_s=3600)
    ctx = mp.get_context("spawn")
    queue, go, done, start_at = ctx.Queue(), ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_race, args=(store.uri, store.endpoint, go, start_at, done, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        assert [queue.get(timeout=120)[0] for _ in procs] == ["ready"] * 4
        start_at.value = time.time() + 0.5  # one instant for all four
        go.set()
        results = [queue.get(timeout=120) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(timeout=60)
    won = [r for r in results if r[0] == "won"]
    assert len(won) == 1, results
    for kind, text in results:
        if kind == "refused":
            assert f"pid {won[0][1]} on host {socket.gethostname()}" in text, text


def test_s3_store_honours_conditional_writes(s3_endpoint, s3_bucket):
    from asaptrain.data import claim as claim_mod

    store = Store.open(f"s3://{s3_bucket}/x", s3_endpoint=s3_endpoint)
    claim_mod._probed.pop((store.endpoint, store.bucket), None)
    claim(store, "p").release()
    assert claim_mod._probed[(store.endpoint, store.bucket)] is True
    assert store.list("", recursive=True) == []  # the probe object is gone too


def test_the_claim_record_is_json_with_owner_and_heartbeat(tmp_path):
    store = Store.open(str(tmp_path))
    with claim(store, "o") as held:
        record = json.loads((tmp_path / "o" / CLAIM_FILE).read_text())
        assert set(record) >= {"owner", "token", "claimed", "heartbeat"}
        assert record["owner"]["host"] == socket.gethostname() and record["owner"]["pid"] == os.getpid()
        assert held.uri.endswith(f"o/{CLAIM_FILE}")
    assert not (tmp_path / "o").exists()  # the folder the claim made is gone again, being empty


def test_another_commands_claim_in_the_making_is_not_the_folders_content(tmp_path):
    """A claim on a local store is made by linking a finished temp file that the claiming command
    writes into the folder first. The command that holds the folder's claim can meet another's
    temp file there for a moment; it is no file of the folder's: two `train --name dup` started
    together once ended with the claim's holder refusing its own new run ("a run named 'dup'
    exists") and the other training it. Likewise for `import` and `predict --out`."""
    from asaptrain.config.presets import get_preset
    from asaptrain.data import claim as claim_mod
    from asaptrain.data.outputs import check_out_folder
    from asaptrain.importers import _refuse_existing
    from asaptrain.train.launch import choose_name
    from asaptrain.train.run_files import RunFiles

    store = Store.open(str(tmp_path))
    checks = {
        "runs/dup": lambda: choose_name(store, get_preset("deblurgan-smoke"), None, "dup", None) == ("dup", 0),
        "runs/imported": lambda: _refuse_existing(RunFiles(store, "imported"), "imported") is None,
        "out": lambda: check_out_folder(store.child("out"), store.child("in"), {"run": "r"}) is False,
    }
    for folder, folder_is_free in checks.items():
        with claim(store, folder):
            claim_mod._local_tmp(store, f"{folder}/{CLAIM_FILE}", {"owner": {"pid": 1}})  # the other command's
            assert folder_is_free(), folder
            (tmp_path / folder / "written.txt").write_text("x")  # a file of the folder's own is still one
            with pytest.raises(UserError, match="exists|not empty"):
                folder_is_free()
