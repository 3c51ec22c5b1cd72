"""How a run ends: run.json marked finished, failed or interrupted, with the first cause.

The driver (:func:`asaptrain.train.launch.fit`) calls :func:`conclude` when ``TorchTrainer.fit``
returns or raises, and wraps its wait in :func:`marked_if_interrupted` so Ctrl-C or SIGTERM
still leaves ``run.json`` saying what happened. A store that does not answer at that moment
(an outage, permissions) is retried for a while and then named beside the run's own error,
never in its place. Workers call :func:`stop_instead_of_retry` around the loop: a failure that
a restart would only repeat (a non-finite loss) ends the run instead of being retried by
``FailureConfig``.

    end = conclude(files, meta, start_step, error)   # -> Ending(status, steps, error, last_eval)
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from asaptrain.data.s3 import StoreError
from asaptrain.train.gan import NonFiniteLoss
from asaptrain.train.run_files import Metrics

STOP_FILE = "stop.json"
"""Written by rank 0 when the run stops itself for a reason no restart can fix."""
RETRY_EVERY_S = 2.0
T = TypeVar("T")


@dataclass
class Ending:
    status: str
    """finished, failed or interrupted."""
    steps: int
    error: str | None
    last_eval: dict | None


def stop_instead_of_retry(train: Callable[[], Any], run_files) -> None:
    """Run ``train``; on a non-finite loss (every rank meets it at the same step: the check is
    all-reduced) rank 0 writes the reason to STOP_FILE and all ranks return normally, so Ray
    ends the run instead of restarting it into the same loss."""
    try:
        train()
    except NonFiniteLoss as exc:
        if run_files is not None:
            run_files.dir.write_json(STOP_FILE, {"reason": str(exc), "time": time.time()})


def clear_stop(files) -> None:
    """Forget a stop reason a previous attempt of this run left (a resume starts afresh)."""
    if files.dir.exists(STOP_FILE):
        files.dir.delete(STOP_FILE)


def first_cause(error: BaseException | None) -> str | None:
    """One line naming the error that ended the run: the controller's or the first failed
    rank's own exception inside Ray's TrainingFailedError, not the wrapper."""
    if error is None:
        return None
    workers = getattr(error, "worker_failures", None) or {}
    inner = getattr(error, "controller_failure", None) or (workers[min(workers)] if workers else None) or error
    lines = [line.strip() for line in str(inner).strip().splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[-1] if lines else ''}"[:2000]


def _patient(what: str, fn: Callable[[], T], patience_s: float) -> T:
    """``fn()``, retried every RETRY_EVERY_S while the store fails, for ``patience_s`` seconds; says
    once that it is waiting, and raises the last StoreError when time is up."""
    deadline = time.monotonic() + patience_s
    said = False
    while True:
        try:
            return fn()
        except StoreError as exc:
            if time.monotonic() + RETRY_EVERY_S > deadline:
                raise
            if not said:
                print(f"[asaptrain] {what}: {exc}; retrying for up to {patience_s:.0f} s", flush=True)
                said = True
            time.sleep(RETRY_EVERY_S)


def _mark(files, meta: dict, fields: dict, patience_s: float) -> str | None:
    """Write run.json with ``fields``; None, or why the store refused it."""
    try:
        _patient(f"marking {files.dir.uri_for('run.json')} {fields.get('status')}",
                 lambda: files.write_run(**{**meta, **fields}), patience_s)
        return None
    except StoreError as exc:
        return f"{files.dir.uri_for('run.json')} still says 'running': the store refused the update ({exc})"


def conclude(files, meta: dict, start: int, error: BaseException | None, patience_s: float = 60.0) -> Ending:
    """Mark the run finished or failed (``error``, or a stop reason a worker left) in run.json."""
    cause, notes = first_cause(error), []
    try:
        stop = _patient("reading the run's stop reason", lambda: files.dir.read_json(STOP_FILE)
                        if files.dir.exists(STOP_FILE) else None, patience_s)
        records = _patient("reading the run's metrics", files.read_metrics, patience_s)
    except StoreError as exc:
        stop, records = None, Metrics()
        notes.append(f"the run's files could not be read ({exc})")
    if stop and not cause:
        cause = f"stopped: {stop['reason']}"
    done = max((r["step"] for r in records), default=start) if records else int(meta.get("steps_done") or start)
    evals = records.evals()
    status = "failed" if cause else "finished"
    refused = _mark(files, meta, {"status": status, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "steps_done": done, "error": cause}, patience_s)
    notes += [refused] if refused else []
    error_text = "; ".join([cause] * bool(cause) + notes) or None
    return Ending(status, done, error_text, evals[-1] if evals else None)


@contextlib.contextmanager
def marked_if_interrupted(files, meta: dict) -> Iterator[None]:
    """Mark run.json 'interrupted' (and say how to resume) when Ctrl-C or SIGTERM ends the wait."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        how = ("Ctrl-C" if isinstance(exc, KeyboardInterrupt) else
               "SIGTERM" if exc.code == signal.SIGTERM else f"exit {exc.code}")  # Ray's driver exits on SIGTERM
        reason = f"interrupted by {how}; continue it with --resume {files.name}"
        refused = _mark(files, meta, {"status": "interrupted", "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "error": reason}, patience_s=5.0)
        print(f"[asaptrain] run {files.name} {reason}" + (f"; {refused}" if refused else ""), flush=True)
        raise
