"""The whole study in one call: data, the four models, the hybrid sweep, its best config, a report.

    asaptrain smoke                       # synthetic data, the *-smoke presets, minutes on a CPU
    python jobs/experiment.py --store s3://bucket/asap --s3-endpoint http://minio:9000

``run_study`` trains each preset as its own Ray Train run, sweeps the hybrid with Ray Tune,
optionally retrains the sweep's best config for the full number of steps, and aggregates every
run in the store into ``STORE/reports/``. A step that fails is recorded and the study goes on:
the report lists what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from asaptrain.config.schema import Config
from asaptrain.config.io import apply_overrides, from_dict
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
    overrides: list[str] = field(default_factory=list)
    """--set overrides for every run (storage, scaling, steps)."""
    sweep_overrides: list[str] = field(default_factory=list)
    """Extra overrides for the sweep's trials only."""
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
    overrides = [f"storage.store={json.dumps(store_uri)}", f"train.steps={steps}",
                 f"train.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}",
                 f"eval.every={max(1, steps // 2)}", f"train.sample_every={max(1, steps // 2)}"]
    if s3_endpoint:
        overrides.append(f"storage.s3_endpoint={json.dumps(s3_endpoint)}")
    if use_gpu:
        workers = max(1, min(2, gpus))
        overrides += [f"scaling.num_workers={workers}", "scaling.use_gpu=true", f"train.batch_size={4 * workers}"]
        sweep = ["scaling.num_workers=1"]
    else:
        # Two CPU workers of half a CPU each leave a CPU for Ray Data's decoding tasks.
        overrides += ["scaling.num_workers=2", "scaling.use_gpu=false", "scaling.resources_per_worker={CPU = 0.5}"]
        sweep = ["scaling.num_workers=1", "train.batch_size=4"]
    return StudyPlan(presets=SMOKE_TRAIN, sweep_preset="hybrid-smoke", trials=trials, overrides=overrides,
                     sweep_overrides=sweep, synth={"photos": (48, 64, 64), "scenes": (32, 64, 128)})


def run_study(plan: StudyPlan, progress: bool = True, console=None) -> dict:
    """Run ``plan``; returns {"runs": [...], "sweep": ..., "report": ..., "report_uri": ..., "seconds": ...}."""
    from rich.console import Console

    from asaptrain.data.store import store_from_config
    from asaptrain.report.aggregate import aggregate
    from asaptrain.train.launch import ensure_ray, fit
    from asaptrain.sweep.tune import sweep

    console = console or Console()
    t0 = time.perf_counter()
    base = apply_overrides(get_preset(plan.presets[0] if plan.presets else plan.sweep_preset), plan.overrides)
    store = store_from_config(base.storage)
    for kind, (count, h, w) in plan.synth.items():
        console.rule(f"[bold]data: synthetic {kind}")
        ensure_synth(store, kind, count, (h, w))
    ensure_ray()
    runs = []
    for preset in plan.presets:
        console.rule(f"[bold]train {preset}")
        try:
            result = fit(apply_overrides(get_preset(preset), plan.overrides), preset=preset, progress=progress)
        except UserError as exc:  # e.g. its dataset is not in the store: say so, train the others
            console.print(f"[red]{preset}: {exc}")
            runs.append({"preset": preset, "name": None, "status": "failed", "error": str(exc)})
            continue
        runs.append({"preset": preset, "name": result.name, "status": result.status, "error": result.error})
    summary = None
    if plan.sweep_preset:
        console.rule(f"[bold]sweep {plan.sweep_preset} ({plan.trials} trials)")
        cfg = apply_overrides(get_preset(plan.sweep_preset), plan.overrides + plan.sweep_overrides)
        try:
            summary = sweep(cfg, trials=plan.trials, progress=progress)
        except Exception as exc:  # the report shows what is missing; the study goes on
            console.print(f"[red]sweep failed: {exc}")
            summary = {"error": str(exc)}
        if plan.retrain_best and summary and summary.get("best"):
            best = _best_config(store, summary)
            console.rule("[bold]retrain the sweep's best hybrid")
            result = fit(apply_overrides(best, [o for o in plan.overrides if not o.startswith("train.steps")]),
                         preset=f"{plan.sweep_preset}-best", progress=progress)
            runs.append({"preset": f"{plan.sweep_preset}-best", "name": result.name, "status": result.status,
                         "error": result.error})
    console.rule("[bold]aggregate")
    report_dir = store.child("reports")
    report = aggregate(store, report_dir)
    return {"runs": runs, "sweep": summary, "report": report, "report_uri": report_dir.uri_for("report.md"),
            "seconds": time.perf_counter() - t0}


def _best_config(store, summary: dict) -> Config:
    import tomllib

    name = summary["name"]
    return from_dict(tomllib.loads(store.child("sweeps", name).read_text("best.toml")))


def full_plan(store_uri: str, s3_endpoint: str | None, overrides: list[str], trials: int) -> StudyPlan:
    extra = [f"storage.store={json.dumps(store_uri)}"] + (
        [f"storage.s3_endpoint={json.dumps(s3_endpoint)}"] if s3_endpoint else [])
    return StudyPlan(presets=FULL_TRAIN, sweep_preset="hybrid-deblur", trials=trials, retrain_best=True,
                     overrides=extra + list(overrides))


__all__ = ["StudyPlan", "smoke_plan", "full_plan", "run_study", "ensure_synth"]
