"""S3 plumbing under :class:`asaptrain.data.store.Store`: credentials, endpoints, retries, errors.

Kept apart from the Store so the one place that touches secrets is small enough to audit:

- credentials are resolved the way the AWS CLI does (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, or ``AWS_PROFILE`` and ``~/.aws``), in
  every process that uses the store: the pyarrow filesystem is built without keys (its AWS SDK
  looks them up the same way), so pickling it for Ray or Tune carries none, and boto3's copy
  is held in :class:`Credentials`, whose repr hides them and which refuses to be pickled;
- Ray Tune is kept from copying the driver's credentials into trials
  (:func:`keep_credentials_out_of_tune`): a worker uses its own node's;
- the endpoint (MinIO, Ceph, R2; none = AWS) comes from ``--s3-endpoint`` or
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; pyarrow ignores those variables, so it is
  handed to pyarrow explicitly;
- :func:`retry` retries transient boto3 failures (for ``outage_s`` seconds too); pyarrow retries with exponential backoff for
  up to ``outage_s`` seconds (:class:`RetryingS3FileSystem`, whose pickle keeps that strategy,
  so Ray's controller and workers ride out a short outage of the endpoint too);
- :func:`describe_error` turns any failure into a :class:`StoreError` naming the endpoint and
  bucket and what to check, with every secret scrubbed from the text.
"""

from __future__ import annotations

import math
import os
import random
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from asaptrain.config.validate import reject_url_credentials
from asaptrain.errors import UserError

ATTEMPTS = 4
"""Attempts per S3 request (pyarrow's retry strategy and :func:`retry`) before giving up."""

DEFAULT_OUTAGE_S = 60.0
"""Seconds a pyarrow S3 operation keeps retrying an unreachable or failing endpoint (storage.outage_s)."""
BACKOFF_BASE_S = 0.025
"""pyarrow's AWS default retry strategy sleeps BACKOFF_BASE_S * 2**n before retry n."""

T = TypeVar("T")

_FAILURES = (  # (error codes or substrings of the error text, what the user should check)
    (("unable to locate credentials", "nocredentials", "no credentials"),
     "no S3 credentials found for {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"),
    (("403", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "expiredtoken", "invalidtoken",
      "forbidden"), "{where} refused the credentials; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                    "(or AWS_PROFILE) and the bucket's access policy"),
    (("networkconnection", "could not connect", "couldn't connect", "connect timeout", "could not resolve",
      "connection refused", "timed out", "failed to connect", "endpoint url"),
     "cannot reach endpoint {endpoint} (bucket {bucket!r}); check --s3-endpoint / AWS_ENDPOINT_URL_S3 "
     "and that the server is running"),
)


class StoreError(UserError):
    """A store that cannot be used: the message names the endpoint, bucket or path and what to check."""


class StoreNotFound(StoreError, FileNotFoundError):
    """A path that does not exist in the store."""


class Credentials:
    """Resolved AWS credentials; the repr hides them and pickling is refused."""

    def __init__(self, access_key: str | None = None, secret_key: str | None = None, token: str | None = None):
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


def resolve_credentials() -> tuple[Credentials, str | None]:
    """Credentials and the profile's region, from the environment or ``AWS_PROFILE``."""
    import boto3

    session = boto3.Session()  # honours AWS_PROFILE, ~/.aws/credentials, ~/.aws/config
    creds = session.get_credentials()
    if creds is None:
        return Credentials(), session.region_name
    frozen = creds.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token), session.region_name


def safe_url(url: str | None) -> str:
    """An endpoint URL for messages: no user:password part; "AWS S3" when there is none."""
    if not url:
        return "AWS S3"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def is_transient(exc: BaseException) -> bool:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError

    if isinstance(exc, S3UploadFailedError):  # wraps the ClientError that failed the upload
        return exc.__context__ is not None and is_transient(exc.__context__)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error_code(exc) in ("SlowDown", "Throttling", "RequestTimeout", "InternalError")
    return isinstance(exc, BotoConnectionError)


def retry(fn: Callable[[], T], attempts: int = ATTEMPTS, base_delay_s: float = 0.2,
          outage_s: float = 0.0, max_delay_s: float = 5.0) -> T:
    """Call ``fn``; retry transient S3 errors (connection, 5xx, throttling) with jittered backoff.

    At least ``attempts`` tries, and with ``outage_s`` > 0 further tries until that many
    seconds have passed since the first (the pyarrow filesystem's ``storage.outage_s``, so a
    boto3 call rides out the same outage), the last wait cut to end there and one more try
    made then; waits double from ``base_delay_s`` up to ``max_delay_s``.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            attempt += 1
            delay = min(max_delay_s, base_delay_s * 2 ** (attempt - 1)) * (0.5 + random.random())
            left_s = outage_s - (time.monotonic() - start)
            if not is_transient(exc) or (attempt >= attempts and left_s <= 0):
                raise
            if attempt >= attempts:  # past the quick attempts: only within the outage window
                delay = min(delay, left_s)
            time.sleep(delay)


def is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an I/O failure of pyarrow or boto3 (and not, say, a bug)."""
    if isinstance(exc, OSError):
        return True
    try:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # a local store where boto3 is not installed: no boto3 error can have occurred
        return False
    return isinstance(exc, (ClientError, BotoCoreError, S3UploadFailedError))


def describe_error(exc: BaseException, what: str, bucket: str, endpoint: str | None, credentials: Credentials,
                   bucket_op: bool = False) -> StoreError:
    """A StoreError for an S3 failure: names endpoint and bucket, says what to check, no secrets."""
    detail = credentials.scrub(str(exc)).strip()[:300]
    where = f"bucket {bucket!r} at endpoint {safe_url(endpoint)}"
    code = "NoSuchBucket" if bucket_op and error_code(exc) == "404" else error_code(exc)  # HeadBucket: bare 404
    # pyarrow says "AWS Error NO_SUCH_BUCKET ...", botocore gives a code: match both spellings.
    text = f"{detail} {code}".lower().replace("_", "")
    if "nosuchbucket" in text or "bucket does not exist" in text:
        return StoreError(f"{what}: {where} does not exist; create it (writers take --create-bucket) "
                          "or check the bucket name in the URI")
    if isinstance(exc, FileNotFoundError) or code in ("NoSuchKey", "404"):
        return StoreNotFound(f"{what}: not found in {where}")
    for hints, message in _FAILURES:
        if code in hints or any(h in text for h in hints if not h.isdigit()):
            return StoreError(f"{what}: " + message.format(where=where, endpoint=safe_url(endpoint), bucket=bucket))
    return StoreError(f"{what}: {where} failed: {detail}")


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem retrying for ``outage_s`` seconds, also after pickling.

    pyarrow's own pickle drops the retry strategy: the copy Ray's controller and workers get
    would try 3 times within a second and end the run at the first blip of the endpoint.
    """

    def __init__(self, outage_s: float = DEFAULT_OUTAGE_S, **kwargs: Any):
        retries = max(ATTEMPTS, math.ceil(math.log2(max(outage_s, 0) / BACKOFF_BASE_S + 1)))
        super().__init__(retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=retries), **kwargs)
        self._outage_s, self._kwargs = outage_s, kwargs

    def __reduce__(self):
        return _rebuild_fs, (self._outage_s, self._kwargs)


def _rebuild_fs(outage_s: float, kwargs: dict[str, Any]) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(outage_s, **kwargs)


def connect(s3_endpoint: str | None, region: str | None, outage_s: float = DEFAULT_OUTAGE_S
            ) -> tuple[pafs.S3FileSystem, str | None, str, Credentials]:
    """``(filesystem, endpoint URL or None, region, credentials)`` for an S3-compatible store;
    the filesystem's requests retry with backoff for ``outage_s`` seconds."""
    endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    if endpoint:
        reject_url_credentials(endpoint, "--s3-endpoint / AWS_ENDPOINT_URL_S3", bare_host=True)
    credentials, profile_region = resolve_credentials()
    region = region or os.environ.get("AWS_REGION") or profile_region or "us-east-1"
    kwargs: dict[str, Any] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parts.hostname:
            raise StoreError(f"--s3-endpoint {safe_url(endpoint)!r} is not a URL like http://host:9000")
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme
        endpoint = f"{parts.scheme}://{kwargs['endpoint_override']}"
    # No keys handed to pyarrow: its AWS SDK resolves them from this process's environment or
    # profile, and a pickled filesystem (Ray ships it to every worker and Tune writes it into
    # tuner.pkl) then holds none; the process that unpickles it resolves its own.
    fs = RetryingS3FileSystem(outage_s, region=region, connect_timeout=5, request_timeout=60, allow_delayed_open=True,
                              **kwargs)
    return fs, endpoint, region, credentials


CREDENTIAL_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
"""The environment variables that hold S3 credentials."""


def keep_credentials_out_of_tune() -> None:
    """Stop Ray Tune from copying the driver's S3 credentials into every trial's runtime env.

    Tune (``ray/tune/execution/class_cache.py``) passes the driver's ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` to each trial as runtime-env variables,
    which Ray's runtime-env agent logs in plain text. A trial, like every Ray worker, takes its
    credentials from its own node instead: the node's environment, an AWS profile, an instance
    role or a Kubernetes Secret.
    """
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_ENV_NAMES)


def boto_client(endpoint: str | None, region: str | None, credentials: Credentials):
    """A boto3 S3 client; path-style addressing for non-AWS endpoints, retries left to :func:`retry`."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=60,
                    s3={"addressing_style": "path"} if endpoint else None)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config,
                        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                        aws_session_token=credentials.token)


__all__ = ["StoreError", "StoreNotFound", "Credentials", "retry", "describe_error", "connect", "boto_client",
           "CREDENTIAL_ENV_NAMES", "keep_credentials_out_of_tune",
           "safe_url", "error_code", "is_transient", "is_store_failure", "ATTEMPTS", "DEFAULT_OUTAGE_S",
           "RetryingS3FileSystem"]
