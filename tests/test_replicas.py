"""DDP replicas compared at every checkpoint: the checksums, the first differing tensor named.

The comparison across real ranks (2 Ray Train workers over gloo) is in test_train_ray.py.
"""

from __future__ import annotations

import itertools

import torch
from reporting import ListReporter

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.train import dist
from asaptrain.train.loop import train_loop
from asaptrain.train.nets import generator_in_channels


def nets(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    return {"G": torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
            "D": torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))}


def gathered(*ranks: dict[str, torch.nn.Module]) -> tuple[list[str], torch.Tensor]:
    """What ``check_replicas`` gathers, built from one module dict per rank."""
    per_rank = [dist.tensor_checksums(m) for m in ranks]
    assert all(names == per_rank[0][0] for names, _ in per_rank)
    return per_rank[0][0], torch.stack([sums for _, sums in per_rank])


def test_checksums_cover_every_parameter_and_buffer_by_name():
    names, sums = dist.tensor_checksums(nets())
    assert names == ["G.0.weight", "G.0.bias", "G.1.weight", "G.1.bias", "D.0.weight", "D.0.bias", "D.1.weight",
                     "D.1.bias", "D.1.running_mean", "D.1.running_var", "D.1.num_batches_tracked"]
    assert sums.shape == (len(names), 2) and sums.dtype == torch.float64


def test_identical_replicas_pass():
    assert dist.first_mismatch(*gathered(nets(), nets(), nets())) is None


def test_the_first_differing_tensor_is_named_with_each_ranks_values():
    a, b = nets(), nets()
    with torch.no_grad():
        b["G"][1].bias[0] += 1e-6  # one element, the smallest change float32 shows here
        b["D"][1].running_mean += 1.0  # a buffer differs too, later in the order
    message = dist.first_mismatch(*gathered(a, b))
    assert message is not None and message.startswith("replicas differ at G.1.bias (rank 0: sum ")
    assert "rank 1: sum" in message and "and 1 more tensors" in message


def test_a_permuting_difference_is_seen_by_the_sum_of_squares_or_the_sum():
    a, b = nets(), nets()
    with torch.no_grad():
        b["D"][0].weight.mul_(-1)  # same sum of squares, another sum
    assert "D.0.weight" in dist.first_mismatch(*gathered(a, b))


def test_nan_agrees_with_nan():
    a, b = nets(), nets()
    with torch.no_grad():
        a["G"][0].weight[0, 0] = b["G"][0].weight[0, 0] = float("nan")
    assert dist.first_mismatch(*gathered(a, b)) is None


def test_the_loop_compares_replicas_at_every_checkpoint(monkeypatch):
    """With one rank there is nothing to compare; the loop must still ask at each checkpoint."""
    asked = []
    monkeypatch.setattr(dist, "check_replicas", lambda modules: asked.append(sorted(modules)))
    cfg = apply_overrides(get_preset("deblurgan-smoke"), ["train.steps=3", "train.log_every=1",
                                                         "train.checkpoint_every=2", "optim.d_steps=1"])
    g = torch.Generator().manual_seed(0)
    c, h, w, n = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width, cfg.train.batch_size
    batches = ({"x": torch.rand(n, c, h, w, generator=g) * 2 - 1, "y": torch.rand(n, 3, h, w, generator=g) * 2 - 1}
               for _ in itertools.count())
    rep = ListReporter()
    train_loop(cfg, batches, lambda b, *_: (b["x"], b["y"]), torch.device("cpu"), rep)
    assert [m["step"] for m, ckpt in rep.reports if ckpt] == [2, 3]
    assert asked == [["D", "G"], ["D", "G"]]
