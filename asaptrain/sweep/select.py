"""Which trial a sweep keeps: the best quality among those fast enough, and the speed–quality front.

Pure functions over ``sweep.json``'s trial rows (no Ray, no torch), so the choice can be
checked on a hand-made summary::

    best, selection = choose(summary["trials"], "val_psnr", reference_ms=6.2, min_speedup=2.5)
    ids = front(summary["trials"], "val_psnr")     # trials no other trial beats on both axes
    header = best_toml_header(summary)           # the comment block on top of best.toml

A trial's speedup is DeblurGAN's reference generator's ms/image over the trial's, both timed
side by side at one size on one device (``sweep.speed``). The chosen trial is the best-quality
one whose speedup is at least ``min_speedup``; when none is, it is the best-quality trial of
all, marked ``below_speedup`` so nobody takes it for a fast one.
"""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def speedup(trial: dict, reference_ms: float | None) -> float | None:
    """reference ms / trial ms (how many times faster than DeblurGAN), or None if either is unknown."""
    ms, ref = _number(trial.get("ms_per_image")), _number(reference_ms)
    return ref / ms if ms and ref else None


def front(trials: list[dict], key: str) -> list[str]:
    """Ids of the trials that no other trial dominates, fastest first.

    A trial is dominated when another one is at least as good on both axes (``best_KEY``
    higher or equal, ``ms_per_image`` lower or equal) and better on one. Trials without a
    finite metric or time are on no front.
    """
    points = [(t["trial"], _number(t.get(f"best_{key}")), _number(t.get("ms_per_image"))) for t in trials]
    points = [(tid, q, ms) for tid, q, ms in points if q is not None and ms is not None]

    def beaten(q: float, ms: float) -> bool:
        return any(oq >= q and oms <= ms and (oq > q or oms < ms) for _, oq, oms in points)

    return [tid for tid, q, ms in sorted(points, key=lambda p: (p[2], -p[1])) if not beaten(q, ms)]


def choose(trials: list[dict], key: str, reference_ms: float | None,
           min_speedup: float) -> tuple[dict | None, dict[str, Any]]:
    """The trial to write as best.toml, and ``selection`` (what sweep.json says about the choice).

    Sets ``speedup`` on every trial row. Among trials with a finite ``best_KEY``: the best one
    with ``speedup >= min_speedup``; when none qualifies (or no speed is known), the best one
    overall with ``below_speedup`` True. Ties in quality go to the faster trial.
    """
    for t in trials:
        t["speedup"] = speedup(t, reference_ms)
    scored = [t for t in trials if _number(t.get(f"best_{key}")) is not None]
    fast = [t for t in scored if t["speedup"] is not None and t["speedup"] >= min_speedup]

    def rank(t: dict) -> tuple[float, float]:
        return t[f"best_{key}"], -(_number(t.get("ms_per_image")) or math.inf)

    selection: dict[str, Any] = {"min_speedup": min_speedup, "fast_enough": [t["trial"] for t in fast],
                                 "below_speedup": None, "message": None}
    if not scored:
        selection["message"] = f"no trial reported a finite {key}: nothing to choose"
        return None, selection
    if fast:
        best = max(fast, key=rank)
        selection["below_speedup"] = False
        selection["message"] = (f"trial {best['trial']}: best {key} of the {len(fast)} trial(s) at least "
                                f"{min_speedup:g}x faster than the reference ({best['speedup']:.2f}x)")
    else:
        best = max(scored, key=rank)
        selection["below_speedup"] = True
        known = [t["speedup"] for t in scored if t["speedup"] is not None]
        if reference_ms is None or not known:
            why = "the trials' or the reference's speed was not measured"
        else:
            why = f"the fastest is {max(known):.2f}x"
        selection["message"] = (f"BELOW THE SPEEDUP: no trial is at least {min_speedup:g}x faster than the "
                                f"reference ({why}); trial {best['trial']} is the best {key} of all, "
                                + (f"{best['speedup']:.2f}x" if best["speedup"] is not None else "speed unknown"))
    return {**best, "below_speedup": selection["below_speedup"]}, selection


def best_toml_header(summary: dict) -> str:
    """The comment lines on top of best.toml: which trial, its quality and speed, and the verdict."""
    best, key = summary["best"], summary["metric"]
    speed = summary.get("speed") or {}
    ref = summary.get("reference") or {}
    where = (f"on {speed.get('device')} ({speed.get('threads')} threads) at {speed.get('height')}x"
             f"{speed.get('width')} {speed.get('dtype')}, batch {speed.get('batch')}") if speed.get("device") else ""
    lines = [f"Best config of sweep {summary['name']}: trial {best['trial']} (asaptrain train --config THIS_FILE).",
             f"{key} {_fmt(best.get(f'best_{key}'), '.3f')} after {best.get('steps')} steps; "
             f"{_fmt(best.get('ms_per_image'), '.2f')} ms/image, {_fmt(best.get('gflops'), '.3f')} GFLOPs {where}".rstrip()]
    if ref:
        lines.append(f"Reference {ref.get('preset')} (run {ref.get('run')}): {key} {_fmt(ref.get(f'best_{key}'), '.3f')}, "
                     f"{_fmt(ref.get('ms_per_image'), '.2f')} ms/image; this trial is "
                     f"{_fmt(best.get('speedup'), '.2f')}x as fast (required: {summary['selection']['min_speedup']:g}x).")
    lines.append(summary["selection"]["message"])
    return "".join(f"# {line}\n" for line in lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    number = _number(value)
    return "?" if number is None else format(number, spec)


__all__ = ["choose", "front", "speedup", "best_toml_header"]
