"""Run a trained generator on a user's images at their full size.

    asaptrain infer --run ./asaptrain-store/runs/NAME photo.png --out out/

A run directory gives the generator (its newest checkpoint that loads, through the run reader,
``train/run_reader.py``); inputs are photos (deblurring, image-to-image) or label-id PNGs (label ->
photo, with ``--instances DIR`` for a run trained with instance edges). Large images go
through in overlapping tiles, blended with a linear ramp, so memory stays bounded.
``generate`` is that path, for `infer` here and for `asaptrain predict` (``predict.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asaptrain.config.schema import Config
from asaptrain.data.decode import DEFAULT_MAX_PIXELS, BadImage, edge_map, input_array, label_ids, load_image
from asaptrain.data.sources import encode_png
from asaptrain.errors import UserError
from asaptrain.train.nets import build_generator, min_input_size, size_multiple
from asaptrain.train.run_reader import GeneratorWeights, RunReader


class InferError(UserError):
    """An input or checkpoint that inference cannot use."""


def load_weights(run_dir, checkpoint_rel: str | None = None) -> GeneratorWeights:
    """The generator of the run in ``run_dir`` (a Store), as the run reader gives it
    (``RunReader.generator``: the EMA copy when the run kept one, the config its checkpoint
    carries), saying on stderr when a damaged newer checkpoint was passed over."""
    import sys

    weights = RunReader(run_dir).generator(checkpoint_rel)
    if weights.skipped:
        print(f"[asaptrain] {'; '.join(weights.skipped)}: using the newest checkpoint that loads, {weights.checkpoint} "
              f"(step {weights.step})", file=sys.stderr, flush=True)
    return weights


def load_generator(run_dir, checkpoint_rel: str | None = None, device: str = "cpu") -> tuple[Config, torch.nn.Module]:
    """The run's config and its generator (EMA weights when the run kept an EMA), in eval mode on ``device``."""
    weights = load_weights(run_dir, checkpoint_rel)
    G = build_generator(weights.cfg)
    G.load_state_dict(weights.state_dict)
    return weights.cfg, G.to(device).eval()


def use_bf16(cfg: Config, device) -> bool:
    """bf16 autocast where the run trained in bf16 and the device runs it natively (CUDA)."""
    device = torch.device(device)
    return cfg.train.precision == "bf16" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def model_input(array: np.ndarray, cfg: Config, edges: np.ndarray | None = None) -> torch.Tensor:
    """A (1, C, H, W) generator input from an ``input_array`` (``data/decode.py``) (and an (H, W) 0/1
    instance-edge map; without one, a run that uses edges sees no instance boundaries)."""
    # torch.tensor copies: arrays from Ray Data batches are read-only, which from_numpy warns about
    if cfg.data.task == "labels2photo":
        x = F.one_hot(torch.tensor(array).long(), cfg.data.num_labels).permute(2, 0, 1).float()[None]
        if cfg.data.instance_edges:
            edge = torch.zeros_like(x[:, :1]) if edges is None else torch.tensor(edges).float()[None, None]
            x = torch.cat([x, edge], dim=1)
        return x
    return torch.tensor(array).permute(2, 0, 1).float()[None] / 127.5 - 1


def read_input(path: Path, cfg: Config, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An input file as ``input_array`` returns it (upright, by its EXIF orientation); InferError
    naming the file when it does not decode, is over ``max_pixels`` by its header (checked before
    the pixels are decoded), or is a label map the model cannot read."""
    try:
        return input_array(load_image(str(path), f"{path}", max_pixels), cfg, what=str(path))
    except BadImage as exc:
        raise InferError(f"cannot use {path}: {exc}") from None


INSTANCE_WARNING = ("the run was trained with instance edges (data.instance_edges = true), but no instance maps "
                    "were given (--instances DIR): its inputs get no instance boundaries, and its outputs are "
                    "worse than in training")


def instance_files(inputs: list[str], instances: str) -> dict[str, Path]:
    """Input path -> its instance map: the file of the same stem in folder ``instances``
    (``x.png`` -> ``DIR/x.*``); InferError naming every input without one."""
    folder = Path(instances)
    if not folder.is_dir():
        raise InferError(f"--instances {instances} is not a folder")
    by_stem: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file():
            by_stem.setdefault(f.stem, f)
    missing = [p for p in inputs if Path(p).stem not in by_stem]
    if missing:
        raise InferError(f"no instance map in {folder} for {', '.join(missing)} (looked for {folder}/STEM.*)")
    return {p: by_stem[Path(p).stem] for p in inputs}


def read_edges(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) 0/1 instance-boundary map of an instance-id file; InferError when it does not
    decode or differs in size from its label map."""
    try:
        edges = edge_map(label_ids(load_image(str(path), str(path))).astype(np.int64))
    except BadImage as exc:
        raise InferError(f"cannot use {path}: {exc}") from None
    if edges.shape != shape:
        raise InferError(f"instance map {path} is {edges.shape[1]}x{edges.shape[0]}, its label map "
                         f"{shape[1]}x{shape[0]}: they must be the same size")
    return edges


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(n: int, overlap: int, device) -> torch.Tensor:
    """1, 2, ..., overlap, ..., overlap, ..., 2, 1: a tile's blending weight along one edge."""
    return torch.minimum(torch.arange(n, device=device) + 1, torch.arange(n, 0, -1, device=device)).clamp(max=overlap or 1)


def padded_size(h: int, w: int, multiple: int, minimum: int) -> tuple[int, int]:
    """(H, W) an h x w image is padded to: at least ``minimum``, a multiple of ``multiple``."""
    return tuple(max(minimum, n + (-n) % multiple) for n in (h, w))


def pad_to(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` (H, W[, C]) padded at the bottom and right to ``size``: reflected where the image is
    larger than the padding (no seam the model could see), else edge pixels repeated (a 1 x 1
    image has nothing to reflect)."""
    ph, pw = size[0] - a.shape[0], size[1] - a.shape[1]
    if not ph and not pw:
        return a
    widths = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, widths, mode="reflect" if a.shape[0] > ph and a.shape[1] > pw else "edge")


def _to_uint8(y: torch.Tensor) -> np.ndarray:
    """A (3, H, W) output in [-1, 1] -> (H, W, 3) uint8 on the CPU (one fp32 temporary, not four)."""
    return y.float().clamp(-1, 1).add_(1).mul_(127.5).add_(0.5).byte().permute(1, 2, 0).cpu().numpy()


@dataclass
class _Image:
    """One image on its way through :func:`run_tiles`."""

    padded: np.ndarray
    edges: np.ndarray | None
    h: int
    w: int
    out: np.ndarray | None = None


@torch.no_grad()
def run_tiles(G: torch.nn.Module, arrays: list[np.ndarray], make_input, multiple: int, minimum: int | None = None,
              tile: int = 1024, overlap: int = 64, batch: int = 1, edges: list | None = None) -> list[np.ndarray]:
    """G's (H, W, 3) uint8 outputs for arrays of any size (1 x 1 too): each is padded to at least
    ``minimum`` and to a multiple of ``multiple`` (:func:`pad_to`), cut back after.

    An image within one tile goes through G whole, ``batch`` same-shaped images per call. A larger
    one goes in overlapping tiles, a row of tiles at a time, ``batch`` tiles per call, blended
    with a linear ramp in an fp32 strip one tile tall; finished rows go straight into the uint8
    output, so memory is the image in uint8 plus one strip, never the image in fp32.
    ``make_input(array, edges)`` turns a piece of an image into G's (B, C, h, w) input.
    """
    minimum = minimum or multiple
    tile = max(minimum + (-minimum) % multiple, tile - tile % multiple)
    overlap = min(overlap - overlap % multiple, tile // 2)
    device = next(G.parameters()).device
    images, singles = [], {}
    for i, a in enumerate(arrays):
        size = padded_size(a.shape[0], a.shape[1], multiple, minimum)
        e = (edges or [None] * len(arrays))[i]
        images.append(_Image(pad_to(a, size), None if e is None else pad_to(e, size), a.shape[0], a.shape[1]))
        if max(size) <= tile:
            singles.setdefault(size, []).append(i)
    for idx in singles.values():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            ys = G(torch.cat([make_input(images[i].padded, images[i].edges).to(device) for i in chunk]))
            for i, y in zip(chunk, ys):
                images[i].out = _to_uint8(y[:, :images[i].h, :images[i].w])
    for im in images:
        if im.out is None:
            im.out = _tiled(G, im, make_input, tile, overlap, batch, device)
    return [im.out for im in images]


def _tiled(G, im: _Image, make_input, tile: int, overlap: int, batch: int, device) -> np.ndarray:
    """One large image through G in overlapping tiles, one row of tiles at a time."""
    H, W = im.padded.shape[:2]
    th, tw = min(tile, H), min(tile, W)
    tops, lefts = _tile_starts(H, th, tile - overlap), _tile_starts(W, tw, tile - overlap)
    out = np.empty((im.h, im.w, 3), np.uint8)
    mask = (_ramp(th, overlap, device)[:, None] * _ramp(tw, overlap, device)[None]).float()
    acc = torch.zeros(3, th, W, device=device)
    weight = torch.zeros(1, th, W, device=device)
    for r, top in enumerate(tops):
        for start in range(0, len(lefts), batch):
            chunk = lefts[start:start + batch]
            x = torch.cat([make_input(im.padded[top:top + th, l:l + tw],
                                      None if im.edges is None else im.edges[top:top + th, l:l + tw]) for l in chunk])
            for l, y in zip(chunk, G(x.to(device))):
                acc[:, :, l:l + tw] += y.float() * mask
                weight[:, :, l:l + tw] += mask
        done = (tops[r + 1] - top) if r + 1 < len(tops) else th  # rows no later tile reaches
        rows = min(done, im.h - top)
        if rows > 0:
            out[top:top + rows] = _to_uint8(acc[:, :rows, :im.w].div_(weight[:, :rows, :im.w]))
        # The strip moves down to the next row of tiles (in place), keeping what overlaps it.
        for t in (acc, weight):
            t[:, :th - done] = t[:, done:].clone()
            t[:, th - done:] = 0
    return out


def to_rgb(y: torch.Tensor) -> np.ndarray:
    """A (1, 3, H, W) output in [-1, 1] -> an (H, W, 3) uint8 RGB array on the CPU."""
    return _to_uint8(y[0])


def generate(G: torch.nn.Module, cfg: Config, arrays: list[np.ndarray], edges: list[np.ndarray | None] | None = None,
             tile: int = 1024, overlap: int = 64, batch: int = 1, dtype: str | None = None) -> list[np.ndarray]:
    """G's RGB outputs (H, W, 3) uint8 for ``input_array`` arrays, each at its own full size (any
    size: padded to ``min_input_size`` and ``size_multiple``, cut back after): what `infer` and
    `predict` both run. ``dtype`` "fp32" or "bf16" (autocast) [None: bf16 where ``use_bf16``
    allows]; ``batch`` tiles per call."""
    device = next(G.parameters()).device
    bf16 = use_bf16(cfg, device) if dtype is None else dtype == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        return run_tiles(G, arrays, lambda a, e: model_input(np.ascontiguousarray(a), cfg, e), size_multiple(cfg),
                         min_input_size(cfg), tile=tile, overlap=overlap, batch=batch, edges=edges)


def output_names(inputs: list[str]) -> dict[str, str]:
    """Input path -> output file name: ``<stem>.png``, or, for inputs that share a stem, the file
    name with its suffix (``x.jpg.png``) and then as many parent folders as make it unique
    (``a__x.png.png``). The same file named twice is one output."""
    paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in inputs))
    depth = dict.fromkeys(paths, 0)

    def label(p: Path) -> str:
        return p.stem if depth[p] == 0 else "__".join((*p.parent.parts[len(p.parent.parts) - depth[p] + 1:], p.name))

    while True:
        groups: dict[str, list[Path]] = {}
        for p in paths:
            groups.setdefault(label(p), []).append(p)
        clashes = [g for g in groups.values() if len(g) > 1]
        if not clashes:
            return {str(p): f"{label(p).lstrip('/')}.png" for p in paths}
        for group in clashes:
            for p in group:
                depth[p] += 1


def plan_outputs(inputs: list[str], out_dir: str, overwrite: bool = False) -> list[tuple[Path, str]]:
    """(input, output path) pairs, checked before any work: an output never replaces an input,
    and replaces an existing file only with ``overwrite``."""
    names = output_names(inputs)
    real_inputs = {os.path.realpath(p) for p in names}
    plan = [(Path(p), os.path.join(out_dir, n)) for p, n in names.items()]
    onto_input = [t for _, t in plan if os.path.realpath(t) in real_inputs]
    if onto_input:
        raise InferError(f"{onto_input[0]} is an input: writing the output there would replace it; choose another --out")
    existing = [t for _, t in plan if os.path.exists(t)]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InferError(f"{existing[0]}{more} exists; pass --overwrite to replace, or choose another --out")
    return plan


def infer_files(run_dir, inputs: list[str], out_dir: str, checkpoint_rel: str | None = None,
                device: str = "auto", tile: int = 1024, overwrite: bool = False,
                instances: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """Write ``OUT/<name>.png`` for every input (names from :func:`output_names`); returns the
    written paths. ``instances``: a folder of instance-id maps, one per label map by file stem,
    for a run trained with instance edges (without them it warns once, and runs). Nothing is
    written when an input cannot be used, when an output would replace an input or, without
    ``overwrite``, an existing file."""
    import sys

    plan = plan_outputs(inputs, out_dir, overwrite)
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    cfg, G = load_generator(run_dir, checkpoint_rel, dev)
    edges_used = cfg.data.task == "labels2photo" and cfg.data.instance_edges
    if instances and not edges_used:
        raise InferError("--instances gives instance maps, but the run was not trained with instance edges "
                         "(data.instance_edges = false): leave --instances out")
    inst = instance_files([str(p) for p, _ in plan], instances) if instances else {}
    if edges_used and not instances:
        print(f"[asaptrain] warning: {INSTANCE_WARNING}", file=sys.stderr, flush=True)
    for path, _ in plan:  # every input checked before the first output is written
        read_input(path, cfg, max_pixels)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path, target in plan:
        array = read_input(path, cfg, max_pixels)
        edges = [read_edges(inst[str(path)], array.shape[:2])] if inst else None
        rgb, = generate(G, cfg, [array], edges, tile=tile)
        tmp = target + ".part"
        with open(tmp, "wb") as fh:
            fh.write(encode_png(rgb))
        os.replace(tmp, target)
        written.append(target)
    return written
