"""A store is a URI: a local directory or an S3-compatible bucket prefix, read through pyarrow.

    store = Store.open("s3://bucket/asaptrain", s3_endpoint="http://minio:9000")
    store.write_json("datasets/x/manifest.json", {...})
    ds = ray.data.read_parquet(store.path("datasets/x/train-00000.parquet"), filesystem=store.fs)

Reads and writes go through ``pyarrow.fs`` (the same filesystem object Ray Data and Ray Train
take); boto3 does what pyarrow lacks: bucket checks and creation, listings without directory
markers, deletes, and uploads that are aborted rather than half-finished on failure. MinIO,
Ceph, R2 and AWS all work the same (endpoint, credentials and errors: :mod:`asaptrain.data.s3`).

Every write is atomic: a reader sees the old object or the whole new one. Credentials are never
in a repr, message or pickle: a Store sent to another process re-resolves them there.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any, Callable, TypeVar

import pyarrow.fs as pafs

from asaptrain.config.schema import DEFAULT_STORE, StorageConfig
from asaptrain.config.validate import reject_url_credentials
from asaptrain.data.s3 import (DEFAULT_OUTAGE_S, Credentials, StoreError, StoreNotFound, boto_client, connect,
                               describe_error, error_code, is_store_failure, retry, safe_url)
from asaptrain.errors import UserError

SINGLE_PUT_BYTES = 5 * 2**20
"""S3 objects up to this size go up in one pyarrow PutObject; larger ones in one boto3 PUT."""

T = TypeVar("T")


class Store:
    """A directory of the store: ``fs`` + ``root`` (a path inside ``fs``, no scheme)."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, is_s3: bool,
                 endpoint: str | None = None, region: str | None = None, credentials: Credentials | None = None,
                 outage_s: float = DEFAULT_OUTAGE_S):
        self.uri, self.fs, self.root, self.is_s3 = uri, fs, root.rstrip("/") or "/", is_s3
        self.endpoint, self.region, self.outage_s = endpoint, region, outage_s
        self._credentials = credentials or Credentials()
        self._boto = None

    @classmethod
    def open(cls, uri: str, s3_endpoint: str | None = None, region: str | None = None,
             outage_s: float = DEFAULT_OUTAGE_S) -> "Store":
        """Open a path, ``file://`` URI or ``s3://bucket/prefix`` (endpoint: flag or AWS_ENDPOINT_URL*);
        S3 requests retry an unreachable endpoint for ``outage_s`` seconds."""
        uri = uri or DEFAULT_STORE
        check_uri(uri)
        if uri.startswith("s3://"):
            return cls._open_s3(uri, s3_endpoint, region, outage_s)
        if "://" in uri and not uri.startswith("file://"):
            raise StoreError(f"store {uri!r}: unsupported scheme; use a path, file:///path or s3://bucket/prefix")
        path = os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))
        return cls(uri, pafs.LocalFileSystem(), path, is_s3=False)

    @classmethod
    def _open_s3(cls, uri: str, s3_endpoint: str | None, region: str | None, outage_s: float) -> "Store":
        root = uri[len("s3://"):].strip("/")
        if not root:
            raise StoreError(f"store {uri!r} names no bucket; use s3://bucket or s3://bucket/prefix")
        fs, endpoint, region, credentials = connect(s3_endpoint, region, outage_s)
        return cls(uri, fs, root, is_s3=True, endpoint=endpoint, region=region, credentials=credentials,
                   outage_s=outage_s)

    def __reduce__(self):
        # Re-open in the receiving process: credentials are re-resolved there, never pickled.
        return (_reopen, (self.uri, self.endpoint, self.region, self.outage_s))

    def __repr__(self) -> str:
        where = f", endpoint={safe_url(self.endpoint)!r}" if self.is_s3 else ""
        return f"Store({self.uri_for()!r}{where})"

    def child(self, *parts: str) -> "Store":
        """The sub-store at ``root/parts`` (same filesystem and credentials)."""
        sub = Store(self.uri_for(*parts), self.fs, self.path(*parts), self.is_s3, self.endpoint, self.region,
                    self._credentials, self.outage_s)
        sub._boto = self._boto
        return sub

    def path(self, *parts: str) -> str:
        """The fs path of ``root/parts`` (what pyarrow and Ray take with ``filesystem=fs``)."""
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        return "/".join([self.root.rstrip("/")] + clean) if clean else self.root

    def uri_for(self, *parts: str) -> str:
        """The user-facing URI of ``root/parts`` (never with credentials)."""
        return ("s3://" if self.is_s3 else "") + self.path(*parts)

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0] if self.is_s3 else ""

    def _key(self, rel: str) -> str:
        """Key prefix inside the bucket for ``rel`` (S3 only)."""
        return self.path(rel).split("/", 1)[1] if "/" in self.path(rel) else ""

    def _error(self, exc: BaseException, what: str, bucket_op: bool = False) -> StoreError:
        """A StoreError for a pyarrow/boto3 failure that says what to check."""
        if self.is_s3:
            return describe_error(exc, what, self.bucket, self.endpoint, self._credentials, bucket_op)
        if isinstance(exc, FileNotFoundError):
            return StoreNotFound(f"{what}: no such file or directory")
        return StoreError(f"{what}: {str(exc)[:300]}")

    def describe_failure(self, exc: BaseException, what: str) -> StoreError:
        """The StoreError for ``exc``, a failure of this store met elsewhere (a Ray read task):
        ``what`` failed, with the endpoint and bucket named and what to check, no secrets."""
        return self._error(exc, what)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:
            if is_store_failure(exc):
                raise self._error(exc, what) from None
            raise

    def boto_client(self):
        """A boto3 S3 client for this store's endpoint and credentials."""
        if self._boto is None:
            self._boto = boto_client(self.endpoint, self.region, self._credentials)
        return self._boto

    def create_bucket(self) -> None:
        """Create this store's bucket (a no-op when it is already yours, or for a local store)."""
        if not self.is_s3:
            return
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region and self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            retry(lambda: self.boto_client().create_bucket(**kwargs))
        except Exception as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, f"creating bucket {self.bucket!r}") from None

    def check(self, create_bucket: bool = False) -> None:
        """Fail early, naming what to fix, when the bucket is missing, refused or unreachable;
        with ``create_bucket`` a missing bucket is created instead."""
        if not self.is_s3:
            return
        try:
            retry(lambda: self.boto_client().head_bucket(Bucket=self.bucket))
        except Exception as exc:
            if create_bucket and error_code(exc) in ("404", "NoSuchBucket"):
                return self.create_bucket()
            raise self._error(exc, f"store {self.uri_for()}", bucket_op=True) from None

    def _info(self, rel: str) -> pafs.FileInfo:
        return self._call(f"checking {self.uri_for(rel)}", lambda: self.fs.get_file_info(self.path(rel)))

    def exists(self, rel: str) -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def size(self, rel: str) -> int:
        """Size of a file in bytes (StoreNotFound when absent)."""
        info = self._info(rel)
        if info.type != pafs.FileType.File:
            raise StoreNotFound(f"{self.uri_for(rel)} does not exist")
        return info.size

    def sizes(self, rels: list[str]) -> dict[str, int | None]:
        """Sizes in bytes of several files in one call (None for each that is absent)."""
        infos = self._call(f"checking {len(rels)} files in {self.uri_for()}",
                           lambda: self.fs.get_file_info([self.path(r) for r in rels]))
        return {r: i.size if i.type == pafs.FileType.File else None for r, i in zip(rels, infos)}

    def read_bytes(self, rel: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.readall()

        return self._call(f"reading {self.uri_for(rel)}", read)

    def _write_local(self, rel: str, fill: Callable[[str], Any]) -> None:
        """``fill(tmp)`` writes a temp file beside ``rel``; a rename then makes it visible whole."""
        final = self.path(rel)
        tmp = f"{os.path.dirname(final)}/_tmp-{uuid.uuid4().hex[:12]}-{os.path.basename(final)}"
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            fill(tmp)
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: a temp name then a rename (file), one PUT (S3: the object appears whole)."""
        def write() -> None:
            if not self.is_s3:
                self._write_local(rel, lambda tmp: open(tmp, "wb").write(data))
            elif len(data) > SINGLE_PUT_BYTES:  # pyarrow would go multipart, which it cannot abort
                retry(lambda: self.boto_client().put_object(Bucket=self.bucket, Key=self._key(rel), Body=data),
                      outage_s=self.outage_s)
            else:
                with self.fs.open_output_stream(self.path(rel)) as f:  # delayed open: one PutObject
                    f.write(data)

        self._call(f"writing {self.uri_for(rel)}", write)

    def put_file(self, local_path: str, rel: str) -> None:
        """Copy a finished local file into the store; it becomes visible only when complete."""
        def put() -> None:
            if not self.is_s3:
                return self._write_local(rel, lambda tmp: shutil.copyfile(local_path, tmp))
            # boto3's managed upload aborts a failed multipart upload, so the key appears whole
            # or not at all; pyarrow cannot abort one, and its rename leaves "dir/" markers.
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20)
            retry(lambda: self.boto_client().upload_file(local_path, self.bucket, self._key(rel), Config=config),
                  outage_s=self.outage_s)

        self._call(f"writing {self.uri_for(rel)}", put)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_text(rel, json.dumps(obj, indent=1, sort_keys=False) + "\n")

    def append_text(self, rel: str, text: str) -> None:
        """Append (file: a real append; S3 has no append, so read and rewrite the object)."""
        if self.is_s3:
            old = self.read_text(rel) if self.exists(rel) else ""
            self.write_text(rel, old + text)
            return

        def append() -> None:
            self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
            with self.fs.open_append_stream(self.path(rel)) as f:
                f.write(text.encode("utf-8"))

        self._call(f"appending to {self.uri_for(rel)}", append)

    def list(self, rel: str = "", suffix: str | None = None, recursive: bool = False) -> list[str]:
        """Paths relative to the store root, sorted: every file below ``rel`` when recursive, else
        the files and sub-directories directly in ``rel``. Missing ``rel`` lists nothing."""
        if self.is_s3:
            names = self._list_s3(rel, recursive)
        else:
            sel = pafs.FileSelector(self.path(rel), recursive=recursive, allow_not_found=True)
            infos = self._call(f"listing {self.uri_for(rel)}", lambda: self.fs.get_file_info(sel))
            names = [i.path[len(self.root):].lstrip("/") for i in infos
                     if not (recursive and i.type == pafs.FileType.Directory)]
        return sorted(n for n in names if suffix is None or n.endswith(suffix))

    def _list_s3(self, rel: str, recursive: bool) -> list[str]:
        prefix = self._key(rel) + "/" if self._key(rel) else ""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix} | ({} if recursive else {"Delimiter": "/"})
        names: list[str] = []
        token = None
        while True:
            page = self._call(f"listing {self.uri_for(rel)}", lambda: retry(
                lambda: self.boto_client().list_objects_v2(**kwargs, **({"ContinuationToken": token} if token else {})),
                outage_s=self.outage_s))
            bucket_root = self.root.split("/", 1)[1] if "/" in self.root else ""
            found = [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            for key in found:
                key = key.rstrip("/")
                if key and key != prefix.rstrip("/"):
                    names.append(key[len(bucket_root):].lstrip("/") if bucket_root else key)
            if not page.get("IsTruncated"):
                return names
            token = page["NextContinuationToken"]

    def delete(self, rel: str, recursive: bool = False) -> None:
        """Delete a file (or, with recursive, a directory and all below it); absent is fine."""
        kind = self._info(rel).type
        if kind == pafs.FileType.Directory and not recursive:
            raise StoreError(f"{self.uri_for(rel)} is a directory; pass recursive=True to delete it")
        if kind == pafs.FileType.NotFound:
            return
        if not self.is_s3:
            delete = self.fs.delete_file if kind == pafs.FileType.File else self.fs.delete_dir
            return self._call(f"deleting {self.uri_for(rel)}", lambda: delete(self.path(rel)))
        # boto3, not pyarrow: pyarrow's S3 deletes leave "parent/" marker objects behind.
        below = [rel] if kind == pafs.FileType.File else self.list(rel, recursive=True)
        keys = [self._key(b) for b in below]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys per request
            batch = {"Objects": [{"Key": k} for k in keys[start:start + 1000]], "Quiet": True}
            self._call(f"deleting {self.uri_for(rel)}", lambda: retry(
                lambda: self.boto_client().delete_objects(Bucket=self.bucket, Delete=batch), outage_s=self.outage_s))

    def ray_storage(self) -> tuple[str, pafs.FileSystem]:
        """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig`` and ``tune.RunConfig``.

        The filesystem holds no credentials (Ray pickles it to its workers, Tune into
        ``tuner.pkl``): each process that unpickles it resolves its own from its environment.
        """
        return self.root, self.fs

    def endpoint_env(self) -> dict[str, str]:
        """Non-secret settings a child process needs to open this store the same way."""
        env = {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_REGION": self.region} if self.is_s3 else {}
        return {k: v for k, v in env.items() if v}


def check_uri(uri: str, where: str = "store URI") -> None:
    """StoreError for a URI that must not be opened: ``user:password@`` (or ``user@``) in it, which
    would be used and then printed, or a control character (a pasted newline), which would name
    a path nobody meant."""
    if "://" in uri:  # a plain local path may hold an "@"; a URI's host part may not
        try:
            reject_url_credentials(uri, where)
        except UserError as exc:
            raise StoreError(str(exc)) from None
    bad = next((c for c in uri if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        shown = uri.split("@", 1)[-1] if "://" in uri else uri
        raise StoreError(f"{where} {shown!r} holds a control character ({bad!r}, e.g. a pasted line break); "
                         "remove it")


def _reopen(uri: str, endpoint: str | None, region: str | None, outage_s: float = DEFAULT_OUTAGE_S) -> Store:
    return Store.open(uri, s3_endpoint=endpoint, region=region, outage_s=outage_s)


def store_from_config(storage: StorageConfig) -> Store:
    """The store a config names (``[storage]`` section)."""
    return Store.open(storage.store, s3_endpoint=storage.s3_endpoint or None, region=storage.region or None,
                      outage_s=storage.outage_s)


def is_relative(uri: str) -> bool:
    """A plain relative path: no scheme, not absolute (read against a store or the cwd)."""
    return "://" not in uri and not os.path.isabs(uri)


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (other processes run elsewhere); others as is."""
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        return uri if os.path.isabs(path) else os.path.abspath(path)
    return os.path.abspath(uri) if is_relative(uri) else uri


def dataset_uri(dataset: str, store: Store) -> str:
    """A dataset directory as a URI: a URI or absolute path as is, a relative path inside ``store``."""
    return store.uri_for(dataset) if is_relative(dataset) else dataset


def resolve_dataset(dataset: str, store: Store) -> Store:
    """A dataset directory: a URI or absolute path as is, a relative path inside ``store``."""
    check_uri(dataset, "dataset path")
    if not is_relative(dataset):
        return Store.open(dataset, s3_endpoint=store.endpoint if store.is_s3 else None,
                          region=store.region if store.is_s3 else None, outage_s=store.outage_s)
    return store.child(dataset)


__all__ = ["Store", "StoreError", "StoreNotFound", "retry", "store_from_config", "check_uri",
           "resolve_dataset", "dataset_uri", "absolute_uri", "DEFAULT_STORE"]
