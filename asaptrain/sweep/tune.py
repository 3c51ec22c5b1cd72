"""The hybrid sweep: Ray Tune over Ray Train runs, ASHA early stopping, best config as TOML.

    summary = sweep(load_config(preset="hybrid-smoke"), trials=4)

Each trial is a Tune function that builds and fits a ``TorchTrainer`` (``train.launch.fit``)
with ``TuneReportCallback``: every Train report becomes a Tune result, so ASHA sees the
validation PSNR as training goes. Trial runs live under ``STORE/sweeps/NAME/runs/``. Beside
them the sweep writes ``sweep.json`` (every trial with its PSNR, ms/image and GFLOPs, DeblurGAN's
reference point, the speed–quality front), ``best.toml`` (the best trial at least
``min_speedup`` times faster than DeblurGAN, a config ``asaptrain train --config`` accepts
unchanged) and ``trials.png``; the reference run and the timing are in ``sweep/speed.py``, the
choice in ``sweep/select.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from typing import Any

from asaptrain.config.schema import Config
from asaptrain.config.io import from_dict, replace, to_dict, to_toml
from asaptrain.sweep.figure import trials_png
from asaptrain.sweep.select import best_toml_header, choose, front
from asaptrain.sweep.space import SweepError, default_space, space_notes, to_tune, trial_config
from asaptrain.sweep.speed import ensure_reference, reference_preset, time_trials
from asaptrain.train.run_files import RunFiles, check_name, new_run_name
from asaptrain.train.run_reader import RunReader

SWEEPS_PREFIX = "sweeps"
METRIC_KEYS = {"psnr": "val_psnr", "ssim": "val_ssim"}
TRIAL_DRIVER_CPUS = 0.25
"""CPUs held by a trial's driver, which only waits on its TorchTrainer (Ray's default is 1)."""


def dashboard_url() -> str | None:
    """The dashboard of the cluster this process is connected to (``http://host:port``), or None
    when that cluster runs none.

    Ray's state API left to find a cluster itself takes the newest one that `ray start` recorded
    on this machine, which may be another user's, or one that is gone.
    """
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    url = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    if not url:
        return None
    url = url.decode() if isinstance(url, bytes) else str(url)
    return url if "://" in url else f"http://{url}"


@contextmanager
def this_cluster_state_api():
    """Point Ray's state API calls (``ray.util.state.*``) made inside at this process's own
    cluster; yields its dashboard URL, or None when it has none. The API reads
    RAY_API_SERVER_ADDRESS before its ``address`` argument, so that is what is set."""
    url = dashboard_url()
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    if url:
        os.environ["RAY_API_SERVER_ADDRESS"] = url
    try:
        yield url
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def dashboard_ok() -> bool:
    """Whether the connected cluster's state API (served by its dashboard) answers.

    On Ray 2.60 what a stopped trial left reserved is found and freed through it
    (``sweep/groups.py``); without it the next trial can wait forever for the resources the
    first one held.
    """
    try:
        from ray.util.state import list_placement_groups

        with this_cluster_state_api() as url:
            if url is None:
                return False
            list_placement_groups(address=url, limit=1, timeout=10, raise_on_missing_output=False)
        return True
    except Exception:
        return False


def concurrent_trials(base: Config, use_gpu: bool) -> int:
    """How many trials fit at once: the limiting resource / one trial's need."""
    import ray

    res = ray.cluster_resources()
    per = base.scaling.resources_per_worker or {}
    workers = base.scaling.num_workers
    cpu_need = TRIAL_DRIVER_CPUS + workers * per.get("CPU", 1)
    # One CPU stays free for Ray Data's decode tasks, which every trial's workers wait on.
    fits = int(max(res.get("CPU", 1) - 1, 0) // cpu_need)
    if use_gpu:
        fits = min(fits, int(res.get("GPU", 0) // (workers * per.get("GPU", 1))))
    return max(1, fits)


def _trial(params: dict[str, Any]) -> None:
    """One Tune trial: a full Ray Train run of the hybrid with the trial's values."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from asaptrain.data.store import Store
    from asaptrain.train.launch import fit

    ctx = params.pop("__asaptrain__")
    cfg = trial_config(from_dict(ctx["base"]), params)
    store = Store.open(cfg.storage.store, cfg.storage.s3_endpoint or None, cfg.storage.region or None)
    # "auto": a trial that runs again (the sweep resumed after its driver died) continues its own
    # run from that run's last checkpoint instead of being refused its own name.
    result = fit(cfg, name=f"trial-{ray.tune.get_context().get_trial_id()}", resume="auto", progress=False,
                 store=store, callbacks=[TuneReportCallback()], runs_prefix=ctx["runs_prefix"])
    if result.status != "finished":
        raise RuntimeError(f"trial run {result.name} failed: {result.error}")


def sweep(
    base: Config,
    *,
    trials: int = 8,
    name: str | None = None,
    resume: str | None = None,
    space: dict[str, dict] | None = None,
    metric: str = "psnr",
    grace_reports: int = 1,
    reduction_factor: float = 2,
    search: str = "auto",
    gpus_per_trial: float | None = None,
    workers_per_trial: int | None = None,
    min_speedup: float = 2.5,
    reference: str | None = None,
    progress: bool = True,
) -> dict:
    """Run (or resume) a sweep and write its results; returns the ``sweep.json`` content."""
    from asaptrain.data.pipeline import check_crop_and_batch
    from asaptrain.data.s3 import keep_credentials_out_of_tune
    from asaptrain.data.shards import shard_paths
    from asaptrain.data.store import resolve_dataset, store_from_config
    from asaptrain.train.driver import ensure_ray, run_polling
    from asaptrain.train.launch import pin_store, resolve_use_gpu
    from asaptrain.train.resources import with_planned_resources

    if metric not in METRIC_KEYS:
        raise SweepError(f"--metric must be one of {', '.join(METRIC_KEYS)}, got {metric!r}")
    base = pin_store(replace(base, trial_scaling(base, gpus_per_trial, workers_per_trial)))
    store = store_from_config(base.storage)
    if resume == "auto":  # continue the sweep --name names if it was started, else start it
        if not name:
            raise SweepError("--resume auto needs --name NAME: the sweep to continue if it exists, or to start")
        resume = name if store.child(SWEEPS_PREFIX, check_name(name, "sweep name")).exists("space.json") else None
    name = check_name(resume or name or new_run_name("sweep"), "sweep name")
    if resume and (done := finished_sweep(store, name)) is not None:
        # A job restarted after its sweep ended: nothing to train or time again.
        print(f"[asaptrain] sweep {name!r} already finished {len(done.get('trials', []))} trials: "
              f"{store.uri_for(SWEEPS_PREFIX, name, 'sweep.json')}", flush=True)
        return done
    shard_paths(resolve_dataset(base.data.dataset, store), "train")  # a missing dataset fails here, not per trial
    check_crop_and_batch(base, resolve_dataset(base.data.dataset, store))  # as a crop the images cannot give
    ensure_ray()
    keep_credentials_out_of_tune()
    use_gpu = resolve_use_gpu(base)
    # Trials get CPUs planned so that Ray Data can read beside them; best.toml keeps the user's.
    planned = with_planned_resources(base, use_gpu, driver_cpus=TRIAL_DRIVER_CPUS)
    parallel = _trials_at_once(planned, trials, use_gpu)
    # Written only once the inputs and the cluster are known to be usable.
    space = _open_space(store.child(SWEEPS_PREFIX, name), name, resume, space or default_space(base))
    for note in space_notes(base):
        print(f"[asaptrain] {note}", flush=True)
    ref = ensure_reference(store, base, reference or reference_preset(base), progress)
    runs_prefix = f"{SWEEPS_PREFIX}/{name}/runs"
    tuner = _tuner(store, name, planned, space, runs_prefix, trials, parallel, metric, grace_reports,
                   reduction_factor, search, resume=bool(resume))
    try:
        with _trials_table(store, runs_prefix, base.train.steps) if progress else nullcontext() as update:
            grid = run_polling(tuner.fit, update, every_s=2.0)
    except Exception as exc:
        raise SweepError(f"sweep {name} stopped: {exc}") from exc
    summary = write_results(store, name, base, grid, metric, runs_prefix, ref, min_speedup, use_gpu)
    if all(t["status"] == "error" for t in summary["trials"]):
        first = next((t["error"] for t in summary["trials"] if t["error"]), "no trial ran")
        raise SweepError(f"no trial of sweep {name} finished (first error: {first}); see "
                         f"{store.uri_for(SWEEPS_PREFIX, name, 'sweep.json')}")
    return summary


def finished_sweep(store, name: str) -> dict | None:
    """The stored ``sweep.json`` of sweep ``name`` once it has ended with no trial in error (a
    resume would rerun those), else None."""
    sweep_dir = store.child(SWEEPS_PREFIX, name)
    if not sweep_dir.exists("sweep.json"):
        return None
    try:
        summary = sweep_dir.read_json("sweep.json")
    except ValueError:  # not whole: the resume writes it again
        return None
    return None if any(t.get("status") == "error" for t in summary.get("trials", [])) else summary


def trial_scaling(base: Config, gpus_per_trial: float | None, workers_per_trial: int | None) -> dict[str, Any]:
    """The config changes that give each trial ``workers_per_trial`` workers and ``gpus_per_trial`` GPUs."""
    changes: dict[str, Any] = {}
    if workers_per_trial:
        changes["scaling.num_workers"] = workers_per_trial
    if gpus_per_trial is not None:
        workers = workers_per_trial or base.scaling.num_workers
        changes["scaling.use_gpu"] = "true" if gpus_per_trial > 0 else "false"
        if gpus_per_trial > 0:
            changes["scaling.resources_per_worker"] = {"GPU": gpus_per_trial / workers}
    return changes


def _open_space(sweep_dir, name: str, resume: str | None, space: dict[str, dict]) -> dict[str, dict]:
    """The sweep's search space: the one it was started with when resuming; written before any trial."""
    if resume and not sweep_dir.exists("space.json"):
        raise SweepError(f"cannot resume sweep {resume!r}: nothing at {sweep_dir.uri_for('space.json')}")
    if not resume and sweep_dir.exists("space.json"):
        raise SweepError(f"a sweep named {name!r} exists at {sweep_dir.uri_for('')}; pass --resume {name} to continue it")
    space = json.loads(sweep_dir.read_text("space.json")) if resume else space
    sweep_dir.write_text("space.json", json.dumps(space, indent=2))
    return space


def _trials_at_once(base: Config, trials: int, use_gpu: bool) -> int:
    """How many trials run together; refuses trials in turn where a finished one would block the next."""
    parallel = min(concurrent_trials(base, use_gpu), trials)
    if parallel < trials and not dashboard_ok():
        raise SweepError(
            "Ray's dashboard (state API) is not answering, and trials must run in turn: on Ray 2.60 a finished "
            "trial's placement group is freed through it, so the next trial would wait forever. Start Ray with "
            "the dashboard (pip install 'ray[default]'; ray start --head --include-dashboard=true) and retry."
        )
    return parallel


def _tuner(store, name: str, base: Config, space: dict[str, dict], runs_prefix: str, trials: int, parallel: int,
           metric: str, grace_reports: int, reduction_factor: float, search: str, resume: bool):
    """A new Tuner for the sweep, or the stored one when resuming a sweep Tune can restore."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from asaptrain.data.store import dataset_uri

    trainable = tune.with_resources(_trial, {"CPU": TRIAL_DRIVER_CPUS})
    storage_path, storage_fs = store.child(SWEEPS_PREFIX, name).ray_storage()
    tune_path = os.path.join(storage_path, "tune")
    if resume and tune.Tuner.can_restore(tune_path, storage_filesystem=storage_fs):
        return tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=True, restart_errored=False,
                                  storage_filesystem=storage_fs)
    # Trials read the dataset from the main store, wherever their own runs go.
    trial_base = replace(base, {"data.dataset": dataset_uri(base.data.dataset, store)})
    # One past the last report: ASHA must never be the one to end a trial that is finishing.
    max_t = max(1, math.ceil(base.train.steps / base.train.log_every)) + 1
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(grace_reports, max_t),
                              reduction_factor=reduction_factor)
    param_space = {**to_tune(space), "__asaptrain__": {"base": to_dict(trial_base), "runs_prefix": runs_prefix}}
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC_KEYS[metric], mode="max", scheduler=scheduler,
                                    search_alg=_search_alg(search, base.train.seed, parallel), num_samples=trials),
        run_config=tune.RunConfig(name="tune", storage_path=storage_path, storage_filesystem=storage_fs,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[_trial_callback(store, runs_prefix)]),
    )


def _trial_callback(store, runs_prefix: str):
    from ray import tune

    class TrialsEnd(tune.Callback):
        """After each trial, mark a killed trial's run in run.json; from then on, every few seconds,
        free the placement groups that a stopped trial's Train run left reserved (``sweep/groups.py``)."""

        def __init__(self):
            self.stray = None  # made in the driver that runs the sweep (a resumed one too), at the first look
            self.before: set[str] = set()  # the placement groups there before the sweep began: never touched
            self.next_look = math.inf

        def __getstate__(self):  # saved with the Tuner: a resumed sweep is another job, with its own look
            return {**self.__dict__, "stray": None, "before": set(), "next_look": math.inf}

        def setup(self, **info):
            from asaptrain.sweep.groups import groups_now

            try:
                self.before = groups_now()
            except Exception as exc:  # cleanup must never stop the sweep
                print(f"[asaptrain] listing the placement groups before the sweep: {exc}", flush=True)

        def _done(self, trial, status: str) -> None:
            run = RunFiles(store, f"trial-{trial.trial_id}", runs_prefix)
            try:
                if run.exists() and run.read_run().get("status") == "running":
                    error = trial.get_error() if status == "failed" else None
                    lines = [line for line in str(error or "").strip().splitlines() if line.strip()]
                    run.write_run(status=status, **({"error": (lines[-1] if lines else "the trial failed")[:2000]}
                                                    if status == "failed" else {}))
            except Exception as exc:  # cleanup must never stop the sweep
                print(f"[asaptrain] marking trial {trial.trial_id}'s run: {exc}", flush=True)
            self._look()

        def _look(self) -> None:
            import ray

            from asaptrain.sweep.groups import StrayGroups

            try:
                if self.stray is None:
                    url = dashboard_url()
                    if url is None:  # no state API: nothing to look with (sweep() says so where it matters)
                        return
                    self.stray = StrayGroups(ray.get_runtime_context().get_job_id(), url,
                                             keep=[{"CPU": TRIAL_DRIVER_CPUS}], spare=self.before)
                self.next_look = time.monotonic() + self.stray.confirm_s
                freed = self.stray.free()
                if freed:
                    print(f"[asaptrain] freed {len(freed)} placement group(s) that a stopped trial's Train run left "
                          f"reserved: {', '.join(freed)}", flush=True)
            except Exception as exc:  # cleanup must never stop the sweep
                print(f"[asaptrain] looking for placement groups that stopped trials left: {exc}", flush=True)

        def on_step_begin(self, iteration, trials, **info):
            if time.monotonic() >= self.next_look:
                self._look()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._done(trial, "stopped early")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._done(trial, "failed")

    return TrialsEnd()


def _search_alg(search: str, seed: int, parallel: int):
    """Optuna (when asked or installed) or random search, limited to ``parallel`` trials at once.

    Tune ignores ``max_concurrent_trials`` for a BasicVariantGenerator passed in, so the limit
    is given to the generator itself.
    """
    if search in ("auto", "optuna"):
        try:
            import optuna  # noqa: F401
            from ray.tune.search import ConcurrencyLimiter
            from ray.tune.search.optuna import OptunaSearch

            return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=parallel)
        except ImportError:
            if search == "optuna":
                raise SweepError("--search optuna needs the optuna package (pip install optuna)") from None
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=parallel)


def write_results(store, name: str, base: Config, grid, metric: str, runs_prefix: str, reference: dict,
                  min_speedup: float, use_gpu: bool) -> dict:
    key = METRIC_KEYS[metric]
    rows = []
    for res in grid:
        params = {k: v for k, v in (res.config or {}).items() if k != "__asaptrain__"}
        history = res.metrics_dataframe
        best = float(history[key].max()) if history is not None and key in history else None
        steps = int(history["step"].max()) if history is not None and "step" in history else 0
        run_name = f"trial-{res.metrics.get('trial_id')}" if res.metrics else None
        rows.append({
            "trial": (res.metrics or {}).get("trial_id"), "run": run_name, "params": params,
            f"best_{key}": best, "steps": steps, "status": "error" if res.error else
            ("stopped early" if steps < base.train.steps else "finished"),
            "error": str(res.error).strip().splitlines()[-1][:500] if res.error else None,
        })
    speed = time_trials(base, rows, reference, use_gpu)
    best, selection = choose(rows, key, reference.get("ms_per_image"), min_speedup)
    on_front = front(rows, key)
    for r in rows:
        r["on_front"] = r["trial"] in on_front
    sweep_dir = store.child(SWEEPS_PREFIX, name)
    summary = {"name": name, "metric": key, "trials": rows, "best": best, "base_steps": base.train.steps,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "selection": selection, "front": on_front,
               "speed": speed, "reference": {k: v for k, v in reference.items() if k != "config"},
               "notes": space_notes(base)}
    if selection["below_speedup"] is not False:
        print(f"[asaptrain] WARNING: {selection['message']}", flush=True)
    if best is not None:
        best_cfg = trial_config(base, best["params"])
        sweep_dir.write_text("best.toml", best_toml_header(summary) + to_toml(best_cfg))
        summary["best_toml"] = sweep_dir.uri_for("best.toml")
    sweep_dir.write_json("sweep.json", summary)
    _plot(store, runs_prefix, sweep_dir, summary)
    return summary


def _plot(store, runs_prefix: str, sweep_dir, summary: dict) -> None:
    runs_dir = store.child(*runs_prefix.split("/"))
    histories = {run: RunReader.of(store, run, runs_prefix).metrics().evals()
                 for run in sorted({p.split("/")[0] for p in runs_dir.list("")})}
    png = trials_png(summary, histories)
    if png is not None:
        sweep_dir.write_bytes("trials.png", png)


@contextmanager
def _trials_table(store, runs_prefix: str, steps: int):
    """A live rich table of the trials' runs (step, validation PSNR); yields the function that refreshes it."""
    from rich.live import Live
    from rich.table import Table

    def table() -> Table:
        t = Table(title="sweep trials")
        for col in ("run", "step", "val PSNR", "img/s"):
            t.add_column(col)
        runs_dir = store.child(*runs_prefix.split("/"))
        try:
            names = sorted({p.split("/")[0] for p in runs_dir.list("")})
        except Exception:
            names = []
        for run in names:
            p = RunFiles(store, run, runs_prefix).read_progress() or {}
            psnr = p.get("val/psnr")
            t.add_row(run, f"{p.get('step', 0)}/{steps}", f"{psnr:.2f}" if psnr is not None else "-",
                      f"{p.get('images_per_s', 0):.1f}")
        return t

    with Live(table(), refresh_per_second=1) as live:
        yield lambda: live.update(table())
