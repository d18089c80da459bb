"""Where tensors live: choosing the device a run asked for, and copying weights to the CPU.

torch is imported inside the functions so that modules which only mention a device (the
CovidCTNet pipeline, the experiment jobs) stay importable without paying for torch.
"""
from __future__ import annotations

from typing import Any

from .errors import ModelError


def choose_device(name: str = "auto"):
    """``auto`` is the GPU when there is one, else the CPU; a device asked for by name must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but no CUDA GPU is available")
    return device


def cpu_state(module) -> dict[str, Any]:
    """A snapshot of a module's weights on the CPU (copied, so later training steps leave it alone)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


#: CPU flags (Linux /proc/cpuinfo) of instructions that multiply-add 8-bit integers wide
#: enough for ONNX Runtime's int8 convolutions to beat its float32 ones: AVX-512 BW and
#: VNNI on x86, the dot-product extensions on ARM. Measured (BENCHMARKS.md): CovidCTNet's
#: int8 BCDU-Net ran 2.13x float32 on an AVX-512 machine and 0.89x on an AVX2-only one.
INT8_FAST_FLAGS = frozenset({"avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                             "asimddp", "i8mm"})
#: "fast" or "slow" overrides what the CPU flags say (a user who measured, and the tests).
INT8_CPU_ENV = "COVIDCT_INT8_CPU"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo text (read when not given); None where
    there is no such file (macOS, Windows) or it names none."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def int8_is_fast(cpuinfo: str | None = None) -> bool:
    """Whether int8 graphs pay on this CPU: ``$COVIDCT_INT8_CPU`` (fast/slow) when set, else
    the CPU flags; where the flags cannot be read, True (no evidence against the check's
    choice)."""
    import os

    told = os.environ.get(INT8_CPU_ENV, "").strip().lower()
    if told in ("fast", "slow"):
        return told == "fast"
    if told:
        raise ModelError(f"{INT8_CPU_ENV} must be 'fast' or 'slow', got {told!r}")
    flags = cpu_flags(cpuinfo)
    return flags is None or bool(flags & INT8_FAST_FLAGS)
