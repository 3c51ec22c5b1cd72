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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asaptrain.config.schema import Config
from asaptrain.data.decode import BadImage, edge_map, input_array, label_ids, load_image
from asaptrain.data.sources import encode_png
from asaptrain.errors import UserError
from asaptrain.train.nets import build_generator, size_multiple
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


def read_input(path: Path, cfg: Config) -> np.ndarray:
    """An input file as ``input_array`` returns it (upright, by its EXIF orientation); InferError
    naming the file when it does not decode, or is a label map the model cannot read."""
    try:
        return input_array(load_image(str(path), f"{path}"), cfg, what=str(path))
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


@torch.no_grad()
def run_tiles(G: torch.nn.Module, xs: list[torch.Tensor], multiple: int, tile: int = 1024, overlap: int = 64,
              batch: int = 1) -> list[torch.Tensor]:
    """G(x) for each (1, C, H, W) ``x`` of any size: reflect-pad to a multiple, and split large ones
    into overlapping tiles blended with a linear ramp, so memory stays bounded.

    Tiles of one shape, from every image in ``xs``, go through G ``batch`` at a time (images
    differ in size, so tiles, not images, are what batches).
    """
    tile = max(multiple, tile - tile % multiple)
    overlap = min(overlap - overlap % multiple, tile // 2)
    padded, outs, weights, groups = [], [], [], {}
    for i, x in enumerate(xs):
        _, _, h, w = x.shape
        ph, pw = (-h) % multiple, (-w) % multiple
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        H, W = xp.shape[-2:]
        th, tw = min(tile, H), min(tile, W)
        boxes = [(top, left) for top in _tile_starts(H, th, tile - overlap) for left in _tile_starts(W, tw, tile - overlap)]
        padded.append(xp)
        single = len(boxes) == 1  # the whole image in one piece: G's output as is, no blending
        outs.append(None if single else torch.zeros(1, 3, H, W, device=x.device))
        weights.append(None if single else torch.zeros(1, 1, H, W, device=x.device))
        for top, left in boxes:
            groups.setdefault((xp.shape[1], th, tw), []).append((i, top, left))
    for (_, th, tw), pieces in groups.items():
        for start in range(0, len(pieces), batch):
            chunk = pieces[start:start + batch]
            ys = G(torch.cat([padded[i][..., t:t + th, l:l + tw] for i, t, l in chunk]))
            for (i, t, l), y in zip(chunk, ys):
                if outs[i] is None:
                    outs[i] = y[None]
                    continue
                mask = (_ramp(th, overlap, y.device)[:, None] * _ramp(tw, overlap, y.device)[None]).float()
                outs[i][..., t:t + th, l:l + tw] += y.float() * mask
                weights[i][..., t:t + th, l:l + tw] += mask
    return [(o if wt is None else o / wt)[..., :x.shape[-2], :x.shape[-1]] for o, wt, x in zip(outs, weights, xs)]


def to_rgb(y: torch.Tensor) -> np.ndarray:
    """A (1, 3, H, W) output in [-1, 1] -> an (H, W, 3) uint8 RGB array on the CPU."""
    return ((y[0].float().clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).cpu().numpy()


def generate(G: torch.nn.Module, cfg: Config, arrays: list[np.ndarray], edges: list[np.ndarray | None] | None = None,
             tile: int = 1024, overlap: int = 64, batch: int = 1, dtype: str | None = None) -> list[np.ndarray]:
    """G's RGB outputs (H, W, 3) uint8 for ``input_array`` arrays, each at its own full size:
    what `infer` and `predict` both run. ``dtype`` "fp32" or "bf16" (autocast) [None: bf16 where
    ``use_bf16`` allows]; ``batch`` tiles per call."""
    device = next(G.parameters()).device
    xs = [model_input(a, cfg, e).to(device) for a, e in zip(arrays, edges or [None] * len(arrays))]
    bf16 = use_bf16(cfg, device) if dtype is None else dtype == "bf16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        ys = run_tiles(G, xs, size_multiple(cfg), tile=tile, overlap=overlap, batch=batch)
    return [to_rgb(y) for y in ys]


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
                instances: str | None = None) -> list[str]:
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
        read_input(path, cfg)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path, target in plan:
        array = read_input(path, cfg)
        edges = [read_edges(inst[str(path)], array.shape[:2])] if inst else None
        rgb, = generate(G, cfg, [array], edges, tile=tile)
        tmp = target + ".part"
        with open(tmp, "wb") as fh:
            fh.write(encode_png(rgb))
        os.replace(tmp, target)
        written.append(target)
    return written
