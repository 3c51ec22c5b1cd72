"""The input pipeline: Parquet shards -> Ray Data -> decoded, cropped uint8 batches -> model tensors.

Ray Data tasks (CPU) read only the columns the task needs, decode, resize, crop and flip
(``decode.py``), and hand over uint8 arrays; the training device does the rest (one-hot labels, synthetic blur,
scaling to [-1, 1]), where it is cheap and a quarter of the bytes travel::

    ds = train_dataset(cfg, store)                    # driver: TorchTrainer(datasets={"train": ds})
    for batch in TrainBatches(ray.train.get_dataset_shard("train"), cfg, device, batch_size):
        x, y = to_model_batch(batch, cfg, schedule.strength(step))

Dataset rows: ``target`` (H, W, 3) uint8; ``input`` (H, W) uint8 label ids (labels2photo) or
(H, W, 3) uint8 stored input photo (absent when blur is synthesized, ``data.blur``); ``instance_edge``
(H, W) uint8 0/1 with ``data.instance_edges``; ``key_id`` int64, a stable hash of the key
(strings cannot reach ``iter_torch_batches``). torch is imported only where needed: decode
tasks run numpy + PIL, so Ray's CPU workers skip torch's import (1.6 s, ~300 MB each).

Randomness: shard files are shuffled per epoch from ``train.seed`` (Ray reseeds each
execution); crops and flips draw from a generator keyed by (``train.seed``, the dataset's
execution count, the row's key): reproducible for a seed, new every epoch. A restarted
worker group re-executes the dataset, so its crops may differ from the lost run's.

Bad data: an image that does not decode (or is smaller than the crop, or whose input and
target sizes differ) is logged as a warning naming its shard and key, and skipped. Counts
meet in the cluster's small bad-image ledger (``bad_images.py``), which a decode task calls
(and starts) only when it meets a bad image: the common path costs nothing, not even a
process, and ``data.max_bad_images`` holds across tasks, workers and epochs (an image counts
once however often it is read). Past the limit the task raises :class:`DataError` listing
every bad image, and the run stops.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow.parquet as pq
from ray.data import DataContext, FileShuffleConfig

from asaptrain.config.schema import Config
from asaptrain.data.bad_images import BadImageLog
from asaptrain.data.decode import DataError, Decoder, decode_rows, key_id
from asaptrain.data.shards import image_size_range, read_manifest, read_shards, shard_paths
from asaptrain.data.store import resolve_dataset

if TYPE_CHECKING:
    import torch

log = logging.getLogger("asaptrain.data")

VAL_BLUR_SEED = 20180711
"""Seed of the validation blur: fixed, so every run and model is scored on the same inputs."""
MAP_BATCH_BYTES = 64 * 2**20
"""Decoded bytes per ``map_batches`` call (its row count follows from the crop size)."""


def _stored_input(paths: list[str], fs) -> bool:
    """Whether a dataset stores input images (its first shard's input_format is set)."""
    pf = pq.ParquetFile(paths[0], filesystem=fs)
    fmt = pf.read_row_group(0, columns=["input_format"]).column(0) if pf.num_row_groups else None
    return fmt is not None and fmt.null_count < len(fmt)


def reads_stored_input(cfg: Config, ds_store, paths: list[str], validation: bool = False) -> bool:
    """Whether the model's inputs are the shards' stored input images (else the targets are blurred).

    Label maps and plain image pairs are always stored. Deblurring follows ``data.blur``:
    "stored" needs stored inputs, "synthetic" blurs the sharp targets in training but validates
    on stored real pairs where the dataset has them (the study's protocol: train on synthetic
    blur, score on real blur), "auto" uses stored inputs where there are any. DataError when the
    config needs stored inputs that the dataset lacks.
    """
    d = cfg.data
    if d.task == "labels2photo":
        return True
    has = _stored_input(paths, ds_store.fs)
    if d.task == "image2image" or d.blur == "stored" or (d.blur == "auto" and cfg.curriculum.kind == "none"):
        if not has:
            why = ("data.task='image2image' reads stored input images" if d.task == "image2image" else
                   "data.blur='stored'" if d.blur == "stored" else "curriculum.kind='none' blurs nothing")
            raise DataError(f"{ds_store.uri_for()} stores only target images (no input column), but {why}: convert "
                            "input/target pairs (`asaptrain data pairs`), or set data.blur='synthetic' with a "
                            "curriculum to blur the targets")
        return True
    if d.blur == "synthetic" and not validation:
        return False
    if has and d.blur == "auto" and not validation:
        log.warning("%s stores blurred inputs: training reads them, so curriculum.kind=%r does not act (set "
                    "data.blur='synthetic' to blur the sharp targets, or data.blur='stored' and "
                    "curriculum.kind='none' to say so)", ds_store.uri_for(), cfg.curriculum.kind)
    return has


# ----------------------------------------------------------------------------- Ray Data


def new_bad_image_log(limit: int) -> BadImageLog:
    """A fresh bad-image count for one dataset, allowing ``limit`` distinct bad images."""
    return BadImageLog.new(limit)


def bad_images(bad_log: BadImageLog) -> list[dict[str, str]]:
    """The bad images a log has recorded: dicts with shard, key, reason."""
    return bad_log.entries()


def _decode_batch(batch: dict[str, np.ndarray], decoder: Decoder, bad_log, limit: int, scheme: str):
    """The map_batches function: encoded rows in, decoded uint8 rows out, bad rows skipped."""
    epoch = getattr(DataContext.get_current(), "_execution_idx", 0)  # counts this dataset's executions
    items = ((scheme + str(batch["path"][i]), {c: batch[c][i] for c in decoder.columns})
             for i in range(len(batch["key"])))
    return decode_rows(decoder, items, epoch, bad_log.add, limit)


def _resized(size: tuple[int, int], bound: tuple[int, int], load_w: int, load_h: int) -> tuple[int, int]:
    """An image's (width, height) after ``data.load_*``; ``bound`` is the other extreme of the
    split's sizes, which bounds the aspect ratio where only one load side is set."""
    (w, h), (bw, bh) = size, bound
    if load_w and load_h:
        return load_w, load_h
    if load_w:
        return load_w, max(1, round(h * load_w / bw))
    if load_h:
        return max(1, round(w * load_h / bh)), load_h
    return w, h


def check_crop_and_batch(cfg: Config, ds_store) -> None:
    """DataError, before any worker starts, when ``data.crop_*`` exceeds every image of a split
    (after ``data.load_*``) or the train split has fewer rows than ``train.batch_size``; a note
    when some images are smaller than the crop (each is then a bad image, see data.max_bad_images)."""
    d = cfg.data
    manifest = read_manifest(ds_store)
    rows = int((manifest["splits"].get("train") or {}).get("rows") or 0)
    world = max(1, cfg.scaling.num_workers)
    if rows // world < cfg.train.batch_size // world:
        raise DataError(f"train.batch_size = {cfg.train.batch_size} needs that many training rows ({world} worker(s) "
                        f"share them), {ds_store.uri_for()} has {rows}: lower train.batch_size or add data")
    for split in [s for s in ("train", "val") if s in manifest["splits"]]:
        small, large = image_size_range(ds_store, split)
        (sw, sh), (lw, lh) = _resized(small, large, d.load_width, d.load_height), \
            _resized(large, small, d.load_width, d.load_height)
        loaded = f" after data.load_width/load_height = {d.load_width}/{d.load_height}" if d.load_width or d.load_height else ""
        for field, crop, biggest in (("data.crop_width", d.crop_width, lw), ("data.crop_height", d.crop_height, lh)):
            if crop > biggest:
                raise DataError(f"{field} = {crop} is larger than every {split} image of {ds_store.uri_for()} (at most "
                                f"{lw}x{lh} pixels{loaded}): set data.crop_width/crop_height to at most {lw}x{lh}, "
                                "or data.load_width/load_height")
        if d.crop_width > sw or d.crop_height > sh:
            log.warning("some %s images of %s are smaller than the crop %dx%d (smallest %dx%d%s): each is skipped as a "
                        "bad image, up to data.max_bad_images", split, ds_store.uri_for(), d.crop_width, d.crop_height,
                        sw, sh, loaded)


def train_dataset(cfg: Config, store, bad_log=None, ds_store=None):
    """A lazy Ray Dataset of decoded training rows of ``cfg.data.dataset`` (relative to ``store``).

    ``ds_store`` gives the shard directory directly instead (a Store). ``bad_log``
    (``new_bad_image_log``) lets the caller read the skipped images; by default each dataset
    gets its own.
    """
    ds_store = ds_store or resolve_dataset(cfg.data.dataset, store)
    paths = shard_paths(ds_store, "train")
    decoder = Decoder.from_config(cfg, reads_stored_input(cfg, ds_store, paths))
    bad_log = bad_log if bad_log is not None else new_bad_image_log(cfg.data.max_bad_images)
    ds = read_shards(paths, ds_store.fs, columns=decoder.columns, include_paths=True,
                     shuffle=FileShuffleConfig(seed=cfg.train.seed))
    rows = max(1, min(256, MAP_BATCH_BYTES // (cfg.data.crop_height * cfg.data.crop_width * 8)))
    ds = ds.map_batches(_decode_batch, batch_format="numpy", batch_size=rows, fn_kwargs={
        "decoder": decoder, "bad_log": bad_log, "limit": cfg.data.max_bad_images,
        "scheme": "s3://" if ds_store.is_s3 else ""})
    # A decode task's DataError reaches the consumer as itself (the cause of Ray's task error),
    # not wrapped in a UserCodeException that keeps only its text.
    ds.context.raise_original_map_exception = True
    return ds


class TrainBatches:
    """One worker's training batches, epoch after epoch (``epoch``, ``batch_in_epoch`` say where)."""

    def __init__(self, ds_shard, cfg: Config, device, batch_size: int, epoch_seed: int = 0,
                 start_epoch: int = 0, epochs: int | None = None, ds_store=None):
        import torch

        self.ds, self.cfg, self.batch_size, self.epoch_seed = ds_shard, cfg, batch_size, epoch_seed
        self.ds_store = ds_store
        """The Store holding the dataset (its shards): a failed read is named with its endpoint and bucket."""
        self.device = "auto" if isinstance(device, str) and device == "auto" else str(torch.device(device))
        self.epoch, self.end, self.batch_in_epoch = start_epoch, None if epochs is None else start_epoch + epochs, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while self.end is None or self.epoch < self.end:
            self.batch_in_epoch = 0
            try:
                for batch in self.ds.iter_torch_batches(
                    batch_size=self.batch_size, prefetch_batches=self.cfg.data.prefetch_batches,
                    local_shuffle_buffer_size=self.cfg.data.shuffle_buffer_rows or None,
                    local_shuffle_seed=self.epoch_seed + self.epoch, drop_last=True, device=self.device,
                ):
                    self.batch_in_epoch += 1
                    yield batch
            except Exception as exc:
                found = _data_error(exc) or self._read_error(exc)
                if found is None:
                    raise
                raise found from None
            if self.batch_in_epoch == 0:
                raise DataError(f"epoch {self.epoch} gave this worker no full batch of {self.batch_size} rows "
                                f"from {self.cfg.data.dataset!r}: lower train.batch_size or add data")
            self.epoch += 1


    def _read_error(self, exc: BaseException):
        """A StoreError for a read task that failed on the store itself (pyarrow's OSError inside
        Ray's task error, after its own retries and the filesystem's storage.outage_s): Ray's text
        names neither the endpoint nor what to check."""
        found = [e for e in _causes(exc) if isinstance(e, OSError)][-1:]
        if self.ds_store is None or not found:
            return None
        return self.ds_store.describe_failure(found[0], f"reading the training shards of {self.cfg.data.dataset!r}")


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and what it wraps, outermost first: a RayTaskError's ``cause`` (the original
    exception; the wrapper is an instance of its class too), else ``__cause__``."""
    while exc is not None:
        yield exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__


def _data_error(exc: BaseException) -> DataError | None:
    """The DataError a decode task raised, found in what Ray hands over (a task error whose
    ``cause`` is the original exception, possibly nested), or None."""
    found = [e for e in _causes(exc) if isinstance(e, DataError)][-1:]
    return DataError(*found[0].args) if found else None


# ----------------------------------------------------------------------------- model tensors


def _unit(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_model_batch(batch: dict[str, torch.Tensor], cfg: Config, blur_strength: float | torch.Tensor | None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator input ``x`` and target ``y`` (NCHW float32 in [-1, 1]) on the batch's device.

    labels2photo: ``x`` is one-hot over ``data.num_labels`` channels (the decoder refuses ids
    outside the range), plus the instance-edge channel last with ``data.instance_edges``.
    image2image: ``x`` is the stored input image. deblur: ``x`` is the stored blurred photo
    when the decoder read one (``reads_stored_input``), else the target blurred with fresh
    kernels at ``blur_strength`` (float or per-sample tensor), then noise/JPEG when
    ``data.blur_noise_std`` / ``data.blur_jpeg_quality`` are set.
    """
    import torch

    from asaptrain.data.blur import Degrade, blur_and_degrade

    d, y = cfg.data, _unit(batch["target"])
    if d.task == "labels2photo":
        ids = batch["input"].long()
        onehot = torch.zeros(ids.shape[0], d.num_labels, *ids.shape[1:], device=ids.device)
        onehot.scatter_(1, ids.clamp(0, d.num_labels - 1)[:, None], (ids < d.num_labels)[:, None].float())
        if d.instance_edges:
            onehot = torch.cat([onehot, batch["instance_edge"][:, None].float()], dim=1)
        return onehot, y
    if "input" in batch:
        return _unit(batch["input"]), y
    if blur_strength is None:
        raise ValueError("to_model_batch needs a blur_strength: this dataset stores no blurred inputs")
    sharp = batch["target"].permute(0, 3, 1, 2).float() / 255
    degrade = Degrade(d.blur_noise_std, d.blur_jpeg_quality)
    return blur_and_degrade(sharp, blur_strength, generator, degrade) * 2 - 1, y


# ----------------------------------------------------------------------------- validation


def _shard_rows(fs, paths: list[str], columns: list[str], backwards: bool) -> Iterator[tuple[str, dict]]:
    """(path, row) of the shards in order, or from the last row back; one row group in memory."""
    order = (lambda seq: list(reversed(seq))) if backwards else list
    for path in order(paths):
        pf = pq.ParquetFile(path, filesystem=fs)
        for g in order(range(pf.num_row_groups)):
            for row in order(pf.read_row_group(g, columns=columns).to_pylist()):
                yield path, row


def validation_raw(cfg: Config, store, max_images: int | None = None) -> dict[str, torch.Tensor]:
    """The fixed validation subset as uint8 CPU tensors (rows like ``train_dataset``'s).

    ``eval.images`` rows (fewer with ``max_images``): the first of split "val", or the last of
    "train" when there is no val split (validation then overlaps training: a warning says so).
    Centre crops, no flips. Deblur rows without a stored blurred photo get ``input`` blurred
    here, image i by a generator seeded from (VAL_BLUR_SEED, i) at ``eval.blur_strength``, and
    rounded to uint8 like a stored one: every call, run and model sees the same inputs.
    """
    import torch

    from asaptrain.data.blur import Degrade, blur_and_degrade

    ds_store = resolve_dataset(cfg.data.dataset, store)
    has_val = read_manifest(ds_store)["splits"].get("val", {}).get("rows", 0) > 0
    if not has_val:
        log.warning("%s has no val split: validating on the last rows of train", ds_store.uri_for())
    paths = shard_paths(ds_store, "val" if has_val else "train")
    decoder = Decoder.from_config(cfg, reads_stored_input(cfg, ds_store, paths, validation=True))
    items = ((ds_store.uri_for(p.rsplit("/", 1)[-1]), row)
             for p, row in _shard_rows(ds_store.fs, paths, decoder.columns, backwards=not has_val))
    limit, want = cfg.data.max_bad_images, min(cfg.eval.images, max_images or cfg.eval.images)
    batch = decode_rows(decoder, items, None, lambda bad: bad if len(bad) > limit else None, limit, want=want)
    if not len(batch["key_id"]):
        raise DataError(f"no usable validation images in {ds_store.uri_for()}")
    out = {k: torch.from_numpy(v if has_val else v[::-1].copy()) for k, v in batch.items()}
    if "input" not in out:
        degrade, blurred = Degrade(cfg.data.blur_noise_std, cfg.data.blur_jpeg_quality), []
        for i, img in enumerate(out["target"]):
            g = torch.Generator().manual_seed(VAL_BLUR_SEED * 1_000_003 + i)
            b = blur_and_degrade(img.permute(2, 0, 1)[None] / 255, cfg.eval.blur_strength, g, degrade)
            blurred.append((b[0].permute(1, 2, 0) * 255).round().to(torch.uint8))
        out["input"] = torch.stack(blurred)
    return out


def validation_batches(cfg: Config, store, device=None, batch_size: int | None = None,
                       max_images: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The subset of ``validation_set``, ``(x, y)`` per ``eval.batch_size`` images: for sets whose
    one-hot inputs would not fit in memory at once (500 Cityscapes maps at 256x512: 9 GB)."""
    raw = validation_raw(cfg, store, max_images)
    step = batch_size or cfg.eval.batch_size
    for i in range(0, len(raw["target"]), step):
        yield to_model_batch({k: v[i: i + step].to(device or "cpu") for k, v in raw.items()}, cfg, None)


def validation_set(cfg: Config, store, device=None, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of the fixed validation subset on ``device``, as ``to_model_batch`` makes them."""
    return next(validation_batches(cfg, store, device, batch_size=2**31, max_images=max_images))


__all__ = ["DataError", "Decoder", "train_dataset", "TrainBatches", "to_model_batch",
           "validation_set", "validation_batches", "validation_raw", "new_bad_image_log", "bad_images",
           "key_id", "VAL_BLUR_SEED"]
