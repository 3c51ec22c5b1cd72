"""`asaptrain import`: an official generator checkpoint (pix2pixHD, DeblurGAN, ASAP-Net) as a run."""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, preset_options, store_options


@main.command("import")
@click.argument("kind", type=click.Choice(["pix2pixhd", "deblurgan", "asapnet"]))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", required=True, metavar="NAME", help="The run to write (STORE/runs/NAME; must be new).")
@preset_options
@store_options
@friendly_errors
def import_cmd(kind, file, name, preset, config_file, overrides, store, s3_endpoint) -> None:
    """Turn an official generator checkpoint FILE (e.g. latest_net_G.pth) into a run that infer,
    predict, export, aggregate and `train --init-from` read. The preset defaults to the model's
    paper preset (pix2pixhd-cityscapes, deblurgan-gopro, asapnet-cityscapes); a file that does not
    fit it is refused with the --set that would fit, and nothing is written."""
    from asaptrain.cli.train_cmd import build_train_config
    from asaptrain.data.store import store_from_config
    from asaptrain.importers import DEFAULT_PRESETS, import_checkpoint
    from asaptrain.train.launch import pin_store

    preset = preset or (None if config_file else DEFAULT_PRESETS[kind])
    cfg = pin_store(build_train_config(preset, config_file, overrides, store, s3_endpoint))
    meta = import_checkpoint(kind, file, cfg, store_from_config(cfg.storage), name, preset)
    click.echo(f"imported {meta['source']['file']} (sha256 {meta['source']['sha256'][:16]}...) as run {name}: "
               f"{store_from_config(cfg.storage).uri_for('runs', name)}")
