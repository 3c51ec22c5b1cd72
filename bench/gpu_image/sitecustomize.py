"""Make this Python look like the GPU machine's image: the packages it lacks cannot be imported.

The CPU rehearsal of ``bench/gpu.sh`` (``GPU_CHECK_DRY=1``) puts this folder first on
PYTHONPATH, so every Python it starts (the CLI, Ray's workers, the dashboard) imports this
module at start-up and an import the GPU machine would fail on fails here too, with a message
that says so. The list is what the project's environment has and that image does not (it has
torch, triton, torchvision, torchmetrics, pyarrow, numpy, pillow, rich, click, matplotlib,
pyyaml, aiohttp, grpcio, protobuf, psutil, requests, onnx, onnxruntime, tensorboard) and what
``bench/gpu-wheels.sh`` does not carry as a wheel (Ray and its small dependencies, tomli-w,
cityscapesscripts).
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import sys

ABSENT = frozenset({
    # the project's own imports
    "boto3", "botocore", "s3transfer", "jmespath", "torch_fidelity", "optuna", "moto", "mlflow",
    # installed here for Ray, tests or tooling, absent from the image and not carried
    "fastapi", "starlette", "uvicorn", "virtualenv", "py_spy", "distlib", "platformdirs", "docker",
    "flask", "flask_cors", "cryptography", "cffi", "_cffi_backend", "pycparser",
    "responses", "xmltodict", "aws_xray_sdk", "cfnlint", "graphql", "joserfc", "jsonpatch", "jsonpointer",
    "jsonpath_ng", "jsonschema_path", "openapi_schema_validator", "openapi_spec_validator", "pathable",
    "py_partiql_parser", "pydantic_settings", "dotenv", "rfc3339_validator", "lazy_object_proxy",
    "sqlparse", "databricks", "git", "gitdb", "smmap", "blinker", "itsdangerous", "antlr4", "appdirs",
    "coloredlogs", "humanfriendly", "pyquaternion",
})
# Extra names to hide, comma-separated (to try what one more missing package would break).
ABSENT = ABSENT | frozenset(n for n in os.environ.get("GPU_IMAGE_ALSO_ABSENT", "").split(",") if n)


# Their distributions' metadata too: libraries that probe with importlib.metadata (torchmetrics
# asks for torch-fidelity that way) must see them missing, as there.
_DISTS = frozenset(n.replace("_", "-") for n in ABSENT) | {
    "torch-fidelity", "mlflow-skinny", "py-spy", "gitpython", "python-dotenv", "aws-xray-sdk", "cfn-lint",
    "graphql-core", "antlr4-python3-runtime", "databricks-sdk", "flask-cors",
}


def _absent_dist(dist) -> bool:
    return re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower() in _DISTS


_discover = importlib.metadata.Distribution.discover.__func__
importlib.metadata.Distribution.discover = classmethod(
    lambda cls, **kw: (d for d in _discover(cls, **kw) if not _absent_dist(d)))


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine: bench/gpu_image)",
                                      name=name)
        return None


sys.meta_path.insert(0, _Absent())
