"""The logistic-regression baseline, and the validate-refit-score protocol every logreg probe uses.

Source: sae-probes spec section 3 (``find_best_reg`` in ``utils_training.py``): choose C from the
paper's grid by mean validation ROC AUC, refit on all training rows with that C, score the test
rows once. SAE probes (``sae_probes.py``) run the same protocol on their top-k latent columns.

Differences from the paper, all deliberate: the fits are solved to optimality by Newton's method
(the paper's lbfgs stops at tol=1e-4 / max_iter=1000 and often at the iteration cap for large C),
so the paper's shuffle of the training rows before the refit (which only changes where lbfgs
stops) is not needed; and the hold-out split has the one-class fix of ``validation_splits``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import expit

from saelab.errors import ConfigError, ProbeDataError
from saelab.probes.l1 import fit_l1_path
from saelab.probes.logistic import (
    ArrayLike,
    LogisticProbe,
    as_float64_matrix,
    limit_solver_threads,
)
from saelab.probes.result import ProbeResult
from saelab.probes.validation import (
    C_GRID,
    roc_auc,
    select_with_solution,
    validation_splits,
    weighted_f1,
)

logger = logging.getLogger(__name__)

# Training-set size at or below which no validation is run and C = 1 (spec 3.1-3.2).
_NO_CV_MAX_ROWS = 3
_DEFAULT_C = 1.0


def binary_labels(y: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    """Labels as int64 {0, 1} [n]; raises ``ProbeDataError`` unless both classes are present."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = f"{n} labels" if n is not None else "labels"
        raise ProbeDataError(f"{name}: expected a 1-D array of {want}, got shape {arr.shape}")
    values = np.unique(arr)
    if not set(values.tolist()) <= {0, 1}:
        raise ProbeDataError(f"{name}: expected labels 0/1, got values {values.tolist()[:10]}")
    if values.size < 2:
        raise ProbeDataError(f"{name}: expected both classes 0 and 1, got only {values.tolist()}")
    return arr.astype(np.int64)


def fit_probe_protocol(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    *,
    method: str,
    seed: int = 42,
    Cs: Sequence[float] | np.ndarray = C_GRID,
    k: int | None = None,
    latents: list[int] | None = None,
    variant: str | None = None,
    penalty: str = "l2",
) -> ProbeResult:
    """Validate C, refit on all training rows, score the test rows (spec 3.1-3.2).

    ``penalty="l2"`` solves with the batched Newton path (``logistic.py``); ``"l1"`` with
    LIBLINEAR (``l1.py``, the paper's L1 SAE probe). Both use the same splits, grid and rule.

    - n_train <= 3: no validation; C = 1 and val_auc is the training AUC of that fit.
    - otherwise: ``validation_splits(y_train, seed)``, C = first argmax of the mean validation
      AUC over ``Cs``, val_auc = that mean.
    Test AUC is ROC AUC of P(y = 1) = expit(x . w + b); test accuracy uses x . w + b > 0.

    Args:
        X_train: [n_train, d], y_train: [n_train] 0/1 (both classes), X_test: [n_test, d],
        y_test: [n_test] 0/1 (both classes); numpy or torch. ``method``, ``k``, ``latents`` and
        ``variant`` are copied into the result.
    """
    start = time.perf_counter()
    X_tr = as_float64_matrix(X_train, "X_train")
    X_te = as_float64_matrix(X_test, "X_test")
    y_tr = binary_labels(y_train, "y_train", X_tr.shape[0])
    y_te = binary_labels(y_test, "y_test", X_te.shape[0])
    if X_te.shape[1] != X_tr.shape[1]:
        raise ProbeDataError(
            f"X_test: expected {X_tr.shape[1]} columns like X_train, got {X_te.shape[1]}"
        )
    C_np = np.asarray(Cs, dtype=np.float64)
    n_train = X_tr.shape[0]
    if penalty not in ("l1", "l2"):
        raise ConfigError(f"penalty: expected 'l1' or 'l2', got {penalty!r}")
    with limit_solver_threads(*X_tr.shape):
        if penalty == "l2":
            C, val_auc, probe = _validate_and_refit(X_tr, y_tr, C_np, seed)
            decision = probe.decision_function(X_te)
        else:
            C, val_auc, (coef, intercept) = _validate_and_refit_l1(X_tr, y_tr, C_np, seed)
            decision = X_te @ coef + intercept
    pred = (decision > 0).astype(np.int64)
    test_auc = float(roc_auc(y_te, expit(decision)))
    test_acc = float(np.mean(pred == y_te))
    return ProbeResult(
        method=method,
        test_auc=test_auc,
        test_acc=test_acc,
        val_auc=val_auc,
        hyperparams={"C": C},
        n_train=n_train,
        n_test=X_te.shape[0],
        seconds=time.perf_counter() - start,
        k=k,
        latents=latents,
        variant=variant,
        test_f1=weighted_f1(y_te, pred),
    )


def _validate_and_refit_l1(
    X_tr: np.ndarray, y_tr: np.ndarray, C_np: np.ndarray, seed: int
) -> tuple[float, float, tuple[np.ndarray, float]]:
    """(chosen C, validation AUC, (coef [d], intercept)) of the L1 probe, same protocol as L2."""
    if X_tr.shape[0] <= _NO_CV_MAX_ROWS:
        C = _DEFAULT_C
        coef, intercept = fit_l1_path(X_tr, y_tr, [C], seed)
        val_auc = float(roc_auc(y_tr, expit(X_tr @ coef[0] + intercept[0])))
        return C, val_auc, (coef[0], float(intercept[0]))
    splits = validation_splits(y_tr, seed=seed)
    scores = np.empty((len(splits), C_np.size))
    for s, (train, val) in enumerate(splits):
        if np.unique(y_tr[train]).size < 2:
            scores[s] = 0.5  # as the L2 path: a one-class training fold scores 0.5
            continue
        coef, intercept = fit_l1_path(X_tr[train], y_tr[train], C_np, seed)
        scores[s] = roc_auc(y_tr[val], expit(X_tr[val] @ coef.T + intercept).T)
    mean = scores.mean(axis=0)
    best = int(np.argmax(mean))
    C = float(C_np[best])
    coef, intercept = fit_l1_path(X_tr, y_tr, [C], seed)
    return C, float(mean[best]), (coef[0], float(intercept[0]))


def _validate_and_refit(
    X_tr: np.ndarray, y_tr: np.ndarray, C_np: np.ndarray, seed: int
) -> tuple[float, float, LogisticProbe]:
    """(chosen C, validation AUC, probe refit on all rows) for X_tr [n, d], y_tr [n] 0/1."""
    if X_tr.shape[0] <= _NO_CV_MAX_ROWS:
        C = _DEFAULT_C
        probe = LogisticProbe(C=C).fit(X_tr, y_tr)
        val_auc = float(roc_auc(y_tr, probe.predict_proba(X_tr)[:, 1]))
    else:
        splits = validation_splits(y_tr, seed=seed)
        best, mean_auc, warm = select_with_solution(X_tr, y_tr, splits, C_np)
        C = float(C_np[best])
        val_auc = float(mean_auc[best])
        # warm start from a validation fit at the same C (saves Newton steps, same optimum)
        coef_init, intercept_init = warm if warm is not None else (None, None)
        probe = LogisticProbe(C=C).fit(X_tr, y_tr, coef_init, intercept_init)
    return C, val_auc, probe


def fit_logreg_probe(
    X_train: ArrayLike,
    y_train: ArrayLike,
    X_test: ArrayLike,
    y_test: ArrayLike,
    seed: int = 42,
    Cs: Sequence[float] | np.ndarray = C_GRID,
) -> ProbeResult:
    """The paper's L2 logistic-regression baseline on raw (unstandardised) activations (spec 3.2).

    X_train [n_train, d], y_train [n_train], X_test [n_test, d], y_test [n_test]; labels 0/1.
    Returns a ``ProbeResult`` with method ``"logreg"`` and ``hyperparams={"C": chosen C}``.
    """
    return fit_probe_protocol(X_train, y_train, X_test, y_test, method="logreg", seed=seed, Cs=Cs)
