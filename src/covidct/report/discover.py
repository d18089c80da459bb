"""What a report is made of: the inputs found under a demo/experiment folder.

The folder is searched recursively (hidden folders, ``checkpoints/`` and symbolic links
are skipped) for:

- **training runs**: a folder with ``config.json`` and ``history.csv`` (``summary.json``
  marks a finished run);
- **evaluations**: a folder with a covidct ``results.json`` (from ``covidct evaluate`` or
  :func:`covidct.evaluation.evaluate`), with, when present, ``scores.npz``,
  ``explain.json``, ``gradcam/index.json``, ``infection/index.json`` and ``tsne.png``;
- **cohorts**: a folder with ``labels.csv`` (patients per split and class) and/or COVIDx
  split files ``<split>_COVIDx_CT-2A.txt`` (slices and patients per split and class); a
  README carrying the synthetic tag in it or in a folder above it marks it synthetic;
- **predictions**: ``<method>.json`` files written by ``covidct predict --out`` (pictures
  beside them whose names start with the method are shown with them);
- **experiments**: ``experiment.json`` written by ``covidct experiment`` (its summary table,
  with ``figure.png`` beside it); the runs inside are found as training runs too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..constants import METHODS, SYNTHETIC_TAG
from ..covidx import split_of
from ..errors import DatasetError

SKIP_DIRS = ("checkpoints", "__pycache__", "node_modules")


@dataclass
class TrainingRun:
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None

    @property
    def synthetic(self) -> bool:
        data = self.config.get("data")
        return bool((isinstance(data, dict) and data.get("synthetic")) or self.config.get("synthetic")
                    or (self.summary or {}).get("synthetic"))


@dataclass
class Evaluation:
    path: Path
    results: dict[str, Any]
    explain: dict[str, Any] | None = None
    galleries: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> index.json
    has_scores: bool = False
    tsne: Path | None = None
    localisation: dict[str, Any] | None = None   # localisation.json: explanations vs truth
    localisation_png: Path | None = None
    lungs: dict[str, Any] | None = None   # lungs.json: the lung mask scored (synthetic cohorts)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.results.get("provenance") or {}

    @property
    def method(self) -> str:
        return str(self.provenance.get("method") or "")

    @property
    def synthetic(self) -> bool:
        return bool(self.provenance.get("synthetic") or self.results.get("synthetic_notice"))


@dataclass
class Cohort:
    path: Path
    labels_csv: Path | None
    split_files: list[Path]
    synthetic: bool
    readme: Path | None


@dataclass
class PredictionFile:
    path: Path
    content: dict[str, Any]
    pictures: list[Path]

    @property
    def synthetic(self) -> bool:
        return bool(self.content.get("synthetic_notice"))


@dataclass
class Experiment:
    path: Path
    content: dict[str, Any]
    figure: Path | None

    @property
    def synthetic(self) -> bool:
        return bool(self.content.get("synthetic"))


@dataclass
class Findings:
    root: Path
    runs: list[TrainingRun] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)
    cohorts: list[Cohort] = field(default_factory=list)
    predictions: list[PredictionFile] = field(default_factory=list)
    experiments: list[Experiment] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.runs or self.evaluations or self.cohorts or self.predictions
                    or self.experiments)

    @property
    def synthetic(self) -> bool:
        return any(x.synthetic for x in (*self.runs, *self.evaluations, *self.cohorts,
                                         *self.predictions, *self.experiments))

    def relative(self, path: str | os.PathLike) -> str:
        """A path as shown in the report: relative to the root when inside it."""
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve())) or "."
        except ValueError:
            return str(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _walk(root: Path):
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        yield Path(folder), set(files)


def _synthetic_readme(folder: Path, files: set[str]) -> Path | None:
    for name in sorted(files):
        if name.upper().startswith(("README", "SYNTHETIC")):
            try:
                with open(folder / name, encoding="utf-8", errors="ignore") as fh:
                    if SYNTHETIC_TAG in fh.read(100_000):
                        return folder / name
            except OSError:
                continue
    return None


def discover(root: str | os.PathLike) -> Findings:
    """Everything the report can show under ``root`` (see the module docstring)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("no such folder", root)
    if not root.is_dir():
        raise DatasetError("not a folder (give the demo or experiment folder)", root)
    found = Findings(root)
    readmes: dict[Path, Path | None] = {}  # folder -> synthetic README in it or above it
    for folder, files in _walk(root):
        own = _synthetic_readme(folder, files)
        readmes[folder] = own or (readmes.get(folder.parent) if folder != root else None)
        if "config.json" in files and "history.csv" in files:
            config = _read_json(folder / "config.json")
            if config is not None:
                summary = _read_json(folder / "summary.json") if "summary.json" in files else None
                found.runs.append(TrainingRun(folder, config, summary))
        if "results.json" in files:
            evaluation = _evaluation(folder, files)
            if evaluation is not None:
                found.evaluations.append(evaluation)
        splits = sorted(folder / f for f in files if split_of(f))
        if "labels.csv" in files or splits:
            readme = readmes[folder]
            found.cohorts.append(Cohort(folder, folder / "labels.csv" if "labels.csv" in files else None,
                                        splits, readme is not None, readme))
        if "experiment.json" in files:
            content = _read_json(folder / "experiment.json")
            if content and isinstance(content.get("table"), dict) and content.get("experiment"):
                found.experiments.append(Experiment(
                    folder, content, folder / "figure.png" if "figure.png" in files else None))
        for method in METHODS:
            if f"{method}.json" in files:
                content = _read_json(folder / f"{method}.json")
                if content and "probabilities" in content and content.get("method") == method:
                    pictures = sorted(folder / f for f in files
                                      if f.startswith(method) and f.lower().endswith(".png"))
                    found.predictions.append(PredictionFile(folder / f"{method}.json", content, pictures))
    return found


def _evaluation(folder: Path, files: set[str]) -> Evaluation | None:
    results = _read_json(folder / "results.json")
    if not results or "metrics" not in results or "provenance" not in results:
        return None
    evaluation = Evaluation(folder, results, has_scores="scores.npz" in files)
    if "explain.json" in files:
        evaluation.explain = _read_json(folder / "explain.json")
    for kind in ("gradcam", "infection"):
        index = _read_json(folder / kind / "index.json") if (folder / kind).is_dir() else None
        if index and isinstance(index.get("items"), list):
            evaluation.galleries[kind] = index
    if "tsne.png" in files:
        evaluation.tsne = folder / "tsne.png"
    if "localisation.json" in files:
        evaluation.localisation = _read_json(folder / "localisation.json")
    if "localisation.png" in files:
        evaluation.localisation_png = folder / "localisation.png"
    if "lungs.json" in files:
        evaluation.lungs = _read_json(folder / "lungs.json")
    return evaluation
