"""One call that explains an evaluation: galleries, t-SNE and features into its folder.

``explain_evaluation(model, data, split, eval_dir)`` runs after
:func:`covidct.evaluation.evaluate` wrote ``eval_dir/scores.npz`` and adds::

    eval_dir/gradcam/NN_<true>_<correct|wrong>.png + index.json   (slice classifier)
    eval_dir/infection/NN_<true>_<correct|wrong>.png + index.json (CovidCTNet, infection input)
    eval_dir/tsne.png, eval_dir/features.npz                       (penultimate features)
    eval_dir/explain.json                                          what was made, and how

Gallery cases are, per true class, the most confident correct calls and the most confident
mistakes (:mod:`.cases`). ``index.json`` describes each picture by class and probability
only: no file names or patient ids, so the report can show it as it is.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_dir, write_bytes, write_json
from ..constants import SYNTHETIC_NOTICE
from ..covidx import read_split
from ..digest import file_digest
from ..errors import DatasetError, ModelError
from ..models import load_model
from ..progress import inner_bar
from ..scanio import load_scan
from ..covidctnet.volume_data import load_cohort
from .cases import Case, select_cases
from .infection_pictures import infection_figure
from .plotting import figure_bytes, png_bytes, save_figure

GRADCAM_DIR = "gradcam"
INFECTION_DIR = "infection"
TSNE_PNG = "tsne.png"
FEATURES_NPZ = "features.npz"
EXPLAIN_JSON = "explain.json"
INDEX_JSON = "index.json"
#: Fewest cases for which a t-SNE map is drawn (below it the picture says nothing).
MIN_TSNE_ITEMS = 6


def explain_evaluation(model: Any, data: str | os.PathLike, split: str, eval_dir: str | os.PathLike,
                       n_per_class: int = 2, n_wrong_per_class: int | None = None,
                       tsne_max_items: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Write the galleries, t-SNE map and features of an evaluated model into ``eval_dir``.

    ``model`` is a loaded model or a model file; ``data``/``split`` are what the evaluation
    scored (the same arguments as :func:`covidct.evaluation.evaluate`). Returns the
    ``explain.json`` content (paths are relative to ``eval_dir``).
    """
    # lazy: imports scipy, which this module does not need on import
    from ..evaluation import load_scores

    eval_dir = Path(eval_dir)
    scores_path = eval_dir / "scores.npz"
    if not scores_path.is_file():
        raise DatasetError("no scores.npz: run the evaluation (covidct evaluate --out) first", eval_dir)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    scores = load_scores(scores_path)
    if tuple(scores.class_names) != tuple(model.class_names):
        raise ModelError(f"scores in {scores_path} are for classes {scores.class_names}, the model "
                         f"has {tuple(model.class_names)}")
    cases = select_cases(scores.y_true, scores.y_prob, n_per_class, n_wrong_per_class)
    summary: dict[str, Any] = {"method": model.method, "split": split,
                               "selection": (f"per true class: the {n_per_class} most confident "
                                             "correct calls and the "
                                             f"{n_per_class if n_wrong_per_class is None else n_wrong_per_class}"
                                             " most confident mistakes")}
    synthetic = _synthetic(eval_dir)
    # The gallery's folder and key are the model's overlay name: GRADCAM_DIR or INFECTION_DIR.
    summary[model.overlay] = model.write_gallery(data, split, scores, cases, eval_dir / model.overlay)
    features = model.features(data, split, tsne_max_items, seed)
    stored = _stored_names(eval_dir)  # features.npz names patients as scores.npz does
    features = {**features, "groups": np.array([stored(str(g), "patient") for g in features["groups"]]),
                "items": np.array([stored(str(i), "item") for i in features["items"]])}
    summary["tsne"] = write_tsne(features, model.class_names, eval_dir, seed, synthetic)
    if synthetic:
        summary["synthetic_notice"] = SYNTHETIC_NOTICE
    write_json(eval_dir / EXPLAIN_JSON, summary)
    return summary


def _synthetic(eval_dir: Path) -> bool:
    import json

    try:
        document = json.loads((eval_dir / "results.json").read_text(encoding="utf-8"))
        return bool(document.get("provenance", {}).get("synthetic", False))
    except (OSError, ValueError):
        return False


def _picture_name(number: int, class_name: str, case: Case) -> str:
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", class_name).strip("-") or "class"
    return f"{number:02d}_{safe}_{case.kind}.png"


def _entry(case: Case, names, probabilities, explained: int, file: str, level: str) -> dict[str, Any]:
    return {"file": file, "kind": case.kind, "level": level, "score_row": case.index,
            "true_class": names[case.true_class], "predicted_class": names[case.predicted_class],
            "explained_class": names[explained],
            "probabilities": {n: float(p) for n, p in zip(names, probabilities)}}


# The slice classifier --------------------------------------------------------------------

def write_gradcam_gallery(classifier: Any, split_file: Path, image_dir: Path, scores, cases: list[Case],
                          out_dir: Path) -> dict[str, Any]:
    """Grad-CAM overlays of the chosen slices, each explaining the class the model called."""
    # lazy: imports torch, PIL, which this module does not need on import
    from ..bit.slice_data import read_gray
    from .gradcam import gradcam_picture, slice_gradcam

    stored = _stored_names(out_dir.parent)
    records = {stored(r.filename, "item"): r for r in read_split(split_file)}
    names = tuple(scores.class_names)
    entries = []
    with atomic_dir(out_dir) as tmp:
        for number, case in enumerate(inner_bar(cases, "grad-cam", "case"), start=1):
            record = records.get(str(scores.items[case.index]))
            if record is None:
                raise DatasetError(f"scored slice {scores.items[case.index]!r} is not in the split "
                                   "file: the scores come from other data", split_file)
            pixels = read_gray(image_dir / record.filename)
            result = slice_gradcam(classifier, pixels, classifier.input_box(pixels, record.box),
                                   class_index=case.predicted_class)
            file = _picture_name(number, names[case.true_class], case)
            (tmp / file).write_bytes(png_bytes(gradcam_picture(result["pixels"], result["cam"])))
            entries.append(_entry(case, names, scores.y_prob[case.index], result["class_index"],
                                  file, "slice"))
        write_json(tmp / INDEX_JSON, {"kind": "gradcam", "items": entries,
                                      "note": "left: the cropped slice; right: Grad-CAM of the "
                                              "predicted class over it"})
    return {"folder": out_dir.name, "n": len(entries)}


# CovidCTNet --------------------------------------------------------------------------------

def _cohort_paths(data: str | os.PathLike, split: str) -> dict[str, Path]:
    return {item.patient_id: item.path for item in load_cohort(data).split(split)}


def _stored_names(eval_dir: Path):
    """Names as the evaluation in ``eval_dir`` stored them (see evaluation.item_namer)."""
    # lazy: imports scipy, which this module does not need on import
    from ..evaluation import item_namer

    return item_namer(eval_dir)


def scan_arrays(model: Any, path: Path) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(pre-processed volume, 3D CNN input inside the lungs, in-plane field of view in mm)
    of one scan file.

    Goes through the model's own cached steps, so nothing is computed twice; the input is
    what the 3D CNN read during evaluation, times the lung mask on its grid (as predictions
    show it), so the pictures show the lungs, not the body outline or the table.
    """
    # lazy: imports scipy, which this module does not need on import
    from ..lungs import scan_lungs
    from ..covidctnet.preprocess import lung_grid

    scan = load_scan(path)
    content = "file:" + file_digest(path)
    volume, _ = model.volume(scan, content)
    raw = model.map_of(model.raw_input(volume, content)[0])
    inputs = raw * lung_grid(scan_lungs(scan), scan, raw.shape)
    fov = float(scan.shape[2] * scan.spacing[2]) if scan.geometry_known else None
    return volume, inputs, fov


def write_infection_gallery(model: Any, data, split: str, scores, cases: list[Case],
                            out_dir: Path) -> dict[str, Any]:
    """Infection-map overlays and projections of the chosen scans."""

    if not model.settings.reads_map:
        return {"folder": None, "n": 0,
                "note": "this CovidCTNet reads plain volumes (no BCDU-Net), so it has no infection maps"}
    stored = _stored_names(out_dir.parent)
    paths = {stored(pid, "item"): path for pid, path in _cohort_paths(data, split).items()}
    names = tuple(scores.class_names)
    entries = []
    with atomic_dir(out_dir) as tmp:
        for number, case in enumerate(inner_bar(cases, "infection maps", "case"), start=1):
            patient = str(scores.items[case.index])
            if patient not in paths:
                raise DatasetError(f"a scored scan is not in split {split!r} of the cohort: the "
                                   "scores come from other data", data)
            volume, infection, fov = scan_arrays(model, paths[patient])
            file = _picture_name(number, names[case.true_class], case)
            fig = infection_figure(volume, infection, fov_mm=fov)
            (tmp / file).write_bytes(figure_bytes(fig, "png", dpi=100))
            entries.append(_entry(case, names, scores.y_prob[case.index], case.predicted_class,
                                  file, "scan"))
        write_json(tmp / INDEX_JSON, {"kind": "infection", "items": entries,
                                      "note": "infection map over its three most affected slices, "
                                              "then axial and coronal maximum-intensity projections"})
    return {"folder": out_dir.name, "n": len(entries)}


def scan_features(model: Any, data, split: str) -> dict[str, np.ndarray]:
    """Penultimate features of the 3D CNN for every scan of the split (cached inputs)."""
    import torch

    # lazy: imports torch, which this module does not need on import
    from .features import compute_features

    from ..covidctnet.infection_maps import network_batch

    items = load_cohort(data).split(split)
    inputs = (torch.from_numpy(network_batch(model.input_for_file(i.path)[0][None], model.settings))
              for i in inner_bar(items, "features", "case"))
    features = compute_features(model.classifier, inputs)
    return {"features": features, "labels": np.array([model.target_index(i.label) for i in items]),
            "groups": np.array([i.patient_id for i in items], dtype=str),
            "items": np.array([i.patient_id for i in items], dtype=str)}


# t-SNE ------------------------------------------------------------------------------------

def write_tsne(features: dict[str, np.ndarray], class_names, eval_dir: Path, seed: int,
               synthetic: bool) -> dict[str, Any]:
    """t-SNE of the features -> tsne.png and features.npz (features, labels, points)."""
    # lazy: imports torch, which this module does not need on import
    from .features import neighbour_agreement, plot_tsne, tsne_embedding

    n = int(len(features["labels"]))
    if n < MIN_TSNE_ITEMS:
        return {"file": None, "n": n, "note": f"Too few cases for a t-SNE map ({n} < {MIN_TSNE_ITEMS})."}
    points = tsne_embedding(features["features"], seed=seed)
    agreement = neighbour_agreement(points, features["labels"])
    buf = io.BytesIO()
    np.savez_compressed(buf, features=features["features"], labels=features["labels"],
                        points=points, groups=features["groups"], items=features["items"],
                        class_names=np.asarray(class_names, dtype=str))
    write_bytes(eval_dir / FEATURES_NPZ, buf.getvalue())
    save_figure(plot_tsne(points, features["labels"], class_names, synthetic=synthetic),
                eval_dir / TSNE_PNG, dpi=120)
    return {"file": TSNE_PNG, "features": FEATURES_NPZ, "n": n,
            "feature_dim": int(features["features"].shape[1]),
            "neighbour_agreement": agreement, "seed": seed}
