"""The report's figures: metrics and losses over training per task, and the speed bars.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend switch,
safe inside a Ray job with no display) and written as PNG bytes to a Store, so the report can
live on S3 as well as on disk. Called by :func:`asaptrain.report.aggregate.aggregate`; the data
comes from :func:`asaptrain.report.aggregate.build_report`::

    paths = write_all(report, latest_per_model(runs), out_store)   # {"speed": "speed.png", ...}
"""

from __future__ import annotations

import io
import math
from typing import Any

from asaptrain.report.tables import finite

try:  # figures need matplotlib; the tables (report.md, the terminal) do not
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError:  # pragma: no cover - exercised on slim GPU images only
    Figure = MaxNLocator = None

# One colour per model in every figure, so a model is recognisable across them.
MODEL_COLORS = {"asapnet": "#1f77b4", "pix2pixhd": "#ff7f0e", "deblurgan": "#2ca02c", "hybrid": "#d62728"}
# Panel order; any other "loss/..." term a run logs gets a panel too, after these.
LOSS_KEYS = ("loss/d", "loss/d_adv", "loss/d_gp", "loss/g", "loss/g_adv", "loss/g_perceptual", "loss/g_l1",
             "loss/g_fm")
_DPI = 110


def _color(model: str, i: int) -> str:
    return MODEL_COLORS.get(model, f"C{4 + i % 6}")


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in records:
        x, y = finite(rec.get("step")), finite(rec.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _smooth(ys: list[float]) -> list[float]:
    """Centred moving mean over ~1/25 of the curve (no lag, unlike an EMA): GAN losses are noisy."""
    half = max(1, len(ys) // 50)
    csum = [0.0]
    for y in ys:
        csum.append(csum[-1] + y)
    out = []
    for i in range(len(ys)):
        lo, hi = max(0, i - half), min(len(ys), i + half + 1)
        out.append((csum[hi] - csum[lo]) / (hi - lo))
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
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    fig.suptitle(f"{title}: validation metrics over training")
    legend: dict[str, Any] = {}
    inputs = None
    for ax, (key, label) in zip(fig.subplots(1, 3), panels):
        drawn = False
        for i, (model, run) in enumerate(_ordered(runs)):
            xs, ys = _series(run.evals, key)
            if xs:
                line, = ax.plot(xs, ys, marker="o", ms=4, color=_color(model, i))
                legend.setdefault(_label(model, run), line)
                drawn = True
            ixs, iys = _series(run.evals, f"input_{key}")
            if ixs and i == 0:  # every model is evaluated on the same fixed blurred subset
                inputs = ax.plot(ixs, iys, ls="--", marker="x", color="grey")[0]
                drawn = True
        if not drawn:
            reasons = {r.evals[-1].get(f"{key}_reason") for r in runs.values() if r.evals}
            reasons.discard(None)
            ax.text(0.5, 0.5, f"no {key.upper()} values" + (f"\n({'; '.join(sorted(reasons))})" if reasons else ""),
                    ha="center", va="center", transform=ax.transAxes, color="grey", wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _step_axis(ax)
        ax.set_title(label)
    if inputs is not None:
        legend["blurred input"] = inputs
    if legend:
        fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4),
                   fontsize=9, frameon=False)
    return fig


def _label(model: str, run: Any) -> str:
    return f"{model} ({run.name}" + ("" if run.status == "finished" else f", {run.status}") + ")"


def _ordered(runs: dict[str, Any]) -> list[tuple[str, Any]]:
    """Models in table order (known models first), so colours and legends read the same way."""
    order = list(MODEL_COLORS)
    return sorted(runs.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 99, kv[0]))


def _step_axis(ax) -> None:
    ax.set_xlabel("step")
    ax.set_xlim(left=0)  # training starts at 0: a lone late point is not stretched across the axis
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    ax.grid(alpha=0.3)


def losses_figure(task: str, title: str, runs: dict[str, Any]) -> Figure | None:
    """One panel per loss term (and blur strength): raw values faint, moving average solid."""
    logged = {k for r in runs.values() for rec in r.train for k in rec if k.startswith("loss/")}
    keys = [k for k in LOSS_KEYS if k in logged] + sorted(logged - set(LOSS_KEYS)) + ["blur_strength"]
    keys = [k for k in keys if any(_series(r.train, k)[0] for r in runs.values())]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.2 * rows), layout="constrained")
    long = any(len(_series(r.train, k)[0]) > 20 for r in runs.values() for k in keys if k.startswith("loss/"))
    fig.suptitle(f"{title}: training losses" + (" (faint: raw, solid: moving average)" if long else ""))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    legend: dict[str, Any] = {}
    for ax, key in zip(axes, keys):
        for i, (model, run) in enumerate(_ordered(runs)):
            xs, ys = _series(run.train, key)
            if not xs:
                continue
            c = _color(model, i)
            if len(xs) > 20 and key.startswith("loss/"):  # short curves and schedules: as they are
                ax.plot(xs, ys, color=c, alpha=0.25, lw=0.8)
                ys = _smooth(ys)
            line, = ax.plot(xs, ys, color=c, lw=1.6, marker="o" if len(xs) <= 20 else None, ms=3)
            legend.setdefault(_label(model, run), line)
        ax.set_title(key)
        _step_axis(ax)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 4),
               fontsize=9, frameon=False)
    return fig


def _bars(ax, labels: list[str], values: list[float], colors: list[str], unit: str,
          hatches: list[str] | None = None) -> None:
    bars = ax.barh(range(len(values)), values, color=colors, edgecolor="white",
                   hatch=hatches)  # hatched = bf16, so the two precisions never read as two models
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.invert_yaxis()  # first row on top, as in the table
    top = max(values) if values else 1
    for bar, v in zip(bars, values):
        ax.text(bar.get_width() + top * 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.2f} {unit}",
                va="center", fontsize=8)
    ax.set_xlim(0, top * 1.25)
    ax.grid(axis="x", alpha=0.3)


def _workers(n: Any) -> str:
    return "? workers" if not n else f"{n} worker" + ("s" if n != 1 else "")


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
    said = [f"{r['fast']} {r['ratio']:.2f}× as fast as {r['slow']} ({r['height']}x{r['width']})"
            if r["ratio"] is not None else f"{r['fast']} vs {r['slow']}: not compared"
            for r in report["speed"]["ratios"]]
    fig.suptitle("Speed, side by side in one process  —  " + ";  ".join(said))
    models = sorted({r["model"] for r in rows})
    if inf:
        _bars(ax1, [f"{r['model']} {r['height']}x{r['width']} {r['dtype']}\n{r['gpu']}" for r in inf],
              [r["ms_per_image"] for r in inf], [_color(r["model"], models.index(r["model"])) for r in inf], "ms",
              ["//" if r["dtype"] == "bf16" else "" for r in inf])
    # Each bar is its run's own timing, taken in another process at another time: the ratios in
    # the title come from the side-by-side measurement, never from dividing these bars.
    ax1.set_title("Inference, batch 1, each run's own timing (ms/image, lower is better)")
    if train:
        _bars(ax2, [f"{r['model']} ({_workers(r['world_size'])})\n{r['gpu']}" for r in train],
              [r["train_images_per_s"] for r in train],
              [_color(r["model"], models.index(r["model"])) for r in train], "img/s")
    ax2.set_title("Training throughput (images/s, higher is better)")
    return fig


def write_all(report: dict[str, Any], chosen: dict[str, Any], out) -> dict[str, str]:
    """Draw every figure the data allows; write PNGs to ``out`` (a Store); return name -> path."""
    written = {}
    if Figure is None:
        print("[asaptrain] matplotlib is not installed: the report has its tables but no figures "
              "(pip install matplotlib)", flush=True)
        return written
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
