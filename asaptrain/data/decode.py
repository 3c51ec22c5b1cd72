"""Decoding one shard row into fixed-size uint8 arrays: the CPU half of the input pipeline.

A :class:`Decoder` reads only the columns its task needs, decodes, resizes (bicubic for
photos, nearest for id maps), crops (random for training, centred for validation), flips, and
computes instance edges. ``decode_rows`` turns (shard, row) items into one batch, logging and
skipping rows that cannot be used (naming shard and key) and failing with :class:`DataError`
past the bad-image limit. ``input_array`` reads a whole image for inference (`infer`,
`predict`). ``load_image`` is the one decode of every image file or shard value (converters,
training, inference), EXIF orientation applied. numpy + PIL only: Ray's decode tasks never
import torch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from asaptrain.config.schema import Config
from asaptrain.errors import UserError

log = logging.getLogger("asaptrain.data")


class DataError(UserError):
    """Training data that cannot be used: the message names the shards and keys at fault."""


class BadImage(Exception):
    """One row or file that cannot be used; the message says why (the caller names it)."""


def key_id(key: str) -> int:
    """A stable signed 64-bit id of a row key (the ``key_id`` column)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little", signed=True)


EXIF_ORIENTATION = 0x0112
"""The EXIF tag a phone writes instead of rotating the pixels (1 = upright)."""

DEFAULT_MAX_PIXELS = 2**26
"""Largest image (width x height, pixels) `infer` and `predict` take by default: 64 Mpx. At the
tile size a worker holds the decoded input and the uint8 output (3 bytes a pixel each, about
0.4 GB here) and one row of tiles in fp32, not the whole image in fp32 (13 GB at this size)."""


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (phone photos store their pixels sideways).

    A turned image has no ``format`` (it is new pixels); ``info["source_format"]`` keeps the
    file's, so a converter knows to re-encode instead of copying the rotated bytes.
    """
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels are still usable as stored
        orientation = 1
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return img
    turned = ImageOps.exif_transpose(img)
    turned.info["source_format"] = img.format
    return turned


def load_image(source: Any, what: str, max_pixels: int | None = None) -> Image.Image:
    """The one decode of every image asaptrain reads (converters, training, `infer`, `predict`):
    ``source`` (encoded bytes or a file path) fully decoded and turned upright by its EXIF
    orientation. :class:`BadImage` saying why when it is missing, does not decode or, by its
    header (read before any pixel is decoded), is larger than ``max_pixels`` (width x height)."""
    if source is None:
        raise BadImage(f"{what} is missing (NULL)")
    try:
        img = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
    except Exception as exc:  # PIL raises many types for damaged data
        raise BadImage(f"{what} does not decode ({type(exc).__name__}: {str(exc)[:80]})") from None
    w, h = img.size  # lazy: the header only
    if max_pixels is not None and w * h > max_pixels:
        raise BadImage(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (--max-pixels): "
                       "split or downscale it, or raise --max-pixels where the workers have the memory")
    try:
        img.load()
    except Exception as exc:  # PIL raises many types for damaged data
        raise BadImage(f"{what} does not decode ({type(exc).__name__}: {str(exc)[:80]})") from None
    return upright(img)


open_image = load_image
"""Shard bytes -> upright image (the name the pipeline and ``predict`` use)."""


def colour_label_map(image: Image.Image) -> bool:
    """Whether a label map holds colours (RGB) rather than one id per pixel: an RGB image whose
    channels differ somewhere (a grey RGB image is ids saved as RGB)."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    a = np.asarray(image.convert("RGB"))
    return bool((a[..., 0] != a[..., 1]).any() or (a[..., 1] != a[..., 2]).any())


def label_ids(image: Image.Image) -> np.ndarray:
    """An (H, W) id map from a label PNG: one id per pixel (L, P, I;16, I; or grey RGB)."""
    if image.mode in ("L", "P", "I;16", "I"):
        return np.asarray(image)
    return np.asarray(image.convert("L"))


def out_of_range(ids: np.ndarray, num_labels: int) -> dict[int, int]:
    """{id: pixel count} of the ids >= ``num_labels`` (or < 0) in an id map; empty when all fit."""
    values, counts = np.unique(ids, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v < 0 or v >= num_labels}


def describe_ids(found: dict[int, int], limit: int = 8) -> str:
    """"id 40 (12 px), id 41 (3 px)" for an ``out_of_range`` result."""
    shown = ", ".join(f"id {v} ({c} px)" for v, c in list(found.items())[:limit])
    return shown + (f" and {len(found) - limit} more" if len(found) > limit else "")


def input_array(image: Image.Image, cfg: Config, what: str = "input") -> np.ndarray:
    """A whole input image as a generator reads it at inference: label ids (H, W) or an RGB
    photo (H, W, 3) uint8. A colour label map, or ids the run's model has no channel for, is a
    :class:`BadImage` naming them (``what`` names the file)."""
    if cfg.data.task == "labels2photo":
        if colour_label_map(image):
            raise BadImage(f"{what} is a colour image, but the model reads label maps of ids 0.."
                           f"{cfg.data.num_labels - 1}, one per pixel: convert colour-coded maps to ids with "
                           "their palette (`asaptrain data labels --palette FILE` writes id PNGs into the "
                           "dataset; the same palette maps your own files)")
        ids = label_ids(image)
        bad = out_of_range(ids, cfg.data.num_labels)
        if bad:
            raise BadImage(f"{what} holds label ids the model does not know ({describe_ids(bad)}): it was "
                           f"trained on ids 0..{cfg.data.num_labels - 1}")
        return ids.astype(np.uint8 if cfg.data.num_labels <= 256 else np.int32)
    return np.array(image.convert("RGB") if image.mode != "RGB" else image)


def _nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) id map: ids never blend into other ids."""
    rows = ((np.arange(height) + 0.5) * a.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * a.shape[1] / width).astype(np.int64)
    return a[rows[:, None], cols[None, :]]


def edge_map(inst: np.ndarray) -> np.ndarray:
    """pix2pixHD's instance boundaries: 1 where a pixel differs from a 4-neighbour."""
    e = np.zeros(inst.shape, dtype=bool)
    dx, dy = inst[:, 1:] != inst[:, :-1], inst[1:, :] != inst[:-1, :]
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    e[1:, :] |= dy
    e[:-1, :] |= dy
    return e.astype(np.uint8)


@dataclass(frozen=True)
class Decoder:
    """Turns one shard row into fixed-size uint8 arrays (the CPU half of the pipeline)."""

    task: str
    crop_height: int
    crop_width: int
    load_height: int = 0
    load_width: int = 0
    flip: bool = True
    instance_edges: bool = False
    stored_input: bool = False
    seed: int = 0
    num_labels: int = 0
    """Label maps: ids must be below this (0: unchecked)."""

    @classmethod
    def from_config(cls, cfg: Config, stored_input: bool) -> "Decoder":
        d, labels = cfg.data, cfg.data.task == "labels2photo"
        return cls(d.task, d.crop_height, d.crop_width, d.load_height, d.load_width, d.flip,
                   d.instance_edges and labels, stored_input or labels, cfg.train.seed, d.num_labels if labels else 0)

    @property
    def columns(self) -> list[str]:
        return ["key", "target"] + ["input"] * self.stored_input + ["instance"] * self.instance_edges

    def rng(self, epoch: int, key: str) -> np.random.Generator:
        return np.random.default_rng((self.seed, epoch, zlib.crc32(key.encode())))

    def row(self, row: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """Decode, resize, crop (random with ``rng``, centred without) and flip one row."""
        target = open_image(row["target"], "target")
        w, h = target.size
        lw, lh = self.load_width, self.load_height
        if lw or lh:  # one of them set: keep the aspect ratio
            w, h = lw or max(1, round(w * lh / h)), lh or max(1, round(h * lw / w))
        ch, cw = self.crop_height, self.crop_width
        if h < ch or w < cw:
            raise BadImage(f"{w}x{h} (after resizing) is smaller than the crop {cw}x{ch}: "
                           "set data.load_width/load_height or a smaller crop")
        top, left = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))) if rng \
            else ((h - ch) // 2, (w - cw) // 2)
        flip = rng is not None and self.flip and rng.random() < 0.5

        def photo(img: Image.Image) -> np.ndarray:
            img = img.convert("RGB") if img.mode != "RGB" else img
            img = img.resize((w, h), Image.BICUBIC) if img.size != (w, h) else img
            return np.asarray(img.crop((left, top, left + cw, top + ch)))

        def ids(img: Image.Image, margin: int = 0) -> np.ndarray:
            a = np.asarray(img)
            if a.ndim != 2:
                raise BadImage(f"label/instance map has mode {img.mode}: store one id per pixel (labelIds PNG)")
            a = _nearest(a, h, w) if a.shape != (h, w) else a
            return a[max(top - margin, 0): top + ch + margin, max(left - margin, 0): left + cw + margin]

        out = {"target": photo(target)}
        if self.stored_input:
            inp = open_image(row.get("input"), "input")
            if inp.size != target.size:
                raise BadImage(f"input {inp.size[0]}x{inp.size[1]} and target "
                               f"{target.size[0]}x{target.size[1]} differ in size")
            if self.task != "labels2photo":
                out["input"] = photo(inp)
            else:
                crop = ids(inp)
                bad = out_of_range(crop, self.num_labels) if self.num_labels else {}
                if bad:  # a dataset the config does not describe: a wrong one-hot must not train
                    raise DataError(f"key {row.get('key')!r}: label ids {describe_ids(bad)} are >= data.num_labels="
                                    f"{self.num_labels}: the model has no channel for them; set data.num_labels to "
                                    "the dataset's count (its manifest.json's num_labels) or reconvert it")
                out["input"] = np.clip(crop, 0, 255).astype(np.uint8)
        if self.instance_edges:
            if row.get("instance") is None:
                raise BadImage("no instance map (NULL): set data.instance_edges = false for this dataset")
            inst = ids(open_image(row["instance"], "instance"), margin=1).astype(np.int64)
            oy, ox = min(top, 1), min(left, 1)  # edges on the crop border see the pixel beyond it
            out["instance_edge"] = edge_map(inst)[oy: oy + ch, ox: ox + cw]
        return {k: np.ascontiguousarray(v[:, ::-1] if flip else v) for k, v in out.items()}

    def stack(self, rows: list[dict[str, np.ndarray]], ids: list[int]) -> dict[str, np.ndarray]:
        """Rows -> one batch; zero rows (all bad) still give every column, with length 0."""
        h, w = self.crop_height, self.crop_width
        shapes = {"target": (h, w, 3), "input": (h, w) if self.task == "labels2photo" else (h, w, 3),
                  "instance_edge": (h, w)}
        names = ["target"] + ["input"] * self.stored_input + ["instance_edge"] * self.instance_edges
        out = {k: np.stack([r[k] for r in rows]) if rows else np.zeros((0, *shapes[k]), np.uint8) for k in names}
        out["key_id"] = np.asarray(ids, dtype=np.int64)
        return out


def decode_rows(decoder: Decoder, items, epoch: int | None, report, limit: int, want: int | None = None):
    """Decode (shard, row) items into one batch (random crops for an ``epoch``, centred for None).

    Bad rows are logged and handed to ``report``, which returns the list to fail with, or None.
    """
    rows, ids, bad = [], [], []
    for shard, row in items:
        if want is not None and len(rows) == want:
            break
        key = str(row["key"])
        try:
            rows.append(decoder.row(row, None if epoch is None else decoder.rng(epoch, key)))
            ids.append(key_id(key))
        except DataError as exc:
            raise DataError(f"shard {shard} {exc}") from None
        except BadImage as exc:
            log.warning("skipping bad image: shard %s key %r: %s", shard, key, exc)
            bad.append({"shard": shard, "key": key, "reason": str(exc)})
    if bad and (over := report(bad)) is not None:
        shown = "; ".join(f"{e['shard']} key {e['key']!r}: {e['reason']}" for e in over[:20])
        more = f" (and {len(over) - 20} more)" if len(over) > 20 else ""
        raise DataError(f"{len(over)} bad images, more than data.max_bad_images={limit}: {shown}{more}. "
                        "Fix or reconvert those shards (`asaptrain data verify`), or raise data.max_bad_images")
    return decoder.stack(rows, ids)
