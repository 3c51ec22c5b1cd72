"""`asaptrain smoke`: the README's main command, the whole study at its smallest on synthetic data."""

from __future__ import annotations

import sys

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, store_options


def finish_study(outcome: dict) -> None:
    """Print a study's sweep and report; exit 1 when a run or the sweep failed."""
    from asaptrain.cli.report_cmd import print_report
    from asaptrain.cli.tune_cmd import print_sweep

    console = output_console()
    if outcome["sweep"] and "trials" in outcome["sweep"]:
        print_sweep(outcome["sweep"])
    print_report(outcome["report"], console)
    failed = [r for r in outcome["runs"] if r["status"] != "finished"]
    for r in failed:
        console.print(f"[red]{r['preset']}: {r['status']}: {r['error']}")
    if outcome["sweep"] and outcome["sweep"].get("error"):
        failed.append(outcome["sweep"])
    console.print(f"[bold]report:[/bold] {outcome['report_uri']}   ({outcome['seconds']:.0f} s)")
    sys.exit(1 if failed else 0)


@main.command("smoke")
@store_options
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=2), help="Steps per run.")
@click.option("--trials", default=2, show_default=True, type=click.IntRange(min=1), help="Sweep trials.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def smoke_cmd(store, s3_endpoint, steps, trials, progress) -> None:
    """The whole pipeline on synthetic data, in minutes: convert, train the four *-smoke presets
    under Ray Train, sweep the hybrid, aggregate, print the report."""
    import ray

    from asaptrain.config.schema import StorageConfig
    from asaptrain.experiment import run_study, smoke_plan
    from asaptrain.train.driver import ensure_ray

    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    plan = smoke_plan(store or StorageConfig().store, s3_endpoint, steps, trials, use_gpu=gpus > 0, gpus=gpus)
    finish_study(run_study(plan, progress=progress, console=output_console()))
