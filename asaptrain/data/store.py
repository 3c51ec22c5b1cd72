"""A store is a URI: a local directory or an S3-compatible bucket prefix, read through pyarrow.

    store = Store.open("s3://bucket/asaptrain", s3_endpoint="http://minio:9000")
    store.write_json("datasets/x/manifest.json", {...})
    ds = ray.data.read_parquet(store.path("datasets/x/train-00000.parquet"), filesystem=store.fs)

Reads and writes go through ``pyarrow.fs`` (the same filesystem object Ray Data and Ray Train
take); boto3 is used for what pyarrow lacks: bucket checks and creation, and listings with
sizes in one request. MinIO, Ceph, R2 and AWS all work the same: the endpoint comes from
``--s3-endpoint`` or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (pyarrow ignores those
variables, so it is passed explicitly), credentials from the standard AWS variables or profile.

Credentials are resolved once, kept out of every repr and message, and never pickled: a Store
sent to another process re-resolves them there from the same environment.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from asaptrain.config import StorageConfig
from asaptrain.errors import UserError

DEFAULT_STORE = "./asaptrain-store"
S3_ATTEMPTS = 4
"""Attempts per S3 request (pyarrow's retry strategy and the boto3 wrapper) before giving up."""

T = TypeVar("T")


class StoreError(UserError):
    """A store that cannot be used: the message names the endpoint, bucket or path and what to check."""


class StoreNotFound(StoreError, FileNotFoundError):
    """A path that does not exist in the store."""


class _Secrets:
    """Resolved AWS credentials; never printed (the repr hides them) and never pickled."""

    def __init__(self, access_key: str | None, secret_key: str | None, token: str | None):
        self.access_key, self.secret_key, self.token = access_key, secret_key, token

    def __repr__(self) -> str:
        return "<credentials hidden>"

    def __reduce__(self):
        raise TypeError("credentials are not picklable; pickle the Store, which re-resolves them")

    def scrub(self, text: str) -> str:
        for value in (self.secret_key, self.token, self.access_key):
            if value:
                text = text.replace(value, "***")
        return text


def _resolve_secrets() -> tuple[_Secrets, str | None]:
    """Credentials and region from the environment or profile, the way the AWS CLI finds them."""
    import boto3

    session = boto3.Session()  # honours AWS_PROFILE, ~/.aws/credentials, ~/.aws/config
    creds = session.get_credentials()
    if creds is None:
        return _Secrets(None, None, None), session.region_name
    frozen = creds.get_frozen_credentials()
    return _Secrets(frozen.access_key, frozen.secret_key, frozen.token), session.region_name


def _safe_url(url: str | None) -> str:
    """An endpoint URL without any user:password part."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path


def _is_transient(exc: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError

    if isinstance(exc, BotoConnectionError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError")
    return False


def retry(fn: Callable[[], T], attempts: int = S3_ATTEMPTS, base_delay_s: float = 0.2) -> T:
    """Call ``fn``; retry transient S3 errors (connection, 5xx, throttling) with jittered backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not _is_transient(exc):
                raise
            time.sleep(base_delay_s * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


class Store:
    """A directory of the store: ``fs`` + ``root`` (a path inside ``fs``, no scheme)."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, is_s3: bool,
                 endpoint: str | None = None, region: str | None = None, secrets: _Secrets | None = None):
        self.uri, self.fs, self.root, self.is_s3 = uri, fs, root.rstrip("/") or "/", is_s3
        self.endpoint, self.region = endpoint, region
        self._secrets = secrets or _Secrets(None, None, None)
        self._boto = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def open(cls, uri: str, s3_endpoint: str | None = None, region: str | None = None) -> "Store":
        """Open a path, ``file://`` URI or ``s3://bucket/prefix`` (endpoint: flag or AWS_ENDPOINT_URL*)."""
        uri = uri or DEFAULT_STORE
        if uri.startswith("s3://"):
            return cls._open_s3(uri, s3_endpoint, region)
        if "://" in uri and not uri.startswith("file://"):
            raise StoreError(f"store {uri!r}: unsupported scheme; use a path, file:///path or s3://bucket/prefix")
        path = os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))
        return cls(uri, pafs.LocalFileSystem(), path, is_s3=False)

    @classmethod
    def _open_s3(cls, uri: str, s3_endpoint: str | None, region: str | None) -> "Store":
        root = uri[len("s3://"):].strip("/")
        if not root:
            raise StoreError(f"store {uri!r} names no bucket; use s3://bucket or s3://bucket/prefix")
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        secrets, profile_region = _resolve_secrets()
        region = region or os.environ.get("AWS_REGION") or profile_region or "us-east-1"
        kwargs: dict[str, Any] = {}
        if endpoint:
            parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            if not parts.hostname:
                raise StoreError(f"--s3-endpoint {_safe_url(endpoint)!r} is not a URL like http://host:9000")
            kwargs["endpoint_override"] = parts.netloc.rsplit("@", 1)[-1] + parts.path.rstrip("/")
            kwargs["scheme"] = parts.scheme
            endpoint = f"{parts.scheme}://{kwargs['endpoint_override']}"
        if secrets.access_key:
            kwargs.update(access_key=secrets.access_key, secret_key=secrets.secret_key,
                          session_token=secrets.token)
        fs = pafs.S3FileSystem(
            region=region, connect_timeout=5, request_timeout=60, allow_delayed_open=True,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS), **kwargs,
        )
        return cls(uri, fs, root, is_s3=True, endpoint=endpoint, region=region, secrets=secrets)

    def __reduce__(self):
        # Re-open in the receiving process: credentials are re-resolved there, never pickled.
        return (_reopen, (self.uri, self.endpoint, self.region))

    def __repr__(self) -> str:
        where = f", endpoint={_safe_url(self.endpoint)!r}" if self.is_s3 else ""
        return f"Store({self.uri_for()!r}{where})"

    def child(self, *parts: str) -> "Store":
        """The sub-store at ``root/parts`` (same filesystem and credentials)."""
        sub = Store(self.uri_for(*parts), self.fs, self.path(*parts), self.is_s3,
                    self.endpoint, self.region, self._secrets)
        sub._boto = self._boto
        return sub

    # ------------------------------------------------------------------ naming

    def path(self, *parts: str) -> str:
        """The fs path of ``root/parts`` (what pyarrow and Ray take with ``filesystem=fs``)."""
        clean = [p.strip("/") for p in parts if p and p.strip("/")]
        return "/".join([self.root.rstrip("/")] + clean) if clean else self.root

    def uri_for(self, *parts: str) -> str:
        """The user-facing URI of ``root/parts`` (never with credentials)."""
        return ("s3://" if self.is_s3 else "") + self.path(*parts)

    def _rel(self, fs_path: str) -> str:
        return fs_path[len(self.root):].lstrip("/") if fs_path.startswith(self.root) else fs_path

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0] if self.is_s3 else ""

    def _prefix(self, rel: str) -> str:
        """Key prefix inside the bucket for ``rel`` (S3 only)."""
        return self.path(rel).split("/", 1)[1] if "/" in self.path(rel) else ""

    # ------------------------------------------------------------------ errors

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """Turn a pyarrow/botocore failure into a StoreError that says what to check."""
        detail = self._secrets.scrub(str(exc)).strip()
        if len(detail) > 300:
            detail = detail[:300] + "..."
        if not self.is_s3:
            if isinstance(exc, FileNotFoundError):
                return StoreNotFound(f"{what}: no such file or directory")
            return StoreError(f"{what}: {detail}")
        where = f"bucket {self.bucket!r} at endpoint {_safe_url(self.endpoint)}"
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        # pyarrow reports "AWS Error NO_SUCH_BUCKET ...", botocore a code: match both spellings.
        text = (detail + " " + code).lower().replace("_", "")
        if any(s in text for s in ("nosuchbucket", "bucket does not exist")):
            return StoreError(f"{what}: {where} does not exist; create it (writers take --create-bucket) "
                              "or check the bucket name in the URI")
        if isinstance(exc, FileNotFoundError) or code in ("NoSuchKey", "404"):
            return StoreNotFound(f"{what}: not found in {where}")
        if any(s in text for s in ("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch",
                                   "expiredtoken", "invalidtoken", "forbidden")) or code == "403":
            return StoreError(f"{what}: {where} refused the credentials; check AWS_ACCESS_KEY_ID / "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's access policy")
        if any(s in text for s in ("networkconnection", "could not connect", "couldn't connect", "connect timeout",
                                   "could not resolve", "connection refused", "timed out", "failed to connect",
                                   "endpoint url")):
            return StoreError(f"{what}: cannot reach endpoint {_safe_url(self.endpoint)} (bucket {self.bucket!r}); "
                              "check --s3-endpoint / AWS_ENDPOINT_URL_S3 and that the server is running")
        return StoreError(f"{what}: {where} failed: {detail}")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreError:
            raise
        except Exception as exc:  # pyarrow raises OSError subclasses, boto3 ClientError/BotoCoreError
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, (OSError, ClientError, BotoCoreError)):
                raise self._error(exc, what) from None
            raise

    # ------------------------------------------------------------------ boto3

    def boto_client(self):
        """A boto3 S3 client for this endpoint (path-style addressing for non-AWS endpoints)."""
        if self._boto is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60,
                            s3={"addressing_style": "path"} if self.endpoint else None)
            self._boto = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=self.region, config=config,
                aws_access_key_id=self._secrets.access_key, aws_secret_access_key=self._secrets.secret_key,
                aws_session_token=self._secrets.token,
            )
        return self._boto

    def check(self, create_bucket: bool = False) -> None:
        """Fail early, naming what to fix, when the bucket is missing, refused or unreachable;
        with ``create_bucket`` a missing bucket is created instead."""
        if not self.is_s3:
            return
        try:
            retry(lambda: self.boto_client().head_bucket(Bucket=self.bucket))
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                if create_bucket:
                    create_bucket_for(self)
                    return
                raise StoreError(f"store {self.uri_for()}: bucket {self.bucket!r} does not exist at endpoint "
                                 f"{_safe_url(self.endpoint)}; create it (writers take --create-bucket) "
                                 "or check the bucket name in the URI") from None
            raise self._error(exc, f"store {self.uri_for()}") from None

    # ------------------------------------------------------------------ files

    def exists(self, rel: str) -> bool:
        info = self._call(f"checking {self.uri_for(rel)}", lambda: self.fs.get_file_info(self.path(rel)))
        return info.type != pafs.FileType.NotFound

    def size(self, rel: str) -> int:
        """Size of a file in bytes (StoreNotFound when absent)."""
        info = self._call(f"checking {self.uri_for(rel)}", lambda: self.fs.get_file_info(self.path(rel)))
        if info.type != pafs.FileType.File:
            raise StoreNotFound(f"{self.uri_for(rel)} does not exist")
        return info.size

    def read_bytes(self, rel: str) -> bytes:
        def read() -> bytes:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.readall()

        return self._call(f"reading {self.uri_for(rel)}", read)

    def _tmp_path(self, rel: str) -> str:
        head, _, name = self.path(rel).rpartition("/")
        return f"{head}/_tmp-{uuid.uuid4().hex[:12]}-{name}"

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: a temp name then a rename (file), one PUT (S3: the object appears whole)."""
        def write() -> None:
            if self.is_s3:
                with self.fs.open_output_stream(self.path(rel)) as f:  # delayed open: one PutObject
                    f.write(data)
                return
            self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
            tmp = self._tmp_path(rel)
            try:
                with self.fs.open_output_stream(tmp) as f:
                    f.write(data)
                self.fs.move(tmp, self.path(rel))
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)

        self._call(f"writing {self.uri_for(rel)}", write)

    def put_file(self, local_path: str, rel: str) -> None:
        """Copy a finished local file into the store; it becomes visible only when complete."""
        def put() -> None:
            if not self.is_s3:
                self.fs.create_dir(self.path(rel).rpartition("/")[0], recursive=True)
            tmp = self._tmp_path(rel)
            try:
                # Large S3 uploads are multipart and pyarrow cannot abort one: upload under a
                # temp key, then move, so a failed upload never leaves a partial final object.
                pafs.copy_files(local_path, tmp, source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)
                self.fs.move(tmp, self.path(rel))
            except BaseException:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
                raise

        self._call(f"uploading {self.uri_for(rel)}", put)

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
            names = [self._rel(i.path) for i in infos if not (recursive and i.type == pafs.FileType.Directory)]
        return sorted(n for n in names if suffix is None or n.endswith(suffix))

    def _list_s3(self, rel: str, recursive: bool) -> list[str]:
        prefix = self._prefix(rel)
        prefix = prefix + "/" if prefix else ""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix} | ({} if recursive else {"Delimiter": "/"})
        names: list[str] = []
        token = None
        while True:
            page = self._call(f"listing {self.uri_for(rel)}", lambda: retry(
                lambda: self.boto_client().list_objects_v2(**kwargs, **({"ContinuationToken": token} if token else {}))))
            bucket_root = self.root.split("/", 1)[1] if "/" in self.root else ""
            for key in [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]:
                key = key.rstrip("/")
                if key and key != prefix.rstrip("/"):
                    names.append(key[len(bucket_root):].lstrip("/") if bucket_root else key)
            if not page.get("IsTruncated"):
                return names
            token = page["NextContinuationToken"]

    def delete(self, rel: str, recursive: bool = False) -> None:
        """Delete a file (or, with recursive, a directory and all below it); absent is fine."""
        path = self.path(rel)

        def delete() -> None:
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                self.fs.delete_file(path)
            elif info.type == pafs.FileType.Directory:
                if not recursive:
                    raise StoreError(f"{self.uri_for(rel)} is a directory; pass recursive=True to delete it")
                self.fs.delete_dir(path)

        self._call(f"deleting {self.uri_for(rel)}", delete)

    # ------------------------------------------------------------------ handing on

    def ray_storage(self) -> tuple[str, pafs.FileSystem]:
        """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``."""
        return self.root, self.fs

    def endpoint_env(self) -> dict[str, str]:
        """Non-secret settings a child process needs to open this store the same way."""
        env = {}
        if self.is_s3 and self.endpoint:
            env["AWS_ENDPOINT_URL_S3"] = self.endpoint
        if self.is_s3 and self.region:
            env["AWS_REGION"] = self.region
        return env


def _reopen(uri: str, endpoint: str | None, region: str | None) -> Store:
    return Store.open(uri, s3_endpoint=endpoint, region=region)


def create_bucket_for(store: Store) -> None:
    """Create the store's bucket (no-op when it is already yours)."""
    if not store.is_s3:
        return
    kwargs: dict[str, Any] = {"Bucket": store.bucket}
    if store.region and store.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": store.region}
    try:
        retry(lambda: store.boto_client().create_bucket(**kwargs))
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise store._error(exc, f"creating bucket {store.bucket!r}") from None


def store_from_config(storage: StorageConfig) -> Store:
    """The store a config names (``[storage]`` section)."""
    return Store.open(storage.store, s3_endpoint=storage.s3_endpoint or None, region=storage.region or None)


def resolve_dataset(dataset: str, store: Store) -> Store:
    """A dataset directory: a URI or absolute path as is, a relative path inside ``store``."""
    if "://" in dataset or os.path.isabs(dataset):
        return Store.open(dataset, s3_endpoint=store.endpoint if store.is_s3 else None,
                          region=store.region if store.is_s3 else None)
    return store.child(dataset)


__all__ = ["Store", "StoreError", "StoreNotFound", "create_bucket_for", "retry", "store_from_config",
           "resolve_dataset", "DEFAULT_STORE"]
