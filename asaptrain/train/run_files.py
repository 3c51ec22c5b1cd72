"""What a run writes into ``STORE/runs/NAME/``, and reading it back.

Rank 0 writes; every write of a whole file is atomic in the store (temp name then move, or a
single PUT), and ``metrics.jsonl`` is cut back to the restored step when a run resumes, so a
restart after a failure never counts a step twice. Curve sinks (``asaptrain.train.curves``:
TensorBoard, MLflow) attached to it see every record, sample grid and flush as well.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from asaptrain.config.schema import Config
from asaptrain.config.io import to_toml
from asaptrain.errors import UserError

RUNS_PREFIX = "runs"


EVAL_KIND = "eval"
"""``kind`` of a validation record in ``metrics.jsonl`` (training records are ``train``)."""


def is_eval(record: dict) -> bool:
    """A validation record (PSNR, SSIM, FID at a step), as opposed to a training log record."""
    return record.get("kind") == EVAL_KIND


class Metrics(list):
    """The records of a ``metrics.jsonl``, oldest first, with what could not be read.

    A line that is not JSON, or not a JSON object with an integer ``step``, is counted in
    ``unreadable`` and skipped, never an error: a crash mid-append leaves a torn last line, and a
    report or a resume must still read the rest.
    """

    def __init__(self, records=(), unreadable: int = 0, present: bool = True):
        super().__init__(records)
        self.unreadable = unreadable
        """Lines skipped as unreadable."""
        self.present = present
        """False when the run has no ``metrics.jsonl``."""

    def evals(self) -> list[dict]:
        """The validation records."""
        return [r for r in self if is_eval(r)]

    def train(self) -> list[dict]:
        """Everything else: the training log records."""
        return [r for r in self if not is_eval(r)]


def parse_metrics(text: str | None) -> Metrics:
    """``metrics.jsonl``'s text (None: no file) as :class:`Metrics`."""
    if text is None:
        return Metrics(present=False)
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
        else:
            bad += 1
    return Metrics(records, bad)


def json_safe(value: Any) -> Any:
    """JSON-safe numbers (NaN/inf become None: JSON has no such values)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunFiles:
    """The files of one run in a store: ``RunFiles(store, name)``; paths relative to the run."""

    def __init__(self, store, name: str, prefix: str = RUNS_PREFIX):
        check_name(name, "run name")
        self.store = store
        self.name = name
        self.dir = store.child(*prefix.split("/"), name)
        self._pending: list[str] = []
        self._lines: list[str] | None = None  # object stores: the file's lines, kept to rewrite it
        self._sinks: list = []
        self._failed: set[int] = set()

    # ----------------------------------------------------------------------- curve sinks
    def attach(self, *sinks) -> None:
        """Send what this run records to ``sinks`` too (see ``asaptrain.train.curves``)."""
        self._sinks += sinks

    def _to_sinks(self, method: str, *args) -> None:
        # Curves are a view of the run, not the run: a sink that fails (a tracking server
        # gone away) is reported once and never stops training.
        for i, sink in enumerate(self._sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # noqa: BLE001
                if i not in self._failed:
                    self._failed.add(i)
                    print(f"[asaptrain] {type(sink).__name__}.{method} failed, curves may miss points: "
                          f"{type(exc).__name__}: {str(exc)[:300]}", flush=True)

    def close(self) -> None:
        """Flush and close the attached sinks (the end of training)."""
        self._to_sinks("close")
        self._sinks = []

    # ----------------------------------------------------------------------- metadata
    def exists(self) -> bool:
        return self.dir.exists("run.json")

    def read_run(self) -> dict:
        return self.dir.read_json("run.json")

    def write_run(self, **fields: Any) -> dict:
        meta = self.read_run() if self.exists() else {}
        meta.update(fields)
        self.dir.write_json("run.json", json_safe(meta))
        return meta

    def write_config(self, cfg: Config) -> None:
        self.dir.write_text("config.toml", to_toml(cfg))

    # ----------------------------------------------------------------------- metrics
    def add_metrics(self, record: dict) -> None:
        self._pending.append(json.dumps(json_safe(record), sort_keys=True))
        self._to_sinks("record", record)

    def flush(self, durable: bool = False) -> None:
        """Write pending records. A local file is appended to at every call; an object store can
        only rewrite the whole object, so there records wait for a ``durable`` flush (the
        checkpoints and the end), which keeps a long S3 run from re-uploading its history at
        every log step. Records lost in a crash are after the last checkpoint: the resumed run
        writes them again."""
        self._to_sinks("flush", durable)
        if not self._pending or (self.dir.is_s3 and not durable):
            return
        if self.dir.is_s3:
            if self._lines is None:
                self._lines = self.dir.read_text("metrics.jsonl").splitlines() if self.dir.exists("metrics.jsonl") else []
            self._lines += self._pending
            self.dir.write_text("metrics.jsonl", "\n".join(self._lines) + "\n")
        else:
            self.dir.append_text("metrics.jsonl", "\n".join(self._pending) + "\n")
        self._pending = []

    def read_metrics(self) -> Metrics:
        """The records that read (:class:`Metrics`: unreadable lines are counted, not raised)."""
        return parse_metrics(self.dir.read_text("metrics.jsonl") if self.dir.exists("metrics.jsonl") else None)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (the checkpoint a resumed run continues from), and lines
        that do not read (a crash's torn last line)."""
        self._pending = []
        self._to_sinks("restart", step)
        if not self.dir.exists("metrics.jsonl"):
            return
        records = self.read_metrics()
        if records.unreadable:
            print(f"[asaptrain] {self.dir.uri_for('metrics.jsonl')}: dropping {records.unreadable} unreadable "
                  "line(s) as the run resumes", flush=True)
        keep = [json.dumps(r, sort_keys=True) for r in records if r["step"] <= step]
        self.dir.write_text("metrics.jsonl", "".join(line + "\n" for line in keep))
        self._lines = keep

    # ----------------------------------------------------------------------- the rest
    def write_progress(self, progress: dict) -> None:
        self.dir.write_json("progress.json", json_safe({**progress, "time": time.time()}))

    def read_progress(self) -> dict | None:
        try:
            return self.dir.read_json("progress.json") if self.dir.exists("progress.json") else None
        except Exception:  # a half-visible object on a slow store: try again at the next poll
            return None

    def write_timing(self, timing: dict) -> None:
        self.dir.write_json("timing.json", json_safe(timing))

    def write_samples(self, step: int, png: bytes) -> None:
        self.dir.write_bytes(f"samples/{step:08d}.png", png)
        self._to_sinks("image", step, png)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(name: str, what: str) -> str:
    """``name`` if it is one directory name that stays inside the store, else a UserError.

    ``--name ../../x`` would otherwise put a run beside the store, or anywhere on the disk.
    """
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise UserError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' (no '/' or '..'), "
                        "starting with a letter or digit, at most 128 characters")
    return name


def new_run_name(prefix: str) -> str:
    """A fresh name: ``PREFIX-YYYYmmdd-HHMMSS-xxxx``."""
    import secrets

    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
