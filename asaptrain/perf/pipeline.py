"""`asaptrain bench pipeline`: training batches per second that Ray Data delivers to one consumer,
and what the device side (blur or one-hot) costs per batch.

For each crop size it builds the real training dataset (``data/pipeline.py``: read_parquet
with the store's filesystem, decode, crop, flip in ``map_batches``), iterates it with
``TrainBatches`` as one Ray Train worker would (re-reading the shards each epoch when
the dataset is small), skips ``warmup`` batches (worker start-up, first reads) and times the
next ``batches``. Then it times ``to_model_batch`` on the last batch on the training device
(CUDA when present): the synthetic blur (kernels + application) for deblurring, the one-hot
encoding for label maps. Numbers are for the machine and load they ran on; the JSON keeps
both.

    result = run("s3://bucket/datasets/synth-photos", s3_endpoint="http://minio:9000",
                 crops=[(256, 256)], batch=16, batches=20)
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from typing import Any

from rich.table import Table

from asaptrain.config.schema import Config, DataConfig, TrainConfig


def _device_cost(batch: dict, cfg: Config, strength: float, device, repeats: int = 5) -> dict[str, float]:
    """Median ms of ``to_model_batch`` (and of kernel generation alone) on ``device``."""
    import torch

    from asaptrain.data.blur import random_kernels
    from asaptrain.data.pipeline import to_model_batch

    batch = {k: v.to(device) for k, v in batch.items()}
    gen = torch.Generator(device=device).manual_seed(0)
    n = batch["target"].shape[0]

    def timed(fn) -> float:
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times[1:])  # the first call pays one-time set-up

    out = {"to_model_batch_ms": timed(lambda: to_model_batch(batch, cfg, strength, gen))}
    if cfg.data.task == "deblur" and "input" not in batch:
        out["kernels_ms"] = timed(lambda: random_kernels(n, strength, generator=gen, device=device))
    return out


def run(uri: str, s3_endpoint: str | None = None, crops: list[tuple[int, int]] = ((256, 256),), batch: int = 16,
        batches: int = 20, warmup: int = 2, strength: float = 0.5, device: str | None = None) -> dict[str, Any]:
    """Time the pipeline at each crop for the dataset directory ``uri``."""
    import ray
    import torch

    from asaptrain.data.pipeline import DataError, TrainBatches, train_dataset
    from asaptrain.data.shards import read_manifest
    from asaptrain.data.store import Store

    ds_store = Store.open(uri, s3_endpoint=s3_endpoint)
    manifest = read_manifest(ds_store)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from asaptrain.train.driver import ensure_ray

    ensure_ray()
    # Ray Data decodes ahead while the warm-up batches are drawn: a timed window shorter than
    # two passes over a small dataset would time a queue that is already full.
    rows = manifest["splits"]["train"]["rows"]
    batches = max(batches, math.ceil(2 * rows / batch))
    results = []
    for h, w in crops:
        cfg = Config(data=DataConfig(task=manifest["task"], dataset=uri, crop_height=h, crop_width=w),
                     train=TrainConfig(batch_size=batch))
        row: dict[str, Any] = {"crop": f"{h}x{w}"}
        try:
            it = iter(TrainBatches(train_dataset(cfg, None, ds_store=ds_store), cfg, "cpu", batch))
            t0 = time.perf_counter()
            for _ in range(warmup):
                last = next(it)
            row["first_batches_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(batches):
                last = next(it)
            seconds = time.perf_counter() - t0
            row.update(seconds=seconds, batches_per_s=batches / seconds, images_per_s=batches * batch / seconds,
                       **_device_cost(last, cfg, strength, dev))
        except DataError as exc:  # e.g. every image smaller than this crop
            row["error"] = str(exc)[:300]
        results.append(row)
    return {"uri": ds_store.uri_for(), "task": manifest["task"], "rows": manifest["splits"]["train"]["rows"],
            "batch": batch, "batches": batches, "warmup": warmup, "blur_strength": strength,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "cpu_count": os.cpu_count(), "ray_cpus": ray.cluster_resources().get("CPU", 0),
            "load_avg_1min": os.getloadavg()[0], "machine": platform.machine(), "results": results}


def render(result: dict[str, Any]) -> Table:
    blur = result["task"] == "deblur"
    table = Table(title=f"pipeline {result['uri']} ({result['task']}, {result['rows']} rows): batch "
                        f"{result['batch']}, {result['batches']} timed batches, {result['cpu_count']} CPUs "
                        f"(load {result['load_avg_1min']:.1f}), device {result['device']}")
    cols = ["crop", "batches/s", "images/s", "warm-up s", "to_model_batch ms"] + (["kernels ms"] if blur else [])
    for col in cols:
        table.add_column(col, justify="left" if col == "crop" else "right")
    for r in result["results"]:
        if "error" in r:
            table.add_row(r["crop"], *["-"] * (len(cols) - 2), r["error"][:60])
            continue
        cells = [r["crop"], f"{r['batches_per_s']:.2f}", f"{r['images_per_s']:.1f}", f"{r['first_batches_s']:.1f}",
                 f"{r['to_model_batch_ms']:.1f}"]
        table.add_row(*cells, *([f"{r.get('kernels_ms', float('nan')):.1f}"] if blur else []))
    return table


__all__ = ["run", "render"]
