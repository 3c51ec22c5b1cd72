"""Motion blur made on the training device: random camera-shake kernels and their application.

Pure torch (no Ray, no storage), so a notebook can use it directly::

    k = random_kernels(16, strength=0.5, generator=torch.Generator().manual_seed(0), device="cuda")
    blurred = apply_blur(sharp, k)                       # sharp: (16, 3, H, W) floats
    blurred = Degrade(noise_std=0.01, jpeg_quality=80)(blurred.clamp(0, 1))

Kernels follow Boracchi and Foi's random trajectories, as DeblurGAN generates them
(KupynOrest/DeblurGAN ``motion_blur/``): a particle with constant speed whose direction is
pushed by gaussian shake, pulled back toward its start (centripetal term) and, rarely,
reversed by a big shake; the point-spread function (PSF) is the path it draws during the
exposure, splatted bilinearly onto a pixel grid. The per-kernel random draws keep the
reference's distributions (centripetal 0.7·U, big-shake probability 0.2·U, gaussian shake
10·U, initial angle 360°·U, anxiety from its list, a 60-pixel trajectory).

One scalar ``strength`` in [0, 1] sets both the trajectory's scale and the exposure
fraction: the PSF is the first ``strength`` of a trajectory scaled by ``strength``, so its
path is ``60 · strength²`` pixels long. 0 is an exact delta (no blur); the kernels' RMS
spread (``kernel_spread``) averages 0.8 px at 0.2, 2.3 px at 0.5, 4.4 px at 0.9 and 5.6 px
at 1 (the reference's full exposure: paths curl, so 60 px of path spread ~6 px RMS), close to
linear in strength. This replaces the
reference's random choice among exposure fractions 1/100, 1/10, 1/2, 1 with a continuous
knob a curriculum can turn.

Differences from the reference, on purpose:

* Kernels sum to 1. The reference min-max normalizes the PSF and then the blurred image,
  which rescales every image's intensities by a kernel-dependent factor: the blurred input
  and the sharp target then differ in brightness and contrast, and the generator has to
  learn a global intensity change that real camera shake never makes. A sum-1 kernel
  conserves light, so blurred and sharp images have the same mean.
* The kernel is centred on its centre of mass (the reference centres the path's bounding
  box), so the blurred image is not shifted against the target: pixel losses and PSNR see
  blur, not a translation.
* The 2000-step random walk is simulated in ``STEPS`` batched steps with noise, pull and
  big-shake rates rescaled to the same continuous-time process, then resampled along time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_ITERS = 2000
"""Random-walk steps of the reference trajectory."""
MAX_LENGTH_PX = 60.0
"""Trajectory length at strength 1, in pixels (the reference's ``max_len``)."""
ANXIETY = (0.01, 0.009, 0.008, 0.007, 0.005, 0.003)
"""The reference's anxiety values ("expl"), one drawn per kernel."""
STEPS = 128
"""Batched simulation steps of one trajectory, each standing for 2000/128 reference steps; the
paths' RMS spread matches a direct 2000-step simulation within 3% (64 steps: within 10%)."""
POINTS = 256
"""Samples splatted per PSF: at most 60/256 = 0.23 pixels apart, so paths draw as lines."""
FFT_MIN_KERNEL = 17
"""Kernels this wide (pixels) or wider go through the FFT instead of a direct convolution (on one
CPU thread both cost ~3.5 ms per 3×256×256 image at 17 px; at 41 px the FFT is 7× faster)."""


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


def _trajectories(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` random camera paths at reference scale (60 px), shape (n, STEPS + 1, 2), in pixels."""
    ratio = REFERENCE_ITERS / STEPS
    centripetal = 0.7 * _rand(n, generator, device)
    big_shake_p = 0.2 * _rand(n, generator, device)
    shake = 10.0 * _rand(n, generator, device)
    angle = 2 * math.pi * _rand(n, generator, device)
    choice = (_rand(n, generator, device) * len(ANXIETY)).long().clamp_max(len(ANXIETY) - 1)
    anxiety = torch.tensor(ANXIETY, device=device)[choice]
    noise = torch.randn(STEPS, n, 2, generator=generator, device=device)
    jump_u = _rand((STEPS, n), generator, device)
    jump_angle = math.pi + _rand((STEPS, n), generator, device) - 0.5

    # One simulated step stands for `ratio` reference steps: the gaussian direction noise is a
    # diffusion (scales with sqrt(ratio)), the centripetal pull and the big-shake rate are
    # drifts (scale with ratio). Distances are in reference pixels, as the pull depends on them.
    # Positions and velocities are complex numbers; everything random is drawn above, and the
    # big shake (v += 2·v·e^{i·angle}, a near-reversal) is folded into a per-step factor, so
    # the sequential loop is a handful of batched ops per step.
    kick = torch.view_as_complex(noise * (anxiety * shake * math.sqrt(ratio))[:, None])
    jump = jump_u < (big_shake_p * anxiety * ratio).clamp(max=1.0)
    factor = torch.where(jump, 1 + torch.polar(torch.full_like(jump_angle, 2.0), jump_angle),
                         torch.ones((), dtype=torch.complex64, device=device))
    pull = (anxiety * centripetal * ratio).to(torch.complex64)
    v = torch.polar(torch.ones_like(angle), angle)
    x = torch.zeros(n, dtype=torch.complex64, device=device)
    path = torch.zeros(STEPS + 1, n, dtype=torch.complex64, device=device)
    step = MAX_LENGTH_PX / STEPS
    for t in range(STEPS):
        v = torch.addcmul(kick[t], v, factor[t]) - pull * x
        v = torch.sgn(v)  # unit speed: v / |v|
        x = x + step * v
        path[t + 1] = x
    return torch.view_as_real(path.T.contiguous())


def _exposure_points(path: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """POINTS positions evenly spaced in time over the first ``strength`` of each path, scaled
    by ``strength``: (n, POINTS, 2) pixels."""
    n, steps1, _ = path.shape
    u = torch.linspace(0, 1, POINTS, device=path.device)
    tau = strength[:, None] * (steps1 - 1) * u[None, :]  # (n, POINTS) fractional step index
    i0 = tau.floor().long().clamp(max=steps1 - 2)
    frac = (tau - i0)[..., None]
    p0 = torch.gather(path, 1, i0[..., None].expand(-1, -1, 2))
    p1 = torch.gather(path, 1, (i0 + 1)[..., None].expand(-1, -1, 2))
    return (p0 + frac * (p1 - p0)) * strength[:, None, None]


def _splat(points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splat of (n, P, 2) points (pixels, kernel coordinates) into (n, size, size),
    each point carrying 1/P of the mass."""
    n, p, _ = points.shape
    pts = points.clamp(0, size - 1)  # a path beyond a fixed size is truncated at the border
    base = pts.floor()
    frac = pts - base
    base = base.long()
    out = torch.zeros(n * size * size, device=points.device, dtype=points.dtype)
    offset = (torch.arange(n, device=points.device) * size * size)[:, None]
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        wx = frac[..., 0] if dx else 1 - frac[..., 0]
        wy = frac[..., 1] if dy else 1 - frac[..., 1]
        xi = (base[..., 0] + dx).clamp(max=size - 1)
        yi = (base[..., 1] + dy).clamp(max=size - 1)
        out.scatter_add_(0, (offset + yi * size + xi).reshape(-1), (wx * wy).reshape(-1) / p)
    return out.view(n, size, size)


def random_kernels(
    n: int,
    strength: float | torch.Tensor,
    size: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` random motion-blur kernels, (n, k, k) float32 on ``device``, each summing to 1.

    ``strength`` is a float or an (n,) tensor in [0, 1] (see the module docstring). ``size``
    (odd, pixels) fixes k; paths that do not fit are truncated at the kernel's border. With
    ``size=None`` k is the smallest odd size that holds every path of this batch (3 at
    strength 0, 57 for a batch of 64 at 1). Random draws happen on ``generator``'s device (CPU when
    given a CPU generator, so a seed gives the same kernels on every device); the result is
    moved to ``device``.
    """
    if size is not None and (size < 1 or size % 2 == 0):
        raise ValueError(f"kernel size must be odd and >= 1 pixels, got {size}")
    out_device = torch.device(device) if device is not None else (generator.device if generator else torch.device("cpu"))
    work = generator.device if generator is not None else out_device
    s = torch.as_tensor(strength, dtype=torch.float32, device=work).flatten()
    s = s.expand(n) if s.numel() == 1 else s
    if s.numel() != n:
        raise ValueError(f"strength must be a scalar or have {n} values, got {s.numel()}")
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(f"blur strength must be in [0, 1], got {s.min().item()}..{s.max().item()}")
    points = _exposure_points(_trajectories(n, generator, work), s)
    points = points - points.mean(dim=1, keepdim=True)  # centre of mass at the kernel centre
    if size is None:
        reach = float(points.abs().amax()) if n else 0.0
        size = 2 * math.ceil(reach) + 3
    kernels = _splat(points + (size - 1) / 2, size)
    kernels = kernels / kernels.sum(dim=(1, 2), keepdim=True)  # exact 1 despite fp rounding
    return kernels.to(out_device)


def kernel_spread(kernels: torch.Tensor) -> torch.Tensor:
    """Root of each kernel's second central moment, in pixels: (n,). 0 for a delta."""
    n, k, _ = kernels.shape
    coords = torch.arange(k, dtype=kernels.dtype, device=kernels.device)
    w = kernels / kernels.sum(dim=(1, 2), keepdim=True)
    my = (w.sum(2) * coords).sum(1, keepdim=True)
    mx = (w.sum(1) * coords).sum(1, keepdim=True)
    vy = (w.sum(2) * (coords - my) ** 2).sum(1)
    vx = (w.sum(1) * (coords - mx) ** 2).sum(1)
    return (vx + vy).sqrt()


def _smooth(size: int) -> int:
    """The smallest 2^a·3^b·5^c >= size."""
    best = 1 << (size - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p235 = p35
            while p235 < size:
                p235 *= 2
            best = min(best, p235)
            p35 *= 3
        p5 *= 5
    return best


def _pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding (no dark frame at the borders); replicate where the image is too small."""
    if not (left or right or top or bottom):
        return x
    mode = "reflect" if max(left, right) < x.shape[-1] and max(top, bottom) < x.shape[-2] else "replicate"
    return F.pad(x, (left, right, top, bottom), mode=mode)


def apply_blur(images: torch.Tensor, kernels: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Blur each image of (N, C, H, W) with its own kernel of (N, k, k) (or one (k, k) for all).

    A true convolution (kernel flipped) with reflect padding, so borders get no dark frame;
    computed in float32 and returned in ``images``' dtype. ``method``: "conv" (grouped
    convolution), "fft", or "auto" (FFT from ``FFT_MIN_KERNEL`` pixels up, where a direct
    convolution's k² cost per pixel loses).
    """
    n, c, h, w = images.shape
    if kernels.dim() == 2:
        kernels = kernels.expand(n, -1, -1)
    k = kernels.shape[-1]
    if kernels.shape != (n, k, k) or k % 2 == 0:
        raise ValueError(f"kernels must be (N={n}, k, k) with odd k, got {tuple(kernels.shape)}")
    if method == "auto":
        method = "fft" if k >= FFT_MIN_KERNEL else "conv"
    p = k // 2
    x = images.float()
    kern = kernels.to(device=images.device, dtype=torch.float32)
    if method == "conv":
        x = _pad(x, p, p, p, p)
        weight = kern.flip(-1, -2).repeat_interleave(c, dim=0)[:, None]
        out = F.conv2d(x.reshape(1, n * c, h + 2 * p, w + 2 * p), weight, groups=n * c).view(n, c, h, w)
    elif method == "fft":
        # Pad to FFT-friendly (5-smooth) sizes: a prime factor such as 17 makes the FFT several
        # times slower. Circular wrap-around only touches the padding, which is cropped away.
        hp, wp = _smooth(h + 2 * p), _smooth(w + 2 * p)
        x = _pad(x, p, wp - w - p, p, hp - h - p)
        padded = torch.zeros(n, hp, wp, device=x.device)
        padded[:, :k, :k] = kern
        padded = torch.roll(padded, shifts=(-p, -p), dims=(1, 2))  # kernel centre at the origin
        spec = torch.fft.rfft2(x) * torch.fft.rfft2(padded)[:, None]
        out = torch.fft.irfft2(spec, s=(hp, wp))[..., p : p + h, p : p + w]
    else:
        raise ValueError(f"method must be 'auto', 'conv' or 'fft', got {method!r}")
    return out.to(images.dtype)


# --------------------------------------------------------------------------- degradation

# JPEG's example quantization tables (ITU T.81 Annex K), luminance and chrominance.
_LUMA_Q = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA_Q = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


def _dct_matrix(device) -> torch.Tensor:
    i = torch.arange(8, dtype=torch.float32, device=device)
    d = torch.cos((2 * i[None, :] + 1) * i[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d  # orthonormal DCT-II: coefficients = D @ block @ D.T


def jpeg_like(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG's lossy step on (N, 3, H, W) images in [0, 1], in torch on their device.

    8-bit rounding, YCbCr, 8×8 DCT, quantization with the standard tables scaled by
    ``quality`` (1..100, the IJG formula), and back. No chroma subsampling and no entropy
    coding (lossless): it reproduces JPEG's blocking and ringing, not its exact bytes.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    n, c, h, w = images.shape
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor([_LUMA_Q, _CHROMA_Q, _CHROMA_Q], dtype=torch.float32, device=images.device)
    q = ((base * scale + 50) / 100).floor().clamp(1, 255).view(1, 3, 1, 1, 8, 8)
    rgb = (images.float().clamp(0, 1) * 255).round()
    r, g, b = rgb.unbind(1)
    ycc = torch.stack([0.299 * r + 0.587 * g + 0.114 * b,
                       -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
                       0.5 * r - 0.418688 * g - 0.081312 * b + 128], dim=1) - 128
    ph, pw = (-h) % 8, (-w) % 8
    ycc = F.pad(ycc, (0, pw, 0, ph), mode="replicate") if ph or pw else ycc
    hb, wb = ycc.shape[2] // 8, ycc.shape[3] // 8
    blocks = ycc.view(n, 3, hb, 8, wb, 8).permute(0, 1, 2, 4, 3, 5)
    d = _dct_matrix(images.device)
    coef = d @ blocks @ d.T
    blocks = d.T @ ((coef / q).round() * q) @ d
    ycc = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, 3, hb * 8, wb * 8)[..., :h, :w] + 128
    y, cb, cr = ycc[:, 0], ycc[:, 1] - 128, ycc[:, 2] - 128
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], dim=1)
    return (out.round().clamp(0, 255) / 255).to(images.dtype)


@dataclass(frozen=True)
class Degrade:
    """Sensor noise and compression after blur; both off by default (``DataConfig.blur_*``).

    Call on (N, 3, H, W) images in [0, 1]; returns images in [0, 1].
    """

    noise_std: float = 0.0
    """Gaussian noise standard deviation, in [0, 1] image units; 0 disables."""
    jpeg_quality: int = 0
    """JPEG-like quantization quality 1..100; 0 disables."""

    @property
    def enabled(self) -> bool:
        return self.noise_std > 0 or self.jpeg_quality > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = images
        if self.noise_std > 0:
            where = generator.device if generator is not None else images.device
            noise = torch.randn(images.shape, generator=generator, device=where).to(images.device)
            out = (out + self.noise_std * noise).clamp(0, 1)
        if self.jpeg_quality > 0:
            out = jpeg_like(out, self.jpeg_quality)
        return out


def blur_and_degrade(sharp: torch.Tensor, strength: float | torch.Tensor, generator: torch.Generator | None = None,
                     degrade: Degrade = Degrade()) -> torch.Tensor:
    """The training inputs' recipe: (N, 3, H, W) sharp images in [0, 1] blurred with fresh kernels
    at ``strength``, then ``degrade`` (noise, JPEG) when enabled; in [0, 1]."""
    kernels = random_kernels(sharp.shape[0], strength, generator=generator, device=sharp.device)
    blurred = apply_blur(sharp, kernels).clamp_(0, 1)
    return degrade(blurred, generator) if degrade.enabled else blurred


def sharp_test_image(height: int = 256, width: int = 256, seed: int = 0) -> torch.Tensor:
    """A sharp synthetic photo-like image, (3, height, width) in [0, 1]: edges at every angle,
    fine stripes, dots and flat patches, for previews and tests of blur."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    img = 0.25 + 0.5 * ((xx // 32 + yy // 32) % 2)[None].repeat(3, 1, 1)
    img[:, : height // 4] = 0.5 + 0.45 * torch.sign(torch.sin(xx[: height // 4] / 3))[None]
    cy, cx = height * 0.6, width * 0.65
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    ring = (torch.cos(r / 2.5) > 0).float()
    disc = r < min(height, width) * 0.3
    img = torch.where(disc[None], torch.stack([ring * 0.9, ring * 0.3 + 0.2, 0.8 - ring * 0.6]), img)
    dots = torch.rand(-(-height // 8), -(-width // 8), generator=g) > 0.85
    dots = dots.repeat_interleave(8, 0).repeat_interleave(8, 1)[:height, :width] & ((xx % 8 < 3) & (yy % 8 < 3))
    return torch.where(dots[None], torch.tensor([1.0, 0.9, 0.1])[:, None, None], img).clamp(0, 1)


__all__ = ["random_kernels", "apply_blur", "blur_and_degrade", "kernel_spread", "Degrade", "jpeg_like", "sharp_test_image",
           "MAX_LENGTH_PX"]
