"""What each batch worker process does: load the models once, then turn one scan into its
manifest row. Used by the local process pool (:mod:`covidct.batch`) and by Dask workers
(:mod:`covidct.batch_dask`) alike."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import CovidctError
from .models import load_model
from .predict import predict_to_folder
from .privacy import show_paths

STATUS_OK, STATUS_ERROR = "ok", "error"

#: The models (and options) loaded once per worker process by :func:`init_worker`.
WORKER: dict[str, Any] = {}


def init_worker(model_paths: Sequence[str], runtime: str, threads: int, pictures: bool) -> None:
    """Load the models once per worker process."""
    import torch

    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    WORKER.update(models=[load_model(p, runtime, threads) for p in model_paths],
                   pictures=pictures)


def predict_one(scan_path: str, out_dir: str, name: str = "", index: int = 0) -> dict[str, Any]:
    """One scan -> its manifest row; a scan's own failure becomes an error row. The row names
    the scan by ``name`` (a salted digest unless --show-paths) and its position."""
    start = time.perf_counter()
    row: dict[str, Any] = {"scan": name or Path(scan_path).name, "index": index or "",
                           "outputs": os.path.relpath(out_dir, Path(out_dir).parents[1])}
    try:
        predictions = predict_to_folder(scan_path, WORKER["models"], out_dir,
                                        pictures=WORKER["pictures"])
    except CovidctError as exc:  # the message without the path: it may carry identifiers
        text = exc.message if not show_paths() else str(exc)
        return {**row, "status": STATUS_ERROR, "error": _hide(text, scan_path, row["scan"]),
                "seconds": f"{time.perf_counter() - start:.2f}"}
    except Exception as exc:  # one bad scan must not stop the archive
        text = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return {**row, "status": STATUS_ERROR, "error": _hide(text, scan_path, row["scan"]),
                "seconds": f"{time.perf_counter() - start:.2f}"}
    if predictions.refused:
        row["error"] = _hide("; ".join(f"{m} not run: {r}" for m, r in predictions.refused.items()),
                             scan_path, row["scan"])
    return {**row, "status": STATUS_OK, "error": row.get("error", ""),
            "labels": ";".join(f"{p.method}={p.label}" for p in predictions),
            "probabilities": json.dumps({p.method: dict(zip(p.class_names, (round(float(v), 6) for v in p.probabilities)))
                                         for p in predictions}, sort_keys=True),
            "synthetic": str(any(p.synthetic for p in predictions)).lower(),
            "seconds": f"{time.perf_counter() - start:.2f}"}


def _hide(text: str, scan_path: str, name: str) -> str:
    """One line, without the scan's path (unless --show-paths)."""
    text = (text.splitlines() or [""])[0]
    if not show_paths():
        text = text.replace(scan_path, name).replace(Path(scan_path).name, name)
    return text[:300]


def worker_died_row(scan: str, out: str, name: str, index: int,
                    exc: BaseException) -> dict[str, Any]:
    """The row of a scan whose worker process died under it (memory, a crash in a library),
    named like every other row (``name`` is a salted digest unless --show-paths)."""
    return {"scan": name, "index": index, "status": STATUS_ERROR,
            "outputs": os.path.relpath(out, Path(out).parents[1]),
            "error": f"worker process died ({type(exc).__name__})"}
