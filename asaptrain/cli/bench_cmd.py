"""`asaptrain bench models|compare|quality|train|pipeline|ingest|predict`: every benchmark command.
Each prints a table and, with --json, writes its rows; the measuring lives in ``asaptrain.perf``.

    asaptrain bench models --quick
    asaptrain bench compare hybrid-deblur deblurgan-gopro --size 256x256 --json compare.json
    asaptrain bench quality --seeds 0,1,2 --size 64 --steps 600 --json quality.json
    asaptrain bench train --preset hybrid-smoke --precision fp32 --device cpu
    asaptrain bench pipeline ./asaptrain-store/datasets/synth-photos --crops 256x256
    asaptrain bench ingest ./asaptrain-store/datasets/synth-photos --limit 200
    asaptrain bench predict --preset deblurgan-gopro --images 4
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

import click

from asaptrain.cli.groups import bench, friendly_errors, hw_callback, hw_list_callback, output_console, s3_endpoint_option
from asaptrain.config.io import load_config, parse_overrides, replace
from asaptrain.config.schema import Precision

PRECISIONS = typing.get_args(Precision)
"""Every value train.precision accepts, in the schema's order."""



def _write_json(json_path: str | None, result) -> None:
    """Write a benchmark's numbers to --json FILE (when given) and say where."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        click.echo(f"wrote {json_path}")

@bench.command("models")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write the rows to this JSON file.")
@click.option("--sizes", callback=hw_list_callback, metavar="HxW,...", help="Comma list of HEIGHTxWIDTH for every model [default: each model's paper sizes].")
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
    rows = run_bench(device=device, models=model_names or MODELS, sizes=sizes, batches=batches,
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


@bench.command("compare")
@click.argument("presets", nargs=-1)
@click.option("--config", "config_files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A TOML config file to compare too (repeatable; named by its file stem).")
@click.option("--size", required=True, callback=hw_callback, metavar="HxW", help="HEIGHTxWIDTH in pixels, e.g. 256x256.")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="bf16 = autocast.")
@click.option("--batch", "big_batch", type=click.IntRange(2), default=4, show_default=True,
              help="The larger batch timed beside batch 1.")
@click.option("--repeats", type=click.IntRange(1), default=10, show_default=True,
              help="Timed rounds (each calls every model once, interleaved).")
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True, help="Untimed calls per model first.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads [default: torch's, recorded].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--compile-mlp", is_flag=True, help="Run the pixelwise MLPs through torch.compile (inductor); "
              "each model's first call, the compile included, is printed.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write the rows to this JSON file.")
@friendly_errors
def bench_compare_cmd(presets, config_files, size, dtype, big_batch, repeats, warmup, threads, device,
                      compile_mlp, json_file) -> None:
    """Time generators side by side in one process (interleaved) and print their ratio."""
    from rich.table import Table

    from asaptrain.perf.compare import compare_generators, ratio_text

    h, w = size
    named = [(p, load_config(p)) for p in presets] + [(Path(f).stem, load_config(config_file=f)) for f in config_files]
    console = output_console()
    rows = compare_generators(named, (h, w), dtype=dtype, batches=(1, big_batch), repeats=repeats, warmup=warmup,
                              device=device, threads=threads, log=lambda line: console.print(f"[dim]{line}[/dim]"),
                              compile_mlp=compile_mlp)
    models = [r for r in rows if r["kind"] == "model"]
    env = models[0]
    cpu = f"{env['cpu_model']}, " if env["device_type"] == "cpu" else ""
    table = Table(title=f"Generators side by side, ms per image ({env['device']}, {cpu}{env['threads']} threads, "
                        f"torch {env['torch']}" + (f", CUDA {env['cuda']}, TF32 {env['tf32']}" if env["cuda"] else "") + ")")
    for col in ("preset", "size", "dtype", "batch", "ms/image", "IQR", "GFLOPs", "GFLOP/s", "pixelwise path",
                "first call s", "peak MiB"):
        table.add_column(col, justify="left" if col in ("preset", "pixelwise path") else "right")
    for r in models:
        table.add_row(r["preset"], f"{r['height']}x{r['width']}", r["dtype"], str(r["batch"]), f"{r['ms']:.2f}",
                      f"{r['iqr_ms']:.2f}", f"{r['gflops']:.3g}", f"{r['gflop_per_s']:.0f}", r["pixel_path"] or "-",
                      "-" if r["first_call_s"] is None else f"{r['first_call_s']:.1f}",
                      "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}")
    console.print(table)
    for r in rows:
        if r["kind"] == "ratio":
            console.print(ratio_text(r))
    if json_file:
        Path(json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(json_file).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {len(rows)} rows to {json_file}")


@bench.command("quality")
@click.option("--store", default="./quality-store", show_default=True, help="Store for the dataset and the runs.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma list of seeds, one run per preset each.")
@click.option("--size", type=click.IntRange(32), default=64, show_default=True, help="Square crop and image size, px.")
@click.option("--steps", type=click.IntRange(1), default=600, show_default=True)
@click.option("--preset", "presets", multiple=True, help="Presets to train [default: hybrid-smoke, deblurgan-smoke].")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Change every preset's config after the recipe (runs are named with a hash of the changes).")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="Also write runs and summary as JSON.")
@friendly_errors
def bench_quality_cmd(store, seeds, size, steps, presets, overrides, json_file) -> None:
    """Validation PSNR/SSIM of the smoke hybrid and DeblurGAN, one recipe, several seeds (Ray, CPU)."""
    from rich.table import Table

    from asaptrain.perf.quality import PRESETS, run_quality

    console = output_console()
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: expected comma-separated integers", param_hint="--seeds") from None
    rows, summary = run_quality(store, presets or PRESETS, seed_list, size, steps,
                                log=lambda line: console.print(f"[dim]{line}[/dim]"),
                                changes=parse_overrides(overrides))
    table = Table(title=f"Quality at {size}x{size}, {steps} steps, {len(seed_list)} seed(s): mean ± sd")
    for col in ("preset", "PSNR dB", "SSIM", "input PSNR", "input SSIM", "dark cast", "edge-step ratio", "spot ratio"):
        table.add_column(col, justify="left" if col == "preset" else "right")

    def cell(r, key, digits):
        return f"{r[key]:.{digits}f} ± {r[key + '_sd']:.{digits}f}" if key in r else "-"

    for r in summary:
        table.add_row(r["preset"], cell(r, "psnr", 2), cell(r, "ssim", 3), cell(r, "input_psnr", 2),
                      cell(r, "input_ssim", 3), cell(r, "dark_cast", 3), cell(r, "edge_step_ratio", 2),
                      cell(r, "spot_ratio", 2))
    console.print(table)
    if json_file:
        Path(json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(json_file).write_text(json.dumps({"runs": rows, "summary": summary}, indent=2))
        console.print(f"wrote {json_file}")


@bench.command("pipeline")
@click.argument("uri")
@s3_endpoint_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the numbers as JSON.")
@click.option("--crops", default="256x256", show_default=True, callback=hw_list_callback, metavar="HxW,...",
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
    _write_json(json_path, result)


@bench.command("train")
@click.option("--preset", "presets", multiple=True,
              help="Preset(s) to time [default: the four full presets].")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE")
@click.option("--batch", type=click.IntRange(min=1), help="Batch size [default: the preset's].")
@click.option("--precision", type=click.Choice([*PRECISIONS, "both", "all"]), default="both", show_default=True,
              help="Precision to time; both: fp32 and bf16; all: every precision train.precision accepts.")
@click.option("--steps", default=20, type=click.IntRange(min=1), help="Timed steps per preset.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0),
              help="Untimed steps per preset before the timed ones (after the one that counts FLOPs).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the rows as JSON here.")
@friendly_errors
def bench_train_cmd(presets, overrides, batch, precision, steps, warmup, device, json_path) -> None:
    """Training images/s and model FLOP utilization per preset (random data, one device)."""
    import torch
    from rich.table import Table

    from asaptrain.perf.train import bench_preset

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    presets = presets or ("asapnet-cityscapes", "pix2pixhd-cityscapes", "deblurgan-gopro", "hybrid-deblur")
    rows = []
    for name in presets:
        for prec in {"both": ("fp32", "bf16"), "all": PRECISIONS}.get(precision, (precision,)):
            cfg = replace(load_config(name, overrides=overrides), {"train.precision": prec})
            row = bench_preset(cfg, dev, steps=steps, warmup=warmup, batch=batch)
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
    _write_json(json_path, result)


@bench.command("predict")
@click.option("--preset", "presets", multiple=True,
              help="Preset(s) to time, at their initial weights [default: deblurgan-gopro, hybrid-deblur].")
@click.option("--run", "run_uri", metavar="URI", help="Time this trained run instead of presets.")
@s3_endpoint_option
@click.option("--images", type=click.IntRange(min=1), default=8, show_default=True, help="Inputs per preset.")
@click.option("--size", default="720x1280", show_default=True, callback=hw_callback, metavar="HxW",
              help="Height x width of every input, in pixels.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="As `predict --batch`.")
@click.option("--tile", type=click.IntRange(min=64), default=1024, show_default=True, help="As `predict --tile`.")
@click.option("--gpus", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs of the one model worker (0: CPU).")
@click.option("--cpus", type=click.FloatRange(min=0), default=0, show_default=True,
              help="CPUs of the model worker [0: as `predict` chooses].")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="As `predict --dtype` (repeatable: one row per dtype) [default: auto].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the rows as JSON here.")
@friendly_errors
def predict_bench_cmd(presets, run_uri, s3_endpoint, images, size, batch, tile, gpus, cpus, dtypes, json_path) -> None:
    """images/s of `asaptrain predict` per model worker, and its decode / model / encode ms per image."""
    from asaptrain.perf.predict import GPU_COMMAND, render, run

    height, width = size
    rows = run(list(presets) or ["deblurgan-gopro", "hybrid-deblur"], run_uri=run_uri, images=images, height=height,
               width=width, batch=batch, tile=tile, gpus=gpus, cpus=cpus, s3_endpoint=s3_endpoint,
               dtypes=tuple(dtypes) or ("auto",))
    console = output_console()
    console.print(render(rows))
    if not gpus:
        console.print(f"GPU: {GPU_COMMAND}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rows, indent=2))
        console.print(f"wrote {len(rows)} rows to {json_path}")
