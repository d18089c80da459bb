"""ROC AUC that can be evaluated for many patient resamplings at once, and ROC curves.

The AUC is the Mann-Whitney probability that a random positive scores above a random
negative, ties counting one half; it equals scikit-learn's ``roc_auc_score`` (also with
sample weights). A bootstrap replicate only reweights patients, so per-patient summaries
computed once give every replicate's AUC exactly.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse

from ._inputs import safe_div

_CELLS_PER_CHUNK = 4_000_000  # replicates x distinct scores held in memory at once
_MAX_PAIRWISE_GROUPS = 3000   # patients up to which the patient x patient win table is kept


class AucTable:
    """Per-patient win counts of one one-vs-rest problem.

    With few patients (the usual case) it stores wins[p, q] = how often a positive of
    patient p outscores a negative of patient q, so a replicate's AUC is the quadratic form
    w' wins w / ((w . positives)(w . negatives)). With many "patients" (rows resampled one
    by one) it stores per-patient score histograms instead, which stay linear in size.
    """

    def __init__(self, scores: np.ndarray, positive: np.ndarray, codes: np.ndarray,
                 n_groups: int):
        scores = np.asarray(scores, dtype=np.float64)
        positive = np.asarray(positive, dtype=bool)
        codes = np.asarray(codes, dtype=np.int64)
        self._n_pos = np.bincount(codes[positive], minlength=n_groups).astype(np.float64)
        self._n_neg = np.bincount(codes[~positive], minlength=n_groups).astype(np.float64)
        if n_groups <= _MAX_PAIRWISE_GROUPS:
            self._wins = _pairwise_wins(scores, positive, codes, n_groups)
        else:
            self._wins = None
            self._histograms(scores, positive, codes, n_groups)

    def _histograms(self, scores, positive, codes, n_groups) -> None:
        unique, where = np.unique(scores, return_inverse=True)
        self.n_scores = unique.size
        shape = (n_groups, self.n_scores)
        # Stored transposed (scores x patients): a dense weight block multiplies on the right.
        self._pos, self._neg = (
            sparse.csr_matrix((np.ones(mask.sum()), (codes[mask], where[mask])), shape).T.tocsr()
            for mask in (positive, ~positive))

    def evaluate(self, weights: np.ndarray) -> np.ndarray:
        """AUC for each row of ``weights`` (replicates x patients); NaN without both outcomes."""
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        pairs = (weights @ self._n_pos) * (weights @ self._n_neg)
        if self._wins is not None:
            return safe_div(((weights @ self._wins) * weights).sum(axis=1), pairs)
        wins = np.empty(weights.shape[0])
        step = max(1, _CELLS_PER_CHUNK // max(self.n_scores, 1))
        for start in range(0, weights.shape[0], step):
            block = np.ascontiguousarray(weights[start:start + step].T)
            pos = np.asarray(self._pos @ block)         # distinct scores x replicates
            neg = np.asarray(self._neg @ block)
            neg_below = np.cumsum(neg, axis=0) - neg
            wins[start:start + step] = (pos * (neg_below + 0.5 * neg)).sum(axis=0)
        return safe_div(wins, pairs)


def _pairwise_wins(scores, positive, codes, n_groups) -> np.ndarray:
    """wins[p, q]: positives of p above negatives of q, ties counting one half."""
    wins = np.zeros((n_groups, n_groups))
    pos_scores, pos_codes = scores[positive], codes[positive]
    order = np.argsort(pos_scores, kind="stable")   # sorted needles search much faster
    pos_scores, pos_codes = pos_scores[order], pos_codes[order]
    neg_scores, neg_codes = scores[~positive], codes[~positive]
    order = np.lexsort((neg_scores, neg_codes))
    neg_scores, neg_codes = neg_scores[order], neg_codes[order]
    bounds = np.searchsorted(neg_codes, np.arange(n_groups + 1))
    for q in np.flatnonzero(np.diff(bounds)):
        negatives = neg_scores[bounds[q]:bounds[q + 1]]
        below = np.searchsorted(negatives, pos_scores, side="left")
        at_or_below = np.searchsorted(negatives, pos_scores, side="right")
        wins[:, q] = np.bincount(pos_codes, weights=0.5 * (below + at_or_below),
                                 minlength=n_groups)
    return wins


def roc_auc(positive, scores) -> float:
    """One ROC AUC (NaN when only one outcome is present)."""
    scores = np.asarray(scores, dtype=np.float64)
    table = AucTable(scores, positive, np.zeros(scores.size, dtype=np.int64), 1)
    return float(table.evaluate(np.ones((1, 1)))[0])


def roc_points(positive, scores) -> dict[str, list] | None:
    """ROC curve (fpr, tpr, thresholds) for plotting; None without both outcomes.

    A case is called positive when its score >= threshold. The first point (nothing
    called positive) has threshold None, as its threshold is +infinity.
    """
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return None
    # Imported here: scikit-learn takes 1-1.5 s of CPU to import, which every `covidct
    # predict` paid through the metrics package (patient aggregation) without drawing a curve.
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=True)
    return {
        "fpr": [float(v) for v in fpr],
        "tpr": [float(v) for v in tpr],
        "thresholds": [float(v) if np.isfinite(v) else None for v in thresholds],
    }
