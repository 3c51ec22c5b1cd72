"""`asaptrain export`: ONNX checked with onnxruntime on the CPU, TorchScript, and safetensors
weights that reload into build_generator exactly, for the four models at smoke size."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import SMOKE_PRESETS, get_preset
from asaptrain.data.store import Store
from asaptrain.export import (
    ExportError, example_input, export_generator, load_safetensors, size_rules,
)
from asaptrain.models.asapnet import TentDownsample
from asaptrain.models.pixel_mlp import PixelMLP
from asaptrain.train.nets import build_generator
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")


def trained_like(G: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy with weights of a useful scale: at init ASAP-Net's xavier gain 0.02 gives outputs
    of ~0.004, too small for a comparison to mean anything; these give ~0.5, mostly unsaturated."""
    G = copy.deepcopy(G).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in G.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 / math.sqrt(p[0].numel()))
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return G


def make_run(tmp_path, preset: str, ema: bool = True, overrides=()):
    """A run directory as training leaves it: config.toml and a checkpoint whose EMA differs from G."""
    cfg = apply_overrides(get_preset(preset), list(overrides))
    files = RunFiles(Store.open(str(tmp_path / "store")), "run")
    files.write_config(cfg)
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    E = trained_like(G, seed=1)
    state = {"generator": (G if not ema else trained_like(G, seed=2)).state_dict(),
             "ema": E.state_dict() if ema else None, "step": 7}
    files.dir.write_bytes("checkpoint_000001/state.pt", to_bytes(state))
    return files.dir, cfg, (E if ema else G), G


def test_tent_conv_is_the_antialiased_shrink():
    x = torch.randn(2, 5, 48, 80)
    for factor in (2, 4, 8):
        shrink = TentDownsample(factor)
        want = shrink(x)
        shrink.traceable = True
        assert torch.allclose(shrink(x), want, atol=1e-5)


@pytest.mark.parametrize("tile,band,context", [(16, 4, 3), (16, 8, 1), (8, 2, 3), (16, 1, 3), (16, 0, 3)])
def test_traceable_path_is_the_training_path(tile, band, context):
    """The export form of a PixelMLP (aligned tiles; with a band, pieces of them overlap-added by
    padding and summing) equals the training path (strided gather, fold), border cells included,
    at several sizes."""
    mlp = PixelMLP(3, 3, 16, 3, tile, context=context, band=band)
    mlp.fused = False
    g = torch.Generator().manual_seed(tile + band)
    for h, w in [(2 * tile, 3 * tile), (4 * tile, tile)]:
        x = torch.randn(2, 3, h, w, generator=g)
        params = torch.randn(2, h // tile, w // tile, mlp.num_params, generator=g) * 0.3
        want = mlp(x, params)
        assert float(want.std()) > 0.1
        mlp.traceable = True
        got = mlp(x, params)
        assert mlp.path() == "traceable"
        mlp.traceable = False
        assert torch.allclose(got, want, atol=1e-6)


def test_export_uses_only_the_models_public_api():
    """The traceable path belongs to the model: export binds no methods onto a module and reads
    no private field of one."""
    import ast
    import inspect

    import asaptrain.export as export

    tree = ast.parse(inspect.getsource(export))
    private = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not private and "MethodType" not in inspect.getsource(export), private


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_onnx_matches_pytorch_at_any_allowed_size(preset, tmp_path):
    run_dir, cfg, ema, _ = make_run(tmp_path, preset)
    out = str(tmp_path / "g.onnx")
    result = export_generator(run_dir, "onnx", out)
    meta = json.load(open(out + ".json"))
    multiple, minimum = size_rules(cfg)
    assert meta["weights"] == "ema" and result.source == "ema"
    assert meta["conventions"]["size"] == {**meta["conventions"]["size"], "multiple": multiple, "min": minimum}
    assert meta["check"]["max_abs_error"] < 1e-4
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    errors = []
    # The training crop, the smallest allowed size, and a wide one, batch 2: the axes are dynamic.
    for b, h, w in [(1, cfg.data.crop_height, cfg.data.crop_width), (2, minimum, minimum),
                    (2, minimum, cfg.data.crop_width + 3 * multiple)]:
        x = example_input(cfg, b, h, w, seed=5)
        with torch.no_grad():
            want = ema(x)  # the run's own module: TentDownsample and all
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        assert got.shape == want.shape == (b, 3, h, w)
        assert float(want.std()) > 0.05  # a comparison of near-constant outputs would prove nothing
        errors.append(float((got - want).abs().max()))
    print(f"{preset}: max |onnxruntime - PyTorch| = {max(errors):.3g}")
    assert max(errors) < 1e-4


def test_torchscript_matches_pytorch_at_other_sizes(tmp_path):
    run_dir, cfg, ema, _ = make_run(tmp_path, "hybrid-smoke")
    assert cfg.model.tile_blend  # the blended hybrid, as trained
    out = str(tmp_path / "g.pt")
    export_generator(run_dir, "torchscript", out)
    traced = torch.jit.load(out)
    x = example_input(cfg, 2, 32, 96, seed=3)
    with torch.no_grad():
        assert torch.allclose(traced(x), ema(x), atol=1e-5)


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_safetensors_reload_into_build_generator_exactly(preset, tmp_path):
    ema_kept = preset != "deblurgan-smoke"  # one run without an EMA: G itself is exported
    run_dir, cfg, expected, G = make_run(tmp_path, preset, ema=ema_kept)
    out = str(tmp_path / "g.safetensors")
    assert export_generator(run_dir, "safetensors", out).source == ("ema" if ema_kept else "generator")
    loaded = load_safetensors(out)
    assert type(loaded) is type(expected)
    x = example_input(cfg, 2, cfg.data.crop_height, cfg.data.crop_width, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
        if ema_kept:
            assert not torch.allclose(loaded(x), G(x))  # the EMA weights, not G's


def test_export_never_overwrites_unasked(tmp_path):
    run_dir, *_ = make_run(tmp_path, "deblurgan-smoke")
    out = tmp_path / "g.safetensors"
    out.write_bytes(b"someone else's file")
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export_generator(run_dir, "safetensors", str(out))
    assert out.read_bytes() == b"someone else's file" and not os.path.exists(f"{out}.json")
    export_generator(run_dir, "safetensors", str(out), overwrite=True)
    assert out.read_bytes() != b"someone else's file" and os.path.exists(f"{out}.json")
    assert [p for p in os.listdir(tmp_path) if ".part" in p] == []


def test_cli_export_prints_the_check_and_refuses_a_second_time(tmp_path):
    run_dir, *_ = make_run(tmp_path, "asapnet-smoke")
    out = str(tmp_path / "g.onnx")
    args = ["export", "--run", run_dir.uri_for(""), "--format", "onnx", "--out", out]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "ema weights" in first.output and "max |onnx - PyTorch|" in first.output
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 2 and "--overwrite" in second.output


def test_export_names_a_missing_run(tmp_path):
    result = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "nope"), "--format", "onnx",
                                       "--out", str(tmp_path / "g.onnx")])
    assert result.exit_code == 2 and "config.toml is missing" in result.output
    assert not os.path.exists(tmp_path / "g.onnx")
