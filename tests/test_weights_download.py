"""`asaptrain weights download` against a real HTTP server on loopback, a mirror folder and the
loopback S3 endpoint, with small stand-in files and the pinned table swapped to fit them (the
download code itself is the real one; nothing reaches the internet)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import threading

import pytest
import torch
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.data.store import Store
from asaptrain.data.weights import PINNED, WeightsError, load_state_dict
from asaptrain.data.weights_download import download
from asaptrain.train.metrics import find_inception_weights

STAND_INS = {"vgg19": {"features.0.weight": torch.arange(6.0).view(2, 3)},
             "inception": {"fc.weight": torch.ones(3), "bn.num_batches_tracked": torch.tensor(0)}}


class _RunsCode:
    """Unpickling this writes ``marker``: what a hostile weights file could do instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _save(obj, path) -> str:
    torch.save(obj, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/cut/NAME`` announces NAME's full length and sends half of it."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        if self.path.startswith("/cut/"):
            data = open(os.path.join(self.directory, self.path[len("/cut/"):]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """(folder, base URL, the server): a real HTTP server on 127.0.0.1 serving ``folder``."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _pin(monkeypatch, name: str, folder, base: str, obj=None, url_path: str = "") -> tuple[str, str]:
    """Write the stand-in (or ``obj``) into ``folder`` under a name carrying its sha256 prefix, and
    swap the pinned entry to it: its URL, prefix and key/shape table. Returns (file name, sha256)."""
    tmp = folder / "tmp.pth"
    sha = _save(STAND_INS[name] if obj is None else obj, tmp)
    file = f"{name}-standin-{sha[:8]}.pth"
    os.replace(tmp, folder / file)
    table = {k: tuple(v.shape) for k, v in STAND_INS[name].items()}
    monkeypatch.setitem(PINNED, name, dataclasses.replace(
        PINNED[name], urls=(f"{base}/{url_path}{file}",), sha256_prefix=sha[:8], table=lambda: table,
        needed_prefix=""))
    return file, sha


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store.open(str(tmp_path / "store"))
    return Store.open(f"s3://{request.getfixturevalue('s3_bucket')}/asap", request.getfixturevalue("s3_endpoint"))


def test_download_checks_and_writes_where_the_loader_reads(store, served, monkeypatch):
    folder, base, server = served
    shas = {name: _pin(monkeypatch, name, folder, base)[1] for name in PINNED}
    rows = download(store, progress=False)
    assert [(r["name"], r["status"]) for r in rows] == [("vgg19", "downloaded"), ("inception", "downloaded")]
    for name, sha in shas.items():
        rel = f"weights/{PINNED[name].file}"
        assert store.read_text(rel + ".sha256") == f"{sha}  {PINNED[name].file}\n"
        assert hashlib.sha256(store.read_bytes(rel)).hexdigest() == sha
    state, where = load_state_dict("vgg19", "", store)  # the one loader finds it, unasked
    assert torch.equal(state["features.0.weight"], STAND_INS["vgg19"]["features.0.weight"])
    path, reason = find_inception_weights("", store)
    assert path and not reason
    assert sorted(store.list("weights")) == sorted(
        f"weights/{PINNED[n].file}{s}" for n in PINNED for s in ("", ".sha256"))  # no temp names left
    asked = len(server.requests)
    again = download(store, progress=False)
    assert [r["status"] for r in again] == ["present", "present"] and len(server.requests) == asked


def test_a_mirror_folder_through_the_cli(tmp_path, served, monkeypatch):
    folder, base, server = served
    for name in PINNED:
        _pin(monkeypatch, name, folder, "https://unreachable.invalid/models")  # the official URL is never asked
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["weights", "download", "--store", str(store), "--from", str(folder),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (store / "weights" / PINNED["vgg19"].file).exists() and (store / "weights" / PINNED["inception"].file).exists()
    assert server.requests == []
    res = CliRunner().invoke(main, ["weights", "download", "--store", str(store), "--from", base, "--only", "vgg19",
                                    "--overwrite", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(server.requests) == 1 and "vgg19" in res.output and "inception" not in res.output


def _nothing_written(store) -> bool:
    return store.list("weights") == []


def test_a_wrong_hash_is_refused_naming_url_hash_and_where_to_put_the_file(store, served, monkeypatch):
    folder, base, _ = served
    file, sha = _pin(monkeypatch, "vgg19", folder, base)
    torch.save({"features.0.weight": torch.zeros(2, 3)}, str(folder / file))  # same name, other bytes
    with pytest.raises(WeightsError) as err:
        download(store, ("vgg19",), progress=False)
    msg = str(err.value)
    assert f"{base}/{file}" in msg and f"does not start with the pinned {sha[:8]}" in msg
    assert "--from FOLDER" in msg and store.uri_for("weights/vgg19.pth") in msg and "Nothing was written" in msg
    assert _nothing_written(store)


def test_a_truncated_transfer_is_refused(store, served, monkeypatch):
    folder, base, _ = served
    file, _ = _pin(monkeypatch, "inception", folder, base, url_path="cut/")
    with pytest.raises(WeightsError, match=rf"cut/{file}: .*(stopped after|IncompleteRead)"):
        download(store, ("inception",), progress=False)
    assert _nothing_written(store)


def test_a_file_that_is_not_the_expected_state_dict_is_refused(store, served, monkeypatch):
    folder, base, _ = served
    _pin(monkeypatch, "vgg19", folder, base, obj={"features.0.weight": torch.zeros(5), "extra": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"1 unexpected keys \(extra\); 1 shapes differ"):
        download(store, ("vgg19",), progress=False)
    assert _nothing_written(store)


def test_a_pickle_holding_code_never_runs(store, served, monkeypatch, tmp_path):
    folder, base, _ = served
    marker = str(tmp_path / "marker")
    _pin(monkeypatch, "inception", folder, base, obj={"fc.weight": torch.ones(3), "x": _RunsCode(marker)})
    with pytest.raises(WeightsError, match="not a plain state dict of tensors"):
        download(store, ("inception",), progress=False)
    assert not os.path.exists(marker), "the downloaded file ran code"
    assert _nothing_written(store)


def test_no_network_is_a_clear_error_and_the_cli_exits_2(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(PINNED, "vgg19", dataclasses.replace(
        PINNED["vgg19"], urls=(f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth",)))
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["weights", "download", "--store", str(store), "--only", "vgg19", "--no-progress"])
    assert res.exit_code == 2
    assert f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth" in res.output and "dcbb9e9d" in res.output
    assert "by hand" in res.output and not (store / "weights").exists()


def test_a_different_file_in_the_store_is_kept_unless_overwrite(tmp_path, served, monkeypatch):
    folder, base, _ = served
    _, sha = _pin(monkeypatch, "vgg19", folder, base)
    store = Store.open(str(tmp_path / "store"))
    store.write_bytes("weights/vgg19.pth", b"someone else's file")
    with pytest.raises(WeightsError, match="exists and is not the pinned .* pass --overwrite"):
        download(store, ("vgg19",), progress=False)
    assert store.read_bytes("weights/vgg19.pth") == b"someone else's file"
    assert download(store, ("vgg19",), overwrite=True, progress=False)[0]["sha256"] == sha
    assert hashlib.sha256(store.read_bytes("weights/vgg19.pth")).hexdigest() == sha
