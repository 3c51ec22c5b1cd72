"""`asaptrain predict`: the tiled path it shares with `infer`, output names and folders, and real
runs under Ray Data (2 CPU actors) on the loopback S3 endpoint: images of several sizes, a corrupt
file, an interrupted run resumed, and a converted dataset with instance edges."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from reporting import ListReporter

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.infer import model_input, run_tiles, to_rgb
from asaptrain.data.outputs import JOB_FILE, OutputError, output_names
from asaptrain.predict import MANIFEST, PredictConfig, PredictError, predict
from asaptrain.train.loop import train_loop
from asaptrain.train.nets import build_generator, generator_in_channels
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

CKPT = "checkpoint_000001/state.pt"


def make_run(store: Store, preset: str, name: str) -> Store:
    """A run directory as training leaves one: config.toml and a checkpoint (1 step, with EMA)."""
    cfg = apply_overrides(get_preset(preset), ["train.steps=1", "train.batch_size=2", "train.log_every=1",
                                               "train.checkpoint_every=1", "optim.ema_decay=0.5"])
    g = torch.Generator().manual_seed(0)
    c, h, w = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width
    batches = ({"x": torch.rand(2, c, h, w, generator=g) * 2 - 1, "y": torch.rand(2, 3, h, w, generator=g) * 2 - 1}
               for _ in range(1))
    rep = ListReporter()
    train_loop(cfg, batches, lambda b, *_: (b["x"], b["y"]), torch.device("cpu"), rep)
    files = RunFiles(store, name)
    files.write_config(cfg)
    files.dir.write_bytes(CKPT, to_bytes(rep.last_state))
    return files.dir


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def read_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------------- no Ray


def test_batched_tiles_give_what_one_tile_at_a_time_gives():
    cfg = get_preset("deblurgan-smoke")
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((70, 150), (40, 40), (64, 100))]
    make = lambda a, e: model_input(np.ascontiguousarray(a), cfg, e)  # noqa: E731
    one = run_tiles(G, arrays, make, 4, 8, tile=64, overlap=16, batch=1)
    many = run_tiles(G, arrays, make, 4, 8, tile=64, overlap=16, batch=5)  # tiles share calls
    for a, x, y in zip(arrays, one, many):
        assert x.shape == y.shape == a.shape and x.dtype == np.uint8
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1  # batched kernels may round apart
    with torch.no_grad():  # an image within one tile is G's output itself
        assert np.abs(one[1].astype(int) - to_rgb(G(make(arrays[1], None))).astype(int)).max() <= 1


def test_output_names_keep_suffixes_only_where_stems_meet():
    names, keep = output_names(["a.jpg", "a.png", "sub/b.JPEG", "c.png", "train/key_0001"])
    assert names == {"a.jpg": "a.jpg.png", "a.png": "a.png.png", "sub/b.JPEG": "sub/b.png", "c.png": "c.png",
                     "train/key_0001": "train/key_0001.png"}
    assert keep == {"a.jpg", "a.png"}
    with pytest.raises(OutputError, match="cannot name an output"):
        output_names(["train/../../escape"])
    with pytest.raises(OutputError, match="same output"):
        output_names(["train/k", "train/k"])


def test_out_folders_that_would_mix_or_overwrite_are_refused(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "r")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(png(np.zeros((16, 16, 3), np.uint8)))
    for out, match in ((photos / "pred", "overlap"), (tmp_path, "overlap")):
        with pytest.raises(OutputError, match=match):
            predict(PredictConfig(run=run.uri, images=str(photos), out=str(out)))
    assert sorted(p.name for p in photos.iterdir()) == ["a.png"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.png").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="not written by `asaptrain predict`"):
        predict(PredictConfig(run=run.uri, images=str(photos), out=str(foreign)))
    other = tmp_path / "other"
    other.mkdir()
    (other / JOB_FILE).write_text(json.dumps({"run": "/elsewhere/runs/x", "checkpoint": CKPT}))
    with pytest.raises(OutputError, match="holds predictions of run /elsewhere/runs/x"):
        predict(PredictConfig(run=run.uri, images=str(photos), out=str(other)))
    assert (foreign / "x.png").read_bytes() == b"someone else's" and not (other / MANIFEST).exists()


# ----------------------------------------------------------------------------- under Ray


@pytest.mark.slow
def test_images_on_s3_corrupt_file_then_resume(ray_cluster, s3_endpoint, s3_bucket):
    from asaptrain.infer import generate, load_generator

    store = Store.open(f"s3://{s3_bucket}/store", s3_endpoint=s3_endpoint)
    run = make_run(store, "deblurgan-smoke", "deblur")
    photos = Store.open(f"s3://{s3_bucket}/photos", s3_endpoint=s3_endpoint)
    rng = np.random.default_rng(0)
    sizes = {"a.png": (64, 64), "a.jpg": (48, 80), "sub/b.jpg": (50, 70), "c.png": (33, 45), "big.png": (90, 150)}
    for rel, (h, w) in sizes.items():
        photos.write_bytes(rel, png(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "JPEG" if rel.endswith("jpg") else "PNG"))
    photos.write_bytes("broken.png", b"\x89PNG\r\n\x1a\n not really a png")
    pc = PredictConfig(run=run.uri, images=photos.uri, out=f"s3://{s3_bucket}/pred", workers=2, cpus_per_worker=0.5,
                       batch=2, tile=64, max_bad=1, s3_endpoint=s3_endpoint, dtype="fp32")  # compared with fp32 below
    out = Store.open(pc.out, s3_endpoint=s3_endpoint)
    manifest = predict(pc)
    outputs = {"a.png.png": "a.png", "a.jpg.png": "a.jpg", "sub/b.png": "sub/b.jpg", "c.png": "c.png",
               "big.png": "big.png"}
    assert {o["output"]: o["input"] for o in manifest["outputs"]} == outputs
    assert [b["input"] for b in manifest["bad"]] == ["broken.png"] and "does not decode" in manifest["bad"][0]["reason"]
    for o in manifest["outputs"]:
        assert o["status"] == "written" and (o["height"], o["width"]) == sizes[o["input"]]
        assert read_rgb(out.read_bytes(o["output"])).shape == (*sizes[o["input"]], 3)
    assert out.read_json(MANIFEST) == manifest and manifest["timing"]["images_per_s"] > 0
    # The same path as `infer`: the EMA generator, tiled at 64 px (big.png is 2 x 3 tiles).
    cfg, G = load_generator(run)
    expected, = generate(G, cfg, [read_rgb(photos.read_bytes("big.png"))], tile=64)
    assert np.abs(read_rgb(out.read_bytes("big.png")).astype(int) - expected).max() <= 1

    # Interrupted: no manifest, two outputs finished (marked, to see they are kept), the rest lost.
    out.delete(MANIFEST)
    for rel in out.list(recursive=True, suffix=".png"):
        out.delete(rel)
    sentinel = png(np.full((4, 4, 3), 7, np.uint8))
    out.write_bytes("c.png", sentinel)
    out.write_bytes("sub/b.png", sentinel)
    manifest = predict(pc)
    status = {o["output"]: o["status"] for o in manifest["outputs"]}
    assert status == {"a.png.png": "written", "a.jpg.png": "written", "big.png": "written",
                      "c.png": "existing", "sub/b.png": "existing"}
    assert out.read_bytes("c.png") == sentinel and out.read_bytes("sub/b.png") == sentinel
    assert len(out.list(recursive=True, suffix=".png")) == 5 and out.exists(MANIFEST)
    assert manifest["counts"] == {"outputs": 5, "written": 3, "existing": 2, "bad": 1}

    pc.out, pc.max_bad = f"s3://{s3_bucket}/strict", 0
    with pytest.raises(PredictError, match=r"1 bad inputs, more than --max-bad=0: broken.png: image does not decode"):
        predict(pc)
    assert not Store.open(pc.out, s3_endpoint=s3_endpoint).exists(MANIFEST)


@pytest.mark.slow
def test_dataset_label_maps_use_their_instance_edges(ray_cluster, tmp_path):
    from click.testing import CliRunner

    from asaptrain.cli import main
    from asaptrain.data.convert import convert
    from asaptrain.data.decode import edge_map
    from asaptrain.data.shards import shard_paths
    from asaptrain.data.synth import synth_plan
    from asaptrain.infer import generate, load_generator

    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "pix2pixhd-smoke", "labels")  # its first layer sees the edges at random init
    data = store.child("datasets", "scenes")
    convert(synth_plan("scenes", 3, (64, 128), seed=0, val_count=1), data)
    res = CliRunner().invoke(main, ["predict", "--run", run.uri, "--dataset", data.uri, "--out",
                                    str(tmp_path / "pred"), "--workers", "2", "--cpus-per-worker", "0.5",
                                    "--dtype", "fp32"])  # compared with fp32 below ("auto" may be bf16)
    assert res.exit_code == 0, res.output
    assert "images/s" in res.output and "4 written, 0 already there, 0 bad" in res.output
    manifest = json.loads((tmp_path / "pred" / MANIFEST).read_text())
    names = sorted(o["output"] for o in manifest["outputs"])
    assert len(names) == 4 and [n.split("/")[0] for n in names] == ["train"] * 3 + ["val"]
    import pyarrow.parquet as pq

    row = pq.read_table(shard_paths(data, "val")[0], filesystem=data.fs).to_pylist()[0]
    cfg, G = load_generator(run)
    ids = np.asarray(Image.open(io.BytesIO(row["input"])))
    edges = edge_map(np.asarray(Image.open(io.BytesIO(row["instance"]))).astype(np.int64))
    with_edges, = generate(G, cfg, [ids], [edges])
    without, = generate(G, cfg, [ids])
    got = np.asarray(Image.open(tmp_path / "pred" / "val" / f"{row['key']}.png")).astype(int)
    assert np.abs(got - with_edges).max() <= 1 and np.abs(with_edges.astype(int) - without).max() > 1


# ----------------------------------------------------------------------------- precision


def test_auto_dtype_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from asaptrain import precision

    with open("/proc/cpuinfo") as fh:  # this machine, as the kernel lists its flags
        flags = {f for line in fh if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    assert set(precision.cpu_bf16_flags()) == flags & {"avx512_bf16", "amx_bf16"}
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ("amx_bf16",))
    assert precision.resolve_dtype("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ())
    assert precision.resolve_dtype("auto", "cpu") == "fp32" and precision.resolve_dtype("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        precision.resolve_dtype("fp16", "cpu")


@pytest.mark.slow
def test_dtype_is_chosen_and_recorded(ray_cluster, tmp_path):
    from asaptrain.infer import generate, load_generator

    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "deblur")
    photos = tmp_path / "photos"
    photos.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    (photos / "a.png").write_bytes(png(image))
    manifest = predict(PredictConfig(run=run.uri, images=str(photos), out=str(tmp_path / "bf16"), dtype="bf16"))
    assert manifest["dtype"] == manifest["timing"]["precision"] == "bf16" and manifest["settings"]["dtype"] == "bf16"
    cfg, G = load_generator(run)
    fp32, = generate(G, cfg, [image], dtype="fp32")
    bf16, = generate(G, cfg, [image], dtype="bf16")
    got = read_rgb((tmp_path / "bf16" / "a.png").read_bytes()).astype(int)
    assert np.abs(got - bf16).max() <= 1 and np.abs(bf16.astype(int) - fp32).max() > 0  # bf16 really ran
    with pytest.raises(PredictError, match="--dtype must be one of auto, fp32, bf16"):
        predict(PredictConfig(run=run.uri, images=str(photos), out=str(tmp_path / "x"), dtype="fp16"))


def test_compile_mlp_reaches_each_workers_generator(tmp_path):
    """`predict --compile-mlp`: the model stage's generator runs its pixelwise MLPs compiled
    (the compiled path's output is checked in test_models)."""
    from asaptrain.models.pixel_mlp import PixelMLP
    from asaptrain.predict import Predictor
    from test_evaluate import make_run

    run = make_run(Store.open(str(tmp_path / "store")), "hybrid-smoke", "h")
    for on in (True, False):
        p = Predictor(run, "checkpoint_000002/state.pt", use_gpu=False, threads=1, tile=1024, batch=1, compile_mlp=on)
        flags = [m.compiled for m in p.G.modules() if isinstance(m, PixelMLP)]
        assert flags == [on], flags
