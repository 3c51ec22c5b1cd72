"""Export a run's generator for serving: ONNX, TorchScript, or bare safetensors weights, each
with a JSON file beside it (``FILE.json``) holding the config and the input/output conventions.

    asaptrain export --run ./asaptrain-store/runs/NAME --format onnx --out deblur.onnx
    G = load_safetensors("deblur.safetensors")   # build_generator(config in FILE.json) + weights

What is exported: the EMA generator when the run kept one (else G), fp32, NCHW, in eval mode,
with batch, height and width dynamic. Heights and widths must be multiples of ``multiple`` and
at least ``min`` pixels (``size_rules``; both are in the JSON): pad the input (reflect) and crop
the output, as ``asaptrain infer`` does. The graph itself does not check sizes.

The ASAP-Net family is exported on its traceable path (``ASAPNetGenerator.set_traceable``,
``models/traceable.py``): the pixelwise MLPs on aligned tiles gathered by unfold and reshape,
and the antialiased shrink as a conv, since the fused Triton kernel, the training path's strided
gather and fold, and the antialiased resize cannot be traced with dynamic sizes. The numbers
change by float rounding only (the check below measures it).

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``): it exists on every
torch this package supports (2.4-2.14) and needs nothing beyond torch; the dynamo exporter
needs onnxscript and torch.export's symbolic shapes. After writing, the ONNX file is run with
onnxruntime on the CPU at two sizes and its largest difference from PyTorch is recorded in the
JSON (``check``); TorchScript is checked the same way against the eager module.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.config.io import from_dict, to_dict
from asaptrain.config.schema import Config
from asaptrain.config.validate import validate
from asaptrain.errors import UserError
from asaptrain.export_files import SIDECAR_SUFFIX, claim_output, verify_pair, write_pair
from asaptrain.infer import load_weights
from asaptrain.models.asapnet import ASAPNetGenerator
from asaptrain.train.nets import build_generator, generator_in_channels, min_input_size, size_multiple

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 17
"""ONNX opset: onnxruntime >= 1.14 runs it; every op the four generators need is in it."""


class ExportError(UserError):
    """An export that cannot be done as asked (file exists, package missing, bad format)."""


@dataclass
class ExportResult:
    path: str
    meta_path: str
    format: str
    source: str
    """"ema" or "generator": which weights were exported."""
    check: dict | None
    """Largest |exported - PyTorch| per checked input size (None for safetensors)."""


# ----------------------------------------------------------------------------- conventions


def size_rules(cfg: Config) -> tuple[int, int]:
    """(multiple, minimum) in pixels for height and width.

    ASAP-Net / hybrid: multiples of the tile size S (one MLP per S x S tile), at least 2 S: the
    low-res stream runs on a grid of (H / S, W / S) cells, whose reflect padding needs 2 cells
    a side and whose instance norm needs more than one cell. pix2pixHD / DeblurGAN: multiples
    of their total stride (``nets.size_multiple``), at least twice that, since the ResNet blocks
    reflect-pad the bottleneck (``nets.min_input_size``).
    """
    return size_multiple(cfg), min_input_size(cfg)


def conventions(cfg: Config) -> dict:
    """What the exported graph takes and returns, for whoever serves it."""
    multiple, minimum = size_rules(cfg)
    channels = generator_in_channels(cfg)
    if cfg.data.task == "labels2photo":
        edges = " then 1 channel of instance boundaries (1 where a pixel's instance id differs from a 4-neighbour's)" \
            if cfg.data.instance_edges else ""
        inp = {"channels": channels, "kind": "labels", "range": [0.0, 1.0],
               "description": f"one-hot label ids 0..{cfg.data.num_labels - 1} (channel i = 1 where the label is i),"
                              f"{edges}"}
    else:
        inp = {"channels": channels, "kind": "rgb", "range": [-1.0, 1.0],
               "description": "RGB photo, channels R, G, B: value = pixel / 127.5 - 1"}
    return {
        "layout": "NCHW", "dtype": "float32",
        "input": {"name": "input", **inp},
        "output": {"name": "output", "channels": 3, "kind": "rgb", "range": [-1.0, 1.0],
                   "description": "RGB photo: pixel = round((clamp(value, -1, 1) + 1) * 127.5)"},
        "size": {"dynamic": ["batch", "height", "width"], "multiple": multiple, "min": minimum,
                 "description": f"height and width multiples of {multiple}, at least {minimum}: reflect-pad "
                                f"the input and crop the output"},
    }


# ----------------------------------------------------------------------------- export-ready module


def exportable(G: nn.Module) -> nn.Module:
    """``G`` (in place) in eval mode, on the paths exporters can trace (``set_traceable``)."""
    G.eval()
    if isinstance(G, ASAPNetGenerator):
        G.set_traceable()
    return G


def example_input(cfg: Config, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A valid input of the model's kind: random one-hot labels (+ edges), or RGB in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    if cfg.data.task == "labels2photo":
        ids = torch.randint(0, cfg.data.num_labels, (batch, height, width), generator=g)
        x = F.one_hot(ids, cfg.data.num_labels).permute(0, 3, 1, 2).float()
        if cfg.data.instance_edges:
            x = torch.cat([x, (torch.rand(batch, 1, height, width, generator=g) < 0.1).float()], dim=1)
        return x
    return torch.rand(batch, 3, height, width, generator=g) * 2 - 1


def check_sizes(cfg: Config) -> list[tuple[int, int, int]]:
    """(batch, height, width) the export is checked at: the training crop, and a second shape
    (other batch, height and width) that proves the axes are dynamic."""
    multiple, minimum = size_rules(cfg)
    h, w = cfg.data.crop_height, cfg.data.crop_width
    return [(1, h, w), (2, max(minimum, h - multiple), w + multiple)]


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def _quiet():
    """Hide the exporters' notices that say nothing about this model: the legacy exporter's
    deprecation, and tracer notes on shape checks that are constant for a given input size."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # instance norm always uses the input's statistics here (no running stats kept), which
        # is what "train=True" means; slices with a step cannot be folded, and need not be.
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        yield


def _write_onnx(G: nn.Module, cfg: Config, tmp: str) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("--format onnx needs onnxruntime to check the file: pip install 'asaptrain[export]'") from None
    sample = example_input(cfg, *check_sizes(cfg)[0])
    axes = {0: "batch", 2: "height", 3: "width"}
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with _quiet(), torch.no_grad():
        torch.onnx.export(G, (sample,), tmp, input_names=["input"], output_names=["output"], opset_version=OPSET,
                          dynamic_axes={"input": axes, "output": axes}, do_constant_folding=True, **kwargs)
    session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
    return _check(G, cfg, lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0]),
                  f"onnxruntime {ort.__version__} (CPU)")


def _write_torchscript(G: nn.Module, cfg: Config, tmp: str) -> dict:
    sample = example_input(cfg, *check_sizes(cfg)[0])
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(G, (sample,), check_trace=False)
        torch.jit.save(traced, tmp)
    loaded = torch.jit.load(tmp)
    return _check(G, cfg, loaded, f"torch.jit {torch.__version__}")


def _check(G: nn.Module, cfg: Config, run, runtime: str) -> dict:
    rows = []
    for b, h, w in check_sizes(cfg):
        x = example_input(cfg, b, h, w, seed=1)
        with torch.no_grad():
            want, got = G(x), run(x)
        if tuple(got.shape) != tuple(want.shape):
            raise ExportError(f"exported graph gave shape {tuple(got.shape)} for input {tuple(x.shape)}, PyTorch "
                              f"{tuple(want.shape)}: the export is not usable at this size")
        rows.append({"input": list(x.shape), "max_abs_error": float((got.float() - want).abs().max())})
    return {"runtime": runtime, "sizes": rows, "max_abs_error": max(r["max_abs_error"] for r in rows)}


def _write_safetensors(state_dict: dict, cfg: Config, tmp: str) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ExportError("--format safetensors needs safetensors: pip install 'asaptrain[export]'") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, tmp, metadata={"format": "asaptrain-generator", "model": cfg.model.name})


# ----------------------------------------------------------------------------- entry points


def export_generator(run_dir, fmt: str, out: str, checkpoint_rel: str | None = None,
                     overwrite: bool = False) -> ExportResult:
    """Write ``out`` (and ``out + ".json"``) from the run in ``run_dir`` (a Store)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    meta_path = out + SIDECAR_SUFFIX
    for path in (out, meta_path):
        if os.path.exists(path) and not overwrite:
            raise ExportError(f"{path} exists; pass --overwrite to replace it, or choose another --out")
    if os.path.isdir(out):
        raise ExportError(f"--out {out} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ExportError(f"--out {out}: folder {parent} does not exist")
    with claim_output(out):  # released however the export ends
        return _export_claimed(run_dir, fmt, out, checkpoint_rel)


def _export_claimed(run_dir, fmt: str, out: str, checkpoint_rel: str | None) -> ExportResult:
    """:func:`export_generator` while ``out`` is claimed; the pair is written by ``write_pair``."""
    meta_path = out + SIDECAR_SUFFIX
    weights = load_weights(run_dir, checkpoint_rel)
    cfg = weights.cfg
    G = build_generator(cfg)
    G.load_state_dict(weights.state_dict)
    tmp = f"{out}.part-{os.getpid()}"
    try:
        if fmt == "safetensors":
            _write_safetensors(G.state_dict(), cfg, tmp)
            check = None
        else:
            writer = _write_onnx if fmt == "onnx" else _write_torchscript
            check = writer(exportable(G), cfg, tmp)
        meta = {
            "format": fmt, "model": cfg.model.name, "task": cfg.data.task, "weights": weights.source,
            "run": run_dir.uri_for(""), "checkpoint": weights.checkpoint, "step": weights.step,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__,
            **({"opset": OPSET} if fmt == "onnx" else {}),
            "conventions": conventions(cfg), "check": check, "config": to_dict(cfg),
        }
        write_pair(tmp, meta, out)  # never the new file beside the old description
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ExportResult(out, meta_path, fmt, weights.source, check)


def read_sidecar(path: str) -> tuple[dict, Config]:
    """``path + ".json"`` and the config it holds."""
    meta_path = path + SIDECAR_SUFFIX
    if not os.path.exists(meta_path):
        raise ExportError(f"{meta_path} is missing: it holds the config and is written last by "
                          f"`asaptrain export` (an export that did not finish has none)")
    with open(meta_path) as fh:
        meta = json.load(fh)
    return meta, validate(from_dict(meta["config"], source=meta_path))


def load_safetensors(path: str) -> nn.Module:
    """The generator of a safetensors export: ``build_generator`` of its config, its weights."""
    from safetensors.torch import load_file

    meta, cfg = read_sidecar(path)
    verify_pair(path, meta)
    G = build_generator(cfg)
    G.load_state_dict(load_file(path))
    return G.eval()
