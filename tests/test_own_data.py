"""A user's own data: paired folders in every layout, label sets by id or palette, EXIF orientation,
plain image-to-image for every model, and the hybrid's synthetic blur curriculum (no Ray here;
the Ray runs, `infer` and `predict` on these datasets are in test_own_data_ray.py)."""

from __future__ import annotations

import io
import json
import itertools

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from asaptrain.cli import main
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import SMOKE_PRESETS, get_preset
from asaptrain.config.schema import ConfigError
from asaptrain.data.convert import ConvertError, convert
from asaptrain.data.decode import DataError, Decoder, decode_rows, load_image
from asaptrain.data.labelsets import labels_plan, load_palette, resolve_num_labels
from asaptrain.data.pairs import pairs_plan
from asaptrain.data.pipeline import _shard_rows, reads_stored_input, to_model_batch, validation_raw
from asaptrain.data.shards import read_manifest, shard_paths
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.train.loop import train_loop
from reporting import ListReporter

H, W = 32, 48


def gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it within a few levels), different per seed."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.3, 1, 3)
    img = np.stack([x * 250 / w * a, y * 250 / h * b, 250 - (x + y) * 250 / (h + w) * c], -1)
    return img.astype(np.uint8)


def save(path, arr, orientation: int | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    img.save(path, quality=95, **kw) if str(path).endswith(".jpg") else img.save(path, **kw)


def rows(store: Store, split: str) -> dict[str, dict]:
    import pyarrow.parquet as pq

    return {r["key"]: r for r in pq.read_table(shard_paths(store, split), filesystem=store.fs).to_pylist()}


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(load_image(blob, "test"))


@pytest.fixture
def plain_pairs(tmp_path):
    """JPEG inputs beside PNG targets: one stored sideways with an EXIF rotation, one of another size,
    an input without a target and a target without an input."""
    inp, tgt = tmp_path / "blurred", tmp_path / "sharp"
    upright = gradient(H, W, 1)
    # Orientation 6: the viewer turns the stored pixels 90 degrees clockwise, so store them turned back.
    save(inp / "phone.jpg", np.ascontiguousarray(np.rot90(upright, 1)), orientation=6)
    save(tgt / "phone.png", upright)
    for i, name in enumerate(["b", "sub/c", "d", "e"]):
        save(inp / f"{name}.jpg", gradient(H, W, 10 + i))
    for i, name in enumerate(["b", "sub/c"]):
        save(tgt / f"{name}.png", gradient(H, W, 20 + i))
    save(tgt / "d.png", gradient(H + 16, W, 3))      # sizes differ
    save(tgt / "f.png", gradient(H, W, 4))           # no input
    (inp / "notes.txt").write_text("not an image")
    return inp, tgt, upright


def test_exif_orientation_is_applied_by_the_one_decode(plain_pairs):
    inp, _, upright = plain_pairs
    with Image.open(inp / "phone.jpg") as raw:
        assert raw.size == (H, W)  # stored sideways
    got = np.asarray(load_image(str(inp / "phone.jpg"), "phone")).astype(int)
    assert got.shape == upright.shape
    right = np.abs(got - upright).mean()
    wrong = min(np.abs(got - np.ascontiguousarray(v)).mean() for v in (upright[::-1], upright[:, ::-1]))
    assert right < wrong / 4


def test_plain_pairs_name_every_problem_and_store_inputs(plain_pairs, tmp_path):
    inp, tgt, upright = plain_pairs
    store = Store.open(str(tmp_path / "ds"))
    summary = convert(pairs_plan(inp, tgt, val_fraction=0.0), store)
    skipped = dict(summary.skipped)
    assert "same size" in skipped[str(inp / "d.jpg")] and f"{W}x{H + 16}" in skipped[str(inp / "d.jpg")]
    assert "no target partner" in skipped[str(inp / "e.jpg")]
    assert "no input partner" in skipped[str(tgt / "f.png")]
    assert len(skipped) == 3
    got = rows(store, "train")
    assert sorted(got) == ["b", "phone", "sub/c"]
    phone = decode(got["phone"]["input"]).astype(int)
    assert phone.shape == upright.shape and np.abs(phone - upright).mean() < 8  # upright, JPEG-close
    assert got["b"]["target"] == (tgt / "b.png").read_bytes()  # kept byte for byte
    manifest = read_manifest(store)
    assert manifest["inputs"] == "stored" and manifest["task"] == "deblur"
    again = convert(pairs_plan(inp, tgt, val_fraction=0.0), store)  # resumable: nothing redone
    assert again.written == 0 and again.reused == 1


def test_strict_refuses_before_writing_and_names_all(plain_pairs, tmp_path):
    inp, tgt, _ = plain_pairs
    out = tmp_path / "strict"
    res = CliRunner().invoke(main, ["data", "pairs", "--input", str(inp), "--target", str(tgt), "--strict",
                                    "--out", str(out), "--workers", "1"])
    assert res.exit_code != 0
    for name in ("d.jpg", "e.jpg", "f.png"):
        assert name in res.output
    assert not out.exists() or not any(out.iterdir())


def test_layouts_gopro_realblur_hide_ab(tmp_path):
    root = tmp_path / "RealBlur"
    for i, split in enumerate(["train", "test"]):
        save(root / f"scene{i}/gt/gt_1.png", gradient(H, W, i))
        save(root / f"scene{i}/blur/blur_1.png", gradient(H, W, 5 + i))
        (tmp_path / f"RealBlur_J_{split}_list.txt").write_text(f"scene{i}/gt/gt_1.png scene{i}/blur/blur_1.png\n")
    (tmp_path / "RealBlur_J_train_list.txt").write_text(
        (tmp_path / "RealBlur_J_train_list.txt").read_text() + "scene9/gt/gt_1.png scene9/blur/blur_1.png\n")
    plan = pairs_plan(root, layout="realblur", pairs_files=[tmp_path / "RealBlur_J_train_list.txt",
                                                             tmp_path / "RealBlur_J_test_list.txt"])
    assert {s: [i.key for i in items] for s, items in plan.splits.items()} == {
        "train": ["scene0/blur/blur_1"], "val": ["scene1/blur/blur_1"]}
    assert "listed file missing" in plan.skipped[0][1] and "scene9" in plan.skipped[0][1]

    hide = tmp_path / "HIDE"
    save(hide / "train/a.png", gradient(H, W, 1))
    save(hide / "test/test-close-ups/b.png", gradient(H, W, 2))
    save(hide / "test/test-long-shot/c.png", gradient(H, W, 3))  # no GT
    for name in ("a", "b"):
        save(hide / f"GT/{name}.png", gradient(H, W, 7))
    plan = pairs_plan(hide, layout="hide")
    assert {s: len(v) for s, v in plan.splits.items()} == {"train": 1, "val": 1}
    assert [p.endswith("c.png") for p, _ in plan.skipped] == [True]

    ab = tmp_path / "facades"
    save(ab / "train/1.jpg", np.concatenate([gradient(H, W, 1), gradient(H, W, 2)], 1))
    save(ab / "val/2.jpg", np.concatenate([gradient(H, W, 3), gradient(H, W, 4)], 1))
    save(ab / "train/odd.png", gradient(H, 2 * W + 1, 5))
    store = Store.open(str(tmp_path / "ab-ds"))
    summary = convert(pairs_plan(ab, layout="ab", split_by="dir"), store)
    assert summary.task == "image2image" and summary.splits["val"]["rows"] == 1
    assert "odd width" in dict(summary.skipped)[str(ab / "train/odd.png")]
    a = decode(rows(store, "train")["train/1"]["input"]).astype(int)
    assert a.shape == (H, W, 3) and np.abs(a - gradient(H, W, 1)).mean() < 8
    with pytest.raises(ConvertError, match="'misc'"):
        save(tmp_path / "flat/misc/x.png", gradient(H, W, 1))
        pairs_plan(tmp_path / "flat", layout="ab", split_by="dir")


PALETTE = {(128, 64, 128): 0, (70, 70, 70): 1, (107, 142, 35): 2, (70, 130, 180): 3, (220, 20, 60): 4}
N = 5


@pytest.fixture
def label_sets(tmp_path):
    """Id maps (one with id 7, out of range) and colour maps with a palette (one with an unknown colour)."""
    rng = np.random.default_rng(0)
    colours = np.array(list(PALETTE), np.uint8)
    for i in range(6):
        ids = rng.integers(0, N, (H, W)).astype(np.uint8)
        save(tmp_path / "photos" / f"{i}.jpg", gradient(H, W, i))
        save(tmp_path / "inst" / f"{i}.png", (ids.astype(np.uint16) * 1000 + (np.arange(W) > W // 2)))
        if i == 5:
            ids[:3, 0] = 7
        save(tmp_path / "ids" / f"{i}.png", ids)
        colour = colours[rng.integers(0, N, (H, W))]
        if i == 4:
            colour[:2, :2] = (1, 2, 3)
        save(tmp_path / "colour" / f"{i}.png", colour)
    (tmp_path / "palette.json").write_text(json.dumps({f"#{r:02x}{g:02x}{b:02x}": i for (r, g, b), i in PALETTE.items()}))
    (tmp_path / "palette.csv").write_text("r,g,b,id\n" + "".join(f"{r},{g},{b},{i}\n" for (r, g, b), i in PALETTE.items()))
    return tmp_path


def test_label_ids_and_colour_palettes(label_sets, tmp_path):
    d = label_sets
    assert load_palette(d / "palette.csv", N) == load_palette(d / "palette.json", N) == PALETTE
    with pytest.raises(ConvertError, match="outside 0..3"):
        load_palette(d / "palette.json", 4)
    ids = Store.open(str(tmp_path / "ids-ds"))
    summary = convert(labels_plan(d / "photos", d / "ids", N, instances=d / "inst", val_fraction=0.3), ids)
    assert dict(summary.skipped)[str(d / "ids/5.png")].startswith("id 7 (3 px) outside 0..4")
    manifest = read_manifest(ids)
    assert manifest["num_labels"] == N and manifest["palette"] is None and manifest["task"] == "labels2photo"
    colour = Store.open(str(tmp_path / "colour-ds"))
    summary = convert(labels_plan(d / "photos", d / "colour", N, palette=d / "palette.json"), colour)
    assert "#010203 (4 px)" in dict(summary.skipped)[str(d / "colour/4.png")]
    assert read_manifest(colour)["palette"] == [[*c, i] for c, i in sorted(PALETTE.items())]
    row = next(iter(rows(colour, "train").values()))
    assert set(np.unique(decode(row["input"]))) <= set(range(N))
    without = convert(labels_plan(d / "photos", d / "colour", N), Store.open(str(tmp_path / "no-palette")))
    assert all("--palette" in why for _, why in without.skipped)
    res = CliRunner().invoke(main, ["data", "labels", "--images", str(d / "photos"), "--labels", str(d / "colour"),
                                    "--num-labels", str(N), "--palette", str(d / "palette.csv"), "--workers", "1",
                                    "--out", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert "skipped 1 files" in res.output and "4.png" in res.output and "#010203 (4 px)" in res.output


def test_num_labels_comes_from_the_manifest(label_sets, tmp_path):
    store = Store.open(str(tmp_path / "store"))
    convert(labels_plan(label_sets / "photos", label_sets / "ids", N), store.child("datasets", "mine"))
    convert(synth_plan("scenes", 4, (32, 64), seed=0, val_count=1), store.child("datasets", "synth-scenes"))
    base = apply_overrides(get_preset("asapnet-smoke"), [f"storage.store={json.dumps(store.uri)}"])
    mine = apply_overrides(base, ["data.dataset=datasets/mine", "data.num_labels=0"])
    assert resolve_num_labels(mine, store).data.num_labels == N
    with pytest.raises(ConfigError, match=r"data.num_labels=35, but .*mine/manifest.json says the dataset has 5"):
        resolve_num_labels(apply_overrides(mine, ["data.num_labels=35"]), store)
    assert resolve_num_labels(base, store).data.num_labels == 35  # an old manifest without N: Cityscapes
    # Ids the config has no channel for stop training, named, instead of training a wrong one-hot.
    small = apply_overrides(base, ["data.num_labels=3", "data.instance_edges=false", "model.mlp_input=all",
                                   "data.crop_height=32", "data.crop_width=32"])
    ds = store.child("datasets", "mine")
    items = ((p, r) for p, r in _shard_rows(ds.fs, shard_paths(ds, "train"), ["key", "target", "input"], False))
    with pytest.raises(DataError, match=r"label ids id 3 \(\d+ px\), id 4 .* >= data.num_labels=3"):
        decode_rows(Decoder.from_config(small, True), items, 0, lambda bad: None, 0)


def test_blur_and_curriculum_config_checks():
    cfg = get_preset("deblurgan-gopro")
    assert cfg.data.blur == "stored" and cfg.curriculum.kind == "none"
    with pytest.raises(ConfigError, match="cannot act with data.blur='stored'"):
        apply_overrides(cfg, ["curriculum.kind=linear"])
    with pytest.raises(ConfigError, match="curriculum.kind='none' gives no blur strength"):
        apply_overrides(get_preset("hybrid-deblur"), ["curriculum.kind=none"])
    with pytest.raises(ConfigError, match="image2image' never does"):
        apply_overrides(get_preset("hybrid-smoke"), ["data.task=image2image"])
    for name in SMOKE_PRESETS:
        assert get_preset(name).data.blur in ("synthetic", "auto")
    from asaptrain.train.curriculum import build_blur_schedule

    assert build_blur_schedule(cfg.curriculum, 10).strength(3) is None  # nothing is blurred: no strength logged


def gopro_store(tmp_path) -> Store:
    """GoPro-layout pairs whose stored 'blurred' frames are other pictures entirely (inverted):
    an input made by blurring the sharp frame cannot be mistaken for them."""
    root = tmp_path / "GOPRO"
    for split, n in (("train", 4), ("test", 2)):
        for f in range(n):
            sharp = gradient(64, 64, f)
            save(root / split / "SEQ" / "sharp" / f"{f:06d}.png", sharp)
            save(root / split / "SEQ" / "blur" / f"{f:06d}.png", 255 - sharp)
    store = Store.open(str(tmp_path / "store"))
    convert(pairs_plan(root, layout="gopro"), store.child("datasets", "gopro"))
    return store


def test_hybrid_blur_strength_reaches_the_model(tmp_path):
    store = gopro_store(tmp_path)
    cfg = apply_overrides(get_preset("hybrid-deblur"), [
        f"storage.store={json.dumps(store.uri)}", "data.crop_height=32", "data.crop_width=32", "data.flip=false",
        "model.lowres_width=8", "model.lowres_max_channels=16", "model.mlp_width=8", "model.ndf=8",
        "loss.perceptual=none", "loss.l1_weight=10", "optim.d_steps=1", "train.batch_size=4", "train.steps=4",
        "train.log_every=1", "train.checkpoint_every=4", "eval.fid=false"])
    assert (cfg.curriculum.kind, cfg.curriculum.start, cfg.curriculum.end) == ("linear", 0.2, 0.8)
    ds = store.child("datasets", "gopro")
    assert not reads_stored_input(cfg, ds, shard_paths(ds, "train"))  # training blurs the sharp frames
    assert reads_stored_input(cfg, ds, shard_paths(ds, "val"), validation=True)  # and validates on real pairs
    assert "input" in validation_raw(cfg, store)
    decoder = Decoder.from_config(cfg, False)
    assert "input" not in decoder.columns
    cols = ["key", "target", "input"]
    raw = decode_rows(Decoder.from_config(cfg, True), _shard_rows(ds.fs, shard_paths(ds, "train"), cols, False),
                      None, lambda bad: None, 0)
    batch = {k: torch.from_numpy(v) for k, v in raw.items() if k != "input"}
    stored = torch.from_numpy(raw["input"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    seen = []

    def recording(b, c, strength, generator):
        x, y = to_model_batch(b, c, strength, generator)
        seen.append((strength, x, y))
        return x, y

    train_loop(cfg, itertools.repeat(batch), recording, torch.device("cpu"), ListReporter())
    strengths = [s for s, _, _ in seen]
    assert strengths == sorted(strengths) and strengths[0] < 0.5 < strengths[-1]
    for _, x, y in seen:
        assert (x - stored).abs().mean() > 0.5  # not the stored (inverted) frames
    err = [float((x - y).abs().mean()) for _, x, y in seen]
    assert err[-1] > err[0] > 0  # the same images, blurred more as the curriculum rises
    stored_cfg = get_preset("deblurgan-gopro")
    x, _ = to_model_batch({**batch, "input": torch.from_numpy(raw["input"])}, stored_cfg, None)
    assert torch.equal(x, stored)  # the paper's DeblurGAN reads the real pairs as they are


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_image2image_trains_every_model(preset, tmp_path):
    ab = tmp_path / "ab"
    for i in range(4):
        save(ab / f"{i}.png", np.concatenate([gradient(H, 32, i), gradient(H, 32, 9 - i)], 1))
    store = Store.open(str(tmp_path / "store"))
    convert(pairs_plan(ab, layout="ab", val_fraction=0.0), store.child("datasets", "ab"))
    cfg = apply_overrides(get_preset(preset), [
        f"storage.store={json.dumps(store.uri)}", "data.dataset=datasets/ab", "data.task=image2image",
        "data.instance_edges=false", "model.mlp_input=all", "data.blur=auto", "data.crop_height=32",
        "data.crop_width=32", "train.steps=2", "train.batch_size=2", "train.log_every=1",
        "train.checkpoint_every=2", "eval.images=2"])
    raw = validation_raw(cfg, store)
    x, y = to_model_batch(raw, cfg, None)
    assert x.shape == y.shape == (2, 3, 32, 32)
    assert torch.equal(x, raw["input"].permute(0, 3, 1, 2).float() / 127.5 - 1)
    rep = ListReporter()
    state = train_loop(cfg, itertools.repeat(raw), to_model_batch, torch.device("cpu"), rep, val=(x, y))
    assert state.step == 2 and np.isfinite(rep.reports[-1][0]["loss/g"])


def test_sweep_follows_the_blur():
    from asaptrain.sweep.space import default_space, space_notes
    from asaptrain.sweep.speed import reference_config

    hybrid = get_preset("hybrid-deblur")
    ref = reference_config(hybrid, "deblurgan-gopro")
    assert ref.model.name == "deblurgan" and ref.data.blur == "synthetic"
    assert (ref.curriculum.kind, ref.curriculum.start, ref.curriculum.end) == ("linear", 0.2, 0.8)
    assert "curriculum.kind" in default_space(hybrid) and "same inputs" in space_notes(hybrid)[0]
    stored = apply_overrides(hybrid, ["data.blur=stored", "curriculum.kind=none"])
    assert not [k for k in default_space(stored) if k.startswith("curriculum.")]
    assert "no curriculum dimensions" in space_notes(stored)[0]
