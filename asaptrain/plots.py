"""The report's figures: quality metrics and losses over training per task, and speed bars.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
backend switch, safe inside a Ray job with no display) and written as PNG bytes to a
Store, so the report can live on S3 as well as on disk. Called by :func:`asaptrain.report.aggregate`.
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.figure import Figure

# One colour per model in every figure, so a model is recognisable across them.
MODEL_COLORS = {"asapnet": "#1f77b4", "pix2pixhd": "#ff7f0e", "deblurgan": "#2ca02c", "hybrid": "#d62728"}
LOSS_KEYS = ("loss/d", "loss/g", "loss/g_adv", "loss/g_perceptual", "loss/g_l1", "loss/g_fm",
             "blur_strength")
_DPI = 110


def _color(model: str, i: int) -> str:
    return MODEL_COLORS.get(model, f"C{4 + i % 6}")


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in records:
        x, y = _num(rec.get("step")), _num(rec.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _smooth(ys: list[float], points: int) -> list[float]:
    """Exponential moving average over roughly 1/20 of the curve: GAN losses are noisy."""
    alpha = min(1.0, 20.0 / max(points, 1))
    out, acc = [], None
    for y in ys:
        acc = y if acc is None else alpha * y + (1 - alpha) * acc
        out.append(acc)
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def metrics_figure(task: str, title: str, runs: dict[str, Any]) -> Figure | None:
    """PSNR, SSIM and FID against training step, one line per model; None when no evals."""
    panels = [("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"), ("fid", "FID ↓")]
    if not any(run.evals for run in runs.values()):
        return None
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    fig.suptitle(f"{title}: validation metrics over training")
    for ax, (key, label) in zip(fig.subplots(1, 3), panels):
        drawn = False
        for i, (model, run) in enumerate(sorted(runs.items())):
            xs, ys = _series(run.evals, key)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, color=_color(model, i), label=f"{model} ({run.name})")
                drawn = True
            ixs, iys = _series(run.evals, f"input_{key}")
            if ixs and model == sorted(runs)[0]:
                ax.plot(ixs, iys, ls="--", color="grey", label="blurred input")
                drawn = True
        if not drawn:
            reasons = {r.evals[-1].get(f"{key}_reason") for r in runs.values() if r.evals}
            reasons.discard(None)
            ax.text(0.5, 0.5, f"no {key.upper()} values" + (f"\n({'; '.join(sorted(reasons))})" if reasons else ""),
                    ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    return fig


def losses_figure(task: str, title: str, runs: dict[str, Any]) -> Figure | None:
    """One panel per loss term (and blur strength): raw values faint, moving average solid."""
    keys = [k for k in LOSS_KEYS if any(_series(r.train, k)[0] for r in runs.values())]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.2 * rows), layout="constrained")
    fig.suptitle(f"{title}: training losses (faint: raw, solid: moving average)")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        for i, (model, run) in enumerate(sorted(runs.items())):
            xs, ys = _series(run.train, key)
            if not xs:
                continue
            c = _color(model, i)
            ax.plot(xs, ys, color=c, alpha=0.25, lw=0.8)
            ax.plot(xs, _smooth(ys, len(ys)), color=c, lw=1.6, label=model)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig


def _bars(ax, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:
    bars = ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()  # first row on top, as in the table
    top = max(values) if values else 1
    for bar, v in zip(bars, values):
        ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.2f} {unit}",
                va="center", fontsize=8)
    ax.set_xlim(0, top * 1.25)
    ax.grid(axis="x", alpha=0.3)


def speed_figure(report: dict[str, Any]) -> Figure | None:
    """Inference ms/image (per GPU and resolution) and training images/s, as horizontal bars."""
    rows = report["speed"]["rows"]
    inf = [r for r in rows if r["ms_per_image"] is not None]
    seen, train = set(), []
    for r in rows:
        if r["train_images_per_s"] is not None and r["run"] not in seen:
            seen.add(r["run"])
            train.append(r)
    if not inf and not train:
        return None
    height = 1.2 + 0.35 * max(len(inf), len(train), 2)
    fig = Figure(figsize=(13, height), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ratios = [r for r in report["speed"]["ratios"] if r["ratio"] is not None]
    fig.suptitle("Speed" + ("  —  " + ";  ".join(f"{r['fast']}: {r['ratio']:.2f}× {r['slow']}'s speed"
                                                  for r in ratios) if ratios else ""))
    models = sorted({r["model"] for r in rows})
    if inf:
        _bars(ax1, [f"{r['model']} {r['height']}x{r['width']} {r['dtype']}\n{r['gpu']}" for r in inf],
              [r["ms_per_image"] for r in inf], [_color(r["model"], models.index(r["model"])) for r in inf], "ms")
    ax1.set_title("Inference, batch 1 (ms/image, lower is better)")
    if train:
        _bars(ax2, [f"{r['model']} ({r['world_size'] or '?'} workers)\n{r['gpu']}" for r in train],
              [r["train_images_per_s"] for r in train],
              [_color(r["model"], models.index(r["model"])) for r in train], "img/s")
    ax2.set_title("Training throughput (images/s, higher is better)")
    return fig


def write_all(report: dict[str, Any], chosen: dict[str, Any], out) -> dict[str, str]:
    """Draw every figure the data allows; write PNGs to ``out`` (a Store); return name -> path."""
    written = {}
    for task, t in report["tasks"].items():
        runs = {m: r for m, r in chosen.items() if r.task == task}
        for kind, make in (("metrics", metrics_figure), ("losses", losses_figure)):
            fig = make(task, t["title"], runs) if runs else None
            if fig is not None:
                path = f"{kind}-{task}.png"
                out.write_bytes(path, _png(fig))
                written[f"{kind} ({task})"] = path
    fig = speed_figure(report)
    if fig is not None:
        out.write_bytes("speed.png", _png(fig))
        written["speed"] = "speed.png"
    return written


__all__ = ["metrics_figure", "losses_figure", "speed_figure", "write_all", "MODEL_COLORS"]
