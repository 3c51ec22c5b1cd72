"""The ``profile`` stage of ``bench/gpu.sh``: a torch.profiler table of one training step of the
hybrid and one of DeblurGAN, so that a surprising number of the other stages can be explained
from the same call.

Each preset's real GAN step (``train.gan.GanStep``: D and G phases, losses, optimizers; no
perceptual loss, since VGG weights are not on that machine) runs on random data of its training
crop and batch: warm-up steps first (cuDNN picks its algorithms), then one step under the
profiler. Writes ``OUT.json`` (per preset: the step's ms, the phases' ``record_function`` ranges
and the top operators by self device time, or self CPU time off CUDA) and ``OUT.txt`` beside it
(the profiler's own tables), both rewritten after every preset; a failing preset is recorded with
its error and the next one runs.

    python3 bench/gpu_profile.py OUT.json          # on the GPU machine, from the repository root
    python3 bench/gpu_profile.py OUT.json --dry    # CPU rehearsal: the *-smoke presets, batch 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.perf.train import _random_batch
from asaptrain.train.gan import GanStep
from asaptrain.train.loop import build_state
from asaptrain.train.metrics import device_name

PRESETS = ("hybrid-deblur", "deblurgan-gopro")
DRY_PRESETS = ("hybrid-smoke", "deblurgan-smoke")
TOP_OPS = 15
WARMUP_STEPS = 2


def _ms(event, name: str) -> float:
    """An averaged event's total in ms (the profiler keeps microseconds; older torch says cuda_)."""
    us = getattr(event, name, None)
    if us is None:
        us = getattr(event, name.replace("device", "cuda"), 0.0)
    return float(us) / 1000


def profile_preset(preset: str, dev: torch.device, dry: bool) -> tuple[dict, str]:
    cfg = apply_overrides(get_preset(preset), ["loss.perceptual=\"none\""] + (["train.batch_size=1"] if dry else []))
    state = build_state(cfg, dev, wrap=lambda m: m)
    step = GanStep(cfg, state)
    x, y = _random_batch(cfg, cfg.train.batch_size, dev)
    for i in range(0 if dry else WARMUP_STEPS):
        step(x, y, i + 1)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        step(x, y, WARMUP_STEPS + 1)
        if cuda:
            torch.cuda.synchronize(dev)
    step_ms = (time.perf_counter() - t0) * 1000  # with the profiler's own overhead
    events = prof.key_averages()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = sorted(events, key=lambda e: _ms(e, sort), reverse=True)
    names = {p.name for p in step.phases} | {p.name.lower() for p in step.phases}
    phases = [e for e in events if e.key.partition(".")[0] in names]  # the step's record_function ranges
    row = {
        "preset": preset, "model": cfg.model.name, "height": cfg.data.crop_height, "width": cfg.data.crop_width,
        "batch": cfg.train.batch_size, "precision": cfg.train.precision, "step_ms": step_ms, "sorted_by": sort,
        "top_ops": [{"op": e.key, "calls": e.count, "self_ms": _ms(e, sort), "self_cpu_ms": _ms(e, "self_cpu_time_total"),
                     "device_ms": _ms(e, "device_time_total") if cuda else None} for e in ops[:TOP_OPS]],
        "phases": [{"range": e.key, "cpu_ms": _ms(e, "cpu_time_total"),
                    "device_ms": _ms(e, "device_time_total") if cuda else None} for e in phases],
        "error": None,
    }
    try:
        table = events.table(sort_by=sort, row_limit=30)
    except (AttributeError, KeyError):  # torch before the device_ names
        table = events.table(sort_by=sort.replace("device", "cuda"), row_limit=30)
    return row, f"== {preset} ({cfg.data.crop_height}x{cfg.data.crop_width}, batch {cfg.train.batch_size}, " \
                f"{cfg.train.precision}, one training step)\n{table}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry", action="store_true", help="CPU rehearsal: the smoke presets, batch 1")
    args = parser.parse_args()
    dev = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    report = {"device": device_name(dev), "dry": args.dry, "torch": torch.__version__, "presets": []}
    tables = []

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".txt").write_text("".join(tables))

    save()
    for preset in DRY_PRESETS if args.dry else PRESETS:
        try:
            row, table = profile_preset(preset, dev, args.dry)
            tables.append(table)
        except Exception as exc:  # noqa: BLE001 - recorded; the next preset runs
            row = {"preset": preset, "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        report["presets"].append(row)
        print("profile", json.dumps({k: v for k, v in row.items() if k != "top_ops"}), flush=True)
        save()


if __name__ == "__main__":
    main()
