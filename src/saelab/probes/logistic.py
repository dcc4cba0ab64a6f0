"""L2-regularised logistic regression: a batched Newton solver for a whole C grid, and an estimator.

Objective (scikit-learn user guide, "Linear Models > Logistic regression", binary case with the
L2 penalty, https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression;
scikit-learn does not penalise the intercept):

    f_C(w, b) = 0.5 ||w||^2 + C * sum_i log(1 + exp(-y_i (x_i . w + b))),   y_i in {-1, +1}.

The solver is Newton-Raphson with a backtracking (Armijo) line search in float64 (torch), for all
C values of a grid in one call. Because of the 0.5 ||w||^2 term the objective is strongly convex
in w, so the optimum is finite even on linearly separable data with C = 1e5 (the largest C of
the paper's grid, sae-probes spec section 3.2), and Newton with line search converges to it
globally, and quadratically near the end. Solutions match scikit-learn's ``newton-cholesky`` at
tol=1e-12 to ~1e-13 and are at least as optimal as ``lbfgs`` at tol=1e-10 (tests).

Cost and the reduced basis: the optimal ``w`` lies in the row space of X (the gradient of the loss
is a combination of the rows x_i and the penalty is isotropic). When n < d we therefore write
``w = Q beta`` with ``X^T = Q R`` a thin QR factorisation (Q: [d, n] orthonormal columns), so that
``x_i . w = (R^T)_i . beta`` and ``||w|| = ||beta||``: the same problem, exactly, in n unknowns
(the "dual"/kernel size). Each Newton step then forms an [r+1, r+1] Hessian with r = min(n, d)
instead of [d+1, d+1]; for d = 3584 and the n <= 1024 training rows of the normal setting this
is never d x d. For n >= d the primal Newton step is used unchanged.

Order of work: problems with n * p^2 <= 1e6 (p = unknowns after the reduction) are bound by
per-call overhead, so all Cs run as one batch from a cold start (batched Hessians and Cholesky).
Larger ones solve the Cs one at a time in increasing order along the regularisation path, each
warm-started from a tangent prediction off the previous solution (``_continuation``): for the
paper's 924 x 384 hold-out fit this takes ~40 Newton steps for the 10 Cs instead of ~80 cold.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg.blas import dsyrk
from scipy.linalg.lapack import dpotrf
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from saelab.errors import ProbeDataError

logger = logging.getLogger(__name__)

ArrayLike = Any  # np.ndarray | torch.Tensor | scipy.sparse matrix | nested lists

# Armijo sufficient-decrease constant and the most step halvings per Newton step.
_ARMIJO = 1e-4
_MAX_HALVINGS = 60
# Largest number of float64 elements of the [n_C, n, p] temporary used to form all Hessians of
# a batch with one batched matmul; larger problems form them one C at a time.
_BATCH_HESSIAN_ELEMENTS = 1 << 23
# Problems with n * p^2 below this (p = features + intercept after reduction) are solved with all
# Cs in one batch from a cold start; larger ones one C at a time along the path (fewer steps).
_SMALL_PROBLEM_FLOPS = 1_000_000
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


@contextlib.contextmanager
def limit_solver_threads(n_rows: int, n_features: int) -> Iterator[None]:
    """Set torch's thread count by ``solver_threads`` for a block of many fits, then restore it.

    Changing torch's thread count is not free (it resizes the OpenMP pool), so callers that run
    many small fits in a row (the validation protocol) set it once around all of them.
    """
    with _torch_threads(solver_threads(n_rows, n_features)):
        yield


def as_float64_matrix(X: ArrayLike, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 numpy array [n, d]; raise on bad shape or values.

    Accepts numpy arrays, torch tensors (any device), scipy sparse matrices (densified) and nested
    lists. Raises ``ProbeDataError`` naming ``name`` and the first non-finite row.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().to("cpu", torch.float64).numpy()
    elif sp.issparse(X):
        X = X.toarray()
    try:
        arr = np.ascontiguousarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProbeDataError(
            f"{name}: expected a numeric 2-D array, got {type(X).__name__}"
        ) from exc
    if arr.ndim != 2:
        raise ProbeDataError(f"{name}: expected a 2-D array [n, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ProbeDataError(f"{name}: expected at least one row and one column, got {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ProbeDataError(f"{name}: row {row} has a NaN or infinite value")
    return arr


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


def _log1pexp(u: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(u)) without overflow or the cut-off approximation of ``F.softplus``."""
    return torch.relu(u) + torch.log1p(torch.exp(-u.abs()))


class _Problem:
    """One logistic problem in (possibly reduced) coordinates: Za [n, p] = [Z, 1], labels y [n]."""

    def __init__(self, Z: torch.Tensor, y: torch.Tensor, fit_intercept: bool) -> None:
        n = Z.shape[0]
        self.n = n
        self.Za = (
            torch.cat([Z, torch.ones(n, 1, dtype=Z.dtype, device=Z.device)], 1)
            if fit_intercept
            else Z
        )
        self.y = y
        self.p = self.Za.shape[1]
        self.penalty = torch.ones(self.p, dtype=Z.dtype, device=Z.device)
        if fit_intercept:
            self.penalty[-1] = 0.0  # the intercept is not penalised
        self.use_syrk = False

    def objective(self, theta: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """f_C(theta) for each row of theta [m, p] with its C [m] -> [m]."""
        margins = (theta @ self.Za.T) * self.y
        return 0.5 * (self.penalty * theta * theta).sum(1) + C * _log1pexp(-margins).sum(1)

    def gradient_and_weights(
        self, theta: torch.Tensor, C: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient [m, p] and Hessian sample weights C * sigma(t) sigma(-t) [m, n] at theta."""
        margins = (theta @ self.Za.T) * self.y
        s_neg = torch.sigmoid(-margins)  # sigma(-t_i) = 1 - P(correct class)
        grad = self.penalty * theta - C[:, None] * ((self.y * s_neg) @ self.Za)
        weights = C[:, None] * s_neg * torch.sigmoid(margins)
        return grad, weights

    def hessian_factors(self, weights: torch.Tensor) -> torch.Tensor:
        """Cholesky factors L_c [m, p, p] of H_c = diag(penalty) + Za^T diag(weights_c) Za.

        ``weights``: [m, n]. With ``use_syrk`` (CPU, one C at a time) each H_c is one BLAS
        ``dsyrk`` (A^T A with A = sqrt(w_c) Za, one triangle only: half the flops of a general
        matmul) factorised in place by LAPACK ``dpotrf``; otherwise batched torch matmuls and
        ``torch.linalg.cholesky_ex``.
        """
        m = weights.shape[0]
        if self.use_syrk:
            factors = []
            penalty = self.penalty.numpy()
            for i in range(m):
                A = (self.Za * weights[i].sqrt()[:, None]).numpy()  # [n, p], C order
                H_upper = dsyrk(1.0, A.T, trans=0)  # [p, p] Fortran order, upper triangle
                H_upper[np.diag_indices(self.p)] += penalty
                U, info = dpotrf(H_upper, lower=0, clean=1, overwrite_a=1)
                if info == 0:
                    factors.append(torch.from_numpy(U).T)  # U^T: lower, C-contiguous, no copy
                else:  # not numerically positive definite: the ridge fallback below
                    H = torch.from_numpy(np.triu(H_upper) + np.triu(H_upper, 1).T)
                    factors.append(_cholesky_spd(H[None])[0])
            return factors[0][None] if m == 1 else torch.stack(factors)
        if m * self.n * self.p <= _BATCH_HESSIAN_ELEMENTS:
            H = (self.Za.T[None] * weights[:, None, :]) @ self.Za
        else:
            H = torch.stack([(self.Za.T * w) @ self.Za for w in weights])
        return _cholesky_spd(H + torch.diag(self.penalty))


def _cholesky_spd(H: torch.Tensor) -> torch.Tensor:
    """Cholesky factors [m, p, p] of SPD H [m, p, p]; adds a tiny ridge where H is singular."""
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info > 0).any()):
        bad = info > 0
        scale = H[bad].diagonal(dim1=1, dim2=2).abs().amax(1).clamp_min(1e-300)
        eye = torch.eye(H.shape[1], dtype=H.dtype, device=H.device)
        for factor in (1e-12, 1e-9, 1e-6, 1e-3):
            L_bad, info_bad = torch.linalg.cholesky_ex(
                H[bad] + (factor * scale)[:, None, None] * eye
            )
            if not bool((info_bad > 0).any()):
                break
        L = L.clone()
        L[bad] = L_bad
    return L


def _solve(L: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """x_c with L_c L_c^T x_c = rhs_c for L [m, p, p] lower, rhs [m, p] -> [m, p].

    Two triangular solves (measured 4x faster than ``torch.cholesky_solve`` at p = 925).
    """
    half = torch.linalg.solve_triangular(L, rhs[:, :, None], upper=False)
    return torch.linalg.solve_triangular(L.mT, half, upper=True)[:, :, 0]


def _newton(
    prob: _Problem, C: torch.Tensor, theta: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """Newton-Raphson with backtracking line search for each C [m] from theta [m, p].

    Each step solves H_c step = -grad_c (Cholesky) and has Newton decrement
    lambda^2 = g^T H^-1 g (about twice f_C - min f_C near the optimum).
    - Converged when the step is small, ``||step||_inf <= tol * max(1, ||theta||_inf)``: the step
      is applied and, Newton being quadratically convergent there, the error left is of order
      step^2. (A gradient-norm test such as lbfgs' is loose when C is large: the Hessian is then
      ill-conditioned and a small gradient still allows a sizeable coefficient error.)
    - Chord test, before forming a new Hessian: once a full step has contracted the error 10x
      (quadratic regime), the step with the previous Cholesky factor estimates the Newton step
      well; if it is already below the tolerance it is applied and the C stops, saving the last
      Hessian (about a quarter of all of them).
    - Otherwise the step length halves from 1 until the Armijo condition
      f(theta + a step) <= f(theta) - 1e-4 a lambda^2 holds; when lambda^2 is below 1e-12 |f|,
      where rounding in f would make that test meaningless, the full step is taken.
    - A C whose line search finds no decrease at all stops there (float64 floor); it counts as
      converged when lambda^2 <= 1e-9 max(1, |f|).
    Returns the solutions [m, p], Newton steps taken [m], converged flags [m] and the last
    Cholesky factor of each C's Hessian [m, p, p] (used for warm starts).
    """
    m = C.shape[0]
    theta = theta.clone()
    n_iter = np.zeros(m, dtype=np.int64)
    converged = np.zeros(m, dtype=bool)
    active = torch.arange(m, device=theta.device)
    factors: list[torch.Tensor | None] = [None] * m  # the last Cholesky factor of each C
    # size of the last step where it was a full Newton step (alpha = 1), else inf
    last_full_step = torch.full((m,), float("inf"), dtype=theta.dtype, device=theta.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        th, c = theta[active], C[active]
        grad, weights = prob.gradient_and_weights(th, c)
        th_scale = th.abs().amax(1).clamp_min(1.0)
        # Chord test: in the quadratic regime (the last full step contracted 10x) the step with
        # the previous Hessian is an accurate estimate of the Newton step; if it is already
        # below tol, apply it and stop without forming a new Hessian.
        done = torch.zeros_like(c, dtype=torch.bool)
        ready = torch.isfinite(last_full_step[active])
        if bool(ready.any()):
            chord = torch.zeros_like(th)
            chord[ready] = -_solve(
                _stack([factors[i] for i in active[ready].tolist()]), grad[ready]
            )
            chord_size = chord.abs().amax(1)
            done = ready & (chord_size <= tol * th_scale)
            done &= chord_size <= 0.1 * last_full_step[active]
        if bool(done.any()):
            theta[active[done]] = th[done] + chord[done]
            converged[active[done].cpu().numpy()] = True
            keep = ~done
            active, th, c, grad, weights, th_scale = (
                active[keep],
                th[keep],
                c[keep],
                grad[keep],
                weights[keep],
                th_scale[keep],
            )
            if active.numel() == 0:
                break
        L = prob.hessian_factors(weights)
        for j, i in enumerate(active.tolist()):
            factors[i] = L[j]
        step = -_solve(L, grad)
        decrement = -(grad * step).sum(1)
        f0 = prob.objective(th, c)
        scale = f0.abs().clamp_min(1.0)
        n_iter[active.cpu().numpy()] += 1
        small = step.abs().amax(1) <= tol * th_scale
        full = small | (decrement <= 1e-12 * scale)
        theta[active[full]] = th[full] + step[full]
        last_full_step[active] = torch.where(full, step.abs().amax(1), float("inf"))
        converged[active[small].cpu().numpy()] = True
        search = ~full
        if bool(search.any()):
            idx, th, c, step = active[search], th[search], c[search], step[search]
            decrement, f0, scale = decrement[search], f0[search], scale[search]
            alpha = torch.ones_like(c)
            accepted = torch.zeros_like(c, dtype=torch.bool)
            new_th = th.clone()
            for _ in range(_MAX_HALVINGS):
                todo = torch.nonzero(~accepted).squeeze(1)
                trial = th[todo] + alpha[todo, None] * step[todo]
                f_trial = prob.objective(trial, c[todo])
                ok = f_trial <= f0[todo] - _ARMIJO * alpha[todo] * decrement[todo]
                new_th[todo[ok]] = trial[ok]
                accepted[todo[ok]] = True
                alpha[todo[~ok]] *= 0.5
                if bool(accepted.all()):
                    break
            theta[idx] = new_th
            last_full_step[idx[alpha == 1.0]] = step[alpha == 1.0].abs().amax(1)
            stalled = ~accepted
            converged[idx[stalled & (decrement <= 1e-9 * scale)].cpu().numpy()] = True
            small[search] = stalled  # stop the stalled ones too
        active = active[~small]
    return theta, n_iter, converged, _stack(factors)


def _stack(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """Stack [p, p] factors to [m, p, p] (a view, without copying, when m = 1)."""
    if len(tensors) == 1 and tensors[0] is not None:
        return tensors[0][None]
    return torch.stack(tensors)  # type: ignore[arg-type]


def _continuation(
    prob: _Problem, C: torch.Tensor, theta0: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Solve the Cs [m] one at a time in increasing order, warm-starting along the path.

    The start for the next C is a first-order (tangent) prediction from the solution theta at the
    previous C: differentiating grad f_C(theta(C)) = 0 gives d theta / d log C = H^-1 (P theta),
    with P = diag(penalty) and H the Hessian at theta (its Cholesky factor is the last one the
    Newton loop computed). Returns solutions [m, p], Newton steps [m], converged flags [m].
    """
    m = C.shape[0]
    order = torch.argsort(C, stable=True)
    thetas = torch.empty(m, prob.p, dtype=theta0.dtype, device=theta0.device)
    n_iter = np.zeros(m, dtype=np.int64)
    converged = np.zeros(m, dtype=bool)
    start = theta0[None]
    for pos in range(m):
        i = int(order[pos])
        th, it, ok, L = _newton(prob, C[i : i + 1], start, max_iter, tol)
        thetas[i], n_iter[i], converged[i] = th[0], it[0], ok[0]
        if pos + 1 < m:
            tangent = _solve(L, prob.penalty * th)
            start = th + torch.log(C[order[pos + 1]] / C[i]) * tangent
            if not bool(torch.isfinite(start).all()):
                start = th
    return thetas, n_iter, converged


def _initial_thetas(
    coef_init: ArrayLike,
    intercept_init: ArrayLike | None,
    m: int,
    d: int,
    Q: torch.Tensor | None,
    prob: _Problem,
    device: str | torch.device,
) -> torch.Tensor:
    """Warm starts [m, p] in the solver's coordinates (beta = Q^T w when reduced)."""
    w0 = np.asarray(coef_init, dtype=np.float64)
    w0 = np.broadcast_to(w0, (m, d)) if w0.ndim == 1 else w0
    if w0.shape != (m, d) or not np.all(np.isfinite(w0)):
        raise ProbeDataError(
            f"coef_init: expected finite values of shape ({m}, {d}), got {w0.shape}"
        )
    b0 = np.broadcast_to(np.asarray(0.0 if intercept_init is None else intercept_init), (m,))
    if not np.all(np.isfinite(b0)):
        raise ProbeDataError("intercept_init: expected finite values")
    w = torch.from_numpy(np.ascontiguousarray(w0)).to(device)
    if Q is not None:
        w = w @ Q
    if prob.p > w.shape[1]:  # the intercept column
        w = torch.cat([w, torch.from_numpy(b0.astype(np.float64)).to(device)[:, None]], 1)
    return w


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit L2-regularised logistic regression for every C of a grid (module docstring: objective).

    Args:
        X: [n, d] features (numpy, torch or scipy sparse); computed in float64.
        y: [n] labels in {0, 1} or {-1, +1}; 1 is the positive class.
        Cs: [n_C] inverse regularisation strengths (> 0), any order.
        fit_intercept: learn an unpenalised intercept b.
        max_iter: most Newton steps per C.
        tol: stop a C when its Newton step is at most ``tol * max(1, ||theta||_inf)`` (the step
            is applied; the error left is then of order step^2, see ``_newton``).
        device: torch device for the computation (default: X's device if a tensor, else CPU).
        num_threads: torch CPU threads for the Newton iterations. ``None`` (default) uses one
            thread when the Hessian has at most 1024 rows and torch's setting otherwise. Measured
            on a busy 2-core machine, multi-threaded MKL ran a 129 x 129 Cholesky 100-500x slower
            than one thread, and the whole 924 x 3584 path 1.6-1.8x slower; on small matrices
            threads gain nothing even when the machine is idle. The previous setting is
            restored on return (it is process-wide while the fit runs).
        coef_init, intercept_init: optional warm start, [n_C, d] (or [d], used for every C) and
            [n_C] (or a scalar); e.g. a solution for a subset of the rows. Default: w = 0 and
            the intercept-only optimum b = log(n_pos / n_neg), continued along the path.

    Returns:
        ``(coef [n_C, d], intercept [n_C], n_iter [n_C])`` as float64 / int64 numpy arrays, in
        the order of ``Cs``; intercept is 0 when ``fit_intercept`` is False.
    """
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

    Xt = torch.from_numpy(X_np).to(device)
    reduce = n < d
    if reduce:
        # X^T = Q R, so X = R^T Q^T; solve for beta with w = Q beta (exact, see module docstring).
        Q, R = torch.linalg.qr(Xt.T, mode="reduced")
        Z = R.T.contiguous()
    else:
        Q, Z = None, Xt
    yt = torch.from_numpy(y_pm).to(device)
    prob = _Problem(Z, yt, fit_intercept)

    if coef_init is None:
        theta0 = torch.zeros(prob.p, dtype=torch.float64, device=device)
        if fit_intercept:
            n_pos = float((y_pm > 0).sum())
            theta0[-1] = np.log(n_pos / (n - n_pos))  # optimum of the intercept-only model
        starts = theta0.expand(C_np.size, -1)
    else:
        starts = _initial_thetas(coef_init, intercept_init, C_np.size, d, Q, prob, device)

    C_t = torch.from_numpy(C_np).to(device)
    on_cpu = torch.device(device).type == "cpu"
    if num_threads is None:
        num_threads = solver_threads(n, d)
    if prob.n * prob.p * prob.p <= _SMALL_PROBLEM_FLOPS or not on_cpu:
        # Tiny problems (and accelerators) are bound by per-call overhead: all Cs at once.
        with _torch_threads(num_threads if on_cpu else None):
            thetas, n_iter, converged, _ = _newton(prob, C_t, starts, max_iter, tol)
    else:
        prob.use_syrk = True
        with (
            _torch_threads(num_threads),
            _blas_controller().limit(limits=num_threads, user_api="blas"),
        ):
            if coef_init is None:
                thetas, n_iter, converged = _continuation(prob, C_t, starts[0], max_iter, tol)
            else:  # each C from its own start
                solved = [
                    _newton(prob, C_t[i : i + 1], starts[i : i + 1], max_iter, tol)
                    for i in range(C_np.size)
                ]
                thetas = torch.cat([r[0] for r in solved])
                n_iter = np.concatenate([r[1] for r in solved])
                converged = np.concatenate([r[2] for r in solved])
    if not converged.all():
        logger.warning(
            "logistic regression did not converge for C=%s within %d Newton steps",
            C_np[~converged].tolist(),
            max_iter,
        )
    w = thetas[:, : Z.shape[1]]
    if Q is not None:
        w = w @ Q.T
    coef = w.cpu().numpy()
    intercept = thetas[:, -1].cpu().numpy().copy() if fit_intercept else np.zeros(C_np.size)
    return coef, intercept, n_iter


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Binary L2 logistic regression with the scikit-learn estimator contract (exact Newton fit).

    Minimises the objective of the module docstring (scikit-learn's ``LogisticRegression`` with
    the L2 penalty) to tolerance ``tol``; ``coef_`` [1, d], ``intercept_`` [1], ``classes_`` [2]
    (sorted; ``classes_[1]`` is the positive class), ``n_iter_`` [1].
    """

    def __init__(
        self, C: float = 1.0, fit_intercept: bool = True, max_iter: int = 100, tol: float = 1e-8
    ) -> None:
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol

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
        coef, intercept, n_iter = fit_logistic_path(
            X_np,
            (y == classes[1]).astype(np.int64),
            [float(self.C)],
            fit_intercept=self.fit_intercept,
            max_iter=self.max_iter,
            tol=self.tol,
            coef_init=None if coef_init is None else np.reshape(coef_init, (1, -1)),
            intercept_init=None if intercept_init is None else [float(intercept_init)],
        )
        self.classes_ = classes
        self.coef_ = coef
        self.intercept_ = intercept
        self.n_iter_ = n_iter
        return self

    def _validate(
        self, X: ArrayLike, y: ArrayLike | None = None, reset: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """scikit-learn's input validation (messages, n_features_in_), then ours (finite rows).

        Returns X as float64 [n, d] (sparse and torch inputs densified) and y [n] (fit only).
        Errors are ``ProbeDataError`` (a ``ValueError``) with scikit-learn's message.
        """
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
            raise ProbeDataError(f"LogisticProbe input: {exc}") from exc
        return as_float64_matrix(X, "X"), y

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
