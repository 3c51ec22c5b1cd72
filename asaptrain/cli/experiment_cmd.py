"""`asaptrain experiment`: the full study (the four paper presets, the sweep, its best config, the report)."""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, store_options
from asaptrain.cli.smoke_cmd import finish_study


@main.command("experiment")
@store_options
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Override for every run, e.g. --set scaling.num_workers=8.")
@click.option("--trials", default=16, show_default=True, type=click.IntRange(min=1), help="Sweep trials.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def experiment_cmd(store, s3_endpoint, overrides, trials, progress) -> None:
    """The full study: train the four paper presets, sweep the hybrid, retrain its best config,
    aggregate. Needs the converted datasets in the store (datasets/cityscapes, datasets/gopro)."""
    from asaptrain.config.schema import StorageConfig
    from asaptrain.experiment import full_plan, run_study

    plan = full_plan(store or StorageConfig().store, s3_endpoint, list(overrides), trials)
    finish_study(run_study(plan, progress, console=output_console()))
