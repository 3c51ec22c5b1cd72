"""Batch inference over a store with Ray Data: what `asaptrain predict` runs.

    asaptrain predict --run s3://bucket/store/runs/NAME --images s3://bucket/blurry --out s3://bucket/sharp
    asaptrain predict --run ./asaptrain-store/runs/NAME --dataset ./asaptrain-store/datasets/x --out ./pred

Inputs are a converted dataset's input images (``--dataset``, with instance edges where the run
uses them) or every JPEG/PNG below a prefix (``--images``: photos to deblur, or label-id PNGs).
Ray Data runs three stages, so a GPU only ever runs the model:

1. decode (CPU tasks): read a file or shard row and decode it (``data.decode.input_array``);
   one that does not decode becomes a bad row that names it;
2. model (an actor pool, one generator per actor, on its GPU): ``infer.generate``, the tiled
   full-size path of `asaptrain infer`, ``batch`` tiles per forward pass;
3. encode (CPU tasks): PNG, written under ``--out`` at the input's relative name (atomic).

The driver counts what comes back (images/s), fails once more than ``max_bad`` inputs were bad,
and writes ``predictions.json`` last. ``_predict.json``, written before the first output, names
the run, checkpoint and input an output folder belongs to: a rerun with the same ones skips
finished outputs; other folders are refused (``data/outputs.py``). Decode and encode tasks never
import torch.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from asaptrain.data.decode import DEFAULT_MAX_PIXELS
from asaptrain.data.outputs import IMAGE_SUFFIXES, JOB_FILE, check_out_folder, finished_outputs, output_names
from asaptrain.data.shards import SPLITS, read_manifest, read_shards, shard_paths
from asaptrain.data.store import Store
from asaptrain.errors import UserError
from asaptrain.precision import DTYPES
from asaptrain.predict_stages import Predictor, _decode_files, _decode_shard_rows, _encode  # noqa: F401 - Predictor re-exported

MANIFEST = "predictions.json"
ROWS_PER_TASK = 4
"""Images per decode / encode call: decoded images are large and differ in size."""
TASK_CPUS = 0.5
"""Logical CPUs of one decode or encode task (what the model actors must leave free)."""


class PredictError(UserError):
    """Inputs, outputs or a cluster that `predict` cannot use, or too many bad images."""


@dataclass
class PredictConfig:
    """One `asaptrain predict` (a field per flag)."""

    run: str
    """Run directory URI (its config.toml and checkpoints)."""
    out: str
    """Output folder URI: never the input's own folder."""
    dataset: str = ""
    """A converted dataset (its shards' input images); this or ``images``."""
    images: str = ""
    """A prefix of JPEG/PNG files, any sizes, in subfolders too."""
    splits: tuple[str, ...] = ()
    """Dataset splits to predict [empty: every split]."""
    checkpoint: str = ""
    """Checkpoint directory inside the run [empty: the latest]."""
    workers: int = 0
    """Model actors [0: one per GPU of the cluster, or 1 without GPUs]."""
    gpus_per_worker: float | None = None
    """GPUs per actor [None: 1 when the cluster has GPUs, else 0: CPU]."""
    cpus_per_worker: float = 0.0
    """Logical CPUs per actor [0: 1 with GPUs; on CPU the cluster's CPUs less one, shared]."""
    batch: int = 4
    """Images per actor call, and tiles per forward pass."""
    tile: int = 1024
    """Largest tile edge in pixels (as `infer --tile`)."""
    max_bad: int = 0
    """Inputs that fail to read, decode or run that are named and skipped before the command fails."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest input, width x height in pixels; a larger one is a bad input (checked before decoding)."""
    dtype: str = "auto"
    """Compute precision: fp32, bf16 (autocast), or auto (bf16 where the worker's device computes
    bf16 natively: ``asaptrain.precision``)."""
    compile_mlp: bool = False
    """Run the pixelwise MLPs (ASAP-Net, hybrid) through torch.compile: each worker compiles once per
    tile shape (tens of seconds on a CPU); measure it first (no faster than eager on a 2-core CPU)."""
    s3_endpoint: str = ""
    """S3-compatible endpoint of every s3:// URI here [empty: AWS_ENDPOINT_URL*]."""
    instances: str = ""
    """With ``images``: a prefix of instance-id maps, one per label map by relative path without extension."""


# ----------------------------------------------------------------------------- inputs


def _image_items(src: Store) -> list[dict[str, str]]:
    rels = [r for r in src.list(recursive=True) if r.lower().endswith(IMAGE_SUFFIXES)]
    if not rels:
        raise PredictError(f"no .png, .jpg or .jpeg files below {src.uri_for()}")
    return [{"source": r, "name": n} for r, n in output_names(rels)[0].items()]


def _instance_index(inst: Store, items: list[dict[str, str]]) -> dict[str, str]:
    """Image rel -> its instance map's rel (same relative path, any image extension). An image
    without one stays out of the index: its row is named bad."""
    by_stem = {r.rsplit(".", 1)[0]: r for r in inst.list(recursive=True) if r.lower().endswith(IMAGE_SUFFIXES)}
    return {it["source"]: by_stem[it["source"].rsplit(".", 1)[0]] for it in items
            if it["source"].rsplit(".", 1)[0] in by_stem}


def _dataset_items(ds: Store, task: str, splits: tuple[str, ...]) -> tuple[list[dict[str, str]], list[str], frozenset]:
    """Work items (``split/key`` -> output name), shard paths, and the keys that keep their suffix."""
    import pyarrow.parquet as pq

    manifest = read_manifest(ds)
    if manifest["task"] != task:
        raise PredictError(f"{ds.uri_for()} is a {manifest['task']} dataset; the run was trained for {task}")
    paths = [p for s in (splits or [s for s in SPLITS if s in manifest["splits"]]) for p in shard_paths(ds, s)]
    rels, stored = [], 0
    for path in paths:
        table = pq.read_table(path, columns=["key", "split", "input_format"], filesystem=ds.fs)
        rels += [f"{s}/{k}" for k, s in zip(table["key"].to_pylist(), table["split"].to_pylist())]
        stored += len(table) - table["input_format"].null_count
    if not stored:
        raise PredictError(f"{ds.uri_for()} stores no input images (its blur is made during training): "
                           "give the photos to deblur with --images")
    names, keep = output_names(rels)
    return [{"source": r, "name": n} for r, n in names.items()], paths, keep


# ----------------------------------------------------------------------------- driver


def _resources(pc: PredictConfig) -> tuple[int, float, float]:
    """(actors, GPUs each, CPUs each), checked against the cluster so nothing waits forever."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    g = pc.gpus_per_worker if pc.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    n = pc.workers or (max(1, int(gpus // g)) if g else 1)
    c = pc.cpus_per_worker or (1.0 if g else max(0.25, min(8.0, (cpus - 1) / n)))
    if n * g > gpus:
        raise PredictError(f"{n} workers x {g:g} GPUs need {n * g:g} GPUs; the Ray cluster has {gpus:g}: "
                           "lower --workers or --gpus-per-worker (0 runs on CPUs)")
    if cpus - n * c < TASK_CPUS:
        raise PredictError(f"{n} workers x {c:g} CPUs leave under {TASK_CPUS} of the cluster's {cpus:g} CPUs to "
                           "decode and encode: lower --workers or --cpus-per-worker")
    return n, g, c


def _pipeline(pc: PredictConfig, cfg, source: Store, out: Store, run_dir: Store, ckpt: str, todo: list[dict],
              dataset: tuple[list[str], frozenset] | None, done: set[str], resources: tuple[int, float, float],
              instances: tuple[Store, dict[str, str]] | None = None):
    """The lazy Ray Dataset of the three stages over the unfinished inputs."""
    import ray

    workers, gpus, cpus = resources
    if dataset is not None:
        paths, keep = dataset
        edges = cfg.data.task == "labels2photo" and cfg.data.instance_edges
        ds = read_shards(paths, source.fs, include_paths=True, columns=["key", "split", "input"] + ["instance"] * edges)
        ds = ds.map_batches(_decode_shard_rows, batch_size=ROWS_PER_TASK, num_cpus=TASK_CPUS,
                            fn_kwargs={"done": frozenset(done), "keep": keep, "edges": edges, "cfg": cfg,
                                       "max_pixels": pc.max_pixels})
    else:
        ds = ray.data.from_items(todo).map_batches(_decode_files, batch_size=ROWS_PER_TASK, num_cpus=TASK_CPUS,
                                                   fn_kwargs={"src": source, "cfg": cfg,
                                                              "max_pixels": pc.max_pixels,
                                                              "inst": instances[0] if instances else None,
                                                              "inst_index": instances[1] if instances else None})
    ds = ds.map_batches(Predictor, batch_size=pc.batch, concurrency=workers, num_gpus=gpus, num_cpus=cpus,
                        fn_constructor_kwargs={"run_dir": run_dir, "checkpoint_rel": ckpt, "use_gpu": gpus > 0,
                                               "threads": max(1, round(cpus)), "tile": pc.tile, "batch": pc.batch,
                                               "dtype": pc.dtype, "compile_mlp": pc.compile_mlp})
    return ds.map_batches(_encode, batch_size=ROWS_PER_TASK, num_cpus=TASK_CPUS, fn_kwargs={"out": out})


def _collect(ds, total: int, max_bad: int, progress: Callable[[dict], None]) -> tuple[list[dict], list[dict], dict]:
    """Drain the pipeline: the outputs it wrote, the bad inputs, and ms per image per stage."""
    written, bad, precisions, ms = [], [], set(), {"decode_ms": 0.0, "model_ms": 0.0, "encode_ms": 0.0}
    t0, shown = time.perf_counter(), 0.0
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            for i, name in enumerate(batch["name"]):
                if batch["error"][i]:
                    bad.append({"input": str(batch["source"][i]), "reason": str(batch["error"][i])})
                    if len(bad) > max_bad:
                        listed = "; ".join(f"{b['input']}: {b['reason']}" for b in bad[:10])
                        raise PredictError(f"{len(bad)} bad inputs, more than --max-bad={max_bad}: {listed}. Fix or "
                                           "remove them, or raise --max-bad; finished outputs stay, a rerun skips them")
                    continue
                written.append({"output": str(name), "input": str(batch["source"][i]), "status": "written",
                                "width": int(batch["width"][i]), "height": int(batch["height"][i])})
                precisions.add(str(batch["precision"][i]))
                for k in ms:
                    ms[k] += float(batch[k][i])
            seconds = time.perf_counter() - t0
            if seconds - shown >= 2.0:
                shown = seconds
                progress({"done": len(written) + len(bad), "total": total, "bad": len(bad),
                          "images_per_s": len(written) / seconds})
    finally:
        batches.close()  # stops the pipeline now (its actors too), not when garbage collected
    seconds = time.perf_counter() - t0
    progress({"done": len(written) + len(bad), "total": total, "bad": len(bad),
              "images_per_s": len(written) / max(seconds, 1e-9)})
    timing = {"seconds": seconds, "images_per_s": len(written) / max(seconds, 1e-9),
              "precision": ",".join(sorted(precisions))}
    return written, bad, timing | {f"{k}_per_image": v / max(len(written), 1) for k, v in ms.items()}


def _instances(pc: PredictConfig, cfg, items: list[dict[str, str]]) -> tuple[Store, dict[str, str]] | None:
    """The instance maps of ``--images`` label maps, checked against the run; a run trained with
    instance edges given none warns once (a dataset's own instance maps come with it)."""
    import sys

    from asaptrain.infer import INSTANCE_WARNING

    edges_used = cfg.data.task == "labels2photo" and cfg.data.instance_edges
    if pc.instances and (pc.dataset or not edges_used):
        raise PredictError("--instances goes with --images, for a run trained with instance edges "
                           "(data.instance_edges = true); leave it out here")
    if not pc.instances:
        if edges_used and pc.images:
            print(f"[asaptrain] warning: {INSTANCE_WARNING}", file=sys.stderr, flush=True)
        return None
    inst = Store.open(pc.instances, s3_endpoint=pc.s3_endpoint or None)
    return inst, _instance_index(inst, items)


def predict(pc: PredictConfig, progress: Callable[[dict], None] = lambda info: None) -> dict[str, Any]:
    """Run the generator of ``pc.run`` over every unfinished input; returns the manifest it wrote.

    ``progress`` gets ``{"done", "total", "bad", "images_per_s"}`` every 2 s and at the end.
    ``--out`` is claimed first: a second `predict` into it while this one runs is refused.
    """
    from asaptrain.data.claim import claim, owner_here

    if bool(pc.dataset) == bool(pc.images):
        raise PredictError("give exactly one of --dataset and --images")
    out = Store.open(pc.out, s3_endpoint=pc.s3_endpoint or None)
    held = claim(out, "", owner_here("predict"), what=f"--out {out.uri_for()}")
    try:
        return _predict_claimed(pc, progress)
    finally:
        held.release()


def _predict_claimed(pc: PredictConfig, progress: Callable[[dict], None]) -> dict[str, Any]:
    """:func:`predict`, while this command holds the claim of ``--out``."""
    from asaptrain.infer import load_weights
    from asaptrain.train.driver import ensure_ray
    from asaptrain.train.state import STATE_FILE

    if bool(pc.dataset) == bool(pc.images):
        raise PredictError("give exactly one of --dataset and --images")
    if pc.dtype not in DTYPES:
        raise PredictError(f"--dtype must be one of {', '.join(DTYPES)}, got {pc.dtype!r}")
    run_dir, out, source = (Store.open(u, s3_endpoint=pc.s3_endpoint or None)
                            for u in (pc.run, pc.out, pc.dataset or pc.images))
    # The run reader checks the generator fits its config here: the actors would fail on it, one by one.
    weights = load_weights(run_dir, f"{pc.checkpoint.rstrip('/')}/{STATE_FILE}" if pc.checkpoint else None)
    cfg, ckpt = weights.cfg, weights.checkpoint
    del weights  # the actors load their own copies; the driver keeps none while they run
    job = {"run": run_dir.uri_for(), "checkpoint": ckpt, "input": source.uri_for(),
           "kind": "dataset" if pc.dataset else "images", "splits": list(pc.splits)}
    resuming = check_out_folder(out, source, job)
    dataset = None
    if pc.dataset:
        items, paths, keep = _dataset_items(source, cfg.data.task, pc.splits)
        dataset = (paths, keep)
    else:
        items = _image_items(source)
    instances = _instances(pc, cfg, items)
    done = finished_outputs(out) if resuming else set()
    todo = [it for it in items if it["name"] not in done]
    written, bad, timing, resources = [], [], {}, (0, 0.0, 0.0)
    if todo:
        ensure_ray()
        resources = _resources(pc)
        if not resuming:
            out.write_json(JOB_FILE, job)
        ds = _pipeline(pc, cfg, source, out, run_dir, ckpt, todo, dataset, done, resources, instances)
        written, bad, timing = _collect(ds, len(todo), pc.max_bad, progress)
    by_name = {w["output"]: w for w in written}
    outputs = [by_name.get(it["name"]) or {"output": it["name"], "input": it["source"], "status": "existing"}
               for it in items if it["name"] in by_name or it["name"] in done]
    manifest = {
        **job, "out": out.uri_for(), "task": cfg.data.task, "model": cfg.model.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in asdict(pc).items() if k in ("batch", "tile", "max_bad", "max_pixels", "dtype",
                                                                         "compile_mlp")},
        "dtype": timing.get("precision") or None,
        "workers": resources[0], "gpus_per_worker": resources[1], "cpus_per_worker": resources[2], "timing": timing,
        "counts": {"outputs": len(outputs), "written": len(written), "existing": len(outputs) - len(written),
                   "bad": len(bad)},
        "outputs": outputs, "bad": bad,
    }
    out.write_json(MANIFEST, manifest)
    return manifest
