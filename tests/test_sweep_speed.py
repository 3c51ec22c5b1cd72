"""The sweep's speed axis without Ray: the choice of best.toml and the front from a hand-made sweep.json
(fast enough, none fast enough), the DeblurGAN reference (scale, reuse), trials.png and the report, the space."""

from __future__ import annotations

import copy
import json
import tomllib

import pytest

from asaptrain.config.presets import get_preset
from asaptrain.sweep.select import best_toml_header, choose, front
from asaptrain.sweep.speed import reference_config, reference_preset

KEY = "val_psnr"
REFERENCE_MS = 10.0


def trial(tid: str, psnr: float | None, ms: float | None) -> dict:
    return {"trial": tid, "run": f"trial-{tid}", "params": {"model.mlp_width": 16}, f"best_{KEY}": psnr,
            "steps": 6, "status": "finished", "error": None, "ms_per_image": ms, "gflops": 0.1}


@pytest.fixture
def sweep_json(tmp_path) -> dict:
    """A sweep.json as written to disk and read back (JSON round trip: no tuples, no NaN)."""
    trials = [
        trial("a", 24.0, 8.0),   # best PSNR, only 1.25x faster
        trial("b", 23.0, 3.0),   # 3.33x: the best of the fast ones
        trial("c", 22.0, 2.0),   # 5x: fastest, on the front
        trial("d", 21.0, 3.5),   # 2.86x, but beaten by b on both axes
        trial("e", None, 1.0),   # no metric (e.g. errored): never chosen, on no front
        trial("f", 23.0, None),  # not timed: never counts as fast
    ]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"name": "hand", "metric": KEY, "trials": trials}))
    return json.loads(path.read_text())


def test_picks_best_psnr_among_trials_fast_enough(sweep_json):
    best, selection = choose(sweep_json["trials"], KEY, REFERENCE_MS, min_speedup=2.5)
    assert best["trial"] == "b" and best["below_speedup"] is False
    assert best["speedup"] == pytest.approx(REFERENCE_MS / 3.0)
    assert selection["fast_enough"] == ["b", "c", "d"] and selection["below_speedup"] is False
    # A lower bar admits the best-PSNR trial; a higher one leaves only the fastest.
    assert choose(copy.deepcopy(sweep_json["trials"]), KEY, REFERENCE_MS, 1.2)[0]["trial"] == "a"
    assert choose(copy.deepcopy(sweep_json["trials"]), KEY, REFERENCE_MS, 4.0)[0]["trial"] == "c"


def test_none_fast_enough_takes_best_psnr_marked_below(sweep_json):
    best, selection = choose(sweep_json["trials"], KEY, REFERENCE_MS, min_speedup=6.0)
    assert best["trial"] == "a" and best["below_speedup"] is True
    assert selection["fast_enough"] == [] and selection["below_speedup"] is True
    assert "BELOW THE SPEEDUP" in selection["message"] and "6x" in selection["message"]
    assert "5.00x" in selection["message"]  # says how fast the fastest trial was
    # No reference time: nothing can be shown fast enough, and the message says why.
    best, selection = choose(copy.deepcopy(sweep_json["trials"]), KEY, None, 2.5)
    assert best["trial"] == "a" and selection["below_speedup"] is True and "not measured" in selection["message"]


def test_quality_ties_go_to_the_faster_trial():
    trials = [trial("slow", 22.0, 3.0), trial("fast", 22.0, 2.0)]
    assert choose(trials, KEY, REFERENCE_MS, 2.5)[0]["trial"] == "fast"


def test_front_is_the_trials_no_other_beats_on_both(sweep_json):
    assert front(sweep_json["trials"], KEY) == ["c", "b", "a"]  # fastest first; d is beaten by b
    # Equal on one axis and worse on the other is beaten; equal on both is not.
    same = [trial("x", 22.0, 2.0), trial("y", 22.0, 3.0), trial("z", 21.0, 2.0), trial("w", 22.0, 2.0)]
    assert sorted(front(same, KEY)) == ["w", "x"]


def test_best_toml_header_says_below_the_speedup(sweep_json):
    rows = sweep_json["trials"]
    best, selection = choose(rows, KEY, REFERENCE_MS, 6.0)
    summary = {"name": "hand", "metric": KEY, "best": best, "selection": selection,
               "speed": {"device": "cpu", "threads": 1, "height": 64, "width": 64, "dtype": "fp32", "batch": 1},
               "reference": {"preset": "deblurgan-smoke", "run": "ref", f"best_{KEY}": 23.5, "ms_per_image": 10.0}}
    header = best_toml_header(summary)
    assert all(line.startswith("# ") for line in header.strip().splitlines())
    assert "BELOW THE SPEEDUP" in header and "trial a" in header and "1.25x as fast (required: 6x)" in header
    assert tomllib.loads(header) == {}  # a comment only: best.toml stays a config file


def test_reference_is_deblurgan_of_the_same_scale():
    assert reference_preset(get_preset("hybrid-smoke")) == "deblurgan-smoke"
    assert reference_preset(get_preset("hybrid-deblur")) == "deblurgan-gopro"
    base = get_preset("hybrid-smoke")
    ref = reference_config(base, "deblurgan-smoke")
    assert ref.model == get_preset("deblurgan-smoke").model and ref.loss == get_preset("deblurgan-smoke").loss
    assert (ref.data, ref.train, ref.eval, ref.scaling) == (base.data, base.train, base.eval, base.scaling)


def test_trials_png_and_the_report_show_every_trial_and_the_reference(sweep_json, tmp_path):
    from PIL import Image

    from asaptrain.data.store import Store
    from asaptrain.report.aggregate import aggregate
    from asaptrain.sweep.figure import trials_png

    rows = sweep_json["trials"]
    best, selection = choose(rows, KEY, REFERENCE_MS, 2.5)
    summary = {**sweep_json, "best": best, "selection": selection, "front": front(rows, KEY),
               "finished": "2026-12-01T20:00:00+0000",
               "speed": {"device": "cpu", "threads": 1, "height": 64, "width": 64, "dtype": "fp32", "batch": 1},
               "reference": {"preset": "deblurgan-smoke", "run": "deblurgan-smoke-ref", f"best_{KEY}": 23.5,
                             "ms_per_image": REFERENCE_MS, "gflops": 0.4, "input_psnr": 20.0, "steps": 6,
                             "reused": True}}
    for t in rows:
        t["on_front"] = t["trial"] in summary["front"]
    store = Store.open(str(tmp_path / "store"))
    store.write_json("sweeps/hand/sweep.json", summary)
    store.write_bytes("sweeps/hand/trials.png", trials_png(summary, {"trial-a": [{"step": 3, "psnr": 22.0}]}))
    store.write_json("sweeps/references/deblurgan-smoke-ref/run.json", {"status": "finished"})  # not a sweep
    report = aggregate(store, str(tmp_path / "report"))
    assert [s["name"] for s in report["sweeps"]] == ["hand"]
    md = (tmp_path / "report" / "report.md").read_text()
    table = md[md.index("## Sweep hand"):]
    assert "deblurgan-smoke (reference run deblurgan-smoke-ref) | 23.50 | 10.00" in table
    for tid, speed in (("a", "1.25×"), ("b", "3.33×"), ("c", "5.00×")):
        assert f"| {tid} |" in table and speed in table
    assert "| b | 23.00 | 3.00 | 0.100 | 3.33× | yes | yes |" in table  # on the front and chosen
    assert "| d | 21.00 | 3.50 | 0.100 | 2.86× |  |  |" in table  # beaten by b
    assert report["plots"]["sweep hand: quality against ms/image"] == "sweep-hand.png"
    w, h = Image.open(tmp_path / "report" / "sweep-hand.png").size
    assert w > 1000 and h > 400


def test_reference_run_is_reused_only_when_it_trained_the_same_recipe(tmp_path):
    from asaptrain.config.io import apply_overrides, to_toml
    from asaptrain.data.store import Store
    from asaptrain.sweep.speed import find_reference

    store = Store.open(str(tmp_path / "store"))
    base = apply_overrides(get_preset("hybrid-smoke"), [f"storage.store={json.dumps(store.uri)}"])
    want = reference_config(base, "deblurgan-smoke")

    def run(prefix, name, cfg, status="finished", finished="2026-12-01T10:00:00+0000"):
        d = store.child(*prefix.split("/"), name)
        d.write_json("run.json", {"status": status, "model": cfg.model.name, "steps_done": cfg.train.steps,
                                  "finished": finished})
        d.write_text("config.toml", to_toml(cfg))

    # Other workers and log cadence: the same recipe. Other steps, model or status: not.
    run("runs", "same-recipe", apply_overrides(want, ["scaling.num_workers=2", "train.log_every=1"]))
    run("runs", "longer", apply_overrides(want, ["train.steps=40"]), finished="2026-12-01T12:00:00+0000")
    run("runs", "failed", want, status="failed", finished="2026-12-01T12:00:00+0000")
    run("runs", "hybrid", base, finished="2026-12-01T12:00:00+0000")
    assert find_reference(store, want) == ("runs", "same-recipe")
    run("sweeps/references", "newer", want, finished="2026-12-01T11:00:00+0000")
    assert find_reference(store, want) == ("sweeps/references", "newer")
    assert find_reference(store, apply_overrides(want, ["eval.images=8"])) is None


@pytest.mark.parametrize("preset", ["hybrid-smoke", "hybrid-deblur"])
def test_space_searches_lowres_and_mlp_width_and_depth(preset):
    from asaptrain.sweep.space import default_space, trial_config

    base = get_preset(preset)
    space = default_space(base)
    for key in ("model.lowres_width", "model.lowres_max_channels", "model.lowres_blocks", "model.mlp_width",
                "model.mlp_depth"):
        values = space[key]["choice"]
        assert len(values) >= 2, (key, values)
        section, field = key.split(".")
        for value in values:  # every value builds a valid config
            assert getattr(getattr(trial_config(base, {key: value}), section), field) == value
    # the blend band is searched too, and every band fits every tile size the space offers
    assert len(space["model.blend_band"]["choice"]) >= 2
    for tile in space["model.tile_size"]["choice"]:
        for band in space["model.blend_band"]["choice"]:
            cfg = trial_config(base, {"model.tile_size": tile, "model.blend_band": band, "model.tile_blend": True})
            assert cfg.model.blend_band == band
