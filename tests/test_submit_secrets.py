"""`asaptrain submit` sends no secret: not in --env values, arguments or the submission id.

Runtime-env variables, entrypoints and submission ids are job metadata that anyone with
dashboard access reads. Each refusal names the flag or variable and never the value, and happens
before any request: the address below has no server, so a submission that got through would
fail differently (and the recording client would hold it).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from asaptrain import submit as sub
from asaptrain.cli import main

PASSWORD = "mlflow-pw-2f9c"
NO_SERVER = "http://127.0.0.1:9"


class Recorder:
    sent = None

    def submit_job(self, **kwargs):
        Recorder.sent = kwargs
        return "raysubmit_x"


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdef123456")
    Recorder.sent = None
    monkeypatch.setattr(sub, "client", lambda address=None: Recorder())


def _submit(*argv: str):
    result = CliRunner().invoke(main, ["submit", "train", "--address", NO_SERVER, "--no-wait", *argv])
    return result, result.output + str(result.exception or "")


@pytest.mark.parametrize("argv, flag", [
    (["--env", "MLFLOW_TRACKING_URI=http://bob:pw-9a8b7c@mlflow:5000"], "MLFLOW_TRACKING_URI"),
    (["--env", "AWS_ENDPOINT_URL=http://key:secret-9a8b@minio:9000"], "AWS_ENDPOINT_URL"),
    (["--env", "NOTE=http://alice@host/x"], "NOTE"),
    (["--env", f"SOME_SETTING={PASSWORD}"], "SOME_SETTING"),
    (["--", "--set", f"eval.note={PASSWORD}"], "argument"),
    (["--", "--name", PASSWORD], "argument"),
    (["--", "--name", "tok-abcdef123456"], "argument"),
])
def test_secrets_in_env_values_and_arguments_are_refused(planted, argv, flag):
    result, text = _submit(*argv)
    assert result.exit_code == 2, text
    assert "refusing" in text and flag in text
    for secret in (PASSWORD, "pw-9a8b7c", "secret-9a8b", "tok-abcdef123456", "alice"):
        assert secret not in text
    assert Recorder.sent is None


def test_submission_id_equal_to_a_secret_is_refused(planted, monkeypatch):
    aws_secret = "aws-secret-value-77"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    for value in (aws_secret, PASSWORD):
        result, text = _submit("--submission-id", value)
        assert result.exit_code == 2, text
        assert "--submission-id" in text and value not in text
    assert Recorder.sent is None


def test_the_ray_token_is_a_secret_too(planted, tmp_path, monkeypatch):
    token_file = tmp_path / "auth_token"
    token_file.write_text("ray-token-0123456789abcdef\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    result, text = _submit("--", "--name", "ray-token-0123456789abcdef")
    assert result.exit_code == 2 and "Ray auth token" in text and "0123456789abcdef" not in text


def test_ordinary_values_pass(planted, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TOKEN", "1")  # a switch under a secret-sounding name
    result, text = _submit("--env", "MLFLOW_TRACKING_URI=http://mlflow:5000", "--submission-id", "my-run-1",
                           "--", "--preset", "deblurgan-smoke", "--steps", "1")
    assert result.exit_code == 0, text
    assert Recorder.sent["submission_id"] == "my-run-1"
    assert Recorder.sent["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_an_env_pair_without_equals_is_not_echoed(planted):
    result, text = _submit("--env", PASSWORD)
    assert result.exit_code == 2 and PASSWORD not in text
