"""Score a run's generator on a whole dataset split at full size: what `asaptrain evaluate` runs.

    asaptrain evaluate --run s3://bucket/store/runs/NAME --dataset s3://bucket/store/datasets/gopro --fid
    asaptrain evaluate --run ./asaptrain-store/runs/NAME --dataset ./asaptrain-store/datasets/x --local

Every image of the split, whole, in fp32 unless asked otherwise (``scorer.py`` says exactly how
each number is computed; :data:`PROTOCOL` is that text, written beside the numbers). Over Ray
Data, like `predict`: shard rows decode in CPU tasks, model workers (one generator each, on a
GPU when the cluster has them) score, the driver averages and computes FID from the features.
``--local`` runs the same stages in this process, without Ray.

Everything is checked before the first image: the split, the dataset and its task, the run, its
checkpoint and that the generator fits it, that no command is writing the run (run.json status),
and that ``eval-SPLIT.json`` is not there already (``overwrite`` replaces it). The result goes
into the run directory in one atomic write (temp name then rename, or one PUT), last.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from asaptrain.data.shards import SPLITS, read_manifest, read_shards, shard_paths
from asaptrain.data.store import Store, absolute_uri, resolve_dataset
from asaptrain.errors import UserError

ROWS_PER_TASK = 2
"""Rows per decode call: full-size images are large."""
TASK_CPUS = 0.5
"""Logical CPUs of one decode task."""
RUN_BUSY = ("running", "starting", "importing")
"""run.json statuses of a run that another command is still writing."""
PROTOCOL = {
    "images": "every image of the split, once; no crop, no resize, no flip",
    "resolution": "each image at its stored size; a size the generator cannot take is padded on the bottom and "
                  "right to its size multiple (and minimum size), by reflection (replication when the image is "
                  "smaller than the pad), and the output cropped back; the whole image in one forward pass, no tiles",
    "colour": "RGB, 8 bits per channel",
    "rounding": "output in [-1, 1] clamped, mapped to [0, 255] and rounded half up to uint8, as the PNG `infer` "
                "writes; compared with the stored 8-bit target",
    "psnr": "per image: 10 log10(255^2 / MSE), MSE over all pixels and the 3 channels in float64; then the mean "
            "over images",
    "ssim": "per image: Wang et al. 2004 in float64, Gaussian window 11 with sigma 1.5, K1 0.01, K2 0.03, data "
            "range 255, on each RGB channel, the SSIM map's mean over the valid region (the image less a 5-pixel "
            "border, no padding) and over channels; then the mean over images",
    "fid": "Inception-v3 pool features (2048) of every 8-bit output and target, resized to 299x299 as torchmetrics "
           "does (bilinear, antialiased), weights pt_inception-2015-12-05; mean and unbiased covariance in float64; "
           "the Frechet distance over the whole split",
    "input": "deblurring: the stored blurred image; a dataset without one: its target blurred at eval.blur_strength "
             "by kernels seeded from the row key, rounded to 8 bits",
    "weights": "the EMA generator when the run kept one, in eval mode",
}


class EvaluateError(UserError):
    """A split, dataset, run or output that `evaluate` cannot use."""


@dataclass
class EvaluateConfig:
    """One `asaptrain evaluate` (a field per flag)."""

    run: str
    """Run directory URI (its config.toml and checkpoints), trained or imported."""
    dataset: str
    """A converted dataset: a URI, or a path relative to ``store``."""
    split: str = "val"
    """The split to score, whole (GoPro's test pairs are stored as ``val``)."""
    fid: bool = False
    """Compute FID over the split (Inception weights from the store's weights folder)."""
    json: str = ""
    """Also write the full detail (per-image rows) here: a path or URI."""
    checkpoint: str = ""
    """Checkpoint directory inside the run [empty: the newest that loads]."""
    store: str = ""
    """Store whose ``weights/`` holds the Inception file [empty: the run's own store]."""
    local: bool = False
    """Run in this process, without Ray."""
    workers: int = 0
    """Model workers [0: one per GPU of the cluster, or 1 without GPUs]."""
    gpus_per_worker: float | None = None
    """GPUs per worker [None: 1 when the cluster has GPUs, else 0: CPU]."""
    cpus_per_worker: float = 0.0
    """Logical CPUs per worker [0: as `predict` chooses]."""
    batch: int = 1
    """Images of one size per forward pass (1: as the papers time it)."""
    dtype: str = "fp32"
    """fp32 (the papers' numbers), bf16 or auto (``asaptrain.precision``)."""
    overwrite: bool = False
    """Replace an existing eval-SPLIT.json (and ``json``)."""
    s3_endpoint: str = ""
    """S3-compatible endpoint of every s3:// URI here [empty: AWS_ENDPOINT_URL*]."""


def result_name(split: str) -> str:
    return f"eval-{split}.json"


# ----------------------------------------------------------------------------- checks


def _open(uri: str, ec: EvaluateConfig) -> Store:
    return Store.open(absolute_uri(uri), s3_endpoint=ec.s3_endpoint or None)


def _home_store(ec: EvaluateConfig, run_dir: Store) -> Store | None:
    """``--store``, or the store a run directory ``STORE/runs/NAME`` sits in (None when it is not one)."""
    if ec.store:
        return _open(ec.store, ec)
    parts = absolute_uri(ec.run).rstrip("/").rsplit("/", 2)
    return _open(parts[0], ec) if len(parts) == 3 and parts[1] == "runs" else None


def _check_not_busy(run_dir: Store) -> dict:
    """run.json (or {}); refused while it says another command is writing the run."""
    info = run_dir.read_json("run.json") if run_dir.exists("run.json") else {}
    if str(info.get("status")) in RUN_BUSY:
        raise EvaluateError(f"{run_dir.uri_for('run.json')} says status {info.get('status')!r}: another command is "
                            "writing this run; evaluate it when it has finished (or stopped), or name one of its "
                            "checkpoints in a finished run")
    return info


def _generator_fit(cfg, weights: dict, where: str) -> None:
    import torch

    from asaptrain.train.nets import build_generator

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_generator(cfg).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    bad = sorted(want.keys() ^ have.keys()) + sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    if bad:
        raise EvaluateError(f"{where}: the generator's weights do not fit the run's config.toml "
                            f"({len(bad)} keys missing, extra or of another shape, e.g. {', '.join(bad[:3])})")


def _check(ec: EvaluateConfig) -> dict[str, Any]:
    """Everything evaluate needs, checked before any image is read; nothing is written."""
    from asaptrain.infer import load_weights
    from asaptrain.precision import DTYPES
    from asaptrain.train.metrics import find_inception_weights
    from asaptrain.train.state import STATE_FILE

    if ec.split not in SPLITS:
        raise EvaluateError(f"--split {ec.split!r} is not a split: use one of {', '.join(SPLITS)}")
    if ec.dtype not in DTYPES:
        raise EvaluateError(f"--dtype must be one of {', '.join(DTYPES)}, got {ec.dtype!r}")
    run_dir = _open(ec.run, ec)
    home = _home_store(ec, run_dir)
    data = resolve_dataset(ec.dataset, home) if home is not None else _open(ec.dataset, ec)
    manifest = read_manifest(data)
    rows = int((manifest["splits"].get(ec.split) or {}).get("rows") or 0)
    if not rows:
        have = ", ".join(f"{s} ({t.get('rows')} rows)" for s, t in manifest["splits"].items()) or "none"
        raise EvaluateError(f"{data.uri_for()} has no {ec.split!r} split (its splits: {have}); choose one with --split")
    info = _check_not_busy(run_dir)
    ckpt = f"{ec.checkpoint.rstrip('/')}/{STATE_FILE}" if ec.checkpoint else None
    if ckpt and not run_dir.exists(ckpt):
        raise EvaluateError(f"{run_dir.uri_for(ckpt)} does not exist: name a checkpoint directory of the run")
    weights = load_weights(run_dir, ckpt)  # config.toml and a checkpoint that loads, or a UserError naming them
    if manifest["task"] != weights.cfg.data.task:
        raise EvaluateError(f"{data.uri_for()} is a {manifest['task']} dataset; the run was trained for "
                            f"{weights.cfg.data.task}")
    _generator_fit(weights.cfg, weights.state_dict, run_dir.uri_for(weights.checkpoint))
    out = {"run_dir": run_dir, "data": data, "manifest": manifest, "rows": rows, "info": info, "weights": weights,
           "fid": None, "fid_reason": "not requested (pass --fid)"}
    if run_dir.exists(result_name(ec.split)) and not ec.overwrite:
        raise EvaluateError(f"{run_dir.uri_for(result_name(ec.split))} exists; pass --overwrite to replace it")
    if ec.json and _json_target(ec)[0].exists(_json_target(ec)[1]) and not ec.overwrite:
        raise EvaluateError(f"{ec.json} exists; pass --overwrite to replace it, or choose another --json")
    if ec.fid:
        path, reason = find_inception_weights(weights.cfg.eval.inception_weights, home)
        out["fid"], out["fid_reason"] = ((home, weights.cfg.eval.inception_weights), None) if path else (None, reason)
    weights.state_dict = {}  # the workers load their own copies; the driver keeps none
    return out


def _json_target(ec: EvaluateConfig) -> tuple[Store, str]:
    uri = absolute_uri(ec.json).rstrip("/")
    parent, _, name = uri.rpartition("/")
    return _open(parent or "/", ec), name


# ----------------------------------------------------------------------------- running


def _local_batches(data: Store, split: str, columns: list[str]):
    import pyarrow.parquet as pq

    for path in shard_paths(data, split):
        pf = pq.ParquetFile(path, filesystem=data.fs)
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g, columns=columns).to_pydict()
            for start in range(0, len(table["key"]), ROWS_PER_TASK):
                yield {**{k: v[start:start + ROWS_PER_TASK] for k, v in table.items()},
                       "path": [path] * len(table["key"][start:start + ROWS_PER_TASK])}


def _batches(ec: EvaluateConfig, checked: dict, cfg, columns: list[str], edges: bool):
    """Scored batches (``Scorer`` columns), from Ray Data or from this process; and the workers used."""
    from asaptrain.scorer import Scorer, decode_rows

    run_dir, data, ckpt = checked["run_dir"], checked["data"], checked["weights"].checkpoint
    if ec.local:
        scorer = Scorer(run_dir, ckpt, use_gpu=_local_gpu(), threads=0, dtype=ec.dtype, fid=checked["fid"],
                        batch=ec.batch)
        return (scorer(decode_rows(b, cfg, edges)) for b in _local_batches(data, ec.split, columns)), (1, 0.0, 0.0)
    from asaptrain.predict import PredictConfig, _resources
    from asaptrain.train.driver import ensure_ray

    ensure_ray()
    resources = _resources(PredictConfig(run=ec.run, out="", workers=ec.workers, gpus_per_worker=ec.gpus_per_worker,
                                         cpus_per_worker=ec.cpus_per_worker))
    workers, gpus, cpus = resources
    ds = read_shards(shard_paths(data, ec.split), data.fs, include_paths=True, columns=columns)
    ds = ds.map_batches(decode_rows, batch_size=ROWS_PER_TASK, num_cpus=TASK_CPUS, fn_kwargs={"cfg": cfg, "edges": edges})
    ds = ds.map_batches(Scorer, batch_size=ec.batch, concurrency=workers, num_gpus=gpus, num_cpus=cpus,
                        fn_constructor_kwargs={"run_dir": run_dir, "checkpoint_rel": ckpt, "use_gpu": gpus > 0,
                                               "threads": max(1, round(cpus)), "dtype": ec.dtype,
                                               "fid": checked["fid"], "batch": ec.batch})
    return ds.iter_batches(batch_size=None, batch_format="numpy"), resources


def _local_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _score_all(ec: EvaluateConfig, checked: dict, progress: Callable[[dict], None]):
    cfg = checked["weights"].cfg
    edges = cfg.data.task == "labels2photo" and cfg.data.instance_edges
    columns = ["key", "split", "input", "target"] + ["instance"] * edges
    rows, real, fake, t0, shown = [], [], [], time.perf_counter(), 0.0
    batches, resources = _batches(ec, checked, cfg, columns, edges)
    try:
        for batch in batches:
            for i, name in enumerate(batch["name"]):
                if batch["error"][i]:  # every image or no number: a skipped image changes the mean
                    raise EvaluateError(f"{batch['source'][i]}: {batch['error'][i]}; fix or reconvert that shard "
                                        "(`asaptrain data verify`): evaluate scores every image of the split")
                rows.append({"key": str(name).split("/", 1)[1], **{k: float(batch[k][i]) for k in (
                    "height", "width", "psnr", "ssim", "input_psnr", "input_ssim", "model_ms", "metric_ms")},
                    "dtype": str(batch["dtype"][i]), "device": str(batch["device"][i])})
                if checked["fid"] is not None:
                    real.append(np.asarray(batch["real_features"][i]))
                    fake.append(np.asarray(batch["fake_features"][i]))
            if time.perf_counter() - shown >= 2.0:
                shown = time.perf_counter()
                progress({"done": len(rows), "total": checked["rows"], "seconds": shown - t0})
    finally:
        if hasattr(batches, "close"):
            batches.close()  # stops the pipeline and its workers now
    seconds = time.perf_counter() - t0
    progress({"done": len(rows), "total": checked["rows"], "seconds": seconds})
    return rows, real, fake, seconds, resources


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows]
    if not values or any(v != v for v in values):  # NaN: not computed for this task
        return None
    return float(np.mean(values))


def evaluate(ec: EvaluateConfig, progress: Callable[[dict], None] = lambda info: None) -> dict[str, Any]:
    """Score ``ec.run`` on ``ec.split`` of ``ec.dataset``; write and return ``eval-SPLIT.json``."""
    from asaptrain.data.claim import claim, owner_here

    checked = _check(ec)
    # The run is claimed while it is scored: a train or another evaluate of it is refused meanwhile.
    held = claim(checked["run_dir"], "", owner_here("evaluate"), what=f"run {checked['run_dir'].uri_for()}")
    try:
        return _evaluate_claimed(ec, checked, progress)
    finally:
        held.release()


def _evaluate_claimed(ec: EvaluateConfig, checked: dict, progress: Callable[[dict], None]) -> dict[str, Any]:
    """:func:`evaluate`, while this command holds the run's claim."""
    from asaptrain.scorer import fid_from_features
    from asaptrain.train.run_files import json_safe

    run_dir, weights, cfg = checked["run_dir"], checked["weights"], checked["weights"].cfg
    rows, real, fake, seconds, (workers, gpus, cpus) = _score_all(ec, checked, progress)
    if len(rows) != checked["rows"]:
        raise EvaluateError(f"scored {len(rows)} images of {checked['rows']} in {checked['data'].uri_for()} split "
                            f"{ec.split!r} (manifest.json); run `asaptrain data verify` on the dataset")
    rows.sort(key=lambda r: r["key"])
    fid, reason = None, checked["fid_reason"]
    if checked["fid"] is not None:
        fid, reason = (fid_from_features(np.stack(real), np.stack(fake)), None) if len(rows) >= 2 else \
            (None, f"FID needs at least 2 images, the split has {len(rows)}")
    psnr, infinite = _mean(rows, "psnr"), sum(r["psnr"] == float("inf") for r in rows)
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[f"{int(r['height'])}x{int(r['width'])}"] = sizes.get(f"{int(r['height'])}x{int(r['width'])}", 0) + 1
    result = {
        "kind": "evaluation", "split": ec.split, "run": run_dir.uri_for(), "checkpoint": weights.checkpoint,
        "step": weights.step, "weights": weights.source, "model": cfg.model.name, "task": cfg.data.task,
        "dataset": checked["data"].uri_for(), "dataset_source": checked["manifest"].get("source"),
        "images": len(rows), "resolution": sizes, "dtype": ",".join(sorted({r["dtype"] for r in rows})),
        "device": ",".join(sorted({r["device"] for r in rows})),
        "mode": "local" if ec.local else "ray", "workers": workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus,
        "batch": ec.batch, "psnr": psnr, "ssim": _mean(rows, "ssim"),
        "psnr_note": f"{infinite} image(s) equal their targets (infinite PSNR)" if infinite else None,
        "input_psnr": _mean(rows, "input_psnr"), "input_ssim": _mean(rows, "input_ssim"),
        "fid": fid, "fid_reason": reason,
        "ms_per_image": _mean(rows, "model_ms"), "metric_ms_per_image": _mean(rows, "metric_ms"),
        "seconds": seconds, "images_per_s": len(rows) / max(seconds, 1e-9),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "protocol": PROTOCOL,
    }
    result = json_safe(result)
    _check_not_busy(run_dir)  # again: a command may have started writing the run meanwhile
    if ec.json:
        target, name = _json_target(ec)
        target.write_json(name, {**result, "per_image": json_safe(rows)})
    run_dir.write_json(result_name(ec.split), result)
    return result


__all__ = ["EvaluateConfig", "EvaluateError", "evaluate", "result_name", "PROTOCOL"]
