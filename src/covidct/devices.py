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


#: CPU flags where OpenVINO runs the int8 graphs faster than ONNX Runtime: AMX (its int8
#: tile instructions, which ONNX Runtime 1.31's CPU kernels do not use) and AVX-512 VNNI.
#: Measured on a 2-core Xeon with AMX (BENCHMARKS.md): BiT-R50x1's int8 graph 0.058 vs
#: 0.110 s/slice, BCDU-Net's 1.6 vs 3.4 s per 100 slices; with OpenVINO held to AVX-512
#: VNNI (ONEDNN_MAX_CPU_ISA) 0.087 s/slice. Not measured against ONNX Runtime on an AVX2-only
#: CPU, so there ONNX Runtime stays.
OPENVINO_FAST_FLAGS = frozenset({"amx_int8", "avx512_vnni"})
#: "onnxruntime" or "openvino" overrides the choice (a user who measured, and the tests).
INT8_ENGINE_ENV = "COVIDCT_INT8_ENGINE"
INT8_ENGINES = ("onnxruntime", "openvino")


def int8_engine(cpuinfo: str | None = None) -> str:
    """Which engine ``--runtime auto`` runs a checked int8 graph on: ``$COVIDCT_INT8_ENGINE``
    when set, else OpenVINO where it is installed and the CPU has :data:`OPENVINO_FAST_FLAGS`,
    else ONNX Runtime."""
    import importlib.util
    import os

    told = os.environ.get(INT8_ENGINE_ENV, "").strip().lower()
    if told:
        if told not in INT8_ENGINES:
            raise ModelError(f"{INT8_ENGINE_ENV} must be one of {', '.join(INT8_ENGINES)}, "
                             f"got {told!r}")
        return told
    if importlib.util.find_spec("openvino") is None:
        return "onnxruntime"
    flags = cpu_flags(cpuinfo)
    return "openvino" if flags and flags & OPENVINO_FAST_FLAGS else "onnxruntime"


def int8_engine_order() -> tuple[str, ...]:
    """The engines whose passed int8 check ``--runtime auto`` follows, first choice first:
    :func:`int8_engine`'s, then ONNX Runtime's (covidct.export.choose_runtime)."""
    return ("openvino", "onnxruntime") if int8_engine() == "openvino" else ("onnxruntime",)
