"""The GAN's loss terms for one step: the math of each phase, nothing else (StyleGAN3's loss.py).

``Objective.d_terms`` and ``Objective.g_terms`` take the generator's input, its output and the
target and return named loss terms, weighted as the config says; they run no backward, step no
optimizer and carry no timer (``train/gan.py`` does those around them)::

    objective = Objective(cfg, D, build_gan_loss(cfg.loss), perceptual)
    terms = objective.g_terms(x, fake, real)   # {"g_adv": ..., "g_fm": ..., "g_l1": ...}

Each discriminator call sees real and fake (and, for WGAN-GP, the interpolates) concatenated
into one batch: one forward per phase. The exception is WGAN-GP in fp16, whose interpolates get a
forward of their own in fp32 (:meth:`Objective.d_terms` says why), in the same backward.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.utils import parametrize

from asaptrain.config.schema import Config
from asaptrain.train.losses import GanLoss, feature_matching
from asaptrain.train.nets import feature_matching_layer_weight

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""``train.precision`` -> the dtype autocast runs in (fp32: no autocast)."""


def _split(outs: list[list[torch.Tensor]], sizes: list[int]) -> list[list[list[torch.Tensor]]]:
    """Split every tensor of multi-scale D outputs along the batch into ``sizes`` parts."""
    parts = [[[] for _ in outs] for _ in sizes]
    for s, scale in enumerate(outs):
        for feat in scale:
            for i, chunk in enumerate(torch.split(feat, sizes)):
                parts[i][s].append(chunk)
    return parts


class Objective:
    """The discriminator's and the generator's loss terms, from ``cfg.loss`` and the loss objects."""

    def __init__(self, cfg: Config, discriminator: torch.nn.Module, gan_loss: GanLoss,
                 perceptual: torch.nn.Module | None, device_type: str = "cpu") -> None:
        self.loss_cfg = cfg.loss
        self.conditional = cfg.model.d_conditional
        self.D, self.gan_loss, self.perceptual = discriminator, gan_loss, perceptual
        self.fm_layer_weight = feature_matching_layer_weight(cfg)
        dtype = AUTOCAST_DTYPES.get(cfg.train.precision)
        self.autocast = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        self.fp32 = torch.autocast(device_type, enabled=False)
        self.penalty_in_fp32 = cfg.train.precision == "fp16" and gan_loss.has_penalty
        """fp16: the gradient penalty's D pass runs in fp32 (see :meth:`d_terms`)."""

    def _run_d(self, images: torch.Tensor, cond: torch.Tensor | None):
        with self.autocast:
            return self.D(images, cond)

    def d_terms(self, x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's terms on real and the detached fake: ``d_adv`` (and ``d_gp``).

        In fp16 the penalty's pass runs in fp32. Its first-order gradient (of the logits' sum,
        1 per logit) flows back through D, and an instance norm multiplies it by 1/sigma of its
        input: at init (weights ~N(0, 0.02)) by ~80 in the smoke critic. Taken in fp16 at the
        loss scale (2^16 rounds to inf in fp16 already; 2^12 still overflows 65504 there), it
        turns to inf, and the next conv's backward adds +inf to -inf: NaN, for every scale the
        D loss scale would start at. Unscaled it can underflow instead, and no one scale fits
        both ends for a whole run; fp32's range holds it. The loss scale still scales the D
        update's backward, through this fp32 graph as through the fp16 one. Spectral-norm
        weights are computed once for both forwards (``parametrize.cached``), as in one forward.
        """
        n = real.shape[0]
        cond = x if self.conditional else None
        if self.penalty_in_fp32:
            points = self.gan_loss.interpolates(real, fake)
            with parametrize.cached():
                outs = self._run_d(torch.cat([real, fake.detach()]), None if cond is None else torch.cat([cond, cond]))
                with self.fp32:
                    # D gets a view, not the leaf itself: torch's module hooks (FlopCounterMode's,
                    # in ``bench train``) refuse a leaf input inside autograd.grad.
                    points_outs = self.D(points.view_as(points), cond)
            parts = _split(outs, [n, n])
            return {"d_adv": self.gan_loss.d_loss(parts[0], parts[1]),
                    "d_gp": self.gan_loss.penalty_at(points_outs, points)}
        batch = [real, fake.detach()]
        if self.gan_loss.has_penalty:
            batch.append(self.gan_loss.interpolates(real, fake))
        outs = self._run_d(torch.cat(batch), None if cond is None else torch.cat([cond] * len(batch)))
        parts = _split(outs, [n] * len(batch))
        terms = {"d_adv": self.gan_loss.d_loss(parts[0], parts[1])}
        if self.gan_loss.has_penalty:
            terms["d_gp"] = self.gan_loss.penalty_at(parts[2], batch[2])
        return terms

    def g_terms(self, x: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's terms through D: ``g_adv``, and ``g_fm`` / ``g_perceptual`` / ``g_l1``
        where their weights are on. D's parameters must be frozen by the caller."""
        lc, n = self.loss_cfg, real.shape[0]
        cond = x if self.conditional else None
        need_real = lc.feature_matching_weight > 0
        images = torch.cat([fake, real]) if need_real else fake
        conds = None if cond is None else (torch.cat([cond, cond]) if need_real else cond)
        outs = self._run_d(images, conds)
        parts = _split(outs, [n, n]) if need_real else [outs]
        terms = {"g_adv": lc.gan_weight * self.gan_loss.g_loss(parts[0])}
        if need_real:
            real_feats = [[f.detach() for f in scale] for scale in parts[1]]
            terms["g_fm"] = lc.feature_matching_weight * feature_matching(real_feats, parts[0], self.fm_layer_weight)
        if self.perceptual is not None:
            with self.autocast:
                terms["g_perceptual"] = lc.perceptual_weight * self.perceptual(fake, real).float()
        if lc.l1_weight > 0:
            terms["g_l1"] = lc.l1_weight * (fake.float() - real.float()).abs().mean()
        return terms
