"""Checkpoints that do not fit or do not load, and `infer`'s outputs: no Ray needed.

A run directory is made by hand (config.toml, run.json, two checkpoints of a smoke preset's
freshly built state), the way a finished run leaves it.
"""

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
from asaptrain.data.store import Store
from asaptrain.infer import InferError, infer_files
from asaptrain.train.launch import fit
from asaptrain.train.loop import build_state
from asaptrain.train.resume import CheckpointError, newest_loadable, worker_checkpoint
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

CHECKPOINTS = ("checkpoint_2026-01-01_00-00-01.000000", "checkpoint_2026-01-01_00-00-02.000000")


def cfg_of(preset: str, store: Store, *extra: str):
    return apply_overrides(get_preset(preset), [f"storage.store={json.dumps(store.uri)}", *extra])


def make_run(store: Store, preset: str, name: str = "done") -> RunFiles:
    """A finished run of ``preset``: checkpoints at steps 2 and 4."""
    cfg = cfg_of(preset, store, "train.steps=4")
    files = RunFiles(store, name)
    files.write_config(cfg)
    files.write_run(name=name, preset=preset, model=cfg.model.name, status="finished", steps=4, steps_done=4)
    state = build_state(cfg, torch.device("cpu"), lambda m: m)
    for step, ckpt in zip((2, 4), CHECKPOINTS):
        state.step = step
        files.dir.write_bytes(f"{ckpt}/state.pt", to_bytes(state.state_dict()))
    return files


def corrupt(files: RunFiles, ckpt: str) -> None:
    data = files.dir.read_bytes(f"{ckpt}/state.pt")
    files.dir.write_bytes(f"{ckpt}/state.pt", data[: len(data) // 3])


def test_resume_with_another_model_is_refused_before_anything_is_written(tmp_path):
    store = Store.open(str(tmp_path))
    files = make_run(store, "deblurgan-smoke")
    before = {f: files.dir.read_bytes(f) for f in ("config.toml", "run.json")}
    with pytest.raises(CheckpointError) as err:
        fit(cfg_of("hybrid-smoke", store, "train.steps=8"), preset="hybrid-smoke", resume="done", store=store,
            progress=False)
    text = str(err.value)
    assert "holds a deblurgan model" in text and "describes a hybrid model" in text, text
    assert "generator:" in text and "not in the checkpoint" in text and "--config" in text, text
    assert {f: files.dir.read_bytes(f) for f in before} == before  # config.toml and run.json untouched


def test_resume_with_other_widths_names_the_shapes(tmp_path):
    store = Store.open(str(tmp_path))
    make_run(store, "deblurgan-smoke")
    ngf = get_preset("deblurgan-smoke").model.ngf
    cfg = cfg_of("deblurgan-smoke", store, "train.steps=8", f"model.ngf={ngf * 2}")
    with pytest.raises(CheckpointError, match=r"shapes differ \(.*in the checkpoint, .* in the config") as err:
        fit(cfg, resume="done", store=store, progress=False)
    # the checkpoint carries its config: the field that differs is named, not only the shapes
    assert f"model.ngf = {ngf} in the checkpoint, {ngf * 2} in the config" in str(err.value)


def test_a_corrupt_latest_checkpoint_is_named_and_passed_over(tmp_path):
    store = Store.open(str(tmp_path))
    files = make_run(store, "deblurgan-smoke")
    corrupt(files, CHECKPOINTS[1])
    found = newest_loadable(files.dir)
    assert found.rel == f"{CHECKPOINTS[0]}/state.pt" and found.state["step"] == 2
    assert len(found.skipped) == 1 and f"{CHECKPOINTS[1]}/state.pt does not load" in found.skipped[0]

    class Latest:  # what ray.train.get_checkpoint() gives a worker: the newest checkpoint's path
        path = files.dir.path(CHECKPOINTS[1])

    assert worker_checkpoint(Latest, files.dir)["step"] == 2
    corrupt(files, CHECKPOINTS[0])
    with pytest.raises(CheckpointError, match=rf"no checkpoint of the run loads: .*{CHECKPOINTS[1]}.*{CHECKPOINTS[0]}"):
        newest_loadable(files.dir)


def test_infer_falls_back_past_a_corrupt_checkpoint_and_names_an_asked_one(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    files = make_run(store, "deblurgan-smoke")
    corrupt(files, CHECKPOINTS[1])
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(src)
    res = CliRunner().invoke(main, ["infer", "--run", files.dir.uri, str(src), "--out", str(tmp_path / "o"),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert f"{CHECKPOINTS[1]}/state.pt does not load" in res.output and f"{CHECKPOINTS[0]}/state.pt (step 2)" in res.output
    res = CliRunner().invoke(main, ["infer", "--run", files.dir.uri, str(src), "--out", str(tmp_path / "o2"),
                                    "--checkpoint", CHECKPOINTS[1], "--device", "cpu"])
    assert res.exit_code == 2 and f"{CHECKPOINTS[1]}/state.pt does not load" in res.output, res.output


def test_infer_never_replaces_inputs_or_outputs_unasked(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    run_dir = make_run(store, "deblurgan-smoke").dir
    photos = tmp_path / "photos"
    for rel in ("x.png", "a/y.png", "b/y.png", "c/y.jpg"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 48, 3), 40, np.uint8)).save(photos / rel)
    original = (photos / "x.png").read_bytes()
    with pytest.raises(InferError, match="is an input"):
        infer_files(run_dir, [str(photos / "x.png")], str(photos), device="cpu")
    assert (photos / "x.png").read_bytes() == original
    out = tmp_path / "out"
    inputs = [str(photos / r) for r in ("a/y.png", "b/y.png", "c/y.jpg")]
    written = infer_files(run_dir, inputs, str(out), device="cpu")
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == ["a__y.png.png", "b__y.png.png", "y.jpg.png"]
    stamp = {p: open(p, "rb").read() for p in written}
    with pytest.raises(InferError, match="exists; pass --overwrite"):
        infer_files(run_dir, inputs, str(out), device="cpu")
    assert {p: open(p, "rb").read() for p in written} == stamp
    assert infer_files(run_dir, inputs, str(out), device="cpu", overwrite=True) == written
