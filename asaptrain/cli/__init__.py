"""`asaptrain` console script: click groups, filled by the command modules imported here."""

from __future__ import annotations

from asaptrain.cli.groups import main

# Each module registers its commands on the groups in groups.py when imported.
from asaptrain.cli import (  # noqa: F401  (imported for their commands)
    bench_cmd,
    config_cmd,
    data_cmd,
    experiment_cmd,
    evaluate_cmd,
    export_cmd,
    import_cmd,
    infer_cmd,
    jobs_cmd,
    models_cmd,
    predict_cmd,
    report_cmd,
    smoke_cmd,
    train_cmd,
    tune_cmd,
    weights_cmd,
)

__all__ = ["main"]
