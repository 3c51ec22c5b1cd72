"""A run's checkpoints: find the newest one that loads, and check it fits a config before resuming.

The driver calls :func:`check_resume` before it writes anything for ``train --resume NAME``: a
config whose networks do not match the run's weights (another model, other widths) is refused
with what differs, and a damaged newest checkpoint is named with the older one the run will
continue from. Each worker calls :func:`worker_checkpoint`, which falls back the same way
when the checkpoint Ray hands it does not load. ``infer`` uses :func:`newest_loadable`.

    found = newest_loadable(RunFiles(store, "deblurgan-smoke-...").dir)
    found.rel, found.state["step"], found.skipped
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.state import STATE_FILE, from_bytes, load_error_text

CHECKPOINT_PREFIX = "checkpoint_"
"""Ray Train names checkpoint directories ``checkpoint_YYYY-mm-dd_HH-MM-SS.ffffff``: name order is time order."""


class CheckpointError(UserError):
    """A checkpoint that does not load, or does not fit the config it is resumed with."""


@dataclass
class Found:
    rel: str
    """The checkpoint file, relative to the run directory (``checkpoint_.../state.pt``)."""
    state: dict
    skipped: list[str] = field(default_factory=list)
    """One message per newer checkpoint that did not load, naming its file and the reason."""


def checkpoint_names(run_dir) -> list[str]:
    """The run's checkpoint directories that hold a state file, oldest first."""
    names = sorted(p for p in run_dir.list("") if p.split("/")[-1].startswith(CHECKPOINT_PREFIX))
    return [n for n in names if run_dir.exists(f"{n}/{STATE_FILE}")]


def read_state(run_dir, rel: str) -> dict:
    """The state dict in ``rel``; CheckpointError naming the file when it does not load."""
    try:
        return from_bytes(run_dir.read_bytes(rel))
    except UserError:
        raise
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError for damage
        raise CheckpointError(f"{run_dir.uri_for(rel)} does not load ({load_error_text(exc)})") from None


def newest_loadable(run_dir, names: list[str] | None = None) -> Found:
    """The newest of ``names`` (default: all the run's checkpoints) that loads, with the newer
    ones that did not; CheckpointError when there is none."""
    names = checkpoint_names(run_dir) if names is None else names
    if not names:
        raise CheckpointError(f"no checkpoint in {run_dir.uri_for('')}: the run has not saved one yet")
    skipped = []
    for name in reversed(names):
        try:
            return Found(f"{name}/{STATE_FILE}", read_state(run_dir, f"{name}/{STATE_FILE}"), skipped)
        except CheckpointError as exc:
            skipped.append(str(exc))
    raise CheckpointError("no checkpoint of the run loads: " + "; ".join(skipped))


def fallback_note(found: Found) -> str:
    return (f"{'; '.join(found.skipped)}: continuing from the newest checkpoint that loads, "
            f"{found.rel} (step {found.state.get('step')})")


def mismatch(cfg: Config, state: dict) -> str | None:
    """What differs between ``cfg``'s networks and the weights in ``state`` (None when they fit)."""
    from asaptrain.train.nets import build_discriminator, build_generator

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        nets = {"generator": build_generator(cfg), "discriminator": build_discriminator(cfg)}
    problems = []
    for part, net in nets.items():
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in (state.get(part) or {}).items()}
        missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
        shapes = [f"{k} {have[k]} in the checkpoint, {want[k]} in the config" for k in sorted(want.keys() & have.keys())
                  if want[k] != have[k]]
        if missing:
            problems.append(f"{part}: {len(missing)} weights the config needs are not in the checkpoint "
                            f"({_few(missing)})")
        if extra:
            problems.append(f"{part}: {len(extra)} checkpoint weights the config has no place for ({_few(extra)})")
        if shapes:
            problems.append(f"{part}: {len(shapes)} shapes differ ({_few(shapes)})")
    return "; ".join(problems) or None


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def check_resume(files, cfg: Config) -> Found | None:
    """The checkpoint ``cfg`` resumes run ``files`` from (None when the run saved none yet).

    Raises CheckpointError, before anything is written, when the weights do not fit ``cfg``:
    the message names both model kinds and what differs, and says how to resume as trained.
    """
    try:
        found = newest_loadable(files.dir)
    except CheckpointError:
        if checkpoint_names(files.dir):
            raise  # checkpoints exist and none loads
        return None
    problem = mismatch(cfg, found.state)
    if problem:
        trained = _trained_model(files)
        raise CheckpointError(
            f"cannot resume {files.name!r} with this config: {files.dir.uri_for(found.rel)} holds a {trained} model, "
            f"the config describes a {cfg.model.name} model that does not fit it ({problem}). Nothing was changed; "
            f"resume with the run's own config: --config {files.dir.uri_for('config.toml')}")
    return found


def resume_step(files, cfg: Config, recorded: int) -> int:
    """The step ``train --resume`` continues from (``recorded`` is run.json's steps_done), after
    :func:`check_resume`; says so when a damaged newer checkpoint is passed over."""
    found = check_resume(files, cfg)
    if found is None:
        return 0
    if found.skipped:
        print(f"[asaptrain] {fallback_note(found)}", flush=True)
    return int(found.state.get("step", recorded))


def _trained_model(files) -> str:
    try:
        return str(files.read_run().get("model") or "different")
    except Exception:  # run.json unreadable: the weights still speak for themselves
        return "different"


def worker_checkpoint(latest, run_dir) -> dict | None:
    """The state a worker resumes from: Ray's latest checkpoint, or, when that does not load, the
    newest older one of the run that does (the loop then continues from that step)."""
    if latest is None:
        return None
    name = latest.path.rstrip("/").rsplit("/", 1)[-1]
    candidates = [n for n in checkpoint_names(run_dir) if n <= name] or [name]
    found = newest_loadable(run_dir, candidates)
    if found.skipped:
        print(f"[asaptrain] {fallback_note(found)}", flush=True)
    return found.state
