"""Shared fixtures: a real Ray on 2 CPUs, Ray nodes started with `ray start`, and a real S3
endpoint on loopback.

The S3 endpoint is moto's threaded HTTP server: pyarrow's C++ client and boto3 talk to it
over HTTP exactly as they would to a user's MinIO.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from netports import free_block, free_ports

# Credentials for the loopback endpoint only; set before any client is built.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MLflow 3 refuses its file backend (test_mlflow's tracking store) unless asked; set before any Ray
# starts, so the workers of the Ray that test_mlflow shares with other modules have it.
os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
# Ray Train's controller polls its workers every 2 s (start, reports, the end) and starts a cloud
# preemption watcher actor for every run; a test run is seconds long, and there is no cloud.
# Measured on 2 cores: a 4-step two-worker run 24-25 s with the defaults, 20 s with these. The
# driver hands both to the controller, and every command the tests start inherits them.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# A raylet keeps at most num_cpus (2 here) worker processes and kills the idle ones past that
# after 1 s. A Ray Train run alone holds about nine actors (controller, workers, Ray Data's
# coordinators), so a Ray Data read or decode task often started a fresh Python process (Ray,
# numpy, pyarrow imported anew) that was killed a second after its task. Idle workers now live a
# minute, so the next epoch's tasks find them. (Raising the soft limit as well measured no better.)
os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", "60000")

# Ray's token auth (2.60's default for a local cluster) is on for every Ray the tests start, heads
# started with `ray start` included, with one token of this process's own. One mode for the whole
# process: Ray caches the mode per process, so a test that switched it and switched it back would
# leave the next ray.init's driver and GCS disagreeing (InvalidAuthToken). The token file lives in a
# temp dir, so the user's ~/.ray is never touched.
_token_dir = tempfile.mkdtemp(prefix="asaptrain-ray-auth-")
atexit.register(shutil.rmtree, _token_dir, True)  # this process's Rays have ended by then
_token_path = os.path.join(_token_dir, "auth_token")
with open(os.open(_token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as _fh:
    _fh.write(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = _token_path
os.environ.pop("RAY_AUTH_TOKEN", None)


FILE_SECONDS = json.loads((Path(__file__).with_name("file_seconds.json")).read_text())["seconds"]
"""Seconds each test file takes (tests/file_seconds.json): the longest start first."""


def pytest_configure(config):
    # pytest-xdist's --dist loadfile hands out files with the most tests first, which left the
    # long files of few tests (the smoke study, the sweep, the GPU rehearsal) for the end: one
    # worker ran on alone for two minutes. Files go out in collection order instead, which
    # pytest_collection_modifyitems makes longest first.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    # Where PYTHONDONTWRITEBYTECODE is set (it is on the 2-core machines these tests were timed
    # on), no process caches the package's bytecode, and every Ray worker, command and driver the
    # tests start compiled the modules it imports anew (0.2-0.5 s of CPU for a driver's imports,
    # hundreds of processes). Compiled once here, before any test; Python reads the cache with or
    # without that variable.
    if not hasattr(config, "workerinput"):  # the main process, before xdist's workers start
        import compileall

        compileall.compile_dir(str(ROOT / "asaptrain"), quiet=1)


def pytest_collection_modifyitems(session, config, items):
    """The longest files first (each file's tests keep their order): the order xdist hands them out.

    The modules that share one Ray (``RAY_SHARED``) go out together, first, as if they were one
    file: a worker then takes them one after another and starts that Ray once."""
    order = {item: i for i, item in enumerate(items)}
    shared = {item.path.name for item in items if getattr(item.module, "RAY_SHARED", False)}
    together = sum(FILE_SECONDS.get(name, 0) for name in shared)

    def seconds(item) -> float:
        return together if item.path.name in shared else FILE_SECONDS.get(item.path.name, 0)

    items.sort(key=lambda item: (-seconds(item), item.path.name not in shared, order[item]))


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (started once per session)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the loopback endpoint; returns its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


_SHARED: dict[str, bool] = {"up": False}
"""Whether the Ray of :func:`ray_cluster` that modules with ``RAY_SHARED = True`` share is up."""


def _ray_init(dashboard: bool) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": a new Ray of its own, never one a stale /tmp/ray/ray_current_cluster names
    ray.init(address="local", num_cpus=2, include_dashboard=dashboard, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})


def _end_shared() -> None:
    if _SHARED["up"]:
        import ray

        _SHARED["up"] = False
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A real local Ray with 2 CPUs, shared by the tests of one module, with Ray's dashboard (the
    state API: sweeps, actor counts).

    A module that sets ``RAY_SHARED = True`` instead gets one Ray without a dashboard that it
    shares with the modules run right before and after it in this process that set it too: a
    Ray's start and stop (about 10 s of CPU on 2 cores) and its first run's cold worker processes
    (about 10 s more) are paid once for all of them. Such a module kills no Ray process, asks
    nothing of the state API, and sets nothing in the environment that Ray's workers must inherit
    (they inherit the environment of the module that started the Ray). The first test of a module
    without it ends the shared Ray (``pytest_runtest_setup``).

    A Ray of its own per module otherwise: when one Ray outlived its module, a sweep in a later
    module waited for CPUs that never came free, after a module that kills drivers and workers had
    run on it."""
    import ray

    if getattr(request.module, "RAY_SHARED", False):
        if not (_SHARED["up"] and ray.is_initialized()):
            _ray_init(dashboard=False)
            _SHARED["up"] = True
        yield ray
        return
    _end_shared()
    _ray_init(dashboard=True)
    yield ray
    ray.shutdown()


def pytest_runtest_setup(item):
    if _SHARED["up"] and not getattr(item.module, "RAY_SHARED", False):
        _end_shared()


def pytest_sessionfinish(session, exitstatus):
    _end_shared()


ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class RayNodes:
    """Ray nodes started by :func:`ray_start`."""

    gcs: str
    """The head's GCS address, ``127.0.0.1:PORT`` (``ray.init(address=...)``, ``RAY_ADDRESS``)."""
    dashboard: str
    """The head's dashboard URL (job submission)."""
    temp_dirs: list[str]
    """Each node's own temp dir (head first): its logs, sockets and address file."""


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free, so nothing collides with another Ray on this machine."""
    p, workers = free_ports(6), free_block(61)
    return [f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}", f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}", f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}", f"--min-worker-port={workers[0]}", f"--max-worker-port={workers[-1]}"]


def _pids_under(dirs: list[str]) -> list[int]:
    """Processes whose command line names one of ``dirs`` (the nodes' temp dirs), or that hold a
    file open under one: ours only. (A node's dashboard agent renames its command line to
    ``ray::DashboardAgent``; left behind by its stopped node, it kept a quarter of a CPU busy.)"""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(d in cmd for d in dirs) or _holds_a_file_under(entry, dirs):
            pids.append(int(entry.name))
    return pids


def _holds_a_file_under(proc: Path, dirs: list[str]) -> bool:
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if any(target.startswith(d + os.sep) for d in dirs):
            return True
    return False


def _stop_nodes(dirs: list[str]) -> None:
    """End the nodes' processes by pid (never `ray stop`, which ends every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_under(dirs):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while _pids_under(dirs) and time.time() < deadline:
            time.sleep(0.3)


def _ray_start_node(args: list[str], env: dict[str, str], temp: str, attempts: int = 3) -> None:
    """`ray start ARGS`; started again (its processes ended first) when the node timed out registering.

    `ray start` waits a fixed 30 s for a new node's raylet to register with the GCS; on a loaded
    2-core machine (a Ray Train run and the GPU rehearsal beside it) a second node once took longer.
    """
    for attempt in range(attempts):
        proc = subprocess.run([RAY, "start", *args, *_node_ports()], env=env, capture_output=True, text=True,
                              timeout=120)
        said = f"ray start {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if proc.returncode == 0:
            return
        assert "timed out during startup" in proc.stderr + proc.stdout and attempt + 1 < attempts, said
        _stop_nodes([temp])


def _wait_for_port(port: int, what: str, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                pytest.fail(f"{what} did not open 127.0.0.1:{port} within {timeout_s:.0f} s")
            time.sleep(1)


@pytest.fixture(scope="module")
def ray_start():
    """Start Ray nodes of their own on 127.0.0.1 with `ray start`, as a cluster's are started::

        nodes = ray_start(nodes=2, env={"AWS_ACCESS_KEY_ID": ...})   # a head and one more node

    Each node gets 2 CPUs (``cpus``), no GPU, 300 MB of object store, its own short temp dir and
    free ports, this checkout on its PYTHONPATH, and conftest's auth token; ``env`` is added to
    their environment (this process's, without ``RAY_ADDRESS``). Returns :class:`RayNodes` once
    the dashboard and its job agent answer. Every node started is stopped, by the pids under its
    temp dir, when the module's tests are done."""
    started: list[str] = []

    def start(nodes: int = 1, env: dict[str, str] | None = None, cpus: int = 2) -> RayNodes:
        # Short paths: Ray's unix sockets live under the temp dir (at most ~107 bytes).
        dirs = [tempfile.mkdtemp(prefix="rn", dir="/tmp") for _ in range(nodes)]
        started.extend(dirs)
        gcs, dash, client = free_ports(3)
        common = [f"--num-cpus={cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                  "--object-store-memory=300000000"]  # the machine is shared
        for i, temp in enumerate(dirs):
            node_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            node_env.update({"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": temp,
                             "PYTHONUNBUFFERED": "1", **(env or {})})
            first = ["--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-port={dash}", f"--ray-client-server-port={client}"] if i == 0 \
                else [f"--address=127.0.0.1:{gcs}"]
            _ray_start_node([*first, f"--temp-dir={temp}", *common], node_env, temp)
        _wait_for_port(dash, "the Ray head's dashboard")
        time.sleep(3)  # the job agent starts after the dashboard
        return RayNodes(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", dirs)

    try:
        yield start
    finally:
        _stop_nodes(started)
        for d in started:
            shutil.rmtree(d, ignore_errors=True)
