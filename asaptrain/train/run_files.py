"""What a run writes into ``STORE/runs/NAME/``, and reading it back.

Rank 0 writes; every write of a whole file is atomic in the store (temp name then move, or a
single PUT), and ``metrics.jsonl`` is cut back to the restored step when a run resumes, so a
restart after a failure never counts a step twice.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from asaptrain.config.schema import Config
from asaptrain.config.io import to_toml
from asaptrain.errors import UserError

RUNS_PREFIX = "runs"


class MetricsError(UserError):
    """A ``metrics.jsonl`` damaged before its last line (a torn last line is only a crash's trace)."""


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
        self.store = store
        self.name = name
        self.dir = store.child(*prefix.split("/"), name)
        self._pending: list[str] = []
        self._lines: list[str] | None = None  # object stores: the file's lines, kept to rewrite it

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

    def flush(self, durable: bool = False) -> None:
        """Write pending records. A local file is appended to at every call; an object store can
        only rewrite the whole object, so there records wait for a ``durable`` flush (the
        checkpoints and the end), which keeps a long S3 run from re-uploading its history at
        every log step. Records lost in a crash are after the last checkpoint: the resumed run
        writes them again."""
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

    def read_metrics(self) -> list[dict]:
        """The records, without a torn last line: a crash mid-append leaves one, and the
        resumed run writes its records again. Damage anywhere else is an error naming the line."""
        if not self.dir.exists("metrics.jsonl"):
            return []
        lines = [(n, line) for n, line in enumerate(self.dir.read_text("metrics.jsonl").splitlines(), 1) if line.strip()]
        records = []
        for i, (n, line) in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i == len(lines) - 1:
                    break
                raise MetricsError(
                    f"{self.dir.uri_for('metrics.jsonl')} line {n} is not JSON ({exc.msg}); fix or delete that line "
                    "(later lines are intact)") from None
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (the checkpoint a resumed run continues from)."""
        self._pending = []
        if not self.dir.exists("metrics.jsonl"):
            return
        keep = [json.dumps(r, sort_keys=True) for r in self.read_metrics() if r.get("step", 0) <= step]
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


def new_run_name(prefix: str) -> str:
    """A fresh name: ``PREFIX-YYYYmmdd-HHMMSS-xxxx``."""
    import secrets

    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
