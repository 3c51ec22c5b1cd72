"""Scoring a generator image by image on a whole split: the stages `asaptrain evaluate` runs.

    rows = decode_rows(batch, cfg=cfg, edges=False)       # CPU task: numpy + PIL, no torch
    scores = Scorer(run_dir, ckpt, use_gpu=False, threads=2, dtype="fp32", fid=None)(rows)

Every image of the split goes through the generator whole, at its stored size: no crop, no
tiles (instance norm sees the whole image, as in the papers' test scripts). A size the generator
cannot take is padded on the bottom and right to its multiple (``train.nets.size_multiple``, and
at least ``min_input_size``), by reflection where the image is large enough and by replication
where not, and the output cropped back. The output is rounded to 8 bits exactly as a saved PNG
is (``infer.to_rgb``) and compared with the 8-bit target: PSNR over all pixels and RGB channels
with peak 255, SSIM as Wang et al.'s reference code computes it (Gaussian window 11, sigma 1.5,
K1 0.01, K2 0.03, data range 255, per channel, mean over the region where the window fits, that
is the image less a 5-pixel border), both in float64.
FID features are the Inception pool features (2048) of the 8-bit output and target; the driver
(``evaluate.py``) turns the features of the whole split into one FID.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from asaptrain.data.decode import BadImage, edge_map, input_array, key_id, open_image

FEATURES = 2048
"""Inception pool features per image for FID."""


# ----------------------------------------------------------------------------- stage 1: decode (no torch)


def _bad(name: str, source: str, error: str) -> dict[str, Any]:
    return {"name": name, "source": source, "error": error, "image": np.zeros((0, 0, 0), np.uint8),
            "edges": np.zeros((0, 0), np.uint8), "target": np.zeros((0, 0, 3), np.uint8), "blur": False}


def decode_row(key: str, split: str, source: str, data, target, instance, cfg, edges: bool) -> dict[str, Any]:
    """One shard row -> its input array (``input_array``), instance edges and 8-bit RGB target.

    A deblurring row without a stored blurred input is marked ``blur``: the model worker blurs
    its target (``synthetic_input``). What cannot be used becomes a row with ``error`` set.
    """
    name = f"{split}/{key}"
    try:
        tgt = open_image(target, "target")
        tgt = np.asarray(tgt.convert("RGB") if tgt.mode != "RGB" else tgt)
        blur = cfg.data.task == "deblur" and data is None
        image = np.zeros((0, 0, 3), np.uint8) if blur else input_array(open_image(data, "input"), cfg)
        if not blur and image.shape[:2] != tgt.shape[:2]:
            raise BadImage(f"input {image.shape[1]}x{image.shape[0]} and target {tgt.shape[1]}x{tgt.shape[0]} "
                           "differ in size")
        edge = np.zeros((0, 0), np.uint8)
        if edges:
            edge = edge_map(np.asarray(open_image(instance, "instance map")).astype(np.int64))
            if edge.shape != tgt.shape[:2]:
                raise BadImage(f"instance map {edge.shape[::-1]} and target {tgt.shape[1::-1]} differ in size")
    except BadImage as exc:
        return _bad(name, source, str(exc))
    if image.ndim == 2:  # label ids: keep the column's rank the same for every row
        image = image[..., None]
    return {"name": name, "source": source, "error": "", "image": image, "edges": edge, "target": tgt, "blur": blur}


def decode_rows(batch: dict[str, Any], cfg, edges: bool) -> dict[str, list]:
    """Stage 1 over a batch of shard rows (columns key, split, input, target[, instance], path)."""
    rows = []
    for i, key in enumerate(batch["key"]):
        source = f"{batch['path'][i] if 'path' in batch else '?'} key {str(key)!r}"
        rows.append(decode_row(str(key), str(batch["split"][i]), source, batch["input"][i], batch["target"][i],
                               batch["instance"][i] if edges else None, cfg, edges))
    if not rows:
        return {k: [] for k in _bad("", "", "")}
    return {k: [r[k] for r in rows] for k in rows[0]}


# ----------------------------------------------------------------------------- the numbers


def psnr_uint8(output: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of two (H, W, 3) uint8 images: 10 log10(255^2 / MSE), MSE over pixels and channels
    in float64; ``inf`` when they are equal."""
    mse = np.mean((output.astype(np.float64) - target.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim_uint8(output: np.ndarray, target: np.ndarray) -> float:
    """SSIM of two (H, W, 3) uint8 images as Wang et al.'s reference code computes it: Gaussian
    window 11, sigma 1.5, K1 0.01, K2 0.03, data range 255, the map over the "valid" region only
    (no padding: a 5-pixel border has no full window), averaged there and over the RGB channels;
    float64 (``train.metrics.ssim_per_image``, ``border="valid"``). (Validation during training
    pads by reflection and averages the whole image, as torchmetrics does.)"""
    import torch

    from asaptrain.train.metrics import ssim_per_image

    x, y = (torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1)[None].double() for v in (output, target))
    return float(ssim_per_image(x, y, data_range=255.0, border="valid")[0])


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two (N, 2048) feature sets: the mean and unbiased covariance in float64, then the
    Frechet distance as torchmetrics computes it (the formula training's FID uses)."""
    import torch
    from torchmetrics.image.fid import _compute_fid

    def stats(f: np.ndarray):
        f = torch.from_numpy(f.astype(np.float64))
        mu = f.mean(0)
        return mu, (f.T @ f - len(f) * torch.outer(mu, mu)) / (len(f) - 1)

    (mr, cr), (mf, cf) = stats(real), stats(fake)
    return float(_compute_fid(mr, cr, mf, cf))


def synthetic_input(target: np.ndarray, key: str, cfg) -> np.ndarray:
    """The blurred input of a deblurring row that stores none: its target blurred at
    ``eval.blur_strength`` by kernels seeded from the row's key (the same for every run and
    model), then noise / JPEG as the run's config says, rounded to 8 bits like a stored one."""
    import torch

    from asaptrain.data.blur import Degrade, blur_and_degrade
    from asaptrain.data.pipeline import VAL_BLUR_SEED

    g = torch.Generator().manual_seed((VAL_BLUR_SEED * 1_000_003 + key_id(key)) % 2**63)
    sharp = torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1)[None].float() / 255
    degrade = Degrade(cfg.data.blur_noise_std, cfg.data.blur_jpeg_quality)
    blurred = blur_and_degrade(sharp, cfg.eval.blur_strength, g, degrade)
    return (blurred[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def device_name(device) -> str:
    """The GPU's name, or the CPU's model name (Linux) with its logical core count."""
    import os

    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "cpu")
    except OSError:
        model = "cpu"
    return f"{model} ({os.cpu_count()} logical cores)"


# ----------------------------------------------------------------------------- stage 2: the model worker


class Scorer:
    """One model worker: the run's generator (EMA when kept), and the Inception network for FID."""

    def __init__(self, run_dir, checkpoint_rel: str, use_gpu: bool, threads: int, dtype: str,
                 fid: tuple[Any, str] | None, batch: int = 1):
        import torch

        from asaptrain.infer import load_generator
        from asaptrain.precision import resolve_dtype

        if not use_gpu and threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.cfg, self.G = load_generator(run_dir, checkpoint_rel, str(self.device))
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch, self.name = batch, device_name(self.device)
        self.inception = None
        if fid is not None:  # (store, configured path): this worker checks and loads its own copy
            from torchmetrics.image.fid import NoTrainInceptionV3

            from asaptrain.train.metrics import find_inception_weights

            path, reason = find_inception_weights(fid[1], fid[0])
            if path is None:
                raise RuntimeError(f"FID weights vanished after the driver found them: {reason}")
            self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(FEATURES)],
                                                feature_extractor_weights_path=path).to(self.device)

    def outputs(self, xs: list) -> list[np.ndarray]:
        """8-bit RGB outputs for (1, C, H, W) inputs of one size: padded, one forward, cropped back."""
        import torch
        import torch.nn.functional as F

        from asaptrain.infer import to_rgb
        from asaptrain.train.nets import min_input_size, size_multiple

        h, w = xs[0].shape[-2:]
        m, least = size_multiple(self.cfg), min_input_size(self.cfg)
        ph, pw = max(-(-h // m) * m, least) - h, max(-(-w // m) * m, least) - w
        x = torch.cat(xs).to(self.device)
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"  # reflect needs pad < size
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            y = self.G(x)[..., :h, :w]
        return [to_rgb(y[i:i + 1]) for i in range(len(xs))]

    def features(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        with torch.no_grad():
            return [self.inception(torch.tensor(a).permute(2, 0, 1)[None].to(self.device))
                    [0].float().cpu().numpy() for a in images]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from asaptrain.infer import model_input

        n = len(batch["name"])
        out = {k: list(batch[k]) for k in ("name", "source", "error")}
        cols = ("height", "width", "psnr", "ssim", "input_psnr", "input_ssim", "model_ms", "metric_ms")
        out.update({k: [float("nan")] * n for k in cols})
        out.update({"dtype": [self.dtype] * n, "device": [self.name] * n,
                    "fake_features": [np.zeros(0, np.float32)] * n, "real_features": [np.zeros(0, np.float32)] * n})
        inputs = {}
        for i in range(n):
            if batch["error"][i]:
                continue
            image = (synthetic_input(batch["target"][i], str(batch["name"][i]).split("/", 1)[1], self.cfg)
                     if batch["blur"][i] else batch["image"][i])
            image = image[..., 0] if self.cfg.data.task == "labels2photo" else image
            edges = batch["edges"][i] if self.cfg.data.instance_edges and self.cfg.data.task == "labels2photo" else None
            inputs[i] = (image, model_input(image, self.cfg, edges))
        groups: dict[tuple, list[int]] = {}
        for i, (_, x) in inputs.items():
            groups.setdefault(tuple(x.shape), []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.batch):
                chunk = idx[start:start + self.batch]
                t0 = time.perf_counter()
                ys = self.outputs([inputs[i][1] for i in chunk])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                ms = (time.perf_counter() - t0) * 1000 / len(chunk)
                for i, y in zip(chunk, ys):
                    self._score(out, i, y, batch["target"][i], inputs[i][0], ms)
        return out

    def _score(self, out: dict, i: int, y: np.ndarray, target: np.ndarray, image: np.ndarray, ms: float) -> None:
        t0 = time.perf_counter()
        out["height"][i], out["width"][i], out["model_ms"][i] = float(y.shape[0]), float(y.shape[1]), ms
        out["psnr"][i], out["ssim"][i] = psnr_uint8(y, target), ssim_uint8(y, target)
        if self.cfg.data.task == "deblur":  # how far the blurred input itself is from the target
            out["input_psnr"][i], out["input_ssim"][i] = psnr_uint8(image, target), ssim_uint8(image, target)
        if self.inception is not None:
            out["fake_features"][i], out["real_features"][i] = self.features([y, target])
        out["metric_ms"][i] = (time.perf_counter() - t0) * 1000


__all__ = ["decode_row", "decode_rows", "psnr_uint8", "ssim_uint8", "fid_from_features", "synthetic_input",
           "Scorer", "device_name"]
