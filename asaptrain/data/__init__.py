"""The data plane: stores (local or S3-compatible), Parquet shards, converters, blur, Ray Data.

Submodules are imported on first use, so ``import asaptrain.data.blur`` (pure torch) does not
pull in pyarrow or boto3:

    from asaptrain.data import Store, ShardWriter, read_manifest, verify
    from asaptrain.data import synth_plan
    from asaptrain.data.convert import convert  # the module of the same name shadows a re-export
    convert(synth_plan("photos", count=500, size=(256, 256)), Store.open("./asaptrain-store/datasets/synth-photos"))
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Store": "store", "StoreError": "store", "StoreNotFound": "store", "store_from_config": "store",
    "resolve_dataset": "store",
    "SCHEMA": "shards", "SCHEMA_VERSION": "shards", "ManifestError": "shards", "ShardWriter": "shards",
    "read_manifest": "shards", "write_manifest": "shards", "shard_paths": "shards", "verify": "shards",
    "Summary": "convert", "cityscapes_plan": "sources", "gopro_plan": "sources",
    "folder_plan": "sources", "synth_plan": "synth", "pairs_plan": "pairs", "labels_plan": "labelsets",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"asaptrain.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'asaptrain.data' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
