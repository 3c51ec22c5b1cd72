"""Run a trained generator on a user's images at their full size.

    asaptrain infer --run ./asaptrain-store/runs/NAME photo.png --out out/

A run URI (its config.toml and latest checkpoint) or a checkpoint URI plus a config gives the
generator; inputs are photos (deblurring) or label-id PNGs (label -> photo). Large images go
through in overlapping tiles, blended with a linear ramp, so memory stays bounded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from asaptrain.config.schema import Config
from asaptrain.config.io import from_dict
from asaptrain.errors import UserError
from asaptrain.train.nets import build_generator
from asaptrain.train.resume import fallback_note, newest_loadable, read_state


class InferError(UserError):
    """An input or checkpoint that inference cannot use."""


@dataclass
class GeneratorWeights:
    """What a run's checkpoint holds for inference."""

    cfg: Config
    state_dict: dict
    source: str
    """"ema" (the run kept an EMA copy) or "generator"."""
    checkpoint: str
    """The checkpoint file, relative to the run directory."""
    step: int
    """Generator updates done when it was saved."""


def load_weights(run_dir, checkpoint_rel: str | None = None) -> GeneratorWeights:
    """The run's config and its generator's weights (the EMA copy when the run kept one), from
    ``checkpoint_rel`` or else the newest checkpoint that loads (a damaged newer one is named)."""
    import sys
    import tomllib

    if not run_dir.exists("config.toml"):
        raise InferError(f"{run_dir.uri_for('config.toml')} is missing: is this a run directory?")
    cfg = from_dict(tomllib.loads(run_dir.read_text("config.toml")), source=run_dir.uri_for("config.toml"))
    if checkpoint_rel:
        rel, state = checkpoint_rel, read_state(run_dir, checkpoint_rel)
    else:
        found = newest_loadable(run_dir)
        if found.skipped:
            print(f"[asaptrain] {fallback_note(found)}", file=sys.stderr, flush=True)
        rel, state = found.rel, found.state
    ema = state.get("ema") is not None
    return GeneratorWeights(cfg, state["ema"] if ema else state["generator"], "ema" if ema else "generator", rel,
                            int(state.get("step") or 0))


def load_generator(run_dir, checkpoint_rel: str | None = None, device: str = "cpu") -> tuple[Config, torch.nn.Module]:
    """The run's config and its generator (EMA weights when the run kept an EMA)."""
    weights = load_weights(run_dir, checkpoint_rel)
    G = build_generator(weights.cfg)
    G.load_state_dict(weights.state_dict)
    return weights.cfg, G.to(device).eval()


def _multiple(cfg: Config) -> int:
    """Spatial sizes the generator accepts are multiples of this."""
    if cfg.model.name in ("asapnet", "hybrid"):
        return cfg.model.tile_size
    return 2 ** (cfg.model.downsamplings + cfg.model.local_enhancers)


def read_input(path: Path, cfg: Config) -> torch.Tensor:
    """A (1, C, H, W) generator input in the model's convention."""
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise InferError(f"cannot read {path}: {exc}") from None
    if cfg.data.task == "labels2photo":
        ids = torch.from_numpy(np.array(image.convert("L") if image.mode not in ("L", "P", "I;16", "I") else image))
        ids = ids.long().clamp(0, cfg.data.num_labels - 1)
        x = F.one_hot(ids, cfg.data.num_labels).permute(2, 0, 1).float()[None]
        if cfg.data.instance_edges:  # no instance map given: no instance boundaries
            x = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        return x
    rgb = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float()[None]
    return rgb / 127.5 - 1


@torch.no_grad()
def run_tiled(G: torch.nn.Module, x: torch.Tensor, multiple: int, tile: int = 1024, overlap: int = 64) -> torch.Tensor:
    """G(x) for any size: reflect-pad to a multiple, and split into blended tiles when large."""
    _, _, h, w = x.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    H, W = xp.shape[-2:]
    if H <= tile and W <= tile:
        return G(xp)[..., :h, :w]
    tile = max(multiple, tile - tile % multiple)
    overlap = min(overlap - overlap % multiple, tile // 2)
    out = torch.zeros(1, 3, H, W, device=x.device)
    weight = torch.zeros(1, 1, H, W, device=x.device)
    stride = tile - overlap
    tops = list(range(0, max(H - tile, 0) + 1, stride))
    lefts = list(range(0, max(W - tile, 0) + 1, stride))
    if tops[-1] + tile < H:
        tops.append(H - tile)
    if lefts[-1] + tile < W:
        lefts.append(W - tile)
    for top in tops:
        for left in lefts:
            th, tw = min(tile, H), min(tile, W)
            piece = G(xp[..., top : top + th, left : left + tw])
            ramp_h = torch.minimum(torch.arange(th, device=x.device) + 1, torch.arange(th, 0, -1, device=x.device))
            ramp_w = torch.minimum(torch.arange(tw, device=x.device) + 1, torch.arange(tw, 0, -1, device=x.device))
            mask = (ramp_h.clamp(max=overlap or 1)[:, None] * ramp_w.clamp(max=overlap or 1)[None]).float()[None, None]
            out[..., top : top + th, left : left + tw] += piece.float() * mask
            weight[..., top : top + th, left : left + tw] += mask
    return (out / weight)[..., :h, :w]


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
                device: str = "auto", tile: int = 1024, overwrite: bool = False) -> list[str]:
    """Write ``OUT/<name>.png`` for every input (names from :func:`output_names`); returns the
    written paths. Nothing is written when an output would replace an input or, without
    ``overwrite``, an existing file."""
    plan = plan_outputs(inputs, out_dir, overwrite)
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    cfg, G = load_generator(run_dir, checkpoint_rel, dev)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for path, target in plan:
        x = read_input(path, cfg).to(dev)
        y = run_tiled(G, x, _multiple(cfg), tile=tile)
        rgb = ((y[0].float().clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        tmp = target + ".part"
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, target)
        written.append(target)
    return written
