"""Run a training job on Ray Train: name the run, build the TorchTrainer, show progress.

    result = fit(load_config(preset="deblurgan-smoke"), preset="deblurgan-smoke")

The driver writes ``config.toml`` and ``run.json`` before the workers start, follows
``progress.json`` with a rich progress bar while ``TorchTrainer.fit`` runs, and marks the run
finished or failed at the end. Workers open the store themselves from its URI, with
credentials from their own environment: no secret travels in the trainer's config.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from asaptrain.train import dist
from asaptrain.config.schema import Config
from asaptrain.config.io import from_dict, replace, to_dict
from asaptrain.errors import UserError
from asaptrain.train.curves import MlflowTarget, attach_curves, check_mlflow
from asaptrain.train.driver import _progress_bar, ensure_ray, run_polling  # noqa: F401 - re-exported
from asaptrain.train.run_files import RUNS_PREFIX, RunFiles, new_run_name
from asaptrain.train.outcome import clear_stop, conclude, marked_if_interrupted, stop_instead_of_retry
from asaptrain.train.resume import resume_step, worker_checkpoint
from asaptrain.train.state import STATE_FILE


class RunError(UserError):
    """A run that cannot start or continue as asked (name taken, nothing to resume, ...)."""


@dataclass
class RunResult:
    name: str
    status: str
    """finished or failed."""
    uri: str
    """Where the run's files are."""
    steps: int
    error: str | None = None
    last_eval: dict | None = None


class RayReporter:
    """Every rank calls ``ray.train.report`` the same number of times; rank 0 adds checkpoints."""

    def report(self, metrics: dict, state: dict | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        tmp = tempfile.mkdtemp(prefix="asaptrain-ckpt-")
        try:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _worker(config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import ray.train.torch

    from asaptrain.data.pipeline import TrainBatches, to_model_batch, validation_set
    from asaptrain.data.store import resolve_dataset, store_from_config
    from asaptrain.train.loop import train_loop

    cfg = from_dict(config["config"])
    store = store_from_config(cfg.storage)
    device = dist.device(config["use_gpu"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = dist.is_main()
    run_files = RunFiles(store, config["name"], config["runs_prefix"]) if main else None
    if main:
        attach_curves(run_files, cfg, config["name"], MlflowTarget(**config["mlflow"]) if config.get("mlflow") else None)
    nodes = dist.gather_objects(ray.get_runtime_context().get_node_id())  # where each rank runs
    if main:
        run_files.dir.write_json("worker_nodes.json", nodes)
    checkpoint = worker_checkpoint(ray.train.get_checkpoint(), RunFiles(store, config["name"], config["runs_prefix"]).dir)
    start_step = checkpoint["step"] if checkpoint else 0
    per_worker = cfg.train.batch_size // dist.world_size()
    batches = iter(TrainBatches(
        ray.train.get_dataset_shard("train"), cfg, device, per_worker, epoch_seed=cfg.train.seed + start_step,
        ds_store=resolve_dataset(cfg.data.dataset, store))
    )
    val = validation_set(cfg, store, device) if main else None
    init = None
    if checkpoint is None and config.get("init_from"):  # a new run started from another's weights
        from asaptrain.data.store import Store
        from asaptrain.train.init_from import init_plan

        source = Store.open(config["init_from"], getattr(store, "endpoint", None), getattr(store, "region", None))
        init = init_plan(cfg, source)
    stop_instead_of_retry(lambda: train_loop(
        cfg, batches, to_model_batch, device, RayReporter(), run=run_files,
        val=val, checkpoint=checkpoint, weights_store=store, init=init,
        wrap=lambda m: ray.train.torch.prepare_model(m, move_to_device=False),
    ), run_files)


def resolve_use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.scaling.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.scaling.use_gpu == "true"


AUTO = "auto"
"""``--resume auto``: continue the run ``--name`` names if it exists, else start it (a job that is
restarted, by KubeRay's backoffLimit or by hand, runs the same command again)."""


def resolve_auto(store, name: str | None, resume: str | None, prefix: str = RUNS_PREFIX) -> str | None:
    """What ``resume`` means: ``auto`` becomes ``name`` when that run exists, else None (start it)."""
    if resume != AUTO:
        return resume
    if not name:
        raise RunError("--resume auto needs --name NAME: the run to continue if it exists, or to start")
    return name if RunFiles(store, name, prefix).exists() else None


def choose_name(
    store, cfg: Config, preset: str | None, name: str | None, resume: str | None, prefix: str = RUNS_PREFIX
) -> tuple[str, int]:
    """The run's name and the step it resumes from (0 when new); guards against silent reuse.

    Ray resumes any run whose (storage path, name) exists — even a finished one — so a name
    that exists is only accepted through ``--resume``.
    """
    if resume:
        files = RunFiles(store, resume, prefix)
        if not files.exists():
            raise RunError(f"cannot resume {resume!r}: no run at {files.dir.uri_for('run.json')}")
        meta = files.read_run()
        if meta.get("status") == "imported":
            raise RunError(f"cannot resume {resume!r}: it is an imported generator, with no discriminator, optimizer "
                           f"or step to continue from; start a new run from its weights with --init-from {resume}")
        done = int(meta.get("steps_done") or 0)
        if meta.get("status") == "finished" and done >= cfg.train.steps:
            raise RunError(
                f"run {resume!r} already finished {done} steps; resume with a larger --steps to train further"
            )
        return resume, done
    if name:
        if RunFiles(store, name, prefix).exists() or _holds_files(store, f"{prefix}/{name}"):
            raise RunError(
                f"a run named {name!r} exists at {store.uri_for(prefix, name)}; pass --resume {name} to "
                f"continue it, or choose another --name"
            )
        return name, 0
    return new_run_name(preset or cfg.model.name), 0


def _holds_files(store, rel: str) -> bool:
    """Whether the folder exists with more in it than a claim (one left by a command killed before
    it wrote anything is taken over, not a reason to refuse the name)."""
    from asaptrain.data.claim import is_claim_object

    return store.exists(rel) and any(not is_claim_object(p) for p in store.list(rel))


def _finished_steps(files: RunFiles) -> int:
    """Steps a finished run did (-1 when the run is not finished)."""
    meta = files.read_run()
    return int(meta.get("steps_done") or 0) if meta.get("status") == "finished" else -1


def fit(
    cfg: Config,
    *,
    preset: str | None = None,
    name: str | None = None,
    resume: str | None = None,
    progress: bool = True,
    callbacks: list | None = None,
    store=None,
    runs_prefix: str = RUNS_PREFIX,
    mlflow: MlflowTarget | None = None,
    init_from: str | None = None,
) -> RunResult:
    """Train ``cfg`` under Ray Train and return where the run is and how it ended; with
    ``mlflow`` its curves also go to that tracking server; with ``init_from`` (a run name in the
    store or a run directory URI, imported ones included) a new run starts from its weights."""
    from asaptrain.data.labelsets import resolve_num_labels
    from asaptrain.data.pipeline import check_crop_and_batch
    from asaptrain.data.store import resolve_dataset, store_from_config

    cfg = pin_store(cfg)
    store = store or store_from_config(cfg.storage)
    cfg = resolve_num_labels(cfg, store)  # the dataset's label count; a config naming another is refused here
    if resume and init_from:
        raise RunError("give --resume or --init-from, not both: --resume continues a run, --init-from starts a new "
                       "one from another run's weights")
    auto = resume == AUTO
    resume = resolve_auto(store, name, resume, runs_prefix)
    if auto and resume and (done := _finished_steps(RunFiles(store, resume, runs_prefix))) >= cfg.train.steps:
        # A job restarted after its run ended: nothing to train, and nothing to fail.
        print(f"[asaptrain] run {resume!r} already finished {done} steps", flush=True)
        files = RunFiles(store, resume, runs_prefix)
        return RunResult(name=resume, status="finished", uri=files.dir.uri_for(""), steps=done)
    # The run's folder is claimed before its name is checked (so that of two commands started
    # together the second is told which one holds it) and before Ray starts.
    held = claim_run(store, resume or name, runs_prefix, cfg, bool(resume)) if resume or name else None
    try:
        name, start = choose_name(store, cfg, preset, name, resume, runs_prefix)
        held = held or claim_run(store, name, runs_prefix, cfg, False)
        if mlflow is not None:
            check_mlflow(mlflow)
        if resume:  # the weights must fit the config before anything of the run is rewritten
            start = resume_step(RunFiles(store, name, runs_prefix), cfg, start)
            print(f"[asaptrain] continuing run {name!r} from step {start}", flush=True)
        init_uri = None
        if init_from:  # the source's generator must fit before anything is written
            from asaptrain.train.init_from import init_plan, source_dir

            source = source_dir(store, init_from, getattr(store, "endpoint", None), runs_prefix)
            for note in init_plan(cfg, source).notes:
                print(f"[asaptrain] --init-from: {note}", flush=True)
            init_uri = source.uri_for("")
        # A crop or batch the data cannot give fails here, before Ray starts or anything is written.
        check_crop_and_batch(cfg, resolve_dataset(cfg.data.dataset, store))
        return _fit_claimed(cfg, store, name, start, preset, progress, callbacks, runs_prefix, mlflow, init_uri)
    finally:
        if held is not None:
            held.release()


def claim_run(store, name: str, prefix: str, cfg: Config, resume: bool):
    """Claim the run's folder: a second command that names the same run is refused, naming the
    first; a resume takes over the claim of one that died (no heartbeat for
    ``storage.claim_stale_s``), a new run only that of one that died before writing the run."""
    from asaptrain.data.claim import claim, owner_here

    files = RunFiles(store, name, prefix)
    return claim(store, f"{prefix}/{name}", owner_here("train"), what=f"run {name!r} ({files.dir.uri_for()})",
                 take_stale=resume or not files.exists(), stale_s=cfg.storage.claim_stale_s)


def _fit_claimed(cfg: Config, store, name: str, start: int, preset: str | None, progress: bool,
                 callbacks: list | None, runs_prefix: str, mlflow: MlflowTarget | None,
                 init_uri: str | None = None) -> RunResult:
    """The rest of :func:`fit`, while this command holds the run's claim."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from asaptrain.data.pipeline import new_bad_image_log, train_dataset
    from asaptrain.train.resources import worker_resources

    ensure_ray()
    use_gpu = resolve_use_gpu(cfg)
    per_worker = worker_resources(cfg, use_gpu)  # leaves Ray Data a CPU, or says what to set
    # Before anything is written: a missing or damaged dataset fails here, naming it, and
    # leaves no half-started run behind.
    bad_log = new_bad_image_log(cfg.data.max_bad_images)
    dataset = train_dataset(cfg, store, bad_log=bad_log)
    files = RunFiles(store, name, runs_prefix)
    files.write_config(cfg)
    meta = files.write_run(
        name=name, preset=preset, model=cfg.model.name, task=cfg.data.task, status="running",
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), steps=cfg.train.steps, world_size=cfg.scaling.num_workers,
        use_gpu=use_gpu, steps_done=start, error=None, **({"init_from": init_uri} if init_uri else {}),
    )
    clear_stop(files)
    sc = cfg.scaling
    storage_path, storage_fs = store.child(*runs_prefix.split("/")).ray_storage()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "config": to_dict(cfg), "name": name, "use_gpu": use_gpu, "runs_prefix": runs_prefix, "init_from": init_uri,
            "mlflow": asdict(mlflow) if mlflow else None,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker,
            placement_strategy=sc.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=callbacks,
        ),
        datasets={"train": dataset},
        # One worker reads the whole dataset itself: no split, so no coordinator actor to start.
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if sc.num_workers > 1 else []),
    )
    with marked_if_interrupted(files, meta):
        try:
            with _progress_bar(files, cfg.train.steps) if progress else nullcontext() as update:
                error = getattr(run_polling(trainer.fit, update, every_s=1.0), "error", None)
        except Exception as exc:  # reported below, with the run marked failed
            error = exc
    try:
        bad_log.close()  # the cluster's bad-image ledger forgets this run's entries
    except Exception as exc:  # a cluster gone with the run: nothing is left to forget
        print(f"[asaptrain] the bad-image ledger could not drop this run's entries: {exc}", flush=True)
    end = conclude(files, meta, start, error, patience_s=max(60.0, cfg.storage.outage_s))
    return RunResult(name=name, status=end.status, uri=files.dir.uri_for(""), steps=end.steps, error=end.error,
                     last_eval=end.last_eval)


def pin_store(cfg: Config) -> Config:
    """``cfg`` with a relative local store made absolute: workers run in other directories."""
    from asaptrain.data.store import absolute_uri

    uri = absolute_uri(cfg.storage.store)
    return cfg if uri == cfg.storage.store else replace(cfg, {"storage.store": uri})
