"""A user's own data under real Ray: one 2-worker run per new kind of data (plain image pairs, a
label set of its own with instance maps), then `infer` and `predict` on them, every bad input named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from asaptrain.cli import main
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.config.schema import ConfigError
from asaptrain.data.convert import convert
from asaptrain.data.labelsets import labels_plan
from asaptrain.data.pairs import pairs_plan
from asaptrain.data.store import Store
from asaptrain.infer import load_generator, model_input, read_edges, read_input
from asaptrain.predict import PredictConfig, predict
from asaptrain.train.launch import fit
from asaptrain.train.run_files import RunFiles
from test_own_data import N, PALETTE, gradient, save

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

pytestmark = pytest.mark.slow

TWO_WORKERS = ["scaling.num_workers=2", "scaling.resources_per_worker={CPU = 0.5}", "scaling.use_gpu=false"]
SHORT = ["train.steps=2", "train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2", "eval.every=2",
         "train.sample_every=2", "eval.images=2", "data.crop_height=32", "data.crop_width=32"]


@pytest.fixture(scope="module")
def own(tmp_path_factory, ray_cluster):
    """A store with two converted datasets of a user's own (and the folder they came from)."""
    root = tmp_path_factory.mktemp("own")
    s = Store.open(str(root / "store"))
    rng = np.random.default_rng(0)
    for i in range(6):  # pix2pix-style A|B images, A in train/ and val/
        split = "val" if i == 5 else "train"
        save(root / "ab" / split / f"{i}.png", np.concatenate([gradient(32, 48, i), gradient(32, 48, 9 - i)], 1))
        ids = rng.integers(0, N, (32, 48)).astype(np.uint8)
        save(root / "photos" / f"{i}.png", gradient(32, 48, i))
        save(root / "ids" / f"{i}.png", ids)
        save(root / "inst" / f"{i}.png", ids.astype(np.uint16) * 1000 + (np.arange(48) > 20))
    convert(pairs_plan(root / "ab", layout="ab", split_by="dir"), s.child("datasets", "ab"))
    convert(labels_plan(root / "photos", root / "ids", N, instances=root / "inst", val_fraction=0.2),
            s.child("datasets", "mine"))
    return s, root


def cfg(preset: str, store: Store, *extra: str):
    return apply_overrides(get_preset(preset), [f"storage.store={json.dumps(store.uri)}", *TWO_WORKERS, *SHORT, *extra])


def test_image2image_two_workers_then_infer(own, tmp_path):
    store, _ = own
    c = cfg("deblurgan-smoke", store, "data.task=image2image", "data.dataset=datasets/ab", "data.blur=auto")
    result = fit(c, preset="deblurgan-smoke", progress=False)
    assert result.status == "finished", result.error
    files = RunFiles(store, result.name)
    assert files.read_run()["task"] == "image2image" and files.read_run()["world_size"] == 2
    evals = [r for r in files.read_metrics() if r["kind"] == "eval"]
    assert evals and evals[-1]["psnr"] > 0
    src = tmp_path / "a.png"
    save(src, gradient(40, 56, 3), orientation=6)  # stored sideways: the output is upright, 56 tall
    res = CliRunner().invoke(main, ["infer", "--run", files.dir.uri, str(src), "--out", str(tmp_path / "out"),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.size == (40, 56)


def test_own_label_set_two_workers_then_infer_and_predict(own, tmp_path):
    store, root = own
    # A config naming another label count is refused before the run starts (no run directory).
    with pytest.raises(ConfigError, match="says the dataset has 5 labels"):
        fit(cfg("asapnet-smoke", store, "data.dataset=datasets/mine"), name="refused", progress=False)
    assert not RunFiles(store, "refused").exists()
    result = fit(cfg("asapnet-smoke", store, "data.dataset=datasets/mine", "data.num_labels=0"),
                 preset="asapnet-smoke", progress=False)
    assert result.status == "finished", result.error
    files = RunFiles(store, result.name)
    assert "num_labels = 5" in files.dir.read_text("config.toml")

    good, colour, unknown = tmp_path / "in" / "good.png", tmp_path / "bad" / "colour.png", tmp_path / "bad" / "ids.png"
    save(good, np.asarray(Image.open(root / "ids" / "0.png")))
    save(colour, np.array(list(PALETTE), np.uint8)[np.asarray(Image.open(root / "ids" / "0.png"))])
    ids = np.asarray(Image.open(root / "ids" / "1.png")).copy()
    ids[0, :4] = 9
    save(unknown, ids)
    run = ["infer", "--run", files.dir.uri, "--device", "cpu"]
    res = CliRunner().invoke(main, [*run, str(colour), "--out", str(tmp_path / "o1")])
    assert res.exit_code != 0 and "colour.png is a colour image" in res.output and "--palette" in res.output
    res = CliRunner().invoke(main, [*run, str(unknown), "--out", str(tmp_path / "o2")])
    assert res.exit_code != 0 and "ids.png holds label ids the model does not know (id 9 (4 px))" in res.output
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    res = CliRunner().invoke(main, [*run, str(good), "--out", str(tmp_path / "o3")])
    assert res.exit_code == 0 and res.output.count("no instance maps were given") == 1
    inst = tmp_path / "inst"
    save(inst / "good.png", np.asarray(Image.open(root / "inst" / "0.png")))
    res = CliRunner().invoke(main, [*run, str(good), "--out", str(tmp_path / "o4"), "--instances", str(inst)])
    assert res.exit_code == 0 and "no instance maps" not in res.output
    with_edges, without = (np.asarray(Image.open(tmp_path / d / "good.png")) for d in ("o4", "o3"))
    assert with_edges.shape == (32, 48, 3) == without.shape
    # The edges reach the generator: its float outputs differ (the 8-bit PNGs of a 2-step model may not).
    run_cfg, G = load_generator(files.dir)
    label_ids = read_input(good, run_cfg)
    with torch.no_grad():
        outs = [G(model_input(label_ids, run_cfg, e)) for e in (read_edges(inst / "good.png", label_ids.shape), None)]
    assert outs[0].shape == outs[1].shape and (outs[0] - outs[1]).abs().max() > 0

    # predict: the same label maps; the unknown ids and the colour map are named, the rest written.
    images = tmp_path / "images"
    for p in (good, colour, unknown):
        save(images / p.name, np.asarray(Image.open(p)))
    save(inst / "colour.png", np.asarray(Image.open(root / "inst" / "0.png")))
    save(inst / "ids.png", np.asarray(Image.open(root / "inst" / "1.png")))
    manifest = predict(PredictConfig(run=files.dir.uri, out=str(tmp_path / "pred"), images=str(images),
                                     instances=str(inst), max_bad=2, workers=1, cpus_per_worker=0.5))
    assert manifest["counts"]["written"] == 1 and (tmp_path / "pred" / "good.png").exists()
    reasons = {b["input"]: b["reason"] for b in manifest["bad"]}
    assert "colour image" in reasons["colour.png"] and "id 9 (4 px)" in reasons["ids.png"]
