"""Pictures from tensors: label maps in Cityscapes colours and sample grids (input | output | target).

Pure torch + PIL; returns PNG bytes so callers decide where they go (a store, a file).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def _cityscapes_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 colours by label id, from the official definitions."""
    palette = np.zeros((max(num_labels, 1), 3), dtype=np.uint8)
    try:
        from cityscapesscripts.helpers.labels import labels

        for label in labels:
            if 0 <= label.id < num_labels:
                palette[label.id] = label.color
    except ImportError:  # still readable without the package: a fixed pseudo-random palette
        palette = np.random.default_rng(0).integers(0, 256, (num_labels, 3), dtype=np.uint8)
    return palette


def colorize_labels(onehot: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(B, >=num_labels, H, W) one-hot (extra channels ignored) -> (B, 3, H, W) in [0, 1]."""
    ids = onehot[:, :num_labels].argmax(dim=1).cpu().numpy()
    rgb = _cityscapes_palette(num_labels)[ids]  # B, H, W, 3
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255


def to_rgb01(images: torch.Tensor) -> torch.Tensor:
    return ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)


def sample_grid(rows: list[torch.Tensor], max_images: int = 8) -> bytes:
    """PNG of a grid: one row per tensor (each (B, 3, H, W) in [0, 1]), one column per image."""
    rows = [r[:max_images].float().cpu().clamp(0, 1) for r in rows]
    n = min(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2:]
    pad = 2
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[:, top : top + h, left : left + w] = row[j]
    array = (canvas.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def training_samples(x: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, task: str, num_labels: int) -> bytes:
    """The grid a run writes: generator input, output, target (label maps coloured)."""
    first = colorize_labels(x, num_labels) if task == "labels2photo" else to_rgb01(x)
    return sample_grid([first, to_rgb01(fake), to_rgb01(target)])
