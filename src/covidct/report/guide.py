"""The report's reading guide: how to read each figure (shown under it) and the glossary section."""
from __future__ import annotations

from ..constants import SLICE_CLASS_LONG, SLICE_CLASSES
from .html import esc, section


HOW = {
    "confusion": "each row is one true class; the cells give the share of its cases the model "
                 "called each class (counts below). A perfect model has 100% on the diagonal; "
                 "cells off the diagonal in the COVID-19 row are missed COVID-19 cases.",
    "roc": "each curve shows sensitivity against the false-positive rate as the threshold for "
           "calling that class moves from strict (bottom left) to lenient (top right). Curves "
           "close to the top-left corner are better; the dotted diagonal is chance (AUC 0.5). "
           "AUC is the chance that a case of the class scores higher than a case of another class.",
    "calibration": "cases are grouped by the probability the model gave (x axis); each bar shows "
                   "how often those cases really were correct (top label) or really COVID-19 (y "
                   "axis); the pale red part is the gap to the probability the model gave. Bars "
                   "reaching the dashed diagonal mean the probabilities can be read as frequencies; "
                   "bars below it mean over-confidence. Small numbers count the cases per bin; bins "
                   "with few cases are noisy. ECE is the average gap (0 is perfect).",
    "gradcam": "left, the slice as the model saw it (cropped to the body); right, the Grad-CAM heat "
               "map of the class the model called: red areas gave the most evidence for that call. "
               "It shows where the model looked, not what it found; heat outside the lungs is a "
               "warning sign. Mistakes are shown on purpose.",
    "infection": "yellow to red marks where a slice is denser than the BCDU-Net's reconstruction "
                 "of a normal lung (the infection map the 3D CNN classifies, alone or beside the "
                 "CT: the model's input says which), on the three most "
                 "affected slices, then projected through the whole scan from above (axial) and "
                 "from the front (coronal, head at the top). The colour scale is the same for every "
                 "scan: full red is the density step from aerated lung to ground glass.",
    "tsne": "each dot is one case, placed so that cases the network represents alike lie close "
            "together; colours are the true classes. Separate clusters mean the learned features "
            "separate the classes; mixed regions show where confusions are likely. Axes and "
            "distances between clusters have no meaning.",
    "experiments": "each bar, line or dot measured here comes from this folder's runs (mean and "
                   "spread over repeated runs where there are several); values marked "
                   "\"published\" are copied from the paper for comparison, not measured. On "
                   "synthetic data or at tiny scale the numbers only show that the pipeline works.",
    "curves": "the training loss (solid) should fall and level off; with many steps a faint line "
              "shows every step and the solid line their smoothed trend. Validation figures "
              "(dashed, dots) are measured on held-out data during training and show when the "
              "model stopped improving; the saved model is the one with the best validation "
              "figure. Where shown, the learning rate follows the schedule (warm-up, then "
              "step-wise drops). CovidCTNet trains in two stages (the BCDU-Net denoiser, then "
              "the 3D CNN), each with its own colour.",
}


GLOSSARY = (
    ("Sensitivity (recall)", "of the cases that have the condition, the share the model called so."),
    ("Specificity", "of the cases that do not have it, the share the model did not call so."),
    ("PPV (precision)", "of the cases the model called so, the share that really have it; depends on "
                        "how common the condition is in the tested group."),
    ("NPV", "of the cases the model did not call so, the share that really do not have it."),
    ("F1", "the harmonic mean of precision and recall (0 to 1)."),
    ("AUC", "area under the ROC curve: the chance that a case of the class scores higher than one "
            "of another class (0.5 is chance, 1 is perfect)."),
    ("95% confidence interval", "the range of values compatible with the data; here from bootstrap "
                                "resampling of whole patients."),
    ("Slice level / patient level", "the slice classifier scores single CT slices; a patient's call "
                                    "combines the probabilities of all their slices."),
    ("ECE", "expected calibration error: the average gap between the stated probability and the "
            "observed frequency (0 is perfect)."),
)


def glossary_section() -> str:
    long = {**SLICE_CLASS_LONG, "Normal": "no pneumonia"}
    classes = (("Classes of the slice classifier", "; ".join(f"{c}: {long[c]}" for c in SLICE_CLASSES)),
               ("Classes of CovidCTNet", "Control: no pneumonia; CAP: community-acquired pneumonia; "
                                         "COVID-19: COVID-19 pneumonia"))
    items = "".join(f"<dt>{esc(term)}</dt><dd>{esc(text[:1].upper() + text[1:])}</dd>"
                    for term, text in (*classes, *GLOSSARY))
    return section("glossary", "How to read the figures", f'<dl class="glossary">{items}</dl>')
