"""The package's layers, as ARCHITECTURE.md's table states them, hold in the code.

The table (section "## Layers") is the one statement of the layers: this test parses it, reads
every import statement of every module with ``ast`` (those inside functions too, so a lazy import
cannot hide a dependency that goes the wrong way), and checks that

- every folder and top-level module of the package has exactly one row, and every row names one
  that exists;
- each row allows only layers below it (the table's order is the layers' order);
- every import of the package is one its module's row allows.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import asaptrain

PACKAGE = Path(asaptrain.__file__).parent
ROOT = PACKAGE.parent
DOC = ROOT / "ARCHITECTURE.md"
BELOW = "everything below"
NOTHING = "nothing"


@dataclass(frozen=True)
class Row:
    name: str
    """The layer: a folder (``train``) or a top-level module without ``.py`` (``infer``)."""
    path: str
    """As the table writes it: ``train/``, ``infer.py``."""
    allowed: tuple[str, ...]
    """Dotted names below the package (``data``, ``perf.compare``) its modules may import."""
    everything_below: bool
    line: int
    """Its line in ARCHITECTURE.md."""


def parse_table(text: str) -> list[Row]:
    """The rows of the "## Layers" table, top to bottom."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Layers"), None)
    assert start is not None, f"{DOC.name} has no '## Layers' section"
    rows: list[Row] = []
    for i in range(start + 1, len(lines)):
        line = lines[i].strip()
        if line.startswith("## "):
            break
        if not line.startswith("|") or set(line) <= set("|- ") or line.startswith("| layer |"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 3, f"{DOC.name}:{i + 1}: a layer row has 3 cells (layer | holds | may import): {line}"
        path = cells[0].strip("`")
        may = cells[2]
        names = tuple(re.findall(r"`([A-Za-z_][\w.]*)`", re.sub(r"\([^)]*\)", "", may)))
        assert names or may in (BELOW, NOTHING), (
            f"{DOC.name}:{i + 1}: 'may import' of {path} is '{may}'; write backticked layers (`data`, "
            f"`perf.compare`), '{BELOW}' or '{NOTHING}'")
        rows.append(Row(path.rstrip("/").removesuffix(".py"), path, names, may == BELOW, i + 1))
    assert rows, f"{DOC.name}'s '## Layers' section has no table rows"
    return rows


ROWS = parse_table(DOC.read_text())
INDEX = {row.name: i for i, row in enumerate(ROWS)}


def imported_names(source: str, module: str) -> list[tuple[int, str]]:
    """(line, dotted name below asaptrain) for every import of the package in ``source``, the
    text of ``module`` (dotted, e.g. ``asaptrain.train.loop``): ``from asaptrain.perf import
    compare`` gives ``perf.compare``, ``import asaptrain.errors`` gives ``errors``."""
    here = module.split(".")
    out = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = ".".join(here[: len(here) - node.level] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "asaptrain" and len(parts) > 1:
                out.append((node.lineno, ".".join(parts[1:])))
    return out


def layer_of(rel: Path) -> str:
    """The layer a file of the package belongs to: its folder, or its own name at the top."""
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def row_path(row: Row) -> Path:
    """Where a row's folder or module is: in the package, else at the repository root (``jobs/``)."""
    inside = PACKAGE / row.path.rstrip("/")
    return inside if inside.exists() else ROOT / row.path.rstrip("/")


def modules_of(row: Row) -> list[tuple[str, str]]:
    """(``file``, dotted module) of every Python file of a row."""
    where = row_path(row)
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where]
    return [(str(f.relative_to(ROOT)), ".".join(f.relative_to(ROOT).with_suffix("").parts)) for f in files]


def imports_of(row: Row) -> list[tuple[str, str]]:
    """("file:line", dotted name) for every import of the package in a row's modules."""
    out = []
    for file, module in modules_of(row):
        out += [(f"{file}:{line}", name) for line, name in imported_names((ROOT / file).read_text(), module)]
    return out


def allows(row: Row, name: str) -> bool:
    """Whether ``row`` may import the dotted name (a layer or a module inside one)."""
    if name.split(".")[0] == row.name:
        return True
    if row.everything_below:
        return INDEX.get(name.split(".")[0], -1) > INDEX[row.name]
    return any(name == a or name.startswith(a + ".") for a in row.allowed)


def suggested_row(rel: str, layer: str) -> str:
    """The row to add for a layer of the package that has none, with the imports it has."""
    path = PACKAGE / rel
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    found = set()
    for f in files:
        module = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        found |= {name.split(".")[0] for _, name in imported_names(f.read_text(), module)} - {layer}
    known = sorted((n for n in found if n in INDEX), key=INDEX.get)
    unknown = sorted(found - set(known))
    may = ", ".join(f"`{n}`" for n in known + unknown) or NOTHING
    where = (f"above the row of `{ROWS[INDEX[known[0]]].path}` (the highest layer it imports)" if known
             else "at the bottom, above `errors.py` if it imports nothing")
    return f"| `{rel}` | what it holds | {may} |   <- insert {where}"


def test_the_table_names_every_folder_and_top_level_module_of_the_package():
    present = {p.name + "/" if p.is_dir() else p.name: layer_of(p.relative_to(PACKAGE))
               for p in PACKAGE.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")}
    missing = [suggested_row(rel, layer) for rel, layer in sorted(present.items()) if layer not in INDEX]
    assert not missing, (f"asaptrain/ has layers with no row in {DOC.name}'s '## Layers' table; add:\n"
                         + "\n".join(missing))
    gone = [f"{DOC.name}:{row.line}: `{row.path}`" for row in ROWS if not row_path(row).exists()]
    assert not gone, "rows name no folder or module of the package or repository:\n" + "\n".join(gone)
    dupes = sorted({row.name for row in ROWS if sum(r.name == row.name for r in ROWS) > 1})
    assert not dupes, f"layers with more than one row: {dupes}"


def test_the_package_init_imports_nothing_of_the_package():
    assert not imported_names((PACKAGE / "__init__.py").read_text(), "asaptrain")


@pytest.mark.parametrize("row", ROWS, ids=[row.path for row in ROWS])
def test_each_row_allows_only_layers_below_it(row):
    bad = []
    for name in row.allowed:
        layer = name.split(".")[0]
        if layer not in INDEX:
            bad.append(f"`{name}` has no row")
        elif INDEX[layer] <= INDEX[row.name]:
            bad.append(f"`{name}` is not below `{row.path}` (row at line {ROWS[INDEX[layer]].line})")
        elif "." in name:
            target = PACKAGE.joinpath(*name.split("."))
            if not (target.with_suffix(".py").exists() or (target / "__init__.py").exists()):
                bad.append(f"`{name}` names no module")
    assert not bad, f"{DOC.name}:{row.line}: " + "; ".join(bad)


@pytest.mark.parametrize("row", ROWS, ids=[row.path for row in ROWS])
def test_every_import_is_one_its_row_allows(row):
    bad = [f"{where} imports asaptrain.{name}" + ("" if name.split(".")[0] in INDEX else
                                                  f" (`{name.split('.')[0]}` has no row)")
           for where, name in imports_of(row) if not allows(row, name)]
    allowed = BELOW if row.everything_below else (", ".join(row.allowed) or NOTHING)
    assert not bad, (f"imports against the layers (row `{row.path}` at {DOC.name}:{row.line} may import "
                     f"{allowed}):\n" + "\n".join(bad)
                     + "\nMove the code, or, where the layers allow it, add the layer to that row's 'may import'.")


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = ("import os\nimport asaptrain.errors\n"
              "def f():\n    from asaptrain.train import loop\n    from ..data import store\n"
              "    from . import blocks\n    from asaptrain import cli\n    from asaptrain.perf.compare import x\n")
    assert imported_names(source, "asaptrain.models.probe") == [
        (2, "errors"), (4, "train.loop"), (5, "data.store"), (6, "models.blocks"), (7, "cli"), (8, "perf.compare.x")]


def test_the_table_parser_reads_names_order_and_refuses_free_text():
    text = ("## Layers\n\n| layer | holds | may import |\n|---|---|---|\n"
            "| `cli/` | commands | everything below |\n"
            "| `report/` | tables (uses `tables.py`) | `sweep.tune` (`SWEEPS_PREFIX`), `data` |\n"
            "| `errors.py` | errors | nothing |\n\n## Next\n| `x/` | y | `z` |\n")
    rows = parse_table(text)
    assert [(r.name, r.allowed, r.everything_below) for r in rows] == [
        ("cli", (), True), ("report", ("sweep.tune", "data"), False), ("errors", (), False)]
    with pytest.raises(AssertionError, match="may import"):
        parse_table("## Layers\n| `a/` | b | the layers below |\n")


def test_a_missing_layer_is_answered_with_the_row_to_add():
    """What an engineer adding a module reads: the row, its imports, where it goes."""
    row = suggested_row("infer.py", "infer")
    assert row.startswith("| `infer.py` | what it holds | `train`, `data`, `config`, `errors` |")
    assert "above the row of `train/`" in row


def test_config_reads_only_the_models_option_dataclasses():
    """``[model]`` is built from the models' own dataclasses (plain Python), never from a module."""
    modules = set()
    for path in sorted((PACKAGE / "config").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asaptrain.models"):
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules |= {a.name for a in node.names if a.name.startswith("asaptrain.models")}
    assert modules <= {"asaptrain.models.options", "asaptrain.models.hybrid"}, modules


def test_the_command_line_starts_without_torch():
    """``asaptrain --help``, ``config``, ``data`` and ``submit`` need no torch: loading the CLI
    imports no torch (about 2 s of CPU); each command that runs a model imports it itself."""
    import subprocess
    import sys

    code = ("import sys, asaptrain.cli\n"
            "heavy = sorted(m for m in ('torch', 'ray', 'torchvision', 'torchmetrics') if m in sys.modules)\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    help_text = subprocess.run([sys.executable, "-m", "asaptrain", "tune", "--help"], capture_output=True, text=True,
                               timeout=120, check=True).stdout
    assert "deblurgan-smoke|deblurgan-gopro" in help_text  # the reference presets, from the presets module
