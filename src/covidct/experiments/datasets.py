"""Which data an experiment runs on: COVIDx-format slices or CT volumes, real or synthetic.

Accepted ``--data`` folders:

- COVIDx CT-2A or any dataset in its format: ``train/val/test_COVIDx_CT-2A.txt`` beside an
  images folder (``images/``, or ``2A_images/`` as the Kaggle release names it);
- a ``covidct synth`` cohort: its ``covidx/`` subfolder for the slice experiments, the
  folder itself (``labels.csv``) for CovidCTNet;
- for CovidCTNet also the method's folder per class, or a labels CSV (see ``covidct train-covidctnet``).

A README carrying the synthetic tag in the folder or just above it marks the data synthetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..constants import SPLITS
from ..covidx import IMAGES_DIR, split_path
from ..errors import DatasetError
from ..bit.slice_data import find_synthetic_marker
from .presets import KIND_SLICES

#: COVIDx CT-2A as downloaded keeps its slices in 2A_images/.
IMAGE_DIRS = (IMAGES_DIR, "2A_images")


@dataclass(frozen=True)
class ExperimentData:
    root: Path
    kind: str            # "covidx" (slices) or "volumes"
    description: str     # what the output says the data is
    synthetic: bool
    split_dir: Path | None = None
    images: Path | None = None

    def split(self, name: str) -> Path:
        assert self.split_dir is not None
        return split_path(self.split_dir, name)

    def to_dict(self) -> dict:
        return {"path": str(self.root), "kind": self.kind, "description": self.description,
                "synthetic": self.synthetic,
                "split_dir": str(self.split_dir) if self.split_dir else None,
                "images": str(self.images) if self.images else None}


def find_data(path: str | Path, kind: str) -> ExperimentData:
    """The experiment's data for a preset kind, or a DatasetError naming the folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError("no such data folder", root)
    if kind == KIND_SLICES:
        return _covidx(root)
    return _volumes(root)


def _covidx(root: Path) -> ExperimentData:
    for folder in (root, root / "covidx"):
        if folder.is_dir() and split_path(folder, "train").is_file():
            missing = [s for s in SPLITS if not split_path(folder, s).is_file()]
            if missing:
                raise DatasetError(f"missing split file(s) {', '.join(split_path(folder, s).name for s in missing)}",
                                   folder)
            images = next((folder / d for d in IMAGE_DIRS if (folder / d).is_dir()), None)
            if images is None:
                raise DatasetError(f"no images folder ({' or '.join(IMAGE_DIRS)}) beside the split files",
                                   folder)
            synthetic = find_synthetic_marker(folder, images)
            what = ("synthetic cohort (covidct synth), COVIDx-format slices" if synthetic
                    else "COVIDx CT-2A-format slices")
            return ExperimentData(root, "covidx", f"{what} in {folder}", synthetic, folder, images)
    raise DatasetError(f"not a COVIDx-format dataset: no {split_path(root, 'train').name} here or in "
                       "covidx/ (give the COVIDx CT-2A folder or a `covidct synth` output)", root)


def _volumes(root: Path) -> ExperimentData:
    if root.is_file() or (root / "labels.csv").is_file() or any(
            (root / d).is_dir() for d in ("Control", "CAP", "Covid", "COVID-19")):
        synthetic = find_synthetic_marker(root if root.is_dir() else root.parent)
        what = "synthetic cohort (covidct synth), CT volumes" if synthetic else "CT volumes"
        return ExperimentData(root, "volumes", f"{what} in {root}", synthetic)
    if split_path(root, "train").is_file():
        raise DatasetError("CovidCTNet needs CT volumes (class folders or labels.csv); "
                           "COVIDx CT-2A holds single slices", root)
    raise DatasetError("no CT volumes: expected Control/ CAP/ Covid/ folders, labels.csv, or a "
                       "labels CSV (see `covidct train-covidctnet --help`)", root)
