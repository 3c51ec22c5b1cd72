"""The Ray Data input pipeline under a real Ray (2 CPUs), on a local store and on S3 over loopback."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from asaptrain.config.schema import Config, CurriculumConfig, DataConfig, EvalConfig, TrainConfig
from asaptrain.data.pipeline import (
    DataError,
    bad_images,
    TrainBatches,
    key_id,
    new_bad_image_log,
    to_model_batch,
    train_dataset,
    validation_batches,
    validation_set,
)
from asaptrain.data.shards import ShardError, ShardWriter
from asaptrain.data.store import Store, StoreError

H, W = 40, 64  # stored image size
RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

CROP = (24, 32)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def coded_photo(i: int) -> np.ndarray:
    """R = 3x, G = 3y: every pixel says where it came from; B = 10i on a 1-pixel checkerboard
    (+100 on odd squares), a texture blur cannot leave alone."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([3 * xx, 3 * yy, 10 * i + 100 * ((xx + yy) % 2)], axis=-1).astype(np.uint8)


def label_map() -> np.ndarray:
    return np.repeat((np.arange(W) // 8 + 20)[None], H, axis=0).astype(np.uint8)  # ids 20..27 by column


def instance_map() -> np.ndarray:
    inst = np.full((H, W), 7, dtype=np.uint16)
    inst[10:30, 20:44] = 26001  # one car
    return inst


def make_dataset(store: Store, task: str, n: int, corrupt=(), stored_input=False, val=0, per_shard=4):
    for split, count in (("train", n), ("val", val)):
        if not count:
            continue
        w = ShardWriter(store, split, task=task, source="test")
        for i in range(count):
            key = f"{split}-{i:03d}"
            row = {"key": key, "target": png(coded_photo(i)), "target_format": "png", "width": W, "height": H}
            if task == "labels2photo":
                row.update(input=png(label_map()), input_format="png", instance=png(instance_map()))
            elif stored_input:
                row.update(input=png(255 - coded_photo(i)), input_format="png")
            if key in corrupt:
                row["target"] = b"\x89PNG\r\n\x1a\n this is not a picture"
            w.write(row)
            if i % per_shard == per_shard - 1:
                w.flush()
        w.close()
    return store


def config(task="deblur", **data) -> Config:
    model = "deblurgan" if task == "deblur" else "asapnet"
    cfg = Config(
        data=DataConfig(task=task, dataset="ds", crop_height=CROP[0], crop_width=CROP[1], shuffle_buffer_rows=4,
                        **data),
        train=TrainConfig(seed=3), eval=EvalConfig(images=4, blur_strength=0.6),
        curriculum=CurriculumConfig(),
    )
    cfg.model.name = model
    return cfg


def crop_of(target: torch.Tensor) -> tuple[int, int, bool]:
    """(top, left, flipped) of a crop of ``coded_photo``."""
    flipped = bool(target[0, 0, 0] > target[0, -1, 0])
    left = int(target[0, -1 if flipped else 0, 0]) // 3
    return int(target[0, 0, 1]) // 3, left, flipped


def consume_split(ds, n: int, epochs: int) -> list[dict[int, list]]:
    """Per epoch, key id -> crops seen across ``n`` concurrent consumers of streaming_split (no drop)."""
    its = ds.streaming_split(n, equal=True)
    seen = []
    for _ in range(epochs):
        crops: list[list[tuple[int, tuple]]] = [[] for _ in range(n)]

        def run(i):
            for b in its[i].iter_torch_batches(batch_size=4, drop_last=False):
                assert b["target"].shape[1:] == (*CROP, 3) and b["target"].dtype == torch.uint8
                crops[i] += [(k, crop_of(t)) for k, t in zip(b["key_id"].tolist(), b["target"])]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert all(crops), "each consumer gets rows"
        epoch: dict[int, list] = {}
        for k, c in crops[0] + crops[1]:
            epoch.setdefault(k, []).append(c)
        seen.append(epoch)
    return seen


@pytest.fixture(scope="module")
def deblur_store(tmp_path_factory):
    """A local store with 12 synthetic-blur rows in 3 shards (``ds``) and 4 stored-blur rows (``stored``)."""
    store = Store.open(str(tmp_path_factory.mktemp("store")))
    make_dataset(store.child("ds"), "deblur", 12)
    make_dataset(store.child("stored"), "deblur", 4, stored_input=True, val=2)
    return store


def test_every_sample_once_per_epoch_across_two_consumers(ray_cluster, deblur_store):
    ds = train_dataset(config(), deblur_store)
    expected = {key_id(f"train-{i:03d}") for i in range(12)}
    epochs = consume_split(ds, 2, epochs=2)
    for epoch in epochs:
        assert set(epoch) == expected and all(len(c) == 1 for c in epoch.values())
    assert epochs[0] != epochs[1]  # new crops every epoch
    again = {int(k): [crop_of(t)] for b in train_dataset(config(), deblur_store).iter_torch_batches(batch_size=6)
             for k, t in zip(b["key_id"], b["target"])}
    assert again == epochs[0]  # the same seed gives the same crops


def test_labels_on_s3_crops_ids_instances_and_one_hot(ray_cluster, s3_endpoint, s3_bucket):
    store = Store.open(f"s3://{s3_bucket}/root", s3_endpoint=s3_endpoint)
    make_dataset(store.child("ds"), "labels2photo", 8)
    cfg = config("labels2photo", instance_edges=True)
    ds = train_dataset(cfg, store)
    batches = list(TrainBatches(ds, cfg, "cpu", batch_size=4, epochs=1))
    assert len(batches) == 2
    flips = 0
    src_ids, src_edges = label_map(), instance_map()
    for b in batches:
        assert b["input"].shape == (4, *CROP) and b["instance_edge"].shape == (4, *CROP)
        for lab, photo, edge in zip(b["input"].numpy(), b["target"].numpy(), b["instance_edge"].numpy()):
            flipped = photo[0, 0, 0] > photo[0, -1, 0]
            flips += int(flipped)
            if flipped:
                lab, photo, edge = lab[:, ::-1], photo[:, ::-1], edge[:, ::-1]
            top, left = photo[0, 0, 1] // 3, photo[0, 0, 0] // 3  # where the crop came from
            window = np.s_[top: top + CROP[0], left: left + CROP[1]]
            np.testing.assert_array_equal(lab, src_ids[window])  # the same crop, ids intact
            inst = src_edges.astype(np.int64)
            full = np.zeros_like(inst, dtype=bool)
            full[:, 1:] |= inst[:, 1:] != inst[:, :-1]
            full[:, :-1] |= inst[:, 1:] != inst[:, :-1]
            full[1:] |= inst[1:] != inst[:-1]
            full[:-1] |= inst[1:] != inst[:-1]
            np.testing.assert_array_equal(edge, full[window].astype(np.uint8))
    assert 0 < flips < 8  # flips happen, not always
    x, y = to_model_batch(batches[0], cfg, blur_strength=None)
    assert x.shape == (4, 36, *CROP) and y.shape == (4, 3, *CROP)
    assert torch.equal(x[:, :35].sum(1), torch.ones(4, *CROP))  # ids 20..27: exactly one channel
    assert x[:, 20:28].sum() == 4 * CROP[0] * CROP[1] and y.min() >= -1 and y.max() <= 1
    small = config("labels2photo", num_labels=24)  # ids >= num_labels get no channel
    xs, _ = to_model_batch(batches[0], small, blur_strength=None)
    assert xs.shape[1] == 24 and xs.sum() == (batches[0]["input"] < 24).sum()


def test_synthetic_blur_on_the_device(ray_cluster, deblur_store):
    cfg = config()
    b = next(iter(TrainBatches(train_dataset(cfg, deblur_store), cfg, "cpu", batch_size=4)))
    assert "input" not in b and b["target"].shape == (4, *CROP, 3)
    g = torch.Generator().manual_seed(0)
    x, y = to_model_batch(b, cfg, blur_strength=torch.tensor([0.2, 0.4, 0.6, 0.8]), generator=g)
    assert x.shape == y.shape == (4, 3, *CROP) and not torch.allclose(x, y, atol=0.05)
    assert x.min() >= -1 and x.max() <= 1
    x0, _ = to_model_batch(b, cfg, blur_strength=0.0)
    assert torch.allclose(x0, y, atol=1e-5)  # strength 0 is no blur
    cfg.data.blur_noise_std, cfg.data.blur_jpeg_quality = 0.02, 60
    xd, _ = to_model_batch(b, cfg, blur_strength=0.0)
    assert 0.005 < (xd - y).abs().mean() < 0.1


def test_stored_blurred_inputs_are_used_as_they_are(deblur_store):
    cfg = config()
    cfg.data.dataset = "stored"
    x, y = validation_set(cfg, deblur_store)
    assert x.shape == (2, 3, *CROP) and torch.allclose(x, -y, atol=1e-5)  # 255 - target, not a blur of it


def test_validation_subset_is_fixed(ray_cluster, tmp_path):
    store = Store.open(str(tmp_path))
    make_dataset(store.child("ds"), "deblur", 6, val=5)
    cfg = config()
    x1, y1 = validation_set(cfg, store)
    x2, y2 = validation_set(cfg, store)
    assert x1.shape == (4, 3, *CROP) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.allclose(x1, y1, atol=0.05)  # blurred at eval.blur_strength
    blue = ((y1[:, 2, 0, 0] + 1) * 127.5).round().tolist()
    assert blue == [0, 10, 20, 30]  # the first val rows, in order
    assert (((y1[0, 0, 0, 0] + 1) * 127.5).round() / 3) == (W - CROP[1]) // 2  # centre crop
    x3, y3 = validation_set(cfg, store, max_images=2)
    assert torch.equal(x3, x1[:2])  # image i's blur does not depend on how many are taken
    parts = list(validation_batches(cfg, store, batch_size=3))
    assert torch.equal(torch.cat([p[0] for p in parts]), x1)
    cfg.data.dataset = "train_only"
    make_dataset(store.child("train_only"), "deblur", 6)
    _, y4 = validation_set(cfg, store)
    assert ((y4[:, 2, 0, 0] + 1) * 127.5).round().tolist() == [20, 30, 40, 50]  # the last train rows


def _ledger_up() -> bool:
    from asaptrain.data.bad_images import LEDGER, NAMESPACE

    return any(a["name"] == LEDGER and a["namespace"] == NAMESPACE
               for a in ray.util.list_named_actors(all_namespaces=True))


def test_clean_data_starts_no_bad_image_ledger_and_a_bad_image_starts_it(ray_cluster, tmp_path):
    """The ledger is the cluster's, started by the first decode task that meets a bad image: a
    dataset without one starts no process; a run's end drops its entries."""
    from asaptrain.data.bad_images import LEDGER, NAMESPACE

    if _ledger_up():  # an earlier test's, on this shared Ray
        ray.kill(ray.get_actor(LEDGER, namespace=NAMESPACE))
        deadline = time.monotonic() + 30
        while _ledger_up():
            assert time.monotonic() < deadline, "the ledger outlived ray.kill"
            time.sleep(0.2)
    store = Store.open(str(tmp_path))
    make_dataset(store.child("clean"), "deblur", 8)
    make_dataset(store.child("ds"), "deblur", 8, corrupt={"train-003"})
    cfg = config(max_bad_images=2)
    cfg.data.dataset = "clean"
    clean = new_bad_image_log(cfg.data.max_bad_images)
    assert len(list(TrainBatches(train_dataset(cfg, store, bad_log=clean), cfg, "cpu", batch_size=2, epochs=1))) == 4
    assert bad_images(clean) == [] and not _ledger_up()
    cfg.data.dataset = "ds"
    log = new_bad_image_log(cfg.data.max_bad_images)
    assert train_dataset(cfg, store, bad_log=log).count() == 7
    assert _ledger_up() and [e["key"] for e in bad_images(log)] == ["train-003"]
    log.close()
    assert bad_images(log) == [] and _ledger_up()


def test_corrupt_image_is_skipped_and_named(ray_cluster, tmp_path):
    store = Store.open(str(tmp_path))
    make_dataset(store.child("ds"), "deblur", 8, corrupt={"train-005"})
    cfg = config(max_bad_images=2)
    log = new_bad_image_log(cfg.data.max_bad_images)
    ds = train_dataset(cfg, store, bad_log=log)
    assert ds.count() == 7
    (entry,) = bad_images(log)
    assert entry["key"] == "train-005" and entry["shard"].endswith("ds/train-00001.parquet")
    assert "does not decode" in entry["reason"]


def test_too_many_corrupt_images_stop_the_run(ray_cluster, tmp_path):
    store = Store.open(str(tmp_path))
    make_dataset(store.child("ds"), "deblur", 8, corrupt={"train-001", "train-002", "train-006"})
    cfg = config(max_bad_images=2)
    with pytest.raises(DataError, match="more than data.max_bad_images=2") as err:
        list(TrainBatches(train_dataset(cfg, store), cfg, "cpu", batch_size=2, epochs=1))
    assert "train-001" in str(err.value) and "train-00000.parquet" in str(err.value)


def test_a_decode_tasks_data_error_is_found_in_what_ray_hands_over():
    """Ray hands a task's exception over as a RayTaskError whose ``cause`` is it (nested once
    more through the split coordinator); the text around it is not the message."""
    from ray.exceptions import RayTaskError

    from asaptrain.data.pipeline import _data_error

    inner = RayTaskError("decode", "Traceback ...\nDataError: 3 bad images", DataError("3 bad images"))
    outer = RayTaskError("split", "Traceback ...", inner.as_instanceof_cause())
    for exc in (inner.as_instanceof_cause(), outer):
        found = _data_error(exc)
        assert type(found) is DataError and str(found) == "3 bad images"
    assert _data_error(RayTaskError("decode", "tb", ValueError("DataError: not one"))) is None


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_training_on_a_damaged_shard_names_it(tmp_path, damage):
    store = Store.open(str(tmp_path))
    ds = make_dataset(store.child("ds"), "deblur", 8, val=2)
    if damage == "deleted":
        ds.delete("train-00001.parquet")
    else:
        data = ds.read_bytes("train-00001.parquet")
        ds.write_bytes("train-00001.parquet", data[: len(data) // 2])
    # Checked where the dataset is opened, before Ray reads a byte or a run writes a file.
    with pytest.raises(ShardError, match=rf"train-00001.parquet.*{damage}.*asaptrain data verify"):
        train_dataset(config(), store)
    ds.delete("val-00000.parquet")
    with pytest.raises(ShardError, match=r"val-00000.parquet.*deleted"):
        validation_set(config(), store)


def test_a_failed_shard_read_names_the_endpoint_and_what_to_check():
    """Ray hands a read task's pyarrow OSError over wrapped, with a hint about its own retry
    settings and nothing about the store; the worker names the dataset, endpoint and bucket."""

    class TaskError(Exception):  # the shape of Ray's RayTaskError: the original as ``cause``
        def __init__(self, cause):
            super().__init__("To change retry attempts, backoff, or which errors are retried, configure ...")
            self.cause = cause

    class Unreachable:
        def iter_torch_batches(self, **_):
            raise TaskError(OSError("When reading information for key 'a/datasets/p/train-00000.parquet' in bucket "
                                    "'b': AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, "
                                    "Couldn't connect to server"))
            yield  # a generator, as Ray's is

    cfg = Config(data=DataConfig(dataset="datasets/p"))
    store = Store.open("s3://b/a", s3_endpoint="http://127.0.0.1:9")
    with pytest.raises(StoreError, match=r"training shards of 'datasets/p'.*cannot reach endpoint http://127\.0\.0\.1:9"):
        next(iter(TrainBatches(Unreachable(), cfg, "cpu", 2, ds_store=store)))
    with pytest.raises(TaskError):  # without the store: Ray's own error, unchanged
        next(iter(TrainBatches(Unreachable(), cfg, "cpu", 2)))
