"""`asaptrain evaluate`: a whole split scored at full size, checked against numbers computed here
independently (numpy PSNR and SSIM on the PNGs `infer` writes, torchmetrics' own FID), in this
process and under real Ray (2 CPU workers) on the loopback S3 endpoint; and what it refuses."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from asaptrain.cli import main
from asaptrain.config.io import apply_overrides
from asaptrain.config.presets import get_preset
from asaptrain.data.shards import ShardWriter, shard_paths
from asaptrain.data.sources import encode_png
from asaptrain.data.store import Store
from asaptrain.evaluate import EvaluateConfig, EvaluateError, evaluate
from asaptrain.scorer import psnr_uint8, ssim_uint8
from asaptrain.train.loop import train_loop
from reporting import ListReporter
from asaptrain.train.metrics import INCEPTION_FILE, psnr_per_image, ssim_per_image
from asaptrain.train.nets import generator_in_channels
from asaptrain.train.run_files import RunFiles
from asaptrain.train.state import to_bytes

RAY_SHARED = True  # ray_cluster: one Ray with the modules beside it (no dashboard, kills, or env)

VAL_SIZES = [(64, 96), (61, 93), (33, 47)]  # odd sizes: padded to the generator's multiple and cropped back


def make_run(store: Store, preset: str, name: str) -> Store:
    """A tiny trained run (2 steps, EMA kept) as training leaves one: run.json, config.toml, checkpoint."""
    cfg = apply_overrides(get_preset(preset), ["train.steps=2", "train.batch_size=2", "train.log_every=1",
                                               "train.checkpoint_every=2", "optim.ema_decay=0.5"])
    g = torch.Generator().manual_seed(0)
    c, h, w = generator_in_channels(cfg), cfg.data.crop_height, cfg.data.crop_width
    batches = ({"x": torch.rand(2, c, h, w, generator=g) * 2 - 1, "y": torch.rand(2, 3, h, w, generator=g) * 2 - 1}
               for _ in range(2))
    rep = ListReporter()
    train_loop(cfg, batches, lambda b, *_: (b["x"], b["y"]), torch.device("cpu"), rep)
    files = RunFiles(store, name)
    files.write_run(name=name, model=cfg.model.name, task=cfg.data.task, status="finished")
    files.write_config(cfg)
    files.dir.write_bytes("checkpoint_000002/state.pt", to_bytes(rep.last_state))
    return files.dir


def make_pairs(ds: Store, seed: int = 0) -> None:
    """A GoPro-like dataset: stored blurred inputs beside sharp targets; val at odd sizes."""
    rng = np.random.default_rng(seed)
    for split, sizes in (("train", [(32, 32)]), ("val", VAL_SIZES)):
        with ShardWriter(ds, split, task="deblur", source="folder") as w:
            for i, (h, wd) in enumerate(sizes):
                yy, xx = np.mgrid[:h, :wd]
                sharp = np.stack([(xx * 255 // wd), (yy * 255 // h), rng.integers(0, 255, (h, wd))], -1)
                blur = np.clip(sharp + rng.integers(-25, 26, sharp.shape), 0, 255)
                w.write({"key": f"k{i}", "input": encode_png(blur.astype(np.uint8)), "input_format": "png",
                         "target": encode_png(sharp.astype(np.uint8)), "target_format": "png", "width": wd, "height": h})


def stand_in_inception(path) -> None:
    """Inception-v3 at PyTorch's random init, in the FID weights file's layout: a stand-in to check
    the plumbing (the real file cannot be downloaded here). Never a quality number."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    real_load, real_url = fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url
    fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = (lambda self, sd: None), (lambda *a, **k: {})
    try:
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.FeatureExtractorInceptionV3.load_state_dict, fe.load_state_dict_from_url = real_load, real_url
    torch.save(net.state_dict(), path)


def numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004) written out: separable Gaussian 11 / 1.5, valid region, RGB mean."""
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    k /= k.sum()

    def blur(m):
        m = np.einsum("...ij,j->...i", np.lib.stride_tricks.sliding_window_view(m, 11, axis=1), k)
        return np.einsum("...ij,j->...i", np.lib.stride_tricks.sliding_window_view(m, 11, axis=0), k)

    c1, c2, out = (0.01 * 255) ** 2, (0.03 * 255) ** 2, []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        out.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(out))


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def val_rows(ds: Store) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for p in shard_paths(ds, "val") for r in pq.read_table(p, filesystem=ds.fs).to_pylist()]


def infer_outputs(run: Store, ds: Store, tmp_path) -> dict[str, np.ndarray]:
    """key -> the PNG `asaptrain infer` writes for that val row's stored input."""
    inputs, out = tmp_path / "inputs", tmp_path / "infer-out"
    inputs.mkdir()
    for row in val_rows(ds):
        (inputs / f"{row['key']}.png").write_bytes(row["input"])
    res = CliRunner().invoke(main, ["infer", "--run", run.uri, *map(str, sorted(inputs.iterdir())), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in out.iterdir()}


# ----------------------------------------------------------------------------- no Ray


def test_ssim_and_psnr_agree_with_the_formulas_written_out():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr_uint8(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-12)
    assert psnr_uint8(a, a) == float("inf") and ssim_uint8(a, a) == pytest.approx(1.0, abs=1e-12)
    # float64 on both sides: only summation order differs
    assert ssim_uint8(a, b) == pytest.approx(numpy_ssim(a, b), abs=1e-10)


def test_validation_psnr_and_ssim_equal_torchmetrics_per_image():
    """Training's validation scores are torchmetrics' per-image PSNR and SSIM (data range 1), the
    numbers runs reported before, without importing torchmetrics where a run evaluates."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    for shape in ((3, 3, 32, 32), (2, 3, 41, 67), (1, 1, 11, 11)):
        target = torch.rand(shape, generator=g, dtype=torch.float64)
        pred = (target + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
        pred[0] = target[0] if shape[0] > 1 else pred[0]  # an exact match: PSNR inf, SSIM 1
        ref_psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
        ref_ssim = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
        # float64 on both sides: only the order of the sums differs
        assert torch.equal(torch.isinf(psnr_per_image(pred, target)), torch.isinf(ref_psnr))
        finite = ~torch.isinf(ref_psnr)
        # torchmetrics turns its log's base into a float32 constant: a relative error of a few float32 epsilons
        eps32 = torch.finfo(torch.float32).eps
        assert torch.allclose(psnr_per_image(pred, target)[finite], ref_psnr[finite], rtol=4 * eps32, atol=0), shape
        assert torch.allclose(psnr_per_image(pred.float(), target.float())[finite].double(), ref_psnr[finite],
                              rtol=8 * eps32, atol=0), shape
        assert torch.allclose(ssim_per_image(pred, target), ref_ssim, rtol=0, atol=1e-12), shape
        # float32, as training evaluates: each side's rounding, bounded by float32's epsilon times the
        # window's 121 terms and the formula's few operations on values of order 1
        bound = 121 * 8 * eps32
        ours = ssim_per_image(pred.float(), target.float())
        theirs = structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0, reduction="none")
        assert (ours - theirs).abs().max() <= bound, (shape, ours, theirs)
    with pytest.raises(ValueError, match="10x12 image is smaller than SSIM's 11-pixel window"):
        ssim_per_image(torch.zeros(1, 3, 12, 10), torch.zeros(1, 3, 12, 10))
    with pytest.raises(ValueError, match="border must be 'reflect' or 'valid', not 'same'"):
        ssim_per_image(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), border="same")


def test_local_evaluate_equals_numpy_on_infer_pngs_and_torchmetrics_fid(tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "deblur")
    ds = store.child("datasets", "pairs")
    make_pairs(ds)
    stand_in_inception(tmp_path / INCEPTION_FILE)
    store.put_file(str(tmp_path / INCEPTION_FILE), f"weights/{INCEPTION_FILE}")
    detail = tmp_path / "detail.json"
    args = ["evaluate", "--run", run.uri, "--dataset", "datasets/pairs", "--local", "--fid", "--json", str(detail)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    result = run.read_json("eval-val.json")
    full = json.loads(detail.read_text())
    assert result["images"] == 3 and result["dtype"] == "fp32" and result["weights"] == "ema" and result["step"] == 2
    assert result["resolution"] == {f"{h}x{w}": 1 for h, w in VAL_SIZES} and "per_image" not in result
    assert {k: v for k, v in full.items() if k != "per_image"} == result

    # Independent: numpy on the PNGs `infer` writes, against the stored 8-bit targets.
    outputs, rows = infer_outputs(run, ds, tmp_path), {r["key"]: r for r in val_rows(ds)}
    per_image = {r["key"]: r for r in full["per_image"]}
    assert sorted(per_image) == sorted(outputs) == ["k0", "k1", "k2"]
    for key, out in outputs.items():
        target, blurred = rgb(rows[key]["target"]), rgb(rows[key]["input"])
        assert out.shape == target.shape
        mse = np.mean((out.astype(np.float64) - target) ** 2)
        assert per_image[key]["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-9)
        assert per_image[key]["ssim"] == pytest.approx(numpy_ssim(out, target), abs=1e-9)
        assert per_image[key]["input_psnr"] == pytest.approx(psnr_uint8(blurred, target), abs=1e-12)
    assert result["psnr"] == pytest.approx(np.mean([r["psnr"] for r in full["per_image"]]), abs=1e-12)

    # FID: torchmetrics' own metric on the same 8-bit images with the same (stand-in) weights.
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(tmp_path / INCEPTION_FILE))
    for key, out in outputs.items():
        fid.update(torch.from_numpy(rgb(rows[key]["target"]).copy()).permute(2, 0, 1)[None], real=True)
        fid.update(torch.from_numpy(out.copy()).permute(2, 0, 1)[None], real=False)
    assert result["fid_reason"] is None and result["fid"] == pytest.approx(float(fid.compute()), rel=1e-6)

    # aggregate shows it beside the run's last training-time evaluation.
    from asaptrain.report.aggregate import aggregate

    files = RunFiles(store, "deblur")
    files.add_metrics({"kind": "eval", "step": 2, "psnr": 12.5, "ssim": 0.25, "fid": None, "fid_reason": "x"})
    files.flush(durable=True)
    report = aggregate(store, tmp_path / "report", plots=False)
    row, = report["evaluations"]
    assert (row["run"], row["split"], row["images"], row["psnr"], row["train_psnr"], row["train_step"]) == \
        ("deblur", "val", 3, result["psnr"], 12.5, 2)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Whole-split evaluations" in md and f"| {result['psnr']:.2f} |" in md and "| 12.50 |" in md

    # Written once: a second evaluate does not replace it unasked.
    before = run.read_bytes("eval-val.json")
    res = CliRunner().invoke(main, args[:-2])
    assert res.exit_code == 2 and "eval-val.json exists; pass --overwrite" in res.output
    assert run.read_bytes("eval-val.json") == before


def test_refused_and_named_before_anything_is_written(tmp_path):
    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "deblur")
    ds = store.child("datasets", "pairs")
    make_pairs(ds)

    def refused(match: str, **kw) -> None:
        ec = EvaluateConfig(**{"run": run.uri, "dataset": ds.uri, "local": True, **kw})
        with pytest.raises(EvaluateError if "run_dir" not in kw else Exception, match=match):
            evaluate(ec)

    refused(r"--split 'valid' is not a split: use one of train, val, test", split="valid")
    refused(r"has no 'test' split \(its splits: train \(1 rows\), val \(3 rows\)\)", split="test")
    with pytest.raises(Exception, match=r"nowhere/manifest.json does not exist"):
        evaluate(EvaluateConfig(run=run.uri, dataset=str(tmp_path / "nowhere"), local=True))
    empty = RunFiles(store, "fresh")
    empty.write_run(name="fresh", status="failed")
    empty.write_config(get_preset("deblurgan-smoke"))
    with pytest.raises(Exception, match=r"no checkpoint in .*runs/fresh"):
        evaluate(EvaluateConfig(run=empty.dir.uri, dataset=ds.uri, local=True))
    RunFiles(store, "deblur").write_run(status="running")
    refused(r"runs/deblur/run.json says status 'running': another command is writing this run")
    labels = store.child("datasets", "labels")
    from asaptrain.data.convert import convert
    from asaptrain.data.synth import synth_plan

    RunFiles(store, "deblur").write_run(status="finished")
    convert(synth_plan("scenes", 1, (32, 64), seed=0, val_count=1), labels)
    refused(r"is a labels2photo dataset; the run was trained for deblur", dataset=labels.uri)
    assert not [p for p in store.list("runs", recursive=True) if "eval-" in p]


def test_synthesized_blur_is_the_same_for_every_call(tmp_path):
    from asaptrain.data.convert import convert
    from asaptrain.data.synth import synth_plan

    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "deblurgan-smoke", "deblur")
    ds = store.child("datasets", "photos")
    convert(synth_plan("photos", 1, (48, 40), seed=0, val_count=2), ds)  # no stored blurred inputs
    ec = EvaluateConfig(run=run.uri, dataset=ds.uri, local=True)
    first = evaluate(ec)
    ec.overwrite = True
    again = evaluate(ec)
    assert first["images"] == 2 and first["input_psnr"] == again["input_psnr"] and first["psnr"] == again["psnr"]
    assert first["input_psnr"] < 60  # blurred: not the target itself


# ----------------------------------------------------------------------------- under Ray


def expected_scores(run: Store, rows: list[dict], labels: bool = False) -> dict[str, tuple[float, float]]:
    """key -> (PSNR, SSIM) by numpy of `infer`'s output (``infer.generate``, whole image) for each row."""
    from asaptrain.infer import load_generator

    cfg, G = load_generator(run)
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # as the 0.5-CPU workers run: the same summation order, so the same 8-bit outputs
    try:
        for row in rows:
            out[row["key"]] = _expected(G, cfg, row, labels)
    finally:
        torch.set_num_threads(threads)
    return out


def _expected(G, cfg, row: dict, labels: bool) -> tuple[float, float]:
    from asaptrain.data.decode import edge_map
    from asaptrain.infer import generate

    if labels:
        ids = np.asarray(Image.open(io.BytesIO(row["input"])))
        edges = edge_map(np.asarray(Image.open(io.BytesIO(row["instance"]))).astype(np.int64))
        y, = generate(G, cfg, [ids], [edges], tile=4096)
    else:
        y, = generate(G, cfg, [rgb(row["input"])], tile=4096)
    target = rgb(row["target"])
    return 10 * np.log10(255 ** 2 / np.mean((y.astype(np.float64) - target) ** 2)), numpy_ssim(y, target)


@pytest.mark.slow
def test_ray_workers_on_s3(ray_cluster, s3_endpoint, s3_bucket, tmp_path):
    store = Store.open(f"s3://{s3_bucket}/store", s3_endpoint=s3_endpoint)
    run = make_run(store, "deblurgan-smoke", "deblur")
    ds = store.child("datasets", "pairs")
    make_pairs(ds, seed=3)
    res = CliRunner().invoke(main, ["evaluate", "--run", run.uri, "--dataset", ds.uri, "--s3-endpoint", s3_endpoint,
                                    "--workers", "2", "--cpus-per-worker", "0.5", "--json", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.output and "FID missing (not requested" in res.output
    result = run.read_json("eval-val.json")
    assert result["mode"] == "ray" and result["workers"] == 2 and result["images"] == 3
    expected = expected_scores(run, val_rows(ds))
    for r in json.loads((tmp_path / "d.json").read_text())["per_image"]:
        assert (r["psnr"], r["ssim"]) == pytest.approx(expected[r["key"]], abs=1e-9)
    assert not [p for p in store.list("", recursive=True) if "_tmp-" in p]


@pytest.mark.slow
def test_ray_label_maps_with_instance_edges_in_a_local_store(ray_cluster, tmp_path):
    from asaptrain.data.convert import convert
    from asaptrain.data.synth import synth_plan

    store = Store.open(str(tmp_path / "store"))
    run = make_run(store, "pix2pixhd-smoke", "labels")
    ds = store.child("datasets", "scenes")
    convert(synth_plan("scenes", 1, (64, 128), seed=0, val_count=2), ds)
    result = evaluate(EvaluateConfig(run=run.uri, dataset="datasets/scenes", workers=2, cpus_per_worker=0.5,
                                     json=str(tmp_path / "d.json")))
    assert result["images"] == 2 and result["input_psnr"] is None and result["task"] == "labels2photo"
    expected = expected_scores(run, val_rows(ds), labels=True)
    rows = json.loads((tmp_path / "d.json").read_text())["per_image"]
    for r in rows:
        assert (r["psnr"], r["ssim"]) == pytest.approx(expected[r["key"]], abs=1e-9)
    assert result["psnr"] == pytest.approx(np.mean([e[0] for e in expected.values()]), abs=1e-9)
