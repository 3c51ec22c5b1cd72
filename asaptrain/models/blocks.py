"""Building blocks shared by the four models.

Normalization and padding choices, weight init in each reference's style, the ResNet trunk
of pix2pixHD's global generator and DeblurGAN's generator, and the multiscale PatchGAN
discriminator that all four models use (pix2pixHD's, SPADE/ASAP-Net's and DeblurGAN's
discriminators are the same five-conv network; they differ in norm, bias and init only).

Pure torch: no config objects, no I/O. Images are NCHW float tensors in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

NormKind = Literal["none", "instance", "group", "spectral", "spectral_instance"]
PaddingKind = Literal["zero", "reflect", "replicate"]
InitKind = Literal["normal", "xavier", "kaiming"]

NORMS: tuple[str, ...] = ("none", "instance", "group", "spectral", "spectral_instance")
_TORCH_PADDING = {"zero": "zeros", "reflect": "reflect", "replicate": "replicate"}


def torch_padding_mode(padding: str) -> str:
    """Our padding names -> ``nn.Conv2d(padding_mode=...)``."""
    try:
        return _TORCH_PADDING[padding]
    except KeyError:
        raise ValueError(f"padding must be one of {', '.join(_TORCH_PADDING)}, got {padding!r}") from None


def has_activation_norm(norm: str) -> bool:
    return norm in ("instance", "group", "spectral_instance")


def activation_norm(norm: str, channels: int, affine: bool) -> nn.Module | None:
    """The normalization layer after a conv (None for "none" and plain "spectral")."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm in ("instance", "spectral_instance"):
        return nn.InstanceNorm2d(channels, affine=affine)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, affine=True)
    return None


def conv_block(
    cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None, *,
    padding_mode: str = "zero", norm: str = "none", affine: bool = False, bias_before_norm: bool = False,
    act: nn.Module | None = None, transposed: bool = False,
) -> list[nn.Module]:
    """conv [spectral] [norm] [act] as a list of layers.

    The conv bias is dropped before an activation norm (it cancels out; SPADE/ASAP-Net drop
    it) unless ``bias_before_norm`` (pix2pixHD and DeblurGAN keep it, so their parameter
    counts match the papers').
    """
    pad = kernel // 2 if padding is None else padding
    bias = bias_before_norm or not has_activation_norm(norm)
    if transposed:
        conv: nn.Module = nn.ConvTranspose2d(cin, cout, kernel, stride, pad, output_padding=stride - 1, bias=bias)
    else:
        conv = nn.Conv2d(cin, cout, kernel, stride, pad, bias=bias, padding_mode=torch_padding_mode(padding_mode))
    if norm.startswith("spectral"):
        conv = spectral_norm(conv)
    layers = [conv]
    normalization = activation_norm(norm, cout, affine)
    if normalization is not None:
        layers.append(normalization)
    if act is not None:
        layers.append(act)
    return layers


def _reinit_weight(m: nn.Module, fn) -> None:
    """Apply ``fn`` to m's raw weight, re-registering spectral norm so its u, v match."""
    spectral = parametrize.is_parametrized(m, "weight")
    if spectral:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    with torch.no_grad():
        fn(m.weight)
    if spectral:
        spectral_norm(m)


def init_weights(module: nn.Module, kind: InitKind, gain: float = 0.02) -> None:
    """Initialise every conv / linear / norm in ``module`` as a reference code does.

    normal  (pix2pixHD, DeblurGAN): conv weights N(0, gain), biases left at PyTorch's default,
            norm weights N(1, gain) and biases 0.
    xavier  (ASAP-Net): conv/linear weights xavier-normal(gain), biases 0; norms untouched
            (its init_weights only touches BatchNorm, which ASAP-Net does not use).
    kaiming (variance-preserving under ReLU, for norm-free stacks): fan-in He normal, biases 0.
    """
    if kind not in ("normal", "xavier", "kaiming"):
        raise ValueError(f"init must be normal, xavier or kaiming, got {kind!r}")
    for m in list(module.modules()):  # a list: re-registering spectral norm edits the tree
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if kind == "normal":
                _reinit_weight(m, lambda w: nn.init.normal_(w, 0.0, gain))
            elif kind == "xavier":
                _reinit_weight(m, lambda w: nn.init.xavier_normal_(w, gain=gain))
            else:
                _reinit_weight(m, lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"))
            if kind != "normal" and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif kind == "normal" and isinstance(m, (nn.InstanceNorm2d, nn.GroupNorm, nn.BatchNorm2d)):
            if m.weight is not None:
                nn.init.normal_(m.weight, 1.0, gain)
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- ResNet trunk


class ResnetBlock(nn.Module):
    """x + (pad conv3x3 norm ReLU [dropout] pad conv3x3 norm): the paper's two-conv block.

    This is also the block of DeblurGAN's published weights (11.38 M parameters) and of its
    2018 code. The repository's code since 2019 builds one conv: its list expression
    ``a + [ReLU] + [Dropout] if use_dropout else [] + b`` parses as ``(a + ...) if use_dropout
    else ([] + b)``, so the second conv is lost when dropout is on (6.07 M parameters), a change
    made after the weights were released.
    """

    def __init__(self, channels: int, norm: str = "instance", dropout: float = 0.0, padding: str = "reflect"):
        super().__init__()
        layers = conv_block(channels, channels, 3, padding_mode=padding, norm=norm, bias_before_norm=True,
                            act=nn.ReLU(True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += conv_block(channels, channels, 3, padding_mode=padding, norm=norm, bias_before_norm=True)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet_trunk(
    in_channels: int, ngf: int, downsamplings: int, blocks: int, norm: str = "instance",
    dropout: float = 0.0, upsample: bool = True,
) -> nn.Sequential:
    """7x7 reflect stem, stride-2 3x3 convs (zero pad), ResNet blocks, transposed-conv ups.

    The shared body of pix2pixHD's global generator and DeblurGAN's generator (both follow
    Johnson et al.'s network). Ends with ReLU'd ``ngf``-channel features at input resolution.
    """
    relu = lambda: nn.ReLU(True)  # noqa: E731 - fresh module per layer
    layers = conv_block(in_channels, ngf, 7, padding=3, padding_mode="reflect", norm=norm,
                        bias_before_norm=True, act=relu())
    for i in range(downsamplings):
        c = ngf * 2**i
        layers += conv_block(c, 2 * c, 3, 2, 1, norm=norm, bias_before_norm=True, act=relu())
    width = ngf * 2**downsamplings
    layers += [ResnetBlock(width, norm, dropout) for _ in range(blocks)]
    if upsample:
        for i in range(downsamplings):
            c = ngf * 2 ** (downsamplings - i)
            layers += conv_block(c, c // 2, 3, 2, 1, norm=norm, bias_before_norm=True, act=relu(), transposed=True)
    return nn.Sequential(*layers)


def rgb_head(channels: int, out_channels: int = 3) -> nn.Sequential:
    """Reflect-pad 7x7 conv to the image channels, then tanh."""
    return nn.Sequential(nn.Conv2d(channels, out_channels, 7, padding=3, padding_mode="reflect"), nn.Tanh())


# ----------------------------------------------------------------------------- discriminator


@dataclass
class PatchGANConfig:
    """Hyperparameters of the multiscale PatchGAN (pix2pixHD / SPADE / DeblurGAN layout)."""

    image_channels: int = 3
    """Channels of the image judged."""
    cond_channels: int = 0
    """Channels of the condition concatenated before the image; 0 = unconditional."""
    ndf: int = 64
    """Width of the first conv, in channels (doubles per layer)."""
    max_channels: int = 512
    """Width cap, in channels."""
    strided: int = 3
    """Stride-2 4x4 convs; one stride-1 4x4 conv and the 4x4 logit conv follow."""
    num_d: int = 1
    """Scales; each next one sees the input avg-pooled (3x3, stride 2)."""
    norm: NormKind = "instance"
    """Normalization of every conv but the first and the logit conv (instance: no affine)."""
    bias_before_norm: bool = True
    """Keep conv biases before an activation norm (pix2pixHD, DeblurGAN) or drop them (SPADE)."""
    init: InitKind = "normal"
    """Weight init: normal N(0, 0.02) (pix2pixHD, DeblurGAN) or xavier gain 0.02 (ASAP-Net)."""

    def __post_init__(self) -> None:
        if self.strided < 1 or self.num_d < 1 or self.ndf < 1:
            raise ValueError(f"strided, num_d and ndf must be >= 1, got {self}")


class PatchGAN(nn.Module):
    """One scale: returns every layer's output, the patch logits last."""

    def __init__(self, cfg: PatchGANConfig):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.2, True)  # noqa: E731
        nf = cfg.ndf
        seq = [nn.Sequential(nn.Conv2d(cfg.image_channels + cfg.cond_channels, nf, 4, 2, 2), lrelu())]
        for n in range(1, cfg.strided + 1):
            prev, nf = nf, min(nf * 2, cfg.max_channels)
            stride = 2 if n < cfg.strided else 1
            seq.append(nn.Sequential(*conv_block(prev, nf, 4, stride, 2, norm=cfg.norm, affine=False,
                                                 bias_before_norm=cfg.bias_before_norm, act=lrelu())))
        seq.append(nn.Sequential(nn.Conv2d(nf, 1, 4, 1, 2)))
        self.layers = nn.ModuleList(seq)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for layer in self.layers:
            x = layer(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """``D(image, cond=None) -> [[features..., logits] per scale]``, full resolution first.

    ``cond`` (the generator input) is concatenated before the image when the discriminator
    is conditional and ignored when it is not, so a training loop may always pass it.
    """

    def __init__(self, cfg: PatchGANConfig):
        super().__init__()
        self.cfg = cfg
        self.scales = nn.ModuleList(PatchGAN(cfg) for _ in range(cfg.num_d))
        init_weights(self, cfg.init, 0.02)

    def forward(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> list[list[torch.Tensor]]:
        if self.cfg.cond_channels:
            if cond is None:
                raise ValueError("this discriminator is conditional: pass the generator input as cond")
            x = torch.cat([cond.to(image.dtype), image], 1)
        else:
            x = image
        results = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            results.append(d(x))
        return results
