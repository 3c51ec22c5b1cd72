"""`asaptrain bench models`: generator inference latency per model, resolution and variant.

Label-map models (asapnet, pix2pixhd) run at 256x512, 512x1024 and 1024x2048; photo models
(deblurgan, hybrid) at 256x256 and 720x1280. Variants combine fp32 / bf16 autocast,
channels_last and torch.compile. Each row is ms per image (batch time / batch) with the GPU
name. On CUDA: warm-up, then CUDA events around ``repeats`` calls and a synchronize; on CPU:
perf_counter. Inputs are fp32 as the data pipeline delivers them (one-hot + instance edges
for label maps, [-1, 1] photos for deblurring).

Per size, models follow their papers: ASAP-Net's tile is H / 16 (a 16-row grid; 16 at
256x512, 64 at 1024x2048, never below 16), pix2pixHD uses its local enhancer (ngf 32 on a
64-wide global net) from 1024 rows up, the others use their preset unchanged.

    rows = run_bench(device="cuda")            # list of dicts, see ROW_KEYS
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from asaptrain.config.schema import Config
from asaptrain.models.pixel_mlp import pixel_path
from asaptrain.train.nets import build_generator, generator_in_channels, size_multiple

LABEL_SIZES = ((256, 512), (512, 1024), (1024, 2048))
PHOTO_SIZES = ((256, 256), (720, 1280))
QUICK_LABEL_SIZES = ((64, 128),)
QUICK_PHOTO_SIZES = ((64, 64),)
PRESET_OF = {"asapnet": "asapnet-cityscapes", "pix2pixhd": "pix2pixhd-cityscapes", "deblurgan": "deblurgan-gopro",
             "hybrid": "hybrid-deblur"}
LABEL_MODELS = ("asapnet", "pix2pixhd")
MODELS = ("asapnet", "pix2pixhd", "deblurgan", "hybrid")
GPU_VARIANTS = ("fp32", "bf16", "bf16-cl", "bf16-cl-compile")
CPU_VARIANTS = ("fp32",)
ROW_KEYS = ("model", "height", "width", "batch", "dtype", "compiled", "channels_last", "ms", "gpu")


def parse_variant(name: str) -> tuple[str, bool, bool]:
    """"bf16-cl-compile" -> ("bf16", channels_last=True, compiled=True)."""
    parts = name.split("-")
    if parts[0] not in ("fp32", "bf16") or any(p not in ("cl", "compile") for p in parts[1:]):
        raise ValueError(f"variant {name!r}: expected fp32|bf16 followed by -cl and/or -compile, e.g. bf16-cl-compile")
    return parts[0], "cl" in parts[1:], "compile" in parts[1:]


def bench_config(model: str, height: int, width: int) -> Config | None:
    """The preset of ``model`` adapted to ``height`` x ``width``; None where the size does not fit."""
    from asaptrain.config.presets import get_preset

    cfg = get_preset(PRESET_OF[model])
    m = cfg.model
    cfg.data = dataclasses.replace(cfg.data, crop_height=height, crop_width=width, load_height=0, load_width=0)
    if model == "asapnet":
        tile = 16
        while tile * 2 <= height // 16 and height % (tile * 2) == 0 and width % (tile * 2) == 0:
            tile *= 2
        cfg.model = dataclasses.replace(m, tile_size=tile, lowres_downsample=min(16, tile))
    elif model == "pix2pixhd" and height >= 1024:
        cfg.model = dataclasses.replace(m, ngf=32, local_enhancers=1, num_d=3)
    mult = size_multiple(cfg)
    return cfg if height % mult == 0 and width % mult == 0 else None


def make_input(cfg: Config, batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    h, w = cfg.data.crop_height, cfg.data.crop_width
    if cfg.data.task == "labels2photo":
        ids = torch.randint(0, cfg.data.num_labels, (batch, h, w), device=device, generator=generator)
        x = torch.nn.functional.one_hot(ids, cfg.data.num_labels).permute(0, 3, 1, 2).float()
        extra = generator_in_channels(cfg) - cfg.data.num_labels
        if extra:
            x = torch.cat([x, (torch.rand(batch, extra, h, w, device=device, generator=generator) < 0.05).float()], 1)
        return x.contiguous()
    return torch.rand(batch, 3, h, w, device=device, generator=generator) * 2 - 1


def time_forward(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Mean ms per call of ``fn`` after ``warmup`` calls."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(repeats):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) * 1000 / repeats


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from asaptrain.errors import UserError

        raise UserError("--device cuda: no CUDA device is visible here; use --device cpu or auto")
    return torch.device(device)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run_bench(
    device: str = "auto", models: tuple[str, ...] | list[str] = MODELS, sizes: list[tuple[int, int]] | None = None,
    batches: tuple[int, ...] = (1, 8), variants: tuple[str, ...] | None = None, repeats: int | None = None,
    warmup: int | None = None, quick: bool = False, log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
    """Benchmark rows (see ROW_KEYS; ``ms`` is per image, None with a ``note`` when a case fails)."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    variants = tuple(variants or (GPU_VARIANTS if cuda else CPU_VARIANTS))
    parsed = [parse_variant(v) for v in variants]
    repeats = repeats or (20 if cuda else 2 if quick else 3)
    warmup = warmup if warmup is not None else (5 if cuda else 1)
    gpu = device_label(dev)
    rows = []
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; models are {', '.join(MODELS)}")
        if sizes:
            model_sizes = sizes
        elif model in LABEL_MODELS:
            model_sizes = QUICK_LABEL_SIZES if quick else LABEL_SIZES
        else:
            model_sizes = QUICK_PHOTO_SIZES if quick else PHOTO_SIZES
        for h, w in model_sizes:
            cfg = bench_config(model, h, w)
            if cfg is None:
                log(f"skip {model} at {h}x{w}: size not a multiple of the model's stride")
                continue
            with torch.device(dev):
                G = build_generator(cfg).eval()
            for (dtype, channels_last, compiled), name in zip(parsed, variants):
                net = G.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                fn_model = torch.compile(net) if compiled else net
                for batch in batches:
                    row = {"model": model, "height": h, "width": w, "batch": batch, "dtype": dtype,
                           "compiled": compiled, "channels_last": channels_last, "ms": None, "gpu": gpu,
                           "variant": name, "device": dev.type}
                    if model == "asapnet":
                        row["tile_size"] = cfg.model.tile_size
                    if model == "pix2pixhd":
                        row["local_enhancers"] = cfg.model.local_enhancers
                    try:
                        x = make_input(cfg, batch, dev)
                        if channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)

                        def call(x=x):
                            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                                return fn_model(x)

                        ms = time_forward(call, dev, repeats, warmup)
                        row["ms"], row["pixel_path"] = ms / batch, pixel_path(net)
                        row["ms_per_batch"] = ms
                    except torch.cuda.OutOfMemoryError:
                        row["note"] = "out of memory"
                        torch.cuda.empty_cache()
                    except Exception as exc:  # noqa: BLE001 - one failed variant must not end the sweep
                        row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    rows.append(row)
                    ms_text = f"{row['ms']:.3f} ms/image" if row["ms"] is not None else row.get("note")
                    log(f"{model:9s} {h}x{w} batch {batch} {name:16s} {ms_text}")
                if compiled:
                    torch._dynamo.reset()
            del G
            if cuda:
                torch.cuda.empty_cache()
    return rows


def speedups(rows: list[dict], fast: str = "asapnet", slow: str = "pix2pixhd") -> list[dict]:
    """slow ms / fast ms for every (size, batch, variant) both models ran."""
    index = {(r["model"], r["height"], r["width"], r["batch"], r["variant"]): r["ms"] for r in rows if r["ms"]}
    out = []
    for (model, h, w, b, v), ms in index.items():
        other = index.get((slow, h, w, b, v))
        if model == fast and other:
            out.append({"height": h, "width": w, "batch": b, "variant": v, "fast_ms": ms, "slow_ms": other,
                        "speedup": other / ms})
    return out
