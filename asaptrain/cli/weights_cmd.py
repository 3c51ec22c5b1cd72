"""`asaptrain weights download`: the pretrained VGG19 (perceptual loss) and Inception (FID) weights
into a store, checked, where training and evaluation read them."""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, store_options


@main.group("weights")
def weights_group() -> None:
    """Pretrained helper weights: VGG19 for the perceptual loss, Inception for FID."""


@weights_group.command("download")
@store_options
@click.option("--only", type=click.Choice(["vgg19", "inception"]), help="Fetch one file [default: both].")
@click.option("--from", "mirror", metavar="DIR|URL",
              help="A mirror holding the official file names (a folder, file://, http(s):// or s3:// prefix), "
                   "for clusters without internet.")
@click.option("--overwrite", is_flag=True, help="Replace a different file at the same place in the store.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@friendly_errors
def download_cmd(store, s3_endpoint, only, mirror, overwrite, progress) -> None:
    """Download the official files (torchvision's vgg19-dcbb9e9d.pth; the FID Inception
    pt_inception-2015-12-05-6726825d.pth), check each against the sha256 prefix in its name and
    its network's keys and shapes (loaded as tensors only), and write them to STORE/weights/ with
    FILE.sha256 beside each. Nothing half-written is left; a different file there is kept unless
    --overwrite."""
    from rich.table import Table

    from asaptrain.data.store import Store
    from asaptrain.data.weights_download import download

    target = Store.open(store or "", s3_endpoint)
    rows = download(target, (only,) if only else ("vgg19", "inception"), mirror, overwrite, progress,
                    s3_endpoint=s3_endpoint)
    table = Table(title="helper weights")
    for col in ("name", "status", "path", "sha256", "MB", "source"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["status"], r["path"], r["sha256"] or "-", f"{(r['bytes'] or 0) / 2**20:.1f}",
                      r["source"] or "-")
    output_console().print(table)
