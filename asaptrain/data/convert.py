"""The conversion engine: plan -> shards + manifest, in parallel, resumable.

A converter (:mod:`asaptrain.data.sources`, :mod:`asaptrain.data.synth`) only *plans*: it lists
the samples of each split as :class:`Item` (key, size estimate, a picklable spec) and names a
module-level ``make_row(key, spec)`` that decodes, checks and encodes one sample. :func:`convert`

1. groups each split's items, sorted by key, into shards of about ``target_bytes``; the group
   of shard ``train-00003`` depends only on the inputs, so it is the same on every run;
2. skips every shard whose ``_parts`` fragment carries the same plan id (a hash of the group's
   keys, specs and options) and whose file is complete: a rerun after an interruption redoes
   only the missing shards, even when ``manifest.json`` is gone;
3. runs ``make_row`` over chunks of the remaining groups in worker processes, writes each
   finished group as one shard (on a writer thread), removes shards the plan no longer makes,
   and writes ``manifest.json`` last.

Samples that cannot be used (unreadable file, missing pair, unknown label id) raise
:class:`Skip` and are named in the :class:`Summary`, never dropped silently.

    summary = convert(cityscapes_plan("/data/cityscapes"), Store.open("s3://bucket/ds/cs"), workers=8)
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from asaptrain.data.shards import (DEFAULT_SHARD_BYTES, PARTS_DIR, SCHEMA_VERSION, read_fragment, shard_name,
                                   write_manifest, write_shard)
from asaptrain.data.store import Store, StoreNotFound
from asaptrain.errors import UserError

_SHARD_RE = re.compile(r"^(train|val|test)-\d{5}\.parquet$")


class ConvertError(UserError):
    """A source tree that cannot be converted (wrong layout, nothing found)."""


class Skip(Exception):
    """Raised by a ``make_row`` for a sample that cannot be used; ``path`` names the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class Item:
    key: str
    est_bytes: int
    spec: tuple


@dataclass
class Plan:
    task: str
    source: str
    make_row: Callable[[str, tuple], dict[str, Any]]
    splits: dict[str, list[Item]]
    options: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file, reason) for samples dropped while planning (e.g. a photo without its label map)."""
    notes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    """Fields the manifest carries beside the shards (stored inputs, label count, palette)."""


@dataclass
class Summary:
    uri: str
    task: str
    source: str
    splits: dict[str, dict[str, int]]
    skipped: list[tuple[str, str]]
    notes: list[str]
    written: int
    reused: int
    removed: int
    seconds: float


class _InlineExecutor(Executor):
    """Runs each task at submit time: ``--workers 1`` without a process pool."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut


def group_items(items: list[Item], target_bytes: int) -> list[list[Item]]:
    """Items sorted by key, cut into consecutive groups of at most ``target_bytes`` (estimated)."""
    groups: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in sorted(items, key=lambda i: i.key):
        if current and size + item.est_bytes > target_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item.est_bytes
    return groups + [current] if current else groups


def _plan_id(plan: Plan, split: str, group: list[Item]) -> str:
    # The manifest fields join the id only when a plan has any: ids of older plans stay valid.
    blob = json.dumps([SCHEMA_VERSION, plan.task, plan.source, plan.options, split,
                       [[i.key, list(i.spec)] for i in group]] + ([plan.manifest] if plan.manifest else []),
                      default=str, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _make_rows(make_row, pairs: list[tuple[str, tuple]]) -> tuple[list[dict], list[list[str]]]:
    rows, skipped = [], []
    for key, spec in pairs:
        try:
            rows.append(make_row(key, spec))
        except Skip as s:
            skipped.append([s.path, s.reason])
    return rows, skipped


def _complete(store: Store, name: str, frag: dict | None, plan_id: str) -> bool:
    if not frag or frag.get("plan") != plan_id:
        return False
    try:
        return store.size(name) == frag["bytes"]
    except StoreNotFound:
        return False


def _remove_stale(store: Store, planned: set[str]) -> int:
    """Delete our shards, fragments and temp files that the current plan does not produce."""
    removed = 0
    for rel in store.list():
        if (_SHARD_RE.match(rel) and rel not in planned) or rel.startswith("_tmp-"):
            store.delete(rel)
            removed += rel.endswith(".parquet") and not rel.startswith("_tmp-")
    for rel in store.list(PARTS_DIR, suffix=".json"):
        if rel.rsplit("/", 1)[-1][: -len(".json")] not in planned:
            store.delete(rel)
    return removed


def convert(plan: Plan, store: Store, target_bytes: int = DEFAULT_SHARD_BYTES, workers: int = 1,
            progress: Callable[[str, int, int], None] | None = None, create_bucket: bool = False) -> Summary:
    """Write ``plan`` into ``store`` as shards + manifest; resumes an interrupted conversion.

    ``progress(split, rows_done, rows_total)`` is called as samples finish (rows_done counts
    skipped samples too).
    """
    from asaptrain.data.claim import claim, owner_here

    start = time.perf_counter()
    store.check(create_bucket=create_bucket)
    # A second conversion into this folder while this one runs is refused, naming this one; a
    # conversion killed before its end left a claim that goes stale, and a rerun takes it over.
    held = claim(store, "", owner_here(f"data {plan.source}"), what=f"dataset {store.uri_for()}")
    try:
        return _convert_claimed(plan, store, target_bytes, workers, progress, start)
    finally:
        held.release()


def _convert_claimed(plan: Plan, store: Store, target_bytes: int, workers: int,
                     progress: Callable[[str, int, int], None] | None, start: float) -> Summary:
    """:func:`convert`, while this command holds the dataset folder's claim."""
    entries: dict[str, dict] = {}
    skipped = list(plan.skipped)
    order: list[str] = []
    jobs = []  # (split, index, plan_id, group)
    done = {split: 0 for split in plan.splits}
    for split, items in plan.splits.items():
        for index, group in enumerate(group_items(items, target_bytes)):
            name, pid = shard_name(split, index), _plan_id(plan, split, group)
            order.append(name)
            frag = read_fragment(store, name)
            if _complete(store, name, frag, pid):
                entries[name] = frag
                skipped += [tuple(s) for s in frag.get("skipped", [])]
                done[split] += len(group)
            else:
                jobs.append((split, index, pid, group))
    removed = _remove_stale(store, set(order))
    totals = {split: len(items) for split, items in plan.splits.items()}
    if progress:
        for split in plan.splits:
            progress(split, done[split], totals[split])

    # Chunks of a few samples keep every worker busy even when a split is one shard.
    chunk = max(1, min(16, math.ceil(sum(len(j[3]) for j in jobs) / max(1, 4 * workers))))
    tasks = deque((j, c, [(i.key, i.spec) for i in job[3][c:c + chunk]])
                  for j, job in enumerate(jobs) for c in range(0, len(job[3]), chunk))
    pending_rows: dict[int, dict[int, tuple]] = {j: {} for j in range(len(jobs))}
    pool: Executor = (_InlineExecutor() if workers <= 1 or len(tasks) <= 1 else
                      ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                          initializer=_exit_with_parent, initargs=(os.getpid(),)))
    writer = ThreadPoolExecutor(1)  # parquet write + upload overlaps with decoding (pyarrow drops the GIL)
    writes: list[Future] = []
    try:
        running: dict[Future, tuple] = {}
        while tasks or running:
            _bound_writes(writes, 2)
            while tasks and len(running) < 4 * max(1, workers):
                j, c, pairs = tasks.popleft()
                running[pool.submit(_make_rows, plan.make_row, pairs)] = (j, c, len(pairs))
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                j, c, n = running.pop(fut)
                pending_rows[j][c] = fut.result()
                split, index, pid, group = jobs[j]
                done[split] += n
                if progress:
                    progress(split, done[split], totals[split])
                if _group_done(pending_rows[j], group, chunk):
                    parts = [pending_rows[j].pop(k) for k in sorted(pending_rows[j])]
                    rows = [r for p in parts for r in p[0]]
                    group_skipped = [s for p in parts for s in p[1]]
                    skipped += [tuple(s) for s in group_skipped]
                    writes.append(writer.submit(write_shard, store, split, index, rows, plan.task, plan.source,
                                                pid, {"skipped": group_skipped}))
        for fut in writes:
            entry = fut.result()
            entries[entry["path"]] = entry
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
    manifest = write_manifest(store, plan.task, plan.source, [entries[name] for name in order], plan.manifest)
    return Summary(uri=store.uri_for(), task=plan.task, source=plan.source, splits=manifest["splits"],
                   skipped=sorted(set(skipped)), notes=plan.notes, written=len(jobs), reused=len(order) - len(jobs),
                   removed=removed, seconds=time.perf_counter() - start)


def _exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """In each worker process: exit once the converting process is gone. A killed parent
    (SIGKILL, OOM) runs no cleanup, and its workers would otherwise decode on as orphans."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="asaptrain-parent-watch", daemon=True).start()


def _group_done(parts: dict[int, tuple], group: list[Item], chunk: int) -> bool:
    return len(parts) == math.ceil(len(group) / chunk)


def _bound_writes(writes: list[Future], limit: int) -> None:
    """Wait while more than ``limit`` shards queue for the writer (each holds its rows in memory);
    a failed write raises here, early, rather than after all decoding."""
    while sum(not w.done() for w in writes) > limit:
        wait([w for w in writes if not w.done()], return_when=FIRST_COMPLETED)
    for w in writes:
        if w.done() and w.exception() is not None:
            raise w.exception()


__all__ = ["Item", "Plan", "Summary", "Skip", "ConvertError", "convert", "group_items"]
