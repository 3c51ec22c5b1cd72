"""Triton kernels of the fused pixelwise MLP (see ``pixel_mlp.py`` for how they are used: ``launch_fused``).

One program handles ``BLOCK`` pixels of one S x S tile: it loads their input channels (any
strides) and tile coordinates, runs every layer with the cell's weights (row-major
[cin x cout] then [cout] bias, per layer, in one row of ``p_ptr``), and stores the output
channels. Hidden activations never leave registers.
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
    x_ptr, p_ptr, c_ptr, o_ptr,
    C, K, HC, WC, P,
    sxb, sxc, sxy, sxx, sob, soc, soy, sox,
    S: tl.constexpr, WIDTH: tl.constexpr, OUT: tl.constexpr, HIDDEN: tl.constexpr,
    CIN_PAD: tl.constexpr, W_PAD: tl.constexpr, OUT_PAD: tl.constexpr, BLOCK: tl.constexpr, NBLK: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # 1-D grid, a cell's pixel blocks adjacent: its weights stay hot in L2 across them.
    pid = tl.program_id(0)
    cell = pid // NBLK
    b = (cell // (HC * WC)).to(tl.int64)
    ci = (cell // WC) % HC
    cj = cell % WC
    p = (pid % NBLK) * BLOCK + tl.arange(0, BLOCK)  # pixel index inside the tile
    pmask = p < S * S
    y = (ci * S + p // S).to(tl.int64)
    x = (cj * S + p % S).to(tl.int64)
    ch = tl.arange(0, CIN_PAD)
    pix = x_ptr + b * sxb + y[:, None] * sxy + x[:, None] * sxx
    h = tl.load(pix + ch[None, :] * sxc, mask=pmask[:, None] & (ch[None, :] < C), other=0.0).to(tl.float32)
    cmask = pmask[:, None] & (ch[None, :] >= C) & (ch[None, :] < C + K)
    h += tl.load(c_ptr + p[:, None] * K + (ch[None, :] - C), mask=cmask, other=0.0).to(tl.float32)
    w_ptr = p_ptr + cell.to(tl.int64) * P
    cin = C + K
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
    oc = tl.arange(0, OUT_PAD)
    dst = o_ptr + b * sob + oc[None, :] * soc + y[:, None] * soy + x[:, None] * sox
    tl.store(dst, h.to(o_ptr.dtype.element_ty), mask=pmask[:, None] & (oc[None, :] < OUT))
