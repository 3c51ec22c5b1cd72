"""`asaptrain config presets|show`: the named presets and a resolved config as TOML."""

from __future__ import annotations

from pathlib import Path

import click

from asaptrain.cli.groups import config, friendly_errors, preset_options
from asaptrain.config.schema import ConfigError
from asaptrain.config.io import load_config, to_toml
from asaptrain.config.presets import PRESETS


@config.command("presets")
def presets_cmd() -> None:
    """List the named presets."""
    for name, factory in PRESETS.items():
        doc = (factory.__doc__ or "").strip().splitlines()
        cfg = factory()
        click.echo(f"{name:24s} {cfg.model.name:10s} {cfg.data.task:13s} "
                   f"{cfg.data.crop_height}x{cfg.data.crop_width}  {cfg.train.steps} steps"
                   + (f"  {doc[0]}" if doc else ""))


@config.command("show")
@click.argument("preset_arg", required=False, metavar="[PRESET]")
@preset_options
@friendly_errors
def show_cmd(preset_arg, preset, config_file, overrides) -> None:
    """Print the resolved config of PRESET (or --config FILE) as TOML.

    A file given with --config and no --set is printed unchanged.
    """
    preset = preset or preset_arg
    if config_file and not overrides and not preset:
        load_config(config_file=config_file)  # validate, then print the file as it is
        click.echo(Path(config_file).read_text(), nl=False)
        return
    if not preset and not config_file:
        raise ConfigError("give a PRESET or --config FILE (see `asaptrain config presets`)")
    click.echo(to_toml(load_config(preset, config_file, overrides)), nl=False)
