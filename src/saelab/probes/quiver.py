"""The paper's other four baselines (PCA + logistic regression, KNN, XGBoost, MLP) and the registry.

Source: sae-probes spec section 3.2 (``find_best_pcareg``, ``find_best_knn``, ``find_best_xgboost``
and ``find_best_mlp`` in ``utils_training.py``) and section 3.3: these four and logreg are the
paper's "quiver of arrows". Every method runs the protocol of the logreg baseline (spec 3.1):

- n_train <= 3: no validation; the paper's default setting, and val_auc = the training AUC.
- otherwise: the splits of ``validation_splits(y_train, seed)``; each setting of the method's grid
  is fitted on every split's training rows and scored by ROC AUC of P(y = 1) on its validation
  rows; the setting with the first maximum of the mean validation AUC is refitted on all training
  rows and scored once on the test rows (test AUC of P(y = 1), accuracy of P(y = 1) > 0.5).

Each estimator contains its ``StandardScaler`` (scikit-learn estimator contract: ``fit``,
``predict_proba``, parameters in ``__init__``, learned state ending in ``_``), so the scaler is
fitted on whatever rows ``fit`` is given. Deliberate differences from the paper:

- PCA: the scaler and the PCA are fitted inside each validation fold on the fold's training rows
  only, and the number of components is capped at the fold's size (spec 7.3.7: the paper fits
  both on the whole training set before validating, so the projection has seen the validation
  rows). KNN, XGBoost and the MLP fit their scaler per fold too (the paper: once for all folds).
- PCA: the logistic regression (C = 1) is ``LogisticProbe``, solved to optimality (the paper's
  lbfgs stops at tol 1e-4).
- KNN: one neighbour query per fold serves every k, and no joblib process is started per split
  (spec 7.1: the process overhead dominates the paper's KNN).
- XGBoost: in the n_train <= 3 path the test rows go through the same scaler (the paper predicts
  on unscaled X_test, spec 3.2). Under the default parameters this cannot change the scores: each
  row's Hessian p (1 - p) is at most 1/4, so 3 rows never reach ``min_child_weight`` = 1, no
  tree splits and every prediction is the same constant (AUC 0.5).
- XGBoost and MLP configurations are drawn with numpy's ``Generator(seed)`` without repetition
  (the paper: ``random.Random(seed).choice`` per parameter, repeats possible). The MLP draws
  ``n_configs`` (default 5) configurations and selects among them by validation AUC; the paper
  draws one (``n_iter=1``), so nothing is selected (spec 3.2, 7.3.7).
- A split whose training part has one class scores 0.5 for every setting, as in the logreg
  protocol (``select_hyperparameter``); the paper's four methods raise there.
- The MLP runs with one BLAS thread, so its result does not depend on the machine's core count
  (with float32 BLAS, adam's iteration count changed with the thread count in our measurements).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from saelab.errors import ConfigError, ProbeDataError
from saelab.io import json_ready
from saelab.probes.baseline import binary_labels, fit_logreg_probe
from saelab.probes.logistic import ArrayLike, LogisticProbe, _blas_controller, as_float64_matrix
from saelab.probes.result import ProbeResult
from saelab.probes.validation import Split, roc_auc, validation_splits, weighted_f1

logger = logging.getLogger(__name__)

# Training-set size at or below which no validation is run and defaults are used (spec 3.1-3.2).
NO_VALIDATION_MAX_ROWS = 3
# Neutral score of a split whose training part has one class (as ``select_hyperparameter``).
_SINGLE_CLASS_SCORE = 0.5

PCA_MAX_COMPONENTS = 100
"""Most PCA components tried: maxc = min(n, d, 100) (spec 3.2, ``find_best_pcareg``)."""
KNN_MAX_NEIGHBORS = 100
"""Largest k tried: max_k = min(n - 1, 100, smallest fold-train size) (spec 3.2)."""

XGB_GRID: dict[str, tuple[Any, ...]] = {
    "n_estimators": (50, 100, 150, 200, 250),
    "max_depth": (2, 3, 4, 5),
    "learning_rate": tuple(np.logspace(-3, -1, 10).tolist()),
    "subsample": tuple(np.linspace(0.7, 1.0, 5).tolist()),
    "colsample_bytree": tuple(np.linspace(0.7, 1.0, 5).tolist()),
    "reg_alpha": tuple(np.logspace(-3, 1, 10).tolist()),
    "reg_lambda": tuple(np.logspace(-3, 1, 10).tolist()),
    "min_child_weight": tuple(range(1, 10)),
}
"""The paper's XGBoost search space (spec 3.2, ``find_best_xgboost``); 10 configurations drawn."""

XGB_DEFAULTS: dict[str, Any] = {
    "n_estimators": 100,
    "max_depth": 6,
    "learning_rate": 0.3,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "reg_alpha": 0.0,
    "reg_lambda": 1.0,
    "min_child_weight": 1,
}
"""A default ``XGBClassifier``, pinned (XGBoost parameter docs: eta 0.3, max_depth 6,
min_child_weight 1, subsample 1, colsample_bytree 1, lambda 1, alpha 0; the scikit-learn wrapper's
100 rounds). Used for n_train <= 3 (spec 3.2)."""
XGB_N_CONFIGS = 10
XGB_N_JOBS = 2

MLP_GRID: dict[str, tuple[Any, ...]] = {
    "hidden_layer_sizes": (
        (16,),
        (32,),
        (64,),
        (16, 16),
        (32, 32),
        (64, 64),
        (16, 16, 16),
        (32, 32, 32),
        (64, 64, 64),
    ),
    "learning_rate_init": tuple(np.logspace(-4, -2, 5).tolist()),
    "alpha": tuple(np.logspace(-5, -2, 5).tolist()),
}
"""The paper's MLP search space (spec 3.2, ``find_best_mlp``); relu, adam, max_iter 1000."""

MLP_DEFAULTS: dict[str, Any] = {
    "hidden_layer_sizes": [32],
    "learning_rate_init": 1e-3,
    "alpha": 1e-4,
}
"""The paper's n_train <= 3 MLP: hidden layer (32,), otherwise scikit-learn's defaults (spec 3.2)."""
MLP_N_CONFIGS = 5
MLP_MAX_ITER = 1000

# (X_fold_train [m, d], y_fold_train [m] 0/1, X_fold_val [v, d]) -> P(y = 1) [n_settings, v]
FoldProba = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------- grids


def power_of_two_grid(max_value: int, num: int = 10) -> list[int]:
    """unique(int(2 ** linspace(0, log2(max_value), num))), increasing (spec 3.2).

    The paper's grid for PCA components and KNN k (``np.logspace(0, log2(m), 10, base=2,
    dtype=int)``): [1, 2, 4, 7, 12, 21, 35, 59, 99] for max_value = 100. Values are truncated,
    so max_value itself may be missing (99 for 100).
    """
    if int(max_value) < 1:
        raise ConfigError(f"grid maximum: expected a positive integer, got {max_value}")
    values = np.power(2.0, np.linspace(0.0, np.log2(int(max_value)), num)).astype(np.int64)
    return np.unique(values).tolist()


def draw_configurations(
    grid: Mapping[str, Sequence[Any]], n: int, seed: int = 42
) -> list[dict[str, Any]]:
    """``n`` distinct configurations drawn uniformly from the product of ``grid``'s value lists.

    Drawn without repetition with ``np.random.default_rng(seed)`` (all of them, in random order,
    when the product has fewer than ``n``). Values come back as plain Python numbers; tuples
    (MLP hidden sizes) as lists, so the configurations are JSON-ready.
    """
    if n < 1:
        raise ConfigError(f"n_configs: expected a positive integer, got {n}")
    names = list(grid)
    sizes = [len(grid[name]) for name in names]
    if not names or min(sizes) == 0:
        raise ConfigError(f"grid: expected a non-empty list of values per parameter, got {grid}")
    total = math.prod(sizes)
    rng = np.random.default_rng(seed)
    flat = rng.choice(total, size=min(n, total), replace=False)
    index = np.unravel_index(flat, sizes)
    return [
        {name: json_ready(grid[name][int(index[j][i])]) for j, name in enumerate(names)}
        for i in range(flat.size)
    ]


# ----------------------------------------------------------------------------------- estimators


class _ScaledProbe(ClassifierMixin, BaseEstimator):
    """A ``StandardScaler`` fitted on the rows given to ``fit``, then a binary classifier head.

    Subclasses implement ``_fit_head(Z [n, d] scaled, y [n] 0/1)`` and ``_head_proba(Z) -> [n]``
    (P(classes_[1])). Learned state: ``scaler_``, ``classes_`` [2] (sorted; ``classes_[1]`` is
    the positive class), ``n_features_in_``.
    """

    def __sklearn_tags__(self) -> Any:
        """Binary only; sparse X is accepted (densified)."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.sparse = True
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike) -> _ScaledProbe:
        """Fit the scaler and the head on X [n, d] and labels y [n] of exactly two classes."""
        X_np, y_np = self._validate(X, y, reset=True)
        classes = np.unique(y_np)
        if classes.size != 2:
            raise ProbeDataError(
                f"Only binary classification is supported; {type(self).__name__}: y: expected "
                f"exactly two classes, got {classes.size} class(es): {classes.tolist()[:10]}"
            )
        self.scaler_ = StandardScaler().fit(X_np)
        self._fit_head(self.scaler_.transform(X_np), (y_np == classes[1]).astype(np.int64))
        self.classes_ = classes
        return self

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """[P(classes_[0]), P(classes_[1])] for each row of X [n, d] -> [n, 2] float64."""
        check_is_fitted(self)
        X_np, _ = self._validate(X)
        p = np.asarray(self._head_proba(self.scaler_.transform(X_np)), dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``classes_[1]`` where P(classes_[1]) > 0.5, else ``classes_[0]`` -> [n]."""
        positive = self.predict_proba(X)[:, 1] > 0.5
        return self.classes_[positive.astype(np.int64)]

    def _validate(
        self, X: ArrayLike, y: ArrayLike | None = None, reset: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """scikit-learn's input checks (``n_features_in_``), then ours; X as float64 [n, d]."""
        if isinstance(X, torch.Tensor):
            X = X.detach().to("cpu", torch.float64).numpy()
        if isinstance(y, torch.Tensor):
            y = y.detach().cpu().numpy()
        kwargs = {"accept_sparse": True, "dtype": np.float64, "ensure_all_finite": False}
        try:
            if reset:
                X, y = validate_data(self, X, y, reset=True, **kwargs)
                check_classification_targets(y)
            else:
                X = validate_data(self, X, reset=False, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ProbeDataError(f"{type(self).__name__} input: {exc}") from exc
        return as_float64_matrix(X, "X"), y

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class PCAProbe(_ScaledProbe):
    """StandardScaler -> PCA(n_components) -> L2 logistic regression (C) (spec 3.2, ``pca``).

    The PCA is the exact (LAPACK, ``svd_solver="full"``) one, so its first c components do not
    depend on how many were asked for. ``n_components`` is capped at min(n_rows, d) of the
    fitted rows (``n_components_``). Learned: ``scaler_``, ``pca_`` (components [c, d]),
    ``logistic_`` (a ``LogisticProbe`` on the c projections).
    """

    def __init__(self, n_components: int = 1, C: float = 1.0) -> None:
        self.n_components = n_components
        self.C = C

    def _fit_projection(self, Z: np.ndarray) -> np.ndarray:
        """Fit the PCA on scaled rows Z [n, d]; return their projections [n, n_components_]."""
        if int(self.n_components) < 1:
            raise ConfigError(f"n_components: expected a positive integer, got {self.n_components}")
        self.n_components_ = min(int(self.n_components), *Z.shape)
        self.pca_ = PCA(n_components=self.n_components_, svd_solver="full")
        return self.pca_.fit_transform(Z)

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        self.logistic_ = LogisticProbe(C=self.C).fit(self._fit_projection(Z), y)

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return self.logistic_.predict_proba(self.pca_.transform(Z))[:, 1]


class KNNProbe(_ScaledProbe):
    """StandardScaler -> k nearest neighbours, uniform votes (spec 3.2, ``knn``).

    P(y = 1 | x) = fraction of positives among the k training rows nearest to x in Euclidean
    distance after scaling (scikit-learn's ``KNeighborsClassifier``, brute force, so neighbour
    order does not depend on a tree). Learned: ``scaler_``, ``knn_``, ``y_fit_`` [n] 0/1.
    """

    def __init__(self, n_neighbors: int = 1) -> None:
        self.n_neighbors = n_neighbors

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        k = int(self.n_neighbors)
        if not 1 <= k <= Z.shape[0]:
            raise ConfigError(
                f"n_neighbors: expected an integer in [1, {Z.shape[0]}] (the training rows), "
                f"got {self.n_neighbors}"
            )
        self.knn_ = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(Z, y)
        self.y_fit_ = y

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return self.knn_.predict_proba(Z)[:, 1]

    def proba_for_neighbors(self, X: ArrayLike, ks: Sequence[int]) -> np.ndarray:
        """P(classes_[1]) of X [n, d] for each k of ``ks`` (each <= n_neighbors) -> [len(ks), n].

        One neighbour query for the largest k; the first k neighbours of a query give the
        k-neighbour vote, as ``KNNProbe(k)`` would (up to ties in distance).
        """
        check_is_fitted(self)
        ks_np = np.asarray(ks, dtype=np.int64)
        if ks_np.size == 0 or ks_np.min() < 1 or ks_np.max() > self.knn_.n_neighbors:
            raise ConfigError(
                f"ks: expected values in [1, {self.knn_.n_neighbors}] (n_neighbors), got "
                f"{ks_np.tolist()}"
            )
        X_np, _ = self._validate(X)
        neighbours = self.knn_.kneighbors(
            self.scaler_.transform(X_np), n_neighbors=int(ks_np.max()), return_distance=False
        )
        votes = np.cumsum(self.y_fit_[neighbours], axis=1)  # [n, max k]
        return (votes[:, ks_np - 1] / ks_np).T


class XGBoostProbe(_ScaledProbe):
    """StandardScaler -> gradient-boosted trees (``xgboost.XGBClassifier``, hist) (spec 3.2).

    Parameters are XGBoost's (defaults: ``XGB_DEFAULTS``); ``n_jobs`` threads, ``random_state``
    seeds the row/column subsampling. XGBoost's CPU ``hist`` fit is deterministic, also across
    thread counts in our measurements. Learned: ``scaler_``, ``booster_`` (the fitted
    ``XGBClassifier``).
    """

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 6,
        learning_rate: float = 0.3,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        reg_alpha: float = 0.0,
        reg_lambda: float = 1.0,
        min_child_weight: float = 1,
        n_jobs: int = XGB_N_JOBS,
        random_state: int = 42,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_alpha = reg_alpha
        self.reg_lambda = reg_lambda
        self.min_child_weight = min_child_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        import xgboost  # ~1 s to import; only when an XGBoost probe is fitted

        self.booster_ = xgboost.XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            reg_alpha=self.reg_alpha,
            reg_lambda=self.reg_lambda,
            min_child_weight=self.min_child_weight,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        ).fit(Z.astype(np.float32), y)

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return self.booster_.predict_proba(Z.astype(np.float32))[:, 1]


class MLPProbe(_ScaledProbe):
    """StandardScaler -> multilayer perceptron (relu, adam, no early stopping) (spec 3.2, ``mlp``).

    scikit-learn's ``MLPClassifier`` (cross-entropy + alpha * ||W||^2 / 2, minibatches of 200,
    stops when the loss improves by < 1e-4 for 10 epochs or at ``max_iter`` epochs), run in
    float32 with one BLAS thread (module docstring). Learned: ``scaler_``, ``mlp_``, ``n_iter_``
    (epochs run).
    """

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (32,),
        learning_rate_init: float = 1e-3,
        alpha: float = 1e-4,
        max_iter: int = MLP_MAX_ITER,
        random_state: int = 42,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.learning_rate_init = learning_rate_init
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        self.mlp_ = MLPClassifier(
            hidden_layer_sizes=tuple(int(h) for h in self.hidden_layer_sizes),
            activation="relu",
            solver="adam",
            alpha=self.alpha,
            learning_rate_init=self.learning_rate_init,
            max_iter=self.max_iter,
            early_stopping=False,
            random_state=self.random_state,
        )
        with warnings.catch_warnings(), _blas_controller().limit(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp_.fit(Z.astype(np.float32), y)
        self.n_iter_ = self.mlp_.n_iter_
        if self.n_iter_ >= self.max_iter:
            logger.debug("MLP stopped at max_iter=%d without converging", self.max_iter)

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        with _blas_controller().limit(limits=1, user_api="blas"):
            return self.mlp_.predict_proba(Z.astype(np.float32))[:, 1]


# ----------------------------------------------------------------------------------- protocol


def _run_protocol(
    method: str,
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    *,
    seed: int,
    settings_for: Callable[[np.ndarray, list[Split]], list[dict[str, Any]]],
    default_setting: Callable[[np.ndarray], dict[str, Any]],
    make_probe: Callable[[dict[str, Any]], _ScaledProbe],
    fold_proba: Callable[[list[dict[str, Any]]], FoldProba],
    progress: bool,
) -> ProbeResult:
    """Validate the settings, refit the best on all training rows, score the test rows (3.1)."""
    start = time.perf_counter()
    X_tr = as_float64_matrix(X_train, "X_train")
    X_te = as_float64_matrix(X_test, "X_test")
    y_tr = binary_labels(y_train, "y_train", X_tr.shape[0])
    y_te = binary_labels(y_test, "y_test", X_te.shape[0])
    if X_te.shape[1] != X_tr.shape[1]:
        raise ProbeDataError(
            f"X_test: expected {X_tr.shape[1]} columns like X_train, got {X_te.shape[1]}"
        )
    if X_tr.shape[0] <= NO_VALIDATION_MAX_ROWS:
        setting = default_setting(X_tr)
        probe = make_probe(setting).fit(X_tr, y_tr)
        val_auc = float(roc_auc(y_tr, probe.predict_proba(X_tr)[:, 1]))
    else:
        splits = validation_splits(y_tr, seed=seed)
        settings = settings_for(X_tr, splits)
        mean_auc = mean_validation_auc(
            X_tr, y_tr, splits, len(settings), fold_proba(settings), progress=progress, desc=method
        )
        best = int(np.argmax(mean_auc))  # the first maximum
        setting = settings[best]
        val_auc = float(mean_auc[best])
        probe = make_probe(setting).fit(X_tr, y_tr)
    p_test = probe.predict_proba(X_te)[:, 1]
    pred = (p_test > 0.5).astype(np.int64)
    logger.debug("%s: chose %s (validation AUC %.4f)", method, setting, val_auc)
    return ProbeResult(
        method=method,
        test_auc=float(roc_auc(y_te, p_test)),
        test_acc=float(np.mean(pred == y_te)),
        test_f1=weighted_f1(y_te, pred),
        val_auc=val_auc,
        hyperparams=setting,
        n_train=X_tr.shape[0],
        n_test=X_te.shape[0],
        seconds=time.perf_counter() - start,
    )


def mean_validation_auc(
    X: np.ndarray,
    y: np.ndarray,
    splits: Sequence[Split],
    n_settings: int,
    fold_proba: FoldProba,
    progress: bool = False,
    desc: str = "validation",
) -> np.ndarray:
    """Mean over the splits of the validation ROC AUC of each setting -> [n_settings].

    ``fold_proba(X[train], y[train], X[val])`` returns P(y = 1) [n_settings, n_val] of every
    setting fitted on the split's training rows. A split whose training part has one class
    scores 0.5 for every setting (spec 3.1; as ``select_hyperparameter``).

    Args:
        X: [n, d]; y: [n] 0/1; splits: from ``validation_splits``; progress: bar over splits.
    """
    if len(splits) == 0:
        raise ProbeDataError("splits: no validation split to choose a hyperparameter with")
    scores = np.empty((len(splits), n_settings))
    bar = tqdm(splits, desc=f"{desc} validation splits", disable=not progress)
    for s, (train, val) in enumerate(bar):
        if np.unique(y[train]).size < 2:
            scores[s] = _SINGLE_CLASS_SCORE
            continue
        proba = np.asarray(fold_proba(X[train], y[train], X[val]))
        if proba.shape != (n_settings, val.size):
            raise ProbeDataError(
                f"fold_proba: expected shape {(n_settings, val.size)}, got {proba.shape}"
            )
        scores[s] = roc_auc(y[val], proba)
    return scores.mean(axis=0)


def _configs_fold_proba(
    make_probe: Callable[[dict[str, Any]], _ScaledProbe],
) -> Callable[[list[dict[str, Any]]], FoldProba]:
    """Fold scorer that fits one probe per setting (XGBoost, MLP)."""

    def for_settings(settings: list[dict[str, Any]]) -> FoldProba:
        def fold_proba(X_tr: np.ndarray, y_tr: np.ndarray, X_val: np.ndarray) -> np.ndarray:
            return np.stack(
                [make_probe(s).fit(X_tr, y_tr).predict_proba(X_val)[:, 1] for s in settings]
            )

        return fold_proba

    return for_settings


# ----------------------------------------------------------------------------------- methods


def fit_pca_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    seed: int = 42,
    max_components: int = PCA_MAX_COMPONENTS,
    progress: bool = False,
) -> ProbeResult:
    """PCA + logistic regression (C = 1) baseline: choose the number of components (spec 3.2).

    Components c in ``power_of_two_grid(min(n, d, max_components))``; in each fold the scaler and
    the PCA are fitted on the fold's training rows, with c capped at min(fold rows, d) (spec
    7.3.7). n <= 3: all min(n, d, max_components) components. X_train [n, d], y_train [n] 0/1,
    X_test [n_test, d], y_test [n_test] 0/1. ``hyperparams = {"n_components": c}``.
    """
    if int(max_components) < 1:
        raise ConfigError(f"max_components: expected a positive integer, got {max_components}")

    def settings_for(X: np.ndarray, splits: list[Split]) -> list[dict[str, Any]]:
        grid = power_of_two_grid(min(*X.shape, int(max_components)))
        return [{"n_components": c} for c in grid]

    def fold_proba(settings: list[dict[str, Any]]) -> FoldProba:
        components = [s["n_components"] for s in settings]

        def proba(X_tr: np.ndarray, y_tr: np.ndarray, X_val: np.ndarray) -> np.ndarray:
            # one scaler and one PCA per fold, on the fold's training rows; each c is a prefix
            projection = PCAProbe(n_components=max(components))
            scaler = StandardScaler().fit(X_tr)
            Z_tr = projection._fit_projection(scaler.transform(X_tr))
            Z_val = projection.pca_.transform(scaler.transform(X_val))
            by_c: dict[int, np.ndarray] = {}
            for c in components:
                c_fold = min(c, projection.n_components_)  # capped at the fold's size
                if c_fold not in by_c:
                    lr = LogisticProbe(C=1.0).fit(Z_tr[:, :c_fold], y_tr)
                    by_c[c_fold] = lr.predict_proba(Z_val[:, :c_fold])[:, 1]
            return np.stack([by_c[min(c, projection.n_components_)] for c in components])

        return proba

    return _run_protocol(
        "pca",
        X_train,
        y_train,
        X_test,
        y_test,
        seed=seed,
        settings_for=settings_for,
        default_setting=lambda X: {"n_components": min(*X.shape, int(max_components))},
        make_probe=lambda s: PCAProbe(n_components=s["n_components"], C=1.0),
        fold_proba=fold_proba,
        progress=progress,
    )


def fit_knn_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    seed: int = 42,
    max_neighbors: int = KNN_MAX_NEIGHBORS,
    progress: bool = False,
) -> ProbeResult:
    """K-nearest-neighbours baseline on standardised activations: choose k (spec 3.2).

    k in ``power_of_two_grid(max_k)``, max_k = min(n - 1, max_neighbors, smallest fold-train
    size); one neighbour query per fold scores every k. n <= 3: k = 1. Shapes as
    ``fit_pca_probe``. ``hyperparams = {"n_neighbors": k}``.
    """
    if int(max_neighbors) < 1:
        raise ConfigError(f"max_neighbors: expected a positive integer, got {max_neighbors}")

    def settings_for(X: np.ndarray, splits: list[Split]) -> list[dict[str, Any]]:
        smallest_fold = min(len(train) for train, _ in splits)
        max_k = min(X.shape[0] - 1, int(max_neighbors), smallest_fold)
        return [{"n_neighbors": k} for k in power_of_two_grid(max_k)]

    def fold_proba(settings: list[dict[str, Any]]) -> FoldProba:
        ks = [s["n_neighbors"] for s in settings]

        def proba(X_tr: np.ndarray, y_tr: np.ndarray, X_val: np.ndarray) -> np.ndarray:
            return KNNProbe(n_neighbors=max(ks)).fit(X_tr, y_tr).proba_for_neighbors(X_val, ks)

        return proba

    return _run_protocol(
        "knn",
        X_train,
        y_train,
        X_test,
        y_test,
        seed=seed,
        settings_for=settings_for,
        default_setting=lambda X: {"n_neighbors": 1},
        make_probe=lambda s: KNNProbe(n_neighbors=s["n_neighbors"]),
        fold_proba=fold_proba,
        progress=progress,
    )


def fit_xgboost_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    seed: int = 42,
    n_configs: int = XGB_N_CONFIGS,
    n_jobs: int = XGB_N_JOBS,
    progress: bool = False,
) -> ProbeResult:
    """XGBoost baseline on standardised activations: the best of random configurations (3.2).

    ``draw_configurations(XGB_GRID, n_configs, seed)``, each fitted with ``random_state=seed``
    and ``n_jobs`` threads. n <= 3: ``XGB_DEFAULTS``, with the test rows scaled like the training
    rows (spec 3.2 bug fixed). Shapes as ``fit_pca_probe``. ``hyperparams``: the configuration.
    """
    if int(n_jobs) < 1:
        raise ConfigError(f"n_jobs: expected a positive integer, got {n_jobs}")

    def make_probe(setting: dict[str, Any]) -> _ScaledProbe:
        return XGBoostProbe(**setting, n_jobs=int(n_jobs), random_state=seed)

    configs = draw_configurations(XGB_GRID, n_configs, seed)
    return _run_protocol(
        "xgboost",
        X_train,
        y_train,
        X_test,
        y_test,
        seed=seed,
        settings_for=lambda X, splits: configs,
        default_setting=lambda X: dict(XGB_DEFAULTS),
        make_probe=make_probe,
        fold_proba=_configs_fold_proba(make_probe),
        progress=progress,
    )


def fit_mlp_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    seed: int = 42,
    n_configs: int = MLP_N_CONFIGS,
    progress: bool = False,
) -> ProbeResult:
    """MLP baseline on standardised activations: the best of random configurations (3.2).

    ``draw_configurations(MLP_GRID, n_configs, seed)`` (the paper draws one, so selects
    nothing), each fitted with ``random_state=seed``, relu, adam, ``max_iter`` 1000, no early
    stopping. n <= 3: ``MLP_DEFAULTS``. Shapes as ``fit_pca_probe``. ``hyperparams``: the
    configuration, e.g. ``{"hidden_layer_sizes": [64, 64], "learning_rate_init": 1e-3,
    "alpha": 1e-5}``.
    """

    def make_probe(setting: dict[str, Any]) -> _ScaledProbe:
        return MLPProbe(**setting, random_state=seed)

    configs = draw_configurations(MLP_GRID, n_configs, seed)
    return _run_protocol(
        "mlp",
        X_train,
        y_train,
        X_test,
        y_test,
        seed=seed,
        settings_for=lambda X, splits: configs,
        default_setting=lambda X: {**MLP_DEFAULTS, "hidden_layer_sizes": [32]},
        make_probe=make_probe,
        fold_proba=_configs_fold_proba(make_probe),
        progress=progress,
    )


# ----------------------------------------------------------------------------------- registry

BaselineFn = Callable[..., ProbeResult]

BASELINES: dict[str, BaselineFn] = {
    "logreg": fit_logreg_probe,
    "pca": fit_pca_probe,
    "knn": fit_knn_probe,
    "xgboost": fit_xgboost_probe,
    "mlp": fit_mlp_probe,
}
"""The paper's five baselines by method name (spec 3.3). Each is called as
``fn(X_train, y_train, X_test, y_test, seed=seed)`` and returns a ``ProbeResult`` whose
``method`` is its key."""


def fit_baselines(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    methods: Sequence[str] = tuple(BASELINES),
    seed: int = 42,
    progress: bool = False,
) -> list[ProbeResult]:
    """Fit the named baselines (default: all five, the paper's quiver, spec 3.3), in order.

    X_train [n, d], y_train [n] 0/1, X_test [n_test, d], y_test [n_test] 0/1. Inputs are
    converted to float64 once and shared.
    """
    unknown = [m for m in methods if m not in BASELINES]
    if unknown:
        raise ConfigError(
            f"methods: unknown baseline(s) {unknown}; expected some of {list(BASELINES)}"
        )
    X_tr = as_float64_matrix(X_train, "X_train")
    X_te = as_float64_matrix(X_test, "X_test")
    results = []
    for method in tqdm(methods, desc="baselines", disable=not progress):
        results.append(BASELINES[method](X_tr, y_train, X_te, y_test, seed=seed))
    return results
