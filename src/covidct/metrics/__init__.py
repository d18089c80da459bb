"""Clinical metrics for both methods, used by the CLI, the report and the web app.

Pure numpy/scipy/scikit-learn. Labels are class indices (or class names where noted) in
the method's class order (constants.SLICE_CLASSES / VOLUME_CLASSES); probabilities are
(cases x classes). A figure that is undefined on the data (a zero denominator, an AUC
with one outcome) is None, never 0 and never a warning.

- :func:`classification_metrics`: accuracy; per class sensitivity, specificity, PPV, NPV,
  F1, support, one-vs-rest AUC; macro and micro averages; the COVID-vs-rest view with
  operating points; confusion matrices; ROC curves; calibration.
- :func:`metrics_with_ci`: the same with a patient-bootstrap 95% CI for every figure;
  :func:`bootstrap_ci` does it for any figure.
- :func:`aggregate_by_patient`, :func:`slice_and_patient_metrics`: patient-level results.
- :func:`reliability_diagram`, :func:`expected_calibration_error`, :func:`operating_points`.
- :func:`compare_readers`: a reader study next to the model.
- :func:`format_table2`, :func:`format_table3`, :func:`format_reader_table`,
  :func:`save_results`: the papers' tables, JSON and CSV.
"""
from .aggregate import RULES, PatientScores, aggregate_by_patient, slice_and_patient_metrics
from .bootstrap import bootstrap_ci, metrics_with_ci
from .calibration import expected_calibration_error, reliability_diagram
from .classification import classification_metrics
from .counts import confusion_matrix, normalised_confusion_matrix
from ._inputs import encode_labels
from .operating import figures_at_threshold, operating_points
from .ranking import roc_auc, roc_points
from .readers import ReaderCall, compare_readers, read_reader_csv
from .results import flatten_metrics, save_results
from .tables import format_reader_table, format_table2, format_table3

__all__ = [
    "RULES", "PatientScores", "ReaderCall", "aggregate_by_patient", "bootstrap_ci",
    "classification_metrics", "compare_readers", "confusion_matrix", "encode_labels",
    "expected_calibration_error", "figures_at_threshold", "flatten_metrics",
    "format_reader_table", "format_table2", "format_table3", "metrics_with_ci",
    "normalised_confusion_matrix", "operating_points", "read_reader_csv", "reliability_diagram",
    "roc_auc", "roc_points", "save_results", "slice_and_patient_metrics",
]
