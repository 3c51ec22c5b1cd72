"""The fp16 loss scale of one network: a scale tensor and its growth tracker, kept on the device.

fp16 holds values down to about 6e-8 and up to 65504: small gradients underflow to zero unless
the loss is multiplied by a large scale before backward, and a scale too large overflows. This
is the scale ``torch.amp.GradScaler`` keeps, without its host reads: the training step
(``train/gan.py``) backpropagates ``loss * scale.value``, hands ``scale.value`` to the fused
optimizer as ``grad_scale`` (it divides the gradients by it) with the update's non-finite flag
as ``found_inf`` (it skips the update), then calls :meth:`update` with the same flag::

    scale = LossScale(device, growth_interval=2000)
    (loss * scale.value).backward()
    step_optimizer(opt, bad, grad_scale=scale.value)
    scale.update(bad)     # halved where bad, doubled after ``growth_interval`` clean updates in a row

As with GradScaler (whose ``update()`` follows each ``step()``), one update is one optimizer
step of the network: with ``optim.d_steps`` > 1 the critic's scale counts its updates, not the
GAN's steps. Nothing here reads the device: the update runs there
(``torch._amp_update_scale_``, GradScaler's own kernel), so a step still syncs with the host
once, when it reads its flags, and passes them back through :meth:`count_overflow`.
"""

from __future__ import annotations

import torch

INIT_SCALE = 2.0**16
"""GradScaler's default first scale."""
GROWTH, BACKOFF = 2.0, 0.5
"""The scale doubles after ``growth_interval`` clean updates in a row and halves on an overflow (GradScaler's)."""


class LossScale:
    """One network's loss scale; ``value`` is a float32 scalar tensor updated in place."""

    def __init__(self, device: torch.device | str, growth_interval: int = 2000, init: float = INIT_SCALE) -> None:
        self.growth_interval = growth_interval
        self.value = torch.full((), init, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        """Clean updates since the scale last changed (reset by a growth or a back-off)."""
        self.overflows_in_row = 0
        """Updates skipped for overflow since the last applied one (host side, from the step's one read)."""

    def update(self, bad: torch.Tensor) -> None:
        """Back off where ``bad`` (a float scalar, nonzero on overflow) is set, else count toward growth."""
        torch._amp_update_scale_(self.value, self.growth_tracker, bad.to(torch.float32), GROWTH, BACKOFF,
                                 self.growth_interval)

    def count_overflow(self, overflowed: bool) -> int:
        """Record one update's outcome as read on the host; returns the overflows in a row."""
        self.overflows_in_row = self.overflows_in_row + 1 if overflowed else 0
        return self.overflows_in_row

    def state_dict(self) -> dict:
        return {"scale": self.value.detach().clone(), "growth_tracker": self.growth_tracker.detach().clone(),
                "overflows_in_row": self.overflows_in_row}

    def load_state_dict(self, state: dict) -> None:
        # In place: the training step holds references to these tensors.
        self.value.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])
        self.overflows_in_row = int(state.get("overflows_in_row", 0))


def loss_scales(device: torch.device | str, growth_interval: int = 2000) -> dict[str, LossScale]:
    """One scale per network, keyed by the training step's phase names."""
    return {"D": LossScale(device, growth_interval), "G": LossScale(device, growth_interval)}
