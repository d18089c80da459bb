"""covidct.metrics: hand-computed values, scikit-learn cross-checks, bootstrap behaviour."""
from __future__ import annotations

import csv
import json
import time
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from covidct.constants import SLICE_CLASSES, VOLUME_CLASSES
from covidct.errors import DatasetError
from covidct.metrics import (
    aggregate_by_patient, bootstrap_ci, classification_metrics, compare_readers,
    confusion_matrix, expected_calibration_error, figures_at_threshold, flatten_metrics,
    format_reader_table, format_table2, format_table3, metrics_with_ci,
    normalised_confusion_matrix, operating_points, read_reader_csv, reliability_diagram,
    roc_auc, save_results, slice_and_patient_metrics,
)
from covidct.metrics import ranking
from covidct.metrics.classification import FigureEvaluator

CLASSES = SLICE_CLASSES  # Normal, CP, NCP

# A hand-checked example. Confusion matrix (rows truth, columns call):
#   Normal [2 1 1]   CP [1 2 0]   NCP [0 1 2]
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])


def random_scores(n, seed=0, n_classes=3, signal=0.6, decimals=2):
    """Noisy probabilities leaning to the true class, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    p = rng.dirichlet(np.ones(n_classes), n)
    p[np.arange(n), y] += signal
    p /= p.sum(axis=1, keepdims=True)
    return y, np.round(p, decimals)


def value(fig):
    return fig["value"] if isinstance(fig, dict) else fig


# --- confusion matrices and count figures ---------------------------------------------

def test_confusion_matrix_matches_sklearn_and_normalises_rows():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert np.array_equal(cm, skm.confusion_matrix(Y_TRUE, Y_PRED, labels=[0, 1, 2]))
    norm = normalised_confusion_matrix(Y_TRUE, Y_PRED, 4)   # class 3 absent: a NaN row
    assert np.allclose(norm[:3].sum(axis=1), 1)
    assert np.isnan(norm[3]).all()
    assert norm[0, 0] == pytest.approx(0.5)


def test_classification_metrics_hand_computed():
    m = classification_metrics(Y_TRUE, Y_PRED, class_names=CLASSES)
    assert m["accuracy"] == pytest.approx(0.6)
    normal, cp, ncp = (m["per_class"][c] for c in CLASSES)
    # Normal: TP 2, FN 2, FP 1, TN 5
    assert normal["sensitivity"] == pytest.approx(0.5)
    assert normal["specificity"] == pytest.approx(5 / 6)
    assert normal["ppv"] == pytest.approx(2 / 3)
    assert normal["npv"] == pytest.approx(5 / 7)
    assert normal["f1"] == pytest.approx(4 / 7)
    assert normal["support"] == 4
    # CP: TP 2, FN 1, FP 2, TN 5
    assert (cp["sensitivity"], cp["specificity"], cp["ppv"], cp["npv"]) == pytest.approx(
        (2 / 3, 5 / 7, 0.5, 5 / 6))
    # NCP: TP 2, FN 1, FP 1, TN 6; the COVID-vs-rest view is NCP against the rest.
    assert m["positive_class"] == "NCP"
    b = m["binary"]
    assert (b["sensitivity"], b["specificity"], b["ppv"], b["npv"]) == pytest.approx(
        (2 / 3, 6 / 7, 2 / 3, 6 / 7))
    assert b["accuracy"] == pytest.approx(0.8)
    assert ncp["sensitivity"] == b["sensitivity"]
    assert m["macro"]["sensitivity"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    assert m["micro"]["specificity"] == pytest.approx(16 / 20)
    assert m["micro"]["sensitivity"] == pytest.approx(0.6)      # = accuracy
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["per_class"]["NCP"]["auc"] is None and m["ece"] is None   # no probabilities


def test_count_figures_match_sklearn():
    y, p = random_scores(500, seed=3)
    pred = np.argmax(p, axis=1)
    m = classification_metrics(y, pred, p, class_names=CLASSES)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2])
    for k, c in enumerate(CLASSES):
        assert m["per_class"][c]["ppv"] == pytest.approx(prec[k])
        assert m["per_class"][c]["sensitivity"] == pytest.approx(rec[k])
        assert m["per_class"][c]["f1"] == pytest.approx(f1[k])
        assert m["per_class"][c]["support"] == support[k]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["micro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["macro"]["ppv"] == pytest.approx(skm.precision_score(y, pred, average="macro"))


def test_auc_matches_sklearn_with_ties():
    y, p = random_scores(400, seed=4, decimals=1)       # many tied scores
    m = classification_metrics(y, None, p, class_names=CLASSES)
    for k, c in enumerate(CLASSES):
        assert m["per_class"][c]["auc"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
    onehot = np.eye(3)[y]
    assert m["micro"]["auc"] == pytest.approx(skm.roc_auc_score(onehot, p, average="micro"))
    assert m["macro"]["auc"] == pytest.approx(skm.roc_auc_score(onehot, p, average="macro"))
    assert m["binary"]["auc"] == m["per_class"]["NCP"]["auc"]
    roc = m["roc"]["NCP"]
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and roc["thresholds"][0] is None
    assert roc_auc(y == 2, p[:, 2]) == pytest.approx(m["per_class"]["NCP"]["auc"])


def test_names_accepted_and_pred_defaults_to_argmax():
    y, p = random_scores(60, seed=5)
    a = classification_metrics(np.array(CLASSES)[y], None, p, class_names=CLASSES)
    b = classification_metrics(y, np.argmax(p, axis=1), p, class_names=CLASSES)
    assert a["accuracy"] == b["accuracy"] and a["macro"] == b["macro"]
    with pytest.raises(ValueError, match="unknown class"):
        classification_metrics(["Normal", "Flu"], ["Normal", "CP"], class_names=CLASSES)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(y, None, p[:, :2], class_names=CLASSES)


def test_zero_divisions_give_none_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # CP never occurs and is never called; only one outcome for the AUC of CP.
        y = np.array([0, 0, 2, 2])
        p = np.array([[.9, 0, .1], [.6, 0, .4], [.3, 0, .7], [.8, 0, .2]])
        m = classification_metrics(y, None, p, class_names=CLASSES)
        cp = m["per_class"]["CP"]
        assert cp["sensitivity"] is None and cp["ppv"] is None and cp["f1"] is None
        assert cp["auc"] is None and cp["specificity"] == 1.0
        assert m["macro"]["sensitivity"] == pytest.approx((1 + 0.5) / 2)   # defined classes
        assert m["confusion_matrix_normalised"][1] == [None, None, None]
        # A single class: every one-vs-rest AUC undefined, still no crash. The micro AUC
        # pools all (case, class) pairs and stays defined: 12 of 18 pairs ranked right.
        one = classification_metrics([2, 2, 2], None, p[:3], class_names=CLASSES)
        assert one["macro"]["auc"] is None and one["micro"]["auc"] == pytest.approx(12 / 18)
        assert one["binary"]["specificity"] is None and one["roc"]["NCP"] is None
        ci = metrics_with_ci([2, 2, 2], None, p[:3], ["a", "a", "b"], class_names=CLASSES,
                             n_boot=50)
        assert ci["binary"]["auc"] == {"value": None, "ci_low": None, "ci_high": None}
        # Nothing called NCP: PPV undefined, sensitivity 0.
        none = classification_metrics([2, 0], [0, 0], class_names=CLASSES)
        assert none["binary"]["ppv"] is None and none["binary"]["sensitivity"] == 0.0
        solo = metrics_with_ci([0, 2], [0, 0], groups=["p", "p"], class_names=CLASSES, n_boot=20)
        assert solo["accuracy"]["ci_low"] is None and solo["n_patients"] == 1


def test_volume_classes_get_their_covid_view():
    m = classification_metrics(["COVID-19", "CAP", "Control"], ["COVID-19", "CAP", "CAP"],
                               class_names=VOLUME_CLASSES)
    assert m["binary"]["positive_class"] == "COVID-19" and m["binary"]["sensitivity"] == 1.0
    assert "binary" not in classification_metrics([0, 1], [0, 1], class_names=("a", "b"))


# --- bootstrap -----------------------------------------------------------------------------

def correlated_cohort(n_patients, wrong_share=0.2, slices=10):
    """Every slice of a patient shares the patient's outcome: a whole patient is right or wrong."""
    groups = np.repeat(np.arange(n_patients), slices)
    y = np.repeat(np.arange(n_patients) % 3, slices)
    wrong = np.repeat(np.arange(n_patients) < round(wrong_share * n_patients), slices)
    pred = np.where(wrong, (y + 1) % 3, y)
    return y, pred, groups


def width(fig):
    return fig["ci_high"] - fig["ci_low"]


def test_ci_contains_point_and_shrinks_with_more_patients():
    def run(n_patients):
        y, pred, groups = correlated_cohort(n_patients)
        return metrics_with_ci(y, pred, groups=groups, class_names=CLASSES, n_boot=500)

    small, large = run(20), run(200)
    for m in (small, large):
        acc = m["accuracy"]
        assert acc["value"] == pytest.approx(0.8)
        assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
        for c in CLASSES:
            fig = m["per_class"][c]["sensitivity"]
            assert fig["ci_low"] <= fig["value"] <= fig["ci_high"]
    assert small["n_patients"] == 20 and small["n_slices"] == 200 and large["n_patients"] == 200
    assert width(large["accuracy"]) < 0.6 * width(small["accuracy"])
    assert width(large["binary"]["specificity"]) < width(small["binary"]["specificity"])


def test_patient_resampling_groups_slices():
    y, pred, groups = correlated_cohort(40, wrong_share=0.25, slices=10)
    by_patient = metrics_with_ci(y, pred, groups=groups, class_names=CLASSES, n_boot=500)
    by_slice = metrics_with_ci(y, pred, groups=None, class_names=CLASSES, n_boot=500)
    assert by_patient["accuracy"]["value"] == by_slice["accuracy"]["value"] == 0.75
    # Ten perfectly correlated slices carry the information of one: about sqrt(10) wider.
    assert width(by_patient["accuracy"]) > 2 * width(by_slice["accuracy"])
    assert by_patient["bootstrap"]["resampled"] == "patients"
    assert by_slice["n_patients"] == 400


def test_generic_bootstrap_agrees_with_vectorised_one():
    y, p = random_scores(300, seed=6)
    groups = np.arange(300) // 7
    pred = np.argmax(p, axis=1)
    fast = metrics_with_ci(y, pred, p, groups, class_names=CLASSES, n_boot=200, seed=3)
    slow = bootstrap_ci(lambda t, q, _: np.mean(t == q), y, pred, p, groups, n_boot=200, seed=3)
    assert slow["n_patients"] == 43 and slow["n_slices"] == 300 and slow["n_valid"] == 200
    for key in ("value", "ci_low", "ci_high"):
        assert slow[key] == pytest.approx(fast["accuracy"][key])
    auc = bootstrap_ci(lambda t, _, q: skm.roc_auc_score(t == 2, q[:, 2]), y, pred, p, groups,
                       n_boot=200, seed=3)
    for key in ("value", "ci_low", "ci_high"):
        assert auc[key] == pytest.approx(fast["per_class"]["NCP"]["auc"][key])


@pytest.mark.parametrize("pairwise", [True, False])
def test_weighted_replicate_equals_metrics_on_repeated_rows(monkeypatch, pairwise):
    """A replicate's figures equal those of the data with each patient's rows repeated."""
    if not pairwise:
        monkeypatch.setattr(ranking, "_MAX_PAIRWISE_GROUPS", 0)
    y, p = random_scores(240, seed=7, decimals=1)
    codes = np.arange(240) % 24
    pred = np.argmax(p, axis=1)
    counts = np.random.default_rng(1).integers(0, 3, 24).astype(float)
    got = FigureEvaluator(y, pred, p, codes, 24, CLASSES, 2).evaluate(counts[None])
    rows = np.repeat(np.arange(240), counts[codes].astype(int))
    want = classification_metrics(y[rows], pred[rows], p[rows], class_names=CLASSES)
    assert got[("accuracy",)][0] == pytest.approx(want["accuracy"])
    assert got[("ece",)][0] == pytest.approx(want["ece"])
    assert got[("binary", "ece")][0] == pytest.approx(want["binary"]["ece"])
    for c in CLASSES:
        for f in ("auc", "npv", "f1"):
            assert got[("per_class", c, f)][0] == pytest.approx(want["per_class"][c][f])
    assert got[("micro", "auc")][0] == pytest.approx(want["micro"]["auc"])


def test_bootstrap_is_fast_on_ten_thousand_slices():
    y, p = random_scores(10_000, seed=8, decimals=4)
    groups = np.arange(10_000) // 50
    start = time.perf_counter()
    m = metrics_with_ci(y, None, p, groups, class_names=CLASSES, n_boot=1000)
    assert time.perf_counter() - start < 30     # a few seconds on one core
    assert m["bootstrap"]["n_boot"] == 1000 and m["n_patients"] == 200


# --- patient-level aggregation ---------------------------------------------------------------

def test_aggregate_by_patient_rules():
    groups = ["B", "B", "A", "B", "A"]
    probs = np.array([[.9, .05, .05], [.2, .1, .7], [.1, .8, .1], [.8, .1, .1], [.5, .3, .2]])
    labels = [2, 2, 1, 2, 1]
    mean = aggregate_by_patient(groups, probs, "mean", y_true=labels)
    assert list(mean.patients) == ["B", "A"]                  # order of first appearance
    assert np.allclose(mean.probs[0], [1.9 / 3, .25 / 3, .85 / 3])
    assert np.allclose(mean.probs[1], [.3, .55, .15])
    assert list(mean.pred) == [0, 1] and list(mean.y_true) == [2, 1]
    assert list(mean.n_slices) == [3, 2]
    top = aggregate_by_patient(groups, probs, "topk", k=1)   # B's most abnormal slice
    assert np.allclose(top.probs[0], [.2, .1, .7]) and top.pred[0] == 2
    assert np.allclose(top.probs[1], [.1, .8, .1])
    top2 = aggregate_by_patient(groups, probs, "topk", k=2)
    assert np.allclose(top2.probs[0], [.5, .1, .4])          # slices 2 and 4 of B
    vote = aggregate_by_patient(groups, probs, "vote")
    assert np.allclose(vote.probs[0], [2 / 3, 0, 1 / 3]) and np.allclose(vote.probs[1], [.5, .5, 0])
    assert vote.pred[1] == 0                                  # ties go to the lower index
    with pytest.raises(DatasetError, match="different labels"):
        aggregate_by_patient(groups, probs, y_true=[2, 1, 1, 2, 1])
    with pytest.raises(ValueError, match="unknown rule"):
        aggregate_by_patient(groups, probs, "median")


def test_slice_and_patient_metrics_side_by_side():
    y, p = random_scores(300, seed=9, signal=0.3)
    groups = np.arange(300) // 10
    y = np.repeat(y[::10], 10)                                # one label per patient
    res = slice_and_patient_metrics(y, p, groups, class_names=CLASSES, n_boot=100)
    assert res["slice"]["level"] == "slice" and res["patient"]["level"] == "patient"
    assert res["slice"]["n_patients"] == res["patient"]["n_patients"] == 30
    assert res["patient"]["n_slices"] == 300
    assert sum(v["support"] for v in res["patient"]["per_class"].values()) == 30
    assert res["patient"]["aggregation"] == {"rule": "mean"}


# --- calibration -------------------------------------------------------------------------------

def test_ece_zero_when_perfectly_calibrated():
    # Confidence 0.75 on 4 cases with 3 right, 0.95 on 20 cases with 19 right.
    probs = np.array([[.75, .25]] * 4 + [[.05, .95]] * 20)
    y = np.array([0, 0, 0, 1] + [1] * 19 + [0])
    assert expected_calibration_error(y, probs) == pytest.approx(0, abs=1e-12)
    diagram = reliability_diagram(y, probs)
    used = [b for b in diagram["bins"] if b["count"]]
    got = [(b["count"], b["confidence"], b["accuracy"]) for b in used]
    assert np.allclose(got, [(4, .75, .75), (20, .95, .95)])
    assert sum(b["count"] for b in diagram["bins"]) == 24 and len(diagram["bins"]) == 15
    # Class-1 view: p=.25 on 4 cases (1 positive), p=.95 on 20 (19 positive): calibrated too.
    assert expected_calibration_error(y, probs, positive=1) == pytest.approx(0, abs=1e-12)


def test_ece_hand_computed():
    # Top-label confidences .95 (right), .95 (wrong), .65 (right), .65 (right):
    # ECE = 2/4 * |0.5 - 0.95| + 2/4 * |1 - 0.65| = 0.225 + 0.175
    probs = np.array([[.95, .05], [.95, .05], [.35, .65], [.35, .65]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(y, probs) == pytest.approx(0.4)
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(abs(0.75 - 0.8))
    m = classification_metrics(y, None, probs, class_names=("a", "b"))
    assert m["ece"] == pytest.approx(0.4)


# --- operating points ----------------------------------------------------------------------------

def test_operating_points_reach_target_with_best_specificity():
    rng = np.random.default_rng(10)
    positive = rng.random(300) < 0.3
    scores = np.clip(rng.normal(np.where(positive, 0.65, 0.4), 0.15), 0, 1)
    for row in operating_points(positive, scores, (0.9, 0.95, 0.99)):
        assert row["sensitivity"] >= row["target_sensitivity"]
        higher = scores[scores > row["threshold"]]
        if higher.size:   # the next higher threshold misses the target
            assert figures_at_threshold(positive, scores, higher.min())["sensitivity"] < \
                row["target_sensitivity"]
        assert row["tp"] + row["fn"] == positive.sum()
        assert row["specificity"] == pytest.approx(row["tn"] / (row["tn"] + row["fp"]))


def test_operating_points_ties_and_no_positives():
    positive = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([.9, .8, .5, .5, .5, .2, .1])
    row = operating_points(positive, scores, [0.6])[0]
    assert row["threshold"] == 0.5 and row["sensitivity"] == 1.0   # ties all called positive
    assert row["specificity"] == pytest.approx(2 / 3) and row["ppv"] == pytest.approx(0.8)
    assert operating_points(positive, scores, [0.5])[0]["threshold"] == 0.8
    empty = operating_points(np.zeros(3, bool), np.array([.1, .2, .3]))
    assert all(r["threshold"] is None and r["specificity"] is None for r in empty)


# --- reader comparison ------------------------------------------------------------------------------

TRUTH = {"c1": "Control", "c2": "Control", "c3": "CAP", "c4": "CAP", "c5": "COVID-19",
         "c6": "COVID-19"}
MODEL = {"c1": "Control", "c2": "CAP", "c3": "CAP", "c4": "CAP", "c5": "COVID-19",
         "c6": "COVID-19"}
READERS_CSV = """Reader,Case,Label,comment
r1,c1,Control,
r1,c2,Control,
r1,c3,COVID-19,
r1,c4,CAP,
r1,c5,Covid,folder name accepted
r1,c6,control,
r2,c1,Control,
r2,c2,Control,
r2,c3,CAP,
r2,c4,CAP,
r2,c5,COVID-19,
r2,c6,COVID-19,
"""


def test_compare_readers_hand_made(tmp_path):
    path = tmp_path / "readers.csv"
    path.write_text(READERS_CSV)
    probs = {c: [.1, .1, .8] if TRUTH[c] == "COVID-19" else [.6, .3, .1] for c in TRUTH}
    res = compare_readers(path, MODEL, TRUTH, VOLUME_CLASSES, model_probs=probs)
    r1, r2 = res["readers"]["r1"], res["readers"]["r2"]
    assert r1["accuracy"] == pytest.approx(4 / 6) and r2["accuracy"] == 1.0
    # r1: COVID-19 called for c3 (CAP) and c5; c6 (COVID) called Control.
    assert r1["binary"]["sensitivity"] == 0.5 and r1["binary"]["specificity"] == 0.75
    assert r1["per_class"]["Control"]["ppv"] == pytest.approx(2 / 3)
    avg = res["reader_average"]
    assert avg["accuracy"] == pytest.approx((4 / 6 + 1) / 2)
    assert avg["binary"]["sensitivity"] == pytest.approx(0.75)
    assert avg["n_readers"] == 2 and res["n_cases"] == 6
    model = res["model"]
    assert model["accuracy"] == pytest.approx(5 / 6) and model["binary"]["auc"] == 1.0
    assert model["per_class"]["Control"]["sensitivity"] == 0.5
    table = format_table3(res)
    assert "| r1 | Control | 0.667 | 1.000 | 0.800 |" in table
    assert "Average reader" in table and "| model | Control |" in table
    fig5 = format_reader_table(res)
    assert "| r2 | 100.0 |" in fig5 and "COVID AUC" in fig5
    rows = [r for r in flatten_metrics(res) if r["name"] == "accuracy"]
    assert [r["set"] for r in rows] == ["r1", "r2", "Average reader", "model"]


@pytest.mark.parametrize("text, message", [
    ("reader,case\nr1,c1\n", "missing label"),
    ("reader,case,label\nr1,c1\n", "line 2: expected 3 fields"),
    ("reader,case,label\nr1,c1,Flu\n", "line 2: unknown label 'Flu'"),
    ("reader,case,label\nr1,c9,CAP\n", "line 2: case is not in the ground truth"),
    ("reader,case,label\nr1,c1,CAP\nr1,c1,CAP\n", "line 3: reader 'r1' already called"),
    ("reader,case,label\nr1,\"c1,CAP\n", "malformed CSV"),
    ("", "empty"),
])
def test_reader_csv_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "calls.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message) as info:
        compare_readers(path, MODEL, TRUTH, VOLUME_CLASSES)
    assert info.value.path == str(path)


def test_reader_rows_and_missing_model_calls():
    rows = [("r1", "c1", "Control"), {"reader": "r1", "case": "c5", "label": "COVID-19"}]
    res = compare_readers(rows, MODEL, TRUTH, VOLUME_CLASSES)
    assert res["readers"]["r1"]["accuracy"] == 1.0 and res["model"]["n_cases"] == 2
    with pytest.raises(DatasetError, match="row 1: the model has no call"):
        compare_readers(rows, {"c5": "COVID-19"}, TRUTH, VOLUME_CLASSES)
    with pytest.raises(DatasetError, match="not found"):
        read_reader_csv("/nonexistent/readers.csv", VOLUME_CLASSES)


# --- tables and saving -------------------------------------------------------------------------------

def test_format_table2_with_and_without_ci():
    plain = format_table2(classification_metrics(Y_TRUE, Y_PRED, class_names=CLASSES))
    header, _, row = plain.splitlines()[:3]
    assert header.startswith("| Model | Accuracy (%) | Sn Normal (%) | Sn CP (%) | Sn NCP (%) | PPV")
    assert row.startswith("| model | 60.0 | 50.0 | 66.7 | 66.7 | 66.7 | 50.0 | 66.7 | 83.3 |")
    y, pred, groups = correlated_cohort(30)
    with_ci = format_table2({"BiT": metrics_with_ci(y, pred, groups=groups, class_names=CLASSES,
                                                    n_boot=100)})
    assert "| BiT | 80.0 [" in with_ci and "n = 30 patients, 300 slices" in with_ci
    assert "n/a" in format_table2(classification_metrics([0, 0], [0, 0], class_names=CLASSES))


def test_save_results_json_and_csv(tmp_path):
    y, p = random_scores(120, seed=11)
    m = metrics_with_ci(y, None, p, np.arange(120) // 4, class_names=CLASSES, n_boot=50)
    prov = {"model": "bit-tiny", "data": "synthetic cohort", "settings": {"n_boot": 50},
            "synthetic": True}
    jpath, cpath = save_results(tmp_path / "out" / "m.json", tmp_path / "out" / "m.csv", m, prov)
    doc = json.loads(jpath.read_text())                 # strict JSON: no NaN anywhere
    assert doc["provenance"]["model"] == "bit-tiny" and "SYNTHETIC" in doc["synthetic_notice"]
    assert doc["metrics"]["per_class"]["NCP"]["auc"]["value"] == m["per_class"]["NCP"]["auc"]["value"]
    with open(cpath, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["set", "name", "class", "value", "ci_low", "ci_high", "synthetic"]
    byname = {(r["name"], r["class"]): r for r in rows}
    acc = byname[("accuracy", "")]
    assert float(acc["value"]) == pytest.approx(m["accuracy"]["value"])
    assert float(acc["ci_low"]) <= float(acc["value"]) <= float(acc["ci_high"])
    assert ("sensitivity", "CP") in byname and ("binary_auc", "NCP") in byname
    assert ("sens95_specificity", "NCP") in byname and byname[("n_patients", "")]["value"] == "30"
    assert all(r["synthetic"] == "true" for r in rows)
    assert not list((tmp_path / "out").glob("*.part"))
    with pytest.raises(ValueError, match="synthetic"):
        save_results(tmp_path / "x.json", tmp_path / "x.csv", m, {"model": "m"})
