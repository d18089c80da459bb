"""Settings of one `covidct serve` process, shared by the upload checks, the jobs and the routes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Where jobs and results live when --data is not given.
DEFAULT_DATA_DIR = Path("~/.local/share/covidct/serve")
TOKEN_ENV = "COVIDCT_TOKEN"
DATA_ENV = "COVIDCT_SERVE_DATA"

MIB = 1024 * 1024


@dataclass
class ServeConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    #: Largest request body accepted (413 above it). A 600-slice 512x512 DICOM zip is ~300 MiB.
    max_upload_bytes: int = 1024 * MIB
    #: Largest total size a zip may unpack to (the archive checks refuse more).
    max_unpacked_bytes: int = 4096 * MIB
    #: Most slices (DICOM files, pictures, NIfTI axial slices) one scan may have (422 above).
    max_slices: int = 1000
    #: Prediction jobs run at once; the rest wait in the queue.
    workers: int = 2
    #: Jobs waiting or running before new uploads are answered 503 (retry later).
    max_pending: int = 64
    #: Bearer token every /api request must carry (None: no token needed).
    token: str | None = None
    #: Read patient name, ID and dates from DICOM and show them on the page.
    show_phi: bool = False

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.workers < 1 or self.max_pending < 1 or self.max_slices < 1:
            raise ValueError("workers, max_pending and max_slices must be at least 1")

    @classmethod
    def from_env(cls, **overrides) -> "ServeConfig":
        """Settings with the token and data folder taken from the environment when not given."""
        overrides.setdefault("token", os.environ.get(TOKEN_ENV) or None)
        if overrides.get("data_dir") is None:
            overrides["data_dir"] = Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)
        return cls(**{k: v for k, v in overrides.items() if v is not None or k == "token"})

    @property
    def work_dir(self) -> Path:
        """Private folder of the per-job upload folders (emptied at start-up)."""
        return self.data_dir / "work"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.sqlite3"
