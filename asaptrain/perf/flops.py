"""Parameter and FLOP counts of every preset's G and D, without allocating a single weight.

Models are built on the ``meta`` device (shapes only) and run once under
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls (mm, addmm, bmm, baddbmm:
ASAP-Net's pixelwise MLPs) and convolutions (incl. transposed) at 2 FLOPs per multiply-add.
Norms, activations, pooling and padding are not counted (they are memory-bound, < 1 %).

    rows = summarize(["asapnet-cityscapes"])   # [{"preset", "net", "params", "gflops", ...}]
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from asaptrain.config.schema import Config
from asaptrain.train.nets import build_discriminator, build_generator, generator_in_channels


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops(module: nn.Module, *inputs: torch.Tensor | None) -> int:
    """FLOPs (2 per MAC) of one forward pass, counted on whatever device the inputs are on."""
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def summarize_config(cfg: Config, preset: str = "", height: int | None = None, width: int | None = None) -> list[dict]:
    """Params and GFLOPs per image of G and D for ``cfg`` at its crop size (or ``height`` x ``width``)."""
    h = height or cfg.data.crop_height
    w = width or cfg.data.crop_width
    with torch.device("meta"):
        G = build_generator(cfg)
        D = build_discriminator(cfg)
        x = torch.empty(1, generator_in_channels(cfg), h, w)
        img = torch.empty(1, 3, h, w)
    rows = []
    for net, module, inputs in (("G", G, (x,)), ("D", D, (img, x if cfg.model.d_conditional else None))):
        rows.append({
            "preset": preset, "model": cfg.model.name, "net": net, "params": count_params(module),
            "gflops": forward_flops(module, *inputs) / 1e9, "height": h, "width": w,
        })
    return rows


def summarize(presets: list[str] | None = None) -> list[dict]:
    """One row per preset and net ("G", "D"), at each preset's crop size."""
    from asaptrain.config.presets import PRESETS, get_preset

    rows = []
    for name in presets or list(PRESETS):
        rows += summarize_config(get_preset(name), name)
    return rows
