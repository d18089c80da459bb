"""Which cases to explain: per true class, the most confident correct calls and the most
confident mistakes, from an evaluation's scores (``scores.npz``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    index: int            # row in the scores
    true_class: int
    predicted_class: int
    confidence: float     # probability of the predicted class
    kind: str             # "correct" or "wrong"

    @property
    def correct(self) -> bool:
        return self.kind == "correct"


def select_cases(y_true: np.ndarray, y_prob: np.ndarray, n_per_class: int = 2,
                 n_wrong_per_class: int | None = None) -> list[Case]:
    """Up to ``n_per_class`` most confident correct and ``n_wrong_per_class`` (default the
    same) most confident wrong cases of each true class, in class order, correct first."""
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n_wrong = n_per_class if n_wrong_per_class is None else n_wrong_per_class
    predicted = y_prob.argmax(axis=1)
    confidence = y_prob.max(axis=1)
    cases: list[Case] = []
    for cls in range(y_prob.shape[1]):
        for kind, wanted, take in (("correct", True, n_per_class), ("wrong", False, n_wrong)):
            members = np.flatnonzero((y_true == cls) & ((predicted == y_true) == wanted))
            order = members[np.argsort(-confidence[members], kind="stable")][:take]
            cases += [Case(int(i), cls, int(predicted[i]), float(confidence[i]), kind) for i in order]
    return cases
