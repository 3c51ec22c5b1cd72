"""`asaptrain data blur-preview` and `asaptrain bench pipeline`.

    asaptrain data blur-preview --strength 0.2,0.5,0.9 --out blur.png [--image photo.jpg]
    asaptrain bench pipeline ./asaptrain-store/datasets/synth-photos --crops 256x256,512x1024 --json pipe.json
"""

from __future__ import annotations

import json

import click

from asaptrain.cli.groups import bench, data, friendly_errors, output_console

PREVIEW_SIDE = 384
"""Longest side of a preview image, in pixels (larger --image files are shrunk to it)."""


def _strengths(ctx, param, value: str) -> list[float]:
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.2,0.5,0.9; got {value!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise click.BadParameter(f"strengths must be in [0, 1]; got {value!r}")
    return values


def _load_image(path: str | None):
    import numpy as np
    import torch
    from PIL import Image

    from asaptrain.data.blur import sharp_test_image

    if path is None:
        return sharp_test_image(256, 256)
    try:
        img = Image.open(path).convert("RGB")
    except Exception as exc:  # PIL raises many types for files it cannot read
        raise click.BadParameter(f"{path} is not an image PIL can read ({exc})", param_hint="--image") from None
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


@data.command("blur-preview")
@click.option("--strength", "strengths", default="0.2,0.5,0.9", show_default=True, callback=_strengths,
              help="Comma-separated blur strengths in [0, 1], one row each.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A sharp photo to blur [default: a built-in test pattern].")
@click.option("--samples", type=click.IntRange(1, 8), default=3, show_default=True, help="Kernels per row.")
@click.option("--seed", type=int, default=0, show_default=True, help="Kernel seed.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="PNG to write.")
@friendly_errors
def blur_preview_cmd(strengths, image, samples, seed, out) -> None:
    """A grid of random motion-blur kernels and the image blurred by each, per strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from asaptrain.data.blur import apply_blur, kernel_spread, random_kernels

    sharp = _load_image(image)
    gen = torch.Generator().manual_seed(seed)
    rows = [(s, random_kernels(samples, s, generator=gen)) for s in strengths]
    side = max(k.shape[-1] for _, k in rows)  # one kernel scale for the whole figure
    fig, axes = plt.subplots(len(rows), 1 + 2 * samples, figsize=(2.2 * (1 + 2 * samples), 2.4 * len(rows)),
                             squeeze=False)
    for r, (s, kernels) in enumerate(rows):
        blurred = apply_blur(sharp[None].expand(samples, -1, -1, -1), kernels).clamp(0, 1)
        axes[r, 0].imshow(sharp.permute(1, 2, 0).numpy())
        axes[r, 0].set_title(f"sharp (mean {sharp.mean():.3f})", fontsize=8)
        axes[r, 0].set_ylabel(f"strength {s:g}", fontsize=10)
        spread = kernel_spread(kernels)
        for i in range(samples):
            mse = (blurred[i] - sharp).pow(2).mean().clamp_min(1e-10)
            ax = axes[r, 1 + i]
            ax.imshow(blurred[i].permute(1, 2, 0).numpy())
            ax.set_title(f"PSNR {10 * torch.log10(1 / mse):.1f} dB, mean {blurred[i].mean():.3f}", fontsize=8)
            k = kernels[i]
            pad = (side - k.shape[-1]) // 2
            ax = axes[r, 1 + samples + i]
            ax.imshow(torch.nn.functional.pad(k, (pad, pad, pad, pad)).numpy(), cmap="magma")
            ax.set_title(f"kernel {k.shape[-1]}px, RMS {spread[i]:.1f}px", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("random-trajectory motion blur (kernels sum to 1; kernels shown at one scale)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    click.echo(f"wrote {out}: {len(rows)} strengths x {samples} kernels")


def _crops(ctx, param, value: str):
    from asaptrain.bench_pipeline import parse_crops

    try:
        return parse_crops(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@bench.command("pipeline")
@click.argument("uri")
@click.option("--s3-endpoint", default=None, metavar="URL",
              help="S3-compatible endpoint (MinIO, Ceph, R2); credentials come from AWS_* variables.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the numbers as JSON.")
@click.option("--crops", default="256x256", show_default=True, callback=_crops, metavar="HxW,...",
              help="Crop sizes to time, height x width in pixels.")
@click.option("--batch", type=click.IntRange(min=1), default=16, show_default=True, help="Images per batch.")
@click.option("--batches", type=click.IntRange(min=1), default=20, show_default=True, help="Timed batches per crop.")
@click.option("--warmup", type=click.IntRange(min=1), default=2, show_default=True,
              help="Batches before timing starts (worker start-up, first reads).")
@click.option("--strength", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Blur strength whose device cost is timed.")
@click.option("--device", default=None, help="Device for the blur timing [default: cuda if present, else cpu].")
@friendly_errors
def pipeline_cmd(uri, s3_endpoint, json_path, crops, batch, batches, warmup, strength, device) -> None:
    """Batches/s and images/s Ray Data delivers to one consumer, and the device cost per batch."""
    from asaptrain.bench_pipeline import render, run

    result = run(uri, s3_endpoint=s3_endpoint, crops=crops, batch=batch, batches=batches, warmup=warmup,
                 strength=strength, device=device)
    output_console().print(render(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        click.echo(f"wrote {json_path}")
