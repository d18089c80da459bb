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
#: Largest slice a picture upload or a scan may have, in pixels (rows x columns): 4096x4096.
#: CT slices are 512x512 (rarely 1024x1024); a bigger picture is refused from its header
#: (413) before it is decoded, so a tiny, highly compressed PNG cannot claim gigabytes.
MAX_SLICE_SIDE = 4096
MAX_SLICE_PIXELS = MAX_SLICE_SIDE * MAX_SLICE_SIDE
#: Finished jobs are deleted this many days after they finished (0: kept forever).
DEFAULT_KEEP_DAYS = 30.0


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
    #: Largest slice (rows x columns) accepted; pictures over it are refused from the header.
    max_slice_pixels: int = MAX_SLICE_PIXELS
    #: Days a finished job (row, result, stored slices) is kept; 0 keeps jobs forever.
    keep_days: float = DEFAULT_KEEP_DAYS

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        if self.workers < 1 or self.max_pending < 1 or self.max_slices < 1:
            raise ValueError("workers, max_pending and max_slices must be at least 1")
        if self.keep_days < 0:
            raise ValueError("keep_days must be 0 (keep forever) or more")

    @classmethod
    def from_env(cls, **overrides) -> "ServeConfig":
        """Settings with the token and data folder taken from the environment when not given."""
        # An explicit token wins; None or "" (flag not given) falls back to the variable.
        overrides["token"] = overrides.get("token") or os.environ.get(TOKEN_ENV) or None
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
