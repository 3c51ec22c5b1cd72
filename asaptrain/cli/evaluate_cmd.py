"""`asaptrain evaluate`: a run's generator scored on a whole dataset split at full size (PSNR,
SSIM, FID), on the Ray cluster or in this process; the work is in ``asaptrain.evaluate``.

    asaptrain evaluate --run s3://bucket/store/runs/NAME --dataset datasets/gopro --split val --fid
"""

from __future__ import annotations

import click

from asaptrain.cli.groups import friendly_errors, main, store_options


@main.command("evaluate")
@click.option("--run", "run_uri", required=True, metavar="URI",
              help="A run directory (STORE/runs/NAME), trained or imported.")
@click.option("--dataset", required=True, metavar="URI",
              help="A converted dataset: a URI, or a path inside the store (datasets/NAME).")
@click.option("--split", default="val", show_default=True,
              help="The split to score, every image of it (GoPro's test pairs are stored as val).")
@click.option("--fid", is_flag=True, help="Also FID over the split (Inception weights from STORE/weights/).")
@click.option("--json", "json_path", metavar="FILE", help="Also write the full detail, one row per image, here.")
@click.option("--checkpoint", metavar="DIR", help="A checkpoint directory inside the run [default: the newest].")
@click.option("--local", is_flag=True, help="Run in this process, without Ray.")
@click.option("--workers", type=click.IntRange(min=1), help="Model workers [default: one per GPU, or 1 on CPUs].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0),
              help="GPUs per worker; 0 runs on CPUs [default: 1 when the cluster has GPUs].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01),
              help="Logical CPUs per worker [default: 1 with GPUs; on CPUs, the cluster's CPUs less one].")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images of one size per forward pass.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
              help="Compute precision; fp32 gives the papers' kind of number.")
@click.option("--overwrite", is_flag=True, help="Replace an existing eval-SPLIT.json (and --json file).")
@store_options
@friendly_errors
def evaluate_cmd(run_uri, dataset, split, fid, json_path, checkpoint, local, workers, gpus_per_worker,
                 cpus_per_worker, batch, dtype, overwrite, store, s3_endpoint) -> None:
    """Score a run on a whole split at full size; write eval-SPLIT.json into the run."""
    from asaptrain.evaluate import EvaluateConfig, evaluate, result_name

    ec = EvaluateConfig(run=run_uri, dataset=dataset, split=split, fid=fid, json=json_path or "",
                        checkpoint=checkpoint or "", store=store or "", local=local, workers=workers or 0,
                        gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker or 0.0, batch=batch,
                        dtype=dtype, overwrite=overwrite, s3_endpoint=s3_endpoint or "")

    def show(p: dict) -> None:
        click.echo(f"evaluate: {p['done']}/{p['total']} images, {p['seconds']:.0f} s", err=True)

    r = evaluate(ec, progress=show)

    def num(v, digits):
        return "n/a" if v is None else f"{v:.{digits}f}"

    fid_text = num(r["fid"], 2) if r["fid"] is not None else f"missing ({r['fid_reason']})"
    click.echo(f"{r['model']} on {r['images']} {split} images ({', '.join(r['resolution'])}, {r['dtype']}): "
               f"PSNR {num(r['psnr'], 2)} dB, SSIM {num(r['ssim'], 4)}, FID {fid_text}; "
               f"{num(r['ms_per_image'], 1)} ms/image on {r['device']}")
    if r["input_psnr"] is not None:
        click.echo(f"the inputs themselves: PSNR {num(r['input_psnr'], 2)} dB, SSIM {num(r['input_ssim'], 4)}")
    click.echo(f"wrote {r['run'].rstrip('/')}/{result_name(split)}" + (f" and {json_path}" if json_path else ""))
