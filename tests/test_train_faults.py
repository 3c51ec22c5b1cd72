"""How runs under real Ray end when things go wrong: a store outage, a read-only store, Ctrl-C,
a non-finite loss, a damaged checkpoint and a torn metrics line. Each leaves run.json saying
what happened, with the first cause, and a resume loses nothing.

The outage is real: a loopback TCP proxy in front of the moto S3 server refuses connections
for a while (stopping moto itself would lose its in-memory bucket).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from ray_actors import actors_started

from asaptrain.config.io import apply_overrides, replace
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.train.launch import fit
from asaptrain.train.run_files import RunFiles
from asaptrain.train.resume import checkpoint_names

pytestmark = pytest.mark.slow


class FlakyProxy:
    """``127.0.0.1:port`` forwarding to ``upstream``; ``down()`` refuses new connections and cuts
    open ones (what a client sees of a server that went away), ``up()`` serves again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        with self._lock:
            for s in list(self._open):
                # shutdown() first: close() alone neither wakes a pump blocked in recv() on the socket
                # nor sends the client anything, so a request in flight waited for its read timeout.
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by its pump
                    pass
                s.close()
            self._open.clear()

    def outage(self, seconds: float) -> None:
        self.down()
        time.sleep(seconds)
        self.up()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()
            with self._lock:
                self._open -= {src, dst}


def test_the_flaky_proxy_cuts_a_request_in_flight():
    """An outage must end a request that is waiting for its answer at once, as a server that went
    away does: a client left waiting until its own read timeout (60 s) sees no outage at all."""
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(1)
    proxy = FlakyProxy(upstream.getsockname())
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    held = None
    try:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        held, _ = upstream.accept()  # the request arrived; no answer comes
        time.sleep(0.2)  # both of the proxy's pumps are now waiting in recv()
        started = time.monotonic()
        proxy.down()
        try:
            answer = client.recv(1)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" and time.monotonic() - started < 5
    finally:
        for s in (client, held, upstream):
            if s is not None:
                s.close()


def smoke_cfg(store: Store, *extra: str):
    return apply_overrides(get_preset("deblurgan-smoke"), [
        f"storage.store={json.dumps(store.uri)}", "scaling.num_workers=1", "scaling.use_gpu=false",
        "train.log_every=1", "train.checkpoint_every=5", "eval.every=1000", "train.sample_every=1000", *extra])


def when_step(files: RunFiles, step: int, action, timeout_s: float = 300) -> threading.Thread:
    """Run ``action()`` on a thread once the run's progress.json reaches ``step``."""

    def watch() -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            p = files.read_progress()
            if p and p["step"] >= step:
                action()
                return
            time.sleep(0.25)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def train_steps(files: RunFiles) -> list[int]:
    return [r["step"] for r in files.read_metrics() if r["kind"] == "train"]


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, ray_cluster):
    store = Store.open(str(tmp_path_factory.mktemp("store")))
    convert(synth_plan("photos", 16, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    return store


def test_ctrl_c_marks_the_run_interrupted(local_store, ray_cluster):
    """The CLI in its own process (a driver of the test's cluster): SIGINT (Ctrl-C) mid-run leaves
    run.json 'interrupted' with how to resume."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    # SIGINT as a terminal delivers it, even where this test runs with SIGINT ignored (a shell's
    # background job), which the command would inherit and so never see its Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "asaptrain", "train", "--preset", "deblurgan-smoke", "--store",
                             local_store.uri, "--name", "ctrl-c", "--steps", "500", "--workers", "1",
                             "--gpus-per-worker", "0", "--no-progress", "--set", "train.log_every=1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    files = RunFiles(local_store, "ctrl-c")
    try:
        when_step(files, 2, lambda: proc.send_signal(signal.SIGINT), timeout_s=240).join()
        out, _ = proc.communicate(timeout=120)
    finally:  # a command left running would hold this module's Ray CPUs, and the next test's run wait forever
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    run = files.read_run()
    assert run["status"] == "interrupted", (run, out[-3000:])
    assert "Ctrl-C" in run["error"] and "--resume ctrl-c" in run["error"]
    assert "--resume ctrl-c" in out


def test_nonfinite_loss_stops_the_run_without_retries(local_store):
    before, splits = actors_started("RayTrainWorker"), actors_started("SplitCoordinator")
    cfg = smoke_cfg(local_store, "train.steps=6", "optim.g_lr=1e30", "optim.d_lr=1e30", "train.max_failures=2")
    result = fit(cfg, name="nan", progress=False)
    assert result.status == "failed" and "non-finite" in result.error and "step 1" in result.error, result.error
    run = RunFiles(local_store, "nan").read_run()
    assert run["status"] == "failed" and "non-finite" in run["error"]
    # one worker group: FailureConfig(max_failures=2) did not restart it
    assert actors_started("RayTrainWorker") - before == 1
    assert actors_started("SplitCoordinator") == splits  # one worker reads its dataset whole: nothing to split


def _read_only(path: str, on: bool) -> None:
    """Make a directory refuse new files (root ignores mode bits, not the immutable flag)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if on else "-i", path], check=True)
    else:
        os.chmod(path, 0o555 if on else 0o755)


def test_read_only_store_fails_the_run_and_marks_it_once_writable(local_store):
    files = RunFiles(local_store, "read-only")
    cfg = smoke_cfg(local_store, "train.steps=200", "train.max_failures=0")
    restored = threading.Event()

    def lock_then_unlock() -> None:
        _read_only(files.dir.root, True)
        time.sleep(8)  # the run fails meanwhile; the driver keeps trying to mark run.json
        _read_only(files.dir.root, False)
        restored.set()

    watcher = when_step(files, 3, lock_then_unlock)
    try:
        result = fit(cfg, name="read-only", progress=False)
    finally:
        watcher.join(timeout=30)
        if not restored.is_set():
            _read_only(files.dir.root, False)
    assert result.status == "failed"
    assert "not permitted" in result.error or "Permission denied" in result.error, result.error
    run = files.read_run()
    assert run["status"] == "failed" and run["error"] == result.error


def test_s3_outage_is_ridden_out_or_ends_the_run_clearly_and_resume_loses_nothing(s3_endpoint, s3_bucket,
                                                                                    ray_cluster, capsys):
    host, port = s3_endpoint.rsplit("/", 1)[-1].split(":")
    proxy = FlakyProxy((host, int(port)))
    store = Store.open(f"s3://{s3_bucket}/flaky", proxy.url)
    # 64 rows: 16 steps an epoch, so the outages fall on the run's own writes (every step), not on
    # an epoch's shard read, which Ray Data retries as a task: it rode out a 15 s outage with
    # outage_s = 4 when the long outage began at an epoch's start.
    convert(synth_plan("photos", 64, (64, 64), seed=0, val_count=4), store.child("datasets", "synth-photos"))
    # The default storage.outage_s (60 s): a 15 s outage mid-run, under Ray's controller and
    # workers (data reads, metrics, the step-10 checkpoint), costs no step and the run finishes.
    cfg = smoke_cfg(store, "train.steps=20", f"storage.s3_endpoint={json.dumps(proxy.url)}", "train.max_failures=0")
    assert cfg.storage.outage_s == 60
    files = RunFiles(store, "outage")
    timeline: dict[str, float] = {}
    watcher = when_step(files, 8, lambda: (timeline.setdefault("15s", time.time()), proxy.outage(15)))
    result = fit(cfg, name="outage", progress=False)
    watcher.join(timeout=60)
    assert "15s" in timeline and result.status == "finished", result.error
    assert time.time() - timeline["15s"] > 15  # the run was still going when the store came back
    assert train_steps(files) == list(range(1, 21))

    # Longer than outage_s: a 15 s outage with outage_s = 4 ends the resumed run within the
    # limit, with the first cause, and run.json says so.
    steps = 30
    cfg = replace(cfg, {"train.steps": steps, "storage.outage_s": 4.0})
    watcher = when_step(files, 24, lambda: (timeline.setdefault("long", time.time()), proxy.outage(15)))
    result = fit(cfg, resume="outage", progress=False)
    ended = time.time()
    watcher.join(timeout=60)
    assert "long" in timeline, f"the run ended before the long outage: {result.error}"
    assert result.status == "failed"
    assert ended - timeline["long"] < 300
    # The first cause: the endpoint could not be reached (not a follow-up error of the driver).
    assert "reach" in result.error and "127.0.0.1" in result.error, result.error
    run = files.read_run()
    assert run["status"] == "failed" and run["error"] == result.error
    done = train_steps(files)  # on S3 records are flushed with each checkpoint (every 5 steps)
    assert len(done) >= 20 and done == list(range(1, len(done) + 1)), done

    # Damage what a crash could leave behind: a newest checkpoint that does not load, a torn line.
    names = checkpoint_names(files.dir)  # Ray's checkpoint_manager_snapshot.json is not one
    newest = f"{names[-1]}/state.pt"
    files.dir.write_bytes(newest, files.dir.read_bytes(newest)[:1000])
    files.dir.write_text("metrics.jsonl", files.dir.read_text("metrics.jsonl") + '{"step": 99, "ki')
    capsys.readouterr()
    resumed = fit(cfg, resume="outage", progress=False)
    assert resumed.status == "finished", resumed.error
    said = capsys.readouterr().out
    assert f"{newest} does not load" in said and "continuing from" in said, said
    assert train_steps(files) == list(range(1, steps + 1))  # every step exactly once
    assert files.read_run()["status"] == "finished" and files.read_run()["error"] is None
