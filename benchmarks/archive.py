"""Row 11: an archive through `predict-batch` on a Dask LocalCluster (loopback) with 1 and
2 workers, both methods, default runtime: scans per second, cluster start-up included.
Models as in row 9 (random weights); the scans are SYNTHETIC phantoms (NIfTI). Registers
itself in common.EXTRA_ROWS, as any added row does."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .common import EXTRA_ROWS, Sizes
from .startup import clear_array_cache, model_files

SCANS = 4


def measure(sizes: Sizes, threads: int, work: Path) -> dict[str, Any]:
    import os

    from covidct.batch import predict_batch
    from covidct.scanio import save_scan
    from covidct.synth.phantom import benchmark_series

    models = model_files(sizes, work)
    archive = work / "archive"
    if not archive.is_dir():
        archive.mkdir()
        for k in range(SCANS):
            save_scan(benchmark_series(*sizes.cold_series, seed=k), archive / f"scan{k}.nii.gz")
    os.environ.setdefault("COVIDCT_CACHE", str(work / "cache"))
    out: dict[str, Any] = {"scans": SCANS, "slices": sizes.cold_series[0],
                           "matrix": sizes.cold_series[1]}
    for workers in (1, 2):
        clear_array_cache(Path(os.environ["COVIDCT_CACHE"]))
        start = time.perf_counter()
        summary = predict_batch(archive, work / f"archive-out-{workers}", list(models.values()),
                                workers=workers, runtime="auto", scheduler="local")
        seconds = time.perf_counter() - start
        if summary.failed or summary.done != SCANS:
            raise RuntimeError(f"archive benchmark: {summary.line()}")
        out[f"workers_{workers}"] = {"seconds": seconds, "scans_per_s": SCANS / seconds}
    return out


def lines(v: dict[str, Any], result: dict[str, Any]) -> list[str]:
    one, two = v["workers_1"], v["workers_2"]
    return [f"| 11 | archive: {v['scans']} scans ({v['slices']}x{v['matrix']}^2, synthetic) through "
            f"`predict-batch --cluster local`, both methods, cluster start-up included | "
            f"{one['scans_per_s']:.3f} scans/s (1 worker, {one['seconds']:.0f} s) | "
            f"{two['scans_per_s']:.3f} scans/s (2 workers, {two['seconds']:.0f} s) | "
            f"{two['scans_per_s'] / one['scans_per_s']:.2f}x | | (scales with machines, not "
            f"with workers on one machine's {result['machine']['cores']} cores) |"]


EXTRA_ROWS["11"] = ("archive", measure, lines)
