"""Losses: one class per adversarial family, feature matching, and the VGG19 perceptual loss.

    gan = build_gan_loss(cfg.loss)             # Hinge | LSGAN | WGANGP
    d = gan.d_loss(D(real, x), D(fake.detach(), x)); g = gan.g_loss(D(fake, x))
    fm = feature_matching(D(real, x), D(fake, x))
    vgg = build_perceptual(cfg.loss, store)    # None when loss.perceptual == "none"

Discriminator outputs are ``[[features..., logits] per scale]``. Losses are computed in
fp32 whatever the autocast dtype. Weights (gan_weight, feature_matching_weight, ...) are
applied by the training step, not here. Pure torch; a store is only read when given.
"""

from __future__ import annotations

import abc
import io
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.errors import UserError

Outs = list[list[torch.Tensor]]


def _logits(outs: Outs) -> list[torch.Tensor]:
    return [scale[-1].float() for scale in outs]


class GanLoss(abc.ABC):
    """Base: ``d_loss(real_outs, fake_outs)``, ``g_loss(fake_outs)``, optional ``penalty``."""

    name = "base"
    has_penalty = False

    @abc.abstractmethod
    def d_loss(self, real_outs: Outs, fake_outs: Outs) -> torch.Tensor:
        """Discriminator loss from its outputs on real and generated images."""

    @abc.abstractmethod
    def g_loss(self, fake_outs: Outs) -> torch.Tensor:
        """Generator adversarial loss from the discriminator's outputs on generated images."""

    def penalty(
        self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Discriminator regularizer; zero for families without one."""
        return real.new_zeros(())

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

    ``penalty`` is Gulrajani et al.'s gradient penalty, lambda = ``gp_weight``: one alpha per
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

    def penalty(
        self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        interp = self.interpolates(real.float(), fake.float())
        return self.penalty_at(D(interp, None if cond is None else cond.detach()), interp)

    def interpolates(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One random point per sample on the line from real to fake (both detached), requiring grad."""
        real, fake = real.detach(), fake.detach()
        alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        return (alpha * real + (1 - alpha) * fake).requires_grad_(True)

    def penalty_at(self, points_outs: Outs, points: torch.Tensor) -> torch.Tensor:
        """The penalty from D's outputs at ``points`` (from :meth:`interpolates`); the training
        step takes it with the interpolates in the same D forward as real and fake."""
        score = sum(logits.float().sum() for logits in _logits(points_outs))
        (grad,) = torch.autograd.grad(score, points, create_graph=True)
        return self.gp_weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


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


class WeightsError(UserError):
    """Pretrained weights a loss needs are missing or unreadable; the message says where to put them."""


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg19().features indices: relu1_1=1, relu2_1=6, relu3_1=11, relu4_1=20, relu5_1=29; conv3_3=14.
_MULTI_ENDS = (2, 7, 12, 21, 30)
_MULTI_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_CONV3_3_END = 15
STORE_WEIGHTS = "weights/vgg19.pth"


class PerceptualLoss(nn.Module):
    """VGG19 feature loss, ``forward(fake, real)`` with images in [-1, 1] (ImageNet-normalized inside).

    kind "vgg19-multi": sum of w_i * L1 at relu1_1..relu5_1, w = 1/32, 1/16, 1/8, 1/4, 1
    (pix2pixHD, ASAP-Net). kind "vgg19-conv3_3": MSE of conv3_3 features before its ReLU
    (DeblurGAN). The VGG is frozen and never trained; ``features`` must hold loaded weights.
    """

    def __init__(self, features: nn.Sequential, kind: str = "vgg19-multi"):
        super().__init__()
        if kind not in ("vgg19-multi", "vgg19-conv3_3"):
            raise ValueError(f"perceptual kind must be vgg19-multi or vgg19-conv3_3, got {kind!r}")
        self.kind = kind
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


def _missing_message(where: str) -> str:
    return (
        f"VGG19 weights for the perceptual loss not found at {where}. Put torchvision's vgg19 state dict "
        f"(the ImageNet file torchvision downloads as vgg19-dcbb9e9d.pth, saved with torch.save(state_dict)) "
        f"at STORE/{STORE_WEIGHTS} or give its path with --set loss.vgg_weights=PATH; "
        f"or run without the perceptual loss: --set loss.perceptual=none"
    )


def _read_weights(loss_cfg: Any, store: Any, read_uri: Any = None) -> tuple[bytes, str]:
    """The weight file's bytes and a name for it in messages."""
    src = (loss_cfg.vgg_weights or "").strip()
    if src:
        if src.startswith("file://"):
            src = src[len("file://"):]
        if "://" in src:  # s3://bucket/key: the caller's reader knows storage; losses do not
            if read_uri is None:
                raise WeightsError(f"{_missing_message(src)} (no reader for URIs was given)")
            try:
                return read_uri(src), src
            except WeightsError:
                raise
            except Exception as exc:  # noqa: BLE001 - a missing or unreadable object: say where
                raise WeightsError(f"{_missing_message(src)} ({exc})") from None
        path = os.path.expanduser(src)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                return fh.read(), path
        if store is not None and not os.path.isabs(path) and store.exists(src):
            return store.read_bytes(src), _store_uri(store, src)
        raise WeightsError(_missing_message(path if store is None else f"{path} (nor in the store)"))
    if store is None:
        raise WeightsError(_missing_message("loss.vgg_weights (empty) and no store was given"))
    where = _store_uri(store, STORE_WEIGHTS)
    if not store.exists(STORE_WEIGHTS):
        raise WeightsError(_missing_message(where))
    return store.read_bytes(STORE_WEIGHTS), where


def _store_uri(store: Any, rel: str) -> str:
    if hasattr(store, "uri_for"):
        return store.uri_for(rel)
    return f"{getattr(store, 'uri', 'STORE')}/{rel}"


def load_vgg19_features(data: bytes, where: str = "the weights file") -> nn.Sequential:
    """torchvision's vgg19().features with the weights of a torchvision state dict (weights_only load)."""
    import torchvision

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
        from asaptrain.train.state import load_error_text

        raise WeightsError(f"{where} is not a loadable torch state dict ({load_error_text(exc)}); "
                           f"{_missing_message(where)}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{where} holds a {type(state).__name__}, not a state dict; {_missing_message(where)}")
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    with torch.device("meta"):  # skip building and initializing the 120 M-parameter classifier
        features = torchvision.models.vgg19(weights=None).features
    try:
        features.load_state_dict(feats, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(f"{where} is not a torchvision vgg19 state dict ({str(exc).splitlines()[0]}); "
                           f"{_missing_message(where)}") from None
    return features


def build_perceptual(loss_cfg: Any, store: Any = None, read_uri: Any = None) -> PerceptualLoss | None:
    """The perceptual loss of ``cfg.loss``, or None when ``loss.perceptual == "none"``.

    Weights come from ``loss.vgg_weights`` (a path, or a URI read by ``read_uri(uri) -> bytes``)
    or, when that is empty, ``weights/vgg19.pth`` in ``store`` (any object with
    ``exists``/``read_bytes``).
    Missing weights raise :class:`WeightsError`; random VGG weights are never used.
    """
    if loss_cfg.perceptual == "none":
        return None
    data, where = _read_weights(loss_cfg, store, read_uri)
    return PerceptualLoss(load_vgg19_features(data, where), loss_cfg.perceptual)
