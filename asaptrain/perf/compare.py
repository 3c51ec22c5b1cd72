"""Side-by-side inference timing of generators in one process: the source of every speed ratio.

Timings taken in separate processes (or runs) on a shared machine drift apart by more than
the differences they are meant to show, so the generators here are timed interleaved: after
a warm-up of each, every repeat calls A, then B, then A again ... each call timed alone
(perf_counter on the CPU; CUDA events around the call and one synchronize per round on a
GPU). Per model: median and interquartile range over the repeats, per image; per pair: the
ratio of medians, and the spread of the per-round ratios (both models of a round saw the same
load). Each model row also gives ``gflop_per_s`` (its counted GFLOPs per image over its median
time per image), so a model that is fast only because it does less work shows it. The thread count is fixed (``torch.set_num_threads``) and recorded with the torch and
CUDA versions; on a GPU also the peak memory of one call, the TF32 setting and which
pixelwise path ran (``fused`` Triton kernel or ``matmul``).

    rows = compare_generators([("hybrid-deblur", get_preset("hybrid-deblur")),
                               ("deblurgan-gopro", get_preset("deblurgan-gopro"))], size=(256, 256))

Run by ``asaptrain bench compare`` and by the aggregate report for its speed ratios.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from asaptrain.config.schema import Config
from asaptrain.errors import UserError
from asaptrain.models.pixel_mlp import pixel_path, set_mlp_compiled
from asaptrain.perf.flops import summarize_config
from asaptrain.perf.models import device_label, make_input, resolve_device
from asaptrain.train.nets import build_generator, size_multiple

DTYPES = ("fp32", "bf16")


class CompareError(UserError):
    """A comparison that cannot be timed as asked (size, dtype, names)."""


def at_size(cfg: Config, name: str, height: int, width: int) -> Config:
    """``cfg`` with its crop set to ``height`` x ``width``; a clear error if the size does not fit."""
    mult = size_multiple(cfg)
    if height % mult or width % mult:
        raise CompareError(f"{name}: {height}x{width} is not a multiple of {mult} (the generator's stride); "
                           f"pick a size divisible by {mult}")
    cfg = dataclasses.replace(cfg)
    cfg.data = dataclasses.replace(cfg.data, crop_height=height, crop_width=width, load_height=0, load_width=0)
    return cfg


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3), linear interpolation; one value gives (v, v, v)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def _timed_call(fn: Callable[[], object], cuda: bool) -> Callable[[], float] | float:
    """Run ``fn`` once; CPU: its ms; CUDA: a closure that reads the events' ms after a synchronize."""
    if not cuda:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    return lambda: start.elapsed_time(end)


def cpu_model() -> str:
    """The host CPU's model name (Linux /proc/cpuinfo, else the platform's), e.g. "AMD EPYC"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: torch.device, threads: int) -> dict:
    """What every row records about where it was measured."""
    cuda = device.type == "cuda"
    return {"device": device_label(device), "device_type": device.type, "cpu_model": cpu_model(), "threads": threads,
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None}


def compare_generators(
    named_configs: Sequence[tuple[str, Config]], size: tuple[int, int], dtype: str = "fp32",
    batches: Sequence[int] = (1, 4), repeats: int = 10, warmup: int = 2, device: str = "auto",
    threads: int | None = None, log: Callable[[str], None] = lambda s: None, compile_mlp: bool = False,
) -> list[dict]:
    """Time the generators of ``named_configs`` interleaved at ``size`` = (height, width).

    Returns one ``kind: "model"`` row per generator and batch (``ms`` and ``iqr_ms`` per image,
    median over ``repeats`` rounds) and one ``kind: "ratio"`` row per pair and batch
    (``ratio`` = b's median ms / a's: how many times faster a is than b). ``compile_mlp``: the
    pixelwise MLPs through torch.compile (``set_mlp_compiled``); each row's ``first_call_s`` is
    its first untimed call, the compile included.
    """
    if dtype not in DTYPES:
        raise CompareError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if len(named_configs) < 2:
        raise CompareError("give at least two presets or config files to compare")
    if repeats < 1 or warmup < 0 or any(b < 1 for b in batches):
        raise CompareError(f"repeats must be >= 1, warmup >= 0 and batches >= 1; got {repeats}, {warmup}, {batches}")
    names = [n for n, _ in named_configs]
    if len(set(names)) != len(names):
        raise CompareError(f"names must differ, got {', '.join(names)}")
    h, w = size
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if threads:
        torch.set_num_threads(threads)
    env = environment(dev, torch.get_num_threads())
    cfgs = [at_size(cfg, n, h, w) for n, cfg in named_configs]
    with torch.device(dev):
        nets = [build_generator(cfg).eval() for cfg in cfgs]
    if compile_mlp:
        warmup = max(warmup, 1)  # the compile happens in the first call, never in a timed one
        for net in nets:
            set_mlp_compiled(net)
    gflops = [next(r["gflops"] for r in summarize_config(cfg) if r["net"] == "G") for cfg in cfgs]
    gen = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict] = []
    for batch in batches:
        inputs = [make_input(cfg, batch, dev, gen) for cfg in cfgs]
        calls = []
        for net, x in zip(nets, inputs):
            def call(net=net, x=x):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    return net(x)
            calls.append(call)
        peaks, first_s = [None] * len(nets), [None] * len(nets)
        with torch.no_grad():
            for i, call in enumerate(calls):
                for k in range(warmup):
                    t0 = time.perf_counter()
                    call()
                    if k == 0:
                        first_s[i] = time.perf_counter() - t0
                if cuda:  # one untimed call per model for its peak memory
                    torch.cuda.synchronize(dev)
                    torch.cuda.reset_peak_memory_stats(dev)
                    call()
                    torch.cuda.synchronize(dev)
                    peaks[i] = torch.cuda.max_memory_allocated(dev) / 2**20
            samples: list[list[float]] = [[] for _ in nets]
            for r in range(repeats):
                order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))  # A B, B A, ...
                pending = [(i, _timed_call(calls[i], cuda)) for i in order]
                if cuda:
                    torch.cuda.synchronize(dev)
                for i, t in pending:
                    samples[i].append((t() if cuda else t) / batch)
        model_rows = []
        for name, cfg, net, times, peak, gf, first in zip(names, cfgs, nets, samples, peaks, gflops, first_s):
            q1, med, q3 = _quartiles(times)
            row = {"kind": "model", "preset": name, "model": cfg.model.name, "height": h, "width": w,
                   "dtype": dtype, "batch": batch, "ms": med, "iqr_ms": q3 - q1, "ms_q1": q1, "ms_q3": q3,
                   "repeats": repeats, "warmup": warmup, "gflops": gf, "gflop_per_s": gflop_per_s(gf, med),
                   "pixel_path": pixel_path(net), "first_call_s": first,
                   "peak_mem_mib": peak, **env}
            model_rows.append(row)
            log(f"{name:22s} {h}x{w} {dtype} batch {batch}: {med:9.2f} ms/image (IQR {q3 - q1:.2f}), "
                f"{row['gflop_per_s']:.0f} GFLOP/s [{row['pixel_path'] or 'no pixelwise MLP'}]")
        rows += model_rows
        for i in range(len(nets)):
            for j in range(i + 1, len(nets)):
                a, b = model_rows[i], model_rows[j]
                per_round = [tb / ta for ta, tb in zip(samples[i], samples[j])]
                q1, _, q3 = _quartiles(per_round)
                rows.append({"kind": "ratio", "a": a["preset"], "b": b["preset"], "height": h, "width": w,
                             "dtype": dtype, "batch": batch, "a_ms": a["ms"], "b_ms": b["ms"],
                             "ratio": b["ms"] / a["ms"], "ratio_q1": q1, "ratio_q3": q3,
                             "gflops_ratio": b["gflops"] / a["gflops"], "a_gflop_per_s": a["gflop_per_s"],
                             "b_gflop_per_s": b["gflop_per_s"], **env})
    return rows


def gflop_per_s(gflops: float, ms: float) -> float:
    """Achieved GFLOP/s: ``gflops`` per image done in ``ms`` milliseconds per image."""
    return gflops / (ms / 1000) if ms > 0 else float("nan")


def ratio_text(row: dict) -> str:
    """'a is 2.61x faster than b ...' for one ratio row."""
    r = row["ratio"]
    how = f"{r:.2f}x faster than" if r >= 1 else f"{1 / r:.2f}x slower than"
    return (f"{row['a']} is {how} {row['b']} at {row['height']}x{row['width']} {row['dtype']} batch "
            f"{row['batch']} on {_where(row)}: {row['a_ms']:.2f} vs "
            f"{row['b_ms']:.2f} ms/image ({row['a_gflop_per_s']:.0f} vs {row['b_gflop_per_s']:.0f} GFLOP/s); "
            f"per-round ratio IQR {row['ratio_q1']:.2f}-{row['ratio_q3']:.2f}")


def _where(row: dict) -> str:
    """'cpu (AMD EPYC, 2 threads)' or 'NVIDIA H200 (2 threads)'."""
    cpu = f"{row['cpu_model']}, " if row.get("device_type") == "cpu" and row.get("cpu_model") else ""
    return f"{row['device']} ({cpu}{row['threads']} threads)"


__all__ = ["compare_generators", "ratio_text", "gflop_per_s", "at_size", "environment", "CompareError"]
