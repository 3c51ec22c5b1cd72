"""The package's layers: each folder imports only from the ones below it (ARCHITECTURE.md).

Every import statement of every module is read with ``ast``, those inside functions too, so a
lazy import cannot hide a dependency that goes the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import asaptrain

PACKAGE = Path(asaptrain.__file__).parent
# folder -> the parts of the package (besides itself) it may import.
ALLOWED = {
    "models": set(),
    "config": {"errors", "models"},  # models' option dataclasses only: see the test below
    "data": {"config", "errors"},
}
FORBIDDEN_FOR_TRAIN = {"sweep", "report", "cli"}


def imported_parts(source: str, module: str) -> list[tuple[int, str]]:
    """(line, top-level part of asaptrain) for every import of the package in ``source``,
    the text of ``module`` (dotted, e.g. ``asaptrain.train.loop``)."""
    here = module.split(".")
    out = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(here[: len(here) - node.level])
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:
                    names = [".".join(base + [alias.name]) for alias in node.names]
            else:
                names = [node.module or ""]
                if node.module == "asaptrain":  # from asaptrain import train
                    names = [f"asaptrain.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "asaptrain":
                out.append((node.lineno, parts[1] if len(parts) > 1 else ""))
    return out


def imports_of(folder: str) -> list[tuple[str, str]]:
    """("file:line", part) for every import of the package in the modules under ``folder``."""
    out = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        module = ".".join(rel.with_suffix("").parts)
        out += [(f"{rel}:{line}", part) for line, part in imported_parts(path.read_text(), module)]
    return out


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = ("import os\nimport asaptrain.errors\n"
              "def f():\n    from asaptrain.train import loop\n    from ..data import store\n"
              "    from . import blocks\n    from asaptrain import cli\n")
    assert imported_parts(source, "asaptrain.models.probe") == [
        (2, "errors"), (4, "train"), (5, "data"), (6, "models"), (7, "cli")]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_folder_imports_only_the_layers_below_it(folder):
    bad = [f"{where} imports asaptrain.{part}" for where, part in imports_of(folder)
           if part != folder and part not in ALLOWED[folder]]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_train_knows_nothing_of_sweep_report_or_cli():
    bad = [f"{where} imports asaptrain.{part}" for where, part in imports_of("train") if part in FORBIDDEN_FOR_TRAIN]
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


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
