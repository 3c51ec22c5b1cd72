"""Which precision inference runs in: `predict --dtype` and `evaluate --dtype`.

    dtype = resolve_dtype("auto", "cpu")   # "bf16" on a CPU with native bf16 units, else "fp32"

``auto`` picks bf16 only where the hardware multiplies bf16 natively: a CUDA device that
supports it, or a CPU whose flags show AVX-512 BF16 or AMX-BF16 (on other CPUs bf16 is emulated
through fp32 and is no faster, while its outputs are less exact). The answer is for the machine
that asks, so a model worker resolves ``auto`` on its own node.
"""

from __future__ import annotations

import functools

DTYPES = ("auto", "fp32", "bf16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""/proc/cpuinfo flags of CPU units that compute in bf16 natively."""


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU shows (Linux /proc/cpuinfo; torch's capability elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set()
            for line in fh:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
        return tuple(f for f in BF16_CPU_FLAGS if f in flags)
    except OSError:  # not Linux: torch names the widest vector ISA it dispatches to
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
        return ("amx_bf16",) if "AMX" in capability.upper() else ()


def resolve_dtype(choice: str, device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``choice`` (one of :data:`DTYPES`) on ``device``."""
    import torch

    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {choice!r}")
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_flags() else "fp32"


def describe_cpu_bf16() -> str:
    """One phrase for reports: whether this CPU has native bf16 units."""
    flags = cpu_bf16_flags()
    return f"native bf16 ({', '.join(flags)})" if flags else "no native bf16 (no avx512_bf16 / amx_bf16 flag)"


__all__ = ["DTYPES", "resolve_dtype", "cpu_bf16_flags", "describe_cpu_bf16"]
