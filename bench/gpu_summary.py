"""``summary.txt`` of ``bench/gpu.sh``: one line per stage (status, seconds, budget) and under it
the stage's key numbers, read from the JSON it wrote, so that the one file that comes back
unpacked says what the GPU measured.

    python3 bench/gpu_summary.py OUT TOTAL_S > OUT/summary.txt

A stage whose JSON is missing or unreadable says so on its line; the others are still summarized.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _g(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _load(out: Path, name: str):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def setup(out: Path, name: str) -> list[str]:
    s = _load(out, "setup.json")
    return [f"device {s.get('gpu') or 'cpu'}; python {s['python']}, torch {s['torch']}, CUDA {s.get('cuda')}, "
            + ", ".join(f"{k} {s[k]}" for k in ("triton", "ray", "tensorboardX", "torchvision", "torchmetrics",
                                                  "pyarrow") if k in s)]


def correct(out: Path, name: str) -> list[str]:
    c = _load(out, "correct.json")
    lines = []
    for r in c["kernel"]:
        if r.get("error"):
            lines.append(f"kernel {r['model']} {r['height']}x{r['width']} {r['dtype']}: ERROR {r['error']}")
        else:
            lines.append(f"kernel {r['model']} {r['height']}x{r['width']} {r['dtype']} blend={r['tile_blend']}: "
                         f"max |fused - matmul| {_g(r['max_abs_error'])}, fused ran {r['fused_ran']}, "
                         f"finite {r['finite']}")
    for r in c["layouts"]:
        if r.get("error"):
            lines.append(f"layouts {r['dtype']}: ERROR {r['error']}")
        else:
            lines.append(f"layouts {r['dtype']} {r['height']}x{r['width']} batch {r['batch']}: rows {_g(r['rows_ms'])} ms, "
                         f"planes {_g(r['planes_ms'])} ms (fwd+bwd); max |rows - planes| {_g(r['max_abs_error'])}, "
                         f"grad {_g(r['grad_max_abs_error'])}")
    for r in c["train"]:
        what = "compiled" if r["compiled"] else "eager"
        lines.append(f"train {r['preset']} {r['precision']} {what}: " + (
            f"ERROR {r['error']}" if r["error"] else
            f"{r['steps']} steps finite {r['finite']}, {_g(r['seconds'], '.1f')} s, graphs {r['graphs_compiled']}, "
            f"recompiles {r.get('recompiles')}, graph breaks {r['graph_breaks']}"))
    return lines


def imported(out: Path, name: str) -> list[str]:
    rows = _load(out, "import.json")["fixtures"]
    lines = [f"{r['fixture']}: ERROR {r['error']}" for r in rows if r.get("error")]
    by = {}
    for r in rows:
        if not r.get("error"):
            by.setdefault(r["fixture"], []).append(r)
    for key, rs in by.items():
        lines.append(f"{key} {rs[0]['height']}x{rs[0]['width']}: " + "; ".join(
            f"{r['precision']} max |err| vs official {_g(r['max_abs_error_vs_official'])}, "
            f"vs CPU {_g(r['max_abs_error_vs_cpu'])}" for r in rs))
    return lines


def compare(out: Path, name: str) -> list[str]:
    lines = []
    for path in sorted(out.glob(f"{name}-*.json")):  # compare-256-fp32.json, compare-256-bf16.json
        for r in json.loads(path.read_text()):
            if r.get("kind") == "ratio":  # one row per batch size: both models' ms/image and b/a
                lines.append(f"{r['dtype']} {r['height']}x{r['width']} batch {r['batch']}: {r['a']} {_g(r['a_ms'])} "
                             f"ms/image, {r['b']} {_g(r['b_ms'])} ms/image; {r['b']}/{r['a']} {_g(r['ratio'])}x "
                             f"(GFLOPs {_g(r['gflops_ratio'])}x)")
    if not lines:
        raise FileNotFoundError(f"{name}-*.json")
    return lines


def models(out: Path, name: str) -> list[str]:
    lines = []
    for path in sorted(out.glob(f"{name}*.json")):  # models-compile.json and models-compile-label.json
        lines += [f"{r['model']} {r['height']}x{r['width']} {r['variant']} batch {r['batch']}: {_g(r['ms'])} ms/image"
                  + (f" ({r['pixel_path']})" if r.get("pixel_path") else "") for r in json.loads(path.read_text())]
    if not lines:
        raise FileNotFoundError(f"{name}.json")
    return lines


def train(out: Path, name: str) -> list[str]:
    return [f"{r['preset']} {r['height']}x{r['width']} batch {r['batch']} {r['precision']}: {_g(r['ms_per_step'])} ms/step, "
            f"{_g(r['images_per_s'])} images/s, {_g(r['achieved_tflops'])} TFLOP/s, MFU {_g(r['mfu'], '.1%')}"
            for r in _load(out, "train.json")]


def profile(out: Path, name: str) -> list[str]:
    lines = []
    for r in _load(out, "profile.json")["presets"]:
        if r.get("error"):
            lines.append(f"{r['preset']}: ERROR {r['error']}")
            continue
        ops = ", ".join(f"{o['op']} {_g(o['self_ms'])}" for o in r["top_ops"][:4])
        lines.append(f"{r['preset']} {r['precision']} batch {r['batch']}: step {_g(r['step_ms'])} ms (profiled); "
                     f"top self ms ({r['sorted_by']}): {ops}")
    return lines


def ray(out: Path, name: str) -> list[str]:
    t = _load(out, "ray.json")
    parts = ", ".join(f"{k} {_g(v)}" for k, v in t["step_ms"].items())
    return [f"{t['gpu']} x{t['gpu_count']}, batch {t['batch_size']} {t['height']}x{t['width']} {t['precision']}: "
            f"{_g(t['images_per_s'])} images/s, data-wait share {_g(t['data_wait_share'], '.1%')}; step ms: {parts}"]


def evaluate(out: Path, name: str) -> list[str]:
    e = _load(out, "evaluate.json")
    return [f"{e['images']} images {e['dtype']} {e['mode']} on {e['device']}: PSNR {_g(e['psnr'], '.2f')} dB, "
            f"SSIM {_g(e['ssim'], '.3f')}, model {_g(e['images_per_s'])} images/s, end to end "
            f"{_g(e['end_to_end_images_per_s'])} images/s; FID {_g(e['fid'])} ({e['fid_reason']})"]


def predict(out: Path, name: str) -> list[str]:
    return [f"{r['preset']} {r['height']}x{r['width']} batch {r['batch']} {r['precision']} on {r['device']}: "
            f"{_g(r['images_per_s'])} images/s; decode {_g(r['decode_ms'])} ms, model {_g(r['model_ms'])} ms, "
            f"encode {_g(r['encode_ms'])} ms per image" for r in _load(out, "predict.json")]


def sweep(out: Path, name: str) -> list[str]:
    s = _load(out, "sweep.json")
    trials = s["trials"]
    done = [t for t in trials if t.get("status") == "finished"]
    ref = s.get("reference") or {}
    lines = [f"{len(done)}/{len(trials)} trials finished; best {s['metric']} "
             f"{_g((s.get('best') or {}).get('best_' + s['metric']))}; reference {ref.get('preset')} "
             f"{_g(ref.get('ms_per_image'))} ms/image"]
    lines += [f"trial {t['trial']}: {t.get('status')}, {s['metric']} {_g(t.get('best_' + s['metric']))}, "
              f"{_g(t.get('ms_per_image'))} ms/image" + (f", error {t['error']}" if t.get("error") else "")
              for t in trials]
    return lines


NUMBERS = {"setup": setup, "correct": correct, "import": imported, "compare-256": compare, "compare-720": compare,
           "models-720": models, "models-1024": models, "models-512": models, "models-compile": models,
           "train": train, "profile": profile, "ray": ray, "evaluate": evaluate, "predict": predict, "sweep": sweep}


def main() -> None:
    out, total = Path(sys.argv[1]), int(sys.argv[2])
    rows = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines() if line.strip()]
    print(f"{'stage':16s} {'status':8s} {'seconds':>7s} {'budget':>6s}  key numbers below each stage")
    for r in rows:
        print(f"{r['stage']:16s} {r['status']:8s} {r['seconds']:7d} {r['budget_s']:6d}")
        if r["status"] == "skipped":
            continue
        try:
            lines = NUMBERS[r["stage"]](out, r["stage"])
        except Exception as exc:  # noqa: BLE001 - one stage's missing JSON must not hide the others
            lines = [f"no numbers: {type(exc).__name__}: {exc}"[:300]]
        for line in lines:
            print(f"    {line}")
    setup_json = _load(out, "setup.json") or {}
    print(f"total {sum(r['seconds'] for r in rows)} s of a {total} s budget; device: {setup_json.get('gpu') or 'cpu'}")


if __name__ == "__main__":
    main()
