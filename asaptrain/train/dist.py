"""Rank, world size, device and reductions: the one place that knows about distribution.

Rank and world size come from the torch.distributed process group that Ray Train's
``TorchTrainer`` sets up in each worker; the local rank and the device from ``ray.train``
(``get_context()``, ``ray.train.torch.get_device()``). With no process group (tests,
notebooks, one worker) it is a world of one. Nothing else in asaptrain touches process groups::

    if dist.is_main(): ...
    stop = dist.any_true(torch.tensor(bad))   # the same decision on every rank
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


def any_true(flag: torch.Tensor) -> bool:
    """Whether a boolean tensor is true on any rank."""
    if world_size() > 1:
        flag = flag.to(torch.float32).reshape(1)
        if torch_dist.get_backend() != "nccl":
            flag = flag.cpu()
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
    return bool(flag.any())


def gather(value: float) -> list[float]:
    """One float from every rank, in rank order (every rank gets the list)."""
    if world_size() == 1:
        return [float(value)]
    out: list = [None] * world_size()
    torch_dist.all_gather_object(out, float(value))
    return [float(v) for v in out]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP (or compiled) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
