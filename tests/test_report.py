"""The aggregate report from fake run directories: tables, ratios, JSON, PNGs, S3 and the CLI."""

from __future__ import annotations

import io
import json
import math

import pytest
from click.testing import CliRunner
from PIL import Image

from asaptrain.data.store import Store
from asaptrain.report.tables import tables
from asaptrain.report.aggregate import aggregate, build_report, load_runs

H100 = "NVIDIA H100 80GB HBM3"


def _png(color, size=(96, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _train(steps, base, scale=1.0):
    return [{"step": s, "kind": "train", "loss/d": base + 0.3 * math.sin(s) * scale,
             "loss/g": 2 * base - s / 200, "loss/g_adv": base, "loss/g_perceptual": 1 / (1 + s / 50),
             "images_per_s": 40.0, "lr/g": 1e-4} for s in steps]


def _eval(step, psnr, ssim, fid=None, reason=None, input_psnr=None, input_ssim=None):
    return {"step": step, "kind": "eval", "psnr": psnr, "ssim": ssim, "fid": fid, "fid_reason": reason,
            "input_psnr": input_psnr, "input_ssim": input_ssim}


def _timing(gpu, h, w, ms, images_per_s):
    return {"images_per_s": images_per_s, "step_ms": {"total": 100.0}, "gpu": gpu, "gpu_count": 1,
            "world_size": 1, "batch_size": 4, "height": h, "width": w,
            "inference": [{"height": h, "width": w, "batch": 1, "ms": ms, "dtype": "fp32", "gpu": gpu},
                          {"height": h, "width": w, "batch": 1, "ms": ms / 2, "dtype": "bf16", "gpu": gpu}]}


def write_run(store, name, model, task, status, *, records=(), timing=None, samples=(), finished=None,
              config=None):
    """``config``: config.toml's text [default: the model's smoke preset, whose generator the report times]."""
    from asaptrain.config.io import apply_overrides, to_toml
    from asaptrain.config.presets import get_preset

    d = store.child("runs", name)
    d.write_json("run.json", {"name": name, "preset": f"{model}-smoke", "model": model, "task": task,
                              "status": status, "started": "2026-11-01T10:00:00+00:00",
                              "finished": finished, "steps": 40, "world_size": 1, "gpu": "cpu"})
    if config is None:  # narrower than the smoke preset: each report times two generators 10 times
        config = to_toml(apply_overrides(get_preset(f"{model}-smoke"), ["model.ngf=4", "model.lowres_max_channels=8"]))
    d.write_text("config.toml", config)
    d.write_text("metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    if timing:
        d.write_json("timing.json", timing)
    for step, color in samples:
        d.write_bytes(f"samples/{step:08d}.png", _png(color))


def make_runs(store):
    steps = range(0, 41, 5)
    write_run(store, "asapnet-a", "asapnet", "labels2photo", "finished", finished="2026-11-01T11:00:00+00:00",
              records=[*_train(steps, 1.0), _eval(20, 14.1, 0.41, 80.5), _eval(40, 15.2, 0.45, 70.25)],
              timing=_timing(H100, 256, 512, 3.0, 120.0), samples=[(20, "red"), (40, "blue")])
    write_run(store, "pix2pixhd-old", "pix2pixhd", "labels2photo", "finished", finished="2026-10-01T11:00:00+00:00",
              records=[*_train(steps, 1.5), _eval(40, 9.0, 0.2, 200.0)], timing=_timing(H100, 256, 512, 30.0, 10.0))
    write_run(store, "pix2pixhd-b", "pix2pixhd", "labels2photo", "finished", finished="2026-11-02T11:00:00+00:00",
              records=[*_train(steps, 1.5), _eval(40, 16.0, 0.5, 60.0)], timing=_timing(H100, 256, 512, 24.0, 30.0),
              samples=[(40, "green")])
    write_run(store, "deblurgan-c", "deblurgan", "deblur", "finished", finished="2026-11-01T12:00:00+00:00",
              records=[*_train(steps, 0.5), _eval(40, 27.5, 0.85, None, "no Inception weights", 24.0, 0.75)],
              timing=_timing(H100, 256, 256, 8.0, 50.0), samples=[(40, "yellow")])
    write_run(store, "hybrid-failed", "hybrid", "deblur", "failed", records=_train(range(0, 11, 5), 0.7))
    store.child("runs", "hybrid-failed").write_json("run.json", {
        **store.child("runs", "hybrid-failed").read_json("run.json"), "error": "WorkerGroupError: OOM"})
    write_run(store, "hybrid-noeval", "hybrid", "deblur", "finished", finished="2026-11-03T12:00:00+00:00",
              records=_train(steps, 0.6), timing=_timing("NVIDIA A10G", 256, 256, 2.0, 90.0),
              config='[model]\nname = "hybrid"\nmlp_width = "wide"\n')


@pytest.fixture
def local_store(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    make_runs(store)
    return store


def _valid_png(data: bytes) -> tuple[int, int]:
    img = Image.open(io.BytesIO(data))
    img.verify()
    return img.size


def test_report_tables_json_and_pngs(local_store, tmp_path):
    out = tmp_path / "report"
    report = aggregate(local_store, str(out))
    md = (out / "report.md").read_text()
    for name in ("asapnet", "pix2pixhd", "deblurgan", "hybrid", "hybrid-failed", "hybrid-noeval", "pix2pixhd-old"):
        assert name in md
    # latest finished run per model is the one in the tables; FID missing shows its reason
    rows = {r["model"]: r for t in report["tasks"].values() for r in t["rows"]}
    assert rows["pix2pixhd"]["run"] == "pix2pixhd-b" and rows["pix2pixhd"]["fid"] == 60.0
    assert rows["asapnet"]["fid"] == 70.25 and rows["asapnet"]["step"] == 40
    assert "n/a (no Inception weights)" in md
    assert rows["deblurgan"]["psnr_gain"] == pytest.approx(3.5)
    assert rows["deblurgan"]["ssim_gain"] == pytest.approx(0.10)
    assert rows["hybrid"]["run"] == "hybrid-noeval" and rows["hybrid"]["psnr"] is None
    assert "no eval" in rows["hybrid"]["note"]
    # ratios: the runs' generators timed side by side here (never 24 / 3 ms from separate runs),
    # explained where a run's config cannot be rebuilt
    ratios = {r["fast"]: r for r in report["speed"]["ratios"]}
    asap = ratios["asapnet"]
    assert asap["ratio"] > 0 and asap["ratio"] == pytest.approx(asap["slow_ms"] / asap["fast_ms"])
    assert (asap["gpu"], asap["height"], asap["width"], asap["dtype"]) == ("cpu", 64, 128, "fp32")
    assert asap["method"] == "side by side in the report's process"
    assert ratios["hybrid"]["ratio"] is None and "mlp_width" in ratios["hybrid"]["reason"]
    assert "side by side" in md and "not computed" in md
    assert {r["ms_per_image"] for r in report["speed"]["rows"] if r["model"] == "pix2pixhd"} == {24.0, 12.0}
    # every run listed, with what it lacks
    runs = {r["name"]: r for r in report["runs"]}
    assert set(runs) == {"asapnet-a", "pix2pixhd-old", "pix2pixhd-b", "deblurgan-c", "hybrid-failed", "hybrid-noeval"}
    assert "status failed (WorkerGroupError: OOM)" in runs["hybrid-failed"]["problems"]
    assert "no timing.json" in runs["hybrid-failed"]["problems"]
    assert runs["pix2pixhd-b"]["in_tables"] and not runs["pix2pixhd-old"]["in_tables"]
    on_disk = json.loads((out / "report.json").read_text())
    assert set(on_disk) >= {"tasks", "speed", "runs", "plots", "samples"}
    assert on_disk["tasks"]["labels2photo"]["rows"][0]["model"] == "asapnet"
    # PNGs: plots per task, speed bars, the latest sample of each run that has one
    assert set(report["plots"].values()) == {"metrics-labels2photo.png", "losses-labels2photo.png",
                                             "metrics-deblur.png", "losses-deblur.png", "speed.png"}
    for path in report["plots"].values():
        w, h = _valid_png((out / path).read_bytes())
        assert w > 300 and h > 200
    assert report["samples"]["asapnet-a"] == "samples/asapnet-a-40.png"
    assert Image.open(out / "samples/asapnet-a-40.png").getpixel((0, 0)) == (0, 0, 255)
    assert len(report["samples"]) == 3


def test_broken_and_empty_runs_are_listed_not_fatal(tmp_path):
    store = Store.open(str(tmp_path / "s"))
    assert build_report(load_runs(store))["runs"] == []  # no runs/ at all
    store.write_text("runs/half/metrics.jsonl",
                     '{"step": 1, "kind": "train", "loss/d": NaN}\n[1, 2]\n"eval"\n{"step": 2, "ki')
    store.write_text("runs/half/config.toml", '[model]\nname = "deblurgan"\n')
    report = aggregate(store, tmp_path / "out")
    (run,) = report["runs"]
    assert run["model"] == "deblurgan" and run["status"] == "unknown"
    assert "no run.json" in run["problems"] and "3 unreadable metrics.jsonl line(s)" in run["problems"]
    assert json.loads((tmp_path / "out/report.json").read_text())["runs"][0]["name"] == "half"
    titles = [t["title"] for t in tables(report)]
    assert titles[-1] == "All runs"


def test_report_through_s3(s3_endpoint, s3_bucket, tmp_path):
    store = Store.open(f"s3://{s3_bucket}/exp", s3_endpoint=s3_endpoint)
    make_runs(store)
    out = store.child("reports")
    report = aggregate(store, out, plots=False)
    assert {r["name"] for r in report["runs"]} >= {"asapnet-a", "hybrid-failed"}
    assert "asapnet" in out.read_text("report.md")
    assert _valid_png(out.read_bytes("samples/deblurgan-c-40.png"))


def test_aggregate_cli_and_job_script(local_store, tmp_path):
    from asaptrain.cli import main

    result = CliRunner().invoke(main, ["aggregate", "--store", local_store.uri, "--out", str(tmp_path / "o"),
                                       "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "pix2pixhd-b" in result.output and "not computed" in result.output
    assert (tmp_path / "o/report.json").is_file()
