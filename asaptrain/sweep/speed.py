"""The sweep's speed axis: DeblurGAN's reference run, and every trial's generator timed beside it.

    preset = reference_preset(base)                    # deblurgan-smoke for a hybrid-smoke sweep
    reference = ensure_reference(store, base, preset)  # a matching finished run, or one trained now
    speed = time_trials(base, trials, reference, use_gpu)   # ms/image + GFLOPs on every row

The reference is DeblurGAN's own recipe (model, losses, optimizer) trained on the same inputs as
the trials (the sweep's data, blur curriculum, crop, steps, batch and evaluation), so its PSNR sits on the same axis as the
trials'. A finished run in ``STORE/runs`` or ``STORE/sweeps/references`` with that recipe is
reused (``asaptrain smoke`` trains one before its sweep); otherwise one is trained once into
``sweeps/references``, where the next sweep finds it.

Timing happens once, after every trial has finished, not inside the trials: trials train side
by side on a node, so a trial timed at its end would share the CPU or GPU with whatever other
trial was still training, and the ratio would measure the neighbours. Here all generators (each
trial's architecture and the reference's) are built in one Ray task that holds one trial
worker's resources (the same kind of device the trials trained on), and timed interleaved by
``perf.compare`` at the training crop, batch 1, fp32, with a fixed thread count: every speedup
compares two generators that saw the same machine at the same moments. Time depends on the
architecture, not on the weights' values, so each generator is built from its trial's config
(a trial that ASHA stopped before its first checkpoint is timed too).
"""

from __future__ import annotations

import math
from typing import Any

from asaptrain.config.io import from_dict, to_dict
from asaptrain.config.presets import HYBRID_OF, get_preset
from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.train.run_files import RUNS_PREFIX
from asaptrain.train.run_reader import RunReader

REFERENCE_PREFIX = "sweeps/references"
"""Where a sweep trains the DeblurGAN reference it could not find."""
TIMING_TIMEOUT_S = 1800
"""Longest wait for the timing task (it queues behind anything still holding the trials' resources)."""
# Fields that change neither what a run learns nor how it is scored: a run that differs only
# here is the same reference.
_IGNORED = {
    "storage": None, "scaling": None,
    "train": {"log_every", "checkpoint_every", "keep_checkpoints", "sample_every", "max_failures", "compile",
              "channels_last"},
    "eval": {"batch_size", "fid", "inception_weights"},
    "data": {"shuffle_buffer_rows", "prefetch_batches", "max_bad_images"},
}


def reference_preset(base: Config) -> str:
    """The DeblurGAN preset of ``base``'s scale: the one whose hybrid preset has the most model fields in common."""
    mine = to_dict(base)["model"]

    def shared(preset: str) -> int:
        return sum(mine.get(k) == v for k, v in to_dict(get_preset(HYBRID_OF[preset]))["model"].items())

    return max(HYBRID_OF, key=shared)


def reference_config(base: Config, preset: str) -> Config:
    """DeblurGAN's recipe from ``preset`` (model, losses, optimizer) on ``base``'s data, blur
    curriculum, training length, evaluation, scaling and store."""
    ref = get_preset(preset)
    if ref.model.name != "deblurgan":
        raise UserError(f"--reference {preset}: the reference must be a DeblurGAN preset "
                        f"({', '.join(HYBRID_OF)}), not a {ref.model.name} one")
    theirs = to_dict(ref)
    # The curriculum (and data.blur) stay the base config's: the reference trains on the same
    # inputs as the trials it is compared with, so the speed-quality plot compares like with like.
    return from_dict({section: theirs[section] for section in ("model", "loss", "optim")}, base)


def _recipe(cfg: Config, store) -> dict:
    from asaptrain.data.store import dataset_uri

    out = to_dict(cfg)
    for section, fields in _IGNORED.items():
        if fields is None:
            out.pop(section)
        else:
            out[section] = {k: v for k, v in out[section].items() if k not in fields}
    out["data"]["dataset"] = dataset_uri(cfg.data.dataset, store)
    return out


def find_reference(store, cfg: Config) -> tuple[str, str] | None:
    """``(prefix, name)`` of the newest finished run in the store that trained ``cfg``'s recipe."""
    want = _recipe(cfg, store)
    found = []
    for prefix in (RUNS_PREFIX, REFERENCE_PREFIX):
        for entry in store.child(*prefix.split("/")).list(""):
            try:
                run = RunReader.of(store, entry.rstrip("/").split("/")[-1], prefix)
                meta = run.info()
                if (meta.get("status") != "finished" or meta.get("model") != "deblurgan"
                        or int(meta.get("steps_done") or 0) < cfg.train.steps):
                    continue
                theirs = run.config()
            except (UserError, ValueError, OSError):
                continue  # an unreadable or older-schema run is simply not a match
            if _recipe(theirs, store) == want:
                found.append((str(meta.get("finished") or ""), prefix, run.name))
    return max(found)[1:] if found else None


def ensure_reference(store, base: Config, preset: str, progress: bool = True) -> dict[str, Any]:
    """DeblurGAN's point for the sweep of ``base``: reuse a matching run or train one; never raises
    for a failed training (the sweep goes on, and says the reference is missing)."""
    from asaptrain.train.launch import fit

    cfg = reference_config(base, preset)
    found = find_reference(store, cfg)
    out: dict[str, Any] = {"preset": preset, "reused": found is not None, "error": None}
    if found:
        prefix, name = found
        print(f"[asaptrain] reference: reusing {preset} run {name} ({prefix}/)", flush=True)
    else:
        print(f"[asaptrain] reference: training {preset} with the sweep's data, crop and steps "
              f"into {REFERENCE_PREFIX}/", flush=True)
        result = fit(cfg, preset=preset, progress=progress, store=store, runs_prefix=REFERENCE_PREFIX)
        prefix, name = REFERENCE_PREFIX, result.name
        out["error"] = result.error if result.status != "finished" else None
    run = RunReader.of(store, name, prefix)
    evals = run.metrics().evals()
    out.update({"run": name, "uri": run.uri, "steps": max((r["step"] for r in evals), default=0),
                "input_psnr": evals[-1].get("input_psnr") if evals else None})
    for metric in ("psnr", "ssim"):  # the same statistic as a trial's: the best validation value seen
        values = [r[metric] for r in evals if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
        out[f"best_val_{metric}"] = max(values) if values else None
    out["config"] = to_dict(run.config())
    return out


def _timing_task(named: list[tuple[str, Config]], size: tuple[int, int], device: str, threads: int) -> list[dict]:
    from asaptrain.perf.compare import compare_generators

    return compare_generators(named, size=size, dtype="fp32", batches=(1,), device=device, threads=threads)


def time_trials(base: Config, trials: list[dict], reference: dict | None, use_gpu: bool) -> dict[str, Any]:
    """Time every trial's generator and the reference's side by side; fill ``ms_per_image``,
    ``iqr_ms`` and ``gflops`` on the trial rows and the reference; return ``sweep.json``'s ``speed``."""
    import ray

    from asaptrain.sweep.space import trial_config

    size = (base.data.crop_height, base.data.crop_width)
    speed: dict[str, Any] = {"height": size[0], "width": size[1], "dtype": "fp32", "batch": 1, "error": None,
                             "method": "one Ray task on one trial worker's resources after the sweep; "
                                       "every generator timed interleaved with the others (perf.compare)"}
    named = []
    for t in trials:
        if not t.get("trial"):
            continue
        try:
            named.append((t["trial"], trial_config(base, t["params"])))
        except UserError as exc:
            t["timing_error"] = str(exc)
    if reference and reference.get("config"):
        named.append((reference["preset"], from_dict(reference["config"])))
    if not named:
        speed["error"] = "nothing to time"
        return speed
    per = base.scaling.resources_per_worker or {}
    cpus = per.get("CPU", 1)
    threads = max(1, int(cpus))
    task = ray.remote(_timing_task).options(num_cpus=cpus, num_gpus=per.get("GPU", 1) if use_gpu else 0,
                                            max_retries=0)
    ref = task.remote(named, size, "cuda" if use_gpu else "cpu", threads)
    try:
        rows = ray.get(ref, timeout=TIMING_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        speed["error"] = (f"timing did not finish within {TIMING_TIMEOUT_S} s (its task waits for "
                          f"{cpus} CPU{' and a GPU' if use_gpu else ''} that something still holds)")
        return speed
    except Exception as exc:  # noqa: BLE001 - a timing failure leaves the sweep's results intact
        speed["error"] = f"timing failed: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        return speed
    by_name = {r["preset"]: r for r in rows if r.get("kind") == "model"}
    first = next(iter(by_name.values()))
    speed.update({k: first.get(k) for k in ("device", "device_type", "threads", "torch", "cuda", "repeats",
                                             "warmup")})
    # Spread of the per-round ratios (both generators of a round saw the same load).
    spread = {r["a"]: (r["ratio_q1"], r["ratio_q3"]) for r in rows
              if r.get("kind") == "ratio" and reference and r["b"] == reference["preset"]}
    for row in [*trials, *([reference] if reference else [])]:
        timed = by_name.get(row.get("trial") or row.get("preset"))
        if timed:
            row.update(ms_per_image=timed["ms"], iqr_ms=timed.get("iqr_ms"), gflops=timed.get("gflops"),
                       pixel_path=timed.get("pixel_path"))
        if row.get("trial") in spread:
            row["speedup_q1"], row["speedup_q3"] = spread[row["trial"]]
    return speed


__all__ = ["reference_preset", "reference_config", "find_reference", "ensure_reference", "time_trials",
           "REFERENCE_PREFIX", "HYBRID_OF"]
