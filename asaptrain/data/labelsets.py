"""Any label set: label maps as ids 0..N-1, or colour-coded through a palette (ADE20K, facades).

``labels_plan`` pairs photos with label maps (and instance maps) by relative path, and plans
shards whose inputs are id PNGs; the manifest carries ``num_labels`` (N) and the palette, and
``resolve_num_labels`` makes a config agree with them before training starts. Cityscapes is one
such set: its manifests, from before the count was written, mean 35 labels.

A palette file maps colours to ids, as JSON (``{"#787878": 1, "6,230,230": 2}`` or
``[[120, 120, 120, 1], ...]``) or CSV (``r,g,b,id`` or ``#rrggbb,id`` rows, a header allowed)::

    plan = labels_plan("facades/photos", "facades/labels", num_labels=12, palette="facades.json")
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from asaptrain.config.io import replace
from asaptrain.config.schema import Config, ConfigError
from asaptrain.data.convert import ConvertError, Item, Plan, Skip
from asaptrain.data.decode import colour_label_map, describe_ids, label_ids, out_of_range
from asaptrain.data.pairs import SPLIT_DIRS, _photos, _stem
from asaptrain.data.sources import _estimate, _open, _photo_bytes, encode_png

CITYSCAPES_NUM_LABELS = 35
"""Labels of a dataset whose manifest names none (Cityscapes ids 0..33, and 34 as the presets count)."""
MAX_LABELS = 65536
"""Ids are stored as 16-bit PNGs at most."""


# ----------------------------------------------------------------------------- palettes


def _colour(text: str, where: str) -> tuple[int, int, int]:
    text = text.strip()
    try:
        if text.startswith("#") and len(text) == 7:
            rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(v) for v in text.replace(" ", "").strip("()[]").split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ConvertError(f"{where}: {text!r} is not a colour (#rrggbb or r,g,b with values 0..255)")
    return rgb  # type: ignore[return-value]


def load_palette(path: str | Path, num_labels: int) -> dict[tuple[int, int, int], int]:
    """Colour -> id from a JSON or CSV palette file; every id in 0..num_labels-1, no colour twice."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConvertError(f"--palette {path}: cannot read it ({exc})") from None
    entries: list[tuple[tuple[int, int, int], Any, str]] = []
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConvertError(f"--palette {path} is not valid JSON ({exc})") from None
        if isinstance(raw, dict):
            entries = [(_colour(k, f"{path} key {k!r}"), v, f"{path} key {k!r}") for k, v in raw.items()]
        elif isinstance(raw, list) and all(isinstance(r, list) and len(r) == 4 for r in raw):
            entries = [(_colour(",".join(map(str, r[:3])), f"{path} entry {i}"), r[3], f"{path} entry {i}")
                       for i, r in enumerate(raw)]
        else:
            raise ConvertError(f"--palette {path}: expected an object {{\"#rrggbb\": id}} or a list of [r, g, b, id]")
    else:
        for n, row in enumerate(csv.reader(text.splitlines()), 1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or (n == 1 and not any(ch.isdigit() for ch in cells[0])):
                continue  # blank line or header
            where = f"{path} line {n}"
            if len(cells) == 2:
                entries.append((_colour(cells[0], where), cells[1], where))
            elif len(cells) == 4:
                entries.append((_colour(",".join(cells[:3]), where), cells[3], where))
            else:
                raise ConvertError(f"{where}: expected r,g,b,id or #rrggbb,id, got {row}")
    palette: dict[tuple[int, int, int], int] = {}
    for rgb, value, where in entries:
        try:
            ident = int(value)
        except (TypeError, ValueError):
            raise ConvertError(f"{where}: id {value!r} is not an integer") from None
        if not 0 <= ident < num_labels:
            raise ConvertError(f"{where}: id {ident} is outside 0..{num_labels - 1} (--num-labels {num_labels})")
        if palette.get(rgb, ident) != ident:
            raise ConvertError(f"{where}: colour {rgb} is given ids {palette[rgb]} and {ident}")
        palette[rgb] = ident
    if not palette:
        raise ConvertError(f"--palette {path} holds no colours")
    return palette


def colours_to_ids(rgb: np.ndarray, palette: dict[tuple[int, int, int], int]) -> tuple[np.ndarray, dict]:
    """(H, W, 3) uint8 colours -> (H, W) int32 ids, and {colour: pixel count} of colours not in the palette."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    values, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    lut = np.full(len(values), -1, np.int32)
    unknown = {}
    for i, (v, c) in enumerate(zip(values.tolist(), counts.tolist())):
        colour = (v >> 16, (v >> 8) & 255, v & 255)
        if colour in palette:
            lut[i] = palette[colour]
        else:
            unknown[colour] = c
    return lut[inverse.reshape(packed.shape)], unknown


# ----------------------------------------------------------------------------- rows and plan


def labels_row(key: str, spec: tuple) -> dict[str, Any]:
    """A photo, its label map (ids or colours) and instance map -> a row with an id PNG input."""
    photo_path, label_path, inst_path, num_labels, palette, size, meta = spec
    label = _open(label_path, "label map")
    if palette:
        ids, unknown = colours_to_ids(np.asarray(label.convert("RGB")), dict(palette))
        if unknown:
            shown = ", ".join(f"#{r:02x}{g:02x}{b:02x} ({c} px)" for (r, g, b), c in list(unknown.items())[:8])
            raise Skip(label_path, f"colours not in the palette: {shown}; add them to the palette file")
    else:
        if colour_label_map(label):
            raise Skip(label_path, "is a colour-coded label map (RGB); give the colour -> id table with --palette FILE")
        ids = label_ids(label).astype(np.int64)
    bad = out_of_range(ids, num_labels)
    if bad:
        raise Skip(label_path, f"{describe_ids(bad)} outside 0..{num_labels - 1} (--num-labels {num_labels})")
    photo = _open(photo_path, "photo")
    if photo.size != label.size:
        raise Skip(photo_path, f"photo is {photo.size[0]}x{photo.size[1]}, its label map {label.size[0]}x{label.size[1]}")
    dtype = np.uint8 if num_labels <= 256 else np.uint16
    inst = _open(inst_path, "instance map") if inst_path else None
    if inst is not None and inst.size != label.size:
        raise Skip(inst_path, f"instance map is {inst.size[0]}x{inst.size[1]}, its label map {label.size[0]}x{label.size[1]}")
    target, target_format = _photo_bytes(photo, photo_path, size)
    height, width = size if size else (photo.height, photo.width)

    def ids_png(a: np.ndarray, kind: type) -> bytes:
        a = a.astype(kind)
        if size is not None:
            a = np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.NEAREST))
        return encode_png(a)

    inst_bytes = ids_png(label_ids(inst).astype(np.int64).clip(0, 65535), np.uint16) if inst is not None else None
    return {"key": key, "input": ids_png(ids, dtype), "input_format": "png", "target": target,
            "target_format": target_format, "instance": inst_bytes, "width": width, "height": height, "meta": meta}


def labels_plan(images: str | Path, labels: str | Path, num_labels: int, palette: str | Path | None = None,
                instances: str | Path | None = None, split_by: str | None = None, val_fraction: float | None = None,
                size: tuple[int, int] | None = None) -> Plan:
    """Photos under ``images`` with label maps of the same relative name (any extension) under
    ``labels``; ids 0..num_labels-1, or colours through ``palette``."""
    if not 1 <= num_labels <= MAX_LABELS:
        raise ConvertError(f"--num-labels must be in 1..{MAX_LABELS}, got {num_labels}")
    if split_by is not None and val_fraction is not None:
        raise ConvertError("give --split-by or --val-fraction, not both")
    roots = {"--images": Path(images).expanduser(), "--labels": Path(labels).expanduser()}
    if instances:
        roots["--instances"] = Path(instances).expanduser()
    for what, d in roots.items():
        if not d.is_dir():
            raise ConvertError(f"{what} {d} is not a directory")
    table = load_palette(palette, num_labels) if palette else None
    by_stem = {what: {_stem(r): r for r in _photos(d)} for what, d in roots.items() if what != "--images"}
    items: dict[str, list[Item]] = {}
    skipped: list[tuple[str, str]] = []
    used = set()
    for rel in _photos(roots["--images"]):
        key = _stem(rel)
        label = by_stem["--labels"].get(key)
        if label is None:
            skipped.append((str(roots["--images"] / rel), f"no label map {roots['--labels'] / key}.*"))
            continue
        used.add(key)
        inst = by_stem.get("--instances", {}).get(key)
        if instances and inst is None:
            skipped.append((str(roots["--images"] / rel), f"no instance map {roots['--instances'] / key}.*"))
            continue
        if split_by == "dir":
            first = rel.split("/", 1)[0]
            if first not in SPLIT_DIRS or "/" not in rel:
                raise ConvertError(f"--split-by dir: {rel!r} starts with {first!r}, not one of {', '.join(SPLIT_DIRS)}")
            split = SPLIT_DIRS[first]
        else:
            fraction = 0.05 if val_fraction is None else val_fraction
            split = "val" if int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32 < fraction else "train"
        files = [roots["--images"] / rel, roots["--labels"] / label] + ([roots["--instances"] / inst] if inst else [])
        spec = (str(files[0]), str(files[1]), str(files[2]) if inst else None, num_labels,
                tuple(sorted(table.items())) if table else None, size, {"image": rel, "label": label})
        items.setdefault(split, []).append(Item(key, _estimate(files, size), spec))
    skipped += [(str(roots["--labels"] / r), "no photo of this name under --images")
                for k, r in by_stem["--labels"].items() if k not in used]
    if not items:
        raise ConvertError(f"{roots['--images']}: no photo with a label map of the same name under {roots['--labels']}")
    manifest = {"inputs": "stored", "num_labels": num_labels,
                "palette": [[*rgb, i] for rgb, i in sorted(table.items())] if table else None}
    return Plan("labels2photo", "labels", labels_row, items, {"size": size, "split_by": split_by,
                "val_fraction": val_fraction}, skipped, manifest=manifest)


# ----------------------------------------------------------------------------- configs


def manifest_num_labels(manifest: dict) -> int:
    """The label count a labels2photo dataset's manifest gives (Cityscapes' 35 when it names none)."""
    return int(manifest.get("num_labels") or CITYSCAPES_NUM_LABELS)


def resolve_num_labels(cfg: Config, store) -> Config:
    """``cfg`` with ``data.num_labels`` from its dataset's manifest (when 0); ConfigError when the
    config names another count or the dataset is not label maps. Unchanged for other tasks."""
    from asaptrain.data.shards import read_manifest
    from asaptrain.data.store import resolve_dataset

    if cfg.data.task != "labels2photo":
        return cfg
    ds = resolve_dataset(cfg.data.dataset, store)
    manifest = read_manifest(ds)
    if manifest["task"] != "labels2photo":
        raise ConfigError(f"data.task='labels2photo', but {ds.uri_for()} holds a {manifest['task']} dataset; "
                          "set data.dataset to a label-map dataset (`asaptrain data labels`)")
    n = manifest_num_labels(manifest)
    if cfg.data.num_labels == 0:
        return replace(cfg, {"data.num_labels": n}, source=ds.uri_for("manifest.json"))
    if cfg.data.num_labels != n:
        raise ConfigError(f"data.num_labels={cfg.data.num_labels}, but {ds.uri_for('manifest.json')} says the "
                          f"dataset has {n} labels (ids 0..{n - 1}); set data.num_labels={n} (or 0 to take the "
                          "manifest's)")
    return cfg


__all__ = ["CITYSCAPES_NUM_LABELS", "load_palette", "colours_to_ids", "labels_plan", "labels_row",
           "manifest_num_labels", "resolve_num_labels"]
