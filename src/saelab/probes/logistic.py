"""Logistic regression for one problem over a C grid, and the estimator (L2, or L1).

Objectives (scikit-learn user guide, "Linear Models > Logistic regression", binary case,
https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression; scikit-learn does
not penalise the intercept):

    L2:  f_C(w, b) = 0.5 ||w||^2 + C * sum_i log(1 + exp(-y_i (x_i . w + b))),   y_i in {-1, +1}
    L1:  f_C(w, b) =     ||w||_1 + C * sum_i log(1 + exp(-y_i (x_i . w + b)))

Both are solved to the optimum in float64 by ``saelab.probes.solvers.fit_logistic_batch`` (one
implementation for one problem and for batches of many): for L2, Newton-Raphson with Armijo
backtracking, the exact QR reduction to n unknowns when n < d, and continuation along the C path
with a tangent warm start for large problems (for the paper's 924 x 384 hold-out fit ~40 Newton
steps for the 10 Cs instead of ~80 cold); for L1, an orthant-wise damped Newton method (see that
module). ``fit_logistic_path`` is its B = 1 case with numpy in and out and the thread rule below;
L2 solutions match scikit-learn's ``newton-cholesky`` at tol=1e-12 to ~1e-13 and are at least as
optimal as ``lbfgs`` at tol=1e-10 (tests).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import ThreadpoolController

from saelab.errors import ProbeDataError
from saelab.probes.protocol import ArrayLike, as_float64_matrix, validate_estimator_input
from saelab.probes.solvers import SMALL_PROBLEM_FLOPS, fit_logistic_batch

logger = logging.getLogger(__name__)

# Newton iterations run single-threaded up to this many unknowns (see fit_logistic_path).
_SINGLE_THREAD_MAX_P = 1024


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (no change for None); restore after."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def _blas_controller() -> ThreadpoolController:
    """One threadpoolctl controller (building one scans the loaded libraries: ~1 ms)."""
    return ThreadpoolController()


def solver_threads(n_rows: int, n_features: int) -> int:
    """CPU threads for Newton on an [n_rows, n_features] problem: 1 up to 1024 unknowns.

    Unknowns p = min(n_rows, n_features) + 1 (after the reduction, with the intercept). See the
    ``num_threads`` argument of ``fit_logistic_path`` for the measurements behind this rule.
    """
    p = min(n_rows, n_features) + 1
    return 1 if p <= _SINGLE_THREAD_MAX_P else torch.get_num_threads()


def _signed_labels(y: ArrayLike, n: int, name: str = "y") -> np.ndarray:
    """Labels in {0, 1} or {-1, +1} -> float64 {-1, +1} [n] (1 is the positive class)."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ProbeDataError(f"{name}: expected a 1-D array of {n} labels, got shape {y.shape}")
    values = set(np.unique(y).tolist())
    if not values <= {0, 1} and not values <= {-1, 1}:
        raise ProbeDataError(
            f"{name}: expected labels in {{0, 1}} or {{-1, +1}}, got {sorted(values)}"
        )
    return np.where(y == 1, 1.0, -1.0)


def _initial_solutions(
    coef_init: ArrayLike, intercept_init: ArrayLike | None, m: int, d: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm starts as the batch solver's ``init``: coef [1, m, d] and intercept [1, m]."""
    w0 = np.asarray(coef_init, dtype=np.float64)
    w0 = np.broadcast_to(w0, (m, d)) if w0.ndim == 1 else w0
    if w0.shape != (m, d) or not np.all(np.isfinite(w0)):
        raise ProbeDataError(
            f"coef_init: expected finite values of shape ({m}, {d}), got {w0.shape}"
        )
    b0 = np.broadcast_to(np.asarray(0.0 if intercept_init is None else intercept_init), (m,))
    if not np.all(np.isfinite(b0)):
        raise ProbeDataError("intercept_init: expected finite values")
    coef = torch.from_numpy(np.array(w0, dtype=np.float64))[None]  # copies: writable
    return coef, torch.from_numpy(np.array(b0, dtype=np.float64))[None]


def fit_logistic_path(
    X: ArrayLike,
    y: ArrayLike,
    Cs: Sequence[float] | np.ndarray,
    fit_intercept: bool = True,
    max_iter: int = 100,
    tol: float = 1e-8,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    coef_init: ArrayLike | None = None,
    intercept_init: ArrayLike | None = None,
    penalty: Literal["l1", "l2"] = "l2",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit logistic regression for every C of a grid (module docstring: objectives).

    ``fit_logistic_batch`` with one problem, numpy in and out, and the thread rule below.

    Args:
        X: [n, d] features (numpy, torch or scipy sparse); computed in float64.
        y: [n] labels in {0, 1} or {-1, +1}; 1 is the positive class.
        Cs: [n_C] inverse regularisation strengths (> 0), any order.
        fit_intercept: learn an unpenalised intercept b.
        max_iter: most Newton steps per C.
        tol: stop a C when its Newton step is at most ``tol * max(1, ||theta||_inf)`` (the step
            is applied; the error left is then of order step^2).
        device: torch device for the computation (default: X's device if a tensor, else CPU).
        num_threads: torch CPU threads for the Newton iterations. ``None`` (default) uses one
            thread when the Hessian has at most 1024 rows and torch's setting otherwise. Measured
            on a busy 2-core machine, multi-threaded MKL ran a 129 x 129 Cholesky 100-500x slower
            than one thread, and the whole 924 x 3584 path 1.6-1.8x slower; on small matrices
            threads gain nothing even when the machine is idle. The previous setting is
            restored on return (it is process-wide while the fit runs); large problems also
            limit BLAS (``dsyrk``) to the same count.
        coef_init, intercept_init: optional warm start, [n_C, d] (or [d], used for every C) and
            [n_C] (or a scalar); e.g. a solution for a subset of the rows. Default: w = 0 and
            the intercept-only optimum b = log(n_pos / n_neg), continued along the path.
        penalty: ``"l2"`` (default) or ``"l1"``.

    Returns:
        ``(coef [n_C, d], intercept [n_C], n_iter [n_C])`` as float64 / int64 numpy arrays, in
        the order of ``Cs``; intercept is 0 when ``fit_intercept`` is False.
    """
    args = (fit_intercept, max_iter, tol, device, num_threads, coef_init, intercept_init)
    coef, intercept, n_iter, _ = _fit_path(X, y, Cs, *args, penalty)
    return coef, intercept, n_iter


def _fit_path(
    X: ArrayLike,
    y: ArrayLike,
    Cs: Sequence[float] | np.ndarray,
    fit_intercept: bool,
    max_iter: int,
    tol: float,
    device: str | torch.device | None,
    num_threads: int | None,
    coef_init: ArrayLike | None,
    intercept_init: ArrayLike | None,
    penalty: Literal["l1", "l2"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fit_logistic_path`` plus the converged flags [n_C] (bool)."""
    if device is None:
        device = X.device if isinstance(X, torch.Tensor) else "cpu"
    X_np = as_float64_matrix(X, "X")
    n, d = X_np.shape
    y_pm = _signed_labels(y, n, "y")
    C_np = np.asarray(Cs, dtype=np.float64).ravel()
    if C_np.size == 0 or not np.all(np.isfinite(C_np)) or np.any(C_np <= 0):
        raise ProbeDataError(
            f"Cs: expected a non-empty list of finite positive numbers, got {C_np}"
        )
    if fit_intercept and np.unique(y_pm).size < 2:
        raise ProbeDataError(
            "y: both classes are needed to fit an intercept (its optimum is infinite)"
        )
    if max_iter < 1:
        raise ProbeDataError(f"max_iter: expected a positive integer, got {max_iter}")
    init = None
    if coef_init is not None:
        coef0, b0 = _initial_solutions(coef_init, intercept_init, C_np.size, d)
        init = (coef0.to(device), b0.to(device))
    on_cpu = torch.device(device).type == "cpu"
    if num_threads is None:
        num_threads = solver_threads(n, d)
    unknowns = (min(n, d) if penalty == "l2" else d) + int(fit_intercept)
    blas = (
        _blas_controller().limit(limits=num_threads, user_api="blas")
        if on_cpu and n * unknowns * unknowns > SMALL_PROBLEM_FLOPS
        else contextlib.nullcontext()
    )
    with _torch_threads(num_threads if on_cpu else None), blas:
        fit = fit_logistic_batch(
            torch.from_numpy(X_np).to(device)[None],
            torch.from_numpy((y_pm > 0).astype(np.int64)).to(device)[None],
            torch.from_numpy(C_np).to(device),
            penalty=penalty,
            fit_intercept=fit_intercept,
            init=init,
            tol=tol,
            max_iter=max_iter,
        )
    coef = fit.coef[0].cpu().numpy()
    intercept = fit.intercept[0].cpu().numpy()
    return coef, intercept, fit.n_iter[0], fit.converged[0]


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Binary logistic regression with the scikit-learn estimator contract (exact Newton fit).

    Minimises the objective of the module docstring (scikit-learn's ``LogisticRegression`` with
    the L2 penalty, or L1 with ``penalty="l1"``) to tolerance ``tol``; ``coef_`` [1, d],
    ``intercept_`` [1], ``classes_`` [2] (sorted; ``classes_[1]`` is the positive class),
    ``n_iter_`` [1], ``converged_`` (bool: False if it stopped at ``max_iter``).
    """

    def __init__(
        self,
        C: float = 1.0,
        fit_intercept: bool = True,
        max_iter: int = 100,
        tol: float = 1e-8,
        penalty: Literal["l1", "l2"] = "l2",
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.penalty = penalty

    def __sklearn_tags__(self) -> Any:
        """Binary only; sparse X is accepted (densified)."""
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.input_tags.sparse = True
        return tags

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike,
        coef_init: ArrayLike | None = None,
        intercept_init: float | None = None,
    ) -> LogisticProbe:
        """Fit on X [n, d] and labels y [n] of exactly two classes.

        ``coef_init`` [d] / [1, d] and ``intercept_init`` optionally start Newton's method from a
        nearby solution (as in ``SGDClassifier.fit``); the optimum does not depend on them.
        """
        X_np, y = self._validate(X, y, reset=True)
        classes = np.unique(y)
        if classes.size != 2:
            raise ProbeDataError(
                "Only binary classification is supported; y: expected exactly two classes, got "
                f"{classes.size} class(es): {classes.tolist()[:10]}"
            )
        coef, intercept, n_iter, converged = _fit_path(
            X_np,
            (y == classes[1]).astype(np.int64),
            [float(self.C)],
            fit_intercept=self.fit_intercept,
            max_iter=self.max_iter,
            tol=self.tol,
            device=None,
            num_threads=None,
            coef_init=None if coef_init is None else np.reshape(coef_init, (1, -1)),
            intercept_init=None if intercept_init is None else [float(intercept_init)],
            penalty=self.penalty,
        )
        self.classes_ = classes
        self.coef_ = coef
        self.intercept_ = intercept
        self.n_iter_ = n_iter
        self.converged_ = bool(converged[0])
        return self

    def _validate(
        self, X: ArrayLike, y: ArrayLike | None = None, reset: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return validate_estimator_input(self, X, y, reset)

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """x . w + b for each row of X [n, d] -> [n] float64 (positive favours ``classes_[1]``)."""
        check_is_fitted(self)
        X_np, _ = self._validate(X)
        return X_np @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """[P(classes_[0]), P(classes_[1])] per row -> [n, 2]; P(classes_[1]) = expit(decision)."""
        p = expit(self.decision_function(X))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """``classes_[1]`` where the decision value is > 0, else ``classes_[0]`` -> [n]."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(np.int64)]
