"""The fp16 loss scale of one network: a scale tensor and its growth tracker, kept on the device.

fp16 holds values down to about 6e-8 and up to 65504: small gradients underflow to zero unless
the loss is multiplied by a large scale before backward, and a scale too large overflows. This
is the scale ``torch.amp.GradScaler`` keeps, without its host reads: the training step
(``train/gan.py``) backpropagates ``loss * scale.value``, hands ``scale.value`` to the fused
optimizer as ``grad_scale`` (it divides the gradients by it) with the step's non-finite flag as
``found_inf`` (it skips the update), then calls :meth:`update` with the same flag::

    scale = LossScale(device)
    (loss * scale.value).backward()
    step_optimizer(opt, bad, grad_scale=scale.value)
    scale.update(bad)     # halved where bad, doubled after ``interval`` clean updates in a row

Nothing here reads the device: the update runs there (``torch._amp_update_scale_``, the kernel
GradScaler uses), so a step still syncs with the host once, when it reads its flags.
"""

from __future__ import annotations

import torch

INIT_SCALE = 2.0**16
"""GradScaler's default first scale."""
GROWTH, BACKOFF, INTERVAL = 2.0, 0.5, 2000
"""The scale doubles after ``INTERVAL`` clean updates in a row and halves on an overflow (GradScaler's defaults)."""


class LossScale:
    """One network's loss scale; ``value`` is a float32 scalar tensor updated in place."""

    def __init__(self, device: torch.device | str, init: float = INIT_SCALE) -> None:
        self.value = torch.full((), init, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        """Clean updates since the scale last changed."""

    def update(self, bad: torch.Tensor) -> None:
        """Back off where ``bad`` (a float scalar, nonzero on overflow) is set, else count toward growth."""
        torch._amp_update_scale_(self.value, self.growth_tracker, bad.to(torch.float32), GROWTH, BACKOFF, INTERVAL)

    def state_dict(self) -> dict:
        return {"scale": self.value.detach().clone(), "growth_tracker": self.growth_tracker.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        # In place: the training step and the penalty hold references to these tensors.
        self.value.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])


def loss_scales(device: torch.device | str) -> dict[str, LossScale]:
    """One scale per network, keyed by the training step's phase names."""
    return {"D": LossScale(device), "G": LossScale(device)}
