"""Shards: schema, writer, manifest, verify; locally and through a real S3 endpoint; ls/verify CLI."""

from __future__ import annotations

import hashlib
import io
import json

import boto3
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from asaptrain.cli import main
from asaptrain.data.convert import convert
from asaptrain.data.shards import (MANIFEST, SCHEMA, SCHEMA_VERSION, ManifestError, ShardWriter, read_manifest,
                                   shard_paths, verify)
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan


def _png(seed: int, h: int = 16, w: int = 16) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int) -> dict:
    return {"key": f"k{i:03d}", "target": _png(i), "target_format": "png", "width": 16, "height": 16,
            "meta": {"i": i}}


@pytest.fixture
def dataset(tmp_path) -> Store:
    """A local dataset: 3 train shards of 2 rows (tiny roll size) and 1 val shard."""
    store = Store.open(str(tmp_path / "ds"))
    with ShardWriter(store, "train", task="deblur", source="test", target_bytes=2 * len(_png(0))) as w:
        w.write_rows(_row(i) for i in range(6))
    with ShardWriter(store, "val", task="deblur", source="test") as w:
        w.write(_row(100))
    return store


def test_schema_and_layout(dataset):
    assert SCHEMA_VERSION == 1
    assert SCHEMA.names == ["key", "split", "input", "input_format", "target", "target_format", "instance",
                            "width", "height", "source", "meta"]
    pf = pq.ParquetFile(dataset.path("train-00000.parquet"))
    assert pf.schema_arrow.equals(SCHEMA, check_metadata=False)
    group = pf.metadata.row_group(0)
    for i in range(group.num_columns):
        col = group.column(i)
        if col.path_in_schema in ("input", "target", "instance"):
            assert col.compression == "UNCOMPRESSED"
            assert not any("DICTIONARY" in e for e in col.encodings), col.encodings
    table = pq.read_table(dataset.path("train-00000.parquet"))
    assert table["split"].to_pylist() == ["train", "train"] and table["source"][0].as_py() == "test"
    assert json.loads(table["meta"][0].as_py()) == {"i": 0}
    assert table["input"].null_count == 2


def test_manifest(dataset):
    m = read_manifest(dataset)
    assert m["schema_version"] == 1 and m["task"] == "deblur" and m["source"] == "test"
    assert m["splits"]["train"]["rows"] == 6 and m["splits"]["train"]["shards"] == 3
    assert m["splits"]["val"] == {"rows": 1, "bytes": m["shards"][-1]["bytes"], "shards": 1}
    assert [s["path"] for s in m["shards"]] == ["train-00000.parquet", "train-00001.parquet",
                                                 "train-00002.parquet", "val-00000.parquet"]
    for s in m["shards"]:
        data = open(dataset.path(s["path"]), "rb").read()
        assert s["bytes"] == len(data) and s["sha256"] == hashlib.sha256(data).hexdigest()
    paths = shard_paths(dataset, "train")
    assert pq.read_table(paths, filesystem=dataset.fs).num_rows == 6
    with pytest.raises(ManifestError, match="no 'test' shards"):
        shard_paths(dataset, "test")
    assert verify(dataset) == []


def test_manifest_errors(tmp_path):
    store = Store.open(str(tmp_path / "empty"))
    with pytest.raises(ManifestError, match=f"{tmp_path}/empty/manifest.json does not exist"):
        read_manifest(store)
    store.write_text(MANIFEST, "{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(store)
    store.write_json(MANIFEST, {"schema_version": 99})
    with pytest.raises(ManifestError, match="schema_version 99"):
        read_manifest(store)



@pytest.mark.parametrize("damage, field", [
    (lambda m: m["shards"][0].pop("bytes"), r"shards\[0\]\.bytes"),
    (lambda m: m["shards"].__setitem__(1, "train-00001.parquet"), r"shards\[1\] is not an object"),
    (lambda m: m["shards"][2].__setitem__("rows", "two"), r"shards\[2\]\.rows"),
    (lambda m: m["shards"][0].__setitem__("split", "dev"), r"shards\[0\]\.split"),
])
def test_malformed_manifest_entries_are_named(dataset, damage, field):
    manifest = dataset.read_json(MANIFEST)
    damage(manifest)
    dataset.write_json(MANIFEST, manifest)
    problems = verify(dataset)  # no KeyError / TypeError: one message naming the entry and field
    assert len(problems) == 1 and "manifest.json" in problems[0], problems
    assert __import__("re").search(field, problems[0]), problems[0]
    with pytest.raises(ManifestError, match=field):
        shard_paths(dataset, "train")

def test_verify_names_each_damaged_shard(dataset):
    path = dataset.path
    data = open(path("train-00000.parquet"), "rb").read()
    open(path("train-00000.parquet"), "wb").write(data[: len(data) // 2])  # truncated
    data = bytearray(open(path("train-00001.parquet"), "rb").read())
    data[100] ^= 0xFF
    open(path("train-00001.parquet"), "wb").write(bytes(data))  # altered, same size
    dataset.delete("train-00002.parquet")  # missing
    dataset.write_bytes("train-00009.parquet", b"stray")  # not in the manifest
    problems = verify(dataset)
    text = "\n".join(problems)
    assert "train-00000.parquet: truncated" in text and "unreadable parquet" in text
    assert "train-00001.parquet: sha256 mismatch" in text
    assert "train-00002.parquet: missing" in text
    assert "train-00009.parquet: extra shard" in text
    assert "val-00000" not in text


def test_s3_roundtrip_and_damage(s3_endpoint, s3_bucket):
    uri = f"s3://{s3_bucket}/datasets/synth"
    store = Store.open(uri, s3_endpoint=s3_endpoint)
    summary = convert(synth_plan("scenes", count=6, size=(32, 64), seed=1, val_count=2), store, target_bytes=12_000)
    assert summary.splits["train"]["rows"] == 6 and summary.splits["train"]["shards"] >= 2

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    shards = sorted(k for k in keys if k.endswith(".parquet"))
    assert f"datasets/synth/{MANIFEST}" in keys and shards[0] == "datasets/synth/train-00000.parquet"
    assert not [k for k in keys if "_tmp-" in k or k.endswith("/")]

    # Plain pyarrow, no asaptrain: what Ray Data does with an explicit filesystem.
    fs = pafs.S3FileSystem(endpoint_override=s3_endpoint.split("://")[1], scheme="http", region="us-east-1")
    table = pq.read_table([f"{s3_bucket}/{k}" for k in shards], filesystem=fs)
    assert table.num_rows == 8 and set(table["split"].to_pylist()) == {"train", "val"}
    label = np.asarray(Image.open(io.BytesIO(table["input"][0].as_py())))
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {7, 8, 11, 21, 23, 24, 26}
    assert verify(store) == []

    body = client.get_object(Bucket=s3_bucket, Key=shards[0])["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=shards[0], Body=body[:-1] + bytes([body[-1] ^ 1]))
    client.delete_object(Bucket=s3_bucket, Key=shards[1])
    problems = "\n".join(verify(store))
    assert f"s3://{s3_bucket}/{shards[0]}: sha256 mismatch" in problems
    assert f"s3://{s3_bucket}/{shards[1]}: missing" in problems

    result = CliRunner().invoke(main, ["data", "verify", uri, "--s3-endpoint", s3_endpoint])
    assert result.exit_code == 1 and shards[1].rsplit("/", 1)[1] in result.output


def test_ls_and_verify_cli(dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "verify", dataset.uri])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and "4 shards, 7 rows" in result.output
    result = runner.invoke(main, ["data", "ls", dataset.uri])
    assert result.exit_code == 0 and "train" in result.output and "6" in result.output
    result = runner.invoke(main, ["data", "ls", str(tmp_path)])  # the store root: finds ds/ below it
    assert result.exit_code == 0 and "ds" in result.output
    result = runner.invoke(main, ["data", "verify", "--quick", dataset.uri])
    assert result.exit_code == 0 and "sizes and footers match" in result.output
    dataset.delete("val-00000.parquet")
    result = runner.invoke(main, ["data", "verify", dataset.uri])
    assert result.exit_code == 1 and "val-00000.parquet: missing" in result.output
    result = runner.invoke(main, ["data", "ls", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no manifest.json" in result.output
