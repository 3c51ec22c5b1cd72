"""`asaptrain infer`: a trained generator on image files at their full size."""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, s3_endpoint_option
from asaptrain.data.decode import DEFAULT_MAX_PIXELS


@main.command("infer")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_uri", required=True, metavar="URI", help="A run directory (STORE/runs/NAME).")
@click.option("--checkpoint", metavar="DIR", help="A checkpoint directory inside the run [default: latest].")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@s3_endpoint_option
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--tile", default=1024, type=click.IntRange(min=64), help="Largest tile edge in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that exist (inputs are never replaced).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest input (width x height), refused before it is decoded.")
@click.option("--instances", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of instance-id maps, one per label map by file stem (runs trained with instance edges).")
@friendly_errors
def infer_cmd(inputs, run_uri, checkpoint, out_dir, s3_endpoint, device, tile, overwrite, max_pixels, instances) -> None:
    """Run a trained generator on photos (deblurring, image-to-image) or label-id PNGs at their full size."""
    from asaptrain.data.store import Store
    from asaptrain.infer import infer_files

    run_dir = Store.open(run_uri, s3_endpoint)
    rel = f"{checkpoint.rstrip('/')}/state.pt" if checkpoint else None
    for path in infer_files(run_dir, list(inputs), out_dir, rel, device, tile, overwrite, instances, max_pixels):
        click.echo(path)
