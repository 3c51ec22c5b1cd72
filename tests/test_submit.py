"""Job submission: the runtime_env never carries secrets, refusals, token lookup, following, --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from asaptrain import submit as sub
from asaptrain.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]  # dummy value set by conftest
KEY_ID = os.environ["AWS_ACCESS_KEY_ID"]


class FakeClient:
    """Records what would be sent to Ray; plays back a log and a final status."""

    def __init__(self, final="SUCCEEDED", chunks=("hello\n", "done\n")):
        self.sent, self.final, self.chunks = None, final, chunks

    def submit_job(self, **kwargs):
        self.sent = kwargs
        return "raysubmit_test"

    async def tail_job_logs(self, job_id):
        for chunk in self.chunks:
            yield chunk

    def get_job_status(self, job_id):
        return self.final

    def get_job_logs(self, job_id):
        return "".join(self.chunks)

    def stop_job(self, job_id):
        return True


def test_runtime_env_ships_project_and_settings_only():
    env = sub.build_runtime_env(store="s3://bucket/asap", s3_endpoint="http://minio:9000", region="eu-west-1")
    assert env["working_dir"] == str(ROOT)
    for pattern in (".git", ".venv", "/asaptrain-store", "*.whl", "/out"):
        assert pattern in env["excludes"]
    assert env["env_vars"] == {"ASAPTRAIN_STORE": "s3://bucket/asap", "ASAPTRAIN_S3_ENDPOINT": "http://minio:9000",
                               "AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_REGION": "eu-west-1"}
    text = json.dumps(env)
    assert SECRET not in text and KEY_ID not in text


@pytest.mark.parametrize("env", [
    {"AWS_SECRET_ACCESS_KEY": "x" * 20},
    {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
    {"aws_session_token": "abc"},
    {"MINIO_ROOT_PASSWORD": "hunter22"},
    {"HARMLESS_NAME": SECRET},  # a secret's value under another name
])
def test_secrets_are_refused(env):
    with pytest.raises(sub.SubmitError, match="refusing"):
        sub.build_runtime_env(env=env)


def test_harmless_names_pass():
    env = sub.build_runtime_env(env={"TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "INFO"})
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    for name in ("HF_TOKEN", "WANDB_API_KEY", "db_password"):
        with pytest.raises(sub.SubmitError):
            sub.check_no_secrets({name: "v"})


def test_secret_in_args_or_store_uri_is_refused():
    with pytest.raises(sub.SubmitError, match="argument"):
        sub.job_entrypoint("train", ["--set", f"storage.store=s3://{SECRET}@b/x"])
    with pytest.raises(sub.SubmitError, match="credentials"):
        sub.build_runtime_env(store="s3://user:pass@bucket/x")
    with pytest.raises(sub.SubmitError, match="unknown job"):
        sub.job_entrypoint("nope")


def test_submit_sends_no_secret_and_follows_to_exit_code():
    fake = FakeClient()
    job_id = sub.submit("train", ["--preset", "deblurgan-smoke"], address="http://127.0.0.1:1",
                        store="s3://b/p", s3_endpoint="http://127.0.0.1:9000", job_client=fake)
    assert job_id == "raysubmit_test"
    assert fake.sent["entrypoint"] == ("python jobs/train.py --store s3://b/p --s3-endpoint http://127.0.0.1:9000 "
                                       "--preset deblurgan-smoke")
    sent = json.dumps(fake.sent)
    assert SECRET not in sent and KEY_ID not in sent
    refused = FakeClient()
    with pytest.raises(sub.SubmitError):
        sub.submit("train", env={"AWS_SECRET_ACCESS_KEY": SECRET}, job_client=refused)
    assert refused.sent is None  # nothing left the machine
    out = []
    assert sub.follow("raysubmit_test", "http://127.0.0.1:1", write=out.append, job_client=fake) == "SUCCEEDED"
    assert "".join(out) == "hello\ndone\n"


@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_submit_cli_exit_code(monkeypatch, final, code):
    fake = FakeClient(final=final)
    monkeypatch.setattr(sub, "client", lambda address=None: fake)
    result = CliRunner().invoke(main, ["submit", "aggregate", "--address", "127.0.0.1:8265", "--",
                                       "--prefix", "runs"])
    assert result.exit_code == code, result.output
    assert "submitted raysubmit_test to http://127.0.0.1:8265" in result.output
    assert "hello\ndone\n" in result.output
    assert fake.sent["entrypoint"] == "python jobs/aggregate.py --prefix runs"
    assert fake.sent["runtime_env"]["env_vars"] == {}


def test_jobs_cli_status_logs_stop(monkeypatch):
    fake = FakeClient(final="RUNNING")
    monkeypatch.setattr(sub, "client", lambda address=None: fake)
    runner = CliRunner()
    assert runner.invoke(main, ["jobs", "status", "raysubmit_test"]).output.strip() == "RUNNING"
    assert runner.invoke(main, ["jobs", "logs", "raysubmit_test"]).output == "hello\ndone\n"
    assert "stop requested" in runner.invoke(main, ["jobs", "stop", "raysubmit_test"]).output
    result = runner.invoke(main, ["submit", "train", "--env", "AWS_SECRET_ACCESS_KEY=x"])
    assert result.exit_code == 2 and "refusing" in result.output and fake.sent is None


def test_address_and_token_lookup(monkeypatch, tmp_path):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sub.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert sub.resolve_address(None) == "http://10.0.0.5:8265"
    assert sub.auth_headers("http://127.0.0.1:8265") == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("tok-default\n")
    assert sub.auth_headers("http://127.0.0.1:8265") == {"Authorization": "Bearer tok-default"}
    assert sub.auth_headers("http://10.0.0.5:8265") == {}  # the local token is not sent afar uninvited
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert sub.auth_token("http://10.0.0.5:8265") == "tok-default"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-env")
    assert sub.auth_token("http://10.0.0.5:8265") == "tok-env"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(sub.SubmitError, match="RAY_AUTH_TOKEN_PATH"):
        sub.auth_token("http://127.0.0.1:8265")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert sub.auth_token("http://127.0.0.1:8265") is None


@pytest.mark.parametrize("argv", [
    ["--help"], ["submit", "--help"], ["aggregate", "--help"], ["jobs", "--help"],
    ["jobs", "status", "--help"], ["jobs", "logs", "--help"], ["jobs", "stop", "--help"], ["jobs", "wait", "--help"],
])
def test_cli_help(argv):
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


@pytest.mark.parametrize("job", sorted(sub.JOB_SCRIPTS))
def test_job_script_help(job):
    script = ROOT / sub.JOB_SCRIPTS[job]
    assert script.is_file(), f"submit.JOB_SCRIPTS[{job!r}] names {script}, which does not exist"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--store" in result.stdout


@pytest.mark.parametrize("endpoint", ["http://user:hunter22@minio:9000", "user:hunter22@minio:9000"])
def test_endpoint_password_is_never_sent(endpoint, monkeypatch):
    for build in (lambda: sub.build_runtime_env(s3_endpoint=endpoint),
                  lambda: sub.job_entrypoint("train", s3_endpoint=endpoint),
                  lambda: sub.job_entrypoint("train", ["--s3-endpoint", "http://u:hunter22@minio:9000"]),
                  lambda: sub.job_entrypoint("train", ["--set", "storage.s3_endpoint=http://u:hunter22@m"])):
        with pytest.raises(sub.SubmitError, match="refusing") as err:
            build()
        assert "hunter22" not in str(err.value)
    fake = FakeClient()
    monkeypatch.setattr(sub, "client", lambda address=None: fake)
    result = CliRunner().invoke(main, ["submit", "train", "--address", "127.0.0.1:1", "--s3-endpoint", endpoint,
                                       "--", "--preset", "deblurgan-smoke"])
    assert result.exit_code == 2 and "user:password@" in result.output and "hunter22" not in result.output
    assert fake.sent is None
