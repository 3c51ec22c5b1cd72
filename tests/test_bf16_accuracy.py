"""The hybrid's generator under CPU bf16 autocast against its own fp32 output, and DeblurGAN's
bf16 error measured the same way beside it.

The bound, derived for bf16: 8 significant bits, so one round-to-nearest has a relative error
of at most u = 2^-8 and an rms of u / sqrt(3) (uniform over +-u). Autocast rounds each matmul /
conv's two inputs and its output (accumulation stays fp32 in the CPU kernels), so a generator
of L such layers in a row takes about 3 L independent roundings, which add in quadrature:
relative rms ~ u sqrt(3 L / 3) = u sqrt(L) at a gain near 1 per layer (He-initialized layers).
The hybrid-deblur geometry has L ~ 14 (9 low-res layers that predict the weights, 5 MLP
layers), so sqrt(L) ~ 3.7: the bound is 4 u = 2^-6 relative rms. A sum done in bf16 instead
of fp32 (width 64: 65 terms per output) adds ~ u sqrt(65) ~ 8 u per layer and breaks it.

The error is measured on the generator's own prediction (the tanh output before the global
residual adds the input back): the final output x + G(x) carries the exact input, so its PSNR
mostly measures how small G(x) is (about 90 dB for the hybrid at init). That PSNR is checked
too, against the usual >= 45 dB. The hybrid's last MLP layer starts 100x smaller than a
trained one; a second case scales it up to a trained model's amplitude.
"""

from __future__ import annotations

import math

import pytest
import torch

from asaptrain.config.presets import get_preset
from asaptrain.perf.compare import at_size
from asaptrain.train.nets import build_generator

U_BF16 = 2.0**-8
"""bf16's unit roundoff (8 significant bits, round to nearest)."""
REL_RMS_BOUND = 4 * U_BF16
"""See the module docstring: ~ u sqrt(L) for L ~ 14 layers in a row."""
PSNR_BOUND_DB = 45.0
"""PSNR of the bf16 output against the fp32 output, images in [-1, 1] (data range 2)."""


def _prediction_module(net: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is G(x) before the global residual: the MLPs, or DeblurGAN's head."""
    return net.mlp if hasattr(net, "mlp") else net.head


def _trained_scale(net: torch.nn.Module) -> None:
    """Undo ``last_layer_scale`` (0.01): the last MLP layer at a trained model's amplitude."""
    head, splits = net.lowres.head, net.mlp.splits
    scale = 1 / net.cfg.last_layer_scale
    with torch.no_grad():
        for t in (head.weight, head.bias):
            torch.split(t, splits, dim=0)[-2].mul_(scale)  # the last layer's weight rows (its bias starts 0)


def bf16_error(preset: str, size: tuple[int, int], trained_scale: bool = False) -> dict:
    """Relative rms error of G(x) and PSNR of the output, bf16 autocast against fp32, CPU."""
    cfg = at_size(get_preset(preset), preset, *size)
    torch.manual_seed(0)
    net = build_generator(cfg).eval()
    if trained_scale:
        _trained_scale(net)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen: dict[str, torch.Tensor] = {}
    hook = _prediction_module(net).register_forward_hook(lambda m, i, o: seen.__setitem__("g", o.float()))
    try:
        with torch.no_grad():
            y32 = net(x)
            g32 = seen["g"]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y16 = net(x).float()
            g16 = seen["g"]
    finally:
        hook.remove()
    assert g16.dtype == torch.float32 and y32.dtype == torch.float32
    rel = float((g16 - g32).norm() / g32.norm())
    mse = float(((y16 - y32) ** 2).mean())
    return {"rel_rms": rel, "psnr_db": 10 * math.log10(4 / mse) if mse else math.inf, "g_std": float(g32.std())}


@pytest.mark.parametrize("hybrid, deblurgan, trained_scale", [
    ("hybrid-smoke", "deblurgan-smoke", False),
    ("hybrid-deblur", "deblurgan-gopro", False),
    ("hybrid-deblur", "deblurgan-gopro", True),
])
def test_hybrid_bf16_is_within_bf16_rounding_of_fp32_and_no_worse_than_deblurgan(hybrid, deblurgan, trained_scale):
    size = (64, 64)  # 4 x 4 cells of the hybrid-deblur geometry (tile 16, band 4, 5 x 5 context)
    h = bf16_error(hybrid, size, trained_scale)
    d = bf16_error(deblurgan, size)
    assert h["g_std"] > 0  # the MLPs' output is not a constant the comparison would pass trivially
    assert 0 < h["rel_rms"] <= REL_RMS_BOUND, (h, REL_RMS_BOUND)  # > 0: autocast did run in bf16
    assert h["psnr_db"] >= PSNR_BOUND_DB, h
    assert h["rel_rms"] <= d["rel_rms"], (h, d)


@pytest.mark.parametrize("preset", ["hybrid-smoke", "hybrid-deblur"])
def test_pixelwise_mlps_in_bf16_round_only_their_layer_outputs(preset):
    """The MLPs alone on inputs and weights already in bf16: all that autocast may add is one
    rounding of each of the L = 5 layers' outputs (rms u / sqrt(3) each, in quadrature: u
    sqrt(L / 3) ~ 1.3 u), bounded here by u sqrt(L). A layer that summed its 65 products in bf16
    would add ~ u sqrt(65) per layer."""
    cfg = at_size(get_preset(preset), preset, 64, 64)
    torch.manual_seed(0)
    net = build_generator(cfg).eval()
    _trained_scale(net)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        params = net.lowres(x).bfloat16().float()
        x = x.bfloat16().float()
        g32 = net.mlp(x, params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            g16 = net.mlp(x, params).float()
    layers = len(net.mlp.dims) - 1
    rel = float((g16 - g32).norm() / g32.norm())
    assert 0 < rel <= U_BF16 * math.sqrt(layers), (rel, rel / U_BF16)


def test_planes_chunks_hold_as_many_bytes_in_every_dtype():
    from asaptrain.models.pixel_mlp import PLANES_CHUNK_CELLS, planes_chunk_cells

    assert planes_chunk_cells(torch.float32) == PLANES_CHUNK_CELLS
    assert planes_chunk_cells(torch.bfloat16) == planes_chunk_cells(torch.float16) == 2 * PLANES_CHUNK_CELLS
