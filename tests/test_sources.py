"""Converters: synth, Cityscapes and GoPro trees in their official layouts, image folders, resume, CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from asaptrain.cli import main
from asaptrain.data import labels
from asaptrain.data.convert import convert
from asaptrain.data.shards import read_manifest, shard_paths, verify
from asaptrain.data.sources import cityscapes_plan, gopro_plan
from asaptrain.data.store import Store
from asaptrain.data.synth import photo_image, street_scene, synth_plan, synth_row

H, W = 32, 64


def _save(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)))


def _rows(store: Store, split: str) -> dict[str, dict]:
    table = pq.read_table(shard_paths(store, split), filesystem=store.fs)
    return {r["key"]: r for r in table.to_pylist()}


@pytest.fixture
def cityscapes_root(tmp_path):
    """Official layout, 32x64: 2 train images in 2 cities, 1 val, a photo without labels, a bad label map."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cityscapes"
    truth = {}
    for split, city, stem in [("train", "aachen", "aachen_000000_000019"), ("train", "bremen", "bremen_000001_000019"),
                              ("val", "lindau", "lindau_000000_000019"), ("train", "zurich", "zurich_000002_000019")]:
        photo = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        ids = rng.choice(sorted(labels.VALID_IDS), (H, W)).astype(np.uint8)
        ids[0, 0], ids[0, 1] = 0, labels.MAX_ID
        inst = ids.astype(np.uint16)
        inst[8:16, 8:24] = labels.instance_id(labels.CAR, 3)
        if city == "zurich":
            ids[5, 5] = 200  # not a Cityscapes id: this sample must be skipped, and say so
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", photo)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", inst)
        truth[f"{city}/{stem}"] = (photo, ids, inst)
    _save(root / "leftImg8bit" / "train" / "aachen" / "aachen_000009_000019_leftImg8bit.png", photo)  # no labels
    return root, truth


def test_cityscapes_ids_pixel_for_pixel(cityscapes_root, tmp_path):
    root, truth = cityscapes_root
    store = Store.open(str(tmp_path / "out"))
    summary = convert(cityscapes_plan(root), store)
    assert summary.task == "labels2photo" and summary.splits["train"]["rows"] == 2 and summary.splits["val"]["rows"] == 1
    reasons = dict(summary.skipped)
    assert "no gtFine" in reasons[str(root / "leftImg8bit/train/aachen/aachen_000009_000019_leftImg8bit.png")]
    assert "[200]" in reasons[str(root / "gtFine/train/zurich/zurich_000002_000019_gtFine_labelIds.png")]
    rows = _rows(store, "train") | _rows(store, "val")
    for key, row in rows.items():
        photo, ids, inst = truth[key]
        assert np.array_equal(_decode(row["input"]), ids)  # label ids exactly as in the source PNG
        assert np.array_equal(_decode(row["target"]), photo)
        assert np.array_equal(_decode(row["instance"]).astype(np.int64), inst)
        assert (row["width"], row["height"], row["input_format"], row["source"]) == (W, H, "png", "cityscapes")
    assert verify(store) == []

    resized = Store.open(str(tmp_path / "small"))
    convert(cityscapes_plan(root, size=(16, 32)), resized)
    for key, row in _rows(resized, "train").items():
        photo, ids, inst = truth[key]
        want = np.asarray(Image.fromarray(ids).resize((32, 16), Image.Resampling.NEAREST))
        got = _decode(row["input"])
        assert got.shape == (16, 32) and np.array_equal(got, want) and set(np.unique(got)) <= set(np.unique(ids))
        got_inst = _decode(row["instance"]).astype(np.int64)
        assert set(np.unique(got_inst)) <= set(np.unique(inst)) and _decode(row["target"]).shape == (16, 32, 3)


def test_gopro_pairs(tmp_path):
    root = tmp_path / "GOPRO_Large"
    rng = np.random.default_rng(1)
    for split, seq, frames in [("train", "GOPR0372_07_00", 2), ("test", "GOPR0384_11_00", 1)]:
        for f in range(frames):
            for kind in ("blur", "sharp"):
                _save(root / split / seq / kind / f"{f:06d}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _save(root / "train" / "GOPR0372_07_00" / "blur" / "000099.png", np.zeros((H, W, 3), np.uint8))  # no pair
    store = Store.open(str(tmp_path / "out"))
    summary = convert(gopro_plan(root), store)
    assert summary.splits == {"train": {"rows": 2, "bytes": summary.splits["train"]["bytes"], "shards": 1},
                              "val": {"rows": 1, "bytes": summary.splits["val"]["bytes"], "shards": 1}}
    assert [p for p, _ in summary.skipped] == [str(root / "train/GOPR0372_07_00/blur/000099.png")]
    row = _rows(store, "train")["GOPR0372_07_00/000001"]
    assert row["input"] == (root / "train/GOPR0372_07_00/blur/000001.png").read_bytes()
    assert row["target"] == (root / "train/GOPR0372_07_00/sharp/000001.png").read_bytes()
    assert json.loads(_rows(store, "val")["GOPR0384_11_00/000000"]["meta"])["gopro_split"] == "test"


def test_folder_names_unreadable_files(tmp_path):
    root = tmp_path / "photos"
    rng = np.random.default_rng(2)
    for i, ext in enumerate(["png", "jpg", "webp", "PNG"]):
        _save(root / "sub" / f"img{i}.{ext}", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    good = (root / "sub" / "img0.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(main, ["data", "folder", "--root", str(root), "--out", str(tmp_path / "out"),
                                       "--val-fraction", "0.3", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 files" in result.output
    assert "broken.jpg" in result.output and "truncated.png" in result.output
    assert "ignored 1 files" in result.output
    manifest = read_manifest(Store.open(str(tmp_path / "out")))
    assert manifest["task"] == "deblur" and sum(s["rows"] for s in manifest["splits"].values()) == 4
    rows = _rows(Store.open(str(tmp_path / "out")), "train") | _rows(Store.open(str(tmp_path / "out")), "val")
    assert all(r["input"] is None and _decode(r["target"]).shape == (H, W, 3) for r in rows.values())
    assert {r["target_format"] for r in rows.values()} == {"png", "jpeg"}  # webp re-encoded as png



def _bomb_png(path, side: int = 40_000) -> None:
    """A PNG whose header claims side x side pixels (far past PIL's bomb limit) and holds no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("size", [None, "16x32"])
def test_decompression_bomb_is_skipped_and_named(tmp_path, size):
    root = tmp_path / "photos"
    rng = np.random.default_rng(5)
    for i in range(3):
        _save(root / f"img{i}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _bomb_png(root / "bomb.png")
    args = ["data", "folder", "--root", str(root), "--out", str(tmp_path / "out"), "--val-fraction", "0",
            "--workers", "1"] + (["--size", size] if size else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "skipped 1 files" in result.output and "bomb.png" in result.output
    assert read_manifest(Store.open(str(tmp_path / "out")))["splits"]["train"]["rows"] == 3

def test_synth_scenes_follow_cityscapes_encoding():
    ids, instances, photo = street_scene(np.random.default_rng(3), 64, 128)
    assert ids.dtype == np.uint8 and photo.shape == (64, 128, 3)
    assert set(np.unique(ids)) <= {labels.ROAD, labels.SIDEWALK, labels.BUILDING, labels.VEGETATION, labels.SKY,
                                   labels.PERSON, labels.CAR}
    assert np.array_equal(labels.instance_classes(instances), ids)
    objects = instances[instances >= 1000]
    assert objects.size and set(np.unique(objects // 1000)) <= {labels.PERSON, labels.CAR}
    assert set(np.unique(instances[ids == labels.ROAD])) <= {labels.ROAD} | set(np.unique(objects))


def test_synth_photos_are_deterministic_and_sharp():
    spec = ("photos", 7, "train", 3, 64, 64)
    assert synth_row("k", spec)["target"] == synth_row("k", spec)["target"]
    assert synth_row("k", spec)["target"] != synth_row("k", ("photos", 7, "train", 4, 64, 64))["target"]
    img = photo_image(np.random.default_rng(0), 64, 64).astype(np.float64)
    k = 5  # 5x5 box blur, edge-padded
    padded = np.pad(img, ((2, 2), (2, 2), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + 64, dx:dx + 64] for dy in range(k) for dx in range(k)) / k**2
    psnr = 10 * np.log10(255**2 / np.mean((img - blurred) ** 2))
    assert psnr < 25, f"blur barely changes the synthetic photo (PSNR {psnr:.1f} dB)"


def test_resume_rewrites_only_missing_shards(tmp_path):
    store = Store.open(str(tmp_path / "ds"))
    plan = synth_plan("photos", count=8, size=(32, 32), seed=5, val_count=2)
    first = convert(plan, store, target_bytes=5_000)
    names = [s["path"] for s in read_manifest(store)["shards"]]
    assert first.written == len(names) >= 4
    before = {n: (os.stat(store.path(n)).st_mtime_ns, read_manifest(store)["shards"][i]["sha256"])
              for i, n in enumerate(names)}
    store.delete("manifest.json")
    store.delete(names[1])
    second = convert(synth_plan("photos", count=8, size=(32, 32), seed=5, val_count=2), store, target_bytes=5_000)
    assert (second.written, second.reused) == (1, len(names) - 1)
    after = read_manifest(store)["shards"]
    for i, n in enumerate(names):
        assert after[i]["sha256"] == before[n][1]  # deterministic: the rewritten shard is the same bytes
        if i != 1:
            assert os.stat(store.path(n)).st_mtime_ns == before[n][0]  # untouched
    smaller = convert(synth_plan("photos", count=3, size=(32, 32), seed=5, val_count=2), store, target_bytes=5_000)
    assert smaller.removed > 0 and verify(store) == []


def test_parallel_matches_serial(tmp_path):
    plan = synth_plan("scenes", count=12, size=(32, 64), seed=9, val_count=2)
    serial, parallel = Store.open(str(tmp_path / "a")), Store.open(str(tmp_path / "b"))
    convert(plan, serial, workers=1)
    convert(plan, parallel, workers=2)
    sha = lambda s: [e["sha256"] for e in read_manifest(s)["shards"]]  # noqa: E731
    assert sha(serial) == sha(parallel)


def test_cli_synth_default_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the presets' default: ./asaptrain-store/datasets/synth-scenes
    result = CliRunner().invoke(main, ["data", "synth", "--kind", "scenes", "--count", "2", "--size", "32x64",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert read_manifest(Store.open("asaptrain-store/datasets/synth-scenes"))["task"] == "labels2photo"


def test_cli_synth_cityscapes_and_bench(cityscapes_root, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "store" / "datasets" / "synth-photos")
    result = runner.invoke(main, ["data", "synth", "--kind", "photos", "--count", "4", "--size", "32x32",
                                  "--out", out, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "manifest.json written" in result.output
    assert runner.invoke(main, ["data", "synth", "--kind", "photos", "--size", "32by32", "--out", out]).exit_code == 2
    result = runner.invoke(main, ["data", "cityscapes", "--root", str(cityscapes_root[0]), "--size", "16x32",
                                  "--out", str(tmp_path / "cs"), "--workers", "1"])
    assert result.exit_code == 0 and "zurich_000002_000019_gtFine_labelIds.png" in result.output
    result = runner.invoke(main, ["data", "cityscapes", "--root", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "leftImg8bit" in result.output
    result = runner.invoke(main, ["bench", "ingest", out, "--json", str(tmp_path / "ingest.json"), "--limit", "3",
                                  "--decoders", "pil", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ingest.json").read_text())
    assert report["rows"] == 3 and {p["phase"] for p in report["phases"]} >= {"read (pyarrow)", "decode pil x1"}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_converter_workers_exit_when_the_parent_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "asaptrain", "data", "synth", "--kind", "photos", "--count", "4000",
                             "--size", "128x128", "--out", str(tmp_path / "out"), "--workers", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
        time.sleep(0.2)
    assert len(workers) == 2, "the conversion never started its worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived their killed parent"
