"""The ``import`` stage of ``bench/gpu.sh``: the official-format fixtures of ``tests/data/official``
(written by the official code on a CPU, ``tests/data/make_official_fixtures.py``) imported through
``asaptrain.importers`` and run on the GPU.

For each fixture, one row per precision: ``fp32`` (torch's defaults, which training uses: cuDNN
convolutions may run in TF32), ``fp32-ieee`` (TF32 off everywhere) and ``bf16`` (autocast), each
with the max abs error of the GPU output against the stored official CPU output and against this
machine's own CPU fp32 output of the same imported generator (the tests bound the CPU one by fp32
rounding; what the GPU adds is measured here). The outputs are in [-1, 1]. No Ray and no boto3:
the import writes to a local store in a temporary folder. A failing fixture is recorded with its
error and the next one runs; the JSON is rewritten after every row.

    python3 bench/gpu_import.py OUT.json          # on the GPU machine, from the repository root
    python3 bench/gpu_import.py OUT.json --dry    # CPU rehearsal: on the CPU (fp32 and bf16)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch

from asaptrain.config.io import load_config
from asaptrain.data.store import Store
from asaptrain.importers import import_checkpoint
from asaptrain.infer import load_generator, model_input
from asaptrain.models.pixel_mlp import pixel_path
from asaptrain.train.metrics import device_name

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "official"
PRECISIONS = ("fp32", "fp32-ieee", "bf16")


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 for cuDNN convolutions and CUDA matmuls set to ``enabled`` (None: left as torch has it)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def official_input(cfg, inputs: dict) -> torch.Tensor:
    """The input the official code saw (label maps with their instance edges), as the tests build it."""
    if cfg.data.task == "deblur":
        return model_input(inputs["photo"].numpy(), cfg)
    return model_input(inputs["ids"].numpy(), cfg, inputs["edges"].numpy())


@torch.no_grad()
def fixture_rows(key: str, f: dict, inputs: dict, store: Store, dev: torch.device) -> list[dict]:
    cfg = load_config(f["preset"], None, f["set"])
    import_checkpoint(f["importer"], str(DATA / f["file"]), cfg, store, key, f["preset"])
    cfg, G = load_generator(store.child("runs", key), device="cpu")
    official = torch.load(DATA / f["out"], weights_only=True)
    want = official.get("out_edges", official["out"]).float()
    x = official_input(cfg, inputs)
    cpu = G(x).float()
    G = G.to(dev)
    rows = []
    for precision in PRECISIONS if dev.type == "cuda" else ("fp32", "bf16"):  # no TF32 on a CPU
        with tf32(False if precision == "fp32-ieee" else None), \
                torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            got = G(x.to(dev)).float().cpu()
            tf32_conv, tf32_matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        rows.append({
            "fixture": key, "model": cfg.model.name, "precision": precision, "height": x.shape[-2], "width": x.shape[-1],
            "max_abs_error_vs_official": float((got - want).abs().max()),
            "max_abs_error_vs_cpu": float((got - cpu).abs().max()),
            "cpu_max_abs_error_vs_official": float((cpu - want).abs().max()),
            "output_std": float(want.std()), "finite": bool(torch.isfinite(got).all()),
            "tf32_conv": tf32_conv if dev.type == "cuda" else None,
            "tf32_matmul": tf32_matmul if dev.type == "cuda" else None,
            "pixel_path": pixel_path(G), "error": None,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry", action="store_true", help="CPU rehearsal: run on the CPU")
    args = parser.parse_args()
    dev = torch.device("cpu" if args.dry or not torch.cuda.is_available() else "cuda")
    fixtures = json.loads((DATA / "fixtures.json").read_text())
    inputs = torch.load(DATA / "inputs.pt", weights_only=True)
    report = {"device": device_name(dev), "dry": args.dry, "torch": torch.__version__, "fixtures": []}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1))

    save()
    with tempfile.TemporaryDirectory(prefix="gpu-import-") as tmp:
        store = Store.open(tmp)
        for key in sorted(fixtures):
            try:
                rows = fixture_rows(key, fixtures[key], inputs, store, dev)
            except Exception as exc:  # noqa: BLE001 - recorded; the next fixture runs
                rows = [{"fixture": key, "error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}]
            for row in rows:
                print("import", json.dumps(row), flush=True)
            report["fixtures"] += rows
            save()


if __name__ == "__main__":
    main()
