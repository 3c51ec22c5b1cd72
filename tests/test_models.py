"""The four generators and discriminators: shapes, gradients, parameter counts, ASAP-Net's fast
pixelwise MLP against a per-pixel loop, and the hybrid against the published failure modes."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from asaptrain.models import (
    ASAPNetConfig, ASAPNetGenerator, DeblurGANConfig, DeblurGANGenerator, HybridConfig,
    Pix2PixHDConfig, ResnetBlock, asapnet_discriminator, deblurgan_discriminator, pix2pixhd_discriminator,
    pix2pixhd_generator, published_failure, tile_coordinates,
)
from asaptrain.models.options import (ASAPNetDiscriminatorConfig, DeblurGANDiscriminatorConfig,
                                      Pix2PixHDDiscriminatorConfig)
from asaptrain.models.asapnet import TentDownsample
from asaptrain.models.pixel_mlp import pixel_path
from asaptrain.train.nets import (
    build_discriminator, build_generator, generator_config, generator_in_channels,
)
from asaptrain.config.presets import SMOKE_PRESETS, get_preset

TINY_LOWRES = dict(lowres_width=8, lowres_max_channels=16, lowres_blocks=1, mlp_width=8)


def tiny_asap(**kw) -> ASAPNetConfig:
    base = dict(in_channels=5, tile_size=8, lowres_downsample=4, mlp_depth=3, **TINY_LOWRES)
    return ASAPNetConfig(**{**base, **kw})


def tiny_hybrid(**kw) -> HybridConfig:
    return dataclasses.replace(HybridConfig(tile_size=8, lowres_downsample=4, mlp_depth=3, **TINY_LOWRES), **kw)


def tiny_generators():
    yield "asapnet", ASAPNetGenerator(tiny_asap(mlp_input="all_but_last")), 5, 8
    yield "hybrid", ASAPNetGenerator(tiny_hybrid()), 3, 8
    yield "pix2pixhd", pix2pixhd_generator(Pix2PixHDConfig(in_channels=5, ngf=4, downsamplings=2, residual_blocks=1)), 5, 4
    yield "pix2pixhd-local", pix2pixhd_generator(Pix2PixHDConfig(
        in_channels=5, ngf=4, downsamplings=2, residual_blocks=1, local_enhancers=1, local_residual_blocks=1)), 5, 8
    yield "deblurgan", DeblurGANGenerator(DeblurGANConfig(ngf=4, residual_blocks=1, dropout=0.5)), 3, 4


def tiny_discriminators():
    yield "asapnet", asapnet_discriminator(5, ASAPNetDiscriminatorConfig(ndf=4)), 5
    yield "hybrid", asapnet_discriminator(3, ASAPNetDiscriminatorConfig(ndf=4)), 3
    yield "pix2pixhd", pix2pixhd_discriminator(5, Pix2PixHDDiscriminatorConfig(ndf=4)), 5
    yield "deblurgan", deblurgan_discriminator(0, DeblurGANDiscriminatorConfig(ndf=4)), 0


def random_input(b: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.rand(b, c, h, w) * 2 - 1


@pytest.mark.parametrize("name,G,cin,mult", list(tiny_generators()), ids=lambda v: v if isinstance(v, str) else "")
def test_generator_shapes_and_gradients(name, G, cin, mult):
    for b, (h, w) in ((1, (2 * mult, 4 * mult)), (3, (4 * mult, 2 * mult)), (2, (32, 64))):
        y = G(random_input(b, cin, h, w))
        assert y.shape == (b, 3, h, w), name
        assert y.min() >= -1 and y.max() <= 1
    G.zero_grad()
    G(random_input(2, cin, 32, 32)).square().mean().backward()
    for pname, p in G.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all()
        if p.dim() > 1:  # conv biases right before instance norm get an exactly-zero gradient
            assert p.grad.abs().sum() > 0, f"{name}: {pname} got a zero gradient"


@pytest.mark.parametrize("name,D,cond", list(tiny_discriminators()), ids=lambda v: v if isinstance(v, str) else "")
def test_discriminator_shapes_and_gradients(name, D, cond):
    for b, (h, w) in ((1, (32, 32)), (2, (64, 32))):
        outs = D(random_input(b, 3, h, w), random_input(b, cond, h, w) if cond else None)
        assert len(outs) == D.cfg.num_d
        for scale, feats in enumerate(outs):
            assert len(feats) == D.cfg.strided + 2  # strided convs, one stride-1 conv, logits
            assert feats[-1].shape[:2] == (b, 1)
        if D.cfg.num_d > 1:
            assert outs[1][-1].shape[-1] < outs[0][-1].shape[-1]
    D.zero_grad()
    outs = D(random_input(2, 3, 32, 32), random_input(2, cond, 32, 32) if cond else None)
    sum(f.square().mean() for scale in outs for f in scale).backward()
    for pname, p in D.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"


def test_conditional_discriminator_needs_cond_and_unconditional_ignores_it():
    with pytest.raises(ValueError, match="cond"):
        asapnet_discriminator(5, ASAPNetDiscriminatorConfig(ndf=4))(random_input(1, 3, 32, 32))
    D = deblurgan_discriminator(0, DeblurGANDiscriminatorConfig(ndf=4))
    x = random_input(1, 3, 32, 32)
    assert torch.equal(D(x)[0][-1], D(x, random_input(1, 3, 32, 32))[0][-1])


def _count(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_generator(cfg).parameters())


def test_parameter_counts_match_the_papers():
    asap = get_preset("asapnet-cityscapes")
    assert generator_in_channels(asap) == 36
    assert _count(asap) == pytest.approx(83.2e6, rel=0.02)
    p2p = get_preset("pix2pixhd-cityscapes")
    assert generator_in_channels(p2p) == 36
    assert _count(p2p) == pytest.approx(182.55e6, rel=0.02)
    # The paper's two-conv ResNet block (the reference code's one-conv block has 6.07 M).
    assert _count(get_preset("deblurgan-gopro")) == pytest.approx(11.38e6, rel=0.01)
    assert generator_config(asap).mlp_input == "all_but_last"


def naive_asapnet(G: ASAPNetGenerator, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loop: each pixel runs its cell's MLP on [input, sin/cos coordinates]; with
    ``tile_blend``, the MLPs of the 4 cells whose centres surround it, mixed bilinearly."""
    cfg, S = G.cfg, G.cfg.tile_size
    params = G.lowres(x)  # (B, H/S, W/S, P)
    xm = G.mlp_input(x)
    B, _, H, W = x.shape
    dims = G.mlp.dims

    def cell_mlp(h: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        off = 0
        for layer, (cin, cout) in enumerate(zip(dims, dims[1:])):
            w = p[off:off + cin * cout].view(cin, cout)
            off += cin * cout
            h = h @ w + p[off:off + cout]
            off += cout
            h = torch.nn.functional.leaky_relu(h, 0.01) if layer < len(dims) - 2 else torch.tanh(h)
        return h

    band = (cfg.blend_band or S // 2) if cfg.tile_blend else 0

    def neighbours(i: int, cells: int) -> list[tuple[int, float]]:
        """(cell, weight) along one axis: the own cell, mixed linearly with the next one within
        ``band`` px of their shared edge; the edge cells alone up to the image border."""
        c, d = i // S, i % S + 0.5  # d: position in the cell, px
        if d < band and c > 0:
            return [(c - 1, (band - d) / (2 * band)), (c, (d + band) / (2 * band))]
        if d > S - band and c < cells - 1:
            return [(c, (S + band - d) / (2 * band)), (c + 1, (d - S + band) / (2 * band))]
        return [(c, 1.0)]

    out = torch.zeros(B, cfg.out_channels, H, W, dtype=torch.float64)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                feats = [xm[b, :, i, j].double()]
                f = S
                while f > 1:  # ASAP-Net's encoding over the whole image, not per tile
                    ax, ay = 2 * math.pi * (j % f) / f, 2 * math.pi * (i % f) / f
                    feats.append(torch.tensor([math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay)], dtype=torch.float64))
                    f //= 2
                h = torch.cat(feats)
                out[b, :, i, j] = sum(wi * wj * cell_mlp(h, params[b, ci, cj].double())
                                      for ci, wi in neighbours(i, H // S) for cj, wj in neighbours(j, W // S))
    return out


@pytest.mark.parametrize("mlp_input,blend,band,context", [
    ("all", False, 0, 1), ("all_but_last", False, 0, 3), ("all", True, 0, 1), ("all", True, 1, 3),
    ("all_but_last", True, 2, 3), ("all", True, 1, 5)])
def test_fast_pixelwise_mlp_equals_per_pixel_loop(monkeypatch, mlp_input, blend, band, context):
    """band 0 = tile_size / 2: the bilinear blend between cell centres; 1: a narrower one. Both
    unfused layouts: "planes" (CPU) and "rows" (CUDA's, run here on the CPU)."""
    from asaptrain.models import pixel_mlp

    torch.manual_seed(0)
    G = ASAPNetGenerator(tiny_asap(tile_size=4, lowres_downsample=2, mlp_input=mlp_input, init="hyper",
                                   tile_blend=blend, blend_band=band, mlp_context=context))
    with torch.no_grad():
        G.lowres.head.weight.mul_(30)  # make the predicted MLPs far from trivial
        x = random_input(2, 5, 8, 12)
        want = naive_asapnet(G, x)
        for layout in ("planes", "rows"):
            monkeypatch.setattr(pixel_mlp, "mlp_layout", lambda t: layout)
            fast = G(x).double()
            assert fast.std() > 0.05 and pixel_path(G) == layout
            torch.testing.assert_close(fast, want, rtol=1e-4, atol=1e-5)


def test_channel_padding_for_tensor_cores_changes_nothing():
    from asaptrain.models.pixel_mlp import mlp_rows, pad_input

    G = ASAPNetGenerator(tiny_asap(init="hyper", last_layer_scale=1.0, tile_blend=True, mlp_context=3))
    x = random_input(2, 5, 16, 24)  # dims 5*9+12 -> 8 -> 8 -> 3: padded
    params = G.lowres(x).flatten(0, 2)
    m = G.mlp
    args = (pad_input(x, 3, m.band), params, m.coords, m.dims, 8, m.band, 3, torch.float32)
    torch.testing.assert_close(mlp_rows(*args, pad=True), mlp_rows(*args, pad=False), rtol=1e-5, atol=1e-6)


def test_planes_and_rows_layouts_agree_in_value_and_gradient(monkeypatch):
    """The CPU layout (first layer a grouped conv) and CUDA's (gathered rows) are one function:
    outputs and the gradients that reach the input and the predicted parameters agree in fp32,
    and in bf16 the planes layout is about as far from fp32 as the rows layout is. In the
    hybrid preset's geometry (tile 16, band 4, 5 x 5 context), channels-last input too, over
    24 cells: the planes layout's chunks of PLANES_CHUNK_CELLS (16) and a partial one."""
    from asaptrain.models.pixel_mlp import PLANES_CHUNK_CELLS, mlp_bmm, pad_input

    torch.manual_seed(0)
    G = ASAPNetGenerator(HybridConfig(lowres_max_channels=16, lowres_width=8, lowres_blocks=1, mlp_width=16,
                                     last_layer_scale=1.0))
    m = G.mlp
    x = random_input(2, 3, 48, 64)
    params = G.lowres(x).flatten(0, 2).detach()
    assert PLANES_CHUNK_CELLS < params.shape[0] < 2 * PLANES_CHUNK_CELLS

    def run(layout: str, dtype: torch.dtype, fmt: torch.memory_format) -> list[torch.Tensor]:
        xi = x.clone(memory_format=fmt).requires_grad_(True)
        pi = params.clone().requires_grad_(True)
        y = mlp_bmm(pad_input(xi, m.context, m.band), pi, m.coords, m.dims, 16, m.band, m.context, dtype, layout)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.detach().float(), xi.grad, pi.grad]

    want = run("rows", torch.float32, torch.contiguous_format)
    assert want[0].std() > 0.05
    for got, ref in zip(run("planes", torch.float32, torch.channels_last), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    rows16 = run("rows", torch.bfloat16, torch.contiguous_format)
    monkeypatch.setattr("asaptrain.models.pixel_mlp.PLANES_CHUNK_CELLS", PLANES_CHUNK_CELLS // 2)  # bf16: 16 cells
    planes16 = run("planes", torch.bfloat16, torch.channels_last)
    for p16, r16, ref in zip(planes16, rows16, want):
        # bf16 rounding, not a wrong weight (which would be off by the scale of ref itself)
        err, rows_err = float((p16 - ref).abs().max()), float((r16 - ref).abs().max())
        assert err <= 2 * rows_err + 0.01 * float(ref.abs().max())


def test_coordinates_are_the_periodic_encoding():
    c = tile_coordinates(16)
    assert c.shape == (16, 16, 16)  # 4 * log2(16) channels
    assert torch.allclose(c[3, 5, :4], torch.tensor([math.cos(2 * math.pi * 5 / 16), math.sin(2 * math.pi * 5 / 16),
                                                     math.cos(2 * math.pi * 3 / 16), math.sin(2 * math.pi * 3 / 16)]))
    assert torch.allclose(c[0, 1, -4:], torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)  # period 2


def test_tent_downsample_is_asapnets_tent_filter_and_keeps_constants():
    t = TentDownsample(4)
    y = t(torch.full((1, 3, 32, 48), 0.3))
    assert y.shape == (1, 3, 8, 12)
    assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-6)
    x = torch.rand(1, 2, 32, 48)
    k = torch.tensor([1.0, 3, 5, 7, 7, 5, 3, 1]) / 32  # ASAP-Net's separable tent for factor 4
    ref = torch.nn.functional.conv2d(x.reshape(2, 1, 32, 48), (k[:, None] * k[None, :])[None, None], stride=4,
                                     padding=2).reshape(1, 2, 8, 12)
    torch.testing.assert_close(t(x)[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-6)
    G = ASAPNetGenerator(tiny_asap(tile_size=16, lowres_downsample=4))  # shrink by 4 first
    assert G(random_input(1, 5, 32, 48)).shape == (1, 3, 32, 48)


def test_channels_last_and_bf16_match_fp32():
    G = ASAPNetGenerator(tiny_hybrid(init="hyper", last_layer_scale=1.0)).eval()
    x = random_input(2, 3, 32, 48)
    ref = G(x)
    torch.testing.assert_close(G(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = G(x)
    assert (low.float() - ref).abs().max() < 0.05


def test_hybrid_starts_as_identity_and_every_channel_matters():
    torch.manual_seed(1)
    G = ASAPNetGenerator(tiny_hybrid())
    x = random_input(2, 3, 32, 32) * 0.8  # stay off the clamp
    y = G(x)
    assert (y - x).abs().max() < 0.05, "with the residual on, G(x) ~ x at init"
    delta = y - x
    for c in range(3):
        x2 = x.clone()
        x2[:, c, 8:12, 8:12] += 0.1
        changed = (G(x2) - x2 - delta)[:, :, 8:12, 8:12].abs().max()
        assert changed > 1e-5, f"input channel {c} does not reach the learned part of the output"


def _tile_spread(y: torch.Tensor, S: int) -> float:
    """Largest difference between any tile and the first one."""
    B, C, H, W = y.shape
    tiles = y.reshape(B, C, H // S, S, W // S, S).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C, S, S)
    return float((tiles - tiles[:, :1]).abs().max().detach())


def _edge_jump(y: torch.Tensor, S: int) -> tuple[float, float]:
    """Mean |step| between horizontal neighbours across tile edges, and elsewhere."""
    steps = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(0, 1, 2))
    at_edge = (torch.arange(steps.numel()) + 1) % S == 0
    return float(steps[at_edge].mean()), float(steps[~at_edge].mean())


def test_tile_blend_removes_the_seams_at_tile_edges():
    from asaptrain.models.pixel_mlp import PixelMLP

    torch.manual_seed(3)
    hard, soft = PixelMLP(3, 3, 16, 3, 8), PixelMLP(3, 3, 16, 3, 8, band=2)
    x = torch.nn.functional.avg_pool2d(random_input(2, 3, 64, 64), 9, 1, 4, count_include_pad=False)  # smooth
    params = torch.randn(2, 8, 8, hard.num_params) * 0.3  # a different MLP in every cell
    edge, inside = _edge_jump(hard(x, params), 8)
    assert edge > 1.5 * inside, "nearest cells: a step at every tile edge"
    edge, inside = _edge_jump(soft(x, params), 8)
    assert edge < 1.1 * inside, "blended cells: tile edges look like any other column"
    same = params[:, :1, :1].expand_as(params)
    torch.testing.assert_close(soft(x, same), hard(x, same))  # equal cells: blending changes nothing


def test_hybrid_default_has_no_fixed_location_spot():
    torch.manual_seed(2)
    G = ASAPNetGenerator(tiny_hybrid(last_layer_scale=1.0))
    gray = torch.full((1, 3, 64, 64), 0.1)
    assert _tile_spread(G(gray) - gray, 8) < 1e-5, "a constant image must give identical tiles"


def test_exact_default_hybrid_has_no_spot_and_starts_near_identity():
    torch.manual_seed(4)
    G = ASAPNetGenerator(HybridConfig())  # HybridConfig() as shipped: 5.9 M parameters, S = 16
    gray = torch.full((1, 3, 64, 64), 0.1)
    with torch.no_grad():
        delta = G(gray) - gray
    assert _tile_spread(delta, 16) < 1e-6 and delta.abs().max() < 0.05


def test_published_failure_config_marks_the_border_on_a_constant_image():
    torch.manual_seed(2)
    bad = ASAPNetGenerator(published_failure(tile_size=8, lowres_downsample=4, mlp_depth=3, **TINY_LOWRES))
    gray = torch.full((1, 3, 64, 64), 0.1)
    assert _tile_spread(bad(gray), 8) > 1e-3, "zero padding + instance norm make position-dependent tiles"


def test_published_failure_config_drops_the_blue_channel():
    torch.manual_seed(3)
    cfg = published_failure(tile_size=8, lowres_downsample=4, mlp_depth=3, **TINY_LOWRES)
    assert cfg.mlp_input == "all_but_last" and not cfg.residual
    bad = ASAPNetGenerator(cfg)
    x = random_input(1, 3, 32, 32)
    x2 = x.clone()
    x2[:, 2] = random_input(1, 1, 32, 32)[:, 0]  # new blue channel, same red and green
    assert torch.equal(bad.mlp_input(x), bad.mlp_input(x2)), "the MLPs never see blue"
    params = bad.lowres(x)  # with the per-tile MLPs fixed, blue has no effect on any pixel
    torch.testing.assert_close(bad.mlp(bad.mlp_channels(x2), params), bad.mlp(bad.mlp_channels(x), params))
    good = ASAPNetGenerator(tiny_hybrid())
    p = good.lowres(x)
    assert (good.mlp(good.mlp_channels(x2), p) - good.mlp(good.mlp_channels(x), p)).abs().max() > 1e-7


def test_deblurgan_residual_output_and_dropout():
    G = DeblurGANGenerator(DeblurGANConfig(ngf=4, residual_blocks=1, dropout=0.5)).eval()
    x = random_input(1, 3, 16, 16)
    torch.testing.assert_close(G(x), (x + G.head(G.trunk(x))).clamp(-1, 1))
    assert any(isinstance(m, torch.nn.Dropout) for m in G.modules())
    block = next(m for m in G.modules() if isinstance(m, ResnetBlock))
    assert sum(isinstance(m, torch.nn.Conv2d) for m in block.modules()) == 2, "the paper's block has two convs"


@pytest.mark.parametrize("preset", SMOKE_PRESETS)
def test_every_smoke_preset_builds_and_runs_through_nets(preset):
    cfg = get_preset(preset)
    G, D = build_generator(cfg), build_discriminator(cfg)
    h, w = cfg.data.crop_height, cfg.data.crop_width
    x = random_input(2, generator_in_channels(cfg), h, w)
    y = G(x)
    assert y.shape == (2, 3, h, w)
    outs = D(y, x if cfg.model.d_conditional else None)
    assert len(outs) == cfg.model.num_d and outs[0][-1].shape[1] == 1
    assert D.scales[0].layers[0][0].in_channels == 3 + (generator_in_channels(cfg) if cfg.model.d_conditional else 0)


def test_asap_init_follows_the_model():
    cfg = get_preset("hybrid-smoke")
    assert generator_config(cfg).init == "hyper" and generator_config(get_preset("asapnet-smoke")).init == "xavier"
    cfg.model.asap_init = "normal"
    assert generator_config(cfg).init == "normal"


@pytest.mark.parametrize("S,depth,mlp_input,blend,context", [
    (4, 3, "all", False, 1), (8, 5, "all_but_last", True, 3), (16, 2, "all", True, 1), (8, 3, "all", False, 3),
    (16, 5, "all", True, 5)])  # the last: the hybrid preset's geometry
def test_fused_triton_kernel_equals_batched_matmuls(monkeypatch, S, depth, mlp_input, blend, context):
    """The CUDA inference kernel, run by Triton's CPU interpreter (fp32), on NCHW and channels-last input,
    with and without the blend band and the k x k context it builds from the padded input."""
    pytest.importorskip("triton")
    from asaptrain.models.pixel_mlp import build_kernel, launch_fused, mlp_bmm, pad_input

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel = build_kernel(fresh=True)
    torch.manual_seed(0)
    G = ASAPNetGenerator(tiny_asap(tile_size=S, lowres_downsample=2, mlp_depth=depth, mlp_input=mlp_input,
                                   init="hyper", last_layer_scale=1.0, tile_blend=blend, blend_band=S // 4,
                                   mlp_context=context))
    m = G.mlp
    with torch.no_grad():
        G.lowres.head.weight.mul_(10)
        x = random_input(2, 5, 2 * S, 3 * S)
        params = G.lowres(x).flatten(0, 2)
        geometry = (S, m.band, context)
        want = mlp_bmm(pad_input(G.mlp_channels(x), context, m.band), params, m.coords, m.dims, *geometry,
                       torch.float32)
        assert want.std() > 0.1
        for layout in (x, x.contiguous(memory_format=torch.channels_last)):
            xp = pad_input(G.mlp_channels(layout), context, m.band)
            got = launch_fused(xp, params, m.coords, m.dims, *geometry, kernel=kernel)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-4)  # fp32 sums in another order


def test_fused_op_falls_back_to_batched_matmuls_where_the_kernel_cannot_run():
    from asaptrain.models import pixel_mlp
    from asaptrain.models.pixel_mlp import extended_coordinates, mlp_bmm, pad_input, pixel_mlp_op

    dims, S, band, k = [5 * 9 + 8, 8, 8, 3], 4, 1, 3
    xp = pad_input(random_input(2, 5, 8, 12), k, band)
    params = torch.randn(2 * 2 * 3, sum(a * b + b for a, b in zip(dims, dims[1:]))) * 0.3
    coords = extended_coordinates(S, band)
    pixel_mlp._HEALTH.clear()
    with pytest.warns(RuntimeWarning, match="fused pixel-MLP kernel unusable"):
        got = pixel_mlp_op(xp, params, coords, dims, [S, band, k])  # CPU tensors: no Triton driver
    torch.testing.assert_close(got, mlp_bmm(xp, params, coords, dims, S, band, k, torch.float32))
    torch.library.opcheck(pixel_mlp_op, (xp, params, coords, dims, [S, band, k]),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_bench_helpers_and_a_tiny_cpu_run():
    from asaptrain.perf.models import ROW_KEYS, bench_config, parse_variant, run_bench

    assert parse_variant("bf16-cl-compile") == ("bf16", True, True) and parse_variant("fp32") == ("fp32", False, False)
    with pytest.raises(ValueError):
        parse_variant("fp16")
    assert bench_config("asapnet", 256, 512).model.tile_size == 16  # ASAP-Net's 16-row grid
    big = bench_config("asapnet", 1024, 2048).model
    assert (big.tile_size, big.lowres_downsample) == (64, 16)
    assert bench_config("pix2pixhd", 1024, 2048).model.local_enhancers == 1
    assert bench_config("pix2pixhd", 72, 72) is None  # not a multiple of 16
    rows = run_bench(device="cpu", models=["deblurgan"], sizes=[(16, 16)], batches=(1, 2), repeats=1, warmup=0)
    assert len(rows) == 2 and all(set(ROW_KEYS) <= set(r) and r["ms"] > 0 and r["gpu"] == "cpu" for r in rows)


def test_models_summary_cli_json():
    import json

    from click.testing import CliRunner

    from asaptrain.cli import main

    result = CliRunner().invoke(main, ["models", "summary", "--json", "--preset", "hybrid-smoke"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["net"] for r in rows] == ["G", "D"]
    assert all(r["preset"] == "hybrid-smoke" and r["params"] > 0 and r["gflops"] > 0 and r["height"] == 64
               for r in rows)


def test_hybrid_mlp_sees_its_neighbourhood():
    """With mlp_context k, each pixel's MLP input is the k x k patch around it (reflect at borders)."""
    import torch.nn.functional as F

    from asaptrain.models.hybrid import HybridConfig

    G = ASAPNetGenerator(HybridConfig(tile_size=8, lowres_downsample=4, lowres_max_channels=16, lowres_blocks=1,
                                     mlp_width=8, mlp_depth=2, mlp_context=3))
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    m = G.mlp_input(x)
    assert m.shape == (1, 27, 16, 16)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    # channel c*9 + dy*3 + dx holds x[c] shifted by (dy-1, dx-1)
    for c in range(3):
        for dy in range(3):
            for dx in range(3):
                torch.testing.assert_close(m[0, c * 9 + dy * 3 + dx], padded[0, c, dy:dy + 16, dx:dx + 16])
    assert G(x).shape == x.shape
    with pytest.raises(ValueError, match="mlp_context"):
        HybridConfig(mlp_context=2)


def test_fused_health_check_ignores_the_callers_autocast(monkeypatch):
    """Under CPU bf16 autocast the fp32 kernel was compared with a bf16 matmul and fell back for nothing."""
    pytest.importorskip("triton")
    from asaptrain.models import pixel_mlp

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel = pixel_mlp.build_kernel(fresh=True)
    monkeypatch.setattr(pixel_mlp, "build_kernel", lambda fresh=False: kernel)
    monkeypatch.setattr(pixel_mlp, "_HEALTH", {})
    dims = [3 * 9 + 8, 16, 16, 3]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pixel_mlp._fused_healthy(torch.device("cpu"), torch.float32, dims, [4, 1, 3])


def test_the_pixelwise_path_that_ran_is_recorded(monkeypatch):
    from asaptrain.models import pixel_mlp
    from asaptrain.models.pixel_mlp import PixelMLP, pixel_path

    G = ASAPNetGenerator(tiny_hybrid())
    assert pixel_path(G) is None  # nothing ran yet
    x = random_input(1, 3, 16, 16)
    with torch.no_grad():
        G(x)
    assert pixel_path(G) == "planes" and pixel_path(DeblurGANGenerator(DeblurGANConfig(ngf=4))) is None
    monkeypatch.setattr(PixelMLP, "_use_fused", lambda self, x, params: True)  # as on CUDA, but no driver here
    monkeypatch.setattr(pixel_mlp, "_HEALTH", {})
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="unusable"):
        G(x)
    assert pixel_path(G).startswith("planes (fused kernel fell back: ")


@pytest.mark.parametrize("name", ["asapnet-smoke", "pix2pixhd-smoke", "deblurgan-smoke", "hybrid-smoke"])
def test_min_input_size_is_the_smallest_size_each_generator_runs_at(name):
    from asaptrain.train.nets import min_input_size, size_multiple
    cfg = get_preset(name)
    G = build_generator(cfg).eval()
    s, m = min_input_size(cfg), size_multiple(cfg)
    assert s % m == 0
    with torch.no_grad():
        assert G(torch.zeros(1, generator_in_channels(cfg), s, s)).shape[-2:] == (s, s)
        with pytest.raises((RuntimeError, ValueError)):
            G(torch.zeros(1, generator_in_channels(cfg), s - m, s - m))


@pytest.mark.parametrize("name, changes, multiple", [
    ("deblurgan-smoke", {"model.local_enhancers": 1}, 4),  # a pix2pixHD field: DeblurGAN's stride ignores it
    ("pix2pixhd-smoke", {"model.local_enhancers": 1}, 32),  # 4 strides, and the enhancer halves once more
    ("hybrid-smoke", {"model.tile_size": 8, "model.lowres_downsample": 8}, 8),
])
def test_every_command_pads_to_the_one_size_multiple(name, changes, multiple):
    """infer, export and the benchmarks use ``nets.size_multiple``: the generator's true stride."""
    from asaptrain.config.io import replace
    from asaptrain.export import size_rules
    from asaptrain.perf.compare import at_size
    from asaptrain.perf.models import bench_config
    from asaptrain.train.nets import min_input_size, size_multiple

    cfg = replace(get_preset(name), changes)
    assert size_multiple(cfg) == multiple and size_rules(cfg) == (multiple, min_input_size(cfg))
    at_size(cfg, name, 3 * multiple, 5 * multiple)  # no error: the size fits
    G = build_generator(cfg).eval()
    with torch.no_grad():
        s = min_input_size(cfg) + multiple
        assert G(torch.zeros(1, generator_in_channels(cfg), s, s)).shape[-2:] == (s, s)
    assert bench_config("deblurgan", 36, 36) is not None  # DeblurGAN's multiple is 4, whatever local_enhancers


def test_the_size_multiple_is_computed_in_one_place():
    """A second formula for the generator's stride from the config (``2 ** (m.downsamplings ...)``) fails here."""
    import re
    from pathlib import Path

    import asaptrain

    root = Path(asaptrain.__file__).parent
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py")
            if re.search(r"2\s*\*\*\s*\(?\s*(cfg\.model|\bm)\.downsamplings", p.read_text())]
    assert hits == ["train/nets.py"], hits


def test_compiled_pixelwise_mlps_give_the_eager_output():
    """``set_mlp_compiled``: the unfused path through torch.compile (inductor) computes what the
    eager path computes, to the rounding of another order of fp32 sums (bounded by the eager
    path's own distance from float64), and the path says so."""
    from asaptrain.models.pixel_mlp import set_mlp_compiled

    torch.manual_seed(0)
    G = ASAPNetGenerator(tiny_hybrid(mlp_context=3, tile_blend=True)).eval()
    x = random_input(2, 3, 16, 24)
    with torch.no_grad():
        want = G(x)
        exact = G.double()(x.double())
        G.float()
        assert set_mlp_compiled(G) == 1
        got = G(x)
    assert pixel_path(G).endswith("(compiled)")
    eager_err = float((want.double() - exact).abs().max())
    ulp = float(torch.finfo(torch.float32).eps * exact.abs().max())
    assert float((got.double() - exact).abs().max()) <= 8 * eager_err + 4 * ulp
