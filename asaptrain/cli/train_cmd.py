"""`asaptrain train` (also what jobs/train.py runs)."""

from __future__ import annotations

import sys
from typing import Any

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, preset_options, store_options
from asaptrain.config.schema import Config
from asaptrain.config.io import load_config, parse_overrides, replace, to_toml


def build_train_config(preset, config_file, overrides, store=None, s3_endpoint=None, workers=None,
                       gpus_per_worker=None, steps=None) -> Config:
    """The resolved config of a train command: preset/file, then flags, then --set."""
    changes: dict[str, Any] = {}
    if store:
        changes["storage.store"] = store
    if s3_endpoint:
        changes["storage.s3_endpoint"] = s3_endpoint
    if workers is not None:
        changes["scaling.num_workers"] = workers
    if gpus_per_worker is not None:
        changes["scaling.use_gpu"] = "true" if gpus_per_worker > 0 else "false"
        if gpus_per_worker > 0:
            changes["scaling.resources_per_worker"] = {"GPU": gpus_per_worker}
    if steps is not None:
        changes["train.steps"] = steps
    return replace(load_config(preset, config_file), {**changes, **parse_overrides(overrides)}, source="--set")


def check_run_names(name: str | None, resume: str | None) -> None:
    """Refuse a --name or --resume that is no run name, before anything runs (--dry-run too)."""
    from asaptrain.train.run_files import check_name

    for flag, value in (("--name", name), ("--resume", resume)):
        if value is not None:
            check_name(value, flag)


def run_options(fn):
    fn = click.option("--dry-run", is_flag=True, help="Print the resolved config as TOML and exit.")(fn)
    fn = click.option("--steps", type=click.IntRange(min=1), help="Generator updates (train.steps).")(fn)
    fn = click.option("--gpus-per-worker", type=click.FloatRange(min=0),
                      help="GPUs per worker; 0 forces CPU (sets scaling.use_gpu).")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), help="Ray Train workers (scaling.num_workers).")(fn)
    fn = click.option("--resume", metavar="NAME|auto",
                      help="Continue the run NAME from its latest checkpoint; 'auto' continues the run --name "
                           "names if it exists, else starts it (what a restarted job runs).")(fn)
    fn = click.option("--name", metavar="NAME", help="Run name [default: PRESET-DATE-TIME-xxxx, always new].")(fn)
    fn = store_options(fn)
    fn = preset_options(fn)
    return fn


@main.command("train")
@run_options
@click.option("--progress/--no-progress", default=True, help="Show the rich progress bar.")
@click.option("--mlflow", "mlflow_uri", metavar="URI",
              help="Also send the curves to this MLflow tracking server (needs asaptrain[mlflow]).")
@click.option("--mlflow-experiment", default="asaptrain", show_default=True, metavar="NAME",
              help="MLflow experiment (created when missing).")
@click.option("--init-from", "init_from", metavar="RUN_OR_URI",
              help="Start a new run from this run's weights (a run name in the store, a run directory, or a run "
                   "written by `asaptrain import`); optimizers, schedules and step start fresh.")
@friendly_errors
def train_cmd(preset, config_file, overrides, store, s3_endpoint, name, resume, workers, gpus_per_worker, steps,
              dry_run, progress, mlflow_uri, mlflow_experiment, init_from) -> None:
    """Train one model under Ray Train (DDP across workers); writes STORE/runs/NAME/, TensorBoard
    event files included (`tensorboard --logdir STORE/runs`)."""
    cfg = build_train_config(preset, config_file, overrides, store, s3_endpoint, workers, gpus_per_worker, steps)
    check_run_names(name, resume)
    if dry_run:
        click.echo(to_toml(cfg), nl=False)
        return
    from asaptrain.train.curves import MlflowTarget
    from asaptrain.train.launch import fit

    mlflow = MlflowTarget(mlflow_uri, mlflow_experiment) if mlflow_uri else None
    result = fit(cfg, preset=preset, name=name, resume=resume, progress=progress, mlflow=mlflow, init_from=init_from)
    _print_result(result)
    sys.exit(0 if result.status == "finished" else 1)


def _print_result(result) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.name}", show_header=False)
    table.add_row("status", f"[{'green' if result.status == 'finished' else 'red'}]{result.status}")
    table.add_row("steps", str(result.steps))
    ev = result.last_eval or {}
    for key in ("psnr", "ssim", "input_psnr", "input_ssim", "fid"):
        if ev.get(key) is not None:
            table.add_row(key, f"{ev[key]:.4f}")
    if ev.get("fid") is None and ev.get("fid_reason"):
        table.add_row("fid", f"n/a: {ev['fid_reason']}")
    table.add_row("files", result.uri)
    if result.error:
        table.add_row("error", result.error)
    output_console().print(table)
