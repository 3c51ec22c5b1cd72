"""`asaptrain bench models|compare|train|pipeline|ingest|predict`: every benchmark command. Each prints a
table and, with --json, writes its rows; the measuring lives in ``asaptrain.perf``.

    asaptrain bench models --quick
    asaptrain bench train --preset hybrid-smoke --precision fp32 --device cpu
    asaptrain bench pipeline ./asaptrain-store/datasets/synth-photos --crops 256x256
    asaptrain bench ingest ./asaptrain-store/datasets/synth-photos --limit 200
    asaptrain bench predict --preset deblurgan-gopro --images 4
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from asaptrain.cli.groups import bench, friendly_errors, output_console, s3_endpoint_option
from asaptrain.config.io import load_config


def _parse_sizes(text: str | None) -> list[tuple[int, int]] | None:
    if not text:
        return None
    sizes = []
    for part in text.replace(" ", "").split(","):
        try:
            h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise click.BadParameter(f"{part!r}: expected HEIGHTxWIDTH, e.g. 256x512", param_hint="--sizes") from None
        sizes.append((h, w))
    return sizes


@bench.command("models")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write the rows to this JSON file.")
@click.option("--sizes", help="Comma list of HEIGHTxWIDTH for every model [default: each model's paper sizes].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=None, help="Timed calls per case [default: 20 GPU, 3 CPU].")
@click.option("--warmup", type=click.IntRange(0), default=None, help="Untimed calls first [default: 5 GPU, 1 CPU].")
@click.option("--batch", "big_batch", type=click.IntRange(1), default=8, show_default=True,
              help="The larger batch timed beside batch 1.")
@click.option("--model", "model_names", multiple=True,
              type=click.Choice(["asapnet", "pix2pixhd", "deblurgan", "hybrid"]), help="Only these (repeatable).")
@click.option("--variants", help="Comma list from fp32, bf16, with -cl (channels_last) and/or -compile, e.g. "
              "bf16-cl-compile [default: fp32,bf16,bf16-cl,bf16-cl-compile on GPU; fp32 on CPU].")
@click.option("--quick", is_flag=True, help="Tiny sizes (64x128 labels, 64x64 photos), batches 1 and 2: a CPU check.")
@friendly_errors
def bench_models_cmd(json_file, sizes, device, repeats, warmup, big_batch, model_names, variants, quick) -> None:
    """Inference ms/image of each generator at its paper resolutions (batch 1 and --batch)."""
    from asaptrain.perf.models import MODELS, parse_variant, resolve_device, run_bench, speedups

    variant_list = tuple(v for v in (variants or "").replace(" ", "").split(",") if v) or None
    for v in variant_list or ():
        try:
            parse_variant(v)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--variants") from None
    console = output_console()
    if resolve_device(device).type == "cpu" and not quick and not sizes:
        console.print("[yellow]no GPU: the paper sizes take many minutes on a CPU; --quick runs tiny sizes[/yellow]")
    batches = (1, 2) if quick else (1, big_batch)
    rows = run_bench(device=device, models=model_names or MODELS, sizes=_parse_sizes(sizes), batches=batches,
                     variants=variant_list, repeats=repeats, warmup=warmup, quick=quick,
                     log=lambda line: console.print(f"[dim]{line}[/dim]"))
    from rich.table import Table

    gpu = rows[0]["gpu"] if rows else "?"
    table = Table(title=f"Generator inference, ms per image ({gpu})")
    for col in ("model", "size", "batch", "variant", "ms/image", "note"):
        table.add_column(col, justify="right" if col in ("batch", "ms/image") else "left")
    for r in rows:
        size = f"{r['height']}x{r['width']}" + (f" S={r['tile_size']}" if "tile_size" in r else "") + (
            " +local" if r.get("local_enhancers") else "")
        table.add_row(r["model"], size, str(r["batch"]), r["variant"],
                      "-" if r["ms"] is None else f"{r['ms']:.3f}", r.get("note", ""))
    console.print(table)
    for s in speedups(rows):
        console.print(f"asapnet vs pix2pixhd at {s['height']}x{s['width']} batch {s['batch']} {s['variant']}: "
                      f"{s['speedup']:.1f}x faster ({s['fast_ms']:.3f} vs {s['slow_ms']:.3f} ms/image)")
    if json_file:
        Path(json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(json_file).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {len(rows)} rows to {json_file}")


def _crops(ctx, param, value: str):
    from asaptrain.perf.pipeline import parse_crops

    try:
        return parse_crops(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@bench.command("pipeline")
@click.argument("uri")
@s3_endpoint_option
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
    from asaptrain.perf.pipeline import render, run

    result = run(uri, s3_endpoint=s3_endpoint, crops=crops, batch=batch, batches=batches, warmup=warmup,
                 strength=strength, device=device)
    output_console().print(render(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        click.echo(f"wrote {json_path}")


@bench.command("train")
@click.option("--preset", "presets", multiple=True,
              help="Preset(s) to time [default: the four full presets].")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE")
@click.option("--batch", type=click.IntRange(min=1), help="Batch size [default: the preset's].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "both"]), default="both")
@click.option("--steps", default=20, type=click.IntRange(min=1), help="Timed steps per preset.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the rows as JSON here.")
@friendly_errors
def bench_train_cmd(presets, overrides, batch, precision, steps, device, json_path) -> None:
    """Training images/s and model FLOP utilization per preset (random data, one device)."""
    import torch
    from rich.table import Table

    from asaptrain.perf.train import bench_preset

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    presets = presets or ("asapnet-cityscapes", "pix2pixhd-cityscapes", "deblurgan-gopro", "hybrid-deblur")
    rows = []
    for name in presets:
        for prec in (("fp32", "bf16") if precision == "both" else (precision,)):
            cfg = load_config(name, overrides=[*overrides, f"train.precision={json.dumps(prec)}"])
            row = bench_preset(cfg, dev, steps=steps, batch=batch)
            rows.append({"preset": name, **row})
    table = Table(title=f"training step, {rows[0]['gpu'] if rows else dev}")
    for col in ("preset", "size", "batch", "precision", "ms/step", "images/s", "TFLOP/s", "MFU"):
        table.add_column(col, justify="right" if col not in ("preset", "precision") else "left")
    for r in rows:
        table.add_row(r["preset"], f"{r['height']}x{r['width']}", str(r["batch"]), r["precision"],
                      f"{r['ms_per_step']:.1f}", f"{r['images_per_s']:.1f}", f"{r['achieved_tflops']:.2f}",
                      f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a")
    output_console().print(table)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=2)


@bench.command("ingest")
@click.argument("uri")
@s3_endpoint_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the numbers as JSON.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Read at most N rows.")
@click.option("--threads", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="Decode threads of the threaded PIL pass.")
@click.option("--decoders", default="pil,torchvision", show_default=True,
              help="Comma-separated decoders to time (PIL is always timed: end-to-end uses it).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Passes per phase; the median is reported.")
@friendly_errors
def ingest_cmd(uri, s3_endpoint, json_path, limit, threads, decoders, repeats) -> None:
    """Read-and-decode throughput (MB/s, images/s) of the dataset at URI."""
    from asaptrain.perf.ingest import DECODERS, render, run
    from asaptrain.data.store import Store

    chosen = tuple(d.strip() for d in decoders.split(",") if d.strip())
    unknown = sorted(set(chosen) - set(DECODERS))
    if unknown:
        raise click.BadParameter(f"unknown decoder(s) {unknown}; choose from {', '.join(DECODERS)}",
                                 param_hint="--decoders")
    result = run(Store.open(uri, s3_endpoint=s3_endpoint), limit=limit, threads=threads, decoders=chosen,
                 repeats=repeats)
    output_console().print(render(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        click.echo(f"wrote {json_path}")


@bench.command("predict")
@click.option("--preset", "presets", multiple=True,
              help="Preset(s) to time, at their initial weights [default: deblurgan-gopro, hybrid-deblur].")
@click.option("--run", "run_uri", metavar="URI", help="Time this trained run instead of presets.")
@s3_endpoint_option
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True, help="Inputs per preset.")
@click.option("--size", default="720x1280", show_default=True, callback=_crops, metavar="HxW",
              help="Height x width of every input, in pixels.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="As `predict --batch`.")
@click.option("--tile", type=click.IntRange(min=64), default=1024, show_default=True, help="As `predict --tile`.")
@click.option("--gpus", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs of the one model worker (0: CPU).")
@click.option("--cpus", type=click.FloatRange(min=0), default=0, show_default=True,
              help="CPUs of the model worker [0: as `predict` chooses].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the rows as JSON here.")
@friendly_errors
def predict_bench_cmd(presets, run_uri, s3_endpoint, images, size, batch, tile, gpus, cpus, json_path) -> None:
    """images/s of `asaptrain predict` per model worker, and its decode / model / encode ms per image."""
    from asaptrain.perf.predict import GPU_COMMAND, render, run

    (height, width), *_ = size
    rows = run(list(presets) or ["deblurgan-gopro", "hybrid-deblur"], run_uri=run_uri, images=images, height=height,
               width=width, batch=batch, tile=tile, gpus=gpus, cpus=cpus, s3_endpoint=s3_endpoint)
    console = output_console()
    console.print(render(rows))
    if not gpus:
        console.print(f"GPU: {GPU_COMMAND}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {len(rows)} rows to {json_path}")
