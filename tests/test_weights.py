"""Weights files from a store or a path are loaded as tensors only: a planted pickle never runs."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
import torch

from asaptrain.data.store import Store
from asaptrain.train.metrics import INCEPTION_FILE, FidScorer, WeightsError, find_inception_weights


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


def test_a_file_left_at_the_old_temp_name_is_not_reused(tmp_path, monkeypatch):
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
