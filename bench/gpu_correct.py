"""The first stage of ``bench/gpu.sh``: does the GPU path compute the right thing at all?

Writes one JSON file, rewritten after every case so that a stage cut off by its time cap
still returns the cases that ran:

* ``kernel``: the fused pixel-MLP kernel against the batched-matmul path, per model (ASAP-Net,
  the hybrid) at the presets' inference and training sizes, fp32 and bf16, tiles blended and
  not: max abs error of the generator outputs, and whether the fused kernel really ran (it
  falls back to the matmul path when its health check fails or off CUDA);
* ``layouts``: the hybrid's two unfused pixel-MLP layouts ("rows", CUDA's default for training,
  and "planes", the CPU's) on the device, forward + backward at its training crop, fp32 and
  bf16: max abs error of the outputs and input gradients between them, and the median ms of
  each (which layout CUDA training should use is measured here, not assumed);
* ``train``: a few compiled bf16 + channels_last training steps of the hybrid (finite
  losses, graphs compiled, recompiles after the first step, graph breaks), and one eager bf16 step of each other full preset.

A failing case is recorded with its error and the next one runs.

    python3 bench/gpu_correct.py OUT.json          # on the GPU machine, from the repository root
    python3 bench/gpu_correct.py OUT.json --dry    # CPU rehearsal: tiny sizes, the *-smoke presets,
                                                   # dynamo without inductor
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import torch

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.models import pixel_mlp
from asaptrain.perf.models import bench_config, make_input
from asaptrain.perf.train import _random_batch
from asaptrain.train.gan import GanStep
from asaptrain.train.loop import build_state
from asaptrain.train.metrics import device_name
from asaptrain.train.nets import build_generator

# (model, height, width): the presets' inference sizes, then their training crops.
KERNEL_CASES = (("asapnet", 1024, 2048), ("asapnet", 256, 512), ("hybrid", 720, 1280), ("hybrid", 256, 256))
DRY_KERNEL_CASES = (("asapnet", 32, 64), ("hybrid", 32, 32))
OTHER_PRESETS = ("asapnet-cityscapes", "pix2pixhd-cityscapes", "deblurgan-gopro")
SMOKE_OF = {"hybrid-deblur": "hybrid-smoke", "asapnet-cityscapes": "asapnet-smoke",
            "pix2pixhd-cityscapes": "pix2pixhd-smoke", "deblurgan-gopro": "deblurgan-smoke"}
COMPILED_STEPS = 3  # the first compiles; graphs compiled after it are recompiles


class FusedLaunches:
    """Counts launches of the fused kernel that produce an output (not the health check's)."""

    def __init__(self):
        self.count = 0
        self._launch = pixel_mlp.launch_fused

    def __enter__(self):
        def counted(*args, **kwargs):
            if sys._getframe(1).f_code.co_name != "_fused_healthy":
                self.count += 1
            return self._launch(*args, **kwargs)

        pixel_mlp.launch_fused = counted
        return self

    def __exit__(self, *exc):
        pixel_mlp.launch_fused = self._launch


def _set_mlp(G: torch.nn.Module, **attrs) -> None:
    """Set ``fused`` / ``layout`` on every pixelwise MLP of ``G``."""
    for m in G.modules():
        if isinstance(m, pixel_mlp.PixelMLP):
            for name, value in attrs.items():
                setattr(m, name, value)


@torch.no_grad()
def kernel_case(model: str, h: int, w: int, dtype: str, blend: bool, dev: torch.device) -> dict:
    cfg = bench_config(model, h, w)
    cfg.model = dataclasses.replace(cfg.model, tile_blend=blend)
    torch.manual_seed(0)
    with torch.device(dev):
        G = build_generator(cfg).eval()
    x = make_input(cfg, 1, dev, torch.Generator(device=dev).manual_seed(0))
    outs, launches = {}, 0
    for fused in (False, True):
        _set_mlp(G, fused=fused)
        with FusedLaunches() as counter, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            outs[fused] = G(x).float()
        launches += counter.count if fused else 0
    err = float((outs[True] - outs[False]).abs().max())
    return {"model": model, "height": h, "width": w, "dtype": dtype, "tile_blend": blend, "tile_size": cfg.model.tile_size,
            "max_abs_error": err, "fused_ran": launches > 0, "finite": bool(torch.isfinite(outs[True]).all())}


def layout_case(h: int, w: int, batch: int, dtype: str, dev: torch.device, repeats: int) -> dict:
    """rows against planes with gradients (the training path): errors, and median ms of forward + backward."""
    cfg = bench_config("hybrid", h, w)
    torch.manual_seed(0)
    with torch.device(dev):
        G = build_generator(cfg).train()
    x = make_input(cfg, batch, dev, torch.Generator(device=dev).manual_seed(0))
    row = {"model": "hybrid", "height": h, "width": w, "batch": batch, "dtype": dtype}
    outs = {}
    for layout in ("rows", "planes"):
        _set_mlp(G, layout=layout)
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            xi = x.clone().requires_grad_(True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                y = G(xi)
            y.float().square().mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
            G.zero_grad(set_to_none=True)
        outs[layout] = (y.detach().float(), xi.grad.float())
        row[f"{layout}_ms"] = sorted(times[1:])[len(times[1:]) // 2]
        row[f"{layout}_path"] = pixel_mlp.pixel_path(G)
    row["max_abs_error"] = float((outs["rows"][0] - outs["planes"][0]).abs().max())
    row["grad_max_abs_error"] = float((outs["rows"][1] - outs["planes"][1]).abs().max())
    return row


def cfg_name(preset: str, dry: bool) -> str:
    return SMOKE_OF[preset] if dry else preset


def train_case(preset: str, dev: torch.device, steps: int, compiled: bool, dry: bool) -> dict:
    sets = ["train.precision=\"bf16\"", f"train.compile={str(compiled).lower()}",
            f"train.channels_last={str(compiled).lower()}", "loss.perceptual=\"none\""]
    cfg = apply_overrides(get_preset(cfg_name(preset, dry)), sets)
    if dry:
        cfg = apply_overrides(cfg, ["train.batch_size=2"])
    row = {"preset": cfg_name(preset, dry), "height": cfg.data.crop_height, "width": cfg.data.crop_width,
           "batch": cfg.train.batch_size, "precision": "bf16", "compiled": compiled, "channels_last": compiled,
           "steps": 0, "finite": None, "error": None}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    try:
        state = build_state(cfg, dev, wrap=lambda m: m)
        step = GanStep(cfg, state)
        x, y = _random_batch(cfg, cfg.train.batch_size, dev)
        if compiled:
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        finite, after_first = True, 0
        for i in range(steps):
            result = step(x, y, i + 1)
            finite = finite and not result.skipped and all(math.isfinite(float(v.detach())) for v in result.losses.values())
            row["steps"] = i + 1
            if i == 0:
                after_first = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0))
        # Graphs compiled after the first step are recompiles: the same shapes came back.
        row["recompiles"] = int(torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)) - after_first
        row["finite"] = finite
    except Exception as exc:  # noqa: BLE001 - recorded; the next case runs
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    row["seconds"] = time.perf_counter() - t0
    c = torch._dynamo.utils.counters
    row["graphs_compiled"] = int(c["stats"].get("unique_graphs", 0))
    row["graph_breaks"] = int(sum(c["graph_break"].values()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry", action="store_true", help="CPU rehearsal: tiny sizes, compile without inductor")
    args = parser.parse_args()
    dev = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    if args.dry:  # dynamo traces as on the GPU; inductor's code generation would take minutes on a CPU
        torch.compile = functools.partial(torch.compile, backend="eager")
    report = {"device": device_name(dev), "dry": args.dry, "kernel": [], "layouts": [], "train": [],
              "torch": torch.__version__}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1))

    save()
    for model, h, w in DRY_KERNEL_CASES if args.dry else KERNEL_CASES:
        for dtype in ("fp32", "bf16"):
            for blend in ((True, False) if model == "hybrid" else (False,)):
                try:
                    row = kernel_case(model, h, w, dtype, blend, dev)
                except Exception as exc:  # noqa: BLE001
                    row = {"model": model, "height": h, "width": w, "dtype": dtype, "tile_blend": blend,
                           "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
                report["kernel"].append(row)
                print("kernel", json.dumps(row), flush=True)
                save()
    for dtype in ("fp32", "bf16"):
        h, w, batch, repeats = (32, 32, 1, 1) if args.dry else (256, 256, 16, 3)
        try:
            row = layout_case(h, w, batch, dtype, dev, repeats)
        except Exception as exc:  # noqa: BLE001
            row = {"model": "hybrid", "height": h, "width": w, "dtype": dtype,
                   "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        report["layouts"].append(row)
        print("layouts", json.dumps(row), flush=True)
        save()
    cases = [("hybrid-deblur", True, 2 if args.dry else COMPILED_STEPS)] + [(p, False, 1) for p in OTHER_PRESETS]
    for preset, compiled, steps in cases:
        row = train_case(preset, dev, steps, compiled, args.dry)
        report["train"].append(row)
        print("train", json.dumps(row), flush=True)
        save()


if __name__ == "__main__":
    main()
