"""Losses: one class per adversarial family, feature matching, and the VGG19 perceptual loss.

    gan = build_gan_loss(cfg.loss)             # Hinge | LSGAN | WGANGP
    d = gan.d_loss(D(real, x), D(fake.detach(), x)); g = gan.g_loss(D(fake, x))
    fm = feature_matching(D(real, x), D(fake, x))
    vgg = build_perceptual(cfg.loss, store)    # None when loss.perceptual == "none"

Discriminator outputs are ``[[features..., logits] per scale]``. Losses are computed in
fp32 whatever the autocast dtype. Weights (gan_weight, feature_matching_weight, ...) are
applied by the training step, not here. The VGG19 weights come through the one loader of helper
weights (``asaptrain.data.weights``).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.data.weights import load_state_dict

Outs = list[list[torch.Tensor]]


def _logits(outs: Outs) -> list[torch.Tensor]:
    return [scale[-1].float() for scale in outs]


class GanLoss(abc.ABC):
    """Base: ``d_loss(real_outs, fake_outs)``, ``g_loss(fake_outs)``; a regularized family sets
    ``has_penalty`` and gives ``interpolates`` / ``penalty_at``."""

    name = "base"
    has_penalty = False

    @abc.abstractmethod
    def d_loss(self, real_outs: Outs, fake_outs: Outs) -> torch.Tensor:
        """Discriminator loss from its outputs on real and generated images."""

    @abc.abstractmethod
    def g_loss(self, fake_outs: Outs) -> torch.Tensor:
        """Generator adversarial loss from the discriminator's outputs on generated images."""

    def interpolates(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The points the penalty is taken at (families with ``has_penalty``), requiring grad."""
        raise NotImplementedError(f"{self.name} has no penalty")

    def penalty_at(self, points_outs: Outs, points: torch.Tensor) -> torch.Tensor:
        """The penalty from D's outputs at :meth:`interpolates` (families with ``has_penalty``)."""
        raise NotImplementedError(f"{self.name} has no penalty")


class Hinge(GanLoss):
    """SPADE / ASAP-Net: D mean(relu(1 - real)) + mean(relu(1 + fake)); G -mean(fake); scales averaged."""

    name = "hinge"

    def d_loss(self, real_outs: Outs, fake_outs: Outs) -> torch.Tensor:
        real, fake = _logits(real_outs), _logits(fake_outs)
        return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / len(real)

    def g_loss(self, fake_outs: Outs) -> torch.Tensor:
        fake = _logits(fake_outs)
        return -sum(f.mean() for f in fake) / len(fake)


class LSGAN(GanLoss):
    """pix2pixHD: D 0.5 * (MSE(real, 1) + MSE(fake, 0)); G MSE(fake, 1); scales summed (as pix2pixHD)."""

    name = "lsgan"

    def d_loss(self, real_outs: Outs, fake_outs: Outs) -> torch.Tensor:
        real, fake = _logits(real_outs), _logits(fake_outs)
        return 0.5 * sum(((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake))

    def g_loss(self, fake_outs: Outs) -> torch.Tensor:
        return sum(((f - 1) ** 2).mean() for f in _logits(fake_outs))


class WGANGP(GanLoss):
    """DeblurGAN's critic loss: D mean(fake) - mean(real); G -mean(fake); scales averaged.

    The penalty is Gulrajani et al.'s gradient penalty, lambda = ``gp_weight``: one alpha per
    sample, the critic's patch logits summed (all scales) per sample, the gradient norm over
    the whole image. (DeblurGAN's code draws one alpha per batch and takes the norm over
    channels only; with its batch of 1 the first is the same.)
    """

    name = "wgan-gp"
    has_penalty = True

    def __init__(self, gp_weight: float = 10.0):
        self.gp_weight = gp_weight

    def d_loss(self, real_outs: Outs, fake_outs: Outs) -> torch.Tensor:
        real, fake = _logits(real_outs), _logits(fake_outs)
        return sum(f.mean() - r.mean() for r, f in zip(real, fake)) / len(real)

    def g_loss(self, fake_outs: Outs) -> torch.Tensor:
        fake = _logits(fake_outs)
        return -sum(f.mean() for f in fake) / len(fake)

    def interpolates(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One random point per sample on the line from real to fake (both detached), requiring grad."""
        real, fake = real.detach(), fake.detach()
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        return (alpha * real + (1 - alpha) * fake).requires_grad_(True)

    def penalty_at(self, points_outs: Outs, points: torch.Tensor) -> torch.Tensor:
        """The penalty from D's outputs at ``points`` (from :meth:`interpolates`); the training
        step takes it with the interpolates in the same D forward as real and fake (in fp16, in
        a forward of their own in fp32: ``train/objective.py`` says why)."""
        score = sum(logits.float().sum() for logits in _logits(points_outs))
        (grad,) = torch.autograd.grad(score, points, create_graph=True)
        with torch.autocast(points.device.type, enabled=False):  # the norm in fp32, whatever D ran in
            return self.gp_weight * ((grad.float().flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def build_gan_loss(loss_cfg: Any) -> GanLoss:
    """``cfg.loss`` -> the adversarial loss object of its family."""
    kind = loss_cfg.gan
    if kind == "hinge":
        return Hinge()
    if kind == "lsgan":
        return LSGAN()
    if kind == "wgan-gp":
        return WGANGP(loss_cfg.gp_weight)
    raise ValueError(f"loss.gan must be hinge, lsgan or wgan-gp, got {kind!r}")


def feature_matching(real_outs: Outs, fake_outs: Outs, layer_weight: float = 1.0) -> torch.Tensor:
    """L1 between D's intermediate features on real (detached) and fake, / num_D.

    As pix2pixHD / SPADE: every feature but the logits, summed over layers and scales, divided
    by the number of scales. pix2pixHD also multiplies by 4 / (n_layers + 1), which is 1 for
    its n_layers = 3; pass ``layer_weight`` (``nets.feature_matching_layer_weight``) otherwise.
    """
    num_d = len(fake_outs)
    total = fake_outs[0][0].new_zeros((), dtype=torch.float32)
    for real_scale, fake_scale in zip(real_outs, fake_outs):
        for r, f in zip(real_scale[:-1], fake_scale[:-1]):
            total = total + F.l1_loss(f.float(), r.detach().float())
    return total * (layer_weight / num_d)


# ----------------------------------------------------------------------------- perceptual


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg19().features indices: relu1_1=1, relu2_1=6, relu3_1=11, relu4_1=20, relu5_1=29; conv3_3=14.
_MULTI_ENDS = (2, 7, 12, 21, 30)
_MULTI_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_CONV3_3_END = 15


class PerceptualLoss(nn.Module):
    """VGG19 feature loss, ``forward(fake, real)`` with images in [-1, 1].

    kind "vgg19-multi": sum of w_i * L1 at relu1_1..relu5_1, w = 1/32, 1/16, 1/8, 1/4, 1
    (pix2pixHD, ASAP-Net). kind "vgg19-conv3_3": MSE of conv3_3 features before its ReLU
    (DeblurGAN). ``vgg_input`` "imagenet" maps the images to [0, 1] and normalizes them with
    ImageNet's mean and std (what VGG19 was trained on); "raw" feeds the [-1, 1] images as they
    are, as the three papers' code does (their loss weights balance against raw features). The
    VGG is frozen and never trained; ``features`` must hold loaded weights.
    """

    def __init__(self, features: nn.Sequential, kind: str = "vgg19-multi", vgg_input: str = "imagenet"):
        super().__init__()
        if kind not in ("vgg19-multi", "vgg19-conv3_3"):
            raise ValueError(f"perceptual kind must be vgg19-multi or vgg19-conv3_3, got {kind!r}")
        if vgg_input not in ("imagenet", "raw"):
            raise ValueError(f"vgg_input must be imagenet or raw, got {vgg_input!r}")
        self.kind, self.vgg_input = kind, vgg_input
        layers = list(features)
        for m in layers:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # a slice's output is both a loss input and the next slice's input
        ends = _MULTI_ENDS if kind == "vgg19-multi" else (_CONV3_3_END,)
        starts = (0,) + ends[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*layers[a:b]) for a, b in zip(starts, ends))
        self.weights = _MULTI_WEIGHTS if kind == "vgg19-multi" else (1.0,)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # frozen feature extractor: always eval

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.vgg_input == "imagenet":
            x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats = []
        for s in self.slices:
            x = s(x)
            feats.append(x)
        return feats

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_f = self._features(fake)
        with torch.no_grad():
            real_f = self._features(real)
        dist = F.l1_loss if self.kind == "vgg19-multi" else F.mse_loss
        return sum(w * dist(f.float(), r.float()) for w, f, r in zip(self.weights, fake_f, real_f))


def vgg19_features(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """torchvision's vgg19().features holding the ``features.*`` tensors of a checked VGG19 state dict."""
    import torchvision

    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    with torch.device("meta"):  # skip building and initializing the 120 M-parameter classifier
        features = torchvision.models.vgg19(weights=None).features
    features.load_state_dict(feats, strict=True, assign=True)
    return features


def build_perceptual(loss_cfg: Any, store: Any = None) -> PerceptualLoss | None:
    """The perceptual loss of ``cfg.loss``, or None when ``loss.perceptual == "none"``.

    Weights come from ``loss.vgg_weights`` (a path, file:// or s3:// URI) or, when that is
    empty, ``STORE/weights/vgg19.pth`` (``asaptrain.data.weights``, the one loader). Missing or
    wrong weights raise ``asaptrain.data.weights.WeightsError``; random VGG weights are never used.
    """
    if loss_cfg.perceptual == "none":
        return None
    state, _ = load_state_dict("vgg19", loss_cfg.vgg_weights, store)
    return PerceptualLoss(vgg19_features(state), loss_cfg.perceptual, loss_cfg.vgg_input)
