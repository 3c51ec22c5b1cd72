"""One reader of a run directory: what every command that reads a run uses (``infer``,
``predict``, ``export``, evaluation, ``aggregate``, the sweep's reference, resume, imports).

    run = RunReader.open("s3://bucket/asap/runs/NAME", s3_endpoint=url)   # or RunReader.of(store, NAME)
    run.info()                     # run.json ({} when there is none)
    run.config()                   # config.toml, validated
    run.metrics().evals()          # metrics.jsonl's validation records (unreadable lines counted, never raised)
    g = run.generator()            # the newest checkpoint that loads: its config, G's (or the EMA's) weights
    run.evaluations()              # {"val": {...}} from eval-SPLIT.json

A run directory holds ``run.json``, ``config.toml``, ``metrics.jsonl``, ``timing.json``,
``samples/STEP.png``, ``eval-SPLIT.json`` and Ray's ``checkpoint_*/state.pt``. A checkpoint
carries the run's config (``state.CONFIG_KEY``): its generator is rebuilt from that, so a
checkpoint needs nothing beside it; checkpoints saved before they carried it fall back to
``config.toml``. Checkpoints load with ``weights_only=True``. Damage is a :class:`RunError` or
:class:`CheckpointError` naming the file (a damaged newest checkpoint is passed over for the
newest one that loads, and named).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from asaptrain.config.schema import Config
from asaptrain.errors import UserError, load_error_text
from asaptrain.train.run_files import RUNS_PREFIX, Metrics, check_name, parse_metrics
from asaptrain.train.state import CONFIG_KEY, STATE_FILE, from_bytes

CHECKPOINT_PREFIX = "checkpoint_"
"""Ray Train names checkpoint directories ``checkpoint_YYYY-mm-dd_HH-MM-SS.ffffff``: name order is time order."""
EVAL_FILE_PREFIX, EVAL_FILE_SUFFIX = "eval-", ".json"
"""A whole-split evaluation of the run's generator: ``eval-SPLIT.json``."""


class RunError(UserError):
    """A run directory, or one of its files, that cannot be read as a run."""


class CheckpointError(UserError):
    """A checkpoint that does not load, or does not fit the config it is used with."""


@dataclass
class Found:
    rel: str
    """The checkpoint file, relative to the run directory (``checkpoint_.../state.pt``)."""
    state: dict
    skipped: list[str] = field(default_factory=list)
    """One message per newer checkpoint that did not load, naming its file and the reason."""


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
    config_from: str = "checkpoint"
    """Where ``cfg`` came from: "checkpoint" or "config.toml" (checkpoints that carry no config)."""
    skipped: list[str] = field(default_factory=list)
    """Newer checkpoints that did not load (see :class:`Found`)."""


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


def mismatch(cfg: Config, state: dict, parts: tuple[str, ...] = ("generator", "discriminator")) -> str | None:
    """What differs between ``cfg``'s networks (``parts``) and the weights in ``state`` (None when they fit)."""
    from asaptrain.train.nets import build_discriminator, build_generator

    builders = {"generator": build_generator, "discriminator": build_discriminator}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        nets = {part: builders[part](cfg) for part in parts}
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


def checkpoint_config(state: dict, where: str) -> Config | None:
    """The config a checkpoint carries (None for checkpoints saved before they carried one)."""
    from asaptrain.config.io import from_dict

    raw = state.get(CONFIG_KEY)
    return from_dict(raw, source=f"{where} (its config)") if isinstance(raw, dict) else None


class RunReader:
    """One run directory, read: ``RunReader(run_dir)`` with a Store at the run's directory."""

    def __init__(self, run_dir, name: str | None = None):
        self.dir = run_dir
        self.name = name or run_dir.uri_for("").rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def open(cls, uri: str, s3_endpoint: str | None = None) -> "RunReader":
        """The run at ``uri`` (a path, ``file://`` or ``s3://`` URI of its directory)."""
        from asaptrain.data.store import Store

        return cls(Store.open(uri, s3_endpoint))

    @classmethod
    def of(cls, store, name: str, prefix: str = RUNS_PREFIX) -> "RunReader":
        """The run ``name`` under ``prefix`` of ``store`` (``STORE/runs/NAME``)."""
        check_name(name, "run name")
        return cls(store.child(*[p for p in prefix.split("/") if p], name), name)

    @property
    def uri(self) -> str:
        return self.dir.uri_for("")

    def exists(self) -> bool:
        """Whether the directory looks like a run (it has a run.json or a config.toml)."""
        return self.dir.exists("run.json") or self.dir.exists("config.toml")

    # ----------------------------------------------------------------------- small files
    def info(self) -> dict:
        """run.json (``{}`` when there is none); RunError when it is not a JSON object."""
        if not self.dir.exists("run.json"):
            return {}
        try:
            meta = self.dir.read_json("run.json")
        except ValueError as exc:
            raise RunError(f"{self.dir.uri_for('run.json')} is not JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise RunError(f"{self.dir.uri_for('run.json')} holds a {type(meta).__name__}, not a JSON object")
        return meta

    def status(self) -> str:
        """run.json's status (``running``, ``finished``, ``failed``, ``interrupted``, ``imported``), or ``unknown``."""
        return str(self.info().get("status") or "unknown")

    def config_dict(self) -> dict | None:
        """config.toml parsed, not validated (None when there is none); RunError when it is not TOML."""
        import tomllib

        if not self.dir.exists("config.toml"):
            return None
        try:
            return tomllib.loads(self.dir.read_text("config.toml"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RunError(f"{self.dir.uri_for('config.toml')} is not TOML ({exc})") from None

    def config(self) -> Config:
        """The validated config the run was written with (config.toml)."""
        from asaptrain.config.io import from_dict

        raw = self.config_dict()
        if raw is None:
            raise RunError(f"{self.dir.uri_for('config.toml')} is missing: is {self.uri} a run directory?")
        return from_dict(raw, source=self.dir.uri_for("config.toml"))

    def metrics(self) -> Metrics:
        """metrics.jsonl's records (``.evals()``, ``.train()``, ``.unreadable``, ``.present``)."""
        return parse_metrics(self.dir.read_text("metrics.jsonl") if self.dir.exists("metrics.jsonl") else None)

    def timing(self) -> dict | None:
        """timing.json (None when there is none); RunError when it is not JSON."""
        if not self.dir.exists("timing.json"):
            return None
        try:
            return self.dir.read_json("timing.json")
        except ValueError as exc:
            raise RunError(f"{self.dir.uri_for('timing.json')} is not JSON ({exc})") from None

    def samples(self) -> dict[int, str]:
        """step -> the sample grid's path relative to the run (``samples/00000500.png``)."""
        out = {}
        for path in self.dir.list("samples"):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".png") and name[:-4].isdigit():
                out[int(name[:-4])] = f"samples/{name}"
        return dict(sorted(out.items()))

    def evaluations(self) -> dict[str, dict]:
        """split -> its ``eval-SPLIT.json`` (whole-split evaluations); RunError naming a file that is not JSON."""
        out = {}
        for path in self.dir.list(""):
            name = path.rsplit("/", 1)[-1]
            if name.startswith(EVAL_FILE_PREFIX) and name.endswith(EVAL_FILE_SUFFIX):
                try:
                    out[name[len(EVAL_FILE_PREFIX):-len(EVAL_FILE_SUFFIX)]] = self.dir.read_json(name)
                except ValueError as exc:
                    raise RunError(f"{self.dir.uri_for(name)} is not JSON ({exc})") from None
        return out

    # ----------------------------------------------------------------------- checkpoints
    def checkpoints(self) -> list[str]:
        """The checkpoint directories that hold a state file, oldest first."""
        return checkpoint_names(self.dir)

    def checkpoint(self, rel: str | None = None) -> Found:
        """The checkpoint file ``rel`` (relative to the run), or the newest one that loads."""
        if not self.exists() and not self.checkpoints():
            raise RunError(f"{self.dir.uri_for('config.toml')} is missing: is {self.uri} a run directory?")
        if not rel:
            return newest_loadable(self.dir)
        if not self.dir.exists(rel):
            raise CheckpointError(f"{self.dir.uri_for(rel)} does not exist: name a checkpoint directory of the run "
                                  f"({', '.join(self.checkpoints()) or 'it has none'})")
        return Found(rel, read_state(self.dir, rel))

    def generator(self, rel: str | None = None) -> GeneratorWeights:
        """The generator of checkpoint ``rel`` (default: the newest that loads): the EMA copy when
        the run kept one, else G, with the config it was trained with, checked to fit it."""
        found = self.checkpoint(rel)
        where = self.dir.uri_for(found.rel)
        cfg, config_from = checkpoint_config(found.state, where), "checkpoint"
        if cfg is None:
            cfg, config_from = self.config(), "config.toml"
        ema = found.state.get("ema") is not None
        weights = found.state.get("ema") if ema else found.state.get("generator")
        if not isinstance(weights, dict):
            raise CheckpointError(f"{where} holds no generator weights")
        problem = mismatch(cfg, {"generator": weights}, ("generator",))
        if problem:
            source = "the config it carries" if config_from == "checkpoint" else self.dir.uri_for("config.toml")
            raise CheckpointError(f"{where} does not fit {source}: {problem}")
        return GeneratorWeights(cfg, weights, "ema" if ema else "generator", found.rel,
                                int(found.state.get("step") or 0), config_from, found.skipped)


__all__ = ["RunReader", "RunError", "CheckpointError", "Found", "GeneratorWeights", "checkpoint_names",
           "read_state", "newest_loadable", "fallback_note", "mismatch", "checkpoint_config", "CHECKPOINT_PREFIX",
           "EVAL_FILE_PREFIX"]
