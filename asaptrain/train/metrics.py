"""Quality metrics (PSNR, SSIM, FID) and inference timing.

PSNR and SSIM are per-image means over the set with an explicit data range of 1.0 on
images in [0, 1] — what papers report (torchmetrics' default pools the squared error over the
whole set instead). FID uses the Inception weights papers use (``pt_inception-2015-12-05``)
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


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image (inputs in [0, 1]), shape (B,)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # 1.9 s to import: only where evaluated

    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image (inputs in [0, 1], Gaussian 11x11, sigma 1.5), shape (B,)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")


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
