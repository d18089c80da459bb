"""A CovidCTNet training run folder: config, history, checkpoints, model files, summary.

    RUN_DIR/config.json          the settings of the run
    RUN_DIR/history.csv          one row per epoch and stage (losses, validation figures)
    RUN_DIR/checkpoints/*.pt     <stage>-last.pt (resume) and <stage>-best.pt, written atomically
    RUN_DIR/denoiser.pt          the frozen BCDU-Net of stage "denoiser"
    RUN_DIR/model.pt             the covidct model file (stage "classifier")
    RUN_DIR/ablation/model.pt    the ablation's model file (3D CNN on plain volumes)
    RUN_DIR/summary.json         data counts, synthetic flag, results (written last)
"""
from __future__ import annotations

import csv
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..atomic import atomic_path, write_json, write_text
from ..errors import ModelError
from ..models import read_record

HISTORY_COLUMNS = ("stage", "epoch", "train_loss", "val_loss", "val_accuracy", "seconds",
                   "val_map_auc")
DENOISER_FORMAT = "covidctnet-denoiser"


class RunFolder:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.config = self.root / "config.json"
        self.history = self.root / "history.csv"
        self.denoiser = self.root / "denoiser.pt"
        self.model = self.root / "model.pt"
        self.ablation_model = self.root / "ablation" / "model.pt"
        self.summary = self.root / "summary.json"

    # -- history --------------------------------------------------------------------------

    def read_history(self) -> list[dict[str, str]]:
        if not self.history.is_file():
            return []
        with open(self.history, newline="") as fh:
            return list(csv.DictReader(fh))

    def write_history(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """Replace ``stage``'s rows (other stages' rows are kept). Locked: an ensemble's
        members train in parallel processes and write the same file."""
        with self._history_lock():
            kept = [r for r in self.read_history() if r.get("stage") != stage]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in kept + [{**r, "stage": stage} for r in rows]:
                writer.writerow({k: _fmt(row.get(k)) for k in HISTORY_COLUMNS})
            write_text(self.history, buf.getvalue())

    @contextmanager
    def _history_lock(self):
        try:
            import fcntl
        except ImportError:  # no fcntl (Windows): members train one after another there
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".history.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> Path:
        import torch

        path = self.checkpoints / f"{name}.pt"
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        import torch

        path = self.checkpoints / f"{name}.pt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"unreadable checkpoint ({type(exc).__name__}); delete it to restart "
                             "the stage", path) from None

    # -- the frozen denoiser --------------------------------------------------------------

    def save_denoiser(self, state_dict: dict, settings: dict[str, Any], facts: dict[str, Any]) -> Path:
        import torch

        with atomic_path(self.denoiser) as tmp:
            torch.save({"format": DENOISER_FORMAT, "settings": settings, "state_dict": state_dict,
                        "facts": facts}, tmp)
        return self.denoiser

    # -- summary --------------------------------------------------------------------------

    def read_summary(self) -> dict[str, Any]:
        if not self.summary.is_file():
            return {}
        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return {}

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return write_json(self.summary, summary)


def load_denoiser_file(path: str | os.PathLike):
    """(BCDUNet, settings dict, facts) from a run's denoiser.pt."""
    # lazy: imports torch, which this module does not need on import
    from .bcdunet import BCDUNet

    record = read_record(path, DENOISER_FORMAT,
                         "no trained denoiser here; run `covidct train-covidctnet --stage denoiser` "
                         "first or pass --denoiser FILE",
                         "not a readable denoiser file", "not a CovidCTNet denoiser file")
    model = BCDUNet(int(record["settings"]["denoiser_width"]))
    model.load_state_dict(record["state_dict"])
    return model.eval(), dict(record["settings"]), dict(record.get("facts") or {})


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
