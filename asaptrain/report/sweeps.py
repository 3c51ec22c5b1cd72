"""The report's sweep section: every sweep's trials, quality against ms/image, beside DeblurGAN's run.

Reads ``STORE/sweeps/NAME/sweep.json`` (what ``asaptrain tune`` writes) and its ``trials.png``
(the speed–quality plane with the front and the reference point); the aggregate report copies
the figure and renders one table per sweep, newest first, through :func:`sweep_tables`::

    report["sweeps"] = load_sweeps(store)
    report["plots"].update(copy_figures(store, out, report["sweeps"]))
"""

from __future__ import annotations

from typing import Any

from asaptrain.sweep.tune import SWEEPS_PREFIX


def load_sweeps(store) -> list[dict[str, Any]]:
    """Every readable sweep.json under ``sweeps/``, newest first; an unreadable one is listed with its problem."""
    if not store.exists(SWEEPS_PREFIX):
        return []
    out = []
    for entry in store.child(SWEEPS_PREFIX).list(""):
        name = entry.rstrip("/").split("/")[-1]
        rel = f"{SWEEPS_PREFIX}/{name}/sweep.json"
        if not store.exists(rel):
            continue  # a sweep still running, or the references' folder
        try:
            summary = store.read_json(rel)
        except ValueError as exc:
            summary = {"problem": f"sweep.json unreadable: {exc}"}
        if not isinstance(summary, dict) or not isinstance(summary.get("trials"), list):
            summary = {"problem": "sweep.json has no list of trials"}
        out.append({**summary, "name": name})
    return sorted(out, key=lambda s: (str(s.get("finished") or ""), s["name"]), reverse=True)


def copy_figures(store, out, sweeps: list[dict[str, Any]]) -> dict[str, str]:
    """Copy each sweep's trials.png into the report (``sweep-NAME.png``); returns plot name -> path."""
    written = {}
    for s in sweeps:
        src = f"{SWEEPS_PREFIX}/{s['name']}/trials.png"
        if "problem" not in s and store.exists(src):
            out.write_bytes(f"sweep-{s['name']}.png", store.read_bytes(src))
            written[f"sweep {s['name']}: quality against ms/image"] = f"sweep-{s['name']}.png"
    return written


def _fmt(value: Any, spec: str) -> str:
    return "—" if not isinstance(value, (int, float)) or isinstance(value, bool) else format(value, spec)


def sweep_tables(sweeps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table per sweep in the ``{"title", "headers", "rows", "notes"}`` form of report/plots.py."""
    tables = []
    for s in sweeps:
        if "problem" in s:
            tables.append({"title": f"Sweep {s['name']}", "headers": ["Problem"], "rows": [[s["problem"]]],
                           "notes": []})
            continue
        key, speed, ref = s["metric"], s.get("speed") or {}, s.get("reference") or {}
        best = (s.get("best") or {}).get("trial")
        rows = []
        if ref:
            rows.append([f"{ref.get('preset')} (reference run {ref.get('run')})", _fmt(ref.get(f"best_{key}"), ".2f"),
                         _fmt(ref.get("ms_per_image"), ".2f"), _fmt(ref.get("gflops"), ".3f"), "1.00×", "", "",
                         str(ref.get("steps", "—")), "reused" if ref.get("reused") else (ref.get("error") or "trained")])
        for t in sorted(s["trials"], key=lambda t: (t.get("ms_per_image") is None, t.get("ms_per_image") or 0)):
            rows.append([str(t["trial"]), _fmt(t.get(f"best_{key}"), ".2f"), _fmt(t.get("ms_per_image"), ".2f"),
                         _fmt(t.get("gflops"), ".3f"),
                         _fmt(t.get("speedup"), ".2f") + ("×" if t.get("speedup") is not None else ""),
                         "yes" if t.get("on_front") else "", "yes" if t["trial"] == best else "",
                         str(t.get("steps")), t.get("status") or "—"])
        where = (f"{speed.get('device')} ({speed.get('threads')} threads), {speed.get('height')}x{speed.get('width')} "
                 f"{speed.get('dtype')}, batch {speed.get('batch')}")
        notes = [f"ms/image: every generator timed side by side in one process after the sweep, on {where}."
                 if speed.get("device") else f"speed not measured: {speed.get('error') or 'no timing in this sweep.json'}"]
        if (s.get("selection") or {}).get("message"):
            notes.append(s["selection"]["message"])
        tables.append({
            "title": f"Sweep {s['name']}: {key.removeprefix('val_').upper()} against ms/image "
                     f"(front: no other trial beats it on both)",
            "headers": ["Trial", f"Best {key}", "ms/image", "GFLOPs", "Speedup vs reference", "Front", "best.toml",
                        "Steps", "Status"],
            "rows": rows, "notes": notes,
        })
    return tables


__all__ = ["load_sweeps", "copy_figures", "sweep_tables"]
