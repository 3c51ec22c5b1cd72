"""The shard format: Parquet files of encoded images beside a ``manifest.json``.

One row per sample (see :data:`SCHEMA`); media columns stay encoded (PNG/JPEG), uncompressed,
without dictionary, so readers pay one decode and no double compression. A dataset directory:

    train-00000.parquet  train-00001.parquet  val-00000.parquet  manifest.json  _parts/*.json

A shard is written to a local temp file, hashed, then moved into the store, so a shard name in
the store always holds a complete file. Each shard then gets a small fragment in ``_parts/``
(rows, bytes, sha256 and the id of the plan that produced it) so an interrupted conversion can
resume without rewriting finished shards; ``manifest.json`` is written last and is the one file
readers trust.

    with ShardWriter(store, "train", task="deblur", source="folder") as w:
        w.write({"key": "a", "target": png_bytes, "target_format": "png", "width": 64, "height": 64})
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from asaptrain.data.store import Store, StoreError, StoreNotFound
from asaptrain.errors import UserError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PARTS_DIR = "_parts"
SPLITS = ("train", "val", "test")
TASKS = ("labels2photo", "deblur", "image2image")
DEFAULT_SHARD_BYTES = 128 * 2**20
"""Shard size at which a writer rolls to the next file, in bytes of encoded media."""
ROW_GROUP_BYTES = 32 * 2**20
"""Target Parquet row-group size, in bytes (Ray Data and S3 range reads split on these)."""
MEDIA_COLUMNS = ("input", "target", "instance")
REQUIRED = ("key", "target", "target_format", "width", "height")
"""Fields every row given to a writer must have (split and source come from the writer)."""

SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("input", pa.binary()),
    pa.field("input_format", pa.string()),
    pa.field("target", pa.binary(), nullable=False),
    pa.field("target_format", pa.string(), nullable=False),
    pa.field("instance", pa.binary()),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("meta", pa.string()),
])


class ManifestError(UserError):
    """A dataset directory without a usable manifest.json (missing, corrupt, other version)."""


class ShardError(UserError):
    """A shard that manifest.json lists but the store does not hold whole (deleted, truncated)."""


ENTRY_FIELDS = {"path": str, "split": str, "rows": int, "bytes": int, "sha256": str}
"""Each ``manifest.json`` shard entry's fields and their JSON types."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def _row_bytes(row: dict[str, Any]) -> int:
    return sum(len(row.get(c) or b"") for c in MEDIA_COLUMNS) + 256


def rows_to_table(rows: list[dict[str, Any]], split: str, source: str) -> pa.Table:
    """Rows (dicts with key, target, width, height, ... as in SCHEMA) -> a table in SCHEMA."""
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for row in rows:
        missing = [f for f in REQUIRED if row.get(f) is None]
        if missing:
            raise ValueError(f"shard row {row.get('key')!r} lacks required field(s) {missing}")
        meta = row.get("meta")
        values = {**row, "split": split, "source": source,
                  "meta": meta if meta is None or isinstance(meta, str) else json.dumps(meta, sort_keys=True)}
        for name in cols:
            cols[name].append(values.get(name))
    return pa.table(cols, schema=SCHEMA)


def _hash_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(store: Store, split: str, index: int, rows: list[dict[str, Any]], task: str, source: str,
                plan: str = "", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one complete shard ``SPLIT-INDEX.parquet`` and its ``_parts`` fragment.

    Returns the manifest entry (path, split, rows, bytes, sha256). ``plan`` identifies the
    inputs the shard was made from (a rerun with the same plan may reuse it); ``extra`` goes
    into the fragment only (e.g. the files a converter skipped).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = shard_name(split, index)
    table = rows_to_table(rows, split, source)
    table = table.replace_schema_metadata({"asaptrain": json.dumps(
        {"schema_version": SCHEMA_VERSION, "task": task, "plan": plan})})
    avg = max(1, sum(_row_bytes(r) for r in rows) // max(1, len(rows)))
    with tempfile.TemporaryDirectory(prefix="asaptrain-shard-") as tmpdir:
        local = os.path.join(tmpdir, name)
        pq.write_table(
            table, local, row_group_size=max(1, ROW_GROUP_BYTES // avg),
            compression={f.name: ("none" if f.name in MEDIA_COLUMNS else "zstd") for f in SCHEMA},
            use_dictionary=["split", "input_format", "target_format", "source"],
            # Media values are hundreds of KB: min/max statistics of them are useless bytes.
            write_statistics=["key", "split", "width", "height", "source"],
        )
        entry = {"path": name, "split": split, "rows": len(rows), "bytes": os.path.getsize(local),
                 "sha256": _hash_file(local)}
        store.put_file(local, name)
    store.write_json(f"{PARTS_DIR}/{name}.json", {**entry, "task": task, "source": source, "plan": plan,
                                                  **(extra or {})})
    return entry


def read_fragment(store: Store, name: str) -> dict[str, Any] | None:
    """The ``_parts`` fragment of shard ``name``, or None when absent or unreadable."""
    try:
        return store.read_json(f"{PARTS_DIR}/{name}.json")
    except (StoreNotFound, ValueError):
        return None


class ShardWriter:
    """Buffer rows of one split and write a shard each time ``target_bytes`` of media is reached.

    ``close()`` writes the last shard and (by default) ``manifest.json`` covering every shard
    whose fragment is in the directory, so writers for train and val closed in turn leave one
    manifest naming both.
    """

    def __init__(self, store: Store, split: str, task: str, source: str,
                 target_bytes: int = DEFAULT_SHARD_BYTES, first_index: int = 0):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.store, self.split, self.task, self.source = store, split, task, source
        self.target_bytes, self.index = target_bytes, first_index
        self.entries: list[dict[str, Any]] = []
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def write(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._bytes += _row_bytes(row)
        if self._bytes >= self.target_bytes:
            self.flush()

    def write_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def flush(self) -> None:
        if self._rows:
            self.entries.append(write_shard(self.store, self.split, self.index, self._rows, self.task, self.source))
            self.index += 1
            self._rows, self._bytes = [], 0

    def close(self, manifest: bool = True) -> list[dict[str, Any]]:
        self.flush()
        if manifest:
            write_manifest(self.store, self.task, self.source)
        return self.entries

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_manifest(store: Store, task: str, source: str, entries: list[dict[str, Any]] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` for ``entries`` (default: every shard with a ``_parts`` fragment);
    ``extra`` adds the dataset's own fields (``inputs``: "stored" for real pairs; ``num_labels``
    and ``palette`` for label maps)."""
    if entries is None:
        entries = []
        for rel in store.list(PARTS_DIR, suffix=".parquet.json"):
            frag = store.read_json(rel)
            if store.exists(frag["path"]):
                entries.append(frag)
    keep = ("path", "split", "rows", "bytes", "sha256")
    shards = sorted(({k: e[k] for k in keep} for e in entries),
                    key=lambda e: (SPLITS.index(e["split"]), e["path"]))
    splits: dict[str, dict[str, int]] = {}
    for e in shards:
        s = splits.setdefault(e["split"], {"rows": 0, "bytes": 0, "shards": 0})
        s["rows"] += e["rows"]
        s["bytes"] += e["bytes"]
        s["shards"] += 1
    manifest = {"schema_version": SCHEMA_VERSION, "task": task, "source": source,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                **(extra or {}), "splits": splits, "shards": shards}
    store.write_json(MANIFEST, manifest)
    return manifest


def read_manifest(store: Store) -> dict[str, Any]:
    """The dataset's manifest; ManifestError naming the URI when it is missing or unusable."""
    uri = store.uri_for(MANIFEST)
    try:
        manifest = store.read_json(MANIFEST)
    except StoreNotFound:
        raise ManifestError(f"{uri} does not exist: {store.uri_for()} is not a converted dataset "
                            "(make one with `asaptrain data synth|cityscapes|gopro|pairs|labels|folder --out URI`)") from None
    except ValueError as exc:
        raise ManifestError(f"{uri} is not valid JSON ({exc}); rerun the converter to rewrite it") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ManifestError(f"{uri}: schema_version {version!r}, this asaptrain reads {SCHEMA_VERSION}; "
                            "reconvert the dataset")
    for field, kind in (("task", str), ("splits", dict), ("shards", list)):
        if not isinstance(manifest.get(field), kind):
            raise ManifestError(f"{uri}: field {field!r} is missing or not a {kind.__name__}; reconvert the dataset")
    for split, totals in manifest["splits"].items():
        if not isinstance(totals, dict):
            raise ManifestError(f"{uri}: splits.{split} is not an object with rows, bytes, shards; reconvert the dataset")
    for i, entry in enumerate(manifest["shards"]):
        problem = _entry_problem(entry)
        if problem:
            raise ManifestError(f"{uri}: shards[{i}]{problem}; reconvert the dataset (or restore manifest.json)")
    return manifest


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one manifest shard entry (as a suffix of ``shards[i]``), or None."""
    if not isinstance(entry, dict):
        return f" is not an object with {', '.join(ENTRY_FIELDS)} (got {type(entry).__name__} {str(entry)[:60]!r})"
    for field, kind in ENTRY_FIELDS.items():
        value = entry.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f".{field} is missing or not a {kind.__name__} (got {value!r})"
    if entry["split"] not in SPLITS:
        return f".split is {entry['split']!r}, not one of {SPLITS}"
    if entry["rows"] < 0 or entry["bytes"] < 0:
        return f" has a negative rows or bytes count ({entry['rows']}, {entry['bytes']})"
    return None


def shard_paths(store: Store, split: str) -> list[str]:
    """Filesystem paths (for ``ray.data.read_parquet(..., filesystem=store.fs)``) of a split's shards.

    Each shard must be in the store at its manifest size (one metadata request per shard):
    a deleted or truncated one is a :class:`ShardError` naming it, not a reader's error later.
    """
    manifest = read_manifest(store)
    entries = [s for s in manifest["shards"] if s["split"] == split]
    if not entries:
        have = ", ".join(manifest["splits"]) or "none"
        raise ManifestError(f"{store.uri_for(MANIFEST)} lists no {split!r} shards (splits: {have})")
    sizes = store.sizes([e["path"] for e in entries])
    for e in entries:
        size = sizes[e["path"]]
        if size != e["bytes"]:
            state = "deleted" if size is None else f"truncated to {size} bytes" if size < e["bytes"] else f"{size} bytes"
            raise ShardError(f"{store.uri_for(e['path'])} is {state} (manifest.json says {e['bytes']} bytes): run "
                             f"`asaptrain data verify {store.uri_for()}` to list every damaged shard, then reconvert "
                             "the dataset (a rerun of the converter rewrites only the damaged shards)")
    return [store.path(e["path"]) for e in entries]


FOOTER_READERS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
SHARDS_PER_FOOTER_READER = 1000


def read_shards(paths: list[str], fs, **read_kwargs):
    """``ray.data.read_parquet(paths, filesystem=fs, **read_kwargs)`` with one footer-reading actor
    per :data:`SHARDS_PER_FOOTER_READER` shards.

    Ray Data's Parquet reader lists its files through a pool of ``FooterReader`` actors, 32 by
    default, started anew for every execution of the dataset (every epoch of every Ray Train
    worker's shard, every predict or evaluate read): 32 Python processes importing Ray, pyarrow
    and numpy to read a handful of footers. The count is read from the environment when the
    reader is built, in this process, so it is set around that call only; a user's own setting of
    the variable is kept. (Measured here on datasets of one to a few shards; a thousand shards per
    actor, each actor with 128 I/O threads, is a bound that has not been timed.)"""
    import ray.data

    own = FOOTER_READERS_ENV not in os.environ
    if own:
        os.environ[FOOTER_READERS_ENV] = str(1 + len(paths) // SHARDS_PER_FOOTER_READER)
    try:
        return ray.data.read_parquet(paths, filesystem=fs, **read_kwargs)
    finally:
        if own:
            os.environ.pop(FOOTER_READERS_ENV, None)


def image_size_range(store: Store, split: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((smallest width, smallest height), (largest width, largest height)) in pixels of a split's
    images, from the shards' Parquet statistics (one footer read per shard; the column itself
    where a writer left no statistics)."""
    low, high = [2**31, 2**31], [0, 0]
    for path in shard_paths(store, split):
        meta = pq.ParquetFile(path, filesystem=store.fs).metadata
        names = meta.schema.to_arrow_schema().names
        for group in range(meta.num_row_groups):
            for i, col in enumerate(("width", "height")):
                column = meta.row_group(group).column(names.index(col))
                stats = column.statistics
                if stats is not None and stats.has_min_max:
                    lo, hi = int(stats.min), int(stats.max)
                else:
                    values = pq.read_table(path, columns=[col], filesystem=store.fs)[col].to_pylist()
                    lo, hi = min(values, default=low[i]), max(values, default=high[i])
                low[i], high[i] = min(low[i], lo), max(high[i], hi)
    return (low[0], low[1]), (high[0], high[1])


def _check_shard(store: Store, entry: dict[str, Any], checksums: bool) -> list[str]:
    name, uri = entry["path"], store.uri_for(entry["path"])
    try:
        size = store.size(name)
    except StoreNotFound:
        return [f"{uri}: missing (manifest.json lists it with {entry['rows']} rows)"]
    problems = []
    if size != entry["bytes"]:
        kind = "truncated" if size < entry["bytes"] else "size mismatch"
        problems.append(f"{uri}: {kind}: {size} bytes, manifest.json says {entry['bytes']}")
    if checksums:
        digest = hashlib.sha256()
        try:
            with store.fs.open_input_stream(store.path(name)) as f:
                for chunk in iter(lambda: f.read(8 * 2**20), b""):
                    digest.update(chunk)
        except OSError as exc:
            return problems + [f"{uri}: unreadable ({exc})"]
        if digest.hexdigest() != entry["sha256"]:
            problems.append(f"{uri}: sha256 mismatch: altered since it was written")
    try:
        meta = pq.ParquetFile(store.path(name), filesystem=store.fs).metadata
        if meta.num_rows != entry["rows"]:
            problems.append(f"{uri}: {meta.num_rows} rows, manifest.json says {entry['rows']}")
        names = set(meta.schema.names)
        if not set(SCHEMA.names) <= names:
            problems.append(f"{uri}: columns {sorted(set(SCHEMA.names) - names)} missing")
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for damaged footers
        problems.append(f"{uri}: unreadable parquet ({str(exc)[:200]})")
    return problems


def verify(store: Store, checksums: bool = True) -> list[str]:
    """Every problem with a dataset directory, one message each naming the shard; [] when sound.

    ``checksums=False`` skips reading whole shards for sha256 (sizes and footers are still checked).
    """
    try:
        manifest = read_manifest(store)
    except (ManifestError, StoreError) as exc:
        return [str(exc)]
    problems: list[str] = []
    listed = set()
    for entry in manifest["shards"]:
        listed.add(entry["path"])
        problems += _check_shard(store, entry, checksums)
    for rel in store.list(suffix=".parquet"):
        if not rel.startswith("_") and rel not in listed:
            problems.append(f"{store.uri_for(rel)}: extra shard not listed in manifest.json")
    for split, totals in manifest["splits"].items():
        rows = sum(e["rows"] for e in manifest["shards"] if e["split"] == split)
        if rows != totals.get("rows"):
            problems.append(f"{store.uri_for(MANIFEST)}: split {split!r} says {totals.get('rows')} rows, "
                            f"its shards hold {rows}")
    return problems


__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "MANIFEST", "SPLITS", "TASKS", "DEFAULT_SHARD_BYTES", "ManifestError", "ShardError",
    "ShardWriter", "write_shard", "write_manifest", "read_manifest", "read_fragment", "shard_paths",
    "verify", "shard_name", "rows_to_table",
]
