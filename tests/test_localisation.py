"""Truth for explanations: a synth cohort's lesion and lung masks on CovidCTNet's grid and
beside the COVIDx PNGs, and the scores built on them."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from covidct.synth import CohortSettings, generate_cohort
from covidct.covidctnet.settings import VolumeSettings
from covidct.covidctnet.truth import score_map, truth_on_grid


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("truth") / "cohort"
    generate_cohort(root, CohortSettings(patients=3, seed=5, difficulty=0.0, matrix=64,
                                         max_slices=30, formats=("nifti", "covidx")),
                    progress=False)
    with open(root / "labels.csv", newline="") as fh:
        return root, {r["label"]: r for r in csv.DictReader(fh)}


def test_truth_lands_on_the_network_grid_and_scores_a_perfect_map_at_one(cohort):
    root, rows = cohort
    settings = VolumeSettings(slice_size=40, volume_slices=34)
    truths = {label: truth_on_grid(root / r["lesions"], root / r["lungs"], settings)
              for label, r in rows.items()}
    for truth in truths.values():
        assert truth.lesion.shape == truth.lung.shape == (34, 40, 40)
        assert truth.lung.any() and not (truth.lesion & ~truth.lung).any()
    assert truths["NCP"].lesion.any() and truths["CP"].lesion.any()
    assert not truths["Normal"].lesion.any()

    labels = list(truths)
    perfect = [t.lesion.astype(np.float32) for t in truths.values()]
    result = score_map(perfect, list(truths.values()), labels)
    assert result["auc"] == pytest.approx(1.0)
    assert result["per_class"]["NCP"]["mean_on_lesions"] == 1.0
    assert result["per_class"]["NCP"]["mean_on_healthy_lung"] == 0.0
    assert result["per_class"]["Normal"]["mean_on_lesions"] is None

    rng = np.random.default_rng(0)
    noise = [rng.random(t.lesion.shape).astype(np.float32) for t in truths.values()]
    assert abs(score_map(noise, list(truths.values()), labels)["auc"] - 0.5) < 0.05


def test_covidx_lesion_masks_sit_on_the_lesions_of_their_slice(cohort):
    root, rows = cohort
    prefix = rows["CP"]["covidx_prefix"]
    images = sorted((root / "covidx" / "images").glob(f"{prefix}_*.png"))
    assert images
    lesion_pixels, lung_pixels = [], []
    for path in images:
        mask = np.asarray(Image.open(root / "covidx" / "lesion_masks" / path.name)) > 127
        image = np.asarray(Image.open(path).convert("L")).astype(float)
        assert mask.shape == image.shape == (512, 512)
        assert mask.sum() * (float(rows["CP"]["spacing_x"]) * 64 / 512) ** 2 >= 200 * 0.5
        lesion_pixels.append(image[mask].mean())
        lung_pixels.append(np.percentile(image, 5))
    # Consolidation is far denser than aerated lung in the lung window.
    assert np.mean(lesion_pixels) > np.mean(lung_pixels) + 50
