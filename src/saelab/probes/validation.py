"""The paper's validation protocol: splits of the training set, the C grid and ROC AUC scoring.

Source: sae-probes spec section 3.1 (``get_cv`` + ``get_splits`` in ``utils_training.py``) and
section 3.2 (the C grid of ``find_best_reg``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import torch
from scipy.special import expit
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from saelab.errors import ProbeDataError
from saelab.probes.logistic import ArrayLike, as_float64_matrix, fit_logistic_path

logger = logging.getLogger(__name__)

C_GRID = np.logspace(5, -5, 10)
"""The paper's C grid, largest first (spec 3.2); ties in validation AUC go to the larger C."""

Split = tuple[np.ndarray, np.ndarray]

# Neutral score of a split whose training part has one class (the paper's ``evaluate_fold``).
_SINGLE_CLASS_SCORE = 0.5


def validation_splits(y: ArrayLike, seed: int = 42) -> list[Split]:
    """(train_rows, validation_rows) index pairs for choosing hyperparameters on n training rows.

    Spec section 3.1:
    - n <= 3: no split (``[]``); the caller uses default hyperparameters.
    - n <= 12: leave-2-out over all pairs (i < j, lexicographic, as ``LeavePOut(2)``), keeping the
      pairs whose two rows have both classes.
    - 13 <= n < 128: ``StratifiedKFold(6, shuffle=True, random_state=seed)``, keeping the folds
      whose validation part has both classes.
    - n >= 128: one hold-out, the last ``v = min(int(0.2 n), 100)`` rows (the rows are already in
      random order). Deliberate fix (spec 7.3.7): the paper does not check this hold-out, and
      ``roc_auc_score`` raises when it has one class (and a one-class training part makes every C
      score 0.5). When either part has one class we take instead the last
      ``v_pos = round(v * n_pos / n)`` positive rows and the last ``v - v_pos`` negative rows, with
      each class count clipped to [1, class size - 1] where possible, so that both parts keep both
      classes.

    Args:
        y: [n] labels (any two values; one value gives no usable split for n < 128).
        seed: ``random_state`` of the stratified K-fold.

    Returns:
        A list of (train_rows [n - v], validation_rows [v]) int64 arrays, each in increasing order.
    """
    y = _labels_1d(y, "y")
    n = y.shape[0]
    if n <= 3:
        return []
    if n <= 12:
        splits = []
        for i, j in combinations(range(n), 2):
            if y[i] != y[j]:
                train = np.array([r for r in range(n) if r != i and r != j], dtype=np.int64)
                splits.append((train, np.array([i, j], dtype=np.int64)))
        return splits
    if n < 128:
        kfold = StratifiedKFold(n_splits=6, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has fewer than 6 members"
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            folds = list(kfold.split(np.zeros((n, 1)), y))
        return [
            (train.astype(np.int64), val.astype(np.int64))
            for train, val in folds
            if np.unique(y[val]).size == 2
        ]
    v = min(int(0.2 * n), 100)
    rows = np.arange(n, dtype=np.int64)
    both = np.unique(y[n - v :]).size == 2 and np.unique(y[: n - v]).size == 2
    if both or np.unique(y).size < 2:
        return [(rows[: n - v], rows[n - v :])]
    return [_stratified_holdout(y, v)]


def _stratified_holdout(y: np.ndarray, v: int) -> Split:
    """Hold out the last rows of each class, v in total, in proportion to the class sizes."""
    n = y.shape[0]
    positive = y == np.unique(y)[1]
    pos_rows, neg_rows = np.flatnonzero(positive), np.flatnonzero(~positive)
    v_pos = round(v * pos_rows.size / n)
    v_pos = max(1, min(v_pos, pos_rows.size - 1, v - 1))
    v_neg = v - v_pos
    v_neg = max(1, min(v_neg, neg_rows.size - 1))
    val = np.sort(
        np.concatenate([pos_rows[pos_rows.size - v_pos :], neg_rows[neg_rows.size - v_neg :]])
    )
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    logger.info(
        "hold-out of the last %d rows leaves one class in a part; using the last %d positive and "
        "%d negative rows",
        v,
        v_pos,
        v_neg,
    )
    return train.astype(np.int64), val.astype(np.int64)


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> np.ndarray | float:
    """ROC AUC of scores [..., n] against binary labels y_true [n] (1 / the larger value positive).

    Mann-Whitney form, equal to ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC) including ties:
    AUC = (sum of the average ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
    A 2-row set with one row of each class scores 1, 0.5 (tie) or 0. Batched over leading axes of
    ``scores``; returns a float for 1-D scores.
    """
    y = _labels_1d(y_true, "y_true")
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


def select_hyperparameter(
    X: ArrayLike,
    y: ArrayLike,
    splits: Sequence[Split],
    Cs: Sequence[float] | np.ndarray = C_GRID,
    progress: bool = False,
) -> tuple[int, np.ndarray]:
    """Choose C by mean validation ROC AUC over the splits (spec 3.1-3.2, ``find_best_reg``).

    For each split, all Cs are fitted at once on the training part (``fit_logistic_path``) and
    scored by ROC AUC of the positive-class probability expit(x . w + b) on the validation part
    (probabilities, not decision values, so that saturation ties at 1.0 count as in the paper).
    A split whose training part has one class scores 0.5 for every C, as in the paper.

    Args:
        X: [n, d] features; y: [n] labels in {0, 1}; splits: from ``validation_splits``;
        Cs: [n_C] grid; progress: show a progress bar over splits.

    Returns:
        ``(best_index, mean_auc [n_C])``: the first index of the largest mean AUC (earlier Cs win
        ties) and the mean validation AUC per C.
    """
    best, mean_auc, _ = select_with_solution(X, y, splits, Cs, progress)
    return best, mean_auc


def select_with_solution(
    X: ArrayLike,
    y: ArrayLike,
    splits: Sequence[Split],
    Cs: Sequence[float] | np.ndarray = C_GRID,
    progress: bool = False,
) -> tuple[int, np.ndarray, tuple[np.ndarray, float] | None]:
    """``select_hyperparameter`` plus the last split's fit at the chosen C (coef [d], intercept).

    The fit (``None`` if no split had two training classes) is a warm start for the refit on
    all training rows.
    """
    if len(splits) == 0:
        raise ProbeDataError("splits: no validation split to choose a hyperparameter with")
    X_np = as_float64_matrix(X, "X")
    y_np = _labels_1d(y, "y")
    if y_np.shape[0] != X_np.shape[0]:
        raise ProbeDataError(
            f"y: expected {X_np.shape[0]} labels (one per row of X), got {y_np.shape[0]}"
        )
    C_np = np.asarray(Cs, dtype=np.float64)
    scores = np.empty((len(splits), C_np.size))
    last_fit = None
    for s, (train, val) in enumerate(tqdm(splits, desc="validation splits", disable=not progress)):
        y_train = y_np[train]
        if np.unique(y_train).size < 2:
            scores[s] = _SINGLE_CLASS_SCORE
            continue
        coef, intercept, _ = fit_logistic_path(X_np[train], y_train, C_np)
        proba = expit(X_np[val] @ coef.T + intercept)  # [n_val, n_C]
        scores[s] = roc_auc(y_np[val], proba.T)
        last_fit = (coef, intercept)
    mean = scores.mean(axis=0)
    best = int(np.argmax(mean))
    solution = None if last_fit is None else (last_fit[0][best], float(last_fit[1][best]))
    return best, mean, solution


def _labels_1d(y: ArrayLike, name: str) -> np.ndarray:
    """Labels as a 1-D numpy array; raises ``ProbeDataError`` for other shapes."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ProbeDataError(f"{name}: expected a 1-D array of labels, got shape {arr.shape}")
    return arr
