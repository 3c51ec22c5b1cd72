"""`asaptrain bench train`: training throughput and model FLOP utilization per preset.

Runs the real GAN step (``train.gan.GanStep``: the same phases, losses and optimizers as
training) in-process on one device, on random batches of the preset's size, so the number
is the model's compute speed, not the input pipeline's. FLOPs per step are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (which counts a multiply-add as 2 FLOPs);
utilization is achieved FLOP/s over the device's dense bf16 peak. The data-wait share of a
real run is in that run's ``timing.json``.
"""

from __future__ import annotations

import time

import torch

from asaptrain.config.schema import Config
from asaptrain.train.metrics import device_name
from asaptrain.train.nets import generator_in_channels
from asaptrain.train.gan import GanStep
from asaptrain.train.loop import build_state

# Dense bf16 tensor-core peaks, FLOP/s (vendor data sheets, SXM parts).
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def bf16_peak(name: str) -> float | None:
    for key, peak in BF16_PEAK.items():
        if key in name:
            return peak
    return None


def _random_batch(cfg: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = cfg.data.crop_height, cfg.data.crop_width
    c = generator_in_channels(cfg)
    if cfg.data.task == "labels2photo":
        ids = torch.randint(0, cfg.data.num_labels, (batch, h, w), device=device)
        x = torch.nn.functional.one_hot(ids, cfg.data.num_labels).permute(0, 3, 1, 2).float()
        if c > cfg.data.num_labels:
            x = torch.cat([x, torch.zeros(batch, c - cfg.data.num_labels, h, w, device=device)], 1)
    else:
        x = torch.rand(batch, c, h, w, device=device) * 2 - 1
    return x, torch.rand(batch, 3, h, w, device=device) * 2 - 1


def bench_preset(cfg: Config, device: torch.device, steps: int = 20, warmup: int = 3, batch: int | None = None) -> dict:
    """images/s, ms/step and (on a known GPU) MFU of one preset's training step."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = batch or cfg.train.batch_size
    state = build_state(cfg, device, wrap=lambda m: m)
    step = GanStep(cfg, state)
    x, y = _random_batch(cfg, batch, device)
    if cfg.train.channels_last:
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        step(x, y, 0)
    flops = counter.get_total_flops()
    for i in range(warmup):
        step(x, y, i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(x, y, i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / steps
    gpu = device_name(device)
    peak = bf16_peak(gpu) if device.type == "cuda" else None
    return {
        "model": cfg.model.name, "height": cfg.data.crop_height, "width": cfg.data.crop_width, "batch": batch,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compiled": cfg.train.compile,
        "d_steps": cfg.optim.d_steps, "ms_per_step": seconds * 1000, "images_per_s": batch / seconds,
        "tflop_per_step": flops / 1e12, "achieved_tflops": flops / seconds / 1e12,
        "mfu": (flops / seconds / peak) if peak else None, "gpu": gpu,
        "note": "perceptual loss excluded (no VGG weights needed); random data",
    }
