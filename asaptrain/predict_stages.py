"""The three Ray Data stages of `asaptrain predict` (see ``predict.py``), one row per input:

1. decode (CPU tasks): ``_decode_files`` (files below ``--images``) and ``_decode_shard_rows``
   (a converted dataset's rows) decode each input (``data.decode.input_array``); one that does
   not decode becomes a bad row that names it;
2. model: :class:`Predictor`, an actor holding one generator on its device (``infer.generate``);
3. encode (CPU tasks): ``_encode`` writes each output PNG under ``--out`` (atomic).

Decode and encode never import torch.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from asaptrain.data.decode import BadImage, edge_map, input_array, open_image
from asaptrain.data.outputs import output_name
from asaptrain.data.store import Store, StoreError

def _row(name: str, source: str, error: str = "", image=None, edges=None, ms: float = 0.0, ndim: int = 3):
    """A decoded row; a bad one keeps its place with empty arrays of the column's rank."""
    return {"name": name, "source": source, "error": error,
            "image": np.zeros((0,) * ndim, np.uint8) if image is None else image,
            "edges": np.zeros((0, 0), np.uint8) if edges is None else edges, "decode_ms": ms}


def _decode(data, instance, name: str, source: str, cfg, max_pixels: int) -> dict[str, Any]:
    ndim = 2 if cfg.data.task == "labels2photo" else 3
    t0 = time.perf_counter()
    try:
        image = input_array(open_image(data, "image", max_pixels), cfg, what="the image")
        edges = None
        if instance is not None:
            edges = edge_map(np.asarray(open_image(instance, "instance map", max_pixels)).astype(np.int64))
            if edges.shape != image.shape[:2]:
                raise BadImage(f"instance map {edges.shape[::-1]} and label map {image.shape[1::-1]} differ in size")
    except BadImage as exc:
        return _row(name, source, str(exc), ndim=ndim)
    except Exception as exc:  # anything else one image does (an odd mode, memory) is that image's
        return _row(name, source, f"does not decode ({type(exc).__name__}: {str(exc)[:200]})", ndim=ndim)
    return _row(name, source, image=image, edges=edges, ms=(time.perf_counter() - t0) * 1000, ndim=ndim)


def _columns(rows: list[dict], cfg) -> dict[str, Any]:
    if not rows:  # every row was finished before: an empty batch, with the columns' types
        return {k: np.asarray([v])[:0] for k, v in _row("", "", ndim=2 if cfg.data.task == "labels2photo" else 3).items()}
    return {k: [r[k] for r in rows] for k in rows[0]}


def _decode_files(batch: dict[str, np.ndarray], src: Store, cfg, max_pixels: int, inst: Store | None = None,
                  inst_index: dict[str, str] | None = None) -> dict[str, list]:
    """Stage 1 for --images: read each listed file (and its instance map) from the store and decode it."""
    rows = []
    for rel, name in zip(batch["source"], batch["name"]):
        ndim = 2 if cfg.data.task == "labels2photo" else 3
        if inst is not None and str(rel) not in inst_index:
            rows.append(_row(str(name), str(rel), f"no instance map for it under {inst.uri_for()} (same relative "
                                                  "path, any image extension)", ndim=ndim))
            continue
        try:
            data = src.read_bytes(str(rel))
            instance = inst.read_bytes(inst_index[str(rel)]) if inst is not None else None
        except StoreError as exc:  # gone since listing, or unreadable: this file alone
            rows.append(_row(str(name), str(rel), f"cannot read ({exc})", ndim=ndim))
            continue
        rows.append(_decode(data, instance, str(name), str(rel), cfg, max_pixels))
    return _columns(rows, cfg)


def _decode_shard_rows(batch: dict[str, np.ndarray], done: frozenset, keep: frozenset, edges: bool, cfg,
                       max_pixels: int):
    """Stage 1 for --dataset: decode each row's input (and instance map) not finished before."""
    rows = []
    for i, key in enumerate(batch["key"]):
        rel = f"{batch['split'][i]}/{key}"
        name = output_name(rel, rel in keep)
        if name in done:
            continue
        inst = batch["instance"][i] if edges else None
        source = f"{batch['path'][i]} key {str(key)!r}"
        if edges and inst is None:
            rows.append(_row(name, source, "no instance map (NULL), and the run uses instance edges", ndim=2))
        else:
            rows.append(_decode(batch["input"][i], inst, name, source, cfg, max_pixels))
    return _columns(rows, cfg)


class Predictor:
    """Stage 2, one actor: the run's generator (EMA when kept) on this actor's device."""

    def __init__(self, run_dir: Store, checkpoint_rel: str, use_gpu: bool, threads: int, tile: int, batch: int,
                 dtype: str = "auto", compile_mlp: bool = False):
        import torch

        from asaptrain.infer import load_generator
        from asaptrain.models.pixel_mlp import set_mlp_compiled
        from asaptrain.precision import resolve_dtype

        if not use_gpu:
            torch.set_num_threads(threads)  # the actor's share of the CPUs, not all of them
        device = "cuda" if use_gpu else "cpu"
        self.cfg, self.G = load_generator(run_dir, checkpoint_rel, device)
        self.tile, self.batch = tile, batch
        self.precision = resolve_dtype(dtype, device)  # on this worker's own device
        if compile_mlp:
            set_mlp_compiled(self.G)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from asaptrain.infer import generate

        errors = [str(e) for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if not e]
        # A label map without an instance map (an --images folder) has an empty edge array: no
        # instance boundaries, as `infer` reads it.
        edges = [batch["edges"][i] if np.size(batch["edges"][i]) else None for i in ok] \
            if self.cfg.data.instance_edges else None
        t0 = time.perf_counter()
        try:
            outs = generate(self.G, self.cfg, [batch["image"][i] for i in ok], edges, tile=self.tile, batch=self.batch,
                            dtype=self.precision)
        except Exception:  # noqa: BLE001 - one image that G cannot take must not end the job: each alone
            outs = []
            for n, i in enumerate(ok):
                try:
                    outs += generate(self.G, self.cfg, [batch["image"][i]], edges and [edges[n]], tile=self.tile,
                                     batch=self.batch, dtype=self.precision)
                except Exception as exc:  # noqa: BLE001
                    errors[i] = f"the model failed on it ({type(exc).__name__}: {str(exc).strip()[:200]})"
                    outs.append(None)
        ms = (time.perf_counter() - t0) * 1000 / max(len(ok), 1)  # generate returns CPU arrays: synced
        output, model_ms = [np.zeros((0, 0, 3), np.uint8)] * len(errors), [0.0] * len(errors)
        for i, y in zip(ok, outs):
            if y is not None:
                output[i], model_ms[i] = y, ms
        return {"name": batch["name"], "source": batch["source"], "error": errors,
                "decode_ms": batch["decode_ms"], "output": output, "model_ms": model_ms,
                "precision": [self.precision] * len(output)}


def _encode(batch: dict[str, np.ndarray], out: Store) -> dict[str, Any]:
    """Stage 3: PNG-encode and write each output; only names, sizes and timings go on."""
    from asaptrain.data.sources import encode_png

    sizes, ms = [], []
    for name, error, rgb in zip(batch["name"], batch["error"], batch["output"]):
        t0 = time.perf_counter()
        if not error:
            out.write_bytes(str(name), encode_png(rgb))
        sizes.append(rgb.shape[:2])
        ms.append((time.perf_counter() - t0) * 1000)
    return {"name": batch["name"], "source": batch["source"], "error": batch["error"],
            "height": [s[0] for s in sizes], "width": [s[1] for s in sizes], "decode_ms": batch["decode_ms"],
            "model_ms": batch["model_ms"], "encode_ms": ms, "precision": batch["precision"]}
