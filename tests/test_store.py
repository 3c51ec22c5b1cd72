"""Store: local and S3 (moto on loopback) I/O, error messages that say what to check, no secrets."""

from __future__ import annotations

import json
import os
import pickle
import time
import urllib.request

import boto3
import pytest
from botocore.exceptions import ClientError

from asaptrain.config.schema import StorageConfig
from asaptrain.data.store import Store, StoreError, StoreNotFound, resolve_dataset, retry, store_from_config

SECRET = "known-secret-Zq81xPw"


def _exercise(store: Store) -> None:
    store.write_bytes("a/b.bin", b"\x00\x01")
    store.write_json("a/c.json", {"x": 1})
    store.write_text("top.txt", "hello")
    store.append_text("log/m.jsonl", "1\n")
    store.append_text("log/m.jsonl", "2\n")
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    assert store.read_json("a/c.json") == {"x": 1}
    assert store.read_text("log/m.jsonl") == "1\n2\n"
    assert store.exists("top.txt") and not store.exists("nope.txt")
    assert store.list() == ["a", "log", "top.txt"]
    assert store.list(recursive=True) == ["a/b.bin", "a/c.json", "log/m.jsonl", "top.txt"]
    assert store.list("a", suffix=".json") == ["a/c.json"]
    assert store.list("missing") == []
    assert store.child("a").read_json("c.json") == {"x": 1}
    with pytest.raises(StoreNotFound):
        store.read_bytes("nope.txt")
    store.delete("a", recursive=True)
    store.delete("never-there.txt")
    assert store.list(recursive=True) == ["log/m.jsonl", "top.txt"]


def test_local_store(tmp_path):
    store = Store.open(f"file://{tmp_path}/s")
    assert not store.is_s3 and store.root == f"{tmp_path}/s"
    assert store.path("x", "y.json") == f"{tmp_path}/s/x/y.json"
    _exercise(store)
    assert not [p for p in os.listdir(tmp_path / "s") if p.startswith("_tmp-")]  # atomic writes cleaned up
    assert store.ray_storage() == (store.root, store.fs)
    assert store.endpoint_env() == {}


def test_plain_and_default_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Store.open("").root == str(tmp_path / "asaptrain-store")
    assert store_from_config(StorageConfig()).root == str(tmp_path / "asaptrain-store")
    store = Store.open("rel/dir")
    assert store.root == str(tmp_path / "rel/dir")
    assert resolve_dataset("datasets/x", store).root == str(tmp_path / "rel/dir/datasets/x")
    assert resolve_dataset(str(tmp_path / "abs"), store).root == str(tmp_path / "abs")
    with pytest.raises(StoreError, match="unsupported scheme"):
        Store.open("gs://bucket/x")


def test_retry_only_transient():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
        return "ok"

    assert retry(flaky, base_delay_s=0.001) == "ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise ClientError({"Error": {"Code": "NoSuchBucket"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")

    with pytest.raises(ClientError):
        retry(missing, base_delay_s=0.001)
    assert len(calls) == 1


def test_retry_rides_out_an_outage_of_outage_s_and_no_longer():
    """boto3 calls (large puts, uploads, listings, deletes) keep trying for storage.outage_s, as
    the pyarrow filesystem does: 4 quick attempts alone would end a run at a 2-second blip."""
    from botocore.exceptions import EndpointConnectionError

    def down_for(seconds: float):
        until = time.monotonic() + seconds

        def call():
            if time.monotonic() < until:
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
            return "ok"
        return call

    assert retry(down_for(1.0), base_delay_s=0.01, max_delay_s=0.1, outage_s=3) == "ok"
    start = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        retry(down_for(60), base_delay_s=0.01, max_delay_s=0.1, outage_s=1)
    assert 0.9 < time.monotonic() - start < 2
    with pytest.raises(EndpointConnectionError):
        retry(down_for(1.0), base_delay_s=0.01, max_delay_s=0.1)  # no outage_s: the 4 attempts only


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_retry_keeps_trying_up_to_the_end_of_outage_s(monkeypatch, jitter):
    """The last wait is cut to the end of the window and one more try made there: with the
    longest jittered wait (1.5x) the retry used to give up up to one wait early (0.85 s of 1 s)."""
    from botocore.exceptions import EndpointConnectionError

    from asaptrain.data import s3

    monkeypatch.setattr(s3.random, "random", lambda: jitter)

    def down():
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    start = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        retry(down, base_delay_s=0.01, max_delay_s=0.1, outage_s=1)
    assert 0.99 <= time.monotonic() - start < 1.3


def test_s3_store(s3_endpoint, s3_bucket, tmp_path):
    store = Store.open(f"s3://{s3_bucket}/pre", s3_endpoint=s3_endpoint)
    assert store.is_s3 and store.root == f"{s3_bucket}/pre" and store.bucket == s3_bucket
    assert store.uri_for("x.json") == f"s3://{s3_bucket}/pre/x.json"
    store.check()
    _exercise(store)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == ["pre/log/m.jsonl", "pre/top.txt"]  # no directory markers, no temp keys
    big = os.urandom(6 * 2**20)  # above pyarrow's multipart threshold
    (tmp_path / "blob.bin").write_bytes(big)
    store.put_file(str(tmp_path / "blob.bin"), "big/blob.bin")
    store.write_bytes("big/raw.bin", big)  # above one pyarrow PutObject: one boto3 PUT
    assert store.read_bytes("big/blob.bin") == big == store.read_bytes("big/raw.bin")
    assert store.list("big") == ["big/blob.bin", "big/raw.bin"]
    assert store.endpoint_env() == {"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_REGION": "us-east-1"}
    again = pickle.loads(pickle.dumps(store))
    assert again.read_text("top.txt") == "hello"


def test_create_bucket(s3_endpoint):
    store = Store.open("s3://made-by-asaptrain/x", s3_endpoint=s3_endpoint)
    with pytest.raises(StoreError, match="does not exist.*--create-bucket"):
        store.check()
    with pytest.raises(StoreError, match="made-by-asaptrain.*does not exist"):
        store.write_text("a.txt", "x")
    store.check(create_bucket=True)
    store.write_text("a.txt", "x")
    assert store.read_text("a.txt") == "x"
    store.create_bucket()  # already ours: a no-op
    assert store.read_text("a.txt") == "x"


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")


def _assert_no_secret(*texts):
    for text in texts:
        assert SECRET not in text


def test_secrets_absent_missing_bucket_and_unreachable(s3_endpoint, secret_env):
    store = Store.open("s3://no-such-bucket-here/p", s3_endpoint=s3_endpoint)
    with pytest.raises(StoreError) as missing:
        store.write_text("a.txt", "x")
    assert "no-such-bucket-here" in str(missing.value) and s3_endpoint in str(missing.value)
    dead = Store.open("s3://somebucket/p", s3_endpoint="http://127.0.0.1:1")
    with pytest.raises(StoreError) as unreachable:
        dead.check()
    assert "cannot reach endpoint http://127.0.0.1:1" in str(unreachable.value)
    assert "somebucket" in str(unreachable.value)
    _assert_no_secret(str(missing.value), repr(missing.value), str(unreachable.value), repr(unreachable.value),
                      repr(store), str(vars(store)), repr(store._credentials))
    assert SECRET.encode() not in pickle.dumps(store)


@pytest.fixture
def moto_auth(s3_endpoint):
    """Make the shared moto server check credentials for one test, then switch it back."""
    def set_count(value: bytes) -> None:
        req = urllib.request.Request(f"{s3_endpoint}/moto-api/reset-auth", data=value, method="POST",
                                     headers={"Content-Type": "text/plain"})
        json.loads(urllib.request.urlopen(req).read())

    set_count(b"0")
    try:
        yield
    finally:
        set_count(b"inf")


def test_bad_credentials_named_without_secret(s3_endpoint, s3_bucket, secret_env, moto_auth):
    store = Store.open(f"s3://{s3_bucket}/p", s3_endpoint=s3_endpoint)
    for op in (lambda: store.write_text("a.txt", "x"), store.check, store.list):
        with pytest.raises(StoreError) as refused:
            op()
        message = str(refused.value)
        assert "refused the credentials" in message and s3_bucket in message and "AWS_SECRET_ACCESS_KEY" in message
        _assert_no_secret(message, repr(refused.value))


def test_error_classification():
    """Failures moto cannot produce in-process (it stubs botocore's credential lookup) map to advice."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from asaptrain.data.s3 import Credentials, describe_error

    creds = Credentials("AKIAEXAMPLE", SECRET, None)
    cases = [
        (NoCredentialsError(), "no S3 credentials found"),
        (EndpointConnectionError(endpoint_url="http://minio:9000/b"), "cannot reach endpoint http://minio:9000"),
        (ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": f"bad {SECRET}"}}, "PutObject"),
         "refused the credentials"),
        (ClientError({"Error": {"Code": "NoSuchBucket"}}, "GetObject"), "'b' at endpoint http://minio:9000 does not exist"),
        (OSError(f"AWS Error ACCESS_DENIED during GetObject with {SECRET}"), "refused the credentials"),
    ]
    for exc, expected in cases:
        err = describe_error(exc, "reading s3://b/x", "b", "http://minio:9000", creds)
        assert expected in str(err), (exc, str(err))
        _assert_no_secret(str(err), repr(err))


def test_filesystem_pickles_without_keys_and_works_after(s3_endpoint, s3_bucket, secret_env):
    """What Ray and Tune pickle (the filesystem, tuner.pkl) holds no key; the copy resolves its own."""
    store = Store.open(f"s3://{s3_bucket}/p", s3_endpoint=s3_endpoint)
    store.write_text("a.txt", "x")
    path, fs = store.ray_storage()
    data = pickle.dumps(fs)
    assert SECRET.encode() not in data and os.environ["AWS_ACCESS_KEY_ID"].encode() not in data
    with pickle.loads(data).open_input_stream(f"{path}/a.txt") as f:
        assert f.readall() == b"x"


def test_endpoint_with_a_password_is_refused_from_the_environment(monkeypatch):
    from asaptrain.errors import UserError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://admin:hunter22@minio:9000")
    with pytest.raises(UserError) as err:
        Store.open("s3://bucket/x")
    assert "AWS_ENDPOINT_URL_S3" in str(err.value) and "hunter22" not in str(err.value)
