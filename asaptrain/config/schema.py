"""The typed config tree: one dataclass per section (its checks: ``config/validate.py``).

Every field has a one-line docstring (the string literal under it) that gives its unit.
Validation happens where a config is loaded or changed (``asaptrain.config.io``: ``load_config``,
``from_dict``, ``replace`` all call ``validate`` of ``config/validate.py``): a bad value is a
:class:`ConfigError` naming the field and what it accepts. The ``[model]`` section is built from the models' own
dataclasses (``config/model.py``); their checks run in validation, on the named model's
dataclass, and come back naming the ``model.`` key, so a config that validates also builds.

    cfg = validate(Config(train=TrainConfig(steps=20)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from asaptrain.config.model import ModelConfig, field_docs  # noqa: F401 - field_docs re-exported
from asaptrain.errors import UserError

Task = Literal["labels2photo", "deblur", "image2image"]
BlurSource = Literal["auto", "synthetic", "stored"]
GanFamily = Literal["hinge", "lsgan", "wgan-gp"]
Perceptual = Literal["none", "vgg19-multi", "vgg19-conv3_3"]
VggInput = Literal["imagenet", "raw"]
Schedule = Literal["none", "fixed", "linear", "cosine", "step", "band"]
Precision = Literal["fp32", "bf16", "fp16"]
UseGpu = Literal["auto", "true", "false"]
MemoryCheck = Literal["refuse", "warn", "off"]
NonFinite = Literal["stop", "skip"]

DEFAULT_STORE = "./asaptrain-store"
"""The embedded store: a directory under the current one."""


class ConfigError(UserError, ValueError):
    """A config value that cannot be used; the message names the field."""


@dataclass
class DataConfig:
    task: Task = "deblur"
    """What the model learns: label map -> photo, blurred photo -> sharp photo, or any RGB image -> RGB image (never blurred)."""
    dataset: str = "datasets/synth-photos"
    """Shard directory: a URI, or a path relative to the store (``storage.store``)."""
    crop_height: int = 256
    """Training crop height in pixels."""
    crop_width: int = 256
    """Training crop width in pixels."""
    load_height: int = 0
    """Resize every image to this height (pixels) before cropping; 0 keeps the stored size."""
    load_width: int = 0
    """Resize every image to this width (pixels) before cropping; 0 keeps the stored size."""
    flip: bool = True
    """Random horizontal flips (probability 0.5)."""
    num_labels: int = 35
    """Label-map classes, one-hot channels (ids 0..N-1; Cityscapes 35); must match the dataset's manifest, 0 = take the manifest's."""
    instance_edges: bool = False
    """Add the instance-boundary channel to the generator's input (pix2pixHD, ASAP-Net)."""
    shuffle_buffer_rows: int = 64
    """Local shuffle buffer per worker, in rows (on top of the per-epoch file shuffle)."""
    prefetch_batches: int = 2
    """Batches each worker prefetches from Ray Data."""
    max_bad_images: int = 10
    """Undecodable images skipped (and named in the log) before the run stops."""
    blur: BlurSource = "auto"
    """Deblurring input: synthetic (the sharp target blurred at the curriculum's strength), stored (the dataset's real blurred photos), auto (stored where the shards hold them)."""
    blur_noise_std: float = 0.0
    """Gaussian noise added after blur, in [0, 1] image units; 0 disables."""
    blur_jpeg_quality: int = 0
    """JPEG-like re-quantization after blur, quality 1..100; 0 disables."""


@dataclass
class LossConfig:
    gan: GanFamily = "wgan-gp"
    """Adversarial loss family."""
    gan_weight: float = 1.0
    """Weight of the generator's adversarial term."""
    gp_weight: float = 10.0
    """WGAN-GP gradient-penalty weight (lambda)."""
    feature_matching_weight: float = 0.0
    """Discriminator feature-matching L1 weight; 0 disables."""
    perceptual: Perceptual = "vgg19-conv3_3"
    """Perceptual loss: none, VGG19 relu1_1..relu5_1 L1, or VGG19 conv3_3 MSE."""
    perceptual_weight: float = 100.0
    """Weight of the perceptual loss."""
    l1_weight: float = 0.0
    """Pixel L1 content-loss weight; 0 disables."""
    vgg_weights: str = ""
    """VGG19 state dict (torchvision format): path, file:// or s3:// URI; empty = ``STORE/weights/vgg19.pth``."""
    vgg_input: VggInput = "imagenet"
    """VGG19's input: imagenet ([-1, 1] -> [0, 1], ImageNet mean/std) or raw ([-1, 1] as is, as the papers' code)."""


@dataclass
class OptimConfig:
    g_lr: float = 1e-4
    """Generator Adam learning rate."""
    d_lr: float = 1e-4
    """Discriminator Adam learning rate (TTUR when it differs from ``g_lr``)."""
    beta1: float = 0.5
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    d_steps: int = 5
    """Discriminator (critic) updates per generator update."""
    decay_start: float = 0.5
    """Fraction of ``train.steps`` at which the linear decay to zero starts (1 = no decay)."""
    ema_decay: float = 0.0
    """Generator EMA decay per step; 0 disables the EMA."""


@dataclass
class CurriculumConfig:
    kind: Schedule = "fixed"
    """Blur-strength schedule over training steps ("none": no synthetic blur, for stored pairs)."""
    start: float = 0.5
    """Blur strength at step 0 (after warm-up), in [0, 1]."""
    end: float = 0.5
    """Blur strength at the end of the ramp, in [0, 1]."""
    warmup_steps: int = 0
    """Steps held at ``start`` before the schedule moves."""
    ramp_steps: int = 0
    """Steps from start to end after warm-up; 0 = the rest of training."""
    stages: int = 4
    """Number of plateaus of the "step" schedule."""


@dataclass
class TrainConfig:
    steps: int = 1000
    """Generator updates to train for."""
    batch_size: int = 16
    """Global batch size, in images, split evenly across workers."""
    seed: int = 0
    """Seed for weights, data order and blur."""
    precision: Precision = "fp32"
    """Compute precision (bf16 = autocast; fp16 = autocast with a loss scale per network, for GPUs without bf16)."""
    channels_last: bool = False
    """Use the channels_last memory format."""
    compile: bool = False
    """torch.compile the generator and discriminator (D stays eager under WGAN-GP: double backward)."""
    log_every: int = 10
    """Steps between metric reports."""
    checkpoint_every: int = 500
    """Steps between checkpoints (also one at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept per run (newest)."""
    sample_every: int = 500
    """Steps between sample grids (written with the evaluation at that step)."""
    max_failures: int = 2
    """Worker-group restarts from the latest checkpoint before the run fails."""
    nonfinite: NonFinite = "stop"
    """On a NaN/inf loss: stop the run naming the step and terms, or skip the step."""
    fp16_max_skips: int = 50
    """fp16: updates of one network its loss scale may skip in a row (overflows) before ``nonfinite`` applies."""
    fp16_growth_interval: int = 2000
    """fp16: clean updates of one network in a row after which its loss scale doubles (GradScaler's growth_interval)."""
    activation_checkpointing: bool = False
    """Recompute G's residual trunks / ASAP-Net's low-res stream in backward (less memory, one more forward of them)."""
    memory_check: MemoryCheck = "refuse"
    """On a GPU, a step estimated above 85 % of its memory: refuse (naming settings that fit), warn, or off."""
    fix_global_steps: int = 0
    """Generator updates at the start with a local-enhancer G's global generator held fixed (pix2pixHD)."""


@dataclass
class EvalConfig:
    every: int = 500
    """Steps between evaluations (also one at the end)."""
    images: int = 16
    """Images in the fixed validation subset."""
    batch_size: int = 4
    """Evaluation batch size per worker, in images."""
    blur_strength: float = 0.5
    """Blur strength of the validation inputs (deblurring), in [0, 1]."""
    fid: bool = True
    """Compute FID (needs Inception weights; reported missing otherwise)."""
    inception_weights: str = ""
    """Inception (pt_inception-2015-12-05) weights: path or URI; empty = ``STORE/weights/``."""


@dataclass
class ScalingConfig:
    num_workers: int = 1
    """Ray Train workers (one per GPU on GPU nodes)."""
    use_gpu: UseGpu = "auto"
    """Train on GPUs: auto uses them where the cluster has any."""
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Ray resources per worker, e.g. {CPU = 4, GPU = 1}; empty = Ray's default."""
    placement_strategy: str = "PACK"
    """Ray placement strategy for the worker group (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)."""


@dataclass
class StorageConfig:
    store: str = DEFAULT_STORE
    """Store URI: a path, file://..., or s3://bucket/prefix."""
    s3_endpoint: str = ""
    """S3-compatible endpoint URL (MinIO, Ceph, R2); empty = AWS."""
    region: str = ""
    """S3 region; empty = AWS_REGION / AWS_DEFAULT_REGION or us-east-1."""
    outage_s: float = 60.0
    """Seconds an S3 request keeps retrying an unreachable endpoint (backoff) before the run fails."""
    claim_stale_s: float = 90.0
    """Seconds without a heartbeat after which a resume may take over a run's claim from a command that died."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


__all__ = [
    "DEFAULT_STORE",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "CurriculumConfig",
    "TrainConfig",
    "EvalConfig",
    "ScalingConfig",
    "StorageConfig",
    "field_docs",
]
