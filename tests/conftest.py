"""Shared fixtures: a real Ray on 2 CPUs and a real S3 endpoint on loopback.

The S3 endpoint is moto's threaded HTTP server: pyarrow's C++ client and boto3 talk to it
over HTTP exactly as they would to a user's MinIO.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import uuid

import pytest

# Credentials for the loopback endpoint only; set before any client is built.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-value")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Ray's token auth (2.60's default for a local cluster) is on for every Ray the tests start, heads
# started with `ray start` included, with one token of this process's own. One mode for the whole
# process: Ray caches the mode per process, so a test that switched it and switched it back would
# leave the next ray.init's driver and GCS disagreeing (InvalidAuthToken). The token file lives in a
# temp dir, so the user's ~/.ray is never touched.
_token_path = os.path.join(tempfile.mkdtemp(prefix="asaptrain-ray-auth-"), "auth_token")
with open(os.open(_token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as _fh:
    _fh.write(secrets.token_hex(32))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = _token_path
os.environ.pop("RAY_AUTH_TOKEN", None)


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


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray with 2 CPUs, shared by the tests of one module."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": a new Ray of its own, never one a stale /tmp/ray/ray_current_cluster names
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield ray
    ray.shutdown()
