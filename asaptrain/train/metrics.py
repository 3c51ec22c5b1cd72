"""Quality metrics (PSNR, SSIM, FID) and inference timing.

PSNR and SSIM are per-image means over the set with an explicit data range of 1.0 on
images in [0, 1] — what papers report (torchmetrics' default pools the squared error over the
whole set instead). FID uses the Inception weights papers use (``pt_inception-2015-12-05``)
from a path or the store; where none are available FID is ``None`` with the reason, never a
number from random weights.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""File name of the Inception weights (the pytorch-fid / torch-fidelity port of the TF graph)."""


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped, float32."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image (inputs in [0, 1]), shape (B,)."""
    return peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each image (inputs in [0, 1], Gaussian 11x11, sigma 1.5), shape (B,)."""
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


def find_inception_weights(configured: str, store=None) -> tuple[str | None, str]:
    """A local path to the Inception weights, or (None, the reason and where to put them).

    ``configured`` is a path or empty; with ``store`` given, ``STORE/weights/INCEPTION_FILE`` is
    tried and copied to a local temp file (the feature extractor reads from disk).
    """
    where = []
    if configured:
        if os.path.isfile(configured):
            return configured, ""
        where.append(configured)
    if store is not None:
        rel = f"weights/{INCEPTION_FILE}"
        try:
            if store.exists(rel):
                local = os.path.join(tempfile.gettempdir(), f"asaptrain-{INCEPTION_FILE}")
                if not os.path.isfile(local):
                    tmp = local + f".{os.getpid()}.part"
                    with open(tmp, "wb") as fh:
                        fh.write(store.read_bytes(rel))
                    os.replace(tmp, local)
                return local, ""
        except Exception as exc:  # an unreadable store is a reason, not a crash of the eval
            where.append(f"{store.uri_for(rel)} ({type(exc).__name__})")
        else:
            where.append(store.uri_for(rel))
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return None, "torch-fidelity is not installed (pip install torch-fidelity)"
    looked = ", ".join(where) or "nowhere (eval.inception_weights is empty and no store)"
    return None, (
        f"Inception weights {INCEPTION_FILE} not found (looked in {looked}); put the file at "
        f"STORE/weights/{INCEPTION_FILE} or set eval.inception_weights=PATH"
    )


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
