"""`asaptrain bench compare`: generators timed side by side in one process, rows and ratios."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from asaptrain.cli import main
from asaptrain.config.presets import get_preset
from asaptrain.perf.compare import CompareError, compare_generators


def test_bench_compare_cli_writes_both_models_the_ratio_and_the_device(tmp_path):
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(main, ["bench", "compare", "hybrid-smoke", "deblurgan-smoke", "--size", "32x32",
                                       "--repeats", "2", "--warmup", "0", "--batch", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    models = [r for r in rows if r["kind"] == "model"]
    assert {(r["preset"], r["batch"]) for r in models} == {(p, b) for p in ("hybrid-smoke", "deblurgan-smoke")
                                                           for b in (1, 2)}
    for r in models:
        assert r["ms"] > 0 and r["iqr_ms"] >= 0 and (r["height"], r["width"], r["dtype"]) == (32, 32, "fp32")
        assert r["device"] == "cpu" and r["threads"] >= 1 and r["torch"] and r["repeats"] == 2
        assert r["gflops"] > 0 and r["gflop_per_s"] == pytest.approx(r["gflops"] / (r["ms"] / 1000))
    assert {r["preset"]: r["pixel_path"] for r in models} == {"hybrid-smoke": "planes", "deblurgan-smoke": None}
    ratios = [r for r in rows if r["kind"] == "ratio"]
    assert [r["batch"] for r in ratios] == [1, 2]
    for r in ratios:
        assert (r["a"], r["b"], r["device"]) == ("hybrid-smoke", "deblurgan-smoke", "cpu")
        assert r["ratio"] == pytest.approx(r["b_ms"] / r["a_ms"])
        by_model = {m["preset"]: m for m in models if m["batch"] == r["batch"]}
        assert (r["a_gflop_per_s"], r["b_gflop_per_s"]) == (by_model["hybrid-smoke"]["gflop_per_s"],
                                                            by_model["deblurgan-smoke"]["gflop_per_s"])
    assert "deblurgan-smoke" in result.output and ("faster than" in result.output or "slower than" in result.output)
    assert "GFLOP/s" in result.output  # in the table header and in every ratio line
    assert sum("GFLOP/s);" in line for line in result.output.splitlines()) == len(ratios)


def test_bench_compare_takes_config_files_and_rejects_sizes_that_do_not_fit(tmp_path):
    from asaptrain.config.io import to_toml

    cfg = tmp_path / "mine.toml"
    cfg.write_text(to_toml(get_preset("hybrid-smoke")))
    result = CliRunner().invoke(main, ["bench", "compare", "deblurgan-smoke", "--config", str(cfg), "--size", "36x36",
                                       "--repeats", "1", "--warmup", "0"])
    assert result.exit_code != 0 and "36x36 is not a multiple of" in result.output
    rows = compare_generators([("a", get_preset("deblurgan-smoke")), ("mine", get_preset("hybrid-smoke"))],
                              (32, 32), batches=(1,), repeats=1, warmup=0, device="cpu")
    assert [r["kind"] for r in rows] == ["model", "model", "ratio"]
    with pytest.raises(CompareError, match="at least two"):
        compare_generators([("a", get_preset("deblurgan-smoke"))], (16, 16))
    with pytest.raises(CompareError, match="dtype"):
        compare_generators([("a", get_preset("deblurgan-smoke")), ("b", get_preset("hybrid-smoke"))], (16, 16),
                           dtype="fp16")
