"""`asaptrain data ls|verify|synth|cityscapes|gopro|pairs|labels|folder|blur-preview`.

    asaptrain data synth --kind photos --count 500 --size 256x256 --out ./asaptrain-store/datasets/synth-photos
    asaptrain data cityscapes --root /data/cityscapes --size 256x512 --out s3://bucket/datasets/cityscapes \\
        --s3-endpoint http://minio:9000 --create-bucket --workers 8
    asaptrain data verify s3://bucket/datasets/cityscapes --s3-endpoint http://minio:9000

Converters resume: rerun the same command after an interruption and only missing shards are written.
"""

from __future__ import annotations

import os
import sys

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from asaptrain.cli.groups import data, friendly_errors, hw_callback, output_console, s3_endpoint_option

MAX_SKIPPED_SHOWN = 100


def _convert_options(fn):
    """Options every converter shares: where to write and how."""
    fn = click.option("--create-bucket", is_flag=True, help="Create the S3 bucket if it does not exist.")(fn)
    fn = click.option("--workers", type=click.IntRange(min=1), default=min(os.cpu_count() or 1, 8),
                      show_default=True, help="Decode/encode worker processes.")(fn)
    fn = click.option("--shard-mb", type=click.FloatRange(min=0.001), default=128.0, show_default=True,
                      help="Target shard size in MB of encoded images.")(fn)
    fn = s3_endpoint_option(fn)
    fn = click.option("--out", default=None, metavar="URI",
                      help="Dataset directory to write: a path, file://... or s3://bucket/prefix "
                           "[default: ./asaptrain-store/datasets/NAME, where the presets look].")(fn)
    return fn


def _run_conversion(plan, out: str | None, s3_endpoint: str | None, shard_mb: float, workers: int,
                    create_bucket: bool, name: str) -> None:
    from asaptrain.data.convert import convert
    from asaptrain.data.store import DEFAULT_STORE, Store

    store = Store.open(out or f"{DEFAULT_STORE}/datasets/{name}", s3_endpoint=s3_endpoint)
    err = output_console(stderr=True)
    columns = (TextColumn("{task.description:>6}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(split, total=total)
            bar.update(tasks[split], completed=done)

        summary = convert(plan, store, target_bytes=int(shard_mb * 2**20), workers=workers, progress=progress,
                          create_bucket=create_bucket)
    _print_summary(summary)


def _print_summary(summary) -> None:
    console = output_console()
    table = Table(title=f"{summary.uri}  ({summary.task}, {summary.source})")
    for col in ("split", "rows", "shards", "MB"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, s in summary.splits.items():
        table.add_row(split, str(s["rows"]), str(s["shards"]), f"{s['bytes'] / 1e6:.1f}")
    console.print(table)
    console.print(f"shards written {summary.written}, reused {summary.reused}, stale removed {summary.removed}; "
                  f"{summary.seconds:.1f} s; manifest.json written")
    for note in summary.notes:
        console.print(f"note: {note}", soft_wrap=True)
    if summary.skipped:
        console.print(f"[yellow]skipped {len(summary.skipped)} files:[/yellow]")
        for path, reason in summary.skipped[:MAX_SKIPPED_SHOWN]:
            console.print(f"  {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
        if len(summary.skipped) > MAX_SKIPPED_SHOWN:
            console.print(f"  ... and {len(summary.skipped) - MAX_SKIPPED_SHOWN} more "
                          f"(each shard's list is in {summary.uri}/_parts/*.json)")
    else:
        console.print("skipped 0 files")


@data.command("synth")
@click.option("--kind", type=click.Choice(["scenes", "photos"]), required=True,
              help="scenes: label maps + photos (labels2photo); photos: sharp images (deblur).")
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="Train samples.")
@click.option("--val-count", type=click.IntRange(min=0), default=None, help="Val samples [default: count/10].")
@click.option("--size", callback=hw_callback, default="128x256", show_default=True, metavar="HxW",
              help="Image size in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@_convert_options
@friendly_errors
def synth_cmd(kind, count, val_count, size, seed, out, s3_endpoint, shard_mb, workers, create_bucket) -> None:
    """Procedural street scenes or photos: everything runs with no download."""
    from asaptrain.data.synth import synth_plan

    _run_conversion(synth_plan(kind, count, size, seed, val_count), out, s3_endpoint, shard_mb, workers, create_bucket,
                    f"synth-{kind}")


@data.command("cityscapes")
@click.option("--root", type=click.Path(file_okay=False), required=True,
              help="Directory holding leftImg8bit/ and gtFine/ (official layout).")
@click.option("--size", callback=hw_callback, default=None, metavar="HxW",
              help="Resize (labels nearest, photos Lanczos); default keeps the source bytes.")
@click.option("--splits", default="train,val", show_default=True,
              help="Comma-separated splits (test's gtFine maps are placeholders).")
@_convert_options
@friendly_errors
def cityscapes_cmd(root, size, splits, out, s3_endpoint, shard_mb, workers, create_bucket) -> None:
    """Cityscapes label maps -> photos (labelIds kept exactly, instanceIds beside)."""
    from asaptrain.data.sources import cityscapes_plan

    wanted = tuple(s.strip() for s in splits.split(",") if s.strip())
    bad = [s for s in wanted if s not in ("train", "val", "test")]
    if bad:
        raise click.BadParameter(f"unknown split(s) {bad}; use train, val, test", param_hint="--splits")
    _run_conversion(cityscapes_plan(root, size, wanted), out, s3_endpoint, shard_mb, workers, create_bucket,
                    "cityscapes")


@data.command("gopro")
@click.option("--root", type=click.Path(file_okay=False), required=True,
              help="Directory holding train/ and test/ (SEQUENCE/blur, SEQUENCE/sharp).")
@click.option("--size", callback=hw_callback, default=None, metavar="HxW", help="Resize both (Lanczos).")
@_convert_options
@friendly_errors
def gopro_cmd(root, size, out, s3_endpoint, shard_mb, workers, create_bucket) -> None:
    """GoPro blurred/sharp pairs (`data pairs --layout gopro`); GoPro's test split becomes split 'val'."""
    from asaptrain.data.sources import gopro_plan

    _run_conversion(gopro_plan(root, size), out, s3_endpoint, shard_mb, workers, create_bucket, "gopro")


@data.command("pairs")
@click.option("--input", "input_dir", type=click.Path(file_okay=False), required=True,
              help="Folder of input images (blurred photos, A images), or the dataset's root for gopro, realblur, hide, ab.")
@click.option("--target", "target_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of target images (plain layout).")
@click.option("--pairs", "pairs_files", type=click.Path(dir_okay=False), multiple=True,
              help="List file of pairs, one 'INPUT TARGET' per line (realblur: 'GT BLUR', RealBlur's own lists); repeatable.")
@click.option("--layout", type=click.Choice(["plain", "gopro", "realblur", "hide", "ab"]), default="plain",
              show_default=True, help="How inputs and targets are laid out.")
@click.option("--split-by", type=click.Choice(["dir"], case_sensitive=False), default=None,
              help="dir: the first path component is the split (train; test and val -> val) [gopro, hide].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of pairs in split 'val', by a hash of the key [plain, ab: 0.05].")
@click.option("--task", type=click.Choice(["deblur", "image2image"]), default=None,
              help="What the pairs train: deblur (blurred -> sharp) or image2image (any image -> image) [ab: image2image].")
@click.option("--strict", is_flag=True, help="Refuse the whole conversion when any pair lacks a partner or differs in size.")
@click.option("--size", callback=hw_callback, default=None, metavar="HxW", help="Resize both images (Lanczos).")
@_convert_options
@friendly_errors
def pairs_cmd(input_dir, target_dir, pairs_files, layout, split_by, val_fraction, task, strict, size, out,
              s3_endpoint, shard_mb, workers, create_bucket) -> None:
    """Real input/target pairs (RealBlur, HIDE, GoPro, a phone's own, pix2pix's A|B): inputs stored."""
    from asaptrain.data.pairs import pairs_plan

    plan = pairs_plan(input_dir, target_dir, layout, pairs_files, split_by and split_by.lower(), val_fraction, size,
                      strict, task)
    _run_conversion(plan, out, s3_endpoint, shard_mb, workers, create_bucket, f"pairs-{layout}")


@data.command("labels")
@click.option("--images", type=click.Path(file_okay=False), required=True, help="Folder of photos (the targets).")
@click.option("--labels", "labels_dir", type=click.Path(file_okay=False), required=True,
              help="Folder of label maps, same relative names as the photos (any extension).")
@click.option("--num-labels", type=click.IntRange(1, 65536), required=True, help="N: ids run 0..N-1.")
@click.option("--palette", type=click.Path(dir_okay=False), default=None,
              help="JSON or CSV colour -> id table, for colour-coded label maps (ADE20K, facades).")
@click.option("--instances", type=click.Path(file_okay=False), default=None,
              help="Folder of instance-id maps, same names (for data.instance_edges).")
@click.option("--split-by", type=click.Choice(["dir"], case_sensitive=False), default=None,
              help="dir: the first path component is the split (train; test and val -> val).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of samples in split 'val', by a hash of the name [0.05].")
@click.option("--size", callback=hw_callback, default=None, metavar="HxW",
              help="Resize (labels nearest, photos Lanczos).")
@_convert_options
@friendly_errors
def labels_cmd(images, labels_dir, num_labels, palette, instances, split_by, val_fraction, size, out, s3_endpoint,
               shard_mb, workers, create_bucket) -> None:
    """Label maps of any label set -> photos; N and the palette go into the manifest."""
    from asaptrain.data.labelsets import labels_plan

    plan = labels_plan(images, labels_dir, num_labels, palette, instances, split_by and split_by.lower(),
                       val_fraction, size)
    _run_conversion(plan, out, s3_endpoint, shard_mb, workers, create_bucket, "labels")


@data.command("folder")
@click.option("--root", type=click.Path(file_okay=False), required=True, help="Any tree of jpg/png/webp photos.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="Share of images (by a hash of their path) in split 'val'.")
@click.option("--size", callback=hw_callback, default=None, metavar="HxW", help="Resize every photo (Lanczos).")
@_convert_options
@friendly_errors
def folder_cmd(root, val_fraction, size, out, s3_endpoint, shard_mb, workers, create_bucket) -> None:
    """Sharp photos from any folder (blur is synthesized during training)."""
    from asaptrain.data.sources import folder_plan

    _run_conversion(folder_plan(root, val_fraction, size), out, s3_endpoint, shard_mb, workers, create_bucket,
                    "folder")


def _find_datasets(store) -> list[tuple[str, dict]]:
    """(relative dir, manifest) of the dataset at ``store`` or up to two levels below it."""
    from asaptrain.data.shards import MANIFEST, read_manifest

    if store.exists(MANIFEST):
        return [("", read_manifest(store))]
    candidates = []
    for rel in store.list():  # paths relative to the store root; datasets/ is where presets look
        candidates += [rel] + (store.list(rel) if rel == "datasets" else [])
    return [(rel, read_manifest(store.child(rel))) for rel in candidates if store.exists(f"{rel}/{MANIFEST}")]


@data.command("ls")
@click.argument("uri")
@s3_endpoint_option
@friendly_errors
def ls_cmd(uri, s3_endpoint) -> None:
    """Rows and bytes per split of the dataset at URI (or of every dataset below it)."""
    from asaptrain.data.store import Store, StoreError

    store = Store.open(uri, s3_endpoint=s3_endpoint)
    found = _find_datasets(store)
    if not found:
        raise StoreError(f"{store.uri_for()}: no manifest.json here or in the directories below it")
    table = Table(title=store.uri_for())
    for col in ("dataset", "task", "source", "split", "rows", "shards", "MB"):
        table.add_column(col, justify="right" if col in ("rows", "shards", "MB") else "left",
                         overflow="fold")
    for rel, manifest in found:
        for split, s in manifest["splits"].items():
            table.add_row(rel or ".", manifest["task"], manifest.get("source", ""), split, str(s["rows"]),
                          str(s["shards"]), f"{s['bytes'] / 1e6:.1f}")
    output_console().print(table)


@data.command("verify")
@click.argument("uri")
@s3_endpoint_option
@click.option("--quick", is_flag=True, help="Check sizes and Parquet footers only, not sha256 (reads no shard whole).")
@friendly_errors
def verify_cmd(uri, s3_endpoint, quick) -> None:
    """Check every shard against manifest.json (presence, size, sha256, Parquet footer); exit 1 on any problem."""
    from asaptrain.data.shards import read_manifest, verify
    from asaptrain.data.store import Store

    store = Store.open(uri, s3_endpoint=s3_endpoint)
    problems = verify(store, checksums=not quick)
    if problems:
        for problem in problems:
            click.secho(f"problem: {problem}", fg="red", err=True)
        click.echo(f"{len(problems)} problem(s) in {store.uri_for()}")
        sys.exit(1)
    manifest = read_manifest(store)
    rows = sum(s["rows"] for s in manifest["splits"].values())
    checked = "sizes and footers match" if quick else "all sha256 match"
    click.echo(f"ok: {store.uri_for()}: {len(manifest['shards'])} shards, {rows} rows, {checked}")


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
