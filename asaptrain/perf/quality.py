"""`asaptrain bench quality`: the hybrid against DeblurGAN at the smoke size, one recipe, several seeds.

Both smoke presets train on the same synthetic photos (converted into the store once per
size) with the same blur (fixed strength 0.5, as validated), losses (L1 x 10, the adversarial
term x 0.1) and learning rates (G 1e-3, D 5e-4, linear decay over the second half), each
under Ray Train on one CPU worker. Per run: the last validation PSNR / SSIM, the blurred
input's, and three checks on the last sample grid (input | output | target rows):
``dark_cast`` (mean output minus mean target brightness, [0, 1] units), ``edge_step_ratio``
(mean |step| of the residual output - input across tile edges over the mean step elsewhere:
1 = no seams) and ``spot_ratio`` (largest over mean of the per-pixel error averaged over the
grid's images: a spot in a fixed place shows as a large value).

    rows, summary = run_quality("./quality-store", seeds=(0, 1, 2), size=64, steps=600)
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from asaptrain.config.io import replace
from asaptrain.config.presets import get_preset
from asaptrain.errors import UserError

PRESETS = ("hybrid-smoke", "deblurgan-smoke")
RECIPE = {
    "curriculum.kind": "fixed", "curriculum.start": 0.5, "eval.blur_strength": 0.5, "optim.g_lr": 1e-3,
    "optim.d_lr": 5e-4, "optim.decay_start": 0.5, "loss.gan_weight": 0.1, "loss.l1_weight": 10.0,
    "scaling.num_workers": 1, "scaling.use_gpu": "false", "scaling.resources_per_worker": {"CPU": 1},
}
"""The config changes both presets train with (besides steps, seed, crop and dataset)."""


class QualityError(UserError):
    """A comparison that cannot run as asked; the message names the run and what to do."""


def grid_checks(png: bytes, height: int, width: int, tile: int | None) -> dict:
    """Dark cast, tile-edge step ratio and fixed-spot ratio of a sample grid (see the module docstring)."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255
    pad = 2
    cols = (img.shape[1] - pad) // (width + pad)
    panels = [[img[pad + r * (height + pad):pad + r * (height + pad) + height,
                   pad + c * (width + pad):pad + c * (width + pad) + width] for c in range(cols)] for r in range(3)]
    inp, out, tgt = (np.stack(p) for p in panels)  # (n, H, W, 3)
    err = np.abs(out - tgt).mean(axis=(0, 3))
    checks = {"dark_cast": float(out.mean() - tgt.mean()), "spot_ratio": float(err.max() / max(err.mean(), 1e-9))}
    if tile:
        steps = np.abs(np.diff(out - inp, axis=2)).mean(axis=(0, 1, 3))  # per column boundary
        edge = (np.arange(steps.size) + 1) % tile == 0
        checks["edge_step_ratio"] = float(steps[edge].mean() / max(steps[~edge].mean(), 1e-12))
    return checks


def _ensure_photos(store, size: int, count: int, val: int) -> str:
    """datasets/quality-photos-SIZE in the store (converted once); returns its relative path."""
    from asaptrain.data.convert import convert
    from asaptrain.data.synth import synth_plan

    rel = f"datasets/quality-photos-{size}"
    if not store.exists(f"{rel}/manifest.json"):
        convert(synth_plan("photos", count, (size, size), seed=0, val_count=val), store.child(*rel.split("/")))
    return rel


def run_name(preset: str, size: int, seed: int, changes: Mapping[str, Any] | None = None) -> str:
    """``quality-SIZE-PRESET-seedN``, plus a short hash of ``changes`` (``--set``) when there are any."""
    name = f"quality-{size}-{preset}-seed{seed}"
    if changes:
        digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
        name += f"-{digest}"
    return name


def run_quality(
    store_uri: str, presets: Sequence[str] = PRESETS, seeds: Sequence[int] = (0, 1, 2), size: int = 64,
    steps: int = 600, images: int = 96, val_images: int = 16, log: Callable[[str], None] = print,
    changes: Mapping[str, Any] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Train each preset once per seed; returns (one row per run, one summary row per preset).

    ``changes`` (dotted keys, as ``--set``) apply to every preset after the recipe; they are
    hashed into the run names. A run already in the store is reused only when its config is
    the one asked for; otherwise this stops, naming the run, before anything is trained.
    """
    from asaptrain.data.store import Store
    from asaptrain.train.run_reader import RunReader
    from asaptrain.train.launch import fit
    from asaptrain.train.run_files import RunFiles

    store = Store.open(store_uri)
    plan = []
    for seed in seeds:
        for preset in presets:
            cfg = replace(get_preset(preset), {
                **RECIPE, "storage.store": store.uri, "data.dataset": f"datasets/quality-photos-{size}",
                "data.crop_height": size, "data.crop_width": size, "train.steps": steps, "train.seed": seed,
                "train.log_every": max(steps // 10, 1), "eval.every": max(steps // 4, 1),
                "train.checkpoint_every": steps, "train.sample_every": steps, "eval.images": val_images,
                **(changes or {}),
            })
            files = RunFiles(store, run_name(preset, size, seed, changes))
            if files.exists():  # reused as the result only when it is this comparison's, finished
                if _recipe(RunReader(files.dir).config()) != _recipe(cfg):
                    raise QualityError(f"{files.dir.uri}: trained with another config than this comparison asks "
                                       "for (another version of the preset?); delete it or use another --store")
                status = files.read_run().get("status")
                if status != "finished":
                    raise QualityError(f"{files.dir.uri} did not finish (status {status!r}); finish it with "
                                       f"`asaptrain train --resume {files.name} --store {store.uri}` or delete it")
            plan.append((preset, seed, cfg, files))
    _ensure_photos(store, size, images, val_images)
    rows = []
    for preset, seed, cfg, files in plan:
        name = files.name
        if not files.exists():
            result = fit(cfg, preset=preset, name=name, progress=False)
            if result.status != "finished":
                raise RuntimeError(f"{name} did not finish: {result.error}")
        last = files.read_metrics().evals()[-1]
        png = files.dir.read_bytes(f"samples/{steps:08d}.png")
        tile = cfg.model.tile_size if cfg.model.name in ("asapnet", "hybrid") else None
        row = {"preset": preset, "seed": seed, "size": size, "steps": steps, "run": name,
               **{k: last.get(k) for k in ("psnr", "ssim", "input_psnr", "input_ssim")},
               **grid_checks(png, size, size, tile)}
        rows.append(row)
        log(f"{name}: PSNR {row['psnr']:.3f} dB (input {row['input_psnr']:.3f}), SSIM {row['ssim']:.4f}")
    return rows, summarize(rows)


def _recipe(cfg) -> dict:
    """What decides a run's numbers: every section but where it ran (scaling) and stored (storage)."""
    from asaptrain.config.io import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in ("scaling", "storage")}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation per preset (sd 0 for a single seed)."""
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        summary = {"preset": preset, "runs": len(mine), "size": mine[0]["size"], "steps": mine[0]["steps"]}
        for key in ("psnr", "ssim", "input_psnr", "input_ssim", "dark_cast", "edge_step_ratio", "spot_ratio"):
            vals = [r[key] for r in mine if r.get(key) is not None]
            if vals:
                summary[key] = statistics.fmean(vals)
                summary[f"{key}_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(summary)
    return out


__all__ = ["run_quality", "summarize", "grid_checks", "RECIPE", "PRESETS"]
