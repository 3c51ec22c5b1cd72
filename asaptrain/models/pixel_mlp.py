"""ASAP-Net's pixelwise MLPs: one MLP per S x S tile, weights predicted per grid cell.

    mlp = PixelMLP(in_channels=35, out_channels=3, width=64, depth=5, tile_size=16)
    y = mlp(x, params)      # x (B, 35, H, W); params (B, H/16, W/16, mlp.num_params)

Every pixel of a tile uses its cell's MLP (nearest, no interpolation) on its input channels
and the sin/cos coordinates of its place in the tile; with ``blend`` each pixel instead mixes
the outputs of the MLPs of its 4 nearest cells, bilinearly in its position (see
``PixelMLP.forward_blended``), so the output has no seam at tile edges. Two implementations,
same maths, and neither materializes per-pixel weights nor loops in Python over cells or pixels:

* ``mlp_bmm`` (training, CPU): pixels gathered once into (B * cells, S*S, Cin); each layer is
  one ``torch.baddbmm`` against the cells' weights. On CUDA, channel counts are padded to
  multiples of 8 (zero rows / columns) so 16-bit GEMMs stay tensor-core aligned. Memory:
  pixels x width.
* the fused Triton kernel (``triton_mlp.py``; CUDA, no gradient needed): each block of a
  tile's pixels stays in registers through all layers; only the input is read and the RGB
  written. Registered as ``torch.ops.asaptrain.pixel_mlp`` so torch.compile sees one opaque
  op. It checks itself once per device / dtype / shape against ``mlp_bmm`` and falls back to
  it (with a warning) if Triton cannot compile it or it disagrees.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_FUSED_WIDTH = 128
"""Widest (padded) hidden layer the fused kernel takes; wider MLPs would spill registers."""


def tile_coordinates(tile_size: int) -> torch.Tensor:
    """(S, S, 4 log2 S): for periods f = S, S/2, ..., 2: cos x, sin x, cos y, sin y of 2 pi (p mod f) / f.

    Row index is y, column index x, both the offset inside the tile (p mod f = offset mod f,
    since f divides S), so this is ASAP-Net's full-image encoding restricted to one tile.
    """
    u = torch.arange(tile_size, dtype=torch.float64)
    chans = []
    f = tile_size
    while f > 1:
        ang = 2 * math.pi * torch.remainder(u, f) / f
        c, s = torch.cos(ang), torch.sin(ang)
        shape = (tile_size, tile_size)
        row, col = c[None, :].expand(shape), s[None, :].expand(shape)  # along x
        chans += [row, col, c[:, None].expand(shape), s[:, None].expand(shape)]
        f //= 2
    return torch.stack(chans, -1).float()


def _ceil8(n: int) -> int:
    return (n + 7) // 8 * 8


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def layer_params(params: torch.Tensor, dims: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """params (..., P) -> per layer (weight (..., cin, cout), bias (..., 1, cout)), as views."""
    splits = [n for cin, cout in zip(dims, dims[1:]) for n in (cin * cout, cout)]
    parts = torch.split(params, splits, dim=-1)  # one cat in backward, not one scatter per slice
    return [(parts[2 * i].unflatten(-1, (cin, cout)), parts[2 * i + 1].unsqueeze(-2))
            for i, (cin, cout) in enumerate(zip(dims, dims[1:]))]


def mlp_bmm(x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
            dtype: torch.dtype, pad: bool | None = None) -> torch.Tensor:
    """Batched-matmul MLPs: x (B, C, H, W); params (B*cells, P); coords (S, S, K) -> (B, out, H, W).

    ``pad``: pad channel counts to multiples of 8 (default: on CUDA, where it keeps 16-bit
    GEMMs tensor-core aligned; elsewhere, e.g. meta for FLOP counts, nominal sizes).
    """
    B, C, H, W = x.shape
    S = tile_size
    hc, wc = H // S, W // S
    n, k = B * hc * wc, coords.shape[-1]
    padded = [_ceil8(d) for d in dims] if (x.is_cuda if pad is None else pad) else list(dims)
    # One gather that also casts: (B, C, hc, S, wc, S) -> (B, hc, wc, S, S, C), coordinates after.
    h = x.new_empty((B, hc, wc, S, S, padded[0]), dtype=dtype)
    h[..., :C].copy_(x.reshape(B, C, hc, S, wc, S).permute(0, 2, 4, 3, 5, 1))
    h[..., C:C + k].copy_(coords.reshape(S, S, k))
    h[..., C + k:].zero_()
    h = h.view(n, S * S, padded[0])
    layers = layer_params(params, dims)
    for i, (w, b) in enumerate(layers):
        (cin, cout), (pin, pout) = w.shape[-2:], padded[i:i + 2]
        w = F.pad(w, (0, pout - cout, 0, pin - cin)) if (pin, pout) != (cin, cout) else w.contiguous()
        b = F.pad(b, (0, pout - cout)) if pout != cout else b
        h = torch.baddbmm(b.to(dtype), h, w.to(dtype))
        h = F.leaky_relu(h, 0.01, inplace=True) if i < len(layers) - 1 else torch.tanh(h)
    out = dims[-1]
    h = h[..., :out].reshape(B, hc, wc, S, S, out)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return h.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, out).permute(0, 3, 1, 2)
    return h.permute(0, 5, 1, 3, 2, 4).reshape(B, out, H, W)


# ----------------------------------------------------------------------------- fused kernel


def fused_supported(dims: list[int]) -> bool:
    """The kernel takes >= 2 layers with one hidden width up to MAX_FUSED_WIDTH."""
    return (len(dims) >= 3 and len(set(dims[1:-1])) == 1 and _pow2(dims[1]) <= MAX_FUSED_WIDTH
            and _pow2(dims[0]) <= 256 and _pow2(dims[-1]) <= 64)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def build_kernel(fresh: bool = False):
    """The Triton kernel; ``fresh`` loads a new copy of its module (honours TRITON_INTERPRET now)."""
    if not fresh:
        from asaptrain.models import triton_mlp

        return triton_mlp.pixel_mlp_kernel
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("triton_mlp.py")
    spec = importlib.util.spec_from_file_location("asaptrain_triton_mlp_fresh", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pixel_mlp_kernel


def launch_fused(x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
                 kernel=None) -> torch.Tensor:
    """Run the kernel: x (B, C, H, W) any strides; params (B*cells, P) in the compute dtype;
    coords (S*S, K). Returns (B, out, H, W) contiguous in params' dtype."""
    B, C, H, W = x.shape
    S = tile_size
    hc, wc = H // S, W // S
    if params.shape[-1] % 16:  # 16-aligned rows: the kernel's weight loads can vectorize
        params = F.pad(params, (0, 16 - params.shape[-1] % 16))
    params = params.contiguous()
    coords = coords.reshape(S * S, -1).float().contiguous()
    precision = "tf32" if x.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"  # fp32 only
    y = torch.empty((B, dims[-1], H, W), device=x.device, dtype=params.dtype)
    block = min(128, S * S)
    nblk = (S * S + block - 1) // block
    grid = (B * hc * wc * nblk,)
    (kernel or build_kernel())[grid](
        x, params, coords, y, C, coords.shape[-1], hc, wc, params.shape[-1], *x.stride(), *y.stride(),
        S=S, WIDTH=dims[1], OUT=dims[-1], HIDDEN=len(dims) - 3, CIN_PAD=_pow2(dims[0]), W_PAD=_pow2(dims[1]),
        OUT_PAD=_pow2(dims[-1]), BLOCK=block, NBLK=nblk, PRECISION=precision, num_warps=4,
    )
    return y


_HEALTH: dict[tuple, tuple[bool, str]] = {}
"""(device, dtype, dims, tile) -> (kernel usable, why not): the health checks done so far."""


def _health_key(device: torch.device, dtype: torch.dtype, dims: list[int], tile_size: int) -> tuple:
    return (str(device), dtype, tuple(dims), tile_size)


def _fused_healthy(device: torch.device, dtype: torch.dtype, dims: list[int], tile_size: int) -> bool:
    """Once per device / dtype / shape: does the compiled kernel agree with ``mlp_bmm``?

    Runs outside the caller's autocast: both sides compute in ``dtype`` as asked, so a bf16
    matmul is never compared with an fp32 kernel (which would fail and fall back for nothing).
    """
    key = _health_key(device, dtype, dims, tile_size)
    if key not in _HEALTH:
        with torch.autocast(device.type, enabled=False):
            _HEALTH[key] = _check_fused(device, dtype, dims, tile_size)
    return _HEALTH[key][0]


def _check_fused(device: torch.device, dtype: torch.dtype, dims: list[int], tile_size: int) -> tuple[bool, str]:
    """The health check itself: (usable, why not), with a warning when not."""
    S, C = tile_size, dims[0] - 4 * int(math.log2(tile_size))
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(1, C, S, 2 * S, device=device, generator=gen) * 2 - 1
    params = torch.randn(2, sum(a * b + b for a, b in zip(dims, dims[1:])), device=device, generator=gen)
    params = (params / math.sqrt(dims[1])).to(dtype)
    coords = tile_coordinates(S).to(device)
    try:
        got = launch_fused(x, params, coords, dims, S).float()
        want = mlp_bmm(x, params, coords, dims, S, dtype).float()
        exact = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
        tol = 1e-3 if exact else 5e-2
        ok = bool(torch.isfinite(got).all()) and float((got - want).abs().max()) < tol
        reason = "" if ok else f"max difference {float((got - want).abs().max()):.3g}"
    except Exception as exc:  # noqa: BLE001 - any compile/launch failure means: use the fallback
        ok, reason = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not ok:
        warnings.warn(f"fused pixel-MLP kernel unusable on {device} ({dtype}, {reason}); "
                      f"using batched matmuls instead", RuntimeWarning, stacklevel=4)
    return ok, reason


@torch.library.custom_op("asaptrain::pixel_mlp", mutates_args=())
def pixel_mlp_op(
    x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
) -> torch.Tensor:
    """Fused pixelwise MLPs (no autograd: used only when no gradient is needed)."""
    if _fused_healthy(x.device, params.dtype, dims, tile_size):
        return launch_fused(x, params, coords, dims, tile_size)
    return mlp_bmm(x, params, coords, dims, tile_size, params.dtype).contiguous()


@pixel_mlp_op.register_fake
def _(x, params, coords, dims, tile_size):
    B, _, H, W = x.shape
    return params.new_empty((B, dims[-1], H, W))


# ----------------------------------------------------------------------------- module


def pixel_path(model: nn.Module) -> str | None:
    """Which pixelwise path ``model``'s last forward took (see ``PixelMLP.path``); None without one."""
    return next((m.path() for m in model.modules() if isinstance(m, PixelMLP)), None)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls will run in: autocast's if it is on (cast once, in the gather)."""
    dev = x.device.type
    if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class PixelMLP(nn.Module):
    """Runs one MLP per S x S tile with per-cell weights; holds no parameters, only coordinates.

    ``forward(x, params)``: x (B, C, H, W); params (B, H/S, W/S, num_params), laid out per
    layer as [weight (cin x cout, row-major), bias (cout)]. Hidden layers LeakyReLU(0.01),
    output tanh.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int, tile_size: int,
                 blend: bool = False):
        super().__init__()
        self.tile_size = tile_size
        self.blend = blend
        """Mix the 4 nearest cells' MLPs per pixel (no tile seams; 4x the MLP work)."""
        self.register_buffer("coords", tile_coordinates(tile_size), persistent=False)
        self.in_channels = in_channels
        self._health_key: tuple | None = None
        self.dims = [in_channels + self.coords.shape[-1]] + [width] * (depth - 1) + [out_channels]
        self.splits = [n for cin, cout in zip(self.dims, self.dims[1:]) for n in (cin * cout, cout)]
        self.num_params = sum(self.splits)
        self.fused = True
        """Use the fused kernel where it applies (False forces the batched-matmul path)."""
        self.last_path: str | None = None
        """Which path the last forward took: "fused", "matmul", or "matmul (fused fell back: why)"."""

    def path(self) -> str | None:
        """The path of the last forward, with the fused kernel's health verdict once it is known."""
        if self.last_path != "fused" or self._health_key is None:
            return self.last_path
        ok, reason = _HEALTH.get(self._health_key, (True, ""))
        return "fused" if ok else f"matmul (fused kernel fell back: {reason})"

    def layer_params(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return layer_params(params, self.dims)

    def _use_fused(self, x: torch.Tensor, params: torch.Tensor) -> bool:
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or params.requires_grad)
        return self.fused and x.is_cuda and not needs_grad and fused_supported(self.dims) and triton_available()

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        S = self.tile_size
        hc, wc = H // S, W // S
        if params.shape[:3] != (B, hc, wc) or params.shape[3] != self.num_params or C != self.in_channels:
            raise ValueError(f"params {tuple(params.shape)} / input {tuple(x.shape)} do not match this MLP "
                             f"({self.in_channels} inputs, tile {S}, {self.num_params} parameters per cell)")
        dtype = _compute_dtype(x)
        if self.blend:
            return self.forward_blended(x, params.to(dtype), dtype)
        return self._tiles(x, params.to(dtype).reshape(B * hc * wc, self.num_params), self.coords, dtype)

    def _tiles(self, x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """One MLP per aligned S x S tile of ``x``; params (tiles, P) in ``dtype``."""
        if self._use_fused(x, params):
            self.last_path, self._health_key = "fused", _health_key(x.device, params.dtype, self.dims, self.tile_size)
            return pixel_mlp_op(x, params, coords, self.dims, self.tile_size)
        self.last_path = "matmul"
        return mlp_bmm(x, params, coords, self.dims, self.tile_size, dtype)

    def forward_blended(self, x: torch.Tensor, params: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Each pixel's output mixes the MLPs of the 4 cells whose centres surround it.

        Treat a cell's MLP as living at the cell's centre. On a grid shifted by S/2 every
        shifted tile has the same 4 surrounding cells for all its pixels, so each of the 4
        (top/bottom, left/right) choices is one ordinary tiled call on the input padded by S/2,
        with the cells' parameters edge-replicated one cell outwards. The results are mixed
        with bilinear weights (q + 1/2) / S at offset q in the shifted tile, and the padding is
        cropped off. Within S/2 of the image border both neighbours on that side are the edge
        cell. The coordinates are the pixel's own (the encoding is periodic in S), rolled by
        S/2 to the shifted grid. The output is continuous across cell edges: a bilinear
        interpolation of the cells' functions, which are continuous themselves.
        """
        B, C, H, W = x.shape
        S, half = self.tile_size, self.tile_size // 2
        hc, wc = H // S, W // S
        grid = F.pad(params.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")  # (B, P, hc + 2, wc + 2)
        shifted = F.pad(x, (half, half, half, half), mode="replicate")
        coords = torch.roll(self.coords, shifts=(half, half), dims=(0, 1))
        frac = (torch.arange(S, device=x.device, dtype=torch.float32) + 0.5) / S
        wy = torch.stack([1 - frac, frac]).repeat(1, hc + 1)[:, half:half + H, None]  # (2, H, 1)
        wx = torch.stack([1 - frac, frac]).repeat(1, wc + 1)[:, None, half:half + W]  # (2, 1, W)
        out = None
        # a, b = 1: the lower / right neighbour, so shifted tile (t, u) uses cell (t + a - 1, u + b - 1).
        for a in (0, 1):
            for b in (0, 1):
                cells = grid[:, :, a:a + hc + 1, b:b + wc + 1].permute(0, 2, 3, 1).reshape(-1, self.num_params)
                y = self._tiles(shifted, cells, coords, dtype)[..., half:half + H, half:half + W]
                term = y * (wy[a] * wx[b])
                out = term if out is None else out + term
        return out.to(dtype)
