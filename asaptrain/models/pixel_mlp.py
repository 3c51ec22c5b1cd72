"""ASAP-Net's pixelwise MLPs: one MLP per S x S tile, weights predicted per grid cell.

    mlp = PixelMLP(in_channels=3, out_channels=3, width=64, depth=5, tile_size=16, context=3, band=4)
    y = mlp(x, params)      # x (B, 3, H, W); params (B, H/16, W/16, mlp.num_params)

Each MLP sees its pixel's k x k neighbourhood (``context`` k; 1 = the pixel alone, ASAP-Net)
and the sin/cos coordinates of its place in the tile. With ``band`` = 0 every pixel uses its
cell's MLP (ASAP-Net: a step at every tile edge). With ``band`` b > 0 a cell's MLP also runs
b pixels beyond its tile on every side, and within b of a cell edge the two cells' outputs
are mixed linearly (a partition of unity; b = S/2 is the bilinear blend between cell centres;
at the image border the edge cell counts alone), so the output has no seam. The MLP work is
((S + 2b) / S)^2 of the nearest-cell MLP: 2.25x at b = S/4, 4x at b = S/2.

Every path reads one padded copy of the input (reflect by k // 2, then replicate by b), runs
each cell's MLP on its (S + 2b)^2 "extended tile", and overlap-adds the weighted tiles back
with ``F.fold``. No per-pixel weights, no Python loop over cells or pixels, no padding of
predicted parameters. ``mlp_bmm`` picks the unfused layout for the device:

* ``mlp_planes`` (CPU; training and inference): each cell's tile with its context halo,
  (C, T + k - 1, T + k - 1), is one group of a single grouped ``conv2d`` whose k x k kernel is
  the cell's first layer, so the k^2-times larger context is never materialized; the later
  layers are ``bmm``s on channel-major (cells, width, T^2) planes, a cache-sized chunk of
  cells at a time.
* ``mlp_rows`` (CUDA training): one strided gather builds the k x k context of every pixel as
  matmul rows (cells, T^2, C k^2 + coordinates), then one ``bmm`` per layer; channel counts are
  padded to multiples of 8 (zero rows / columns) so 16-bit GEMMs stay tensor-core aligned.
* the fused Triton kernel (``triton_mlp.py``; CUDA, no gradient needed): each block of an
  extended tile's pixels is loaded straight from the padded input (context included) and
  stays in registers through all layers; the blend weight is applied before the store.
  Registered as ``torch.ops.asaptrain.pixel_mlp`` so torch.compile sees one opaque op. It
  checks itself once per device / dtype / shape against ``mlp_bmm`` (outside any autocast)
  and falls back to it, with a warning, if Triton cannot compile it or it disagrees;
  ``pixel_path(model)`` says which path ran.
* the traceable path (``traceable.py``; ``PixelMLP.traceable``, for ONNX / TorchScript
  export): aligned tiles by unfold and reshape, the blend by padding and summing, so a trace
  keeps the sizes symbolic.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from asaptrain.models.options import LAYOUTS, MlpLayout  # noqa: F401 - re-exported
from asaptrain.models.pixel_tiles import (  # noqa: F401 - re-exported: the geometry every path shares
    _ceil8, _pow2, blend, blend_weights, extended_coordinates, gather_tiles, layer_matrices, overlap_add, pad_input,
    tile_coordinates,
)

MAX_FUSED_WIDTH = 128
"""Widest (padded) hidden layer the fused kernel takes; wider MLPs would spill registers."""


def mlp_rows(xp: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
             band: int, context: int, dtype: torch.dtype, pad: bool | None = None) -> torch.Tensor:
    """Batched-matmul MLPs on gathered rows, blended and overlap-added: -> (B, out, H, W).

    xp: ``pad_input``'s output; params (B*cells, P); coords (T, T, K) (``extended_coordinates``).
    ``pad``: pad channel counts to multiples of 8 (default: on CUDA, where it keeps 16-bit
    GEMMs tensor-core aligned; elsewhere nominal sizes).
    """
    B, S, b = xp.shape[0], tile_size, band
    H, W = xp.shape[2] - 2 * b - context + 1, xp.shape[3] - 2 * b - context + 1
    hc, wc, T = H // S, W // S, S + 2 * b
    widths = [d + 1 for d in dims[:-1]] + [dims[-1]]  # + the constant-1 channel
    padded = [_ceil8(d) for d in widths] if (xp.is_cuda if pad is None else pad) else widths
    h = gather_tiles(xp, S, b, context, coords, padded[0], dtype)
    mats = layer_matrices(params.to(dtype), dims, padded)
    for i, w in enumerate(mats):
        h = torch.bmm(h, w)
        h = F.leaky_relu(h, 0.01, inplace=True) if i < len(mats) - 1 else torch.tanh(h)
    y = h.view(B, hc, wc, T, T, padded[-1])[..., :dims[-1]]
    return overlap_add(blend(y.permute(0, 1, 2, 5, 3, 4), S, b), H, W, S, b)


PLANES_CHUNK_CELLS = 16
"""Cells per pass of ``mlp_planes`` in fp32: a chunk's activations stay in cache through every layer.
Measured on a 2-core CPU at widths 16 and 64: 16 was the fastest of 4 to 64, and 2-3x faster
than one pass over all cells (whose activations went to memory and back at every layer).
16-bit dtypes take as many bytes per chunk, so twice the cells (``planes_chunk_cells``)."""


def planes_chunk_cells(dtype: torch.dtype) -> int:
    """Cells per chunk for ``dtype``: ``PLANES_CHUNK_CELLS`` fp32 cells' worth of bytes (bf16: 32;
    on a 2-core AVX-512 CPU without bf16 units 32 bf16 cells beat 16 and 8)."""
    return max(1, PLANES_CHUNK_CELLS * 4 // torch.empty((), dtype=dtype).element_size())


def mlp_planes(xp: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
               band: int, context: int, dtype: torch.dtype) -> torch.Tensor:
    """Channel-major MLPs, the first layer one grouped convolution: -> (B, out, H, W).

    Arguments as ``mlp_rows``. Cell n's extended tile and its context halo, xp's (C, T + k - 1,
    T + k - 1) window at (i S, j S), is group n of a ``conv2d`` whose kernel is the cell's
    first-layer weight on its k x k context (``gather_tiles``' channel order c k^2 + dy k + dx
    is the kernel's (c, dy, dx)), with the layer's bias as the conv's bias. So the context,
    k^2 times the input, is never copied out: on a 2-core CPU that gather cost as much as all
    the matmuls. The coordinates' share of the first layer is one in-place ``baddbmm_``; the
    later layers are one ``bmm`` each on (cells, width, T^2), the constant-1 channel of
    ``layer_matrices`` carrying their biases as in ``mlp_rows``. Cells go through all layers
    ``planes_chunk_cells(dtype)`` at a time (in one pass under torch.compile, which would unroll the loop).
    """
    B, C, Hp, Wp = xp.shape
    S, b, k = tile_size, band, context
    H, W = Hp - 2 * b - k + 1, Wp - 2 * b - k + 1
    hc, wc, T, E = H // S, W // S, S + 2 * b, S + 2 * b + k - 1
    n = B * hc * wc
    sb, sc, sy, sx = xp.stride()
    tiles = xp.as_strided((B, hc, wc, C, E, E), (sb, S * sy, S * sx, sc, sy, sx)).to(dtype).reshape(n, C, E, E)
    widths = [d + 1 for d in dims[:-1]] + [dims[-1]]  # + the constant-1 channel
    mats = layer_matrices(params.to(dtype), dims, widths)  # (n, cin + 1, cout (+ 1))
    grid = coords.to(dtype).reshape(T * T, -1).t().contiguous()  # (K, T^2)
    # The first layer output-major, (n, cout + 1, cin + 1), in one copy for all cells: its conv
    # kernel, coordinate weights and bias are then views, not a strided copy per chunk.
    first = mats[0].transpose(1, 2).contiguous()
    step = n if torch.compiler.is_compiling() else planes_chunk_cells(dtype)
    ys = [_planes_chunk(tiles[i:i + step], [first[i:i + step]] + [w[i:i + step] for w in mats[1:]], grid, k)
          for i in range(0, n, step)]
    y = torch.cat(ys) if len(ys) > 1 else ys[0]
    return overlap_add(blend(y.view(B, hc, wc, dims[-1], T, T), S, b), H, W, S, b)


def _planes_chunk(tiles: torch.Tensor, mats: list[torch.Tensor], grid: torch.Tensor, context: int) -> torch.Tensor:
    """``mlp_planes`` on m cells: tiles (m, C, E, E), the first layer output-major (m, cout + 1,
    cin + 1), the later layers (m, cin + 1, cout (+ 1)), grid (K, T^2) -> (m, out, T^2)."""
    m, C, E, _ = tiles.shape
    k = context
    ck, T = C * k * k, E - k + 1
    first = mats[0]
    width = first.shape[1]
    kernel = first[:, :, :ck].reshape(m * width, C, k, k)  # a view: rows of cin + 1
    h = F.conv2d(tiles.reshape(1, m * C, E, E), kernel, first[:, :, -1].reshape(-1), groups=m)
    # coordinates: one (m (cout + 1), K) x (K, T^2) GEMM; a batched one with the grid expanded
    # over cells made bf16 copy the grid for every chunk and was 3x slower in fp32 too
    h = h.view(m * width, T * T).addmm_(first[:, :, ck:-1].reshape(m * width, -1), grid).view(m, width, T * T)
    for i, w in enumerate(mats):
        if i:
            h = torch.bmm(w.transpose(1, 2), h)
        h = F.leaky_relu(h, 0.01, inplace=True) if i < len(mats) - 1 else torch.tanh(h)
    return h


def mlp_bmm(xp: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
            band: int, context: int, dtype: torch.dtype, layout: MlpLayout = "auto") -> torch.Tensor:
    """The unfused MLPs in ``layout`` ("rows" / "planes"; "auto": the device's, ``mlp_layout``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if (mlp_layout(xp) if layout == "auto" else layout) == "rows":
        return mlp_rows(xp, params, coords, dims, tile_size, band, context, dtype)
    return mlp_planes(xp, params, coords, dims, tile_size, band, context, dtype)


def mlp_layout(x: torch.Tensor) -> str:
    """"rows" on CUDA (padded, tensor-core aligned GEMMs; the fused kernel's fallback), "planes"
    elsewhere: on a 2-core CPU (``bench compare``, fp32) planes made the whole hybrid generator
    1.4-1.7x faster at the smoke size and 1.9-2.9x at 256 x 256 and 720 x 1280."""
    return "rows" if x.is_cuda else "planes"


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


def launch_config(dims: list[int], dtype: torch.dtype, precision: str) -> tuple[int, int]:
    """(BLOCK pixels per program, num_warps): sized so accumulators fit in registers.

    A program holds two BLOCK x W_PAD fp32 tiles (input and accumulator of a layer) spread
    over num_warps * 32 threads. At BLOCK 128, width 64, 4 warps that is 128 registers per
    thread: fine for tf32 / bf16 dots, but the fp32 ``ieee`` dot (3 passes) went to 255 and
    spilled on sm_90a, and width 128 spilled in bf16. So ``ieee`` fp32 and widths above 64
    take BLOCK 64, and width 128 also 8 warps (32 registers of accumulator per thread). Not
    yet compiled for a GPU (no ptxas here): the health check still guards each shape. The
    first layer's input tile is BLOCK x CIN_PAD: a 5 x 5 context of RGB plus coordinates
    (91 channels, padded to 128) would alone take 128 registers per thread at BLOCK 128, so
    inputs wider than 64 take BLOCK 64 too.
    """
    wide = _pow2(dims[1]) > 64
    wide_input = _pow2(dims[0]) > 64
    block = 64 if wide or wide_input or (dtype == torch.float32 and precision == "ieee") else 128
    return block, 8 if wide else 4


def launch_fused(xp: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
                 band: int, context: int, kernel=None) -> torch.Tensor:
    """Run the kernel: xp = ``pad_input``'s output (any strides); params (B*cells, P) in the compute
    dtype; coords (T, T, K). Returns (B, out, H, W) in params' dtype."""
    B, C, Hp, Wp = xp.shape
    S, b, k = tile_size, band, context
    H, W, T = Hp - 2 * b - k + 1, Wp - 2 * b - k + 1, S + 2 * b
    hc, wc = H // S, W // S
    if params.shape[-1] % 16:  # 16-aligned rows: the kernel's weight loads can vectorize
        params = F.pad(params, (0, 16 - params.shape[-1] % 16))
    params = params.contiguous()
    coords = coords.reshape(T * T, -1).float().contiguous()
    wy, wx = blend_weights(hc, S, b, xp.device), blend_weights(wc, S, b, xp.device)
    precision = "tf32" if xp.is_cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee"  # fp32 only
    y = torch.empty((B, hc, wc, T, T, dims[-1]), device=xp.device, dtype=params.dtype)
    block, warps = launch_config(dims, params.dtype, precision)
    block = min(block, _pow2(T * T))
    nblk = (T * T + block - 1) // block
    (kernel or build_kernel())[(B * hc * wc * nblk,)](
        xp, params, coords, wy, wx, y, C, coords.shape[-1], hc, wc, params.shape[-1], *xp.stride(), *y.stride(),
        S=S, T=T, KC=k, WIDTH=dims[1], OUT=dims[-1], HIDDEN=len(dims) - 3, CIN_PAD=_pow2(dims[0]),
        W_PAD=_pow2(dims[1]), OUT_PAD=_pow2(dims[-1]), BLOCK=block, NBLK=nblk, PRECISION=precision, num_warps=warps,
    )
    return overlap_add(y.permute(0, 1, 2, 5, 3, 4), H, W, S, b)


_HEALTH: dict[tuple, tuple[bool, str]] = {}
"""(device, dtype, dims, (tile, band, context)) -> (kernel usable, why not): the checks done so far."""


def _health_key(device: torch.device, dtype: torch.dtype, dims: list[int], geometry: list[int]) -> tuple:
    return (str(device), dtype, tuple(dims), tuple(geometry))


def _fused_healthy(device: torch.device, dtype: torch.dtype, dims: list[int], geometry: list[int]) -> bool:
    """Once per device / dtype / shape: does the compiled kernel agree with ``mlp_bmm``?

    Runs outside the caller's autocast: both sides compute in ``dtype`` as asked, so a bf16
    matmul is never compared with an fp32 kernel (which would fail and fall back for nothing).
    """
    key = _health_key(device, dtype, dims, geometry)
    if key not in _HEALTH:
        with torch.autocast(device.type, enabled=False):
            _HEALTH[key] = _check_fused(device, dtype, dims, geometry)
    return _HEALTH[key][0]


def _check_fused(device: torch.device, dtype: torch.dtype, dims: list[int], geometry: list[int]) -> tuple[bool, str]:
    """The health check itself: (usable, why not), with a warning when not."""
    S, b, k = geometry
    C = (dims[0] - 4 * int(math.log2(S))) // (k * k)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(1, C, 2 * S, 3 * S, device=device, generator=gen) * 2 - 1
    params = torch.randn(6, sum(a * c + c for a, c in zip(dims, dims[1:])), device=device, generator=gen)
    params = (params / math.sqrt(dims[1])).to(dtype)
    coords = extended_coordinates(S, b).to(device)
    xp = pad_input(x, k, b)
    try:
        got = launch_fused(xp, params, coords, dims, S, b, k).float()
        want = mlp_bmm(xp, params, coords, dims, S, b, k, dtype).float()
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
    xp: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], geometry: list[int],
) -> torch.Tensor:
    """Fused pixelwise MLPs (no autograd: used only when no gradient is needed); geometry = (S, band, k)."""
    S, b, k = geometry
    if _fused_healthy(xp.device, params.dtype, dims, geometry):
        return launch_fused(xp, params, coords, dims, S, b, k)
    return mlp_bmm(xp, params, coords, dims, S, b, k, params.dtype).contiguous()


@pixel_mlp_op.register_fake
def _(xp, params, coords, dims, geometry):
    S, b, k = geometry
    B, _, Hp, Wp = xp.shape
    return params.new_empty((B, dims[-1], Hp - 2 * b - k + 1, Wp - 2 * b - k + 1))


# ----------------------------------------------------------------------------- module


@functools.cache
def compiled_mlp_bmm():
    """``mlp_bmm`` through ``torch.compile`` (inductor; on a CPU its C++ backend), compiled once
    per input shape and dtype on its first call (40 s cold for the hybrid at 256x256 on a 2-core
    CPU). Measure before using it: on a 2-core Xeon the same generator ran no faster compiled than
    eager in one process (378.1 against 377.5 ms at 256x256)."""
    return torch.compile(mlp_bmm, dynamic=False)


def set_mlp_compiled(model: nn.Module, on: bool = True) -> int:
    """Run every PixelMLP of ``model`` through :func:`compiled_mlp_bmm` on its unfused path
    (opt-in, for measuring where inductor may win); returns how many it switched."""
    mlps = [m for m in model.modules() if isinstance(m, PixelMLP)]
    for m in mlps:
        m.compiled = on
    return len(mlps)


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

    ``forward(x, params)``: x (B, C, H, W), the channels the MLPs see (their k x k context is
    built here); params (B, H/S, W/S, num_params), laid out per layer as [weight (cin x cout,
    row-major), bias (cout)]. Hidden layers LeakyReLU(0.01), output tanh.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int, depth: int, tile_size: int,
                 context: int = 1, band: int = 0, layout: MlpLayout = "auto"):
        super().__init__()
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be an odd number >= 1, got {context}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if not 0 <= band <= tile_size // 2:
            raise ValueError(f"band must be in 0..{tile_size // 2} (tile_size / 2), got {band}")
        self.tile_size, self.context, self.band = tile_size, context, band
        self.register_buffer("coords", extended_coordinates(tile_size, band), persistent=False)
        self.in_channels = in_channels
        self.dims = [in_channels * context**2 + self.coords.shape[-1]] + [width] * (depth - 1) + [out_channels]
        self.splits = [n for cin, cout in zip(self.dims, self.dims[1:]) for n in (cin * cout, cout)]
        self.num_params = sum(self.splits)
        self.fused = True
        """Use the fused kernel where it applies (False forces the batched-matmul path)."""
        self.compiled = False
        """Run the unfused path through torch.compile (``set_mlp_compiled``)."""
        self.layout = layout
        """The unfused path: "rows", "planes", or "auto" (``mlp_layout``: by device)."""
        self.traceable = False
        """Run in ops whose sizes a trace keeps symbolic, for ONNX / TorchScript export (``traceable.py``):
        the same function, slower; inference only."""
        self.last_path: str | None = None
        """Which path the last forward took: "fused", "traceable", or the unfused layout "rows" / "planes"."""
        self._health_key: tuple | None = None

    def path(self) -> str | None:
        """The path of the last forward, with the fused kernel's health verdict once it is known."""
        if self.last_path != "fused" or self._health_key is None:
            return self.last_path
        ok, reason = _HEALTH.get(self._health_key, (True, ""))
        return "fused" if ok else f"{mlp_layout(self.coords)} (fused kernel fell back: {reason})"

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
        xp = pad_input(x, self.context, self.band)
        params = params.to(dtype).reshape(B * hc * wc, self.num_params)
        geometry = [S, self.band, self.context]
        if self.traceable:
            from asaptrain.models.traceable import mlp_traceable  # imports this module: not at the top

            self.last_path = "traceable"
            return mlp_traceable(x, params, self.coords, self.dims, S, self.context, self.band)
        if self._use_fused(x, params):
            self.last_path, self._health_key = "fused", _health_key(x.device, params.dtype, self.dims, geometry)
            return pixel_mlp_op(xp, params, self.coords, self.dims, geometry)
        layout = mlp_layout(xp) if self.layout == "auto" else self.layout
        run = compiled_mlp_bmm() if self.compiled and not torch.compiler.is_compiling() else mlp_bmm
        self.last_path = f"{layout} (compiled)" if run is not mlp_bmm else layout
        return run(xp, params, self.coords, self.dims, S, self.band, self.context, dtype, layout)
