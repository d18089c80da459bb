"""Explanations: Grad-CAM, t-SNE of penultimate features, infection-map views, training curves.

- :func:`gradcam` (any CNN) and :func:`slice_gradcam` (a trained slice classifier on one
  slice), :func:`gradcam_picture` for galleries; Grad-CAM comes from pytorch-grad-cam.
- :func:`compute_features`, :func:`dataset_features`, :func:`tsne_embedding`,
  :func:`plot_tsne`, :func:`neighbour_agreement`: the BiT paper's Fig. 4.
- :func:`infection_figure`, :func:`slice_overlay`, :func:`projections`: CovidCTNet's
  infection maps over the pre-processed volume, and maximum-intensity projections.
- :func:`read_history`, :func:`plot_training_curves`: the BiT paper's Fig. 7.
- :func:`explain_evaluation`: all of the above for an evaluated model, into its folder.

Heavy imports (torch, matplotlib, scikit-learn) happen when a function is first used.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "gradcam": ".gradcam", "slice_gradcam": ".gradcam", "gradcam_picture": ".gradcam",
    "default_target_layer": ".gradcam",
    "compute_features": ".features", "dataset_features": ".features",
    "tsne_embedding": ".features", "plot_tsne": ".features", "neighbour_agreement": ".features",
    "penultimate": ".features",
    "infection_figure": ".infection", "slice_overlay": ".infection", "projections": ".infection",
    "top_slices": ".infection",
    "read_history": ".curves", "plot_training_curves": ".curves",
    "select_cases": ".cases", "Case": ".cases",
    "explain_evaluation": ".run",
    "blend_heat": ".plotting", "save_figure": ".plotting", "figure_bytes": ".plotting",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'covidct.explain' has no attribute {name!r}")
