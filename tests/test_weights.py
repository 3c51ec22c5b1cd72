"""Helper weights through the one loader (``asaptrain.data.weights``): paths, file:// and s3://
URIs and the store default alike, tensors only (a planted pickle never runs), keys and shapes
checked, one error class for the perceptual loss and FID."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import tempfile
import types

import pytest
import torch

from asaptrain.data import weights
from asaptrain.data.store import Store
from asaptrain.data.weights import PINNED, WeightsError, load_state_dict
from asaptrain.train.losses import build_perceptual
from asaptrain.train.metrics import INCEPTION_FILE, FidScorer, find_inception_weights

SMALL = {"w": torch.arange(4.0), "bn.num_batches_tracked": torch.tensor(3)}
"""A stand-in state dict; ``small_tables`` makes it what both pinned entries expect."""


@pytest.fixture
def small_tables(monkeypatch):
    """The pinned tables swapped for ``SMALL``'s (the real files are 548 and 91 MB)."""
    for name in PINNED:
        monkeypatch.setitem(PINNED, name, dataclasses.replace(
            PINNED[name], table=lambda: {"w": (4,), "bn.num_batches_tracked": ()}, needed_prefix=""))


class _RunsCode:
    """Unpickling this writes ``marker``: what a hostile weights file could do instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _plant(path: str, marker: str) -> None:
    torch.save({"fc.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)


def _fid_from(configured: str, store) -> None:
    """What the training loop does on rank 0 when eval.fid is on."""
    path, reason = find_inception_weights(configured, store)
    assert path, reason
    FidScorer(path, torch.device("cpu"))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store.open(str(tmp_path / "store"))
    return Store.open(f"s3://{request.getfixturevalue('s3_bucket')}/p", request.getfixturevalue("s3_endpoint"))


def test_planted_pickle_in_the_store_never_runs(store, tmp_path):
    marker = str(tmp_path / "marker")
    _plant(str(tmp_path / "bad.pth"), marker)
    store.put_file(str(tmp_path / "bad.pth"), f"weights/{INCEPTION_FILE}")
    with pytest.raises(WeightsError) as err:
        _fid_from("", store)
    assert not os.path.exists(marker), "the weights file ran code"
    assert store.uri_for(f"weights/{INCEPTION_FILE}") in str(err.value)


def test_planted_pickle_at_a_configured_path_never_runs(tmp_path):
    marker, path = str(tmp_path / "marker"), str(tmp_path / "inception.pth")
    _plant(path, marker)
    with pytest.raises(WeightsError) as err:
        _fid_from(path, None)
    assert not os.path.exists(marker), "the weights file ran code"
    assert path in str(err.value)


def test_a_file_left_at_the_old_temp_name_is_not_reused(tmp_path, monkeypatch, small_tables):
    """A file planted at a predictable temp path must not stand in for the store's weights."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    marker = str(tmp_path / "marker")
    _plant(str(tmp_path / f"asaptrain-{INCEPTION_FILE}"), marker)
    store = Store.open(str(tmp_path / "store"))
    plain = {"w": torch.arange(4.0)}
    torch.save(plain, str(tmp_path / "plain.pth"))
    store.put_file(str(tmp_path / "plain.pth"), f"weights/{INCEPTION_FILE}")
    path, _ = find_inception_weights("", store)
    assert path != str(tmp_path / f"asaptrain-{INCEPTION_FILE}")
    assert open(path, "rb").read() == store.read_bytes(f"weights/{INCEPTION_FILE}")
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700  # only this user can swap it
    assert torch.equal(torch.load(path, weights_only=True)["w"], plain["w"])
    assert not os.path.exists(marker)


def test_non_state_dict_is_refused(tmp_path):
    path = str(tmp_path / "list.pth")
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        find_inception_weights(path, None)


def _loss_cfg(source: str = "") -> types.SimpleNamespace:
    return types.SimpleNamespace(perceptual="vgg19-multi", vgg_weights=source, vgg_input="imagenet")


def test_inception_weights_at_an_s3_uri_are_found(s3_bucket, s3_endpoint, tmp_path, small_tables):
    """``eval.inception_weights = "s3://..."`` is documented as a URI: it must not read as 'not found'."""
    torch.save(SMALL, str(tmp_path / "i.pth"))
    other = Store.open(f"s3://{s3_bucket}/elsewhere", s3_endpoint)
    other.put_file(str(tmp_path / "i.pth"), "inc.pth")
    run_store = Store.open(f"s3://{s3_bucket}/runs-store", s3_endpoint)
    path, reason = find_inception_weights(f"s3://{s3_bucket}/elsewhere/inc.pth", run_store)
    assert path and not reason
    assert open(path, "rb").read() == (tmp_path / "i.pth").read_bytes()


@pytest.mark.parametrize("form", ["path", "file", "s3", "store-default", "store-relative"])
def test_one_loader_takes_every_form_of_source(form, tmp_path, s3_bucket, s3_endpoint, small_tables):
    torch.save(SMALL, str(tmp_path / "v.pth"))
    store = Store.open(f"s3://{s3_bucket}/p", s3_endpoint)
    source = {"path": str(tmp_path / "v.pth"), "file": f"file://{tmp_path}/v.pth",
              "s3": f"s3://{s3_bucket}/p/mine/v.pth", "store-default": "", "store-relative": "mine/v.pth"}[form]
    store.put_file(str(tmp_path / "v.pth"), "mine/v.pth")
    store.put_file(str(tmp_path / "v.pth"), "weights/vgg19.pth")
    state, where = load_state_dict("vgg19", source, store)
    assert torch.equal(state["w"], SMALL["w"])
    assert where.endswith("v.pth") or where.endswith("weights/vgg19.pth")


def test_perceptual_and_fid_raise_the_same_error_naming_the_download_command(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    with pytest.raises(WeightsError) as vgg:
        build_perceptual(_loss_cfg(), store)
    assert "asaptrain weights download --only vgg19" in str(vgg.value)
    assert store.uri_for("weights/vgg19.pth") in str(vgg.value) and "loss.vgg_weights" in str(vgg.value)
    path, reason = find_inception_weights("", store)
    assert path is None and "asaptrain weights download --only inception" in reason
    assert store.uri_for(f"weights/{INCEPTION_FILE}") in reason
    torch.save([torch.zeros(1)], str(tmp_path / "list.pth"))
    for call in (lambda: build_perceptual(_loss_cfg(str(tmp_path / "list.pth")), store),
                 lambda: find_inception_weights(str(tmp_path / "list.pth"), store)):
        with pytest.raises(WeightsError, match="holds a list"):  # the one class catches both
            call()


def test_wrong_keys_or_shapes_are_named(tmp_path, small_tables):
    torch.save({"w": torch.zeros(5), "x": torch.zeros(1)}, str(tmp_path / "bad.pth"))
    with pytest.raises(WeightsError, match=r"1 unexpected keys \(x\); 1 shapes differ \(w \(5,\) \(expected \(4,\)\)\)"):
        load_state_dict("inception", str(tmp_path / "bad.pth"))


def test_a_file_that_differs_from_its_recorded_sha256_is_refused(tmp_path, small_tables):
    store = Store.open(str(tmp_path / "store"))
    torch.save(SMALL, str(tmp_path / "v.pth"))
    store.put_file(str(tmp_path / "v.pth"), "weights/vgg19.pth")
    store.write_text("weights/vgg19.pth.sha256", hashlib.sha256(b"other bytes").hexdigest() + "  vgg19.pth\n")
    with pytest.raises(WeightsError, match="does not match the sha256 recorded beside it"):
        load_state_dict("vgg19", "", store)
    store.write_text("weights/vgg19.pth.sha256",
                     hashlib.sha256((tmp_path / "v.pth").read_bytes()).hexdigest() + "  vgg19.pth\n")
    assert load_state_dict("vgg19", "", store)[1] == store.uri_for("weights/vgg19.pth")


def test_the_real_tables_match_the_networks_that_use_them():
    """VGG19's table is torchvision's; Inception's equals the module torch-fidelity builds (on meta)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as tf

    assert len(PINNED["vgg19"].table()) == 38 and PINNED["vgg19"].table()["features.0.weight"] == (64, 3, 3, 3)
    built = {}

    class Built(Exception):
        pass

    def capture(self, state_dict, *args, **kwargs):
        built.update({k: tuple(v.shape) for k, v in self.state_dict().items()})
        raise Built

    with torch.device("meta"), mock.patch.object(tf, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tf.FeatureExtractorInceptionV3, "load_state_dict", capture), pytest.raises(Built):
        tf.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    assert built == PINNED["inception"].table()
    assert all(url.rsplit("/", 1)[1].endswith(f"-{p.sha256_prefix}.pth") for p in PINNED.values() for url in p.urls)
    assert weights.store_rel(PINNED["inception"]) == f"weights/{INCEPTION_FILE}"
