"""`asaptrain bench predict`: images/s of `asaptrain predict` per model worker, at 720x1280 by
default, with the time of each stage (decode, model, encode) per image.

For each preset (or a trained ``--run``) it writes ``images`` synthetic inputs of the size (street
photos for deblurring, street label maps for label -> photo; PNG, as GoPro and Cityscapes ship
them) into a temporary local store, gives an untrained preset a checkpoint of its initial
weights (and D's, so it loads as a run's would; speed does not depend on them), and runs the real ``predict`` with one model worker
(``gpus`` GPUs, or the CPUs Ray gives it). images/s is the whole pipeline's, from the first
result to the last; the stage times are those ``predict`` measures inside each stage (ms per
image, wall time of that stage's code, so they overlap in the pipeline). Numbers are for the
machine and load they ran on; the JSON keeps both.

    rows = run(["deblurgan-gopro"], images=8, height=720, width=1280)
"""

from __future__ import annotations

import os
import platform
import tempfile
from typing import Any

from rich.table import Table

GPU_COMMAND = ("asaptrain bench predict --gpus 1 --images 64 --batch 4 --json predict.json"
               "   # on a node with a GPU: the same numbers for one GPU worker")


def _inputs(store, cfg, images: int, height: int, width: int) -> None:
    import numpy as np

    from asaptrain.data.sources import encode_png
    from asaptrain.data.synth import photo_image, street_scene

    rng = np.random.default_rng(0)
    for i in range(images):
        if cfg.data.task == "labels2photo":
            image = street_scene(rng, height, width)[0]
        else:
            image = photo_image(rng, height, width)
        store.write_bytes(f"input-{i:04d}.png", encode_png(image))


def _preset_run(store, name: str):
    """A run directory for a preset: its config and its generator's initial weights."""
    import torch

    from asaptrain.config.io import to_dict
    from asaptrain.config.presets import get_preset
    from asaptrain.train.nets import build_generator
    from asaptrain.train.run_files import RunFiles
    from asaptrain.train.state import generator_checkpoint, to_bytes

    cfg = get_preset(name)
    torch.manual_seed(0)
    files = RunFiles(store, name)
    files.write_config(cfg)
    state = generator_checkpoint(to_dict(cfg), build_generator(cfg).state_dict())
    files.dir.write_bytes("checkpoint_000000/state.pt", to_bytes(state))
    return cfg, files.dir


def run(presets: list[str], run_uri: str | None = None, images: int = 8, height: int = 720, width: int = 1280,
        batch: int = 4, tile: int = 1024, gpus: float = 0.0, cpus: float = 0.0,
        s3_endpoint: str | None = None, dtypes: tuple[str, ...] = ("auto",)) -> list[dict[str, Any]]:
    """One row per preset (or for ``run_uri``) and dtype: images/s and ms per image of each stage."""
    from asaptrain.data.store import Store
    from asaptrain.precision import describe_cpu_bf16
    from asaptrain.predict import PredictConfig, predict
    from asaptrain.train.run_reader import RunReader

    rows = []
    with tempfile.TemporaryDirectory(prefix="asaptrain-bench-predict-") as tmp:
        store = Store.open(tmp)
        for name in [run_uri] if run_uri else presets:
            if run_uri:
                run_dir = Store.open(run_uri, s3_endpoint=s3_endpoint)
                cfg = RunReader(run_dir).config()
            else:
                cfg, run_dir = _preset_run(store, name)
            inputs = store.child("inputs", cfg.data.task)
            if not inputs.list(""):
                _inputs(inputs, cfg, images, height, width)
            for dtype in dtypes:
                out = store.child("out", f"{len(rows)}")
                m = predict(PredictConfig(run=run_dir.uri, images=inputs.uri, out=out.uri, workers=1,
                                          gpus_per_worker=gpus, cpus_per_worker=cpus, batch=batch, tile=tile,
                                          dtype=dtype, s3_endpoint=s3_endpoint or ""))
                rows.append(_row(name, cfg, m, height, width, batch, tile, gpus, dtype, describe_cpu_bf16()))
    return rows


def _row(name, cfg, m, height, width, batch, tile, gpus, dtype, cpu_bf16) -> dict[str, Any]:
    import ray

    t = m["timing"]
    return {"preset": name, "model": cfg.model.name, "task": cfg.data.task, "height": height, "width": width,
            "images": m["counts"]["written"], "batch": batch, "tile": tile, "device": _device(gpus),
            "precision": t["precision"], "dtype_requested": dtype, "cpu_bf16": cpu_bf16, "workers": 1,
            "cpus_per_worker": m["cpus_per_worker"], "images_per_s": t["images_per_s"],
            "decode_ms": t["decode_ms_per_image"], "model_ms": t["model_ms_per_image"],
            "encode_ms": t["encode_ms_per_image"], "seconds": t["seconds"], "cpu_count": os.cpu_count(),
            "ray_cpus": ray.cluster_resources().get("CPU", 0), "load_avg_1min": os.getloadavg()[0],
            "machine": platform.machine()}


def _device(gpus: float) -> str:
    import torch

    if gpus and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)" if not gpus else "gpu (not visible to the driver)"


def render(rows: list[dict[str, Any]]) -> Table:
    device = rows[0]["device"] if rows else "?"
    bf16 = rows[0].get("cpu_bf16", "") if rows else ""
    table = Table(title=f"predict, one model worker ({device}; CPU: {bf16}); stage ms per image overlap in the pipeline")
    for col in ("preset", "size", "images", "batch", "tile", "precision", "images/s", "decode ms", "model ms",
                "encode ms"):
        table.add_column(col, justify="left" if col in ("preset", "precision") else "right")
    for r in rows:
        table.add_row(r["preset"], f"{r['height']}x{r['width']}", str(r["images"]), str(r["batch"]), str(r["tile"]),
                      r["precision"], f"{r['images_per_s']:.3f}", f"{r['decode_ms']:.1f}", f"{r['model_ms']:.1f}",
                      f"{r['encode_ms']:.1f}")
    return table
