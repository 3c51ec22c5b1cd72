"""`train --init-from RUN_OR_IMPORT`: a new run whose networks start from another run's weights.

    plan = init_plan(cfg, source_dir)   # checks, before anything is written; workers call it again
    apply_init(state, plan)             # after build_state: weights only, fresh optimizers and step

G starts from the source's generator (a trained run's or an imported official model's), D and
the EMA copy from the source's where it has them and they are shaped alike (else D starts fresh
and the EMA as a copy of the loaded G). A generator that does not fit is refused, naming what
differs. The one partial load is pix2pixHD's two-stage recipe: a local-enhancer run whose global
generator starts from a global-only run's generator (``trunk.*`` -> ``global_net.trunk.*``; the
512p head, the local enhancer and D start fresh), with ``train.fix_global_steps`` holding that
global generator fixed at first (``train/gan.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.dist import unwrap
from asaptrain.train.run_reader import RunReader, fallback_note, mismatch, newest_loadable
from asaptrain.train.run_files import RUNS_PREFIX, RunFiles
from asaptrain.train.state import RunState

GLOBAL_PREFIX = "global_net."


class InitError(UserError):
    """A run to start from that is missing or whose weights do not fit the new config."""


@dataclass
class InitPlan:
    source: str
    """The source checkpoint's URI."""
    generator: dict
    """Weights for G (for a partial load: only the global generator's, under G's names)."""
    partial: bool = False
    """True for the two-stage load: G's other weights keep their fresh initialisation."""
    discriminator: dict | None = None
    ema: dict | None = None
    notes: list[str] = field(default_factory=list)
    """What starts fresh, and why: printed by the driver."""


def source_dir(store, ref: str, s3_endpoint: str | None = None, prefix: str = RUNS_PREFIX):
    """The run directory ``ref`` names: a run name under ``store``'s ``prefix``, or a run directory URI."""
    from asaptrain.data.store import Store

    if "/" in ref or "://" in ref:
        run_dir = Store.open(ref, s3_endpoint)
    else:
        run_dir = RunFiles(store, ref, prefix).dir
    if not run_dir.exists("config.toml"):
        raise InitError(f"--init-from {ref}: no run at {run_dir.uri_for('')} (its config.toml is missing); give a "
                        "run name in the store, a run directory, or a run written by `asaptrain import`")
    return run_dir


def _few(items, n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def _two_stage(cfg: Config, src: Config, generator: dict) -> dict | None:
    """The 512p generator's trunk under a local-enhancer G's global-net names, when it fits."""
    if not (cfg.model.name == src.model.name == "pix2pixhd" and cfg.model.local_enhancers >= 1
            and src.model.local_enhancers == 0):
        return None
    from asaptrain.train.nets import build_generator

    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build_generator(cfg).state_dict().items()}
    mapped = {GLOBAL_PREFIX + k: v for k, v in generator.items() if k.startswith("trunk.")}
    globals_ = {k for k in want if k.startswith(GLOBAL_PREFIX)}
    if set(mapped) != globals_ or any(tuple(v.shape) != want[k] for k, v in mapped.items()):
        return None
    return mapped


def init_plan(cfg: Config, run_dir) -> InitPlan:
    """What the new run's networks start from; InitError when the source's generator does not fit."""
    import sys

    found = newest_loadable(run_dir)
    if found.skipped:
        print(f"[asaptrain] {fallback_note(found)}", file=sys.stderr, flush=True)
    state, uri = found.state, run_dir.uri_for(found.rel)
    src = RunReader(run_dir).config()
    problem = mismatch(cfg, state, ("generator",))
    if problem is None:
        plan = InitPlan(uri, state["generator"])
    else:
        partial = _two_stage(cfg, src, state["generator"])
        if partial is None:
            raise InitError(f"--init-from {run_dir.uri_for('')}: its {src.model.name} generator does not fit the "
                            f"config's {cfg.model.name} generator ({problem}); nothing was written. Start from a run "
                            f"of the same model and widths (its config: {run_dir.uri_for('config.toml')})")
        plan = InitPlan(uri, partial, partial=True, notes=[
            f"two-stage start: the global generator from {uri}; the local enhancer"
            f"{'s' if cfg.model.local_enhancers > 1 else ''} and D start fresh"])
        return plan
    if state.get("discriminator") is None:
        plan.notes.append("D starts fresh: the source has none (an imported generator)")
    elif (d_problem := mismatch(cfg, state, ("discriminator",))) is not None:
        plan.notes.append(f"D starts fresh: the source's does not fit ({d_problem})")
    else:
        plan.discriminator = state["discriminator"]
    if cfg.optim.ema_decay > 0:
        ema = state.get("ema")
        if ema is not None and mismatch(cfg, {"generator": ema}, ("generator",)) is None:
            plan.ema = ema
        else:
            plan.notes.append("the EMA copy starts as the loaded generator (the source keeps none)")
    return plan


@torch.no_grad()
def apply_init(state: RunState, plan: InitPlan) -> None:
    """Load ``plan`` into a freshly built run state (every rank alike); optimizers, schedules,
    curriculum and step stay fresh."""
    G = unwrap(state.generator)
    if plan.partial:
        G.load_state_dict({**G.state_dict(), **plan.generator})
    else:
        G.load_state_dict(plan.generator)
    if plan.discriminator is not None:
        unwrap(state.discriminator).load_state_dict(plan.discriminator)
    if state.ema is not None:
        state.ema.load_state_dict(plan.ema if plan.ema is not None else G.state_dict())


def fixed_global_params(generator: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The global generator's parameters of a local-enhancer G (what ``fix_global_steps`` holds)."""
    net = getattr(unwrap(generator), "global_net", None)
    return list(net.parameters()) if net is not None else []
