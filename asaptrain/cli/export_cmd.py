"""`asaptrain export`: a run's generator as ONNX, TorchScript or safetensors, for serving."""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, s3_endpoint_option


@main.command("export")
@click.option("--run", "run_uri", required=True, metavar="URI", help="A run directory (STORE/runs/NAME).")
@click.option("--format", "fmt", required=True, type=click.Choice(["onnx", "torchscript", "safetensors"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The file to write; its config and conventions go to OUT.json.")
@click.option("--checkpoint", metavar="DIR", help="A checkpoint directory inside the run [default: latest].")
@click.option("--overwrite", is_flag=True, help="Replace OUT and OUT.json if they exist.")
@s3_endpoint_option
@friendly_errors
def export_cmd(run_uri, fmt, out, checkpoint, overwrite, s3_endpoint) -> None:
    """Export the run's generator (its EMA copy when it has one) with dynamic batch, height and
    width; prints the file, its JSON and, for onnx / torchscript, the largest difference from
    PyTorch on the CPU."""
    from asaptrain.data.store import Store
    from asaptrain.export import export_generator

    rel = f"{checkpoint.rstrip('/')}/state.pt" if checkpoint else None
    result = export_generator(Store.open(run_uri, s3_endpoint), fmt, out, rel, overwrite)
    click.echo(f"{result.path}  ({result.format}, {result.source} weights)")
    click.echo(result.meta_path)
    if result.check is not None:
        click.echo(f"max |{result.format} - PyTorch| = {result.check['max_abs_error']:.3g} "
                   f"({result.check['runtime']})")
