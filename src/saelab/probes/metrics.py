"""Scores of a fitted probe: ROC AUC (batched, tie-exact) and support-weighted F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from saelab.errors import ProbeDataError


def labels_1d(y: Any, name: str) -> np.ndarray:
    """Labels as a 1-D numpy array; raises ``ProbeDataError`` for other shapes."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ProbeDataError(f"{name}: expected a 1-D array of labels, got shape {arr.shape}")
    return arr


def roc_auc(y_true: Any, scores: Any) -> np.ndarray | float:
    """ROC AUC of scores [..., n] against binary labels y_true [n] (1 / the larger value positive).

    Mann-Whitney form, equal to ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC) including ties:
    AUC = (sum of the average ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
    A 2-row set with one row of each class scores 1, 0.5 (tie) or 0. Batched over leading axes of
    ``scores``; returns a float for 1-D scores. Probes score it on decision values (the margin
    x . w + b), never on probabilities: the float64 sigmoid saturates to exactly 1.0 for margins
    above ~37 and would turn different margins into ties.
    """
    y = labels_1d(y_true, "y_true")
    classes = np.unique(y)
    if classes.size != 2:
        raise ProbeDataError(f"y_true: ROC AUC needs both classes, got {classes.tolist()}")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[-1] != y.shape[0]:
        raise ProbeDataError(
            f"scores: expected {y.shape[0]} values on the last axis, got {s.shape}"
        )
    positive = y == classes[1]
    n_pos = int(positive.sum())
    n_neg = y.shape[0] - n_pos
    ranks = rankdata(s, method="average", axis=-1)
    auc = (ranks[..., positive].sum(-1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return float(auc) if np.ndim(auc) == 0 else auc


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 over the two classes (the paper's ``f1_score(average="weighted")``).

    F1_c = 2 tp_c / (2 tp_c + fp_c + fn_c) (0 when the class is neither predicted nor present),
    weighted = sum_c (n_c / n) F1_c with n_c the rows of true class c (scikit-learn's definition).
    """
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    total = 0.0
    for c in (0, 1):
        tp = float(np.sum((y_pred == c) & (y_true == c)))
        fp = float(np.sum((y_pred == c) & (y_true != c)))
        fn = float(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        f1 = 2 * tp / denom if denom else 0.0
        total += f1 * float(np.sum(y_true == c))
    return total / max(len(y_true), 1)
