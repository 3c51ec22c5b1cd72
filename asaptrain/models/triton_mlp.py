"""Triton kernel of the fused pixelwise MLP (see ``pixel_mlp.py`` for how it is used).

One program handles ``BLOCK`` pixels of one cell's extended tile (T = S + 2 band pixels a
side, tiles S apart): it loads their k x k context straight from the padded input (any
strides) and the tile coordinates, runs every layer with the cell's weights (row-major
[cin x cout] then [cout] bias, per layer, in one row of ``p_ptr``), multiplies by the cell's
blend weight at the pixel and stores the output channels into the cell's tile of ``o_ptr``
(overlap-added outside). Hidden activations never leave registers.
"""

import triton
import triton.language as tl


@triton.jit
def _layer(h, w_ptr, KI: tl.constexpr, NO: tl.constexpr, ki, no, PRECISION: tl.constexpr):
    r = tl.arange(0, KI)
    c = tl.arange(0, NO)
    w = tl.load(w_ptr + r[:, None] * no + c[None, :], mask=(r[:, None] < ki) & (c[None, :] < no), other=0.0)
    bias = tl.load(w_ptr + ki * no + c, mask=c < no, other=0.0)
    acc = tl.dot(h.to(w.dtype), w, input_precision=PRECISION)
    return acc + bias[None, :].to(tl.float32)


@triton.jit
def pixel_mlp_kernel(
    x_ptr, p_ptr, c_ptr, wy_ptr, wx_ptr, o_ptr,
    C, K, HC, WC, P,
    sxb, sxc, sxy, sxx, sob, soi, soj, soy, sox, soc,
    S: tl.constexpr, T: tl.constexpr, KC: tl.constexpr, WIDTH: tl.constexpr, OUT: tl.constexpr,
    HIDDEN: tl.constexpr, CIN_PAD: tl.constexpr, W_PAD: tl.constexpr, OUT_PAD: tl.constexpr,
    BLOCK: tl.constexpr, NBLK: tl.constexpr, PRECISION: tl.constexpr,
):
    # 1-D grid, a cell's pixel blocks adjacent: its weights stay hot in L2 across them.
    pid = tl.program_id(0)
    cell = pid // NBLK
    b = (cell // (HC * WC)).to(tl.int64)
    ci = (cell // WC) % HC
    cj = cell % WC
    p = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)  # pixel index inside the extended tile
    pmask = p < T * T
    ty = p // T
    tx = p % T
    y = (ci * S + ty).to(tl.int64)  # top-left of the pixel's k x k context in the padded input
    x = (cj * S + tx).to(tl.int64)
    ch = tl.arange(0, CIN_PAD)
    NCTX: tl.constexpr = KC * KC
    c_in = ch // NCTX  # context channel ch = c * k^2 + dy * k + dx (F.unfold's order)
    dy = (ch // KC) % KC
    dx = ch % KC
    src = x_ptr + b * sxb + c_in[None, :] * sxc + (y[:, None] + dy[None, :]) * sxy + (x[:, None] + dx[None, :]) * sxx
    h = tl.load(src, mask=pmask[:, None] & (ch[None, :] < C * NCTX), other=0.0).to(tl.float32)
    cmask = pmask[:, None] & (ch[None, :] >= C * NCTX) & (ch[None, :] < C * NCTX + K)
    h += tl.load(c_ptr + p[:, None] * K + (ch[None, :] - C * NCTX), mask=cmask, other=0.0).to(tl.float32)
    w_ptr = p_ptr + cell.to(tl.int64) * P
    cin = C * NCTX + K
    h = _layer(h, w_ptr, CIN_PAD, W_PAD, cin, WIDTH, PRECISION)
    h = tl.where(h > 0, h, 0.01 * h)
    w_ptr += cin * WIDTH + WIDTH
    for _ in tl.static_range(HIDDEN):
        h = _layer(h, w_ptr, W_PAD, W_PAD, WIDTH, WIDTH, PRECISION)
        h = tl.where(h > 0, h, 0.01 * h)
        w_ptr += WIDTH * WIDTH + WIDTH
    h = _layer(h, w_ptr, W_PAD, OUT_PAD, WIDTH, OUT, PRECISION)
    e = tl.exp(-2.0 * tl.abs(h))  # tanh without overflow: sign(h) (1 - e) / (1 + e)
    t = (1.0 - e) / (1.0 + e)
    h = tl.where(h >= 0, t, -t)
    blend = tl.load(wy_ptr + ci * T + ty, mask=pmask, other=0.0) * tl.load(wx_ptr + cj * T + tx, mask=pmask, other=0.0)
    h = h * blend[:, None]
    oc = tl.arange(0, OUT_PAD)
    dst = o_ptr + b * sob + ci * soi + cj * soj + ty[:, None] * soy + tx[:, None] * sox + oc[None, :] * soc
    tl.store(dst, h.to(o_ptr.dtype.element_ty), mask=pmask[:, None] & (oc[None, :] < OUT))
