"""`asaptrain models summary`: parameters and GFLOPs per preset (counted in ``asaptrain.perf.flops``);
`asaptrain models memory`: the peak memory of one training step (``asaptrain.train.memory``).
"""

from __future__ import annotations

import json

import click

from asaptrain.cli.groups import friendly_errors, hw_callback, models, output_console, preset_options


@models.command("summary")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of the table.")
@click.option("--preset", "presets", multiple=True, help="Only these presets (repeatable) [default: all].")
@friendly_errors
def summary_cmd(as_json: bool, presets: tuple[str, ...]) -> None:
    """Parameters and GFLOPs per image of every preset's G and D at the preset's crop size.

    FLOPs come from torch.utils.flop_counter.FlopCounterMode on the meta device (convs and
    matmuls incl. ASAP-Net's batched MLPs; 1 multiply-add = 2 FLOPs).
    """
    from asaptrain.perf.flops import summarize

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


@models.command("memory")
@preset_options
@click.option("--size", callback=hw_callback, metavar="HxW", help="Crop size [default: the config's crop].")
@click.option("--batch", type=click.IntRange(min=1), help="Images per device [default: train.batch_size / --workers].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Devices training together (DDP adds one copy of the gradients as buckets when > 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@friendly_errors
def memory_cmd(preset, config_file, overrides, size, batch, workers, as_json) -> None:
    """Peak memory of one training step (G and D, gradients, Adam's moments, activations, the
    perceptual network), estimated on fake tensors: nothing of that size is allocated.

    Not included: the CUDA context and cuDNN workspaces (why a run is refused above 85 % of the
    device's memory), and the data pipeline's host memory.
    """
    from asaptrain.config.io import load_config
    from asaptrain.train.memory import GIB, estimate_step_memory

    cfg = load_config(preset, config_file, overrides)
    h, w = size or (cfg.data.crop_height, cfg.data.crop_width)
    per_device = batch or max(1, cfg.train.batch_size // workers)
    est = estimate_step_memory(cfg, per_device, h, w, world_size=workers)
    if as_json:
        click.echo(json.dumps({"preset": preset, "config": config_file, "overrides": list(overrides),
                               "precision": cfg.train.precision,
                               "activation_checkpointing": cfg.train.activation_checkpointing, **est.as_dict()},
                              indent=2))
        return
    from rich.table import Table

    table = Table(title=f"One training step of {cfg.model.name}, batch {per_device} per device at {h}x{w}, "
                        f"{cfg.train.precision}" + (", activation checkpointing" if cfg.train.activation_checkpointing else ""))
    table.add_column("part")
    table.add_column("MiB", justify="right")
    for part, nbytes in est.parts.items():
        table.add_row(part.replace("_", " "), f"{nbytes / 2**20:,.1f}")
    table.add_row("[bold]peak[/bold]", f"[bold]{est.peak_bytes / 2**20:,.1f}[/bold]")
    output_console().print(table)
