"""Peak memory of one training step, estimated without allocating it.

    est = estimate_step_memory(cfg, batch=4, height=256, width=256)
    est.peak_bytes, est.parts          # weights, grads, optimizer, activations and temporaries

The step that training runs (``train/gan.py``: G forward, ``optim.d_steps`` D updates, one G
update through D, the perceptual network) is run twice under ``FakeTensorMode``: tensors carry
shapes and dtypes but no storage, so a 1024x2048 pix2pixHD step is "run" on a laptop in seconds.
The second step counts too, because Adam's moments exist only from the first ``step()`` on.

Every tensor an operation returns is tracked by its storage, from the op that made it until the
last reference is gone (a weakref on the storage), so the count is the sum of live storages at
the worst moment: what the caching allocator must hold at least. The same counter run on real
tensors (``measure=True``) is the measured peak the estimate is checked against in the tests.
Not counted: the CUDA context (about 0.3-0.6 GiB per process), cuDNN/oneDNN workspaces and the
allocator's fragmentation, which is why the worker-start check keeps a margin.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.weak import WeakIdKeyDictionary

from asaptrain.config.io import replace
from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.nets import build_discriminator, build_generator, generator_in_channels

GIB = 2**30
MARGIN = 0.85
"""Share of the device's memory a run's estimate may use before a run is refused (the rest:
CUDA context, workspaces, fragmentation)."""


class DoesNotFit(UserError):
    """A run whose estimated peak does not fit the device; the message names settings that fit."""


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages, and their peak, for every op run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _freed(self, nbytes: int):
        def callback(_ref) -> None:
            self.live -= nbytes

        return callback

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage from now until it dies (once, however many views share it)."""
        st = t.untyped_storage()
        if st in self._seen:
            return
        n = st.nbytes()
        self._seen[st] = (n, weakref.ref(st, self._freed(n)))
        self.live += n
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self.track, out)
        return out


@dataclass
class MemoryEstimate:
    """Bytes of one training step at its worst moment, and what they are made of."""

    peak_bytes: int
    parts: dict[str, int] = field(default_factory=dict)
    """Weights, gradients, optimizer moments, EMA, DDP buckets, and the step's activations and
    temporaries at the peak (bytes)."""
    batch: int = 0
    height: int = 0
    width: int = 0

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_gib": self.peak_bytes / GIB, "parts": self.parts,
                "batch": self.batch, "height": self.height, "width": self.width}


def _nbytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and tied weights counted once)."""
    seen = WeakIdKeyDictionary()
    for t in tensors:
        st = t.untyped_storage()
        seen[st] = st.nbytes()
    return sum(seen.values())


def _perceptual(cfg: Config):
    """The perceptual network with torchvision's VGG19 layout; its weights' values do not matter
    here, so only its convolutions are built (``make_layers``: no 120 M-parameter classifier) and
    filled with small random numbers (fake ones under ``FakeTensorMode``, where moving a meta
    module with ``to_empty`` cannot swap its parameters)."""
    if cfg.loss.perceptual == "none" or cfg.loss.perceptual_weight <= 0:
        return None
    from torchvision.models.vgg import cfgs, make_layers

    from asaptrain.train.losses import PerceptualLoss

    features = make_layers(cfgs["E"])  # VGG19's features, the layout torchvision's weights load into
    with torch.no_grad():
        for p in features.parameters():
            p.normal_(0.0, 0.01)
    return PerceptualLoss(features, cfg.loss.perceptual)


def _step_fn(cfg: Config, G, D, g_opt, d_opt, perceptual):
    """The training step itself (``train/gan.py``) over these networks and optimizers."""
    from types import SimpleNamespace

    from asaptrain.train.gan import GanStep

    state = SimpleNamespace(generator=G, discriminator=D, g_opt=g_opt, d_opt=d_opt)
    return GanStep(cfg, state, perceptual)


def _at(cfg: Config, batch: int, height: int, width: int) -> Config:
    # fix_global_steps off: the peak is that of the steps after it, when Adam holds the global
    # generator's moments too (the first steps train the local enhancer only).
    return replace(cfg, {"data.crop_height": height, "data.crop_width": width, "data.load_height": 0,
                         "data.load_width": 0, "train.batch_size": batch, "train.compile": False,
                         "train.fix_global_steps": 0})


def estimate_step_memory(cfg: Config, batch: int, height: int, width: int, world_size: int = 1,
                         measure: bool = False) -> MemoryEstimate:
    """Peak bytes of one training step of ``batch`` images (per device) at ``height`` x ``width``.

    ``measure=False`` (the estimate) runs it on fake tensors; ``measure=True`` runs the same two
    steps on real CPU tensors and counts the live storages (the measurement the estimate is
    checked against). ``world_size > 1`` adds DDP's gradient buckets (one more copy of the grads).
    """
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    cfg = _at(cfg, batch, height, width)
    mode = contextlib.nullcontext() if measure else FakeTensorMode()
    with mode:
        torch.manual_seed(cfg.train.seed)
        G, D, perceptual = build_generator(cfg), build_discriminator(cfg), _perceptual(cfg)
        if cfg.train.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        o = cfg.optim
        g_opt = torch.optim.Adam(G.parameters(), lr=o.g_lr, betas=(o.beta1, o.beta2), fused=True)
        d_opt = torch.optim.Adam(D.parameters(), lr=o.d_lr, betas=(o.beta1, o.beta2), fused=True)
        step = _step_fn(cfg, G, D, g_opt, d_opt, perceptual)
        x = torch.rand(batch, generator_in_channels(cfg), height, width) * 2 - 1
        y = torch.rand(batch, 3, height, width) * 2 - 1
        counter = LiveBytes()
        nets = [G, D] + ([perceptual] if perceptual is not None else [])
        for t in [t for n in nets for t in (*n.parameters(), *n.buffers())] + [x, y]:
            counter.track(t)
        with counter:
            for i in range(2):  # the second step holds Adam's moments
                try:
                    step(x, y, i)
                except DataDependentOutputException:
                    pass  # the step's one host read of its non-finite flags, after its last phase
        weights = _nbytes([t for n in nets for t in (*n.parameters(), *n.buffers())])
        optimizer = _nbytes([v for opt in (g_opt, d_opt) for s in opt.state.values() for v in s.values()
                             if isinstance(v, torch.Tensor) and v.dim() > 0])
        grads = _nbytes([p for n in (G, D) for p in n.parameters() if p.requires_grad])
        g_bytes = _nbytes(list(G.parameters()) + list(G.buffers()))
    extra = {"ema": g_bytes if cfg.optim.ema_decay > 0 else 0, "ddp_buckets": grads if world_size > 1 else 0}
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, **extra,
             "activations_and_temporaries": max(0, counter.peak - weights - optimizer - grads - _nbytes([x, y])),
             "batch_tensors": _nbytes([x, y])}
    return MemoryEstimate(peak_bytes=counter.peak + sum(extra.values()), parts=parts, batch=batch, height=height,
                          width=width)


def fitting_settings(cfg: Config, batch: int, height: int, width: int, available_bytes: int,
                     world_size: int = 1) -> list[str]:
    """``--set`` changes, tried one at a time, whose estimate fits ``available_bytes`` x MARGIN."""
    tries = []
    if not cfg.train.activation_checkpointing:
        tries.append({"train.activation_checkpointing": True})
    if cfg.train.precision == "fp32":
        tries.append({"train.precision": "bf16"})
    b = batch // 2
    while b >= 1:
        tries.append({"train.batch_size": b * world_size})
        b //= 2
    fits = []
    for change in tries:
        trial = replace(cfg, change)
        per_device = trial.train.batch_size // world_size
        est = estimate_step_memory(trial, per_device, height, width, world_size)
        if est.peak_bytes <= available_bytes * MARGIN:
            fits.append(" ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in change.items()))
            if "train.batch_size" in change:
                break  # the largest batch that fits; smaller ones fit too
    return fits


def check_fits(cfg: Config, available_bytes: int, device_name: str, world_size: int = 1) -> MemoryEstimate | None:
    """At worker start: refuse (``train.memory_check = "refuse"``) or warn (``"warn"``) where one
    step's estimate exceeds ``MARGIN`` of the device's memory, naming settings that would fit."""
    if cfg.train.memory_check == "off":
        return None
    batch = max(1, cfg.train.batch_size // world_size)
    h, w = cfg.data.crop_height, cfg.data.crop_width
    est = estimate_step_memory(cfg, batch, h, w, world_size)
    if est.peak_bytes <= available_bytes * MARGIN:
        return est
    fits = fitting_settings(cfg, batch, h, w, available_bytes, world_size)
    hint = ("; these would fit: " + " | ".join(f"--set {f}" for f in fits)) if fits else \
        "; no single change tried fits (activation checkpointing, bf16, a smaller batch): use a smaller crop"
    message = (f"one training step needs about {est.peak_bytes / GIB:.1f} GiB (batch {batch} per device at {h}x{w}), "
               f"more than {MARGIN:.0%} of {device_name}'s {available_bytes / GIB:.1f} GiB{hint}. "
               f"Set train.memory_check=warn to run anyway")
    if cfg.train.memory_check == "refuse":
        raise DoesNotFit(message)
    print(f"[asaptrain] warning: {message}", flush=True)
    return est


__all__ = ["LiveBytes", "MemoryEstimate", "DoesNotFit", "estimate_step_memory", "fitting_settings", "check_fits",
           "MARGIN"]
