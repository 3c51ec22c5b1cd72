"""The ASAP-Net family's inference paths in ops whose sizes a trace keeps symbolic (ONNX,
TorchScript): the pixelwise MLPs on aligned tiles, and the antialiased shrink as a conv.

Switched on per module (``PixelMLP.traceable``, ``TentDownsample.traceable``; both at once with
``ASAPNetGenerator.set_traceable()``); neither changes the numbers beyond float rounding.

* The training path's strided gather (``as_strided``) and overlap-add (``F.fold``) freeze or
  refuse traced sizes, and the fused Triton kernel is a CUDA-only custom op no exporter can see
  through. Here aligned tiles come from an unfold and a reshape and run through the same bmm
  chain (``layer_matrices``); with a blend band the overlapping extended tiles are split into
  pieces that aligned tiles hold, and overlap-added by padding and summing (``mlp_blend``).
* PyTorch's antialiased bilinear shrink has no ONNX form in the TorchScript exporter (ONNX
  Resize's antialias mode is not PyTorch's filter): ``tent_conv`` is the same tent filter as a
  strided depthwise conv with the border renormalized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asaptrain.models.pixel_tiles import layer_matrices, pad_input


def tent_conv(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``TentDownsample(factor)(x)`` as a strided depthwise conv (same numbers up to rounding).

    For an even factor f, PyTorch's antialiased bilinear shrink takes 2f taps per output with
    weights (1, 3, ..., 2f-1, 2f-1, ..., 3, 1) / f^2 centred on the output's footprint, and
    renormalizes the taps that fall inside the image at the border: a zero-padded conv divided
    by the same conv of an all-ones image.
    """
    if factor % 2:
        raise ValueError(f"tent_conv needs an even factor, got {factor}")
    f, channels = factor, x.shape[1]
    taps = torch.cat([torch.arange(1, 2 * f, 2), torch.arange(2 * f - 1, 0, -2)]).double()
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).to(x.dtype).to(x.device)
    num = F.conv2d(x, kernel.expand(channels, 1, -1, -1), stride=f, padding=f // 2, groups=channels)
    den = F.conv2d(torch.ones_like(x[:, :1]), kernel[None, None], stride=f, padding=f // 2)
    return num / den


def cell_mlps(h: torch.Tensor, coords: torch.Tensor, params: torch.Tensor, dims: list[int]) -> torch.Tensor:
    """Each cell's MLP on its rows: h (cells, rows, C k^2 context), coords (rows, K) -> (cells, rows, out).

    The coordinates and the constant-1 bias input are appended, then one bmm per layer
    (``layer_matrices``), as the training path runs them.
    """
    c = coords.to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
    h = torch.cat([h, c, torch.ones_like(h[..., :1])], dim=-1)
    widths = [d + 1 for d in dims[:-1]] + [dims[-1]]
    mats = layer_matrices(params.reshape(h.shape[0], -1).to(h.dtype), dims, widths)
    for i, w in enumerate(mats):
        h = torch.bmm(h, w)
        h = F.leaky_relu(h, 0.01) if i < len(mats) - 1 else torch.tanh(h)
    return h


def mlp_tiles(x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
              context: int) -> torch.Tensor:
    """``PixelMLP.forward`` without a blend band: x (B, C, H, W), params (B*cells, P), coords
    (S, S, K) -> (B, out, H, W). The rows of each aligned tile come from an unfold and a reshape."""
    B, C, H, W = x.shape
    S, k = tile_size, context
    hc, wc = H // S, W // S
    xp = pad_input(x, k, 0)
    ck = C * k * k
    xc = F.unfold(xp, k).view(B, ck, H, W) if k > 1 else xp  # channel c * k^2 + dy * k + dx, as gather_tiles
    h = xc.reshape(B, ck, hc, S, wc, S).permute(0, 2, 4, 3, 5, 1).reshape(B * hc * wc, S * S, ck)
    h = cell_mlps(h, coords.reshape(S * S, -1), params, dims)
    out = dims[-1]
    return h.view(B, hc, wc, S, S, out).permute(0, 5, 1, 3, 2, 4).reshape(B, out, H, W)


def band_profile(tile_size: int, band: int) -> torch.Tensor:
    """(T,): an interior cell's blend weight along one axis of its extended tile (``blend_weights``
    without the image-border cases, which ``mlp_blend`` gets by renormalizing)."""
    S, b = tile_size, band
    d = torch.arange(S + 2 * b, dtype=torch.float32) - b + 0.5
    return ((d + b) / (2 * b)).clamp(0, 1) * ((S + b - d) / (2 * b)).clamp(0, 1)


def mlp_blend(x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
              context: int, band: int) -> torch.Tensor:
    """``PixelMLP.forward`` with a blend band b > 0; arguments as ``mlp_tiles``, coords (T, T, K).

    Along one axis, padded row p (the image padded by the band b) is reached by its own cell
    c = p // S at offset p % S of c's extended tile, and, when p % S < 2b, by cell c - 1 at
    offset S + p % S. So every cell's extended tile splits into two pieces read from aligned
    S-row tiles of the padded input: rows [0, S) of tile c ("own") and rows [0, 2b) of tile
    c + 1 ("next"). In 2-D the four pieces (own / next per axis) are T^2 rows per cell, run
    through the one bmm chain, weighted, and put back by zero-padding to whole tiles (the next
    pieces one tile on) and summing: an overlap-add made of reshapes and pads. At the image
    border only one cell reaches a pixel; dividing by the summed weights gives it weight 1 there,
    as ``blend_weights`` does, and changes nothing inside (the weights sum to 1).
    """
    B, C, H, W = x.shape
    S, k, b = tile_size, context, band
    hc, wc = H // S, W // S
    ck, K = C * k * k, coords.shape[-1]
    xp = pad_input(x, k, b)
    xc = F.unfold(xp, k).view(B, ck, H + 2 * b, W + 2 * b) if k > 1 else xp
    tiles = F.pad(xc, (0, S - 2 * b, 0, S - 2 * b)).reshape(B, ck, hc + 1, S, wc + 1, S)
    prof = band_profile(S, b).to(x.device)
    # per axis: (tiles, rows inside them, offsets in the extended tile, zero tiles before / after)
    spans = [(slice(None, -1), slice(0, S), slice(0, S), (0, 1)),
             (slice(1, None), slice(0, 2 * b), slice(S, S + 2 * b), (1, 0))]
    pieces = [(sy, sx) for sy in spans for sx in spans]
    rows, cell_coords, weights = [], [], []
    for (ty, ry, oy, _), (tx, rx, ox, _) in pieces:
        p = tiles[:, :, ty, ry, tx, rx]  # (B, ck, hc, ny, wc, nx)
        rows.append(p.permute(0, 2, 4, 3, 5, 1).reshape(B * hc * wc, -1, ck))
        cell_coords.append(coords[oy, ox].reshape(-1, K))
        weights.append((prof[oy, None] * prof[None, ox]).reshape(-1, 1))
    h = cell_mlps(torch.cat(rows, dim=1), torch.cat(cell_coords), params, dims)
    wt = torch.cat(weights).to(h.dtype).unsqueeze(0).expand(h.shape[0], -1, -1)
    h = torch.cat([h * wt, wt], dim=-1)  # the weight rides along as one more channel
    out, total, start = dims[-1], 0, 0
    for (_, ry, _, (ay0, ay1)), (_, rx, _, (ax0, ax1)) in pieces:
        ny, nx = ry.stop - ry.start, rx.stop - rx.start
        part = h[:, start:start + ny * nx].reshape(B, hc, wc, ny, nx, out + 1).permute(0, 5, 1, 3, 2, 4)
        start += ny * nx
        part = F.pad(part, (0, S - nx, ax0, ax1, 0, S - ny, ay0, ay1))  # (B, out+1, hc+1, S, wc+1, S)
        total = total + part.reshape(B, out + 1, (hc + 1) * S, (wc + 1) * S)
    total = total[:, :, b:b + H, b:b + W]
    return total[:, :out] / total[:, out:]


def mlp_traceable(x: torch.Tensor, params: torch.Tensor, coords: torch.Tensor, dims: list[int], tile_size: int,
                  context: int, band: int) -> torch.Tensor:
    """The pixelwise MLPs on the traceable path: ``mlp_blend`` with a band, else ``mlp_tiles``."""
    if band:
        return mlp_blend(x, params, coords, dims, tile_size, context, band)
    return mlp_tiles(x, params, coords, dims, tile_size, context)
