"""Paired folders: an input image beside its target, in the layouts the field ships them.

``pairs_plan`` finds the pairs, checks them (a partner, the same size once turned upright)
before anything is written, and plans shards whose rows store both images, so the manifest
says the inputs are stored (``"inputs": "stored"``). Layouts:

* ``plain``     ``--input DIR`` and ``--target DIR`` matched by relative path, or by the path
  without its extension when the extensions differ (``a/x.jpg`` ↔ ``a/x.png``); or by a
  ``--pairs`` list file of ``INPUT TARGET`` lines, relative to the two folders.
* ``gopro``     GoPro: ``ROOT/{train,test}/SEQUENCE/{blur,sharp}/NAME``.
* ``realblur``  RealBlur: ``--pairs`` list files of ``GT BLUR`` lines relative to ``ROOT``
  (``RealBlur_J_train_list.txt``, ``..._test_list.txt``: a list named ``*test*`` is split val).
* ``hide``      HIDE: ``ROOT/{train,test}/**/NAME`` blurred, ``ROOT/GT/NAME`` sharp.
* ``ab``        pix2pix: one image per sample, input (A) on the left half, target (B) on the right.

Splits: ``split_by="dir"`` takes the first path component (``train``; ``test``, ``val`` →
``val``); ``val_fraction`` sends a sample to val by a hash of its key (deterministic, stable as
files are added). Problems (no partner, sizes that differ, an odd-width A|B image, a listed
file that is missing) are named, all of them, and skipped, or refused with ``strict``.

    plan = pairs_plan("~/RealBlur", layout="realblur", pairs_files=["RealBlur_J_train_list.txt"])
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from PIL import Image

from asaptrain.data.convert import ConvertError, Item, Plan, Skip
from asaptrain.data.sources import PHOTO_EXTENSIONS, _estimate, _open, _photo_bytes

LAYOUTS = ("plain", "gopro", "realblur", "hide", "ab")
SPLIT_DIRS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
              "test": "val", "testing": "val"}
"""First path components ``split_by="dir"`` knows, and the split each becomes (test pairs are what training validates on)."""
TASKS = ("deblur", "image2image")


def _photos(root: Path) -> list[str]:
    """Relative POSIX paths of every photo under ``root``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found += [(Path(dirpath) / n).relative_to(root).as_posix() for n in sorted(filenames)
                  if Path(n).suffix.lower() in PHOTO_EXTENSIONS]
    return found


def _stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) as the image shows upright (EXIF orientation applied), from its header only;
    None when it cannot be read (the full decode in the worker names it)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - PIL raises many types; the worker's decode reports it
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# ----------------------------------------------------------------------------- finding pairs


def _plain(inp: Path, tgt: Path) -> tuple[list[tuple[str, Path, Path]], list[tuple[str, str]]]:
    inputs, targets = _photos(inp), _photos(tgt)
    exact, by_stem = set(targets), {}
    for rel in targets:
        by_stem.setdefault(_stem(rel), []).append(rel)
    pairs, problems, used = [], [], set()
    for rel in inputs:
        match = rel if rel in exact else None
        if match is None:
            found = by_stem.get(_stem(rel), [])
            if len(found) > 1:
                problems.append((str(inp / rel), f"several targets share its name: {', '.join(found)}"))
                continue
            match = found[0] if found else None
        if match is None:
            problems.append((str(inp / rel), f"no target partner: no {tgt / _stem(rel)}.*"))
            continue
        used.add(match)
        pairs.append((_stem(rel), inp / rel, tgt / match))
    problems += [(str(tgt / rel), f"no input partner: no {inp / _stem(rel)}.*") for rel in targets if rel not in used]
    return pairs, problems


def _listed(lines_from: list[Path], inp: Path, tgt: Path, target_first: bool):
    """Pairs from list files: ``INPUT TARGET`` per line (``TARGET INPUT`` for RealBlur's lists)."""
    pairs, problems, origin = [], [], {}
    for list_file in lines_from:
        try:
            text = list_file.read_text()
        except OSError as exc:
            raise ConvertError(f"--pairs {list_file}: cannot read it ({exc})") from None
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ConvertError(f"--pairs {list_file} line {n}: expected two paths, got {line.strip()!r}")
            a, b = (parts[1], parts[0]) if target_first else (parts[0], parts[1])
            src, dst = inp / a, tgt / b
            missing = [str(p) for p in (src, dst) if not p.is_file()]
            if missing:
                problems.append((str(list_file) + f":{n}", f"listed file missing: {', '.join(missing)}"))
                continue
            key = _stem(a)
            pairs.append((key, src, dst))
            origin[key] = list_file
    return pairs, problems, origin


def _gopro(root: Path):
    pairs, problems = [], []
    for rel in _photos(root):
        parts = rel.split("/")
        if len(parts) < 3 or parts[-2] not in ("blur", "sharp"):
            continue
        other = "sharp" if parts[-2] == "blur" else "blur"
        partner = "/".join([*parts[:-2], other, parts[-1]])
        if not (root / partner).is_file():
            problems.append((str(root / rel), f"no {other} partner {partner}"))
        elif parts[-2] == "blur":
            # Key: SEQUENCE/frame, as GoPro names its frames; the split is the first component.
            pairs.append(("/".join([*parts[1:-2], _stem(parts[-1])]), root / rel, root / partner))
    return pairs, problems


def _hide(root: Path):
    gt = root / "GT"
    if not gt.is_dir():
        raise ConvertError(f"{root}: no GT/ folder; the HIDE layout is ROOT/train/*.png and ROOT/test/**/*.png "
                           "(blurred) beside ROOT/GT/*.png (sharp, same file names)")
    pairs, problems, used = [], [], set()
    for rel in _photos(root):
        if rel.split("/")[0] == "GT":
            continue
        sharp = gt / rel.rsplit("/", 1)[-1]
        if not sharp.is_file():
            problems.append((str(root / rel), f"no sharp partner GT/{sharp.name}"))
            continue
        used.add(sharp.name)
        pairs.append((_stem(rel), root / rel, sharp))
    problems += [(str(gt / rel), "no blurred partner under train/ or test/") for rel in _photos(gt) if rel not in used]
    return pairs, problems


def _ab(root: Path):
    return [(_stem(rel), root / rel, None) for rel in _photos(root)], []


# ----------------------------------------------------------------------------- rows


def pairs_row(key: str, spec: tuple) -> dict[str, Any]:
    """One pair (or one A|B image) -> a shard row with both images stored."""
    input_path, target_path, size, meta = spec
    if target_path is None:  # pix2pix A|B: the two halves of one image
        both = _open(input_path, "A|B image")
        w, h = both.size
        if w % 2:
            raise Skip(input_path, f"A|B image is {w} px wide: an odd width has no middle to split at")
        fmt = both.format or both.info.get("source_format")
        halves = [both.crop((0, 0, w // 2, h)), both.crop((w // 2, 0, w, h))]
        (inp, inp_format), (target, target_format) = (_encoded(im, fmt, size) for im in halves)
        height, width = size if size else (h, w // 2)
    else:
        a, b = _open(input_path, "input image"), _open(target_path, "target image")
        if a.size != b.size:
            raise Skip(input_path, f"input is {a.size[0]}x{a.size[1]}, its target {target_path} "
                                   f"{b.size[0]}x{b.size[1]} (upright): pairs must be the same size")
        inp, inp_format = _photo_bytes(a, input_path, size)
        target, target_format = _photo_bytes(b, target_path, size)
        height, width = size if size else (b.height, b.width)
    return {"key": key, "input": inp, "input_format": inp_format, "target": target, "target_format": target_format,
            "instance": None, "width": width, "height": height, "meta": meta}


def _encoded(img: Image.Image, fmt: str | None, size: tuple[int, int] | None) -> tuple[bytes, str]:
    rgb = img.convert("RGB")
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpeg"
    rgb.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "png"


# ----------------------------------------------------------------------------- the plan


def _split_of(key: str, rel: str, split_by: str | None, val_fraction: float | None, listed_in: Path | None) -> str:
    if split_by == "dir":
        first = rel.split("/", 1)[0]
        if first not in SPLIT_DIRS or "/" not in rel:
            raise ConvertError(f"--split-by dir: {rel!r} starts with {first!r}, not one of "
                               f"{', '.join(SPLIT_DIRS)}; lay the pairs out as train/... and test/... or use "
                               "--val-fraction")
        return SPLIT_DIRS[first]
    if val_fraction is not None:
        return "val" if int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32 < val_fraction else "train"
    if listed_in is not None:
        return "val" if "test" in listed_in.name.lower() or "val" in listed_in.name.lower() else "train"
    return "train"


def pairs_plan(input_dir: str | Path, target_dir: str | Path | None = None, layout: str = "plain",
               pairs_files: list[str | Path] | tuple = (), split_by: str | None = None,
               val_fraction: float | None = None, size: tuple[int, int] | None = None, strict: bool = False,
               task: str | None = None) -> Plan:
    """The shards of a paired dataset (see the module docstring); ConvertError for a layout that
    is not there, and with ``strict`` for any pair that would be skipped, before anything is written."""
    if layout not in LAYOUTS:
        raise ConvertError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    task = task or ("image2image" if layout == "ab" else "deblur")
    if task not in TASKS:
        raise ConvertError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    if split_by is not None and val_fraction is not None:
        raise ConvertError("give --split-by or --val-fraction, not both")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ConvertError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    inp = Path(input_dir).expanduser()
    tgt = Path(target_dir).expanduser() if target_dir else inp
    for what, d in (("--input", inp), ("--target", tgt)):
        if not d.is_dir():
            raise ConvertError(f"{what} {d} is not a directory")
    lists = [Path(p).expanduser() for p in pairs_files]
    if layout in ("plain",) and not target_dir and not lists:
        raise ConvertError("--layout plain needs --target DIR (the folder of targets) or --pairs FILE")
    if layout == "realblur" and not lists:
        raise ConvertError("--layout realblur needs --pairs FILE: RealBlur's list files (RealBlur_J_train_list.txt, "
                           "RealBlur_J_test_list.txt), lines 'GT_PATH BLUR_PATH' relative to --input")
    if lists and layout not in ("plain", "realblur"):
        raise ConvertError(f"--pairs lists pairs for --layout plain or realblur, not {layout}")
    origin: dict[str, Path] = {}
    if lists:
        pairs, problems, origin = _listed(lists, inp, tgt, target_first=layout == "realblur")
    else:
        pairs, problems = {"plain": lambda: _plain(inp, tgt), "gopro": lambda: _gopro(inp),
                           "hide": lambda: _hide(inp), "ab": lambda: _ab(inp)}[layout]()
    if split_by is None and val_fraction is None and layout in ("gopro", "hide"):
        split_by = "dir"  # both ship train/ and test/ folders
    if split_by is None and val_fraction is None and not lists:
        val_fraction = 0.05
    items: dict[str, list[Item]] = {}
    seen: dict[str, str] = {}
    for key, a, b in pairs:
        if key in seen:
            problems.append((str(a), f"same key {key!r} as {seen[key]}: two inputs of one name"))
            continue
        seen[key] = str(a)
        if b is not None:
            sa, sb = _header_size(a), _header_size(b)
            if sa and sb and sa != sb:
                problems.append((str(a), f"input is {sa[0]}x{sa[1]}, its target {b} {sb[0]}x{sb[1]} (upright): "
                                         "pairs must be the same size"))
                continue
        rel = a.relative_to(inp).as_posix()
        split = _split_of(key, rel, split_by, val_fraction, origin.get(key))
        meta = {"input": rel, "target": b.relative_to(tgt).as_posix() if b is not None else None, "layout": layout}
        if layout == "gopro":
            meta.update({"sequence": key.split("/")[0], "gopro_split": rel.split("/", 1)[0], "frame": a.name})
        files = [a] + ([b] if b is not None else [])
        items.setdefault(split, []).append(Item(key, _estimate(files, size), (str(a), str(b) if b else None, size, meta)))
    if strict and problems:
        shown = "; ".join(f"{p}: {r}" for p, r in problems)
        raise ConvertError(f"--strict: {len(problems)} pair(s) cannot be used, nothing written: {shown}")
    if not items:
        raise ConvertError(f"{inp}: no {layout} pairs found" + (f" ({len(problems)} problems: "
                           + "; ".join(f"{p}: {r}" for p, r in problems[:5]) + ")" if problems else ""))
    notes = [f"{len(problems)} pair(s) skipped (listed below); --strict refuses them instead"] if problems else []
    if layout in ("gopro", "hide") or split_by == "dir":
        notes.append("test pairs are stored as split 'val' (what training validates on)")
    return Plan(task, layout if layout != "plain" else "pairs", pairs_row, items,
                {"size": size, "layout": layout, "split_by": split_by, "val_fraction": val_fraction}, problems,
                notes=notes, manifest={"inputs": "stored", "layout": layout})


__all__ = ["LAYOUTS", "SPLIT_DIRS", "pairs_plan", "pairs_row"]
