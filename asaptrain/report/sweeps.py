"""The report's sweep section: every sweep's trials, quality against ms/image, beside DeblurGAN's run.

Reads ``STORE/sweeps/NAME/sweep.json`` (what ``asaptrain tune`` writes) and its ``trials.png``
(the speed–quality plane with the front and the reference point); the aggregate report copies
the figure, and ``report/tables.py`` renders one table per sweep, newest first::

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


__all__ = ["load_sweeps", "copy_figures"]
