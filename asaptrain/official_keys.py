"""How each official generator's state-dict keys map onto asaptrain's (the layouts are in
``notes/checkpoints.md`` of the design notes): one function per format, official key ->
asaptrain key (None: no place for it), and the row order of ASAP-Net's parameter head.

    _KEY_MAPS["deblurgan"]("model.1.weight", cfg)   # -> "trunk.0.weight"
"""

from __future__ import annotations

import math
import re

import torch

from asaptrain.config.schema import Config


def _resnet_key(key: str, trunk_len: int, dropout: bool, prefix: str = "") -> str | None:
    """Official ``model.N...`` (pix2pixHD global, DeblurGAN) -> asaptrain's trunk/head names.

    The official list opens with a ReflectionPad2d that asaptrain folds into its conv, so trunk
    index = official index - 1; the final conv sits after one more pad and becomes ``head.0``.
    Inside a residual block the official pad modules shift the second conv to 5 (6 after a
    dropout); asaptrain's are 0 and 3 (4)."""
    m = re.fullmatch(r"model\.(\d+)\.(.*)", key)
    if not m:
        return None
    i, rest = int(m.group(1)), m.group(2)
    if i == trunk_len + 2 and not prefix:
        return f"head.0.{rest}"
    if i < 1 or i > trunk_len:
        return None
    block = re.fullmatch(r"conv_block\.(\d+)\.(.*)", rest)
    if block:
        inner = {1: 0, (6 if dropout else 5): (4 if dropout else 3)}.get(int(block.group(1)))
        return None if inner is None else f"{prefix}trunk.{i - 1}.body.{inner}.{block.group(2)}"
    return f"{prefix}trunk.{i - 1}.{rest}"


def _pix2pixhd_key(key: str, cfg: Config) -> str | None:
    m = cfg.model
    trunk_len = 3 + 6 * m.downsamplings + m.residual_blocks
    if not m.local_enhancers:
        return _resnet_key(key, trunk_len, dropout=False)
    if key.startswith("model."):  # the global net, its last pad-conv-tanh removed
        return _resnet_key(key, trunk_len, dropout=False, prefix="global_net.")
    found = re.fullmatch(r"model(\d+)_([12])\.(\d+)\.(.*)", key)
    if not found:
        return None
    n, part, i, rest = int(found.group(1)), found.group(2), int(found.group(3)), found.group(4)
    if not 1 <= n <= m.local_enhancers:
        return None
    if part == "1":  # pad, conv7, norm, relu, conv3 s2, norm, relu
        return {1: f"down.{n - 1}.0.{rest}", 4: f"down.{n - 1}.3.{rest}"}.get(i)
    blocks = 3  # pix2pixHD's n_blocks_local (asaptrain's Pix2PixHDConfig.local_residual_blocks)
    if i < blocks:
        inner = re.fullmatch(r"conv_block\.(\d+)\.(.*)", rest)
        j = {1: 0, 5: 3}.get(int(inner.group(1))) if inner else None
        return None if j is None else f"up.{n - 1}.{i}.body.{j}.{inner.group(2)}"
    if i == blocks:
        return f"up.{n - 1}.{blocks}.{rest}"
    if i == blocks + 4 and n == m.local_enhancers:
        return f"head.0.{rest}"
    return None


def _deblurgan_key(key: str, cfg: Config) -> str | None:
    m = cfg.model
    return _resnet_key(key, 3 + 6 * m.downsamplings + m.residual_blocks, dropout=m.dropout > 0)


def _asapnet_key(key: str, cfg: Config) -> str | None:
    """``lowres_stream.model.2k`` (k-th strided-or-first conv: Sequential(conv, norm), then a ReLU
    module) and ``model.2s + b`` (b-th block: one module holding conv, norm and ReLU) are
    asaptrain's ``lowres.body.3j`` conv and ``3j + 1`` norm (j counts convs); the last is the head."""
    m = cfg.model
    strided = 1 + int(math.log2(m.lowres_downsample))
    found = re.fullmatch(r"lowres_stream\.model\.(\d+)\.(.*)", key)
    if not found:
        return None
    i, rest = int(found.group(1)), found.group(2)
    if i == 2 * strided + m.lowres_blocks:
        return f"lowres.head.{rest}"
    if i < 2 * strided:
        if i % 2:
            return None
        j = i // 2
    elif i < 2 * strided + m.lowres_blocks and rest.startswith("conv_block.0."):
        j, rest = strided + i - 2 * strided, rest.removeprefix("conv_block.0.")
    else:
        return None
    sub = re.fullmatch(r"([01])\.(.*)", rest)
    return None if not sub else f"lowres.body.{3 * j + int(sub.group(1))}.{sub.group(2)}"


def asapnet_head_order(dims: list[int]) -> torch.Tensor:
    """Row order taking the official head's per-layer ``[bias (cout), W (cin x cout)]`` rows to
    asaptrain's ``[W (cin x cout), bias (cout)]`` (W row-major over (cin, cout) in both)."""
    order, off = [], 0
    for cin, cout in zip(dims, dims[1:]):
        order += list(range(off + cout, off + cout + cin * cout)) + list(range(off, off + cout))
        off += cout + cin * cout
    return torch.tensor(order)


_KEY_MAPS = {"pix2pixhd": _pix2pixhd_key, "deblurgan": _deblurgan_key, "asapnet": _asapnet_key}
