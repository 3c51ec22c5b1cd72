"""`asaptrain models summary` and `asaptrain bench models`: parse, call the library, print.

Counting and timing live in ``asaptrain.flops`` and ``asaptrain.bench_models``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from asaptrain.cli.groups import bench, friendly_errors, models, output_console


@models.command("summary")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of the table.")
@click.option("--preset", "presets", multiple=True, help="Only these presets (repeatable) [default: all].")
@friendly_errors
def summary_cmd(as_json: bool, presets: tuple[str, ...]) -> None:
    """Parameters and GFLOPs per image of every preset's G and D at the preset's crop size.

    FLOPs come from torch.utils.flop_counter.FlopCounterMode on the meta device (convs and
    matmuls incl. ASAP-Net's batched MLPs; 1 multiply-add = 2 FLOPs).
    """
    from asaptrain.flops import summarize

    rows = summarize(list(presets) or None)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="Models per preset (GFLOPs per image, 1 MAC = 2 FLOPs, FlopCounterMode)")
    for col in ("preset", "model", "net", "params (M)", "GFLOPs", "size"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(r["preset"], r["model"], r["net"], f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.2f}",
                      f"{r['height']}x{r['width']}")
    output_console().print(table)


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
    from asaptrain.bench_models import MODELS, parse_variant, resolve_device, run_bench, speedups

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
