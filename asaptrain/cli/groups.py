"""The click groups every command module hangs its commands on.

Command modules (``asaptrain/cli/*.py``) only parse, build a config and call the library.
"""

from __future__ import annotations

import functools
import sys

import click


def output_console(stderr: bool = False):
    """A rich console for tables: the terminal's width, or 200 columns in a Ray job's log or a
    pipe, where rich's default of 80 folds every cell of a wide table into a column of letters."""
    from rich.console import Console

    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="asaptrain")
def main() -> None:
    """Train and compare ASAP-Net, pix2pixHD, DeblurGAN and their hybrid on Ray."""


@main.group()
def config() -> None:
    """Show presets and resolved configs."""


@main.group()
def data() -> None:
    """Convert datasets into Parquet shards, list and verify stores, preview blur."""


@main.group()
def models() -> None:
    """Model summaries (parameters, GFLOPs)."""


@main.group()
def bench() -> None:
    """Benchmarks: print numbers and write JSON."""


@main.group()
def jobs() -> None:
    """Follow and stop Ray jobs submitted with `asaptrain submit`."""


def preset_options(fn):
    """--preset / --config / --set, shared by every command that builds a Config."""
    fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE",
                      help="Override one config field (repeatable), e.g. --set train.steps=100.")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                      help="A TOML config file (as written by `asaptrain config show`).")(fn)
    fn = click.option("--preset", help="A named preset (see `asaptrain config presets`).")(fn)
    return fn


def s3_endpoint_option(fn):
    """--s3-endpoint alone, for commands that take a store URI as their argument."""
    return click.option("--s3-endpoint", default=None, metavar="URL",
                        help="S3-compatible endpoint (MinIO, Ceph, R2); credentials come from AWS_* variables "
                             "or AWS_PROFILE.")(fn)


def store_options(fn):
    """--store / --s3-endpoint, shared by every command that touches a store."""
    fn = s3_endpoint_option(fn)
    fn = click.option("--store", default=None, metavar="URI",
                      help="Store: a path, file://..., or s3://bucket/prefix [default: ./asaptrain-store].")(fn)
    return fn


def parse_hw(text: str) -> tuple[int, int]:
    """``"256x512"`` -> (256, 512): height x width in pixels, both >= 1; ValueError otherwise."""
    try:
        h, w = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HEIGHTxWIDTH in pixels, e.g. 256x512; got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{text!r}: height and width must be >= 1 pixel")
    return h, w


def hw_callback(ctx, param, value: str | None) -> tuple[int, int] | None:
    """click callback of an ``HxW`` option (one size)."""
    try:
        return None if value is None else parse_hw(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def hw_list_callback(ctx, param, value: str | None) -> list[tuple[int, int]] | None:
    """click callback of an ``HxW,HxW,...`` option (sizes in order; None when not given)."""
    if value is None:
        return None
    try:
        sizes = [parse_hw(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not sizes:
        raise click.BadParameter("give at least one HEIGHTxWIDTH, e.g. 256x256")
    return sizes


def friendly_errors(fn):
    """Turn the library's user-facing errors into one red line and exit code 2."""
    from asaptrain.errors import UserError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)

    return wrapper
