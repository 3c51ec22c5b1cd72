"""The report's tables as text cells, which report.md and the terminal (rich) both render, so
the two always agree; and report.md itself.

    for table in tables(report):      # {"title", "headers", "rows", "notes"}
        ...
    text = render_markdown(report)

The report dict comes from :func:`asaptrain.report.aggregate.build_report`; no matplotlib here.
"""

from __future__ import annotations

import math
from typing import Any


def finite(value: Any) -> float | None:
    """A metric as float, or None for missing / NaN / inf (never plotted or tabled as a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _fid(row: dict[str, Any]) -> str:
    return _fmt(row["fid"], 2) if row["fid"] is not None else f"n/a ({row['fid_reason'] or 'no eval'})"


def ratio_text(r: dict[str, Any]) -> str:
    """One sentence on a speed ratio (each shared GPU and resolution), or on why it was not computed."""
    if r["ratio"] is None:
        return f"{r['fast']} vs {r['slow']}: not computed — {r['reason']}"
    groups: dict[tuple, list[str]] = {}
    for x in r.get("settings") or [r]:
        if x["ratio"]:
            how = f"{x['ratio']:.2f}× as fast" if x["ratio"] >= 1 else f"{1 / x['ratio']:.2f}× slower"
            groups.setdefault((x["gpu"], x["height"], x["width"]), []).append(
                f"{how} in {x['dtype']} ({x['fast_ms']:.2f} vs {x['slow_ms']:.2f} ms/image)")
    how = f" (timed {r['method']})" if r.get("method") else ""
    return "; ".join(f"{r['fast']} vs {r['slow']} on {gpu} at {h}x{w}: " + ", ".join(parts)
                     for (gpu, h, w), parts in groups.items()) + how


def tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's tables as text cells: ``[{"title", "headers", "rows", "notes"}]``.

    Markdown and the rich terminal view both render these, so they always agree.
    """
    out = []
    for task, t in report["tasks"].items():
        deblur = any(r["input_psnr"] is not None for r in t["rows"]) or task == "deblur"
        headers = ["Model", "FID ↓", "PSNR (dB) ↑", "SSIM ↑"]
        if deblur:
            headers += ["Input PSNR", "Input SSIM", "PSNR gain", "SSIM gain"]
        headers += ["Step", "Run"]
        rows = []
        for r in t["rows"]:
            cells = [r["model"], _fid(r) if r["run"] and r["step"] is not None else "—",
                     _fmt(r["psnr"], 2), _fmt(r["ssim"], 3)]
            if deblur:
                cells += [_fmt(r["input_psnr"], 2), _fmt(r["input_ssim"], 3),
                          _fmt(r["psnr_gain"], 2, True), _fmt(r["ssim_gain"], 3, True)]
            cells += [str(r["step"]) if r["step"] is not None else "—",
                      r["run"] + (f" ({r['note']})" if r["note"] else "") if r["run"] else r["note"]]
            rows.append(cells)
        out.append({"title": f"{t['title']}: quality (last evaluation of the latest finished run)",
                    "headers": headers, "rows": rows, "notes": []})
    if report.get("evaluations"):
        out.append(evaluation_table(report["evaluations"]))
    speed = report["speed"]
    out.append({
        "title": "Speed: inference at batch 1, training throughput",
        "headers": ["Task", "Model", "GPU", "Resolution", "dtype", "Inference ms/image",
                    "Train images/s", "Workers", "Run"],
        "rows": [[r["task"], r["model"], str(r["gpu"] or "—"),
                  f"{r['height']}x{r['width']}" if r["height"] else "—", r["dtype"] or "—",
                  _fmt(r["ms_per_image"], 2), _fmt(r["train_images_per_s"], 1),
                  str(r["world_size"] or "—"), r["run"]] for r in speed["rows"]],
        "notes": [ratio_text(r) for r in speed["ratios"]],
    })
    out.append({
        "title": "All runs",
        "headers": ["Run", "Model", "Task", "Status", "In tables", "Last step", "Last eval step", "PSNR",
                    "Missing / notes"],
        "rows": [[r["name"], r["model"], r["task"], r["status"], "yes" if r["in_tables"] else "",
                  str(r["last_step"] if r["last_step"] is not None else "—"),
                  str(r["last_eval"]["step"]) if r["last_eval"] else "—",
                  _fmt(finite((r["last_eval"] or {}).get("psnr")), 2),
                  "; ".join(r["problems"]) or "—"] for r in report["runs"]],
        "notes": ["In tables: the latest finished run of its model, used in the tables above."],
    })
    return out + sweep_tables(report.get("sweeps") or [])


def evaluation_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`asaptrain evaluate`'s whole-split scores, each beside its run's last training-time eval."""
    def fid(r: dict[str, Any]) -> str:
        return _fmt(r["fid"], 2) if r["fid"] is not None else f"n/a ({r['fid_reason'] or 'not computed'})"

    return {
        "title": "Whole-split evaluations (asaptrain evaluate) beside the training-time metrics",
        "headers": ["Run", "Model", "Split", "Images", "Resolution", "dtype", "Step", "FID ↓", "PSNR (dB) ↑", "SSIM ↑",
                    "Input PSNR", "ms/image", "Train step", "Train FID", "Train PSNR", "Train SSIM"],
        "rows": [[r["run"], r["model"], str(r["split"]), str(r["images"]), r["resolution"] or "—", r["dtype"] or "—",
                  str(r["step"] if r["step"] is not None else "—"), fid(r), _fmt(r["psnr"], 2), _fmt(r["ssim"], 3),
                  _fmt(r["input_psnr"], 2), _fmt(r["ms_per_image"], 1),
                  str(r["train_step"] if r["train_step"] is not None else "—"), _fmt(r["train_fid"], 2),
                  _fmt(r["train_psnr"], 2), _fmt(r["train_ssim"], 3)] for r in rows],
        "notes": ["Whole split at stored size, 8-bit outputs, per-image means (README: How evaluate computes each "
                  "number); training-time metrics are on centre crops of eval.images validation images.",
                  *sorted({f"ms/image on {r['device']}" for r in rows if r["device"]})],
    }


def sweep_tables(sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table per sweep (``report/sweeps.py`` reads them): each trial's best metric, ms/image,
    GFLOPs and speedup over DeblurGAN's reference run, which is the first row."""
    out = []
    for s in sweeps:
        if "problem" in s:
            out.append({"title": f"Sweep {s['name']}", "headers": ["Problem"], "rows": [[s["problem"]]], "notes": []})
            continue
        key, speed, ref = s["metric"], s.get("speed") or {}, s.get("reference") or {}
        best = (s.get("best") or {}).get("trial")

        def cells(name: str, row: dict, speedup: str, front: str, chosen: str, status: str) -> list[str]:
            return [name, _fmt(finite(row.get(f"best_{key}")), 2), _fmt(finite(row.get("ms_per_image")), 2),
                    _fmt(finite(row.get("gflops")), 3), speedup, front, chosen, str(row.get("steps", "—")), status]

        rows = [cells(f"{ref.get('preset')} (reference run {ref.get('run')})", ref, "1.00×", "", "",
                      "reused" if ref.get("reused") else (ref.get("error") or "trained"))] if ref else []
        for t in sorted(s["trials"], key=lambda t: (finite(t.get("ms_per_image")) is None, t.get("ms_per_image") or 0)):
            up = finite(t.get("speedup"))
            rows.append(cells(str(t["trial"]), t, "—" if up is None else f"{up:.2f}×", "yes" if t.get("on_front") else "",
                              "yes" if t["trial"] == best else "", t.get("status") or "—"))
        if speed.get("device"):
            notes = [f"ms/image: every generator timed side by side in one process after the sweep, on "
                     f"{speed['device']} ({speed.get('threads')} threads), {speed.get('height')}x{speed.get('width')} "
                     f"{speed.get('dtype')}, batch {speed.get('batch')}."]
        else:
            notes = [f"speed not measured: {speed.get('error') or 'no timing in this sweep.json'}"]
        if (s.get("selection") or {}).get("message"):
            notes.append(s["selection"]["message"])
        out.append({"title": f"Sweep {s['name']}: {key.removeprefix('val_').upper()} against ms/image "
                             f"(front: no other trial beats it on both)",
                    "headers": ["Trial", f"Best {key}", "ms/image", "GFLOPs", "Speedup vs reference", "Front",
                                "best.toml", "Steps", "Status"],
                    "rows": rows, "notes": notes})
    return out


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: tables, speed ratios, plots and sample grids."""
    parts = [f"# asaptrain report\n\nStore `{report['store']}`, prefix `{report['prefix']}`, "
             f"{len(report['runs'])} run(s); generated {report['generated']}.\n"]
    for table in tables(report):
        parts.append(f"## {table['title']}\n\n{_md_table(table['headers'], table['rows'])}\n")
        parts += [f"- {note}" for note in table["notes"]]
        if table["notes"]:
            parts.append("")
    plots = report.get("plots") or {}
    if plots:
        parts.append("## Plots\n")
        parts += [f"![{name}]({path})\n" for name, path in plots.items()]
    if report.get("samples"):
        parts.append("## Samples (rows: input | output | target; latest grid of each run)\n")
        parts += [f"### {run}\n\n![{run}]({path})\n" for run, path in report["samples"].items()]
    return "\n".join(parts).rstrip() + "\n"


__all__ = ["tables", "sweep_tables", "evaluation_table", "render_markdown", "ratio_text", "finite"]
