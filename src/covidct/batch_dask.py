"""`predict-batch` on Dask distributed: each scan is one task on a worker that holds the models.

``covidct predict-batch ARCHIVE --out OUT --scheduler tcp://HOST:8786`` (an existing
cluster: Slurm through dask-jobqueue, Kubernetes, hand-started ``dask worker``s) or
``--cluster local`` (a LocalCluster of ``--workers`` processes on this machine).

* A worker plugin loads the model files once per worker process (and again in a worker that
  replaces a lost one); tasks only name a scan and its output folder.
* The driver (this process) writes the manifest, as the local engine does: one row per scan,
  atomically after every scan, so a run is resumable and per-scan errors are recorded.
* A worker lost mid-scan (killed, out of memory, its node gone) costs that scan's retry:
  the scheduler moves the task to another worker; other scans' finished results were
  already collected. A scan whose task takes down as many workers as the scheduler's
  ``distributed.scheduler.allowed-failures`` (3 by default) gets an error row instead.
* Paths are sent as they are: workers must see the archive and the output folder at the
  same paths (a shared file system, as on a Slurm cluster).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

from .batch_worker import WORKER, init_worker, predict_one, worker_died_row
from .errors import CovidctError

log = logging.getLogger(__name__)

PLUGIN_NAME = "covidct-models"


def _plugin(model_paths: Sequence[str], runtime: str, threads: int | None, pictures: bool):
    from distributed import WorkerPlugin

    class LoadModels(WorkerPlugin):
        """Loads the models into each worker process once (covidct.batch_worker's state)."""

        def __init__(self) -> None:
            self.args = (list(model_paths), runtime, threads, pictures)

        def setup(self, worker) -> None:
            paths, rt, n, pics = self.args
            # Threads per task: the worker's cores shared by the tasks it runs at once.
            n = n or max(1, (os.cpu_count() or 1) // max(1, worker.state.nthreads))
            init_worker(paths, rt, n, pics)
            if rt == "torch" and worker.state.total_resources.get("GPU"):
                _to_gpu()
            log.info("covidct: worker %s loaded %d model(s)", worker.address, len(paths))

    return LoadModels()


def _to_gpu() -> None:
    """Move the worker's PyTorch models to its GPU (a worker started with --resources GPU=1)."""
    import torch

    if not torch.cuda.is_available():
        log.warning("covidct: worker has a GPU resource but CUDA is not available; using the CPU")
        return
    for model in WORKER["models"]:
        model.to("cuda")


def _task(scan_path: str, out_dir: str, name: str, index: int) -> dict[str, Any]:
    if "models" not in WORKER:  # the plugin failed on this worker: say so per scan
        raise RuntimeError("covidct models are not loaded on this worker")
    return predict_one(scan_path, out_dir, name, index)


def connect(scheduler: str, workers: int):
    """A Client on ``scheduler`` (an address) or, for "local", on a new LocalCluster of
    ``workers`` single-threaded processes on the loopback interface (no dashboard)."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(scheduler, timeout="30s"), None
    except (OSError, TimeoutError) as exc:
        raise CovidctError(f"cannot reach the Dask scheduler at {scheduler} "
                           f"({type(exc).__name__})") from None


def run_on_dask(jobs: Sequence[tuple[str, str, str, int]], init_args: tuple, scheduler: str,
                workers: int, resources: dict[str, float] | None = None,
                threads_given: bool = False) -> Iterator[dict[str, Any]]:
    """Yield each scan's manifest row as its task finishes (any order)."""
    from distributed import as_completed

    model_paths, runtime, threads, pictures = init_args
    client, cluster = connect(scheduler, workers)
    try:
        # Local clusters split the cores among their workers as the local engine does.
        per_task = threads if (threads_given or cluster is not None) else None
        client.register_plugin(_plugin(model_paths, runtime, per_task, pictures), name=PLUGIN_NAME)
        futures = {}
        for i, job in enumerate(jobs):
            future = client.submit(_task, *job, key=f"covidct-scan-{i}", pure=False,
                                   resources=resources, priority=-i)
            futures[future] = job
        for future in as_completed(list(futures)):
            job = futures.pop(future)
            try:
                row = future.result()
            except Exception as exc:  # KilledWorker, or a worker without models
                row = worker_died_row(*job, exc)
            # Forget the result at once: a result the client still holds is recomputed
            # when the worker keeping it dies, which would redo a finished scan.
            future.release()
            del future
            yield row
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
