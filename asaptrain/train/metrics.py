"""Quality metrics (PSNR, SSIM, FID) and inference timing.

PSNR and SSIM are per-image means over the set with an explicit data range of 1.0 on
images in [0, 1] — what papers report (torchmetrics' default pools the squared error over the
whole set instead); both are written here in torch: torchmetrics' per-image numbers without
its import, and for ``evaluate`` SSIM over the valid region as Wang et al.'s reference code. FID uses the Inception weights papers use (``pt_inception-2015-12-05``)
from a path, a URI or the store (``asaptrain.data.weights``, the one loader); where none are
available FID is ``None`` with the reason, never a number from random weights. A weights file is loaded as tensors only before anything else
reads it: one that holds other objects is refused, never unpickled.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch

from asaptrain.data.weights import PINNED, check_state, find_weights, missing_message, tensors_only

INCEPTION_FILE = PINNED["inception"].file
"""File name of the Inception weights (the pytorch-fid / torch-fidelity port of the TF graph)."""


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32."""
    return ((images.float() + 1) / 2).clamp(0, 1)


SSIM_KERNEL, SSIM_SIGMA = 11, 1.5
"""SSIM's Gaussian window (Wang et al. 2004): 11 pixels, sigma 1.5."""


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each image of two (B, C, H, W) batches: 10 log10(range^2 / MSE), the MSE over
    each image's pixels and channels; ``inf`` where an image equals its target. Shape (B,)."""
    mse = (pred - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
                   border: str = "reflect") -> torch.Tensor:
    """SSIM of each image of two (B, C, H, W) batches: Gaussian window 11, sigma 1.5, K1 0.01,
    K2 0.03, the map averaged over the image and its channels, in the inputs' dtype. Shape (B,).

    ``border``: ``"reflect"`` (validation during training): the images padded by reflection, so
    the map covers every pixel: torchmetrics' per-image SSIM, the numbers runs have always
    reported, without its import (about 2 s of CPU in every process that evaluates: it pulls in
    torchvision). ``"valid"`` (``evaluate``'s 8-bit scores, float64, range 255): no padding, the map
    over the region where the window fits, as Wang et al.'s reference code computes it. The tests
    hold each equal to its reference (torchmetrics; the formula written out in numpy).
    """
    import torch.nn.functional as F

    if border not in ("reflect", "valid"):
        raise ValueError(f"border must be 'reflect' or 'valid', not {border!r}")
    b, c, h, w = pred.shape
    if min(h, w) < SSIM_KERNEL:
        raise ValueError(f"a {w}x{h} image is smaller than SSIM's {SSIM_KERNEL}-pixel window")
    if border == "reflect":
        pad = (SSIM_KERNEL // 2,) * 4
        pred, target = F.pad(pred, pad, mode="reflect"), F.pad(target, pad, mode="reflect")
    g = torch.arange(SSIM_KERNEL, dtype=pred.dtype, device=pred.device) - SSIM_KERNEL // 2
    g = torch.exp(-(g ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    rows, cols = g.view(1, 1, 1, -1).expand(c, 1, 1, -1), g.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    stats = torch.cat((pred, target, pred * pred, target * target, pred * target))  # (5B, C, H, W)
    mx, my, xx, yy, xy = F.conv2d(F.conv2d(stats, rows, groups=c), cols, groups=c).split(b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx, vy = (xx - mx * mx).clamp(min=0), (yy - my * my).clamp(min=0)
    cxy = xy - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim.flatten(1).mean(1)


@dataclass
class FidResult:
    value: float | None
    """FID, or None when it could not be computed honestly."""
    reason: str | None
    """Why ``value`` is None."""


class FidScorer:
    """Accumulates Inception features of real and generated images; ``compute()`` gives FID."""

    def __init__(self, weights_path: str, device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.metric = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=weights_path
        ).to(device)
        self.count = 0

    def update(self, real: torch.Tensor, fake: torch.Tensor) -> None:
        """Both in [0, 1], NCHW."""
        self.metric.update(real.float(), real=True)
        self.metric.update(fake.float(), real=False)
        self.count += real.shape[0]

    def compute(self) -> FidResult:
        if self.count < 2:
            return FidResult(None, f"FID needs at least 2 images per side, got {self.count}")
        return FidResult(float(self.metric.compute()), None)


def checked_weights_copy(data: bytes, source: str) -> str:
    """A private local copy of Inception weights that load as tensors only and have the
    Inception's keys and shapes; the path to hand to torch-fidelity.

    torch-fidelity unpickles the file with ``weights_only=False``, which runs any code a pickle
    names. So the bytes are first checked by the one loader (``asaptrain.data.weights``: tensors
    only, anything else refused naming ``source``), and exactly those bytes are written into a
    fresh directory only this user can enter, removed at exit: no other process can swap the
    file between the check and the load, and nothing is reused from an earlier run.
    """
    pinned = PINNED["inception"]
    check_state(tensors_only(data, source, pinned), source, pinned)
    folder = tempfile.mkdtemp(prefix="asaptrain-weights-")  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    local = os.path.join(folder, INCEPTION_FILE)
    with open(local, "wb") as fh:
        fh.write(data)
    return local


def find_inception_weights(configured: str, store=None) -> tuple[str | None, str]:
    """A local path to checked Inception weights, or (None, the reason and how to get them).

    ``configured`` (``eval.inception_weights``) is a path, file:// or s3:// URI, or empty for
    ``STORE/weights/INCEPTION_FILE``; it is read by the one loader of helper weights. A file
    that is there but not the Inception state dict raises ``WeightsError``; an unreadable store
    is a reason, not a crash of the run.
    """
    data, where, looked = find_weights("inception", configured, store)
    if data is not None:
        return checked_weights_copy(data, where), ""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return None, "torch-fidelity is not installed (pip install torch-fidelity)"
    return None, missing_message(PINNED["inception"], looked, store)


@torch.no_grad()
def inference_ms(
    generator: torch.nn.Module,
    in_channels: int,
    height: int,
    width: int,
    device: torch.device,
    batch: int = 1,
    bf16: bool = False,
    repeats: int = 10,
    warmup: int = 3,
) -> float:
    """Milliseconds per image of ``generator`` on random input (no_grad, mean over repeats)."""
    generator.eval()
    x = torch.rand(batch, in_channels, height, width, device=device) * 2 - 1
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    cuda = device.type == "cuda"
    with ctx:
        for _ in range(warmup):
            generator(x)
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            generator(x)
        if cuda:
            torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000 / (repeats * batch)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
