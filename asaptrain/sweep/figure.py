"""trials.png: a sweep's trials on the speed–quality plane, and their validation curves.

Left: the best validation metric of every trial against its generator's ms/image (timed side
by side after the sweep), the front (trials no other trial beats on both axes) joined by a
line, DeblurGAN's reference run on the same axes, the line a trial must be left of to be
``min_speedup`` times faster than it, and the trial written as best.toml. Right: the metric
over training steps per trial. Drawn with matplotlib's object API (no pyplot, no display)::

    png = trials_png(summary, {"trial-ab12": [eval records, ...]})    # bytes, or None
"""

from __future__ import annotations

import io
import math

_FRONT, _OTHER, _REFERENCE, _BEST = "#d62728", "#9e9e9e", "#2ca02c", "#ff7f0e"


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _speed_axes(ax, summary: dict) -> None:
    """Draw the speed–quality plane of ``summary`` (sweep.json's content) on ``ax``."""
    key = summary["metric"]
    label = key.removeprefix("val_").upper()
    speed, ref = summary.get("speed") or {}, summary.get("reference") or {}
    front = summary.get("front") or []
    best = (summary.get("best") or {}).get("trial")
    pts = [(t["trial"], _num(t.get("ms_per_image")), _num(t.get(f"best_{key}"))) for t in summary["trials"]]
    pts = [p for p in pts if p[1] is not None and p[2] is not None]
    for tid, ms, q in pts:
        on = tid in front
        ax.scatter([ms], [q], s=60 if on else 36, color=_FRONT if on else _OTHER, zorder=3,
                   edgecolors="black" if tid == best else "none", linewidths=1.5)
        ax.annotate(str(tid)[-5:], (ms, q), textcoords="offset points", xytext=(4, 4), fontsize=7)
    line = sorted((ms, q) for tid, ms, q in pts if tid in front)
    if line:
        ax.plot(*zip(*line), color=_FRONT, lw=1.2, label="front (no trial beats these on both)")
    if best and any(p[0] == best for p in pts):
        _, ms, q = next(p for p in pts if p[0] == best)
        below = (summary.get("selection") or {}).get("below_speedup")
        ax.scatter([ms], [q], marker="*", s=260, color=_BEST, edgecolors="black", zorder=4,
                   label="best.toml" + (" (BELOW THE SPEEDUP)" if below else ""))
    ref_ms, ref_q = _num(ref.get("ms_per_image")), _num(ref.get(f"best_{key}"))
    if ref_ms is not None and ref_q is not None:
        ax.scatter([ref_ms], [ref_q], marker="s", s=80, color=_REFERENCE, zorder=4,
                   label=f"{ref.get('preset')} (reference run {ref.get('run')})")
    elif ref_ms is not None:
        ax.axvline(ref_ms, color=_REFERENCE, lw=1.2, label=f"{ref.get('preset')} ms/image (no {label})")
    need = _num((summary.get("selection") or {}).get("min_speedup"))
    if ref_ms is not None and need:
        ax.axvspan(0, ref_ms / need, color=_REFERENCE, alpha=0.07, lw=0)
        ax.axvline(ref_ms / need, color=_REFERENCE, ls="--", lw=1,
                   label=f"{need:g}x faster than {ref.get('preset')} (shaded: fast enough)")
    if _num(ref.get("input_psnr")) is not None and key == "val_psnr":
        ax.axhline(ref["input_psnr"], color="grey", ls=":", lw=1, label="blurred input")
    where = (f"{speed.get('device')}, {speed.get('threads')} thread(s), {speed.get('height')}x{speed.get('width')} "
             f"{speed.get('dtype')}, batch {speed.get('batch')}") if speed.get("device") else "not timed"
    ax.set_xlabel(f"generator ms/image ({where})")
    ax.set_ylabel(f"best validation {label}")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if speed.get("error"):
        ax.text(0.5, 0.5, f"speed not measured:\n{speed['error']}", transform=ax.transAxes, ha="center",
                va="center", color="grey", wrap=True, fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def trials_png(summary: dict, histories: dict[str, list[dict]]) -> bytes | None:
    """The two-panel figure as PNG bytes; None when matplotlib is not installed."""
    try:  # imported here: the sweep's tables and best.toml do not need matplotlib
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - exercised on slim images only
        print("[asaptrain] matplotlib is not installed: no trials.png (pip install matplotlib)", flush=True)
        return None
    key = summary["metric"].removeprefix("val_")
    fig = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    _speed_axes(left, summary)
    left.set_title("speed and quality per trial")
    for run, records in sorted(histories.items()):
        if records:
            right.plot([r["step"] for r in records], [r.get(key) for r in records], marker="o", label=run)
    right.set_xlabel("step")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel(f"validation {key.upper()}")
    right.set_title("validation over training")
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=7)
    fig.suptitle(f"sweep {summary['name']}: " + ((summary.get("selection") or {}).get("message") or ""),
                 fontsize=9, wrap=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


__all__ = ["trials_png"]
