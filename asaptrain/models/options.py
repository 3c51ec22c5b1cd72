"""Each generator's hyperparameters: one dataclass per model, its fields, defaults and checks.

The single declaration of every generator option. A model takes its dataclass in a notebook
(``ASAPNetGenerator(ASAPNetConfig(in_channels=3))``); the run config's flat ``[model]`` table
is generated from these fields (``asaptrain.config.model``), so an option added here is a
config key, with this default and this docstring, and its check below is the one that runs
when a config is validated. Plain Python: importing this module loads no torch.

    cfg = ASAPNetConfig(in_channels=36, mlp_input="all_but_last")
    ASAPNetConfig(tile_size=12)   # OptionError: tile_size must be a power of two >= 2, got 12
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

NormKind = Literal["none", "instance", "group", "spectral", "spectral_instance"]
PaddingKind = Literal["zero", "reflect", "replicate"]
MlpLayout = Literal["auto", "rows", "planes"]
MlpInput = Literal["all", "all_but_last"]
AsapInit = Literal["xavier", "normal", "hyper"]

NORMS: tuple[str, ...] = ("none", "instance", "group", "spectral", "spectral_instance")
PADDINGS: tuple[str, ...] = ("zero", "reflect", "replicate")
LAYOUTS: tuple[str, ...] = ("auto", "rows", "planes")
"""The unfused pixelwise paths: auto picks by device (``pixel_mlp.mlp_layout``)."""
INITS: tuple[str, ...] = ("xavier", "normal", "hyper")


class OptionError(ValueError):
    """A hyperparameter value a model cannot be built with; ``field`` names the option."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _check(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise OptionError(field, message)


def _at_least(obj: object, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(value >= minimum, name, f"{name} must be >= {minimum}, got {value}")


def _one_of(obj: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    _check(value in allowed, name, f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class ASAPNetConfig:
    """Hyperparameters of the ASAP-Net generator (defaults: the Cityscapes model)."""

    in_channels: int = 36
    """Input channels: one-hot labels (+ instance edges last), or RGB."""
    out_channels: int = 3
    """Output image channels."""
    tile_size: int = 16
    """S, in pixels: each MLP covers an S x S tile; the low-res grid is (H / S, W / S)."""
    lowres_downsample: int = 16
    """Learned downsampling factor of the low-res stream (log2 of it stride-2 convs); S / this is a fixed shrink."""
    lowres_width: int = 64
    """Width of the low-res stream's first convs (before the last strided one), in channels."""
    lowres_max_channels: int = 1024
    """Width of the low-res stream's last strided conv and its blocks, in channels."""
    lowres_blocks: int = 7
    """conv3x3-norm-ReLU blocks at grid resolution."""
    lowres_norm: NormKind = "instance"
    """Low-res normalization (instance = affine instance norm, ASAP-Net's; it can cause the droplet spot)."""
    padding: PaddingKind = "zero"
    """Padding of the low-res convs."""
    mlp_depth: int = 5
    """Linear layers per pixelwise MLP."""
    mlp_width: int = 64
    """Hidden width of the pixelwise MLPs, in channels."""
    mlp_input: MlpInput = "all"
    """Input channels the MLPs see: all, or all_but_last (the last one, instance edges, reaches the low-res stream only)."""
    residual: bool = False
    """Global residual output: clamp(input + MLP output, -1, 1) (needs in_channels == out_channels)."""
    mlp_context: int = 1
    """k (odd): each MLP sees the k x k input patch around its pixel (1 = the pixel only, ASAP-Net)."""
    tile_blend: bool = False
    """Mix neighbouring cells' MLPs near tile edges (see ``blend_band``): no seams at tile edges."""
    blend_band: int = 0
    """With tile_blend: pixels each side of a tile edge where two cells' MLPs mix; 0 = tile_size / 2 (bilinear, 4x the MLP work; tile_size / 4: 2.25x)."""
    mlp_layout: MlpLayout = "auto"
    """Unfused pixelwise path, the same function: auto (planes on CPU, rows on CUDA), rows or planes (``pixel_mlp``)."""
    init: AsapInit = "xavier"
    """Weight init: xavier gain 0.02 (ASAP-Net), normal N(0, 0.02) (the published hybrid), or hyper (variance-preserving)."""
    last_layer_scale: float = 0.01
    """hyper init: scale of the predicted last MLP layer (small: output ~ input at init)."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "in_channels", "out_channels", "lowres_width", "lowres_max_channels", "mlp_depth",
                  "mlp_width")
        _at_least(self, 0, "lowres_blocks")
        for name in ("tile_size", "lowres_downsample"):
            v = getattr(self, name)
            _check(v >= 2 and v & (v - 1) == 0, name, f"{name} must be a power of two >= 2, got {v}")
        _check(self.tile_size % self.lowres_downsample == 0, "tile_size",
               f"tile_size={self.tile_size} must be a multiple of lowres_downsample={self.lowres_downsample}")
        _one_of(self, "lowres_norm", NORMS)
        _one_of(self, "padding", PADDINGS)
        _one_of(self, "mlp_input", ("all", "all_but_last"))
        _one_of(self, "mlp_layout", LAYOUTS)
        _one_of(self, "init", INITS)
        _check(not self.residual or self.in_channels == self.out_channels, "residual",
               f"residual output needs in_channels == out_channels (an image input), got {self.in_channels} "
               f"and {self.out_channels}")
        _check(self.mlp_context >= 1 and self.mlp_context % 2 == 1, "mlp_context",
               f"mlp_context must be an odd number >= 1, got {self.mlp_context}")
        _check(0 <= self.blend_band <= self.tile_size // 2, "blend_band",
               f"blend_band must be in 0..tile_size / 2 = {self.tile_size // 2}, got {self.blend_band}")


@dataclass
class Pix2PixHDConfig:
    """pix2pixHD generator hyperparameters (defaults: the 512x1024 global generator)."""

    in_channels: int = 36
    """Input channels: one-hot labels + the instance-edge channel."""
    out_channels: int = 3
    """Output image channels."""
    ngf: int = 64
    """Finest width, in channels: the global net's, or with enhancers the outermost enhancer's (doubles per downsampling)."""
    downsamplings: int = 4
    """Stride-2 convs of the generator's encoder (pix2pixHD global: 4, DeblurGAN: 2)."""
    residual_blocks: int = 9
    """ResNet blocks at the generator's bottleneck."""
    local_enhancers: int = 0
    """Local enhancers, each doubling the resolution (1 for 1024x2048)."""
    local_residual_blocks: int = 3
    """ResNet blocks per local enhancer."""
    norm: NormKind = "instance"
    """Generator normalization (instance norm without affine, as pix2pixHD and DeblurGAN)."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "in_channels", "out_channels", "ngf", "downsamplings", "residual_blocks")
        _at_least(self, 0, "local_enhancers", "local_residual_blocks")
        _one_of(self, "norm", NORMS)


@dataclass
class DeblurGANConfig:
    """DeblurGAN generator hyperparameters (defaults: the GoPro model)."""

    channels: int = 3
    """Image channels in and out."""
    ngf: int = 64
    """Width of the first conv, in channels (doubles per downsampling)."""
    downsamplings: int = 2
    """Stride-2 convs of the generator's encoder (pix2pixHD global: 4, DeblurGAN: 2)."""
    residual_blocks: int = 9
    """ResNet blocks (two 3x3 convs each) at the generator's bottleneck."""
    dropout: float = 0.5
    """Dropout probability between the two convs of each ResNet block; 0 disables."""
    norm: NormKind = "instance"
    """Generator normalization (instance norm without affine, as pix2pixHD and DeblurGAN)."""
    residual: bool = True
    """Global residual output: clamp(input + G(input), -1, 1) (DeblurGAN's learn_residual)."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "channels", "ngf", "downsamplings", "residual_blocks")
        _check(0 <= self.dropout < 1, "dropout", f"dropout must be in [0, 1), got {self.dropout}")
        _one_of(self, "norm", NORMS)


@dataclass
class DiscriminatorConfig:
    """A discriminator's hyperparameters (defaults: pix2pixHD's PatchGAN at one scale).

    The field names are the ``[model]`` keys. Each model's own defaults are its subclass below
    (:data:`DISCRIMINATORS`): the one place they are written."""

    ndf: int = 64
    """Discriminator base width, in channels."""
    num_d: int = 1
    """Discriminator scales (1 = single PatchGAN)."""
    d_layers: int = 3
    """Layers per discriminator scale (pix2pixHD/DeblurGAN: stride-2 convs; ASAP-Net/hybrid: SPADE counting, one more)."""
    d_norm: NormKind = "instance"
    """Discriminator normalization."""
    d_conditional: bool = True
    """The discriminator sees the generator's input beside the image (pix2pix-style)."""

    min_layers: ClassVar[int] = 1
    """The fewest d_layers the discriminator's counting allows."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "ndf", "num_d")
        _check(self.d_layers >= self.min_layers, "d_layers",
               f"d_layers must be >= {self.min_layers}{self._counting()}, got {self.d_layers}")
        _one_of(self, "d_norm", NORMS)

    def _counting(self) -> str:
        return ""


@dataclass
class ASAPNetDiscriminatorConfig(DiscriminatorConfig):
    """ASAP-Net's (SPADE's) multiscale discriminator: two scales, spectral + instance norm."""

    num_d: int = 2
    d_layers: int = 4
    d_norm: NormKind = "spectral_instance"
    min_layers: ClassVar[int] = 2

    def _counting(self) -> str:
        return " (SPADE counting: the last conv is stride 1)"


@dataclass
class Pix2PixHDDiscriminatorConfig(DiscriminatorConfig):
    """pix2pixHD's multiscale discriminator at 512x1024: two scales."""

    num_d: int = 2


@dataclass
class DeblurGANDiscriminatorConfig(DiscriminatorConfig):
    """DeblurGAN's critic: one scale, unconditional (it sees the image only)."""

    d_conditional: bool = False


DISCRIMINATORS: dict[str, type[DiscriminatorConfig]] = {
    "deblurgan": DeblurGANDiscriminatorConfig, "asapnet": ASAPNetDiscriminatorConfig,
    "hybrid": ASAPNetDiscriminatorConfig, "pix2pixhd": Pix2PixHDDiscriminatorConfig,
}
"""Each model's discriminator options (the hybrid trains ASAP-Net's discriminator)."""


__all__ = [
    "ASAPNetConfig", "Pix2PixHDConfig", "DeblurGANConfig", "OptionError", "DiscriminatorConfig", "DISCRIMINATORS",
    "ASAPNetDiscriminatorConfig", "Pix2PixHDDiscriminatorConfig", "DeblurGANDiscriminatorConfig",
    "NormKind", "PaddingKind", "MlpLayout", "MlpInput", "AsapInit", "NORMS", "PADDINGS", "LAYOUTS", "INITS",
]
