"""The aggregate report on hostile run folders: metrics lines that are JSON but not objects,
and a finished run none of whose checkpoints loads."""

from __future__ import annotations

import json

from asaptrain.data.store import Store
from asaptrain.report.aggregate import aggregate
from test_report import _eval, _train, write_run


def test_json_lines_that_are_not_objects_are_unreadable_lines(tmp_path):
    store = Store.open(str(tmp_path / "s"))
    write_run(store, "odd", "deblurgan", "deblur", "finished", finished="2026-11-01T12:00:00+00:00",
              records=[*_train(range(0, 11, 5), 0.5), _eval(10, 25.0, 0.8)])
    run_dir = store.child("runs", "odd")
    run_dir.write_text("metrics.jsonl", run_dir.read_text("metrics.jsonl") + "[1, 2]\nnull\n\"text\"\n7\n")
    report = aggregate(store, str(tmp_path / "out"), plots=False)
    (run,) = report["runs"]
    assert "4 unreadable metrics.jsonl line(s)" in run["problems"]
    assert run["last_eval"]["psnr"] == 25.0  # the object lines still count


def test_a_finished_run_whose_checkpoints_all_fail_to_load_is_marked(tmp_path):
    store = Store.open(str(tmp_path / "s"))
    for name, ok in (("good", True), ("broken", False)):
        write_run(store, name, "deblurgan", "deblur", "finished", records=[_eval(10, 25.0, 0.8)],
                  finished="2026-11-01T12:00:00+00:00" if ok else "2026-11-02T12:00:00+00:00")
        for stamp in ("2026-11-01_10-00-00.000000", "2026-11-01_10-05-00.000000"):
            from asaptrain.train.state import to_bytes

            data = to_bytes({"step": 10, "generator": {}}) if ok else b"not a checkpoint at all"
            store.child("runs", name).write_bytes(f"checkpoint_{stamp}/state.pt", data)
    report = aggregate(store, str(tmp_path / "out"), plots=False)
    runs = {r["name"]: r for r in report["runs"]}
    assert not any("checkpoint" in p for p in runs["good"]["problems"])
    marks = [p for p in runs["broken"]["problems"] if "checkpoint" in p]
    assert marks and "no checkpoint loads" in marks[0] and "checkpoint_2026-11-01_10-05-00.000000" in marks[0]
    row = next(r for r in report["tasks"]["deblur"]["rows"] if r["model"] == "deblurgan")
    assert row["run"] == "broken" and "no checkpoint loads" in row["note"]
    json.dumps(report)
