"""Quality metrics (PSNR, SSIM, FID) and inference timing.

PSNR and SSIM are per-image means over the set with an explicit data range of 1.0 on
images in [0, 1] — what papers report (torchmetrics' default pools the squared error over the
whole set instead). FID uses the Inception weights papers use (``pt_inception-2015-12-05``)
from a path or the store; where none are available FID is ``None`` with the reason, never a
number from random weights. A weights file is loaded as tensors only before anything else
reads it: one that holds other objects is refused, never unpickled.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from asaptrain.errors import UserError

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


class WeightsError(UserError):
    """A weights file that is not a plain state dict of tensors (and so is never unpickled)."""


def checked_weights_copy(data: bytes, source: str) -> str:
    """A private local copy of weights that load as tensors only; the path to hand to torch-fidelity.

    torch-fidelity unpickles the file with ``weights_only=False``, which runs any code a pickle
    names. So the bytes are first loaded with ``weights_only=True`` (tensors and containers
    only; anything else is refused, naming ``source``), and exactly those bytes are written into
    a fresh directory only this user can enter, removed at exit: no other process can swap the
    file between the check and the load, and nothing is reused from an earlier run.
    """
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        from asaptrain.train.state import load_error_text

        raise WeightsError(f"{source} is not a plain state dict of tensors, so it was not loaded "
                           f"({load_error_text(exc)}); "
                           f"replace it with the {INCEPTION_FILE} weights file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} holds a {type(state).__name__}, not a state dict of tensors; "
                           f"replace it with the {INCEPTION_FILE} weights file")
    folder = tempfile.mkdtemp(prefix="asaptrain-weights-")  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    local = os.path.join(folder, INCEPTION_FILE)
    with open(local, "wb") as fh:
        fh.write(data)
    return local


def find_inception_weights(configured: str, store=None) -> tuple[str | None, str]:
    """A local path to checked Inception weights, or (None, the reason and where to put them).

    ``configured`` is a path or empty; with ``store`` given, ``STORE/weights/INCEPTION_FILE`` is
    tried. Either way the file is checked and copied (:func:`checked_weights_copy`); a file that
    is not a plain state dict raises :class:`WeightsError`.
    """
    where = []
    if configured:
        if os.path.isfile(configured):
            with open(configured, "rb") as fh:
                return checked_weights_copy(fh.read(), configured), ""
        where.append(configured)
    if store is not None:
        rel = f"weights/{INCEPTION_FILE}"
        try:
            data = store.read_bytes(rel) if store.exists(rel) else None
        except Exception as exc:  # an unreadable store is a reason, not a crash of the eval
            where.append(f"{store.uri_for(rel)} ({type(exc).__name__})")
        else:
            if data is not None:
                return checked_weights_copy(data, store.uri_for(rel)), ""
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
