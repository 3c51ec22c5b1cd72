"""Export a run's generator for serving: ONNX, TorchScript, or bare safetensors weights, each
with a JSON file beside it (``FILE.json``) holding the config and the input/output conventions.

    asaptrain export --run ./asaptrain-store/runs/NAME --format onnx --out deblur.onnx
    G = load_safetensors("deblur.safetensors")   # build_generator(config in FILE.json) + weights

What is exported: the EMA generator when the run kept one (else G), fp32, NCHW, in eval mode,
with batch, height and width dynamic. Heights and widths must be multiples of ``multiple`` and
at least ``min`` pixels (``size_rules``; both are in the JSON): pad the input (reflect) and crop
the output, as ``asaptrain infer`` does. The graph itself does not check sizes.

Two swaps make the ASAP-Net family exportable; neither changes the numbers beyond float
rounding (the ONNX check below measures it):

* the pixelwise MLPs run as batched matmuls on aligned tiles gathered by unfold and reshape
  (``_traceable_tiles``): the fused Triton kernel is a CUDA-only custom op that no exporter
  can see through, and the training path's strided gather and fold freeze traced sizes. With
  ``tile_blend`` (a blend band) the overlapping extended tiles are split into pieces that
  aligned tiles hold, and overlap-added by padding and summing (``_traceable_blend``);
* the fixed antialiased shrink before the low-res stream (``TentDownsample``, used when
  ``tile_size > lowres_downsample``) becomes the same tent filter as a strided depthwise conv
  with border renormalization: ONNX has no antialiased bilinear resize in the TorchScript
  exporter, and ONNX Resize's antialias mode is not PyTorch's filter.

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
import types
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.config.io import from_dict, to_dict
from asaptrain.config.schema import Config, validate
from asaptrain.errors import UserError
from asaptrain.infer import load_weights
from asaptrain.models.asapnet import ASAPNetGenerator, TentDownsample
from asaptrain.models.pixel_mlp import PixelMLP, layer_matrices, pad_input
from asaptrain.train.nets import build_generator, generator_in_channels, min_input_size, size_multiple

FORMATS = ("onnx", "torchscript", "safetensors")
OPSET = 17
"""ONNX opset: onnxruntime >= 1.14 runs it; every op the four generators need is in it."""
SIDECAR_SUFFIX = ".json"


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
    of 2^(downsamplings + local enhancers), at least twice that, since the ResNet blocks
    reflect-pad the bottleneck.
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


class TentConv(nn.Module):
    """``TentDownsample(factor)`` as a strided depthwise conv (exportable, same numbers).

    For an even factor f, PyTorch's antialiased bilinear shrink takes 2f taps per output with
    weights (1, 3, ..., 2f-1, 2f-1, ..., 3, 1) / f^2 centred on the output's footprint, and
    renormalizes the taps that fall inside the image at the border: a zero-padded conv divided
    by the same conv of an all-ones image.
    """

    def __init__(self, factor: int, channels: int):
        super().__init__()
        if factor % 2:
            raise ValueError(f"TentConv needs an even factor, got {factor}")
        taps = torch.cat([torch.arange(1, 2 * factor, 2), torch.arange(2 * factor - 1, 0, -2)]).double()
        kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).float()
        self.factor = factor
        # Not in the state dict: an exported module's weights stay those of build_generator.
        self.register_buffer("weight", kernel.expand(channels, 1, -1, -1).contiguous(), persistent=False)
        self.register_buffer("ones_weight", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        num = F.conv2d(x, self.weight, stride=f, padding=f // 2, groups=self.weight.shape[0])
        den = F.conv2d(torch.ones_like(x[:, :1]), self.ones_weight, stride=f, padding=f // 2)
        return num / den


def _cell_mlps(self: PixelMLP, h: torch.Tensor, coords: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Each cell's MLP on its rows: h (cells, rows, C k^2 context), coords (rows, K) -> (cells, rows, out).

    The coordinates and the constant-1 bias input are appended, then one bmm per layer
    (``layer_matrices``), as the training path runs them.
    """
    c = coords.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
    h = torch.cat([h, c, torch.ones_like(h[..., :1])], dim=-1)
    widths = [d + 1 for d in self.dims[:-1]] + [self.dims[-1]]
    mats = layer_matrices(params.reshape(h.shape[0], self.num_params).to(h.dtype), self.dims, widths)
    for i, w in enumerate(mats):
        h = torch.bmm(h, w)
        h = F.leaky_relu(h, 0.01) if i < len(mats) - 1 else torch.tanh(h)
    return h


def _traceable_tiles(self: PixelMLP, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``PixelMLP.forward`` without blending, in ops whose sizes a trace keeps symbolic.

    The training path's strided gather (``as_strided``) and overlap-add (``F.fold``) freeze or
    refuse traced sizes; for aligned tiles (no blend band) the same rows come from an unfold
    and a reshape, and the same bmm chain (``layer_matrices``) runs on them.
    """
    B, C, H, W = x.shape
    S, k = self.tile_size, self.context
    hc, wc = H // S, W // S
    xp = pad_input(x, k, 0)
    ck = C * k * k
    xc = F.unfold(xp, k).view(B, ck, H, W) if k > 1 else xp  # channel c * k^2 + dy * k + dx, as gather_tiles
    h = xc.reshape(B, ck, hc, S, wc, S).permute(0, 2, 4, 3, 5, 1).reshape(B * hc * wc, S * S, ck)
    h = _cell_mlps(self, h, self.coords.reshape(S * S, -1), params)
    out = self.dims[-1]
    return h.view(B, hc, wc, S, S, out).permute(0, 5, 1, 3, 2, 4).reshape(B, out, H, W)


def _band_profile(tile_size: int, band: int) -> torch.Tensor:
    """(T,): an interior cell's blend weight along one axis of its extended tile (``blend_weights``
    without the image-border cases, which ``_traceable_blend`` gets by renormalizing)."""
    S, b = tile_size, band
    d = torch.arange(S + 2 * b, dtype=torch.float32) - b + 0.5
    return ((d + b) / (2 * b)).clamp(0, 1) * ((S + b - d) / (2 * b)).clamp(0, 1)


def _traceable_blend(self: PixelMLP, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """``PixelMLP.forward`` with a blend band, in ops whose sizes a trace keeps symbolic.

    Along one axis, padded row p (the image padded by the band b) is reached by its own cell
    c = p // S at offset p % S of c's extended tile, and, when p % S < 2b, by cell c - 1 at
    offset S + p % S. So every cell's extended tile splits into two pieces read from aligned
    S-row tiles of the padded input: rows [0, S) of tile c ("own") and rows [0, 2b) of tile
    c + 1 ("next"). In 2-D the four pieces (own / next per axis) are T^2 rows per cell, run
    through the one bmm chain, weighted, and put back by zero-padding to whole tiles (the next
    pieces one tile on) and summing: an overlap-add made of reshapes and pads. At the image
    border only one cell reaches a pixel; dividing by the summed weights gives it weight 1 there,
    as ``blend_weights`` does, and changes nothing inside (the weights sum to 1).
    """
    B, C, H, W = x.shape
    S, k, b = self.tile_size, self.context, self.band
    hc, wc = H // S, W // S
    ck, K = C * k * k, self.coords.shape[-1]
    xp = pad_input(x, k, b)
    xc = F.unfold(xp, k).view(B, ck, H + 2 * b, W + 2 * b) if k > 1 else xp
    tiles = F.pad(xc, (0, S - 2 * b, 0, S - 2 * b)).reshape(B, ck, hc + 1, S, wc + 1, S)
    prof = _band_profile(S, b).to(x.device)
    # per axis: (tiles, rows inside them, offsets in the extended tile, zero tiles before / after)
    spans = [(slice(None, -1), slice(0, S), slice(0, S), (0, 1)),
             (slice(1, None), slice(0, 2 * b), slice(S, S + 2 * b), (1, 0))]
    pieces = [(sy, sx) for sy in spans for sx in spans]
    rows, coords, weights = [], [], []
    for (ty, ry, oy, _), (tx, rx, ox, _) in pieces:
        p = tiles[:, :, ty, ry, tx, rx]  # (B, ck, hc, ny, wc, nx)
        rows.append(p.permute(0, 2, 4, 3, 5, 1).reshape(B * hc * wc, -1, ck))
        coords.append(self.coords[oy, ox].reshape(-1, K))
        weights.append((prof[oy, None] * prof[None, ox]).reshape(-1, 1))
    h = _cell_mlps(self, torch.cat(rows, dim=1), torch.cat(coords), params)
    wt = torch.cat(weights).to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
    h = torch.cat([h * wt, wt], dim=-1)  # the weight rides along as one more channel
    out, total, start = self.dims[-1], 0, 0
    for (_, ry, _, (ay0, ay1)), (_, rx, _, (ax0, ax1)) in pieces:
        ny, nx = ry.stop - ry.start, rx.stop - rx.start
        part = h[:, start:start + ny * nx].reshape(B, hc, wc, ny, nx, out + 1).permute(0, 5, 1, 3, 2, 4)
        start += ny * nx
        part = F.pad(part, (0, S - nx, ax0, ax1, 0, S - ny, ay0, ay1))  # (B, out+1, hc+1, S, wc+1, S)
        total = total + part.reshape(B, out + 1, (hc + 1) * S, (wc + 1) * S)
    total = total[:, :, b:b + H, b:b + W]
    return total[:, :out] / total[:, out:]


def exportable(G: nn.Module) -> nn.Module:
    """``G`` (in place) on the paths exporters can trace: matmul MLPs, the tent as a conv."""
    G.eval()
    for module in G.modules():
        if isinstance(module, PixelMLP):
            module.fused = False
            module.forward = types.MethodType(_traceable_blend if module.band else _traceable_tiles, module)
    if isinstance(G, ASAPNetGenerator) and isinstance(G.lowres.shrink, TentDownsample):
        G.lowres.shrink = TentConv(G.lowres.shrink.factor, G.cfg.in_channels)
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
        # The model file appears whole, then its description: a FILE without FILE.json is
        # an export that did not finish.
        os.replace(tmp, out)
        with open(meta_path + ".part", "w") as fh:
            json.dump(meta, fh, indent=1)
            fh.write("\n")
        os.replace(meta_path + ".part", meta_path)
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

    _, cfg = read_sidecar(path)
    G = build_generator(cfg)
    G.load_state_dict(load_file(path))
    return G.eval()
