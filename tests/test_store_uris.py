"""Store URIs that must not be opened: credentials in them, control characters.

Every command that opens a store refuses ``user:password@`` (and ``user@``) in its URI with a
message that never shows the secret, before any request is made with it; a path with a line
break in it gets a clear error, not a raw FileNotFoundError.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.data.store import Store, StoreError

SECRET = "sekritValue123"


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


@pytest.mark.parametrize("uri", [f"s3://AKIAEXAMPLE:{SECRET}@bucket/x", f"s3://{SECRET}@bucket/x",
                                 f"file://user:{SECRET}@/tmp/store"])
def test_store_open_refuses_credentials_without_showing_them(uri):
    with pytest.raises(StoreError) as err:
        Store.open(uri)
    assert SECRET not in str(err.value) and "user:password@" in str(err.value)


@pytest.mark.parametrize("args", [
    ["data", "ls", f"s3://AKIAEXAMPLE:{SECRET}@bucket/x"],
    ["data", "verify", f"s3://AKIAEXAMPLE:{SECRET}@bucket/x"],
    ["predict", "--run", f"s3://key:{SECRET}@bucket/runs/a", "--images", "/tmp/none-such", "--out", "/tmp/none-out"],
    ["export", "--run", f"s3://key:{SECRET}@bucket/runs/a", "--format", "safetensors", "--out", "/tmp/none.st"],
])
def test_commands_refuse_store_uris_with_credentials(args, s3_endpoint):
    result = _run(args + ["--s3-endpoint", s3_endpoint])
    text = result.output + str(result.exception or "")
    assert result.exit_code == 2, text
    assert "user:password@" in text
    assert SECRET not in text


def test_a_store_path_with_a_line_break_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="control character"):
        Store.open(str(tmp_path / "store\nx"))
    result = _run(["data", "ls", str(tmp_path / "a\nb")])
    assert result.exit_code == 2, result.output
    assert "control character" in result.output and "Traceback" not in result.output


def test_a_plain_path_with_an_at_sign_is_a_path(tmp_path):
    store = Store.open(str(tmp_path / "me@host"))
    store.write_text("a.txt", "x")
    assert store.read_text("a.txt") == "x"
