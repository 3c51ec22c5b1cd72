"""The aggregate report: every run under a store prefix -> report.md, report.json, PNGs.

Reads the run directories the training engine writes (``runs/NAME/run.json``,
``metrics.jsonl``, ``timing.json``, ``samples/STEP.png``), picks the latest finished run of
each model for the quality tables (in the form of ASAP-Net's Tables 1 and 2: FID, PSNR,
SSIM), shows each run's own inference timing, and lists every run, including failed, running
and incomplete ones, and every sweep under ``sweeps/`` (its trials' quality against ms/image
beside DeblurGAN's reference run: ``report/sweeps.py``). Speed ratios are never divided out of
timings that separate runs took on a shared machine: the report rebuilds the two runs'
generators from their ``config.toml`` and times them side by side in its own process
(``asaptrain.perf.compare``).

    report = aggregate(Store.open("s3://bucket/asap", s3_endpoint=url), "out/report")
    print_report(report)

Run by ``asaptrain aggregate`` and by the ``jobs/aggregate.py`` Ray job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import Any

from asaptrain.report.tables import finite, render_markdown
from asaptrain.train.run_files import json_safe
from asaptrain.train.run_reader import RunError, RunReader

# Models per task, in table order; the ratio pairs are (new model, baseline).
TASK_MODELS = {"labels2photo": ("asapnet", "pix2pixhd"), "deblur": ("deblurgan", "hybrid")}
TASK_TITLES = {"labels2photo": "Label map → photo (Cityscapes-style)", "deblur": "Deblurring"}
SPEED_PAIRS = (("labels2photo", "asapnet", "pix2pixhd"), ("deblur", "hybrid", "deblurgan"))
_MODEL_TASK = {m: t for t, ms in TASK_MODELS.items() for m in ms}
_EVAL_KEYS = ("fid", "fid_reason", "psnr", "ssim", "input_psnr", "input_ssim")


@dataclass
class Run:
    """One run directory as read from the store; ``problems`` names what is missing."""

    name: str
    info: dict[str, Any] = field(default_factory=dict)  # run.json
    train: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's training records
    evals: list[dict[str, Any]] = field(default_factory=list)  # its validation records
    timing: dict[str, Any] | None = None
    sample: str | None = None  # the latest samples/STEP.png, relative to the run
    sample_step: int | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # eval-SPLIT.json of `asaptrain evaluate`, by split
    problems: list[str] = field(default_factory=list)
    reader: RunReader | None = None  # the run directory, to read its config and sample grid

    @property
    def model(self) -> str:
        return str(self.info.get("model") or "unknown")

    @property
    def task(self) -> str:
        return str(self.info.get("task") or _MODEL_TASK.get(self.model, "unknown"))

    @property
    def status(self) -> str:
        return str(self.info.get("status") or "unknown")

    @property
    def when(self) -> str:
        """Sort key for "latest": finish time, else start time (ISO strings)."""
        return _iso(self.info.get("finished")) or _iso(self.info.get("started")) or ""


def _iso(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # epoch seconds
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc).isoformat()
    return str(value) if value else None


# ----------------------------------------------------------------------------- reading runs


def _names_under(store, rel: str) -> list[str]:
    """Immediate child names of ``rel``, whether ``list`` gives root- or rel-relative paths."""
    names = set()
    prefix = rel.strip("/") + "/" if rel.strip("/") else ""
    for entry in store.list(rel):
        entry = entry.strip("/")
        if prefix and entry.startswith(prefix):
            entry = entry[len(prefix):]
        head = entry.split("/", 1)[0]
        if head and not head.startswith("."):
            names.add(head)
    return sorted(names)


def load_run(store, prefix: str, name: str) -> Run:
    """Read one run directory (the run reader); unreadable or missing pieces become ``problems``, not errors."""
    reader = RunReader(store.child(*[p for p in prefix.split("/") if p], name), name)
    run = Run(name=name, reader=reader)
    try:
        run.info = reader.info()
    except RunError as exc:
        run.problems.append(f"run.json unreadable: {exc}")
    if not run.info:
        run.problems.append("no run.json")
        run.info = {"name": name, **_model_and_task(reader)}
    metrics = reader.metrics()
    run.evals, run.train = metrics.evals(), metrics.train()
    if not metrics.present:
        run.problems.append("no metrics.jsonl")
    if metrics.unreadable:
        run.problems.append(f"{metrics.unreadable} unreadable metrics.jsonl line(s)")  # a running job's torn last line
    if not run.evals:
        run.problems.append("no eval")
    try:
        run.timing = reader.timing()
    except RunError as exc:
        run.problems.append(f"timing.json unreadable: {exc}")
    if run.timing is None:
        run.problems.append("no timing.json")
    try:
        run.evaluations = [{"file": f"eval-{split}.json", **data} for split, data in sorted(reader.evaluations().items())]
    except RunError as exc:
        run.problems.append(str(exc))
    samples = reader.samples()
    if samples:
        run.sample_step = max(samples)
        run.sample = samples[run.sample_step]
    else:
        run.problems.append("no samples")
    if (unloadable := _checkpoints_unloadable(reader.dir)) is not None:
        run.problems.append(unloadable)
    if run.status != "finished":
        error = run.info.get("error")
        run.problems.insert(0, f"status {run.status}" + (f" ({error})" if error else ""))
    return run


def _checkpoints_unloadable(run_dir) -> str | None:
    """Why none of the run's checkpoints loads (its numbers cannot be reproduced or resumed from),
    or None when one loads or the run saved none."""
    from asaptrain.train.run_reader import CheckpointError, checkpoint_names, newest_loadable

    try:
        if checkpoint_names(run_dir):
            newest_loadable(run_dir)  # reads the newest first: one file for a sound run
    except CheckpointError as exc:
        return str(exc).replace("no checkpoint of the run loads", "no checkpoint loads", 1)
    except Exception as exc:  # the store refused the listing or a read: say so, never stop the report
        return f"no checkpoint loads: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def _model_and_task(reader: RunReader) -> dict[str, str]:
    """Model and task from config.toml, for a run whose run.json is missing."""
    try:
        cfg = reader.config_dict() or {}
    except RunError:
        return {}
    out = {}
    if cfg.get("model", {}).get("name"):
        out["model"] = cfg["model"]["name"]
    if cfg.get("data", {}).get("task"):
        out["task"] = cfg["data"]["task"]
    return out


def load_runs(store, prefix: str = "runs") -> list[Run]:
    """Every run directory directly under ``prefix``, sorted by name."""
    if not store.exists(prefix):
        return []
    return [load_run(store, prefix, name) for name in _names_under(store, prefix)]


# ----------------------------------------------------------------------------- building the report


def latest_finished(runs: list[Run]) -> dict[str, Run]:
    """The latest finished run of each model (by finish time, then name)."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.status == "finished":
            cur = best.get(run.model)
            if cur is None or (run.when, run.name) > (cur.when, cur.name):
                best[run.model] = run
    return best


def latest_per_model(runs: list[Run]) -> dict[str, Run]:
    """What the plots show: the latest finished run of each model, else its latest run of any status
    (so a long run can be watched while it trains)."""
    best = latest_finished(runs)
    for run in sorted(runs, key=lambda r: (r.when, r.name)):
        if run.model not in best or best[run.model].status != "finished":
            best[run.model] = run
    return best


def _quality_row(model: str, run: Run | None, runs: list[Run]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "run": None, "step": None, "note": None}
    row.update({k: None for k in _EVAL_KEYS})
    row["psnr_gain"] = row["ssim_gain"] = None
    if run is None:
        others = [r for r in runs if r.model == model]
        row["note"] = (f"no finished run ({', '.join(f'{r.name}: {r.status}' for r in others)})"
                       if others else "no run found")
        return row
    row["run"] = run.name
    unloadable = [p for p in run.problems if p.startswith("no checkpoint loads")]
    if unloadable:
        row["note"] = unloadable[0][:300]
    if not run.evals:
        row["note"] = "run has no eval record"
        return row
    last = run.evals[-1]
    row["step"] = last.get("step")
    for key in _EVAL_KEYS:
        row[key] = last.get(key) if key == "fid_reason" else finite(last.get(key))
    if row["fid"] is None and not row["fid_reason"]:
        row["fid_reason"] = "not computed"
    if row["psnr"] is not None and row["input_psnr"] is not None:
        row["psnr_gain"] = row["psnr"] - row["input_psnr"]
    if row["ssim"] is not None and row["input_ssim"] is not None:
        row["ssim_gain"] = row["ssim"] - row["input_ssim"]
    return row


def _speed_rows(run: Run) -> list[dict[str, Any]]:
    """One row per timed inference setting (timing.json's ``ms`` is already per image)."""
    t = run.timing or {}
    base = {"task": run.task, "model": run.model, "run": run.name, "gpu": t.get("gpu"),
            "train_images_per_s": finite(t.get("images_per_s")), "world_size": t.get("world_size"),
            "train_batch_size": t.get("batch_size"), "train_height": t.get("height"),
            "train_width": t.get("width")}
    rows = []
    for inf in t.get("inference") or []:
        rows.append({**base, "gpu": inf.get("gpu") or t.get("gpu"), "height": inf.get("height"),
                     "width": inf.get("width"), "dtype": inf.get("dtype"), "batch": inf.get("batch") or 1,
                     "ms_per_image": finite(inf.get("ms"))})
    if not rows:
        rows.append({**base, "height": None, "width": None, "dtype": None, "batch": None,
                     "ms_per_image": None})
    return rows


def _run_config(run: Run):
    """The run's Config from its config.toml, or raise ValueError saying why not."""
    from asaptrain.errors import UserError

    if run.reader is None:
        raise ValueError(f"run {run.name}: no run directory to read its config from")
    try:
        return run.reader.config()
    except UserError as exc:
        raise ValueError(f"run {run.name}: config.toml unusable ({exc})") from None


def _ratio(task: str, fast: str, slow: str, chosen: dict[str, Run], repeats: int = 10) -> dict[str, Any]:
    """slow ms / fast ms of the two runs' generators, timed side by side here at the fast run's crop size."""
    from asaptrain.errors import UserError
    from asaptrain.perf.compare import compare_generators

    out = {"task": task, "fast": fast, "slow": slow, "ratio": None, "gpu": None, "height": None,
           "width": None, "dtype": None, "fast_ms": None, "slow_ms": None, "reason": None, "settings": [],
           "method": "side by side in the report's process"}
    missing = [m for m in (fast, slow) if m not in chosen]
    if missing:
        out["reason"] = f"no finished run of {' and '.join(missing)}"
        return out
    try:
        cfgs = [_run_config(chosen[m]) for m in (fast, slow)]
        size = (cfgs[0].data.crop_height, cfgs[0].data.crop_width)
        rows = compare_generators([(chosen[fast].name, cfgs[0]), (chosen[slow].name, cfgs[1])], size,
                                  batches=(1,), repeats=repeats, warmup=1)
    except (UserError, ValueError, RuntimeError) as exc:  # a config that cannot be built or timed here
        out["reason"] = f"not timed side by side: {exc}"
        return out
    r = next(row for row in rows if row["kind"] == "ratio")
    out["settings"] = [{"gpu": r["device"], "height": r["height"], "width": r["width"], "dtype": r["dtype"],
                        "fast_ms": r["a_ms"], "slow_ms": r["b_ms"], "ratio": r["ratio"], "threads": r["threads"],
                        "ratio_q1": r["ratio_q1"], "ratio_q3": r["ratio_q3"]}]
    out.update(out["settings"][0])
    return out


def _evaluation_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per run and evaluated split, with the run's last training-time eval beside it."""
    rows = []
    for run in runs:
        last = run.evals[-1] if run.evals else {}
        for e in run.evaluations:
            rows.append({
                "run": run.name, "model": run.model, "task": run.task, "status": run.status, "split": e.get("split"),
                "images": e.get("images"), "resolution": ", ".join(e.get("resolution") or {}), "dtype": e.get("dtype"),
                "step": e.get("step"), "psnr": finite(e.get("psnr")), "ssim": finite(e.get("ssim")),
                "fid": finite(e.get("fid")), "fid_reason": e.get("fid_reason"),
                "input_psnr": finite(e.get("input_psnr")), "ms_per_image": finite(e.get("ms_per_image")),
                "device": e.get("device"), "train_step": last.get("step"), "train_psnr": finite(last.get("psnr")),
                "train_ssim": finite(last.get("ssim")), "train_fid": finite(last.get("fid")),
            })
    return rows


def _run_summary(run: Run, used: bool) -> dict[str, Any]:
    last = run.evals[-1] if run.evals else None
    return {
        "name": run.name, "model": run.model, "task": run.task, "status": run.status,
        "preset": run.info.get("preset"), "steps": run.info.get("steps"),
        "started": _iso(run.info.get("started")), "finished": _iso(run.info.get("finished")),
        "steps_done": run.info.get("steps_done"), "error": run.info.get("error"),
        "gpu": (run.timing or {}).get("gpu") or run.info.get("gpu"),
        "world_size": run.info.get("world_size"),
        "last_step": run.train[-1].get("step") if run.train else None,
        "last_eval": {k: last.get(k) for k in ("step", *_EVAL_KEYS)} if last else None,
        "train_images_per_s": finite((run.timing or {}).get("images_per_s")),
        "evaluations": run.evaluations, "sample": None, "problems": run.problems, "in_tables": used,
    }


def build_report(runs: list[Run], store_uri: str = "", prefix: str = "runs") -> dict[str, Any]:
    """The report as plain data (what report.json holds), without plots or sample copies."""
    chosen = latest_finished(runs)
    tasks = {}
    for task, models in TASK_MODELS.items():
        extra = sorted({r.model for r in runs if r.task == task and r.model not in models})
        tasks[task] = {"title": TASK_TITLES[task],
                       "rows": [_quality_row(m, chosen.get(m), runs) for m in (*models, *extra)]}
    for task in sorted({r.task for r in runs} - set(TASK_MODELS)):
        models = sorted({r.model for r in runs if r.task == task})
        tasks[task] = {"title": task, "rows": [_quality_row(m, chosen.get(m), runs) for m in models]}
    order = [m for ms in TASK_MODELS.values() for m in ms]
    speed_rows = [row for m, run in sorted(chosen.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0])) for row in _speed_rows(run)]
    used = {r.name for r in chosen.values()}
    return {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "store": store_uri, "prefix": prefix,
        "tasks": tasks,
        "speed": {"rows": speed_rows,
                  "ratios": [_ratio(t, f, s, chosen) for t, f, s in SPEED_PAIRS]},
        "evaluations": _evaluation_rows(runs),
        "runs": [_run_summary(r, r.name in used) for r in runs],
        "plots": {}, "samples": {},
    }


def _out_store(out):
    from asaptrain.data.store import Store, absolute_uri

    if not isinstance(out, (str, os.PathLike)):
        return out
    return Store.open(absolute_uri(os.fspath(out)))


def aggregate(store, out, prefix: str = "runs", plots: bool = True) -> dict[str, Any]:
    """Read every run under ``prefix`` of ``store``; write report.md/.json, PNGs and samples to ``out``.

    ``out`` is a Store or a local directory. Returns the report dict (as in report.json).
    """
    from asaptrain.report.figures import write_all
    from asaptrain.report.sweeps import copy_figures, load_sweeps

    runs = load_runs(store, prefix)
    report = build_report(runs, getattr(store, "uri", ""), prefix)
    report["sweeps"] = load_sweeps(store)
    out = _out_store(out)
    for summary, run in zip(report["runs"], runs):
        if run.sample:  # every run's latest grid, so failed and running runs can be looked at too
            dest = f"samples/{run.name}-{run.sample_step}.png"
            out.write_bytes(dest, run.reader.dir.read_bytes(run.sample))
            summary["sample"] = dest
            report["samples"][run.name] = dest
    if plots:
        report["plots"] = write_all(report, latest_per_model(runs), out)
        report["plots"].update(copy_figures(store, out, report["sweeps"]))
    out.write_text("report.md", render_markdown(report))
    out.write_text("report.json", json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return report


__all__ = ["Run", "load_run", "load_runs", "latest_finished", "latest_per_model", "build_report", "aggregate",
           "TASK_MODELS", "SPEED_PAIRS"]
