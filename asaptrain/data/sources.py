"""Converters for dataset trees on disk: Cityscapes, GoPro (a layout of ``pairs.py``), any folder of photos.

Each ``*_plan(root, ...)`` lists the samples (:class:`~asaptrain.data.convert.Plan`); its
``*_row(key, spec)`` decodes, checks and encodes one sample in a worker process;
:func:`asaptrain.data.convert.convert` writes the shards. Source bytes are kept as they are
when no resize is asked for (label ids byte for byte), and every file is fully decoded first,
so a damaged one is skipped and named instead of reaching training.

    summary = convert(cityscapes_plan("/data/cityscapes", size=(256, 512)), Store.open("s3://b/cs"), workers=8)
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from asaptrain.data import labels
from asaptrain.data.convert import ConvertError, Item, Plan, Skip
from asaptrain.data.decode import BadImage, load_image

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for a damaged or hostile file (a bomb's header is refused before any decode)."""


def _open(path: str, what: str) -> Image.Image:
    """Open and fully decode an image, upright (``decode.load_image``); Skip naming the file when
    it cannot be read."""
    try:
        return load_image(path, what)
    except BadImage as exc:
        raise Skip(path, f"unreadable {what} ({exc})") from None


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 (H, W[, 3]) or uint16 (H, W) array -> PNG bytes (level 1: fast, shards stay large-ish)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def _photo_bytes(img: Image.Image, path: str, size: tuple[int, int] | None) -> tuple[bytes, str]:
    """The photo's own bytes when usable as is (RGB PNG/JPEG, upright, no resize), else a re-encode
    (a photo turned by its EXIF orientation is stored turned: every reader sees it upright)."""
    if size is None and img.mode == "RGB" and img.format in ("PNG", "JPEG"):
        return Path(path).read_bytes(), img.format.lower()
    source_format = img.format or img.info.get("source_format")
    rgb = img.convert("RGB")
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if source_format == "JPEG":
        rgb.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpeg"
    rgb.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "png"


def _estimate(paths: list[Path], size: tuple[int, int] | None) -> int:
    """Encoded bytes of a sample: its files' sizes, scaled by the pixel ratio when resized."""
    total = sum(p.stat().st_size for p in paths)
    if size is None:
        return total
    try:
        with Image.open(paths[0]) as img:
            return max(1, int(total * min(4.0, size[0] * size[1] / (img.width * img.height))))
    except _UNREADABLE:  # the worker's full decode skips the file and names it
        return total


# ----------------------------------------------------------------------------- Cityscapes


def cityscapes_row(key: str, spec: tuple) -> dict[str, Any]:
    photo_path, label_path, inst_path, size, meta = spec
    label_img = _open(label_path, "labelIds PNG")
    ids = np.asarray(label_img)
    if ids.ndim != 2:
        raise Skip(label_path, f"labelIds PNG must be single-channel, got mode {label_img.mode}")
    bad = labels.unknown_ids(ids)
    if bad:
        raise Skip(label_path, f"values {bad[:8]} are not Cityscapes label ids 0..{labels.MAX_ID}")
    photo = _open(photo_path, "photo")
    if photo.size != label_img.size:
        raise Skip(photo_path, f"photo is {photo.size[0]}x{photo.size[1]}, its labelIds {label_img.size[0]}x{label_img.size[1]}")
    inst = _open(inst_path, "instanceIds PNG") if inst_path else None
    target, target_format = _photo_bytes(photo, photo_path, size)
    if size is None:
        label_bytes = Path(label_path).read_bytes()  # exact source ids, byte for byte
        inst_bytes = Path(inst_path).read_bytes() if inst else None
        height, width = ids.shape
    else:
        height, width = size
        label_bytes = encode_png(np.asarray(Image.fromarray(ids.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST)))
        inst_bytes = None
        if inst is not None:
            inst_arr = np.asarray(inst).astype(np.int32)
            small = np.asarray(Image.fromarray(inst_arr, mode="I").resize((width, height), Image.Resampling.NEAREST))
            inst_bytes = encode_png(small.astype(np.uint16))
    return {"key": key, "input": label_bytes, "input_format": "png", "target": target, "target_format": target_format,
            "instance": inst_bytes, "width": width, "height": height, "meta": meta}


def cityscapes_plan(root: str | Path, size: tuple[int, int] | None = None,
                    splits: tuple[str, ...] = ("train", "val")) -> Plan:
    """``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` + ``gtFine/SPLIT/CITY/*_gtFine_{labelIds,instanceIds}.png``.

    The official test split's gtFine maps are placeholders, so ``test`` is left out unless asked for.
    """
    root = Path(root)
    if not (root / "leftImg8bit").is_dir() or not (root / "gtFine").is_dir():
        raise ConvertError(f"{root}: expected the official Cityscapes layout leftImg8bit/SPLIT/CITY/*_leftImg8bit.png "
                           "and gtFine/SPLIT/CITY/*_gtFine_labelIds.png (unzip leftImg8bit_trainvaltest.zip and "
                           "gtFine_trainvaltest.zip into one directory)")
    items: dict[str, list[Item]] = {}
    skipped: list[tuple[str, str]] = []
    for split in splits:
        for photo in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
            city, stem = photo.parent.name, photo.name[: -len("_leftImg8bit.png")]
            gt = root / "gtFine" / split / city
            label, inst = gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_instanceIds.png"
            if not label.is_file():
                skipped.append((str(photo), f"no {label.relative_to(root)}"))
                continue
            files = [photo, label] + ([inst] if inst.is_file() else [])
            meta = {"city": city, "photo": str(photo.relative_to(root))}
            items.setdefault(split, []).append(Item(f"{city}/{stem}", _estimate(files, size),
                                                    (str(photo), str(label), str(inst) if inst.is_file() else None, size, meta)))
    if not items:
        raise ConvertError(f"{root}: no leftImg8bit/{{{','.join(splits)}}}/CITY/*_leftImg8bit.png with labelIds found")
    return Plan("labels2photo", "cityscapes", cityscapes_row, items, {"size": size}, skipped)


# ----------------------------------------------------------------------------- GoPro


def gopro_plan(root: str | Path, size: tuple[int, int] | None = None) -> Plan:
    """``{train,test}/SEQUENCE/{blur,sharp}/*.png`` pairs; train -> train, test -> val: the
    ``gopro`` layout of the paired-folder converter (``data/pairs.py``)."""
    from asaptrain.data.pairs import pairs_plan

    return pairs_plan(root, layout="gopro", size=size)


# ----------------------------------------------------------------------------- image folder


def folder_row(key: str, spec: tuple) -> dict[str, Any]:
    path, size, meta = spec
    img = _open(path, "image")
    target, target_format = _photo_bytes(img, path, size)
    height, width = size if size else (img.height, img.width)
    return {"key": key, "input": None, "input_format": None, "target": target, "target_format": target_format,
            "instance": None, "width": width, "height": height, "meta": meta}


def folder_plan(root: str | Path, val_fraction: float = 0.05, size: tuple[int, int] | None = None) -> Plan:
    """Every .jpg/.jpeg/.png/.webp under ``root`` as a sharp target (blur is made during training).

    A sample goes to ``val`` by a hash of its path, so the split is stable as files are added.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConvertError(f"{root} is not a directory")
    if not 0 <= val_fraction < 1:
        raise ConvertError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    found: list[tuple[float, Item]] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in PHOTO_EXTENSIONS:
                ignored += 1
                continue
            key = path.relative_to(root).as_posix()
            rank = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
            found.append((rank, Item(key, _estimate([path], size), (str(path), size, {"file": key}))))
    if not found:
        raise ConvertError(f"{root}: no {'/'.join(PHOTO_EXTENSIONS)} files found")
    val = {item.key for rank, item in found if rank < val_fraction}
    if val_fraction > 0 and not val and len(found) > 1:
        val = {min(found, key=lambda f: f[0])[1].key}  # a tiny folder still gets one val image
    items = {"train": [i for _, i in found if i.key not in val], "val": [i for _, i in found if i.key in val]}
    notes = [f"ignored {ignored} files that are not {'/'.join(PHOTO_EXTENSIONS)}"] if ignored else []
    return Plan("deblur", "folder", folder_row, {k: v for k, v in items.items() if v},
                {"size": size, "val_fraction": val_fraction}, notes=notes)


__all__ = ["encode_png", "cityscapes_plan", "gopro_plan", "folder_plan", "cityscapes_row", "folder_row",
           "PHOTO_EXTENSIONS"]
