"""The whole study in one call: data, the four models, the hybrid sweep, its best config, a report.

    asaptrain smoke                       # synthetic data, the *-smoke presets, minutes on a CPU
    python jobs/experiment.py --store s3://bucket/asap --s3-endpoint http://minio:9000

``run_study`` trains each preset as its own Ray Train run, sweeps the hybrid with Ray Tune,
optionally retrains the sweep's best config for the full number of steps, and aggregates every
run in the store into ``STORE/reports/``. A step that fails is recorded and the study goes on:
the report lists what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asaptrain.config.schema import Config
from asaptrain.config.io import from_dict, parse_overrides, replace
from asaptrain.errors import UserError
from asaptrain.config.presets import get_preset

SMOKE_TRAIN = ("asapnet-smoke", "pix2pixhd-smoke", "deblurgan-smoke", "hybrid-smoke")
FULL_TRAIN = ("asapnet-cityscapes", "pix2pixhd-cityscapes", "deblurgan-gopro", "hybrid-deblur")


@dataclass
class StudyPlan:
    presets: tuple[str, ...]
    """Presets to train, one run each."""
    sweep_preset: str | None
    """Preset the hybrid sweep starts from; None skips the sweep."""
    trials: int = 2
    """Sweep trials."""
    retrain_best: bool = False
    """Train the sweep's best config again for the preset's full steps."""
    changes: dict[str, Any] = field(default_factory=dict)
    """Config changes for every run, by dotted key (storage, scaling, steps)."""
    sweep_changes: dict[str, Any] = field(default_factory=dict)
    """Extra changes for the sweep's trials only."""
    preset_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra changes for one preset's run only, by preset name."""
    synth: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Synthetic datasets to create first: kind -> (train count, height, width)."""


def ensure_synth(store, kind: str, count: int, size: tuple[int, int], seed: int = 0) -> str:
    """``datasets/synth-KIND`` in the store, converted unless a complete one is already there."""
    from asaptrain.data.convert import convert
    from asaptrain.data.shards import verify
    from asaptrain.data.synth import synth_plan

    rel = f"datasets/synth-{kind}"
    target = store.child(*rel.split("/"))
    if target.exists("manifest.json") and not verify(target):
        return rel
    convert(synth_plan(kind, count, size, seed=seed, val_count=max(4, count // 8)), target, create_bucket=store.is_s3)
    return rel


def smoke_plan(store_uri: str, s3_endpoint: str | None, steps: int, trials: int, use_gpu: bool, gpus: int) -> StudyPlan:
    """The smallest study that still runs every part: tiny presets, 2-trial sweep."""
    changes: dict[str, Any] = {
        "storage.store": store_uri, "train.steps": steps, "train.checkpoint_every": steps,
        "train.log_every": max(1, steps // 4), "eval.every": max(1, steps // 2),
        "train.sample_every": max(1, steps // 2),
    }
    if s3_endpoint:
        changes["storage.s3_endpoint"] = s3_endpoint
    if use_gpu:
        workers = max(1, min(2, gpus))
        changes.update({"scaling.num_workers": workers, "scaling.use_gpu": "true", "train.batch_size": 4 * workers})
        sweep: dict[str, Any] = {"scaling.num_workers": 1}
    else:
        # Two CPU workers of half a CPU each leave a CPU for Ray Data's decoding tasks.
        changes.update({"scaling.num_workers": 2, "scaling.use_gpu": "false",
                        "scaling.resources_per_worker": {"CPU": 0.5}})
        sweep = {"scaling.num_workers": 1, "train.batch_size": 4}
    return StudyPlan(presets=SMOKE_TRAIN, sweep_preset="hybrid-smoke", trials=trials, changes=changes,
                     sweep_changes=sweep, preset_changes=on_the_sweeps_inputs("deblurgan-smoke", "hybrid-smoke"),
                     synth={"photos": (48, 64, 64), "scenes": (32, 64, 128)})


def on_the_sweeps_inputs(reference: str, sweep_preset: str) -> dict[str, dict[str, Any]]:
    """``reference``'s run trained on the inputs of ``sweep_preset``'s (its blur curriculum), so
    the sweep finds it as its DeblurGAN reference instead of training a second one: a run that
    differs only in its blur curriculum is another reference (``sweep/speed.py``). Both runs of
    the study's table then also learned from the same inputs."""
    curriculum = dataclasses.asdict(get_preset(sweep_preset).curriculum)
    return {reference: {f"curriculum.{key}": value for key, value in curriculum.items()}}


def run_study(plan: StudyPlan, progress: bool = True, console=None) -> dict:
    """Run ``plan``; returns {"runs": [...], "sweep": ..., "report": ..., "report_uri": ..., "seconds": ...}."""
    from rich.console import Console

    from asaptrain.data.store import store_from_config
    from asaptrain.report.aggregate import aggregate
    from asaptrain.train.driver import ensure_ray
    from asaptrain.sweep.tune import sweep

    console = console or Console()
    t0 = time.perf_counter()
    base = replace(get_preset(plan.presets[0] if plan.presets else plan.sweep_preset), plan.changes)
    store = store_from_config(base.storage)
    for kind, (count, h, w) in plan.synth.items():
        console.rule(f"[bold]data: synthetic {kind}")
        ensure_synth(store, kind, count, (h, w))
    ensure_ray()
    runs = []
    for preset in plan.presets:
        console.rule(f"[bold]train {preset}")
        changes = {**plan.changes, **plan.preset_changes.get(preset, {})}
        runs.append(_train(preset, lambda: replace(get_preset(preset), changes), progress, console))
    summary = None
    if plan.sweep_preset:
        console.rule(f"[bold]sweep {plan.sweep_preset} ({plan.trials} trials)")
        try:
            cfg = replace(get_preset(plan.sweep_preset), {**plan.changes, **plan.sweep_changes})
            summary = sweep(cfg, trials=plan.trials, progress=progress)
        except Exception as exc:  # the report shows what is missing; the study goes on
            console.print(f"[red]sweep failed: {exc}")
            summary = {"error": str(exc)}
        if plan.retrain_best and summary and summary.get("best"):
            console.rule("[bold]retrain the sweep's best hybrid")
            runs.append(retrain_best(store, plan, summary, progress, console))
    console.rule("[bold]aggregate")
    report_dir = store.child("reports")
    report = aggregate(store, report_dir)
    return {"runs": runs, "sweep": summary, "report": report, "report_uri": report_dir.uri_for("report.md"),
            "seconds": time.perf_counter() - t0}


def _train(preset: str, build: Callable[[], Config], progress: bool, console) -> dict:
    """One training run of the study, as its record; a config or run that cannot start is recorded."""
    from asaptrain.train.launch import fit

    try:
        result = fit(build(), preset=preset, progress=progress)
    except UserError as exc:  # e.g. its dataset is not in the store: say so, the study goes on
        console.print(f"[red]{preset}: {exc}")
        return {"preset": preset, "name": None, "status": "failed", "error": str(exc)}
    return {"preset": preset, "name": result.name, "status": result.status, "error": result.error}


def retrain_best(store, plan: StudyPlan, summary: dict, progress: bool, console) -> dict:
    """Train the sweep's best config for the preset's own steps; a failure is recorded, not raised."""
    keep = {k: v for k, v in plan.changes.items() if k != "train.steps"}
    return _train(f"{plan.sweep_preset}-best", lambda: replace(_best_config(store, summary), keep), progress, console)


def _best_config(store, summary: dict) -> Config:
    import tomllib

    where = store.child("sweeps", summary["name"])
    return from_dict(tomllib.loads(where.read_text("best.toml")), source=where.uri_for("best.toml"))


def full_plan(store_uri: str, s3_endpoint: str | None, overrides: list[str], trials: int) -> StudyPlan:
    """The paper-scale study; ``overrides`` are the user's ``--set`` texts for every run."""
    changes: dict[str, Any] = {"storage.store": store_uri}
    if s3_endpoint:
        changes["storage.s3_endpoint"] = s3_endpoint
    return StudyPlan(presets=FULL_TRAIN, sweep_preset="hybrid-deblur", trials=trials, retrain_best=True,
                     changes={**changes, **parse_overrides(overrides)})


__all__ = ["StudyPlan", "smoke_plan", "full_plan", "run_study", "retrain_best", "ensure_synth"]
