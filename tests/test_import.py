"""`asaptrain import`: official checkpoints made by the official code (tests/data/official, from
``tests/data/make_official_fixtures.py``) become runs whose generator gives the official output.

Tolerance: two fp32 evaluations of the same network differ by the rounding of their sums. A
dot product of K terms carries at most K * u relative error (u = 2^-24, Higham's gamma_K); the
layers here are normalized (instance norm) or 1-Lipschitz (ReLU, tanh, clamp), so relative
errors add up over the layers. Two computations, each within that bound: tol = 2 u sum_l K_l
(times the output's scale, <= 1). ASAP-Net adds its coordinate encoding, which the official code
computes in fp32 (cos/sin of arguments up to 2 pi) and asaptrain in fp64.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from PIL import Image

from asaptrain.config.io import load_config
from asaptrain.data.store import Store
from asaptrain.importers import ImportRefused, drop_running_stats, fit_official, import_checkpoint, read_official
from asaptrain.infer import infer_files, load_generator, model_input

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

DATA = Path(__file__).parent / "data" / "official"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())
INPUTS = torch.load(DATA / "inputs.pt", weights_only=True)
U = 2.0 ** -24


def fp32_tolerance(G: nn.Module) -> float:
    """2 u sum_l K_l over G's layers (K: terms summed per output value), see the module docstring."""
    terms = 0.0
    for m in G.modules():
        if isinstance(m, nn.ConvTranspose2d):  # each output sums in_channels * k^2 / stride^2 terms
            terms += m.in_channels * m.kernel_size[0] * m.kernel_size[1] / (m.stride[0] * m.stride[1])
        elif isinstance(m, nn.Conv2d):
            terms += m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            terms += m.in_features
    mlp = getattr(G, "mlp", None)
    if mlp is not None:  # the pixelwise MLPs (weights and bias per layer) and the fp32 coordinates
        terms += sum(d + 1 for d in mlp.dims[:-1]) + 2 * math.pi
    return 2 * U * terms


def fixture_config(key: str):
    f = FIXTURES[key]
    return load_config(f["preset"], None, f["set"])


def official_input(cfg, edges: bool) -> torch.Tensor:
    if cfg.data.task == "deblur":
        return model_input(INPUTS["photo"].numpy(), cfg)
    return model_input(INPUTS["ids"].numpy(), cfg, INPUTS["edges"].numpy() if edges else None)


def imported(tmp_path, key: str, name: str | None = None) -> tuple[Store, str]:
    f = FIXTURES[key]
    store = Store.open(str(tmp_path / "store"))
    import_checkpoint(f["importer"], str(DATA / f["file"]), fixture_config(key), store, name or key, f["preset"])
    return store, name or key


@pytest.mark.parametrize("key", sorted(FIXTURES))
def test_imported_generator_gives_the_official_output(tmp_path, key):
    store, name = imported(tmp_path, key)
    run_dir = store.child("runs", name)
    meta = run_dir.read_json("run.json")
    assert meta["status"] == "imported" and meta["source"]["file"] == FIXTURES[key]["file"]
    import hashlib
    assert meta["source"]["sha256"] == hashlib.sha256((DATA / FIXTURES[key]["file"]).read_bytes()).hexdigest()
    cfg, G = load_generator(run_dir)
    official = torch.load(DATA / FIXTURES[key]["out"], weights_only=True)
    with torch.no_grad():
        got = G(official_input(cfg, edges=True))
    want = official.get("out_edges", official["out"])
    tol = fp32_tolerance(G)
    diff = float((got - want).abs().max())
    print(f"{key}: max |asaptrain - official| = {diff:.3g} (tolerance {tol:.3g}, output std {float(want.std()):.3f})")
    assert float(want.std()) > 0.2, "the fixture's output is near-constant: it would prove little"
    assert diff <= tol


def test_pre04_file_drops_the_running_stats_and_names_them():
    state, dropped = drop_running_stats(read_official(str(DATA / "deblurgan_pre04.pth")))
    assert dropped and all(k.endswith(("running_mean", "running_var")) for k in dropped)
    assert any("conv_block.7.running_mean" in k for k in dropped)  # the published layout (issue threads)
    assert not any(k.endswith(("running_mean", "running_var")) for k in state)


def to_8bit(y: torch.Tensor) -> np.ndarray:
    """The official output written as 8-bit, rounding to nearest (what `infer` writes)."""
    return ((y[0].clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("key", ["pix2pixhd_local", "deblurgan", "asapnet"])
def test_infer_png_of_an_imported_run_matches_the_official_output(tmp_path, key):
    store, name = imported(tmp_path, key)
    f = FIXTURES[key]
    out = tmp_path / "out"
    written = infer_files(store.child("runs", name), [str(DATA / f["input"])], str(out), device="cpu")
    got = np.array(Image.open(written[0]))
    want = to_8bit(torch.load(DATA / f["out"], weights_only=True)["out"])  # no edges: infer reads none
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= 10, f"{(diff > 0).sum()} values differ, by up to {diff.max()}"


def test_cli_import_writes_a_run_and_refuses_the_name_twice(tmp_path):
    from asaptrain.cli import main

    f = FIXTURES["deblurgan_pre04"]
    args = ["import", "deblurgan", str(DATA / f["file"]), "--name", "wild", "--store", str(tmp_path / "s"),
            "--preset", f["preset"], *[a for s in f["set"] for a in ("--set", s)]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "s" / "runs" / "wild"
    assert (run / "config.toml").exists() and json.loads((run / "run.json").read_text())["status"] == "imported"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists" in again.output


def test_file_that_does_not_fit_names_keys_and_the_set_that_fits(tmp_path):
    """The 1024p layout against a 512p config: refused before writing, with the --set that fits."""
    cfg = load_config("pix2pixhd-smoke", None, ["model.downsamplings=3", "model.residual_blocks=2"])
    store = Store.open(str(tmp_path / "store"))
    with pytest.raises(ImportRefused) as err:
        import_checkpoint("pix2pixhd", str(DATA / "pix2pixhd_local.pth"), cfg, store, "x")
    msg = str(err.value)
    assert "missing" in msg and "extra" in msg and "model1_1.1.weight" in msg
    assert "--set model.ngf=2 --set model.local_enhancers=1" in msg
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*"))


def test_mis_shaped_keys_are_named(tmp_path):
    cfg = load_config("deblurgan-smoke", None, ["model.ngf=8", "model.residual_blocks=3"])
    with pytest.raises(ImportRefused) as err:
        import_checkpoint("deblurgan", str(DATA / "deblurgan.pth"), cfg, Store.open(str(tmp_path / "s")), "x")
    assert "mis-shaped" in str(err.value) and "--set model.ngf=4" in str(err.value)


def test_truncated_checkpoint_is_refused_and_named(tmp_path):
    data = (DATA / "pix2pixhd_global.pth").read_bytes()
    cut = tmp_path / "latest_net_G.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImportRefused, match="latest_net_G.pth is not a complete PyTorch checkpoint"):
        read_official(str(cut))


def test_checkpoint_of_another_model_is_refused_and_named(tmp_path):
    store = Store.open(str(tmp_path / "s"))
    with pytest.raises(ImportRefused, match="looks like a deblurgan generator"):
        import_checkpoint("pix2pixhd", str(DATA / "deblurgan.pth"), fixture_config("pix2pixhd_global"), store, "x")
    with pytest.raises(ImportRefused, match="looks like a asapnet generator"):
        import_checkpoint("deblurgan", str(DATA / "asapnet.pth"), fixture_config("deblurgan"), store, "x")
    with pytest.raises(ImportRefused, match="config's model is 'deblurgan'"):
        import_checkpoint("asapnet", str(DATA / "asapnet.pth"), fixture_config("deblurgan"), store, "x")
    assert not store.exists("runs/x")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_pickle_holding_code_is_refused_without_running_it(tmp_path):
    _Payload.marker = str(tmp_path / "ran")
    path = tmp_path / "evil.pth"
    torch.save({"model.1.weight": torch.zeros(1), "hook": _Payload()}, path)
    with pytest.raises(ImportRefused, match="evil.pth holds Python objects other than tensors"):
        read_official(str(path))
    assert not (tmp_path / "ran").exists()


def test_out_of_scope_checkpoints_are_refused_with_a_message(tmp_path):
    v2 = {"fpn.enc0.0.weight": torch.zeros(1), "final.weight": torch.zeros(1)}
    with pytest.raises(ImportRefused, match="DeblurGAN-v2"):
        fit_official("deblurgan", v2, fixture_config("deblurgan"), "v2.h5")
    facades = {"lowres_stream.model.1.0.weight": torch.zeros(8, 4, 3, 3)}  # a ReflectionPad2d at model.0
    with pytest.raises(ImportRefused, match="facades"):
        fit_official("asapnet", facades, fixture_config("asapnet"), "facades.pth")
    shrink = load_config("asapnet-smoke", None, ["model.tile_size=32"])
    with pytest.raises(ImportRefused, match="pre-shrink"):
        fit_official("asapnet", read_official(str(DATA / "asapnet.pth")), shrink, "asapnet.pth")
    one_conv = {k: v for k, v in read_official(str(DATA / "deblurgan.pth")).items() if "conv_block.6" not in k}
    with pytest.raises(ImportRefused, match="one-conv"):
        fit_official("deblurgan", one_conv, fixture_config("deblurgan"), "2019.pth")


def test_imported_run_exports_resume_is_refused_and_aggregate_lists_it(tmp_path):
    from asaptrain.export import export_generator, load_safetensors
    from asaptrain.report.aggregate import load_runs
    from asaptrain.train.launch import RunError, choose_name

    store, name = imported(tmp_path, "asapnet")
    cfg = fixture_config("asapnet")
    out = str(tmp_path / "g.safetensors")
    export_generator(store.child("runs", name), "safetensors", out)
    x = official_input(cfg, edges=True)
    _, G = load_generator(store.child("runs", name))
    with torch.no_grad():
        assert torch.equal(load_safetensors(out)(x), G(x))
    with pytest.raises(RunError, match=f"--init-from {name}"):
        choose_name(store, cfg, None, None, name)
    runs = load_runs(store)
    assert [r.name for r in runs] == [name] and runs[0].status == "imported"


def test_the_1024p_preset_is_the_published_model():
    from asaptrain.config.presets import get_preset
    from asaptrain.train.nets import build_generator, generator_in_channels

    cfg = get_preset("pix2pixhd-cityscapes-1024")
    with torch.device("meta"):
        G = build_generator(cfg)
    assert (cfg.model.ngf, cfg.model.local_enhancers, cfg.model.num_d, generator_in_channels(cfg)) == (32, 1, 3, 36)
    assert sum(p.numel() for p in G.parameters()) == 182_857_059  # notes/checkpoints.md


@pytest.mark.slow
def test_predict_runs_an_imported_generator(tmp_path, ray_cluster):
    """`predict` (Ray Data actors) reads an imported run, which has no discriminator."""
    from asaptrain.predict import PredictConfig, predict

    store, name = imported(tmp_path, "asapnet")
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(DATA / "labels.png", images / "labels.png")
    # fp32, as the official output was computed: "auto" is bf16 on a CPU with native bf16 units
    pc = PredictConfig(run=store.child("runs", name).uri, images=str(images), out=str(tmp_path / "pred"), workers=1,
                       cpus_per_worker=1, dtype="fp32")
    manifest = predict(pc)
    assert manifest["counts"]["written"] == 1 and manifest["dtype"] == "fp32"
    got = np.array(Image.open(tmp_path / "pred" / "labels.png"))
    want = to_8bit(torch.load(DATA / "asapnet.out.pt", weights_only=True)["out"])
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= 10


def test_import_into_an_s3_store_and_read_it_back(s3_endpoint, s3_bucket):
    f = FIXTURES["pix2pixhd_local"]
    store = Store.open(f"s3://{s3_bucket}/store", s3_endpoint=s3_endpoint)
    meta = import_checkpoint("pix2pixhd", str(DATA / f["file"]), fixture_config("pix2pixhd_local"), store, "p2p")
    run = Store.open(f"s3://{s3_bucket}/store/runs/p2p", s3_endpoint=s3_endpoint)
    assert run.read_json("run.json") == meta and run.exists(meta["checkpoint"])
    cfg, G = load_generator(run)
    with torch.no_grad():
        got = G(official_input(cfg, edges=True))
    assert float((got - torch.load(DATA / f["out"], weights_only=True)["out_edges"]).abs().max()) <= fp32_tolerance(G)
