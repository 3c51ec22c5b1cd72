"""`asaptrain` console script: click groups, filled by the command modules imported here."""

from __future__ import annotations

import importlib

from asaptrain.cli.groups import main

# Each module registers its commands on the groups in groups.py; a module that is absent
# (a partial install) leaves its commands out instead of breaking the others.
for _name in ("config_cmd", "data_cmd", "models_cmd", "bench_cmd", "train_cmd", "tune_cmd", "jobs_cmd", "report_cmd", "smoke_cmd",
              "export_cmd", "predict_cmd", "evaluate_cmd"):
    try:
        importlib.import_module(f"asaptrain.cli.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"asaptrain.cli.{_name}":
            raise

__all__ = ["main"]
