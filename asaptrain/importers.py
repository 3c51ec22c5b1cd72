"""Official generator checkpoints (pix2pixHD, DeblurGAN, ASAP-Net) -> asaptrain run directories.

    asaptrain import deblurgan latest_net_G.pth --name deblurgan-wild --preset deblurgan-gopro

The file is read as tensors only (``weights_only``: a pickle that holds code is refused, never
run), its keys renamed onto ``build_generator(cfg)``'s (the official code's separate padding
modules shift its indices; ASAP-Net's 1x1 parameter head becomes a Linear with each MLP layer's
rows reordered from ``[bias, weight]`` to ``[weight, bias]``), and checked against the config
before anything is written. The run it writes holds ``config.toml``, ``run.json`` (status
``imported``, the source file's name and sha256) and one checkpoint with the generator's weights
and config, so `infer`, `predict`, `export`, `aggregate` and `train --init-from` read it as any
run. The layouts are in ``notes/checkpoints.md`` of the design notes; the tests prove each
mapping on files the official code wrote (``tests/data/make_official_fixtures.py``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import time
from dataclasses import asdict, dataclass

import torch

from asaptrain.config.io import replace, to_dict
from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.official_keys import _KEY_MAPS, asapnet_head_order  # noqa: F401 - re-exported
from asaptrain.train.nets import build_generator, generator_config, generator_in_channels
from asaptrain.train.run_reader import CHECKPOINT_PREFIX
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import STATE_FILE, to_bytes

KINDS = ("pix2pixhd", "deblurgan", "asapnet")
DEFAULT_PRESETS = {"pix2pixhd": "pix2pixhd-cityscapes", "deblurgan": "deblurgan-gopro", "asapnet": "asapnet-cityscapes"}
IMPORTED = "imported"
"""run.json status of an imported run: a generator only, no D, optimizer state or step."""
_RUNNING_STATS = (".running_mean", ".running_var", ".num_batches_tracked")


class ImportRefused(UserError):
    """An official checkpoint that cannot be imported as asked; nothing was written."""


# ----------------------------------------------------------------------------- reading


def read_official(path: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, tensors only: a truncated file, a pickle holding objects other
    than tensors (code) and a file of something else are refused, naming the file."""
    if not os.path.isfile(path):
        raise ImportRefused(f"{path} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ImportRefused(
            f"{path} holds Python objects other than tensors, which would run code when loaded; it was refused "
            f"without running it ({str(exc).splitlines()[0][:160]}). Save the generator's state_dict() alone") from None
    except Exception as exc:  # torch raises RuntimeError / EOFError / OSError for truncated or foreign files
        raise ImportRefused(f"{path} is not a complete PyTorch checkpoint ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0][:160]}); download it again") from None
    if isinstance(obj, dict) and "generator" in obj and "g_opt" in obj:
        raise ImportRefused(f"{path} is an asaptrain run checkpoint, not an official one: use its run directory "
                            "with `infer --run` or `train --init-from` directly")
    for wrapper in ("state_dict", "model", "netG"):  # files saved as {"state_dict": ...}
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ImportRefused(f"{path} does not hold a generator's state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # a DataParallel save


def drop_running_stats(state: dict) -> tuple[dict, list[str]]:
    """``state`` without the instance-norm running statistics a PyTorch < 0.4 save carries (the
    official loaders skip keys that do not fit; instance norm never used them), and those keys."""
    dropped = [k for k in state if k.endswith(_RUNNING_STATS)]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def guess_kind(state: dict) -> str | None:
    """Which official generator a state dict looks like (None: none of the three)."""
    keys = list(state)
    if any(k.startswith(("fpn.", "final.", "smooth")) for k in keys):
        return "deblurganv2"
    if any(k.startswith("lowres_stream.") for k in keys):
        return "asapnet"
    if any(re.match(r"model\d+_[12]\.", k) for k in keys):
        return "pix2pixhd"
    if "model.1.weight" in state:
        blocks = {k for k in keys if ".conv_block." in k}
        if any(".conv_block.6." in k for k in blocks) or state["model.1.weight"].shape[1] == 3:
            return "deblurgan"
        return "pix2pixhd"
    return None


@dataclass
class Mapped:
    state: dict
    """The weights under asaptrain's names."""
    missing: list[str]
    """asaptrain weights the file does not provide."""
    extra: list[str]
    """File keys (official names) with no place in the config's generator."""
    shapes: list[str]
    """'name (file shape) vs (config shape)' for each mis-shaped weight."""

    @property
    def fits(self) -> bool:
        return not (self.missing or self.extra or self.shapes)

    def problem(self) -> str:
        parts = []
        for what, items in (("missing (the config needs them, the file lacks them)", self.missing),
                            ("extra (in the file, no place in the config)", self.extra),
                            ("mis-shaped", self.shapes)):
            if items:
                parts.append(f"{len(items)} {what}: {_few(items)}")
        return "; ".join(parts)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def map_state(kind: str, official: dict, cfg: Config) -> Mapped:
    """``official`` (running stats already dropped) renamed onto ``build_generator(cfg)``."""
    with torch.device("meta"):
        G = build_generator(cfg)
    want = {k: tuple(v.shape) for k, v in G.state_dict().items()}
    out, extra = {}, []
    for key, value in official.items():
        name = _KEY_MAPS[kind](key, cfg)
        if name is None or name not in want:
            extra.append(key)
            continue
        if kind == "asapnet" and name.startswith("lowres.head."):
            value = value.reshape(value.shape[0], -1) if value.dim() == 4 else value
            if value.shape[0] == want[name][0]:
                value = value[asapnet_head_order(G.mlp.dims)]
        out[name] = value
    shapes = [f"{k} {tuple(v.shape)} in the file, {want[k]} in the config" for k, v in out.items()
              if tuple(v.shape) != want[k]]
    return Mapped(out, sorted(want.keys() - out.keys()), sorted(extra), shapes)


# ----------------------------------------------------------------------------- what fits


def _semantics(kind: str, cfg: Config) -> list[str]:
    """Config choices the official generator fixes and its weights cannot show."""
    m, bad = cfg.model, []
    if m.name != kind:
        bad.append(f"the config's model is {m.name!r}, the file is {kind}: use --preset {DEFAULT_PRESETS[kind]}")
    elif kind in ("pix2pixhd", "deblurgan") and m.g_norm != "instance":
        bad.append("model.g_norm must be instance (the official generators use instance norm)")
    elif kind == "deblurgan" and not m.residual:
        bad.append("model.residual must be true (the published DeblurGAN learns the residual)")
    elif kind == "asapnet":
        if m.tile_size != m.lowres_downsample:
            bad.append("model.tile_size must equal model.lowres_downsample: the official bilinear pre-shrink at "
                       "the border is not reproduced (ASAP-Net's facades checkpoints need it)")
        for field, want in (("padding", "zero"), ("lowres_norm", "instance"), ("mlp_context", 1),
                            ("tile_blend", False), ("residual", False)):
            if getattr(m, field) != want:
                bad.append(f"model.{field} must be {str(want).lower()} for the official ASAP-Net")
    return bad


def _detect(kind: str, state: dict, cfg: Config) -> dict:
    """Config changes that describe the file's generator, read off its shapes."""
    m, changes = cfg.model, {}
    if kind in ("pix2pixhd", "deblurgan"):
        local = max([int(k[5]) for k in state if re.match(r"model\d_1\.1\.weight", k)] or [0])
        first = state.get("model.1.weight")
        if first is None:
            return {}
        down = 0  # stride-2 convs double the width: (2c, c, 3, 3) at model.4, 7, ...
        while (w := state.get(f"model.{4 + 3 * down}.weight")) is not None and w.dim() == 4 \
                and w.shape[2] == 3 and w.shape[0] == 2 * w.shape[1]:
            down += 1
        blocks = len({k.split(".")[1] for k in state if k.startswith("model.") and ".conv_block.1.weight" in k})
        changes = {"model.ngf": first.shape[0] // 2 ** local, "model.downsamplings": down,
                   "model.residual_blocks": blocks}
        if kind == "pix2pixhd":
            changes["model.local_enhancers"] = local
            if first.shape[1] != generator_in_channels(cfg):
                changes["data.num_labels"] = first.shape[1] - (1 if cfg.data.instance_edges else 0)
        else:
            dropout = any(".conv_block.6." in k for k in state)
            if dropout != (m.dropout > 0):
                changes["model.dropout"] = 0.5 if dropout else 0.0
    elif kind == "asapnet":
        first = state.get("lowres_stream.model.0.0.weight")
        head = [k for k in state if k.endswith(".weight") and state[k].dim() == 4 and state[k].shape[-1] == 1]
        if first is None or not head:
            return {}
        convs = sorted(int(k.split(".")[2]) for k in state if re.fullmatch(r"lowres_stream\.model\.\d+\.(conv_block\.0\.)?0\.weight", k))
        strided = [i for i in convs if "lowres_stream.model.%d.0.weight" % i in state and i > 0]
        changes = {"model.lowres_width": first.shape[0], "model.lowres_blocks": len(convs) - 1 - len(strided),
                   "model.lowres_downsample": 2 ** len(strided), "model.tile_size": 2 ** len(strided),
                   "model.lowres_max_channels": state[head[0]].shape[1]}
        rows = state[head[0]].shape[0]
        mlp_in = first.shape[1] - (1 if m.mlp_input == "all_but_last" else 0) + 4 * len(strided)
        for depth in range(2, 9):
            for width in range(1, 1025):
                if (mlp_in + 1) * width + (depth - 2) * (width + 1) * width + (width + 1) * 3 == rows:
                    changes.update({"model.mlp_depth": depth, "model.mlp_width": width})
                    break
            else:
                continue
            break
    return {k: v for k, v in changes.items() if _get(cfg, k) != v}


def _get(cfg: Config, dotted: str):
    section, field = dotted.split(".")
    return getattr(getattr(cfg, section), field)


def fit_official(kind: str, state: dict, cfg: Config, source: str) -> Mapped:
    """The mapped weights when ``state`` fits ``cfg``; else ImportRefused naming the missing, extra
    and mis-shaped keys and, when one is found, the ``--set`` under which the file fits."""
    guessed = guess_kind(state)
    if guessed == "deblurganv2":
        raise ImportRefused(f"{source} is a DeblurGAN-v2 generator (an FPN); asaptrain imports DeblurGAN (v1) only")
    if kind == "asapnet" and "lowres_stream.model.0.0.weight" not in state and any(
            k.startswith("lowres_stream.model.1.") for k in state):
        raise ImportRefused(f"{source} is an ASAP-Net generator with a reflection-padded low-res stream (the "
                            "facades checkpoints); those need ASAP-Net's bilinear pre-shrink at the border, which "
                            "asaptrain does not reproduce: only the Cityscapes layout imports")
    if kind == "deblurgan" and any(k.endswith("conv_block.1.weight") for k in state) and not any(
            re.search(r"conv_block\.[56]\.weight$", k) for k in state):
        raise ImportRefused(f"{source} has DeblurGAN's one-conv residual blocks (its 2019 code); asaptrain builds "
                            "the published two-conv block only")
    if guessed and guessed != kind:
        raise ImportRefused(f"{source} looks like a {guessed} generator, not {kind}: "
                            f"`asaptrain import {guessed} ...`")
    semantic = _semantics(kind, cfg)
    if semantic:
        raise ImportRefused(f"{source}: the config does not describe the official {kind} generator: "
                            + "; ".join(semantic))
    mapped = map_state(kind, state, cfg)
    if mapped.fits:
        return mapped
    hint = ""
    changes = _detect(kind, state, cfg)
    if changes:
        try:
            if map_state(kind, state, replace(cfg, changes)).fits:
                hint = " It fits with --set " + " --set ".join(f"{k}={_toml(v)}" for k, v in changes.items())
        except UserError:
            pass
    raise ImportRefused(f"{source} does not fit the config's {kind} generator ({mapped.problem()}); nothing "
                        f"was written.{hint}")


def _toml(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


# ----------------------------------------------------------------------------- the run


def checkpoint_dir_name(now: float | None = None) -> str:
    """A checkpoint directory named as Ray Train names them (name order is time order)."""
    now = time.time() if now is None else now
    return f"{CHECKPOINT_PREFIX}{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime(now))}.{int(now % 1 * 1e6):06d}"


def import_checkpoint(kind: str, path: str, cfg: Config, store, name: str, preset: str | None = None) -> dict:
    """Write run ``name`` into ``store`` from the official ``kind`` checkpoint at ``path``; returns
    its run.json. Everything is checked before the first write (the run's claim); run.json comes last."""
    from asaptrain.data.claim import claim, owner_here

    if kind not in KINDS:
        raise ImportRefused(f"unknown model {kind!r}: one of {', '.join(KINDS)}")
    files = RunFiles(store, name)
    _refuse_existing(files, name)  # (a claim alone is not a run: a dead import's is taken over below)
    checkpoint, source = _checkpoint(kind, path, cfg)
    # Claimed before the first write: a second command into this run (an import, a train) is refused.
    held = claim(store, f"runs/{name}", owner_here("import"), what=f"run {name!r} ({files.dir.uri_for('')})")
    try:
        _refuse_existing(files, name)  # another command may have written it meanwhile
        rel = f"{checkpoint_dir_name()}/{STATE_FILE}"
        files.dir.write_bytes(rel, to_bytes(checkpoint))
        files.write_config(cfg)
        return files.write_run(name=name, preset=preset, model=cfg.model.name, task=cfg.data.task, status=IMPORTED,
                               imported=time.strftime("%Y-%m-%dT%H:%M:%S%z"), source=source, checkpoint=rel,
                               steps=0, steps_done=0, error=None)
    finally:
        held.release()


def _refuse_existing(files: RunFiles, name: str) -> None:
    from asaptrain.data.claim import is_claim_object

    if files.exists() or [p for p in files.dir.list(recursive=True) if not is_claim_object(p)]:
        raise ImportRefused(f"a run named {name!r} exists at {files.dir.uri_for('')}; choose another --name")


def _checkpoint(kind: str, path: str, cfg: Config) -> tuple[dict, dict]:
    """The run checkpoint an official file becomes, and the record of its source; ImportRefused
    when it does not fit ``cfg``. Nothing is written."""
    state, dropped = drop_running_stats(read_official(path))
    mapped = fit_official(kind, state, cfg, path)
    G = build_generator(cfg)
    G.load_state_dict(mapped.state)  # strict: every weight placed (fit_official checked names and shapes)
    gcfg = generator_config(cfg)
    source = {"file": os.path.basename(path), "sha256": sha256_of(path), "bytes": os.path.getsize(path),
              "format": kind, "dropped_keys": len(dropped)}
    return {
        "generator": G.state_dict(), "discriminator": None, "ema": None, "step": 0,
        "generator_config": {"class": type(gcfg).__name__, **asdict(gcfg)}, "config": to_dict(cfg),
        "imported": source,
    }, source
