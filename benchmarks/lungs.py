"""Row 7: the lung mask (covidct.lungs) on the issue's 300-slice 512 x 512 series.

Baseline (same run): the slice classifier's former lung-slice rule, a body mask and a lung
fraction per slice on a 128-pixel copy (what covidct used before the lung mask; it chose
slices only, with no mask). Project path: ``lung_mask`` at its working resolution (every
third pixel of a 512 matrix of 0.625 mm pixels), and for reference the same rule at full resolution, with the
Dice between the two (Dice against true lungs: tests/test_lungs.py, on `covidct synth`
phantoms).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .common import Sizes, best_time


def _former_slice_rule(scan) -> np.ndarray:
    """The removed rule: >= 10% of the body below -400 HU on a 128 px copy, per slice."""
    from covidct.windowing import COVIDX_LUNG, body_mask

    lung_gray = (-400.0 - COVIDX_LUNG.low) / COVIDX_LUNG.width * 255.0
    keep = []
    for k in range(scan.n_slices):
        pixels = COVIDX_LUNG.to_uint8(scan.voxels[k])
        stride = max(1, min(pixels.shape) // 128)
        small = pixels[::stride, ::stride]
        body = body_mask(small, "windowed", COVIDX_LUNG)
        n = int(body.sum())
        keep.append(n >= 0.02 * small.size and ((small < lung_gray) & body).sum() / n >= 0.10)
    return np.flatnonzero(keep)


def lung_mask_row(sizes: Sizes, reps: int = 3) -> dict[str, Any]:
    from covidct import lungs
    from covidct.synth.phantom import benchmark_series

    n_slices, matrix = sizes.volume
    scan = benchmark_series(n_slices, matrix)
    out: dict[str, Any] = {"series": scan.summary(), "working_stride": lungs._stride(scan)}
    out["baseline_former_slice_rule_s"] = best_time(lambda: _former_slice_rule(scan), reps)
    out["lung_mask_s"] = best_time(lambda: lungs.lung_mask(scan), reps)
    # CPU seconds of this process (numpy/scipy here run on one thread): on a shared machine
    # the wall time above includes waiting for a core, this does not.
    out["lung_mask_cpu_s"] = _best_cpu(lambda: lungs.lung_mask(scan), reps)
    mask = lungs.lung_mask(scan)
    saved = lungs.WORK_MM
    try:
        lungs.WORK_MM = 1e-6  # stride 1: every pixel
        out["lung_mask_full_resolution_s"] = best_time(lambda: lungs.lung_mask(scan), 1)
        full = lungs.lung_mask(scan)
    finally:
        lungs.WORK_MM = saved
    out["dice_working_vs_full"] = _dice(mask.lung, full.lung)
    out["lung_volume_ml"] = mask.volumes_ml()
    out["involvement_s"] = best_time(lambda: lungs.involvement(scan, mask), reps)
    return out


def _best_cpu(fn, reps: int) -> float:
    import time

    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum())), 4)


def table_line(v: dict[str, Any]) -> str:
    return (f"| 7 | lung mask (HU rule) of {v['series']}, at stride {v['working_stride']} "
            f"(full resolution: {v['lung_mask_full_resolution_s']:.2f} s, Dice "
            f"{v['dice_working_vs_full']:.3f} between the two); involvement "
            f"{v['involvement_s']:.2f} s | {v['baseline_former_slice_rule_s']:.2f} s (former "
            f"body-fraction slice rule, no mask) | {v['lung_mask_s']:.2f} s wall, "
            f"{v.get('lung_mask_cpu_s', float('nan')):.2f} s CPU | "
            f"{v['baseline_former_slice_rule_s'] / v['lung_mask_s']:.2f}x | | < 1 s |")
