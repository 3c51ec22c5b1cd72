"""`asaptrain bench ingest`: how fast a store's shards can be read and their images decoded.

Phases, timed separately so a slow store and a slow decoder are told apart:

1. ``read``: pyarrow reads the media columns of every shard (``--limit`` rows at most) through
   the store's filesystem (local disk or S3 range reads); MB/s counts encoded image bytes.
2. ``decode pil``: PIL decodes every image on one thread.
3. ``decode pil xN``: the same over N threads (PIL drops the GIL while decoding).
4. ``decode torchvision``: ``torchvision.io.decode_image`` on one thread (CPU).

``end-to-end`` is read + threaded PIL decode. Each phase is the median of ``repeats`` passes.
The numbers are for the machine they ran on: report them with its CPU count and load (both
written into the JSON).

    result = run(Store.open("s3://bucket/datasets/synth-photos", s3_endpoint=...), limit=500)
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from rich.table import Table

from asaptrain.data.shards import MEDIA_COLUMNS, read_manifest
from asaptrain.data.store import Store


def _read(store: Store, shards: list[dict], limit: int | None) -> tuple[list[bytes], int]:
    """Encoded images of the first ``limit`` rows (all when None) and the rows read."""
    blobs: list[bytes] = []
    rows = 0
    for shard in shards:
        pf = pq.ParquetFile(store.path(shard["path"]), filesystem=store.fs)
        for batch in pf.iter_batches(batch_size=64, columns=list(MEDIA_COLUMNS)):
            take = batch.num_rows if limit is None else min(batch.num_rows, limit - rows)
            for col in MEDIA_COLUMNS:
                blobs += [v for v in batch.column(col).slice(0, take).to_pylist() if v is not None]
            rows += take
            if limit is not None and rows >= limit:
                return blobs, rows
    return blobs, rows


def _pil(blob: bytes) -> int:
    return np.asarray(Image.open(io.BytesIO(blob))).nbytes


def _phase(name: str, images: int, encoded: int, decoded: int, seconds: float) -> dict[str, Any]:
    seconds = max(seconds, 1e-9)
    return {"phase": name, "images": images, "encoded_mb": encoded / 1e6, "decoded_mb": decoded / 1e6,
            "seconds": seconds, "mb_per_s": encoded / 1e6 / seconds, "images_per_s": images / seconds}


DECODERS = ("pil", "torchvision")


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (robust to a neighbour's load spike) and the last result."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _torchvision_decoder() -> Callable[[bytes], Any]:
    import torch
    from torchvision.io import ImageReadMode, decode_image

    return lambda b: decode_image(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)


def run(store: Store, limit: int | None = None, threads: int = 1, decoders: tuple[str, ...] = DECODERS,
        repeats: int = 3) -> dict[str, Any]:
    """Time reading and decoding the dataset at ``store`` (median of ``repeats`` passes per phase)."""
    manifest = read_manifest(store)
    t_read, (blobs, rows) = _median_s(lambda: _read(store, manifest["shards"], limit), repeats)
    encoded = sum(len(b) for b in blobs)
    phases = [_phase("read (pyarrow)", len(blobs), encoded, 0, t_read)]
    t_pil, decoded = _median_s(lambda: sum(_pil(b) for b in blobs), repeats)
    phases.append(_phase("decode pil x1", len(blobs), encoded, decoded, t_pil))
    with ThreadPoolExecutor(threads) as pool:
        t_threads, _ = _median_s(lambda: sum(pool.map(_pil, blobs, chunksize=8)), repeats)
    phases.append(_phase(f"decode pil x{threads}", len(blobs), encoded, decoded, t_threads))
    if "torchvision" in decoders:
        try:
            decode = _torchvision_decoder()
            t_tv, _ = _median_s(lambda: [decode(b) for b in blobs], repeats)
            phases.append(_phase("decode torchvision x1", len(blobs), encoded, decoded, t_tv))
        except (ImportError, RuntimeError) as exc:  # no torchvision, or a format its build cannot read
            phases.append({"phase": "decode torchvision x1", "error": str(exc)[:200]})
    phases.append(_phase(f"end-to-end (read + pil x{threads})", len(blobs), encoded, decoded, t_read + t_threads))
    return {"uri": store.uri_for(), "task": manifest["task"], "rows": rows, "images": len(blobs),
            "shards": len(manifest["shards"]), "cpu_count": os.cpu_count(), "threads": threads, "repeats": repeats,
            "load_avg_1min": os.getloadavg()[0],
            "machine": platform.machine(), "phases": phases}


def render(result: dict[str, Any]) -> Table:
    table = Table(title=f"ingest {result['uri']}: {result['rows']} rows, {result['images']} images, "
                        f"{result['cpu_count']} CPUs (load {result['load_avg_1min']:.1f}), "
                        f"median of {result['repeats']}")
    for col in ("phase", "images", "MB", "s", "MB/s", "images/s"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for p in result["phases"]:
        if "error" in p:
            table.add_row(p["phase"], "-", "-", "-", "-", p["error"][:40])
            continue
        table.add_row(p["phase"], str(p["images"]), f"{p['encoded_mb']:.1f}", f"{p['seconds']:.2f}",
                      f"{p['mb_per_s']:.1f}", f"{p['images_per_s']:.0f}")
    return table


__all__ = ["run", "render", "DECODERS"]
