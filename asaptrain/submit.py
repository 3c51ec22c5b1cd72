"""Submitting asaptrain's Ray jobs: entrypoint, runtime env without secrets, token auth, log following.

A thin layer over ``ray.job_submission.JobSubmissionClient``. What this module adds:

- the job names (``train``, ``tune``, ``aggregate``, ``experiment``) mapped to ``jobs/*.py``;
- a ``runtime_env`` that ships the project directory (minus ``.git``, stores, wheels, outputs)
  and only non-secret settings. Runtime-env values and entrypoints are job metadata, visible in
  the dashboard and to anyone who can list jobs, so a secret there is refused, never sent:
  S3 credentials reach the job from the cluster's own environment (instance role, node env,
  or a Kubernetes Secret);
- the Ray auth token (Ray 2.52+ token authentication; on by default for ``ray.init()``
  clusters) presented as an ``Authorization: Bearer`` header. The job client only attaches it
  itself when ``RAY_AUTH_MODE=token`` is set in the submitting shell; we look it up the way
  Ray does (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) and pass it
  explicitly. The token itself is never printed.

Used by ``asaptrain submit`` and ``asaptrain jobs ...`` (``asaptrain/cli/jobs_cmd.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from asaptrain.config.validate import reject_url_credentials
from asaptrain.errors import UserError

JOB_SCRIPTS = {
    "train": "jobs/train.py",
    "tune": "jobs/tune_hybrid.py",
    "aggregate": "jobs/aggregate.py",
    "experiment": "jobs/experiment.py",
}
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# gitignore-style patterns Ray's working_dir packaging skips (on top of .gitignore).
EXCLUDES = [".git", ".venv", "/asaptrain-store", "/.whl", "*.whl", "/out", "/runs", "__pycache__",
            ".pytest_cache", "*.egg-info"]
# Names that carry credentials; names with a secret-sounding part (_looks_secret) are refused too.
SECRET_ENV_NAMES = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN",
                    "AWS_SECURITY_TOKEN", "RAY_AUTH_TOKEN")
_SECRET_PARTS = {"SECRET", "PASSWORD", "PASSWD", "PASS", "TOKEN", "CREDENTIAL", "CREDENTIALS", "PRIVATE", "APIKEY"}
_SECRET_INFIXES = ("SECRET", "PASSWORD", "ACCESS_KEY", "API_KEY")
_NOT_SECRET_VALUES = {"true", "false", "none", "null", "yes", "no", "auto", "disabled", "enabled"}
_URL_CREDENTIALS = re.compile(r"://[^/@\s]+@")  # scheme://user:password@host
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_RETRIES, AGENT_RETRY_S = 5, 3.0


class SubmitError(UserError):
    """A job that cannot be submitted or followed as asked; the message says what to do."""


# ----------------------------------------------------------------------------- what is sent


def project_root() -> Path:
    """The directory shipped as the job's working_dir: the one holding pyproject.toml and jobs/."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "jobs").is_dir():
        raise SubmitError(f"{root} is not an asaptrain checkout (no pyproject.toml and jobs/); "
                          "run `asaptrain submit` from an editable install (pip install -e .)")
    return root


MIN_SECRET_LEN = 4
"""Shorter values of secret variables are not looked for (they would match ordinary arguments)."""
SUBSTRING_SECRET_LEN = 8
"""Values at least this long are refused inside a longer value too, shorter ones only as the whole value."""


def _ray_token_files() -> list[Path]:
    files = [Path.home() / ".ray" / "auth_token"]
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        files.insert(0, Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser())
    return files


def _secret_values() -> dict[str, str]:
    """Where each secret now in reach comes from (a variable's name, or the Ray token file) ->
    its value: every variable whose name marks it secret (AWS_SECRET_ACCESS_KEY, *_PASSWORD,
    *_TOKEN, MLFLOW_TRACKING_PASSWORD, RAY_AUTH_TOKEN, ...) and the Ray auth token, to catch a
    secret passed under another name, in an argument or as the submission id."""
    found = {f"${n}": v.strip() for n, v in os.environ.items() if _looks_secret(n) and len(v.strip()) >= MIN_SECRET_LEN}
    for path in _ray_token_files():
        try:
            token = path.read_text().strip()
        except OSError:
            continue
        if len(token) >= MIN_SECRET_LEN:
            found.setdefault("the Ray auth token", token)
    # Switches and numbers under secret-sounding names (HF_HUB_DISABLE_TOKEN=1) are not secrets.
    return {source: value for source, value in found.items()
            if value.lower() not in _NOT_SECRET_VALUES and not value.replace(".", "", 1).isdigit()}


def _holds_secret(text: str, secrets_: dict[str, str]) -> str | None:
    """The source of the secret ``text`` holds (its whole value, or a long one inside it), else None."""
    for source, value in secrets_.items():
        if text.strip() == value or (len(value) >= SUBSTRING_SECRET_LEN and value in text):
            return source
    return None


def _looks_secret(name: str) -> bool:
    """HF_TOKEN, WANDB_API_KEY, MINIO_ROOT_PASSWORD: yes; TOKENIZERS_PARALLELISM: no."""
    upper = name.upper()
    return (upper in SECRET_ENV_NAMES or any(part in _SECRET_PARTS for part in upper.split("_"))
            or any(infix in upper for infix in _SECRET_INFIXES))


def check_no_secrets(env_vars: dict[str, str], args: list[str] | tuple[str, ...] = (),
                     store: str | None = None, s3_endpoint: str | None = None,
                     submission_id: str | None = None) -> None:
    """Raise SubmitError if a credential would become job metadata (env var, argument, URI,
    endpoint or submission id). Messages name the flag or variable, never the value."""
    values = _secret_values()
    for name, value in env_vars.items():
        if _looks_secret(name):
            raise SubmitError(
                f"refusing to put {name} into the job's runtime_env: runtime-env variables are job "
                "metadata that anyone with dashboard access can read. Give the cluster its "
                "credentials instead (node environment, instance role, or a Kubernetes Secret; see "
                "k8s/examples/secret-s3.yaml)")
        if (source := _holds_secret(str(value), values)) is not None:
            raise SubmitError(f"refusing to submit: runtime_env variable {name} (--env) holds the value of "
                              f"{source}; give the cluster its credentials instead")
        if _URL_CREDENTIALS.search(str(value)):
            raise SubmitError(f"refusing to submit: runtime_env variable {name} (--env) holds a URL with "
                              "user:password@ (runtime-env variables are job metadata); remove it and give the "
                              "cluster its credentials (e.g. MLFLOW_TRACKING_PASSWORD or AWS_* in a Kubernetes "
                              "Secret or the nodes' environment)")
    for i, arg in enumerate(args):
        if (source := _holds_secret(arg, values)) is not None:
            raise SubmitError(f"refusing to submit: job argument {i + 1} holds the value of {source} (job "
                              "entrypoints are metadata); pass credentials to the cluster")
        if _URL_CREDENTIALS.search(arg):
            raise SubmitError(f"refusing to submit: job argument {i + 1} holds a URL with user:password@ (job "
                              "entrypoints are metadata); remove it and give the cluster its credentials")
    if submission_id is not None:
        if (source := _holds_secret(submission_id, values)) is not None:
            raise SubmitError(f"refusing to submit: --submission-id holds the value of {source} (submission ids "
                              "are job metadata); choose another id")
        if _URL_CREDENTIALS.search(submission_id):
            raise SubmitError("refusing to submit: --submission-id holds a URL with user:password@; choose another id")
    if store and "@" in urlsplit(store).netloc:
        raise SubmitError(f"refusing to submit: the store URI carries credentials ({store.split('@')[-1]}); "
                          "use s3://bucket/prefix and give the cluster its credentials")
    if s3_endpoint:
        try:
            reject_url_credentials(s3_endpoint, "--s3-endpoint", bare_host=True)
        except UserError as exc:
            raise SubmitError(f"refusing to submit: {exc}") from None


def build_runtime_env(root: Path | str | None = None, *, store: str | None = None,
                      s3_endpoint: str | None = None, region: str | None = None,
                      env: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the project as working_dir and non-secret settings as env vars."""
    env_vars = dict(env or {})
    if store:
        env_vars["ASAPTRAIN_STORE"] = store
    if s3_endpoint:
        env_vars["ASAPTRAIN_S3_ENDPOINT"] = s3_endpoint
        env_vars["AWS_ENDPOINT_URL_S3"] = s3_endpoint  # Store.open and boto3 both read it
    if region:
        env_vars["AWS_REGION"] = region
    check_no_secrets(env_vars, store=store, s3_endpoint=s3_endpoint)
    return {"working_dir": str(root if root is not None else project_root()),
            "excludes": list(EXCLUDES), "env_vars": env_vars}


def job_entrypoint(job: str, args: list[str] | tuple[str, ...] = (), *, store: str | None = None,
                   s3_endpoint: str | None = None, python: str = "python") -> str:
    """``python jobs/X.py [--store URI] [--s3-endpoint URL] ARGS...`` as one shell-quoted line.

    ``python`` is the interpreter as the cluster's nodes name it (their PATH, not this machine's).
    """
    if job not in JOB_SCRIPTS:
        raise SubmitError(f"unknown job {job!r}; jobs are {', '.join(JOB_SCRIPTS)}")
    argv = [python, JOB_SCRIPTS[job]]
    if store:
        argv += ["--store", store]
    if s3_endpoint:
        argv += ["--s3-endpoint", s3_endpoint]
    argv += list(args)
    check_no_secrets({}, argv, s3_endpoint=s3_endpoint)
    return shlex.join(argv)


# ----------------------------------------------------------------------------- the client


def resolve_address(address: str | None = None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS (as `ray job` reads them), else local."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") \
        or DEFAULT_ADDRESS
    if address == "auto":  # ray.init's "the local cluster": its dashboard is the default one
        address = DEFAULT_ADDRESS
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def _is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_token(address: str) -> str | None:
    """The Ray auth token to present to ``address``, found as Ray finds it; None when none applies.

    Order (Ray's): RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.
    The default file is sent to a loopback address (a local cluster, or a KubeRay head reached
    with ``kubectl port-forward``) or when RAY_AUTH_MODE=token says the cluster wants it;
    RAY_AUTH_MODE=disabled sends nothing.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read ({exc.strerror}); "
                              "fix the path or unset it") from None
        if not token:
            raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path} is empty; run `ray get-auth-token` on the head node")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and (mode == "token" or _is_loopback(address)):
        return default.read_text().strip() or None
    return None


def auth_headers(address: str) -> dict[str, str]:
    token = auth_token(address)
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None = None):
    """A JobSubmissionClient for ``address`` carrying the auth token; SubmitError when unreachable."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    try:
        return JobSubmissionClient(address, headers=auth_headers(address))
    except ConnectionError as exc:
        raise SubmitError(f"no Ray dashboard answers at {address} ({str(exc).splitlines()[0]}); start a "
                          "cluster (`ray start --head`, see cluster/local.md) or pass --address / set "
                          "RAY_ADDRESS") from None
    except _request_errors() as exc:
        raise _explain(exc, address) from None


def _request_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import AuthenticationError

    return (RuntimeError, AuthenticationError)


def _explain(exc: BaseException, address: str) -> SubmitError:
    """A job-client failure as one line that says what to do (auth, unknown job, other)."""
    text = str(exc).strip().strip("'\"")
    first = text.splitlines()[0] if text else repr(exc)
    if type(exc).__name__ == "AuthenticationError" or re.search(r"\b40[13]\b", first):
        return SubmitError(
            f"the Ray cluster at {address} refused the request ({first}). It uses token authentication: "
            "put its token (`ray get-auth-token` on the head node) in ~/.ray/auth_token or RAY_AUTH_TOKEN; "
            "for a non-local address also set RAY_AUTH_MODE=token")
    if re.search(r"\b404\b", first) or "does not exist" in first:
        return SubmitError(f"{first.split(': ', 1)[-1]} (at {address}); list jobs with "
                           f"`ray job list --address {address}`")
    return SubmitError(f"Ray job request to {address} failed: {first}")


def _call(address: str, fn: Callable, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except _request_errors() as exc:
        raise _explain(exc, address) from None


def submit(job: str, args: list[str] | tuple[str, ...] = (), *, address: str | None = None,
           store: str | None = None, s3_endpoint: str | None = None, region: str | None = None,
           env: dict[str, str] | None = None, submission_id: str | None = None,
           entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
           python: str = "python", job_client=None) -> str:
    """Submit ``job`` with ``args``; returns the submission id. Secrets are refused before anything is sent."""
    entrypoint = job_entrypoint(job, args, store=store, s3_endpoint=s3_endpoint, python=python)
    runtime_env = build_runtime_env(store=store, s3_endpoint=s3_endpoint, region=region, env=env)
    check_no_secrets({}, submission_id=submission_id)
    address = resolve_address(address)
    job_client = job_client or client(address)
    for attempt in range(AGENT_RETRIES):
        try:
            return job_client.submit_job(
                entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus,
                metadata={"asaptrain_job": job})
        except _request_errors() as exc:
            # A head that has just started answers 500 "No available agent" for a few seconds.
            if "No available agent" not in str(exc) or attempt == AGENT_RETRIES - 1:
                raise _explain(exc, address) from None
            time.sleep(AGENT_RETRY_S)
    raise AssertionError("unreachable")


def status(job_id: str, address: str | None = None, job_client=None) -> str:
    """The job's status name: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    address = resolve_address(address)
    job_client = job_client or client(address)
    state = _call(address, job_client.get_job_status, job_id)
    return str(getattr(state, "value", state))


def wait_for_job(job_id: str, address: str | None = None, timeout_s: float = 600.0, poll_s: float = 1.0,
                 job_client=None) -> str:
    """Poll until the job reaches a terminal status; returns it. SubmitError after ``timeout_s``."""
    address = resolve_address(address)
    job_client = job_client or client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(job_id, address, job_client)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise SubmitError(f"job {job_id} still {state} after {timeout_s:.0f} s; "
                              f"see `asaptrain jobs logs {job_id}`")
        time.sleep(poll_s)


def follow(job_id: str, address: str | None = None, write: Callable[[str], Any] | None = None,
           job_client=None) -> str:
    """Stream the job's logs (to ``write``, default stdout) until it ends; returns its terminal status."""
    address = resolve_address(address)
    job_client = job_client or client(address)

    def echo(text: str) -> None:
        if write is not None:
            write(text)
        else:  # looked up per call: click's test runner swaps sys.stdout
            sys.stdout.write(text)
            sys.stdout.flush()

    async def tail() -> None:
        async for chunk in job_client.tail_job_logs(job_id):
            echo(chunk)

    try:
        asyncio.run(tail())
    except RuntimeError as exc:  # the log socket closed early (head restart, proxy timeout)
        echo(f"\n[asaptrain] log stream ended early ({str(exc).splitlines()[0]}); polling status\n")
    return wait_for_job(job_id, address, timeout_s=float("inf"), job_client=job_client)


def logs(job_id: str, address: str | None = None, job_client=None) -> str:
    address = resolve_address(address)
    job_client = job_client or client(address)
    return _call(address, job_client.get_job_logs, job_id)


def stop(job_id: str, address: str | None = None, job_client=None) -> bool:
    """Ask Ray to stop the job; True if it was running."""
    address = resolve_address(address)
    job_client = job_client or client(address)
    return bool(_call(address, job_client.stop_job, job_id))


__all__ = ["JOB_SCRIPTS", "EXCLUDES", "SubmitError", "project_root", "check_no_secrets",
           "build_runtime_env", "job_entrypoint", "resolve_address", "auth_token", "auth_headers",
           "client", "submit", "status", "wait_for_job", "follow", "logs", "stop"]
