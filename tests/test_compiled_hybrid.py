"""A compiled training step of the blended hybrid (CPU inductor): the pixelwise path's backward compiles."""

from __future__ import annotations

import dataclasses

import torch

from asaptrain.models import ASAPNetGenerator, HybridConfig


def test_compiled_training_step_of_the_blended_hybrid_matches_eager():
    """The replicate pad of permuted per-cell parameters made inductor's backward fail a stride
    assertion (aten.replication_pad2d_backward); the extended-tile layout pads no parameters."""
    torch.manual_seed(0)
    cfg = HybridConfig(tile_size=8, lowres_downsample=4, lowres_width=8, lowres_max_channels=16, lowres_blocks=0,
                       mlp_width=8, mlp_depth=2, last_layer_scale=1.0)
    assert cfg.tile_blend and cfg.mlp_context == 5
    eager = ASAPNetGenerator(cfg)
    compiled_net = ASAPNetGenerator(dataclasses.replace(cfg))
    compiled_net.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_net, backend="inductor")
    x = torch.rand(2, 3, 16, 24) * 1.6 - 0.8
    target = torch.rand(2, 3, 16, 24) * 2 - 1
    losses = []
    for net, fn in ((eager, eager), (compiled_net, compiled)):
        loss = (fn(x) - target).abs().mean()
        loss.backward()
        losses.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-4, atol=1e-5)
    for got, want in zip(losses[1][1], losses[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)
