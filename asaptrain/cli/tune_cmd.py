"""`asaptrain tune`: the hybrid sweep (also what jobs/tune_hybrid.py runs)."""

from __future__ import annotations

import json

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, preset_options, store_options
from asaptrain.config.presets import HYBRID_OF


def print_sweep(summary: dict) -> None:
    from rich.table import Table

    key = summary["metric"]
    speed, ref = summary.get("speed") or {}, summary.get("reference") or {}
    table = Table(title=f"sweep {summary['name']}: best {key} per trial, ms/image on {speed.get('device', '?')} "
                        f"at {speed.get('height')}x{speed.get('width')}")
    for col in ("trial", key, "ms/image", "GFLOPs", "speedup", "front", "steps", "status", "config"):
        table.add_column(col, overflow="fold")
    best = summary.get("best") or {}

    def num(value, spec: str) -> str:
        return format(value, spec) if value is not None else "-"

    for row in sorted(summary["trials"], key=lambda r: -(r[f"best_{key}"] or -1e9)):
        mark = "[bold green]" if row is best or row.get("trial") == best.get("trial") else ""
        table.add_row(f"{mark}{row['trial']}", num(row[f"best_{key}"], ".3f"), num(row.get("ms_per_image"), ".2f"),
                      num(row.get("gflops"), ".3f"), num(row.get("speedup"), ".2f"), "yes" if row.get("on_front") else "",
                      str(row["steps"]), row["status"] + (f": {row['error']}" if row.get("error") else ""),
                      json.dumps(row["params"], sort_keys=True)[:400])
    if ref:
        table.add_row(f"[green]{ref.get('preset')} (reference {ref.get('run')})", num(ref.get(f"best_{key}"), ".3f"),
                      num(ref.get("ms_per_image"), ".2f"), num(ref.get("gflops"), ".3f"), "1.00", "",
                      str(ref.get("steps")), "reused" if ref.get("reused") else (ref.get("error") or "trained"), "")
    console = output_console()
    console.print(table)
    if speed.get("error"):
        console.print(f"[bold red]speed not measured: {speed['error']}")
    selection = summary.get("selection") or {}
    if selection.get("message"):
        console.print(("[bold red]" if selection.get("below_speedup") is not False else "[green]")
                      + selection["message"])
    if summary.get("best_toml"):
        console.print(f"best config: {summary['best_toml']}  (asaptrain train --config FILE)")


@main.command("tune")
@preset_options
@store_options
@click.option("--space", "space_file", type=click.Path(dir_okay=False), help="Search space TOML (narrows or replaces).")
@click.option("--trials", default=8, type=click.IntRange(min=1), help="Number of trials.")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), help="GPUs per trial (0 = CPU).")
@click.option("--workers-per-trial", type=click.IntRange(min=1), help="Ray Train workers per trial.")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps per trial (train.steps).")
@click.option("--metric", default="psnr", type=click.Choice(["psnr", "ssim"]), help="Validation metric to maximize.")
@click.option("--min-speedup", default=2.5, show_default=True, type=click.FloatRange(min=0),
              help="best.toml: the best trial at least this many times faster than DeblurGAN's generator.")
@click.option("--reference", type=click.Choice(list(HYBRID_OF)),
              help="DeblurGAN preset to compare with [default: the one of the sweep's scale].")
@click.option("--grace-reports", default=1, type=click.IntRange(min=1), help="ASHA grace period, in reports.")
@click.option("--search", default="auto", type=click.Choice(["auto", "optuna", "random"]),
              help="Search algorithm (auto: Optuna when installed, else random).")
@click.option("--name", metavar="NAME", help="Sweep name [default: sweep-DATE-TIME-xxxx].")
@click.option("--resume", metavar="NAME|auto", help="Continue an interrupted sweep; finished trials are kept, the "
              "one that was running continues from its checkpoint. 'auto': the sweep --name names if it exists, "
              "else start it.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def tune_cmd(preset, config_file, overrides, store, s3_endpoint, space_file, trials, gpus_per_trial,
             workers_per_trial, steps, metric, min_speedup, reference, grace_reports, search, name, resume, progress) -> None:
    """Sweep the hybrid's hyperparameters and blur curriculum with Ray Tune + ASHA.

    Each trial's generator is timed (ms/image) beside DeblurGAN's, whose reference run (same
    data, crop and steps) the sweep reuses from the store or trains once. Writes
    STORE/sweeps/NAME/: sweep.json, best.toml (the best trial at least --min-speedup times
    faster than DeblurGAN; accepted by `asaptrain train --config`), trials.png (PSNR against
    ms/image, and over training), and every trial's run under runs/.
    """
    from asaptrain.cli.train_cmd import build_train_config
    from asaptrain.sweep.space import load_space
    from asaptrain.sweep.tune import sweep

    cfg = build_train_config(preset or (None if config_file else "hybrid-deblur"), config_file, overrides, store,
                             s3_endpoint, steps=steps)
    space = load_space(space_file, cfg) if space_file else None
    summary = sweep(cfg, trials=trials, name=name, resume=resume, space=space, metric=metric,
                    grace_reports=grace_reports, search=search, gpus_per_trial=gpus_per_trial,
                    workers_per_trial=workers_per_trial, min_speedup=min_speedup, reference=reference,
                    progress=progress)
    print_sweep(summary)
