"""The paper's baselines on raw activations: logistic regression, PCA, KNN, XGBoost and MLP.

Source: sae-probes 0.4.2 ``utils_training.py`` (``find_best_reg``, ``find_best_pcareg``,
``find_best_knn``, ``find_best_xgboost``, ``find_best_mlp``) and the paper's section 3 (its
"quiver of arrows"). Each baseline is an estimator with the scikit-learn contract (``fit``,
``decision_function``, ``predict_proba``, parameters in ``__init__``, learned state ending in
``_``) and a :class:`~saelab.probes.protocol.ProbeMethod` that the one validation protocol
(:func:`~saelab.probes.protocol.run_protocol`) runs: candidate settings, default for n <= 3, and a
``decide`` that fits many folds at once where the shapes allow.

Each estimator except logistic regression (raw activations, as the paper) contains its
``StandardScaler``, fitted on whatever rows ``fit`` is given. Deliberate differences from the
paper, each documented where it applies:

- the scaler, and PCA's projection, are fitted inside each validation fold on the fold's training
  rows only (the paper fits both on the whole training set before validating, so the projection
  has seen the validation rows); PCA's components are capped at the fold's size;
- every score uses decision values, not probabilities (``protocol`` module docstring);
- PCA's and logistic regression's fits are solved to optimality (the paper's lbfgs stops at
  tol 1e-4 / 1000 iterations) and the paper's shuffle before the refit, which only changes where
  lbfgs stops, is not needed;
- KNN: one neighbour search per fold serves every k (the paper runs one joblib process per fold
  and k); neighbours at equal distance are taken in row order;
- XGBoost: the test rows of the n <= 3 path go through the scaler like the training rows (the
  paper predicts on unscaled X_test); under the default parameters this cannot change the scores:
  each row's Hessian p (1 - p) is at most 1/4, so 3 rows never reach ``min_child_weight`` = 1,
  no tree splits and every prediction is the same constant;
- MLP: the peer draws one configuration (``n_iter=1``), so nothing is selected; saelab draws
  ``MLP_N_CONFIGS`` = 5 from the same random stream (the first is the peer's) and selects by
  validation AUC;
- a split whose training part has one class scores 0.5, as the paper's logistic protocol does
  (its other four methods raise there).
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from saelab.errors import ConfigError, ProbeDataError
from saelab.io import json_ready
from saelab.names import BASELINES as BASELINE_NAMES
from saelab.probes.linear import LogisticMethod, LogisticTask, solve_logistic_tasks
from saelab.probes.logistic import LogisticProbe
from saelab.probes.protocol import (
    ArrayLike,
    Decisions,
    FitTask,
    ProbeMethod,
    Problem,
    Split,
    decide_with_estimators,
    run_protocol,
    validate_estimator_input,
)
from saelab.probes.result import ProbeResult

logger = logging.getLogger(__name__)

PCA_MAX_COMPONENTS = 100
"""Most PCA components tried: maxc = min(n, d, 100) (``find_best_pcareg``)."""
KNN_MAX_NEIGHBORS = 100
"""Largest k tried: max_k = min(n - 1, 100, smallest fold-train size) (``find_best_knn``)."""

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
"""The paper's XGBoost search space, in the peer's order (``find_best_xgboost``'s
``param_space``: the draws depend on the order of keys and values)."""
XGB_N_CONFIGS = 10

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
100 rounds). Used for n_train <= 3 (``find_best_xgboost``)."""

MLP_HIDDEN_SIZES: tuple[tuple[int, ...], ...] = (
    (16,),
    (32,),
    (64,),
    (16, 16),
    (32, 32),
    (64, 64),
    (16, 16, 16),
    (32, 32, 32),
    (64, 64, 64),
)
MLP_LEARNING_RATES: tuple[float, ...] = tuple(np.logspace(-4, -2, 5).tolist())
MLP_ALPHAS: tuple[float, ...] = tuple(np.logspace(-5, -2, 5).tolist())
"""The paper's MLP search space (``find_best_mlp``'s ``param_dist``); relu, adam, max_iter 1000."""
MLP_N_CONFIGS = 5
MLP_MAX_ITER = 1000
MLP_DEFAULTS: dict[str, Any] = {
    "hidden_layer_sizes": [32],
    "learning_rate_init": 1e-3,
    "alpha": 1e-4,
}
"""The paper's n_train <= 3 MLP: hidden layer (32,), otherwise scikit-learn's defaults."""


# ----------------------------------------------------------------------------------- grids


def power_of_two_grid(max_value: int, num: int = 10) -> list[int]:
    """unique(int(2 ** linspace(0, log2(max_value), num))), increasing.

    The paper's grid for PCA components and KNN k (``np.logspace(0, log2(m), 10, base=2,
    dtype=int)``): [1, 2, 4, 7, 12, 21, 35, 59, 99] for max_value = 100. Values are truncated,
    so max_value itself may be missing (99 for 100).
    """
    if int(max_value) < 1:
        raise ConfigError(f"grid maximum: expected a positive integer, got {max_value}")
    values = np.power(2.0, np.linspace(0.0, np.log2(int(max_value)), num)).astype(np.int64)
    return np.unique(values).tolist()


def xgboost_configurations(n: int = XGB_N_CONFIGS, seed: int = 42) -> list[dict[str, Any]]:
    """The configurations sae-probes 0.4.2 searches, in its order, repeats removed.

    ``find_best_xgboost`` draws ``n`` = 10 times with ``rng = random.Random(seed)``:
    ``{name: rng.choice(list(values)) for name, values in param_space.items()}``, in the order of
    :data:`XGB_GRID`. A configuration drawn twice is scored twice there with the same result, so
    dropping the repeat changes nothing (the first maximum is kept either way).
    """
    if n < 1:
        raise ConfigError(f"n_configs: expected a positive integer, got {n}")
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        config = {name: json_ready(rng.choice(list(v))) for name, v in XGB_GRID.items()}
        if config not in out:
            out.append(config)
    return out


def mlp_configurations(n: int = MLP_N_CONFIGS, seed: int = 42) -> list[dict[str, Any]]:
    """``n`` distinct MLP configurations from sae-probes' random stream; the first is the peer's.

    ``find_best_mlp`` draws once with ``rng = np.random.RandomState(seed)``: hidden sizes
    ``rng.randint(9)``, learning rate ``rng.randint(5)``, alpha ``rng.choice(5 values)`` (seed 42:
    (16, 16, 16), 3.16e-3, 1e-2). saelab keeps drawing from the same stream, skipping repeats,
    until it has ``n``.
    """
    if n < 1:
        raise ConfigError(f"n_configs: expected a positive integer, got {n}")
    rng = np.random.RandomState(seed)
    out: list[dict[str, Any]] = []
    total = len(MLP_HIDDEN_SIZES) * len(MLP_LEARNING_RATES) * len(MLP_ALPHAS)
    while len(out) < min(n, total):
        config = {
            "hidden_layer_sizes": list(MLP_HIDDEN_SIZES[rng.randint(len(MLP_HIDDEN_SIZES))]),
            "learning_rate_init": float(MLP_LEARNING_RATES[rng.randint(len(MLP_LEARNING_RATES))]),
            "alpha": float(rng.choice(np.asarray(MLP_ALPHAS))),
        }
        if config not in out:
            out.append(config)
    return out


# ----------------------------------------------------------------------------------- estimators


class _ScaledProbe(ClassifierMixin, BaseEstimator):
    """A ``StandardScaler`` fitted on the rows given to ``fit``, then a binary classifier head.

    Subclasses implement ``_fit_head(Z [n, d] scaled, y [n] 0/1)`` and ``_head_decision(Z) -> [n]``
    (a decision value, > 0 favours ``classes_[1]``) and ``_head_proba``. Learned state:
    ``scaler_``, ``classes_`` [2] (sorted; ``classes_[1]`` is the positive class),
    ``n_features_in_``, ``converged_``.
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
        self.converged_ = True
        self._fit_head(self.scaler_.transform(X_np), (y_np == classes[1]).astype(np.int64))
        self.classes_ = classes
        return self

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Decision value per row of X [n, d] -> [n] float64 (> 0 predicts ``classes_[1]``)."""
        check_is_fitted(self)
        X_np, _ = self._validate(X)
        return np.asarray(self._head_decision(self.scaler_.transform(X_np)), dtype=np.float64)

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """[P(classes_[0]), P(classes_[1])] for each row of X [n, d] -> [n, 2] float64."""
        check_is_fitted(self)
        X_np, _ = self._validate(X)
        p = np.asarray(self._head_proba(self.scaler_.transform(X_np)), dtype=np.float64)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``classes_[1]`` where the decision value is > 0, else ``classes_[0]`` -> [n]."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(np.int64)]

    def _validate(
        self, X: ArrayLike, y: ArrayLike | None = None, reset: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return validate_estimator_input(self, X, y, reset)

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _head_decision(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def _fit_pca(Z: np.ndarray, n_components: int) -> tuple[PCA, np.ndarray]:
    """Exact PCA (LAPACK SVD) of scaled rows Z [n, d], capped at min(n, d) components."""
    if int(n_components) < 1:
        raise ConfigError(f"n_components: expected a positive integer, got {n_components}")
    pca = PCA(n_components=min(int(n_components), *Z.shape), svd_solver="full")
    return pca, pca.fit_transform(Z)


class PCAProbe(_ScaledProbe):
    """StandardScaler -> PCA(n_components) -> L2 logistic regression (C) (``find_best_pcareg``).

    The PCA is the exact (LAPACK, ``svd_solver="full"``) one, so its first c components do not
    depend on how many were asked for. ``n_components`` is capped at min(n_rows, d) of the
    fitted rows (``n_components_``). Learned: ``scaler_``, ``pca_`` (components [c, d]),
    ``logistic_`` (a ``LogisticProbe`` on the c projections).
    """

    def __init__(self, n_components: int = 1, C: float = 1.0) -> None:
        self.n_components = n_components
        self.C = C

    def _fit_head(self, Z: np.ndarray, y: np.ndarray) -> None:
        self.pca_, projected = _fit_pca(Z, self.n_components)
        self.n_components_ = self.pca_.n_components_
        self.logistic_ = LogisticProbe(C=self.C).fit(projected, y)
        self.converged_ = bool(self.logistic_.converged_)

    def _head_decision(self, Z: np.ndarray) -> np.ndarray:
        return self.logistic_.decision_function(self.pca_.transform(Z))

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return self.logistic_.predict_proba(self.pca_.transform(Z))[:, 1]


def knn_vote_shares(
    Z_fit: np.ndarray, y_fit: np.ndarray, Z_eval: np.ndarray, ks: Sequence[int]
) -> np.ndarray:
    """Share of positives among the k nearest fit rows of each eval row, for every k -> [len(ks), m].

    Euclidean distances in float64 by the matrix-product form sqrt(|a|^2 - 2 a.b + |b|^2), as
    scikit-learn's brute force computes them; one search for the largest k serves every k.
    Neighbours at exactly equal distance are taken in row order (scikit-learn leaves that order
    to an unstable sort).
    """
    ks_np = np.asarray(ks, dtype=np.int64)
    n = Z_fit.shape[0]
    if ks_np.size == 0 or ks_np.min() < 1 or ks_np.max() > n:
        raise ConfigError(
            f"ks: expected values in [1, {n}] (the fitted rows), got {ks_np.tolist()}"
        )
    k_max = int(ks_np.max())
    dist = torch.cdist(
        torch.from_numpy(np.ascontiguousarray(Z_eval, dtype=np.float64)),
        torch.from_numpy(np.ascontiguousarray(Z_fit, dtype=np.float64)),
        compute_mode="use_mm_for_euclid_dist",
    )
    near = torch.topk(dist, k_max, dim=1, largest=False, sorted=False).indices  # [m, k_max]
    near = torch.sort(near, dim=1).values  # candidate rows in row order ...
    order = torch.sort(dist.gather(1, near), dim=1, stable=True).indices  # ... then by distance
    neighbours = near.gather(1, order).numpy()
    votes = np.cumsum(np.asarray(y_fit, dtype=np.float64)[neighbours], axis=1)  # [m, k_max]
    return (votes[:, ks_np - 1] / ks_np).T


class KNNProbe(_ScaledProbe):
    """StandardScaler -> k nearest neighbours, uniform votes (``find_best_knn``).

    P(y = 1 | x) = share of positives among the k training rows nearest to x in Euclidean
    distance after scaling (scikit-learn's ``KNeighborsClassifier`` up to the order of rows at
    equal distance, see :func:`knn_vote_shares`); decision value = P(y = 1 | x) - 1/2, so a tie
    of votes predicts class 0, as scikit-learn's argmax does. Learned: ``scaler_``, ``Z_fit_``,
    ``y_fit_`` [n] 0/1.
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
        self.Z_fit_, self.y_fit_ = Z, y

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return knn_vote_shares(self.Z_fit_, self.y_fit_, Z, [int(self.n_neighbors)])[0]

    def _head_decision(self, Z: np.ndarray) -> np.ndarray:
        return self._head_proba(Z) - 0.5


class XGBoostProbe(_ScaledProbe):
    """StandardScaler -> gradient-boosted trees (``xgboost.XGBClassifier``, hist) (``find_best_xgboost``).

    Parameters are XGBoost's (defaults: ``XGB_DEFAULTS``); ``n_jobs`` threads, ``random_state``
    seeds the row/column subsampling, ``device`` is XGBoost's (``"cpu"`` or ``"cuda"``). The CPU
    ``hist`` fit is deterministic, also across thread counts in our measurements. The decision
    value is the booster's margin (log-odds), never its float32 probability. Learned:
    ``scaler_``, ``booster_`` (the fitted ``XGBClassifier``).
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
        n_jobs: int = 1,
        random_state: int = 42,
        device: str = "cpu",
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
        self.device = device

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
            device=self.device,
        ).fit(Z.astype(np.float32), y)

    def _head_decision(self, Z: np.ndarray) -> np.ndarray:
        return self.booster_.predict(Z.astype(np.float32), output_margin=True)

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        return self.booster_.predict_proba(Z.astype(np.float32))[:, 1]


class MLPProbe(_ScaledProbe):
    """StandardScaler -> multilayer perceptron (relu, adam, no early stopping) (``find_best_mlp``).

    scikit-learn's ``MLPClassifier`` (cross-entropy + alpha * ||W||^2 / 2, minibatches of 200,
    stops when the loss improves by < 1e-4 for 10 epochs or at ``max_iter`` epochs), fitted in
    float32 with one BLAS thread, so its result does not depend on the machine's core count (with
    float32 BLAS, adam's iteration count changed with the thread count in our measurements). The
    decision value is the output unit's logit, computed in float64 from the fitted weights
    (the float32 sigmoid saturates early). Learned: ``scaler_``, ``mlp_``, ``n_iter_`` (epochs
    run); ``converged_`` is False when it stopped at ``max_iter``.
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
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.mlp_.fit(Z.astype(np.float32), y)
        self.n_iter_ = self.mlp_.n_iter_
        self.converged_ = self.n_iter_ < self.max_iter

    def _head_decision(self, Z: np.ndarray) -> np.ndarray:
        a = Z.astype(np.float64)
        last = len(self.mlp_.coefs_) - 1
        for i, (W, b) in enumerate(zip(self.mlp_.coefs_, self.mlp_.intercepts_, strict=True)):
            a = a @ W.astype(np.float64) + b.astype(np.float64)
            if i < last:
                np.maximum(a, 0.0, out=a)
        return a[:, 0]

    def _head_proba(self, Z: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="blas"):
            return self.mlp_.predict_proba(Z.astype(np.float32))[:, 1]


# ----------------------------------------------------------------------------------- methods


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


class PCAMethod:
    """PCA + logistic regression (C = 1): choose the number of components (``find_best_pcareg``).

    Components c in ``power_of_two_grid(min(n, d, max_components))``; n <= 3: all of them. In
    each fold the scaler and the PCA are fitted once on the fold's training rows (c capped at the
    fold's size), and the logistic fits of every c of every fold run as one batched solve
    (columns beyond c masked out).
    """

    name = "pca"

    def __init__(self, max_components: int = PCA_MAX_COMPONENTS, C: float = 1.0) -> None:
        if int(max_components) < 1:
            raise ConfigError(f"max_components: expected a positive integer, got {max_components}")
        self.max_components = int(max_components)
        self.C = float(C)

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]:
        grid = power_of_two_grid(min(*X_train.shape, self.max_components))
        return [{"n_components": c} for c in grid]

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]:
        return {"n_components": min(*X_train.shape, self.max_components)}

    def estimator(self, setting: dict[str, Any]) -> PCAProbe:
        return PCAProbe(n_components=setting["n_components"], C=self.C)

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]:
        jobs: list[LogisticTask] = []
        evals: list[tuple[np.ndarray, list[int]]] = []
        for task in tasks:
            scaler = StandardScaler().fit(task.X_fit)
            wanted = [int(s["n_components"]) for s in task.settings]
            pca, Z_fit = _fit_pca(scaler.transform(task.X_fit), max(wanted))
            Z_eval = pca.transform(scaler.transform(task.X_eval))
            used = [min(c, pca.n_components_) for c in wanted]
            for c in used:
                jobs.append(LogisticTask(Z_fit, task.y_fit, [self.C], n_features=c))
            evals.append((Z_eval, used))
        fits = iter(solve_logistic_tasks(jobs, penalty="l2"))
        out = []
        for Z_eval, used in evals:
            values, converged = [], []
            for c in used:
                fit = next(fits)
                values.append(Z_eval[:, :c] @ fit.coef[0, :c] + fit.intercept[0])
                converged.append(bool(fit.converged[0]))
            out.append(Decisions(np.stack(values), np.asarray(converged)))
        return out

    def fingerprint(self) -> dict[str, Any]:
        return {
            "max_components": self.max_components,
            "C": self.C,
            "scikit-learn": _version("scikit-learn"),
            **LogisticMethod(penalty="l2").fingerprint(),
        }


class KNNMethod:
    """K nearest neighbours on standardised activations: choose k (``find_best_knn``).

    k in ``power_of_two_grid(max_k)``, max_k = min(n - 1, max_neighbors, smallest fold-train
    size); n <= 3: k = 1. One scaler and one neighbour search per fold scores every k.
    """

    name = "knn"

    def __init__(self, max_neighbors: int = KNN_MAX_NEIGHBORS) -> None:
        if int(max_neighbors) < 1:
            raise ConfigError(f"max_neighbors: expected a positive integer, got {max_neighbors}")
        self.max_neighbors = int(max_neighbors)

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]:
        smallest_fold = min(len(train) for train, _ in splits)
        max_k = min(X_train.shape[0] - 1, self.max_neighbors, smallest_fold)
        return [{"n_neighbors": k} for k in power_of_two_grid(max_k)]

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]:
        return {"n_neighbors": 1}

    def estimator(self, setting: dict[str, Any]) -> KNNProbe:
        return KNNProbe(n_neighbors=setting["n_neighbors"])

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]:
        out = []
        for task in tasks:
            scaler = StandardScaler().fit(task.X_fit)
            ks = [int(s["n_neighbors"]) for s in task.settings]
            shares = knn_vote_shares(
                scaler.transform(task.X_fit), task.y_fit, scaler.transform(task.X_eval), ks
            )
            out.append(Decisions(shares - 0.5, np.ones(len(ks), dtype=bool)))
        return out

    def fingerprint(self) -> dict[str, Any]:
        return {
            "max_neighbors": self.max_neighbors,
            "torch": torch.__version__,
            "scikit-learn": _version("scikit-learn"),
        }


class XGBoostMethod:
    """XGBoost on standardised activations: the best of sae-probes' 10 drawn configurations.

    ``xgboost_configurations(n_configs, seed)`` (the peer's ``random.Random(seed)`` draws, in its
    order), each fitted with ``random_state=seed``, ``n_jobs`` threads (one per worker in a
    pool). n <= 3: ``XGB_DEFAULTS``.
    """

    name = "xgboost"

    def __init__(
        self, seed: int = 42, n_configs: int = XGB_N_CONFIGS, n_jobs: int = 1, device: str = "cpu"
    ) -> None:
        if int(n_jobs) < 1:
            raise ConfigError(f"n_jobs: expected a positive integer, got {n_jobs}")
        self.seed = seed
        self.n_configs = n_configs
        self.n_jobs = int(n_jobs)
        self.device = device
        self.configs = xgboost_configurations(n_configs, seed)

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]:
        return [dict(c) for c in self.configs]

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]:
        return dict(XGB_DEFAULTS)

    def estimator(self, setting: dict[str, Any]) -> XGBoostProbe:
        return XGBoostProbe(
            **setting, n_jobs=self.n_jobs, random_state=self.seed, device=self.device
        )

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]:
        return decide_with_estimators(self, tasks)

    def fingerprint(self) -> dict[str, Any]:
        return {"configs": self.configs, "xgboost": _version("xgboost"), "device": self.device}


class MLPMethod:
    """MLP on standardised activations: the best of ``n_configs`` drawn configurations.

    ``mlp_configurations(n_configs, seed)`` (the first is the peer's single draw), each fitted
    with ``random_state=seed``. n <= 3: ``MLP_DEFAULTS``.
    """

    name = "mlp"

    def __init__(self, seed: int = 42, n_configs: int = MLP_N_CONFIGS) -> None:
        self.seed = seed
        self.n_configs = n_configs
        self.configs = mlp_configurations(n_configs, seed)

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]:
        return [dict(c) for c in self.configs]

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]:
        return dict(MLP_DEFAULTS)

    def estimator(self, setting: dict[str, Any]) -> MLPProbe:
        return MLPProbe(**setting, random_state=self.seed)

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]:
        return decide_with_estimators(self, tasks)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "configs": self.configs,
            "max_iter": MLP_MAX_ITER,
            "scikit-learn": _version("scikit-learn"),
        }


# ----------------------------------------------------------------------------------- registry

MethodFactory = Callable[..., ProbeMethod]

BASELINES: dict[str, MethodFactory] = {
    "logreg": lambda seed=42, **_: LogisticMethod(penalty="l2", name="logreg"),
    "pca": lambda seed=42, **_: PCAMethod(),
    "knn": lambda seed=42, **_: KNNMethod(),
    "xgboost": lambda seed=42, device="cpu", **_: XGBoostMethod(
        seed=seed, device="cuda" if str(device).startswith("cuda") else "cpu"
    ),
    "mlp": lambda seed=42, **_: MLPMethod(seed=seed),
}
"""The paper's five baselines by name (``saelab.names.BASELINES``, in that order): each builds
the :class:`ProbeMethod` the protocol runs, as ``BASELINES[name](seed=..., device=...)``."""
assert tuple(BASELINES) == BASELINE_NAMES


def baseline_method(name: str, seed: int = 42, device: str = "cpu") -> ProbeMethod:
    """The protocol method of baseline ``name`` (one of ``saelab.names.BASELINES``)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; expected one of {list(BASELINES)}")
    return BASELINES[name](seed=seed, device=device)


def fit_baselines(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    methods: Sequence[str] = BASELINE_NAMES,
    seed: int = 42,
) -> list[ProbeResult]:
    """Fit the named baselines (default: all five, the paper's quiver) on one split, in order.

    X_train [n, d], y_train [n] 0/1, X_test [n_test, d], y_test [n_test] 0/1.
    """
    problem = Problem(X_train, y_train, X_test, y_test)
    return [run_protocol(baseline_method(m, seed), [problem], seed)[0] for m in methods]
