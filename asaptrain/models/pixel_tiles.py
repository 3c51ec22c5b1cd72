"""The geometry of ASAP-Net's pixelwise MLPs, shared by every path that runs them (``pixel_mlp``,
``traceable``, the fused kernel's launcher): the sin/cos coordinates of a tile, the blend
weights, the one padded copy of the input, the extended tiles gathered from it, the per-cell
weight matrices cut from the predicted parameters, and the overlap-add back to an image.

    coords = extended_coordinates(tile_size=16, band=4)   # (24, 24, 16)
    xp = pad_input(x, context=5, band=4)                   # reflect by 2, then replicate by 4
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def extended_coordinates(tile_size: int, band: int) -> torch.Tensor:
    """(T, T, K) with T = S + 2 band: the coordinates of every pixel of an extended tile (its own,
    the encoding being periodic in S)."""
    idx = (torch.arange(tile_size + 2 * band) - band) % tile_size
    return tile_coordinates(tile_size)[idx][:, idx]


def blend_weights(cells: int, tile_size: int, band: int, device=None) -> torch.Tensor:
    """(cells, T): the weight of cell i's MLP at offset t of its extended tile along one axis.

    1 inside the cell, linear ramps of width 2 band across each cell edge (the two cells'
    weights sum to 1), 1 up to the image border for the edge cells, 0 outside the image.
    """
    S, b = tile_size, band
    d = torch.arange(S + 2 * b, device=device, dtype=torch.float32) - b + 0.5  # position in the cell, px
    w = torch.ones(cells, S + 2 * b, device=device)
    if b:
        rise, fall = ((d + b) / (2 * b)).clamp(0, 1), ((S + b - d) / (2 * b)).clamp(0, 1)
        w[1:] = w[1:] * rise
        w[:-1] = w[:-1] * fall
        w[0, d < 0] = 0.0  # outside the image
        w[-1, d > S] = 0.0
    return w


def _ceil8(n: int) -> int:
    return (n + 7) // 8 * 8


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def layer_matrices(params: torch.Tensor, dims: list[int], padded: list[int]) -> list[torch.Tensor]:
    """params (n, P) -> per layer (n, pin, pout): [weight; bias] with the bias as one more input row.

    A layer's [cin x cout weight, cout bias] is one contiguous (cin + 1) x cout block of the
    row, so the bias needs no copy: it multiplies a constant-1 input channel. Hidden layers
    get one more output column that passes that 1 on (LeakyReLU(1) = 1), so every layer is one
    plain ``bmm``, not a bias broadcast-copy plus a GEMM. ``padded[i]`` = input width of layer
    i incl. the 1 (zero rows / columns beyond).
    """
    mats, off = [], 0
    last = len(dims) - 2
    for i, (cin, cout) in enumerate(zip(dims, dims[1:])):
        n = (cin + 1) * cout
        w = params[:, off:off + n].unflatten(-1, (cin + 1, cout))
        off += n
        pin, pout = padded[i], padded[i + 1] if i < last else padded[-1]
        w = F.pad(w, (0, pout - cout, 0, pin - cin - 1))
        if i < last:
            one = torch.zeros(pin, pout, dtype=w.dtype, device=w.device)
            one[cin, cout] = 1.0
            w = w + one
        mats.append(w)
    return mats


def pad_input(x: torch.Tensor, context: int, band: int) -> torch.Tensor:
    """The one padded copy every path reads: reflect by k // 2 (the context at the border), then
    replicate by ``band`` (pixels outside the image, which get weight 0)."""
    r = context // 2
    xp = F.pad(x, (r,) * 4, mode="reflect") if r else x
    return F.pad(xp, (band,) * 4, mode="replicate") if band else xp.contiguous()


def gather_tiles(xp: torch.Tensor, tile_size: int, band: int, context: int, coords: torch.Tensor,
                 width: int, dtype: torch.dtype) -> torch.Tensor:
    """(B*cells, T*T, width): each extended tile's pixels as matmul rows, in one strided copy.

    Row channels: the k x k context as c * k^2 + dy * k + dx (``F.unfold``'s order), the
    coordinates, a constant 1 (the bias input, see ``layer_matrices``), then zeros up to
    ``width``. ``xp`` is ``pad_input``'s output.
    """
    B, C, Hp, Wp = xp.shape
    S, k = tile_size, context
    T = S + 2 * band
    hc, wc = (Hp - 2 * band - k + 1) // S, (Wp - 2 * band - k + 1) // S
    sb, sc, sy, sx = xp.stride()
    # view[b, i, j, ty, tx, c, dy, dx] = xp[b, c, i S + ty + dy, j S + tx + dx]: overlapping reads
    view = xp.as_strided((B, hc, wc, T, T, C, k, k), (sb, S * sy, S * sx, sy, sx, sc, sy, sx))
    ck, K = C * k * k, coords.shape[-1]
    h = xp.new_empty((B, hc, wc, T, T, width), dtype=dtype)
    h[..., :ck].unflatten(-1, (C, k, k)).copy_(view)
    h[..., ck:ck + K].copy_(coords)
    h[..., ck + K].fill_(1.0)
    h[..., ck + K + 1:].zero_()
    return h.view(B * hc * wc, T * T, width)


def blend(y: torch.Tensor, tile_size: int, band: int) -> torch.Tensor:
    """(B, hc, wc, out, T, T) extended tiles (any strides), each times its cell's blend weights."""
    _, hc, wc, _, T, _ = y.shape
    if not band:
        return y
    wy, wx = blend_weights(hc, tile_size, band, y.device), blend_weights(wc, tile_size, band, y.device)
    return y * (wy.view(1, hc, 1, 1, T, 1) * wx.view(1, 1, wc, 1, 1, T)).to(y.dtype)


def overlap_add(y: torch.Tensor, H: int, W: int, tile_size: int, band: int) -> torch.Tensor:
    """(B, hc, wc, out, T, T) weighted tiles (any strides) -> (B, out, H, W): sum the overlaps,
    crop the band."""
    B, hc, wc, out, T, _ = y.shape
    cols = y.permute(0, 3, 4, 5, 1, 2).reshape(B, out * T * T, hc * wc)
    full = F.fold(cols, (H + 2 * band, W + 2 * band), T, stride=tile_size)
    return full[..., band:band + H, band:band + W] if band else full
