"""Live training curves: TensorBoard event files in the run directory, and optionally MLflow.

    files.attach(TensorBoardSink(files.dir))            # what every Ray run does on rank 0
    files.attach(mlflow_sink(MlflowTarget(uri), cfg, name))
    tensorboard --logdir ./asaptrain-store/runs          # one curve set per run

A sink hangs on the run's :class:`~asaptrain.train.run_files.RunFiles`, which the loop
already feeds on rank 0 with every metrics record (train: losses, learning rates, blur
strength, images/s; eval: PSNR, SSIM, FID), every sample grid and every flush, so a sink sees
exactly what ``metrics.jsonl`` and ``samples/`` get, at the step they belong to.

TensorBoard: a local store gets the event file written straight into ``runs/NAME/`` (live:
tensorboardX flushes it at every log step). An object store cannot append, so the file is
written in a local temp folder and uploaded whole at each durable flush (the checkpoints and
the end), the cadence ``metrics.jsonl`` goes up at; ``S3_ENDPOINT=URL tensorboard --logdir
s3://bucket/prefix/runs`` reads it there. A resumed run starts a new event file that tells
TensorBoard to drop the old file's points past the checkpoint (``purge_step``), as
``metrics.jsonl`` is cut back.

MLflow goes through Ray's integration (``ray.air.integrations.mlflow.setup_mlflow``), called
in the Train worker: one MLflow run per Train run (a restarted or resumed worker group opens a
new one with the same name), the resolved config as its parameters, the same scalars as
metrics and the sample grids as artifacts.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from asaptrain.errors import UserError
from asaptrain.train.run_files import is_eval


class CurveSink(Protocol):
    def record(self, record: dict) -> None:
        """One metrics record as ``metrics.jsonl`` gets it (``step``, ``kind``, numbers)."""

    def image(self, step: int, png: bytes) -> None:
        """The sample grid of ``step`` (input | output | target), PNG bytes."""

    def flush(self, durable: bool) -> None:
        """Make what was recorded visible; ``durable`` at checkpoints and at the end."""

    def restart(self, step: int) -> None:
        """The run resumes after ``step``: points recorded past it before will be recorded again."""

    def close(self) -> None: ...


def scalars(record: dict) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of a metrics record: train values under their own names
    (``loss/g``, ``lr/g``, ``blur_strength``, ``images_per_s``), eval values under ``val/``;
    missing (None) and non-finite values are left out."""
    prefix = "val/" if is_eval(record) else ""
    values = {}
    for key, value in record.items():
        if key in ("step", "kind") or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            values[prefix + key] = float(value)
    return int(record["step"]), values


class TensorBoardSink:
    """Event files for ``tensorboard --logdir STORE/runs`` in a run directory (a Store)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self._writer = None
        self._purge_step: int | None = None
        self._local = None if run_dir.is_s3 else run_dir.path("")
        self._tmp: str | None = None

    def _get(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            if self._local is None:
                self._tmp = tempfile.mkdtemp(prefix="asaptrain-tb-")
            # tensorboardX names files by the second; a restart within the same second must
            # neither reuse the old file's name nor sort before it (TensorBoard reads in name
            # order, and the purge only drops points of files read earlier).
            self._writer = SummaryWriter(self._local or self._tmp, purge_step=self._purge_step, flush_secs=30,
                                         filename_suffix=f".{time.time_ns()}")
        return self._writer

    def record(self, record: dict) -> None:
        step, values = scalars(record)
        writer = self._get()
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)

    def image(self, step: int, png: bytes) -> None:
        import numpy as np
        from PIL import Image

        self._get().add_image("samples", np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), step,
                              dataformats="HWC")

    def flush(self, durable: bool) -> None:
        if self._writer is None:
            return
        self._writer.flush()
        if self._tmp is not None and durable:
            for name in sorted(os.listdir(self._tmp)):
                self.run_dir.put_file(os.path.join(self._tmp, name), name)

    def restart(self, step: int) -> None:
        if self._writer is None:  # a writer opened later marks the purge in its first event
            self._purge_step = step + 1

    def close(self) -> None:
        if self._writer is None:
            return
        self.flush(durable=True)
        self._writer.close()
        self._writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- MLflow


class TrackingError(UserError):
    """An MLflow tracking target that cannot be used."""


@dataclass(frozen=True)
class MlflowTarget:
    uri: str
    """Tracking URI: http(s)://host:port of a tracking server, or a database / file URI."""
    experiment: str = "asaptrain"
    """Experiment name (created when missing)."""


def check_mlflow(target: MlflowTarget, timeout_s: float = 5.0) -> None:
    """Fail at once, saying what to do, instead of in every worker after MLflow's retries."""
    parts = urlsplit(target.uri)
    if parts.username or parts.password:
        raise TrackingError("--mlflow: put no credentials in the URI (they would be stored with the run); set "
                            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingError("--mlflow needs the mlflow client: pip install 'asaptrain[mlflow]'") from None
    if parts.scheme in ("http", "https"):
        import urllib.request

        try:
            urllib.request.urlopen(target.uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except Exception as exc:  # noqa: BLE001 - any failure means: not reachable as given
            raise TrackingError(f"--mlflow {target.uri}: the tracking server does not answer ({exc}); start it "
                                f"or check the address") from None


def flat_params(cfg) -> dict[str, object]:
    """The resolved config as MLflow parameters: ``section.field`` -> value."""
    from asaptrain.config.io import to_dict

    return {f"{section}.{key}": value for section, fields in to_dict(cfg).items() for key, value in fields.items()}


class MlflowSink:
    """Scalars as MLflow metrics (same names as TensorBoard's tags), sample grids as artifacts."""

    def __init__(self, client):
        self.mlflow = client

    def record(self, record: dict) -> None:
        step, values = scalars(record)
        if values:
            self.mlflow.log_metrics(values, step=step)

    def image(self, step: int, png: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="asaptrain-mlflow-") as tmp:
            path = os.path.join(tmp, f"{step:08d}.png")
            with open(path, "wb") as fh:
                fh.write(png)
            self.mlflow.log_artifact(path, artifact_path="samples")

    def flush(self, durable: bool) -> None:
        pass  # every call above is already one request to the server

    def restart(self, step: int) -> None:
        pass  # a new MLflow run: nothing of the old one to take back

    def close(self) -> None:
        self.mlflow.end_run()


def mlflow_sink(target: MlflowTarget, cfg, run_name: str) -> MlflowSink:
    """Open the MLflow run through Ray's integration (inside a Ray Train worker: rank 0 only)."""
    from ray.air.integrations.mlflow import setup_mlflow

    client = setup_mlflow(flat_params(cfg), tracking_uri=target.uri, experiment_name=target.experiment,
                          run_name=run_name, create_experiment_if_not_exists=True,
                          tags={"asaptrain.run": run_name, "asaptrain.model": cfg.model.name})
    return MlflowSink(client)


def attach_curves(files, cfg, run_name: str, mlflow: MlflowTarget | None = None) -> None:
    """What every training run records besides its own files: TensorBoard, and MLflow if asked."""
    files.attach(TensorBoardSink(files.dir))
    if mlflow is not None:
        files.attach(mlflow_sink(mlflow, cfg, run_name))
