"""A run's checkpoints: find the newest one that loads, and check it fits a config before resuming.

The driver calls :func:`check_resume` before it writes anything for ``train --resume NAME``: a
config whose networks do not match the run's weights (another model, other widths) is refused
with what differs, and a damaged newest checkpoint is named with the older one the run will
continue from. Each worker calls :func:`worker_checkpoint`, which falls back the same way
when the checkpoint Ray hands it does not load. Finding and reading checkpoints is the run
reader's (``run_reader.py``); a checkpoint that carries its config has the differing ``[model]``
fields named too.
"""

from __future__ import annotations

from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.run_reader import (CheckpointError, Found, checkpoint_config, checkpoint_names, fallback_note,
                                        mismatch, newest_loadable)


def _model_fields(cfg: Config, state: dict, where: str) -> str:
    """The [model] fields that differ between the config a checkpoint carries and ``cfg`` ("" when it carries none)."""
    from asaptrain.config.io import to_dict

    try:
        theirs = checkpoint_config(state, where)
    except UserError:  # a config of an older schema: the shapes still say what differs
        return ""
    if theirs is None:
        return ""
    a, b = to_dict(theirs)["model"], to_dict(cfg)["model"]
    diff = [f"model.{k} = {a[k]!r} in the checkpoint, {b.get(k)!r} in the config" for k in a if a[k] != b.get(k)]
    return f" [{'; '.join(diff)}]" if diff else ""


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
        fields = _model_fields(cfg, found.state, files.dir.uri_for(found.rel))
        raise CheckpointError(
            f"cannot resume {files.name!r} with this config: {files.dir.uri_for(found.rel)} holds a {trained} model, "
            f"the config describes a {cfg.model.name} model that does not fit it ({problem}){fields}. Nothing was "
            "changed; "
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
