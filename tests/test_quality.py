"""`bench quality`'s checks of a sample grid (dark cast, tile seams, fixed spot) and its summary."""

from __future__ import annotations

import pytest
import torch

from asaptrain.config.io import replace
from asaptrain.config.presets import get_preset
from asaptrain.data.store import Store
from asaptrain.perf.quality import RECIPE, QualityError, grid_checks, run_name, run_quality, summarize
from asaptrain.train.run_files import RunFiles
from asaptrain.train.visual import sample_grid


def test_grid_checks_see_a_dark_cast_tile_seams_and_a_fixed_spot():
    torch.manual_seed(0)
    target = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 32, 32), 5, 1, 2, count_include_pad=False)
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1, count_include_pad=False)
    good = grid_checks(sample_grid([blurred, target, target]), 32, 32, tile=8)
    assert abs(good["dark_cast"]) < 0.01 and 0.7 < good["edge_step_ratio"] < 1.3 and good["spot_ratio"] < 20
    steps = torch.arange(4).repeat_interleave(8).float() * 0.05  # a step at every 8th column
    seams = grid_checks(sample_grid([blurred, (target + steps).clamp(0, 1), target]), 32, 32, tile=8)
    assert seams["edge_step_ratio"] > 2 * good["edge_step_ratio"]
    dark = grid_checks(sample_grid([blurred, target * 0.7, target]), 32, 32, tile=None)
    assert dark["dark_cast"] < -0.1 and "edge_step_ratio" not in dark
    spotted = target.clone()
    spotted[:, :, 10:13, 20:23] = 0.0  # the same place in every image
    assert grid_checks(sample_grid([blurred, spotted, target]), 32, 32, 8)["spot_ratio"] > 3 * good["spot_ratio"]


def test_summary_is_mean_and_sd_per_preset():
    rows = [{"preset": p, "size": 64, "steps": 10, "psnr": v, "ssim": 0.5} for p, v in
            (("a", 18.0), ("a", 19.0), ("b", 17.0))]
    a, b = summarize(rows)
    assert (a["preset"], a["runs"], a["psnr"], a["ssim_sd"]) == ("a", 2, 18.5, 0.0)
    assert a["psnr_sd"] == pytest.approx(0.7071, abs=1e-4) and b["psnr_sd"] == 0.0


def test_a_stored_run_of_another_config_is_refused_before_anything_is_written(tmp_path):
    """A comparison never reuses a run trained with another version of the preset as its own."""
    store = Store.open(str(tmp_path))
    name = run_name("hybrid-smoke", 32, 0)
    files = RunFiles(store, name)
    files.write_config(replace(get_preset("hybrid-smoke"), {"model.mlp_depth": 3}))
    files.write_run(status="finished")
    with pytest.raises(QualityError, match=name):
        run_quality(str(tmp_path), presets=["hybrid-smoke"], seeds=[0], size=32, steps=5)
    assert not store.exists("datasets/quality-photos-32")  # checked before the dataset is made
    assert run_name("hybrid-smoke", 32, 0, {"model.mlp_context": 5}) != name  # --set: a run of its own


def test_an_unfinished_stored_run_is_not_taken_as_a_result(tmp_path):
    store = Store.open(str(tmp_path))
    files = RunFiles(store, run_name("hybrid-smoke", 32, 0))
    files.write_config(replace(get_preset("hybrid-smoke"), {
        **RECIPE, "storage.store": store.uri, "data.dataset": "datasets/quality-photos-32", "data.crop_height": 32,
        "data.crop_width": 32, "train.steps": 5, "train.seed": 0, "train.log_every": 1, "eval.every": 1,
        "train.checkpoint_every": 5, "train.sample_every": 5, "eval.images": 16}))
    files.write_run(status="interrupted")
    with pytest.raises(QualityError, match="did not finish .*interrupted.*--resume"):
        run_quality(str(tmp_path), presets=["hybrid-smoke"], seeds=[0], size=32, steps=5)
