"""Claiming a run or output folder, so that two commands never write into one place.

    held = claim(store, "runs/NAME", what="run 'NAME'", take_stale=resume)
    try:
        ...                       # write the folder; a daemon thread keeps the heartbeat fresh
    finally:
        held.release()

A claim is one small JSON object (``FOLDER/_claim.json``, or another name beside a file) made
by an atomic create: a hard link of a finished temp file on a local disk (fails when the name
exists, and a reader never sees it half-written), a conditional PUT (``If-None-Match: *``) on
S3. The second command into the same place is refused, with the owner named (host, pid, Ray
job). The owner refreshes the claim's heartbeat while it runs; a claim whose heartbeat is older
than ``stale_s`` (or whose owner on this host is no longer alive) is stale, and a command that
may continue the folder (a resume, a rerun of `predict`) takes it over, atomically again (a
rename locally, ``If-Match`` on the stale object's ETag on S3). Every command that writes a
run or an output folder calls :func:`claim` before it starts Ray or writes anything.

Some S3-compatible servers ignore conditional writes: each store is probed once per process
and a warning says so where the claim cannot be trusted.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from typing import Any

from asaptrain.data.s3 import error_code, retry
from asaptrain.data.store import Store
from asaptrain.errors import UserError

CLAIM_FILE = "_claim.json"
"""The claim object inside a claimed folder."""
DEFAULT_STALE_S = 90.0
"""Seconds without a heartbeat after which a claim may be taken over (storage.claim_stale_s)."""

_probed: dict[tuple[str | None, str], bool] = {}


_TMP_PREFIX = "_tmp-"
"""A local claim's temp file: ``_tmp-<12 hex>-<claim name>``, beside the claim it becomes."""


def is_claim_object(path: str, name: str = CLAIM_FILE) -> bool:
    """Whether ``path`` is a claim object or one being made, not a file of its folder. On a local
    store a claiming command writes its temp file into the folder before linking it, so the
    command that holds the folder can meet another's there for a moment."""
    base = path.rsplit("/", 1)[-1]
    return base == name or (base.startswith(_TMP_PREFIX) and base.endswith(f"-{name}"))


class ClaimRefused(UserError):
    """The folder is claimed by another command that is alive (or not yet known to be dead)."""


class ClaimNotHonoured(UserWarning):
    """The store ignores conditional writes: concurrent commands cannot be told apart there."""


def owner_here(command: str = "") -> dict[str, Any]:
    """This process as a claim's owner: host, pid, and the Ray job when it runs inside one."""
    owner: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    if command:
        owner["command"] = command
    job = _ray_job()
    if job:
        owner["ray_job"] = job
    return owner


def _ray_job() -> str | None:
    """The Ray job's submission id (``ray job submit`` sets it for the entrypoint), else its job id."""
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "") or "{}").get("metadata") or {}
        if meta.get("job_submission_id"):
            return str(meta["job_submission_id"])
    except (ValueError, AttributeError):
        pass
    import sys

    ray = sys.modules.get("ray")  # only when Ray is already here: a claim never starts it
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        try:
            return ray.get_runtime_context().get_job_id()
        except Exception:  # a runtime context without a job (a worker of a shut-down Ray)
            return None
    return None


def describe_owner(owner: dict[str, Any]) -> str:
    """``pid 123 on host h (Ray job raysubmit_x)`` for messages."""
    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("command"):
        text = f"`asaptrain {owner['command']}` ({text})"
    return text + (f", Ray job {owner['ray_job']}" if owner.get("ray_job") else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale(record: dict[str, Any], stale_s: float, now: float | None = None) -> bool:
    """Whether a claim may be taken over: no heartbeat for ``stale_s`` seconds, or an owner on
    this host that no longer runs."""
    now = time.time() if now is None else now
    owner = record.get("owner") or {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and owner["pid"] != os.getpid():
        if not _pid_alive(owner["pid"]):
            return True
    return now - float(record.get("heartbeat") or 0) > stale_s


class Claim:
    """A held claim: refresh it with :meth:`beat` (a daemon thread does it), end it with :meth:`release`."""

    def __init__(self, store: Store, rel: str, record: dict[str, Any], etag: str | None, heartbeat_s: float,
                 made_dir: str | None = None):
        self.store, self.rel, self.record, self._etag = store, rel, record, etag
        self._made_dir = made_dir  # a local folder the claim created: removed again if left empty
        self.lost = self.released = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat_loop, args=(heartbeat_s,), name="asaptrain-claim",
                                        daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return self.store.uri_for(self.rel)

    def _beat_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.beat()
            except Exception as exc:  # a store outage: the next beat tries again
                print(f"[asaptrain] could not refresh the claim {self.uri}: {exc}", flush=True)

    def beat(self) -> None:
        """Refresh the heartbeat, unless the claim was taken over (then ``lost`` is set)."""
        with self._lock:
            if self.lost or self.released:
                return
            record = dict(self.record, heartbeat=time.time())
            ok, etag = _replace(self.store, self.rel, record, self._etag, self.record["token"], takeover=False)
            if not ok:
                self.lost = True
                print(f"[asaptrain] the claim {self.uri} was taken over by another command "
                      "(this one missed its heartbeats); its outputs may now mix", flush=True)
                return
            self.record, self._etag = record, etag

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (only while it is still this command's)."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self.lost or self.released:
                return
            current = _read(self.store, self.rel)
            if current is not None and current[0].get("token") == self.record["token"]:
                self.store.delete(self.rel)
            self.released = True
        if self._made_dir:
            try:
                os.rmdir(self._made_dir)  # only when nothing was written into it
            except OSError:
                pass

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim(store: Store, path: str = "", owner: dict[str, Any] | None = None, *, name: str = CLAIM_FILE,
          what: str = "", take_stale: bool = True, stale_s: float = DEFAULT_STALE_S,
          heartbeat_s: float | None = None) -> Claim:
    """Claim the folder ``path`` of ``store`` (its ``name`` object) for ``owner`` (default: this
    process); ClaimRefused names the owner when another command holds it.

    ``take_stale``: take over a claim whose heartbeat is older than ``stale_s`` seconds (a
    resume, a rerun); without it even a stale claim is refused. The heartbeat is refreshed
    every ``heartbeat_s`` seconds (default ``stale_s / 6``) until :meth:`Claim.release`.
    """
    rel = f"{path.strip('/')}/{name}" if path.strip("/") else name
    what = what or store.uri_for(path)
    _check_conditional_writes(store, path)
    record = {"owner": owner or owner_here(), "token": uuid.uuid4().hex, "claimed": time.time(),
              "heartbeat": time.time()}
    every_s = heartbeat_s if heartbeat_s is not None else max(0.5, stale_s / 6)
    folder = store.path(path)
    made_dir = folder if not store.is_s3 and not os.path.isdir(folder) else None
    for _ in range(3):  # a claim released or taken between our create and our read: try again
        created, etag = _create(store, rel, record)
        if created:
            return Claim(store, rel, record, etag, every_s, made_dir)
        found = _read(store, rel)
        if found is None:
            continue
        current, etag = found
        held_by = describe_owner(current.get("owner") or {})
        age_s = time.time() - float(current.get("heartbeat") or 0)
        if not is_stale(current, stale_s):
            raise ClaimRefused(
                f"{what} is in use by {held_by} (claim {store.uri_for(rel)}, heartbeat {age_s:.0f} s ago): "
                f"wait for it to end, or write somewhere else")
        if not take_stale:
            raise ClaimRefused(
                f"{what} was claimed by {held_by}, which stopped {age_s:.0f} s ago without finishing "
                f"(claim {store.uri_for(rel)}): resume it instead")
        taken, etag = _replace(store, rel, record, etag, current.get("token"), takeover=True)
        if taken:
            print(f"[asaptrain] took over {what} from {held_by} (no heartbeat for {age_s:.0f} s)", flush=True)
            return Claim(store, rel, record, etag, every_s)
    raise ClaimRefused(f"{what}: another command keeps claiming and releasing {store.uri_for(rel)}; try again")


# ----------------------------------------------------------------------------- atomic primitives


def _body(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1) + "\n").encode()


def _local_tmp(store: Store, rel: str, record: dict[str, Any]) -> str:
    final = store.path(rel)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = f"{os.path.dirname(final)}/{_TMP_PREFIX}{uuid.uuid4().hex[:12]}-{os.path.basename(final)}"
    with open(tmp, "wb") as fh:
        fh.write(_body(record))
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


def _create(store: Store, rel: str, record: dict[str, Any]) -> tuple[bool, str | None]:
    """Create the claim object only where none exists: (False, None) when one does, else
    (True, its ETag on S3)."""
    if not store.is_s3:
        tmp = _local_tmp(store, rel, record)
        try:
            os.link(tmp, store.path(rel))  # atomic and exclusive, and the content is whole
            return True, None
        except FileExistsError:
            return False, None
        finally:
            os.remove(tmp)
    try:
        reply = retry(lambda: store.boto_client().put_object(
            Bucket=store.bucket, Key=store._key(rel), Body=_body(record), IfNoneMatch="*"), outage_s=store.outage_s)
    except Exception as exc:
        if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return False, None
        raise store.describe_failure(exc, f"claiming {store.uri_for(rel)}") from None
    return True, reply.get("ETag")


def _read(store: Store, rel: str) -> tuple[dict[str, Any], str | None] | None:
    """The claim object and its ETag (S3), or None when there is none."""
    try:
        if store.is_s3:
            reply = retry(lambda: store.boto_client().get_object(Bucket=store.bucket, Key=store._key(rel)),
                          outage_s=store.outage_s)
            return json.loads(reply["Body"].read()), reply.get("ETag")
        with open(store.path(rel), "rb") as fh:
            return json.loads(fh.read()), None
    except FileNotFoundError:
        return None
    except ValueError:  # not JSON: not a claim this package wrote; treat as held, heartbeat unknown
        return {"owner": {"host": "?", "pid": "?"}, "heartbeat": time.time()}, None
    except Exception as exc:
        if error_code(exc) in ("NoSuchKey", "404"):
            return None
        raise store.describe_failure(exc, f"reading {store.uri_for(rel)}") from None


def _replace(store: Store, rel: str, record: dict[str, Any], etag: str | None, token: str | None,
             takeover: bool) -> tuple[bool, str | None]:
    """Replace the claim object only while it is still the one with ``token`` (ETag ``etag`` on
    S3): (True, the new ETag), or (False, None) when it changed meanwhile."""
    if store.is_s3:
        try:
            reply = retry(lambda: store.boto_client().put_object(
                Bucket=store.bucket, Key=store._key(rel), Body=_body(record), IfMatch=etag), outage_s=store.outage_s)
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return False, None
            raise store.describe_failure(exc, f"claiming {store.uri_for(rel)}") from None
        return True, reply.get("ETag")
    final = store.path(rel)
    if not takeover:  # the owner's heartbeat: only a taker of a stale claim writes here besides it
        found = _read(store, rel)
        if found is None or found[0].get("token") != token:
            return False, None
        tmp = _local_tmp(store, rel, record)
        os.replace(tmp, final)
        return True, None
    # A takeover: move the old claim aside (one rename wins), check it is the one we judged,
    # then link the new one in; a claim that changed meanwhile is put back.
    aside = f"{final}.old-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(final, aside)
    except FileNotFoundError:
        return False, None
    try:
        with open(aside, "rb") as fh:
            moved = json.loads(fh.read())
    except ValueError:
        moved = {}
    if moved.get("token") != token:
        try:
            os.link(aside, final)
        except FileExistsError:
            pass
        os.remove(aside)
        return False, None
    os.remove(aside)
    tmp = _local_tmp(store, rel, record)
    try:
        os.link(tmp, final)
    except FileExistsError:  # another command created one in the gap: it holds the folder now
        return False, None
    finally:
        os.remove(tmp)
    return True, None


def _check_conditional_writes(store: Store, path: str) -> None:
    """Probe an S3 store once per process: does it refuse a second ``If-None-Match: *`` PUT?"""
    if not store.is_s3:
        return
    key = (store.endpoint, store.bucket)
    if key in _probed:
        return
    probe = f"{path.strip('/')}/_claim-probe-{uuid.uuid4().hex[:12]}".lstrip("/")
    _create(store, probe, {"probe": 1})
    honoured = not _create(store, probe, {"probe": 2})[0]
    try:
        store.delete(probe)
    finally:
        _probed[key] = honoured
    if not honoured:
        warnings.warn(f"the S3 endpoint of {store.uri_for()} ignores conditional writes (If-None-Match): two "
                      "commands started at once into one folder cannot be told apart there", ClaimNotHonoured,
                      stacklevel=3)
        print(f"[asaptrain] warning: the S3 endpoint of {store.uri_for()} ignores conditional writes "
              "(If-None-Match); claims of run and output folders cannot be trusted there", flush=True)


__all__ = ["CLAIM_FILE", "DEFAULT_STALE_S", "Claim", "ClaimRefused", "ClaimNotHonoured", "claim", "owner_here",
           "describe_owner", "is_stale"]
