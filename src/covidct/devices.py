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
