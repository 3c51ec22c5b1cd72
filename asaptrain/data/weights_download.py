"""`asaptrain weights download`: fetch the pinned helper weights, check them, put them in a store.

    rows = download(Store.open("s3://bucket/asap"), names=("vgg19", "inception"))
    rows = download(store, mirror="/mnt/mirror")          # a folder or URL holding the same file names

Each file of ``data.weights.PINNED`` is fetched from its official URL (or a mirror: a local
folder, ``file://``, ``http(s)://`` or ``s3://`` prefix holding the URLs' file names) into a
private temp folder with a progress bar, its sha256 compared with the 8 hex digits its official
name carries (``torch.hub``'s check), loaded as tensors only and compared key by key and shape by
shape with the network that uses it. Only then is it put where the one loader reads it,
``STORE/weights/FILE`` (a local rename or one whole S3 upload), with ``FILE.sha256`` beside it
(``sha256sum -c`` format). A failure names the URL, the expected hash and where a file
downloaded by hand goes; nothing is left half-written, and a different file already in the
store is replaced only with ``overwrite``.
"""

from __future__ import annotations

import hashlib
import os
from http.client import HTTPException
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from asaptrain.data.weights import PINNED, Pinned, WeightsError, check_state, store_rel, tensors_only
from asaptrain.errors import UserError

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
"""Longest wait for a connection or for the next bytes of a download."""


def sources(pinned: Pinned, mirror: str | None) -> list[str]:
    """Where to fetch ``pinned`` from, in order: its official URLs, or the same names in ``mirror``."""
    if not mirror:
        return list(pinned.urls)
    return [f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}" for url in pinned.urls]


def _http_chunks(url: str, timeout_s: float) -> tuple[int | None, Iterator[bytes]]:
    import urllib.request

    response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "asaptrain"}),
                                      timeout=timeout_s)
    size = response.headers.get("Content-Length")

    def chunks() -> Iterator[bytes]:
        with response:
            while block := response.read(CHUNK_BYTES):
                yield block

    return (int(size) if size and size.isdigit() else None), chunks()


def _store_chunks(uri: str, s3_endpoint: str | None) -> tuple[int | None, Iterator[bytes]]:
    from asaptrain.data.store import Store

    parent, _, name = uri.rpartition("/")
    src = Store.open(parent, s3_endpoint)
    size = src.size(name)  # StoreNotFound when absent

    def chunks() -> Iterator[bytes]:
        with src.fs.open_input_stream(src.path(name)) as fh:
            while block := fh.read(CHUNK_BYTES):
                yield block

    return size, chunks()


def fetch(source: str, dest: str, timeout_s: float = TIMEOUT_S, s3_endpoint: str | None = None,
          progress: Callable[[int, int | None], None] = lambda done, total: None) -> str:
    """Copy ``source`` (http(s), s3, file:// or a path) into the local file ``dest``; its sha256.
    Raises OSError (or a UserError) when it cannot be read whole."""
    if source.startswith(("http://", "https://")):
        size, chunks = _http_chunks(source, timeout_s)
    else:
        size, chunks = _store_chunks(source, s3_endpoint)
    digest, done = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        for block in chunks:
            out.write(block)
            digest.update(block)
            done += len(block)
            progress(done, size)
    if size is not None and done != size:
        raise OSError(f"the transfer stopped after {done} of {size} bytes")
    return digest.hexdigest()


def _hand_hint(pinned: Pinned, store) -> str:
    return (f"download {pinned.urls[0]} by hand (its sha256 starts with {pinned.sha256_prefix}) and put it in a "
            f"folder, then run `asaptrain weights download --only {pinned.name} --from FOLDER --store {store.uri}`; "
            f"or copy it to {store.uri_for(store_rel(pinned))} yourself")


def _verified(path: str, sha: str, source: str, pinned: Pinned) -> str | None:
    """Why the fetched file is not ``pinned`` (None when it is)."""
    if not sha.startswith(pinned.sha256_prefix):
        return f"{source}: sha256 {sha} does not start with the pinned {pinned.sha256_prefix} (a wrong or damaged file)"
    try:
        with open(path, "rb") as fh:
            check_state(tensors_only(fh.read(), source, pinned, advice=""), source, pinned, exact=True,
                        advice="")
    except WeightsError as exc:
        return str(exc)
    return None


def _already_there(store, pinned: Pinned) -> str | None:
    """The sha256 of the store's copy when it is the pinned file (recorded beside it, or hashed now)."""
    rel = store_rel(pinned)
    recorded = store.read_text(rel + ".sha256").split()[0] if store.exists(rel + ".sha256") else None
    if recorded and recorded.startswith(pinned.sha256_prefix):
        return recorded
    sha = hashlib.sha256(store.read_bytes(rel)).hexdigest()
    return sha if sha.startswith(pinned.sha256_prefix) else None


class _Bar:
    """A rich progress bar on stderr, one task per file (nothing when ``enabled`` is False)."""

    def __init__(self, enabled: bool):
        self.progress = None
        if enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))

    def __enter__(self) -> "_Bar":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def task(self, label: str) -> Callable[[int, int | None], None]:
        if self.progress is None:
            return lambda done, total: None
        task = self.progress.add_task(label, total=None)
        return lambda done, total: self.progress.update(task, completed=done, total=total)


def download_one(store, pinned: Pinned, mirror: str | None = None, overwrite: bool = False, bar: _Bar | None = None,
                 timeout_s: float = TIMEOUT_S, s3_endpoint: str | None = None) -> dict[str, Any]:
    """Put ``pinned`` into ``store`` (see the module's docstring); a row saying what was done."""
    rel = store_rel(pinned)
    row = {"name": pinned.name, "path": store.uri_for(rel), "sha256": None, "bytes": None, "source": None}
    if store.exists(rel) and not overwrite:
        sha = _already_there(store, pinned)
        if sha:
            if not store.exists(rel + ".sha256"):
                store.write_text(rel + ".sha256", f"{sha}  {pinned.file}\n")
            return {**row, "sha256": sha, "bytes": store.size(rel), "status": "present"}
        raise WeightsError(f"{store.uri_for(rel)} exists and is not the pinned {pinned.file} (its sha256 does not "
                               f"start with {pinned.sha256_prefix}); pass --overwrite to replace it")
    bar = bar or _Bar(False)
    tmpdir = tempfile.mkdtemp(prefix="asaptrain-download-")  # mode 0700: nobody swaps the file before upload
    failures = []
    try:
        for source in sources(pinned, mirror):
            local = os.path.join(tmpdir, pinned.file)
            try:
                sha = fetch(source, local, timeout_s, s3_endpoint, bar.task(f"{pinned.name} <- {source}"))
            except (OSError, HTTPException, UserError) as exc:  # URLError, timeouts, cut transfers, missing files
                failures.append(f"{source}: {type(exc).__name__}: {str(exc).strip()[:300]}")
                continue
            problem = _verified(local, sha, source, pinned)
            if problem:
                failures.append(problem)
                continue
            if store.exists(rel + ".sha256"):  # overwriting: never leave an old hash beside a new file
                store.delete(rel + ".sha256")
            store.put_file(local, rel)  # whole or not at all (rename; one managed S3 upload)
            store.write_text(rel + ".sha256", f"{sha}  {pinned.file}\n")
            return {**row, "sha256": sha, "bytes": os.path.getsize(local), "source": source, "status": "downloaded"}
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    raise WeightsError(f"could not get {pinned.name} weights ({pinned.file}, sha256 starting {pinned.sha256_prefix}) "
                       f"for {pinned.use}: {'; '.join(failures)}. Nothing was written; {_hand_hint(pinned, store)}")


def download(store, names: tuple[str, ...] = tuple(PINNED), mirror: str | None = None, overwrite: bool = False,
             progress: bool = True, timeout_s: float = TIMEOUT_S, s3_endpoint: str | None = None) -> list[dict]:
    """Each of ``names`` into ``store`` (``download_one``); stops at the first that cannot be got."""
    unknown = [n for n in names if n not in PINNED]
    if unknown:
        raise WeightsError(f"unknown weights {', '.join(unknown)}; choose from {', '.join(PINNED)}")
    with _Bar(progress) as bar:
        return [download_one(store, PINNED[name], mirror, overwrite, bar, timeout_s, s3_endpoint) for name in names]


__all__ = ["download", "download_one", "fetch", "sources", "TIMEOUT_S"]
