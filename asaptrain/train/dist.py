"""Rank, world size, device and reductions: the one place that knows about distribution.

Rank and world size come from the torch.distributed process group that Ray Train's
``TorchTrainer`` sets up in each worker; the local rank and the device from ``ray.train``
(``get_context()``, ``ray.train.torch.get_device()``). With no process group (tests,
notebooks, one worker) it is a world of one. Nothing else in asaptrain touches process groups::

    if dist.is_main(): ...
    bad = dist.max_over_ranks(flag)   # the same decision on every rank, left on the device
    dist.check_replicas({"G": G, "D": D})   # at each checkpoint: raises ReplicaMismatch
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def _ray_context():
    try:
        import ray.train

        return ray.train.get_context()
    except Exception:  # not inside a Ray Train worker
        return None


def world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


def rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_available() and torch_dist.is_initialized() else 0


def local_rank() -> int:
    ctx = _ray_context() if world_size() > 1 else None
    return ctx.get_local_rank() if ctx is not None else 0


def is_main() -> bool:
    return rank() == 0


def device(use_gpu: bool) -> torch.device:
    """This worker's device: its own GPU under Ray, else cuda:0 or the CPU."""
    if not use_gpu or not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:
        return torch.device("cuda", local_rank())


def max_over_ranks(flag: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum of a float tensor over all ranks, left on its device (not read)."""
    if world_size() > 1:
        on = flag.device
        flag = flag if torch_dist.get_backend() == "nccl" else flag.cpu()
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        flag = flag.to(on)
    return flag


def gather_objects(value) -> list:
    """One picklable value from every rank, in rank order (every rank gets the list)."""
    if world_size() == 1:
        return [value]
    out: list = [None] * world_size()
    torch_dist.all_gather_object(out, value)
    return out


def gather(value: float) -> list[float]:
    """One float from every rank, in rank order (every rank gets the list)."""
    return [float(v) for v in gather_objects(float(value))]


def gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` from every rank stacked in rank order, ``(world, *t.shape)``, on ``t``'s device."""
    if world_size() == 1:
        return t[None]
    on = t.device
    t = t if torch_dist.get_backend() == "nccl" else t.cpu()
    out = [torch.empty_like(t) for _ in range(world_size())]
    torch_dist.all_gather(out, t.contiguous())
    return torch.stack(out).to(on)


class ReplicaMismatch(RuntimeError):
    """DDP replicas hold different weights; the message names the first tensor that differs."""


def tensor_checksums(modules: dict[str, torch.nn.Module]) -> tuple[list[str], torch.Tensor]:
    """Names (``G.net.0.weight``) and ``(sum, sum of squares)`` in float64 of every parameter and
    buffer of ``modules``: ``(n, 2)``, on the tensors' device. One float64 copy of one tensor at a
    time; any change a diverging replica makes to a tensor moves one of the two."""
    names, rows = [], []
    for prefix, module in modules.items():
        module = unwrap(module)
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            v = t.detach().double()
            names.append(f"{prefix}.{name}")
            rows.append(torch.stack([v.sum(), (v * v).sum()]))
    return names, torch.stack(rows)


def first_mismatch(names: list[str], sums: torch.Tensor) -> str | None:
    """The message for the first tensor whose checksums differ between ranks (``sums``:
    ``(world, n, 2)`` from :func:`tensor_checksums` on each rank), or None when all agree.
    Exact comparison: DDP gives every replica the same bits (NaN agrees with NaN)."""
    ref = sums[0:1]
    same = ((sums == ref) | (sums.isnan() & ref.isnan())).all(dim=2)  # (world, n)
    bad = (~same).any(dim=0).nonzero()
    if not len(bad):
        return None
    i = int(bad[0])
    ranks = [r for r in range(sums.shape[0]) if not bool(same[r, i])]
    values = "; ".join(f"rank {r}: sum {sums[r, i, 0].item():.17g}, sum of squares {sums[r, i, 1].item():.17g}"
                       for r in [0, *ranks])
    more = int(len(bad)) - 1
    return (f"replicas differ at {names[i]} ({values})" + (f", and {more} more tensors" if more else "")
            + ": DDP must keep every rank's weights identical; a rank-dependent update or a buffer "
              "changed outside DDP's broadcast breaks that")


def check_replicas(modules: dict[str, torch.nn.Module]) -> None:
    """Raise :class:`ReplicaMismatch` on every rank when the ranks' ``modules`` differ (EDM's
    ``check_ddp_consistency``, cheaply: one all-gather of two float64 numbers per tensor)."""
    if world_size() == 1:
        return
    names, sums = tensor_checksums(modules)
    message = first_mismatch(names, gather_tensor(sums).cpu())
    if message is not None:
        raise ReplicaMismatch(message)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
