"""`asaptrain predict`: a trained generator over a dataset or a store prefix of images, with Ray
Data (also what jobs/predict.py runs); the work is in ``asaptrain.predict``.

    asaptrain predict --run s3://bucket/store/runs/NAME --images s3://bucket/blurry --out s3://bucket/sharp
"""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, s3_endpoint_option
from asaptrain.data.decode import DEFAULT_MAX_PIXELS


@main.command("predict")
@click.option("--run", "run_uri", required=True, metavar="URI", help="A run directory (STORE/runs/NAME).")
@click.option("--dataset", metavar="URI", help="A converted dataset: predict from its shards' input images.")
@click.option("--images", metavar="URI", help="A folder or prefix of JPEG/PNG files (subfolders too, any sizes).")
@click.option("--out", "out_uri", required=True, metavar="URI",
              help="Output folder: one PNG per input at the same relative name, then predictions.json.")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]), help="Dataset split(s) to predict (repeatable) [default: all].")
@click.option("--checkpoint", metavar="DIR", help="A checkpoint directory inside the run [default: latest].")
@click.option("--workers", type=click.IntRange(min=1), help="Model actors [default: one per GPU, or 1 on CPUs].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0),
              help="GPUs per actor; 0 runs on CPUs [default: 1 when the cluster has GPUs].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01),
              help="Logical CPUs per actor [default: 1 with GPUs; on CPUs, the cluster's CPUs less one, shared].")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per actor call, and tiles per forward pass.")
@click.option("--tile", default=1024, type=click.IntRange(min=64), show_default=True,
              help="Largest tile edge in pixels.")
@click.option("--max-bad", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bad inputs (unreadable, over --max-pixels, or the model fails on them) named and skipped "
                   "before the command fails.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest input (width x height); a larger one is a bad input, refused before it is decoded.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Compute precision; auto: bf16 where the worker's GPU or CPU (AVX-512 BF16, AMX) computes it "
                   "natively, else fp32. predictions.json records the one used.")
@click.option("--compile-mlp", is_flag=True,
              help="torch.compile the pixelwise MLPs (ASAP-Net, hybrid): each worker compiles once per tile shape "
                   "(tens of seconds on a CPU); no faster than eager on a 2-core CPU, so measure it first.")
@click.option("--instances", metavar="URI",
              help="With --images: instance-id maps at the label maps' relative paths (runs trained with instance edges).")
@s3_endpoint_option
@friendly_errors
def predict_cmd(run_uri, dataset, images, out_uri, splits, checkpoint, workers, gpus_per_worker, cpus_per_worker,
                batch, tile, max_bad, max_pixels, dtype, compile_mlp, instances, s3_endpoint) -> None:
    """Run a trained generator over many images on the Ray cluster; a rerun skips finished outputs."""
    from asaptrain.predict import PredictConfig, predict

    pc = PredictConfig(run=run_uri, out=out_uri, dataset=dataset or "", images=images or "", splits=tuple(splits),
                       checkpoint=checkpoint or "", workers=workers or 0, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker or 0.0, batch=batch, tile=tile, max_bad=max_bad,
                       max_pixels=max_pixels, dtype=dtype, compile_mlp=compile_mlp, s3_endpoint=s3_endpoint or "", instances=instances or "")

    def show(p: dict) -> None:
        click.echo(f"predict: {p['done']}/{p['total']} images, {p['bad']} bad, {p['images_per_s']:.2f} images/s",
                   err=True)

    manifest = predict(pc, progress=show)
    c = manifest["counts"]
    click.echo(f"{c['written']} written, {c['existing']} already there, {c['bad']} bad: "
               f"{manifest['out']}")
