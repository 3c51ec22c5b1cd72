"""A crop or batch the dataset cannot give is refused before Ray starts or anything is written
(the sizes come from the shards' Parquet statistics, the rows from the manifest)."""

from __future__ import annotations

import json

import pytest

from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.convert import convert
from asaptrain.data.store import Store
from asaptrain.data.synth import synth_plan
from asaptrain.errors import UserError
from asaptrain.train.launch import fit


def _cfg(store, *extra):
    return apply_overrides(get_preset("deblurgan-smoke"), [f"storage.store={json.dumps(store.uri)}", "train.steps=2",
                                                           "scaling.num_workers=1", *extra])


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


@pytest.mark.parametrize("where", ["local", "s3"])
@pytest.mark.parametrize("extra, words", [
    (["data.crop_height=100000"], ["data.crop_height", "100000", "64"]),
    (["data.crop_width=96", "data.crop_height=32"], ["data.crop_width", "96", "64"]),
    (["data.load_width=48", "data.load_height=48"], ["data.crop", "48"]),
    (["train.batch_size=64"], ["train.batch_size", "64", "12"]),
])
def test_crop_or_batch_the_data_cannot_give_is_refused_before_anything(where, extra, words, tmp_path, request):
    if where == "s3":
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket")
        store = Store.open(f"s3://{bucket}/store", s3_endpoint=endpoint)
        extra = [*extra, f"storage.s3_endpoint={json.dumps(endpoint)}"]
    else:
        store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 12, (64, 64), seed=0, val_count=3), store.child("datasets", "synth-photos"))
    assert not _ray_started()
    with pytest.raises(UserError) as err:
        fit(_cfg(store, "data.crop_width=64", "data.crop_height=64", *extra), name="too-big", progress=False, store=store)
    message = str(err.value)
    for word in words:
        assert word in message, message
    assert "synth-photos" in message
    assert not _ray_started()
    assert not store.exists("runs/too-big/run.json") and not store.child("runs").list("")


def test_crop_that_fits_passes_the_check(tmp_path):
    from asaptrain.data.pipeline import check_crop_and_batch

    store = Store.open(str(tmp_path / "store"))
    convert(synth_plan("photos", 12, (48, 64), seed=0, val_count=3), store.child("datasets", "synth-photos"))  # (h, w)
    ds = store.child("datasets", "synth-photos")
    check_crop_and_batch(_cfg(store, "data.crop_width=64", "data.crop_height=48", "train.batch_size=4"), ds)
    with pytest.raises(UserError, match="data.crop_height"):
        check_crop_and_batch(_cfg(store, "data.crop_width=64", "data.crop_height=49"), ds)
