"""`asaptrain aggregate`: every run under a store prefix -> report.md, report.json, PNGs, rich tables.

The same click command is the Ray job entrypoint ``jobs/aggregate.py``. The store and endpoint
default to $ASAPTRAIN_STORE / $ASAPTRAIN_S3_ENDPOINT, which `asaptrain submit` sets for a job.
"""

from __future__ import annotations

import os

import click

from asaptrain.cli.groups import friendly_errors, main, output_console, store_options


def print_report(report: dict, console=None) -> None:
    """The report's tables (the same cells as report.md) as rich tables in the terminal."""
    from rich.table import Table

    from asaptrain.report.tables import tables

    console = console or output_console()
    text_columns = ("Model", "Run", "Task", "GPU", "Status", "In tables", "dtype", "Missing / notes")
    for spec in tables(report):
        console.print(f"[bold]{spec['title']}[/bold]", highlight=False)
        table = Table(header_style="bold")
        for header in spec["headers"]:
            table.add_column(header, justify="left" if header in text_columns else "right",
                             no_wrap=header in ("Model", "Task", "Status", "Resolution"), overflow="fold")
        for row in spec["rows"]:
            table.add_row(*row)
        console.print(table)
        for note in spec["notes"]:
            console.print(f"  {note}")
        console.print()


@main.command("aggregate")
@store_options
@click.option("--prefix", default="runs", show_default=True, metavar="PATH",
              help="Directory inside the store that holds the run directories.")
@click.option("--out", default=None, metavar="DIR|URI",
              help="Where to write report.md, report.json and the PNGs: a local directory or a "
                   "store URI [default: STORE/reports].")
@click.option("--no-plots", is_flag=True, help="Skip the matplotlib figures (tables and samples only).")
@click.option("--quiet", "-q", is_flag=True, help="Do not print the tables.")
@friendly_errors
def aggregate_cmd(store, s3_endpoint, prefix, out, no_plots, quiet) -> None:
    """Aggregate all runs into one report: quality tables, speed, plots and sample grids."""
    from asaptrain.config.schema import StorageConfig
    from asaptrain.data.store import Store, absolute_uri
    from asaptrain.report.aggregate import aggregate

    uri = store or os.environ.get("ASAPTRAIN_STORE") or StorageConfig().store
    endpoint = s3_endpoint or os.environ.get("ASAPTRAIN_S3_ENDPOINT") or None
    src = Store.open(uri, s3_endpoint=endpoint)
    if out is None:
        dest = src.child("reports")
    else:
        dest = Store.open(absolute_uri(out), s3_endpoint=endpoint)
    report = aggregate(src, dest, prefix=prefix, plots=not no_plots)
    if not quiet:
        print_report(report)
    click.echo(f"{len(report['runs'])} run(s) -> {dest.uri_for('report.md')}")
