"""Inputs of any size and one too large: `infer` / `predict` pad the smallest images up to what
the generator takes, refuse a too-large one by its header as a named bad input, keep every
other per-image failure a named bad input, and tile without the whole image in fp32."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from asaptrain.config.presets import get_preset
from asaptrain.infer import generate, model_input, read_input, run_tiles
from asaptrain.train.nets import build_generator, min_input_size, size_multiple

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

SIZES = [(1, 1), (1, 300), (300, 1), (3, 5), (7, 9)]  # (height, width)


@pytest.mark.parametrize("preset", ["deblurgan-smoke", "hybrid-smoke", "asapnet-smoke", "pix2pixhd-smoke"])
def test_tiny_and_thin_images_come_back_at_their_size(preset):
    cfg = get_preset(preset)
    torch.manual_seed(0)
    G = build_generator(cfg).eval()
    rng = np.random.default_rng(0)
    if cfg.data.task == "labels2photo":
        arrays = [rng.integers(0, cfg.data.num_labels, (h, w), dtype=np.uint8) for h, w in SIZES]
    else:
        arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    outs = generate(G, cfg, arrays, tile=64, batch=3)
    assert [o.shape for o in outs] == [(h, w, 3) for h, w in SIZES]
    assert all(o.dtype == np.uint8 for o in outs)


def test_the_padding_reaches_the_models_minimum_and_multiple():
    from asaptrain.infer import pad_to, padded_size

    cfg = get_preset("deblurgan-smoke")
    m, low = size_multiple(cfg), min_input_size(cfg)
    for h, w in SIZES + [(low + 1, 3 * m)]:
        H, W = padded_size(h, w, m, low)
        assert H >= max(h, low) and W >= max(w, low) and H % m == 0 and W % m == 0
        a = np.arange(h * w, dtype=np.uint8).reshape(h, w)
        p = pad_to(a, (H, W))
        assert p.shape == (H, W) and (p[:h, :w] == a).all()


class Pointwise(torch.nn.Module):
    """A generator whose output at a pixel depends on that pixel only: tiling must change nothing."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.tanh(self.conv(x))


def test_tiles_blended_by_strips_equal_the_whole_image():
    cfg = get_preset("deblurgan-smoke")
    torch.manual_seed(0)
    G = Pointwise().eval()
    a = np.random.default_rng(1).integers(0, 256, (203, 333, 3), dtype=np.uint8)
    make = lambda x, e: model_input(np.ascontiguousarray(x), cfg, e)  # noqa: E731
    tiled, = run_tiles(G, [a], make, 4, 8, tile=64, overlap=16, batch=3)
    with torch.no_grad():
        whole = ((G(make(a, None))[0].clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()
    assert tiled.shape == a.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # rounding of the blend's division


MEMORY_PROBE = r"""
import resource, sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from test_odd_images import Pointwise
from asaptrain.config.presets import get_preset
from asaptrain.infer import generate
torch.set_num_threads(1)
cfg = get_preset("deblurgan-smoke")
G = Pointwise().eval()
a = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
generate(G, cfg, [a[:64, :64]], tile=256)  # warm up the kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
out, = generate(G, cfg, [a], tile=256)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(after - before, out.shape)
"""


def test_a_large_image_is_not_held_in_fp32(tmp_path):
    """The peak memory of one 16 Mpx image at 256-px tiles stays under 8 bytes a pixel: the whole
    image in fp32 (the input as G reads it, or the blended output) would take 12 bytes a pixel.
    Held here: the uint8 output (3 bytes a pixel) and a strip of 256 rows in fp32 (about 0.5)."""
    import os

    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, os.path.dirname(__file__)], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert probe.returncode == 0, probe.stderr[-2000:]
    grown = int(probe.stdout.split()[0])
    assert grown < 8 * 4000 * 4000, f"peak grew by {grown / 2**20:.0f} MiB"


def _png(size, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_infer_refuses_a_too_large_image_by_its_header(tmp_path):
    from asaptrain.infer import InferError

    cfg = get_preset("deblurgan-smoke")
    data = _png((400, 300))
    path = tmp_path / "big.png"
    path.write_bytes(data[: len(data) // 2])  # the header says 400x300; the pixels are cut short
    with pytest.raises(InferError, match=r"big.png is 400x300 = 120000 pixels, over the limit of 100000"):
        read_input(path, cfg, max_pixels=100_000)
    with pytest.raises(InferError, match="does not decode"):  # under the limit, the damage shows
        read_input(path, cfg, max_pixels=200_000)


def test_a_failure_of_the_model_on_one_image_is_that_images_bad_input():
    from asaptrain.predict import Predictor

    class PicksOnWidth300(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            if x.shape[-1] == 300:
                raise RuntimeError("no 300-wide inputs here")
            return x[:, :3] * 0 + self.w

    p = Predictor.__new__(Predictor)
    p.cfg, p.G, p.tile, p.batch, p.precision = get_preset("deblurgan-smoke"), PicksOnWidth300(), 1024, 4, "fp32"
    images = [np.zeros((8, 8, 3), np.uint8), np.zeros((12, 300, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)]
    out = p({"name": ["a.png", "b.png", "c.png"], "source": ["a.png", "b.png", "c.png"],
             "error": ["", "", "does not decode"], "image": images, "edges": [np.zeros((0, 0))] * 3,
             "decode_ms": [0.0] * 3})
    assert out["error"][0] == "" and out["output"][0].shape == (8, 8, 3)
    assert "the model failed on it" in out["error"][1] and "no 300-wide inputs here" in out["error"][1]
    assert out["error"][2] == "does not decode"
    json.dumps(out["error"])


def test_predict_on_s3_takes_odd_sizes_and_names_the_too_large_one(ray_cluster, s3_endpoint, s3_bucket, tmp_path):
    from asaptrain.data.store import Store
    from asaptrain.precision import resolve_dtype
    from asaptrain.predict import MANIFEST, PredictConfig, PredictError, predict
    from test_predict import make_run

    store = Store.open(f"s3://{s3_bucket}/store", s3_endpoint=s3_endpoint)
    run = make_run(store, "deblurgan-smoke", "odd")
    photos = store.child("odd-photos")
    for name, size in (("dot.png", (1, 1)), ("line.png", (300, 1)), ("column.png", (1, 300)), ("ok.png", (40, 30)),
                       ("big.png", (200, 200))):
        photos.write_bytes(name, _png(size))
    pc = PredictConfig(run=run.uri_for(), images=photos.uri_for(), out=f"s3://{s3_bucket}/odd-out", batch=2, tile=64,
                       max_bad=1, max_pixels=30_000, s3_endpoint=s3_endpoint)
    manifest = predict(pc)
    assert manifest["counts"]["written"] == 4 and manifest["counts"]["bad"] == 1
    assert manifest["bad"][0]["input"] == "big.png" and "over the limit of 30000" in manifest["bad"][0]["reason"]
    out = Store.open(f"s3://{s3_bucket}/odd-out", s3_endpoint=s3_endpoint)
    sizes = {n: Image.open(io.BytesIO(out.read_bytes(n))).size for n in ("dot.png", "line.png", "column.png", "ok.png")}
    assert sizes == {"dot.png": (1, 1), "line.png": (300, 1), "column.png": (1, 300), "ok.png": (40, 30)}
    assert out.exists(MANIFEST)
    # the default precision: "auto", resolved by the worker on this machine and recorded
    assert manifest["settings"]["dtype"] == "auto" and manifest["dtype"] == resolve_dtype("auto", "cpu")
    pc.out, pc.max_bad = f"s3://{s3_bucket}/odd-strict", 0
    with pytest.raises(PredictError, match=r"big.png: image is 200x200 = 40000 pixels, over the limit"):
        predict(pc)
