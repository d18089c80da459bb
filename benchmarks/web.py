"""Row 10: the web server's upload-to-result time, as a user gets it: `covidct serve` started
as a command, a zip of a DICOM series posted to /api/scans, the job polled until done.
Models as in row 9 (random weights); the series is a SYNTHETIC phantom."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from .common import Sizes
from .startup import (checked_model_files, child_env, clear_array_cache, dicom_series,
                      int8_verdicts, model_files)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zip(series: Path, out: Path) -> Path:
    if not out.is_file():
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(series.iterdir()):
                zf.write(file, f"series/{file.name}")
    return out


def upload_to_result(sizes: Sizes, threads: int, work: Path) -> dict[str, Any]:
    """Seconds from the start of the upload to the finished job, for the row-9 series
    (best of ``reps`` uploads after one warm-up), with the server's own stage timings: for
    the row-9 model files, and (``int8_checked``) for those whose int8 check ran, as a
    trained model's (startup.checked_model_files)."""
    checked = checked_model_files(sizes, threads, work)
    return {**_serve_and_upload(sizes, model_files(sizes, work)["bit"].parent, work / "cache", work),
            "int8_checked": {**_serve_and_upload(sizes, Path(checked["models"]),
                                                 Path(checked["cache"]), work),
                             "int8_checks": int8_verdicts(checked)}}


def _serve_and_upload(sizes: Sizes, models: Path, cache: Path, work: Path) -> dict[str, Any]:
    import httpx

    archive = _zip(dicom_series(sizes, work), work / "cold-series.zip")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "covidct", "serve", "--port", str(port), "--models",
         str(models), "--data", str(work / "serve-data"), "--workers", "1"],
        env=child_env(COVIDCT_CACHE=str(cache)), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            started = time.perf_counter()
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.perf_counter() - started > 600:
                    raise RuntimeError(f"covidct serve did not start: {server.stderr.read()[-300:]}")
                time.sleep(0.1)
            ready_s = time.perf_counter() - started
            runs = []
            for _ in range(1 + max(1, sizes.reps - 1)):
                clear_array_cache(cache)  # each upload is a new scan to the server
                runs.append(_one_upload(client, archive))
    finally:
        server.terminate()
        server.wait(30)
    best = min(runs[1:], key=lambda r: r["seconds"])
    return {"slices": sizes.cold_series[0], "matrix": sizes.cold_series[1],
            "zip_mb": archive.stat().st_size / 1e6, "server_ready_s": ready_s,
            "first_upload_s": runs[0]["seconds"], **best}


def _one_upload(client, archive: Path) -> dict[str, Any]:
    start = time.perf_counter()
    with open(archive, "rb") as fh:
        reply = client.post("/api/scans", files={"files": (archive.name, fh, "application/zip")})
    reply.raise_for_status()
    url = reply.json()["url"]
    while True:
        job = client.get(url).json()
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if job["status"] != "done":
        raise RuntimeError(f"web job failed: {job.get('error')}")
    result = job.get("result") or {}
    return {"seconds": seconds, "server_timings_s": result.get("timings", {})}
