"""`asaptrain models summary`: parameters and GFLOPs per preset (counted in ``asaptrain.perf.flops``).
"""

from __future__ import annotations

import json

import click

from asaptrain.cli.groups import friendly_errors, models, output_console


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
