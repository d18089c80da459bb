"""Explanations scored against the truth a synthetic cohort carries (``covidct synth``).

* CovidCTNet: the infection map against the phantom's lesion mask inside its lungs
  (``patients/<pid>/lesions.nii.gz`` and ``lungs.nii.gz``, labels.csv columns ``lesions`` and
  ``lungs``): the voxel-level ROC AUC, and the mean map value on lesions and on healthy lung
  per class (see :mod:`covidct.covidctnet.truth`).
* The slice classifier: for correctly called CP and NCP slices, the share of the Grad-CAM
  mass that falls on the slice's lesions (``covidx/lesion_masks/<image name>``, cropped with
  the same body box the classifier read), next to the share of the crop the lesions cover
  (what a map spread evenly would score), and how often the Grad-CAM peak lies on a lesion
  (the pointing game).

Data without these truth files (real data) gives ``None``: nothing is guessed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes
from ..covidx import read_split
from ..labels import labels_path, read_labels
from ..scan import evenly_spaced
from .plotting import figure_bytes

LOCALISATION_PNG = "localisation.png"
#: Lesion classes of the slice classifier whose correct calls are scored.
LESION_CLASSES = ("CP", "NCP")
#: At most this many slices get a Grad-CAM (evenly spread over the correct calls).
MAX_GRADCAM_SLICES = 120


def truth_rows(data: str | os.PathLike) -> dict[str, dict[str, Path]] | None:
    """patient_id -> {"lesions": path, "lungs": path} from a synth cohort's labels.csv."""
    labels = labels_path(data)
    if not labels.is_file() or labels.suffix.lower() != ".csv":
        return None
    rows = read_labels(labels)
    if not rows or not {"lesions", "lungs"} <= set(rows[0]):
        return None
    out = {r["patient_id"]: {"lesions": labels.parent / r["lesions"], "lungs": labels.parent / r["lungs"]}
           for r in rows if r.get("lesions") and r.get("lungs")}
    return out if all(p.is_file() for row in out.values() for p in row.values()) else None


# CovidCTNet -------------------------------------------------------------------------------

def infection_localisation(model: Any, data: str | os.PathLike, split: str,
                           out_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Infection maps of one split against the phantoms' lesion masks (None without truth)."""
    # lazy: imports scipy, which this module does not need on import
    from ..covidctnet.truth import score_map, truth_on_grid

    truth_files = truth_rows(data)
    if truth_files is None or not model.settings.reads_map:
        return None
    items = [i for i in model.cohort(data).split(split) if i.patient_id in truth_files]
    if not items:
        return None
    maps, method_maps, truths, labels = [], [], [], []
    for item in items:
        shown, method = model.maps_for_file(item.path)
        maps.append(shown)
        if model.settings.mask_input:
            method_maps.append(method)
        files = truth_files[item.patient_id]
        truths.append(truth_on_grid(files["lesions"], files["lungs"], model.settings))
        labels.append(item.label)
    result = score_map(maps, truths, labels)
    result.update({"split": split, "n_scans": len(items),
                   "what": "voxel-level ROC AUC of the infection map as shown (inside the lung "
                           "mask when the model reads it so) for lesion vs healthy lung voxels "
                           "inside the phantoms' true lungs (all scans pooled); mean map value "
                           "on lesion and on healthy-lung voxels per class"})
    if method_maps:
        # The lung mask zeroes consolidated lung it misses; the method's map (it has no lung
        # mask) separates what the denoiser finds from what the mask loses.
        result["method_map"] = {
            "auc": score_map(method_maps, truths, labels)["auc"],
            "what": "the same AUC for the method's map, input minus denoiser output, without "
                    "the lung mask"}
    if out_dir is not None:
        k = int(np.argmax([t.lesion.sum() for t in truths]))
        volume = model.volume_for_file(items[k].path)[0]
        result["figure"] = _infection_figure(volume, maps[k], truths[k], model.settings,
                                             Path(out_dir) / LOCALISATION_PNG, result["auc"])
    return result


def _infection_figure(volume, infection, truth, settings, path: Path, auc) -> str:
    """CT slice, infection map and true lesion mask side by side, on the slice with most lesion."""
    # lazy: imports scipy, which this module does not need on import
    from ..covidctnet.infection_maps import denoise_indices
    from ..covidctnet.preprocess import resize_depth

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = resize_depth(volume[denoise_indices(len(volume), settings.max_denoised_slices)],
                      settings.volume_slices)
    z = int(np.argmax(truth.lesion.sum(axis=(1, 2))))
    inside = infection[z][truth.lung[z]]
    limit = float(np.percentile(inside, 99)) if inside.size else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    panels = ((ct[z], "CT (pre-processed)", "gray", 0, 1),
              (np.where(truth.lung[z], infection[z], np.nan), "infection map (inside lungs)",
               "magma", 0, limit if limit > 0 else 1.0),
              (truth.lesion[z].astype(float) + 0.3 * truth.lung[z], "truth: lesion (white), lung",
               "gray", 0, 1.3))
    for ax, (image, title, cmap, lo, hi) in zip(axes, panels):
        colours = plt.get_cmap(cmap).with_extremes(bad="black")  # NaN: outside the lungs
        ax.imshow(image, cmap=colours, vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"SYNTHETIC phantom: infection map vs true lesions (voxel AUC "
                 f"{'n/a' if auc is None else f'{auc:.2f}'} over the split)", fontsize=10)
    write_bytes(path, figure_bytes(fig, "png", dpi=100))
    plt.close(fig)
    return path.name


# The slice classifier ---------------------------------------------------------------------

def gradcam_localisation(classifier: Any, split_file: Path, image_dir: Path, scores,
                         limit: int = MAX_GRADCAM_SLICES) -> dict[str, Any] | None:
    """Grad-CAM mass on lesions for correctly called CP/NCP slices (None without masks)."""
    # lazy: imports torch, scipy, PIL, which this module does not need on import
    from ..synth.cohort import LESION_MASKS
    from ..bit.slice_data import crop_box, read_gray
    from .gradcam import slice_gradcam

    masks = Path(image_dir).parent / LESION_MASKS
    if not masks.is_dir():
        return None
    names = list(scores.class_names)
    wanted = [names.index(c) for c in LESION_CLASSES if c in names]
    predicted = scores.y_prob.argmax(axis=1)
    rows = [k for k in range(len(scores.y_true))
            if scores.y_true[k] in wanted and predicted[k] == scores.y_true[k]]
    if not rows:
        return {"n_slices": 0, "note": "no correctly called CP/NCP slice to score"}
    rows = [rows[int(i)] for i in evenly_spaced(len(rows), limit)]
    records = {r.filename: r for r in read_split(split_file)}
    share, area, hits = [], [], []
    for k in rows:
        record = records[str(scores.items[k])]
        mask_file = masks / record.filename
        if not mask_file.is_file():
            continue
        pixels = read_gray(image_dir / record.filename)
        box = classifier.input_box(pixels, record.box)  # the crop the network read
        lesion = crop_box(read_gray(mask_file), box) > 127
        cam = slice_gradcam(classifier, pixels, box, class_index=int(scores.y_true[k]))["cam"]
        if not lesion.any() or cam.sum() <= 0:
            continue
        share.append(float(cam[lesion].sum() / cam.sum()))
        area.append(float(lesion.mean()))
        hits.append(bool(lesion.flat[int(np.argmax(cam))]))
    if not share:
        return {"n_slices": 0, "note": "no scored slice had a lesion mask and a non-zero Grad-CAM"}
    return {"n_slices": len(share), "classes": [names[c] for c in wanted],
            "gradcam_share_on_lesions": float(np.mean(share)),
            "lesion_share_of_crop": float(np.mean(area)),
            "pointing_game_hit_rate": float(np.mean(hits)),
            "what": "correctly called CP/NCP slices: mean share of the Grad-CAM mass (of the "
                    "true class) on the slice's lesions; the lesions' share of the crop is what "
                    "an evenly spread map would score; pointing game: the Grad-CAM peak lies on "
                    "a lesion"}


def localisation_lines(result: dict[str, Any] | None) -> list[str]:
    """Short text lines for the CLI."""
    if not result:
        return []
    if "auc" in result:
        lines = [f"Infection map vs true lesions inside the lungs ({result['n_scans']} scans, "
                 f"SYNTHETIC truth): voxel AUC {_fmt(result['auc'])}"]
        for label, row in result["per_class"].items():
            lines.append(f"  {label:<9} mean map on lesions {_fmt(row['mean_on_lesions'], 4)}, "
                         f"on healthy lung {_fmt(row['mean_on_healthy_lung'], 4)} ({row['scans']} scans)")
        if result.get("method_map"):
            lines.append(f"  without the lung mask (the method's map, input minus output): "
                         f"voxel AUC {_fmt(result['method_map']['auc'])}")
        return lines
    if not result.get("n_slices"):
        return [f"Grad-CAM vs true lesions: {result.get('note', 'nothing scored')}"]
    return [f"Grad-CAM vs true lesions ({result['n_slices']} correctly called CP/NCP slices, "
            f"SYNTHETIC truth): {result['gradcam_share_on_lesions']:.2f} of the mass on lesions "
            f"(lesions cover {result['lesion_share_of_crop']:.2f} of the crop); peak on a lesion "
            f"in {result['pointing_game_hit_rate']:.2f}"]


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"

