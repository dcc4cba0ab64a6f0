"""Batched logistic regression in torch (float64): many small binary problems x a C grid, one call.

Objectives (scikit-learn user guide, "Linear Models > Logistic regression", binary case,
https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression), for problem b,
C = Cs[b, j] and labels s_i in {-1, +1} over the rows i of problem b; the intercept c is not
penalised (as in scikit-learn's lbfgs / newton-cholesky / saga solvers, unlike liblinear):

    L2:  f_C(w, c) = 0.5 ||w||_2^2 + C * sum_i log(1 + exp(-s_i (x_i . w + c)))
    L1:  f_C(w, c) =     ||w||_1   + C * sum_i log(1 + exp(-s_i (x_i . w + c)))

Both are solved in float64 to the optimum (not to an iteration cap), so a fit is a continuous
function of the data. Problems are padded to one shape [B, n, p]: a padded row (``row_mask``
False) has weight 0 in the sum, a padded column (``feature_mask`` False) is zeroed and its weight
is exactly 0.

L2 (``_newton_l2``): Newton-Raphson with Cholesky and Armijo backtracking. The 0.5 ||w||^2 term
makes f_C strongly convex in w, so the optimum is finite even on separable data at C = 1e5 and
Newton with line search converges to it globally, quadratically at the end. When n < p, w lies
in the row space of X, so with X^T = Q R (thin QR, per problem) we solve for beta, w = Q beta,
an exactly equivalent problem in n unknowns. Small problems run all Cs at once from a cold
start; larger ones (n p^2 > 1e6 after the reduction) one C at a time in increasing order with a
tangent warm start (``_continuation_l2``), all B problems of the batch together.

L1 (``_newton_l1``): an orthant-wise active-set Newton method with Levenberg-Marquardt damping.
- Minimum-norm subgradient (the "pseudo-gradient" of Andrew and Gao, "Scalable training of
  L1-regularized log-linear models", ICML 2007): with g the gradient of the C * loss term,
  v_j = g_j + sign(w_j) for w_j != 0; for w_j = 0, v_j = g_j + 1 if g_j < -1, g_j - 1 if
  g_j > 1, else 0; v = g for the intercept. (w, c) is optimal iff v = 0.
- Free set and orthant (the orthant-based active-set method, OBA, of Byrd, Chin, Nocedal and
  Oztoprak, "A family of second-order methods for convex l1-regularized optimization", Math.
  Programming 159, 2016): F = {j: w_j != 0} + {j: w_j = 0, |g_j| > 1} + intercept. On the
  orthant face z_j = sign(w_j) (-sign(v_j) for a zero weight entering F) f_C is smooth with
  gradient v_F and Hessian H_FF = C X_F^T D X_F, D = diag(sigma(t) sigma(-t)); the step
  minimises the face model v_F . d + 0.5 d^T (H_FF + mu I) d. Weights the minimiser moves across
  0 are fixed at 0 and the model is minimised again over the rest (``_face_step``), so a support
  that shrinks by many weights does so in one iteration; entering weights whose step points
  against -v_j are not moved (Andrew and Gao's alignment).
- Damping mu = kappa ||v||_inf (Li, Fukushima, Qi and Yamashita, "Regularized Newton methods for
  convex minimization problems with singular solutions", Comput. Optim. Appl. 28, 2004): H_FF is
  singular whenever |F| exceeds the rank of X_F (|F| > n rows, duplicate columns of binarized
  codes), common with 2..100 rows and 16..512 columns; mu -> 0 as v -> 0 keeps the local
  convergence quadratic. kappa acts as a trust region: kappa / alpha after a step shortened to
  alpha by the line search, kappa / 4 after a full step (clamped to [1e-8, 1e8]).
- Projected backtracking (Andrew and Gao): w(alpha) = P_z(w + alpha d), where P_z sets to 0 every
  weight that left its orthant; accept when f(w(alpha)) <= f(w) + 1e-4 v . (w(alpha) - w).
- Stop when the step is at most ``tol * max(1, ||theta||_inf)`` (the projected step is applied;
  the error left is of order step^2), or when ||v||_inf <= 0.01 tol: then f - min f is at most
  0.01 tol ||theta - theta*||_1 by convexity, and a non-unique optimum (duplicate columns) does
  not drift along its flat directions.
- Path: each problem's Cs are solved in increasing order, all problems together. The start for
  the next C is a tangent prediction on the support S: differentiating C grad_S loss + z_S = 0
  gives d theta_S / d log C = H_SS^-1 z_S (``_l1_tangent``), used where it beats the previous
  optimum on the new objective. (On 924 x 512 SAE-like codes: 44 Newton steps for 10 Cs,
  against 70 without the tangent and 176 without the re-solves either.)
Why this method: a proximal Newton method with a coordinate-descent inner solver (newGLMNET,
Yuan, Ho and Lin, JMLR 2012, as in LIBLINEAR) visits coordinates one after another and does not
vectorise over a batch of problems or run well on a GPU; each step here is a few batched
Cholesky solves on the free columns. Its objectives are at or below LIBLINEAR's and saga's run
to tol=1e-12 (tests).

Memory: problems run in chunks so that temporaries ([problems x Cs, p, p] Hessians and
[.., n, p] gathered rows) stay near 2^23 float64 elements. Nothing here changes torch's or BLAS's
thread settings (callers run it in one-thread workers). Device-agnostic: everything is torch on
X's device, except that on the CPU large Hessians are formed with BLAS ``dsyrk`` (half the flops
of a general matmul) one (problem, C) at a time: each is at least 1e6 flops, so that loop costs
no measurable overhead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg.blas import dsyrk
from scipy.linalg.lapack import dpotrf

from saelab.errors import ProbeDataError

logger = logging.getLogger(__name__)

# Armijo sufficient-decrease constant and the most step halvings per Newton step.
_ARMIJO = 1e-4
_MAX_HALVINGS = 60
# Float64 elements a temporary (Hessians of a batch, gathered rows) may take before chunking.
_TEMP_ELEMENTS = 1 << 23
# Problems with n * p^2 above this (p = unknowns after reduction, with the intercept) form each
# Hessian with BLAS dsyrk on the CPU and (L2) run the Cs one at a time along the path.
SMALL_PROBLEM_FLOPS = 1_000_000
# Defaults of fit_logistic_batch; bump SOLVER_VERSION when a change can move a solution.
DEFAULT_TOL = 1e-8
DEFAULT_MAX_ITER = 100
SOLVER_VERSION = 1
# L1 damping factor kappa (mu = kappa ||v||_inf): start and bounds.
_KAPPA_START = 1.0
_KAPPA_MIN = 1e-8
_KAPPA_MAX = 1e8
# Most re-solves of the L1 Newton step per iteration after weights left the orthant face.
_FACE_RESOLVES = 8


@dataclass
class LogisticFit:
    """Solutions of ``fit_logistic_batch`` for B problems x m values of C.

    coef [B, m, p] float64 (exact zeros in masked-out feature columns); intercept [B, m] float64
    (zeros when fit_intercept=False); n_iter [B, m] int64 Newton (outer) iterations spent on each
    (problem, C); converged [B, m] bool.
    """

    coef: torch.Tensor
    intercept: torch.Tensor
    n_iter: np.ndarray
    converged: np.ndarray


def log1pexp(u: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(u)) without overflow or the cut-off approximation of ``F.softplus``."""
    return torch.relu(u) + torch.log1p(torch.exp(-u.abs()))


def _chunks(total: int, per_item: int) -> Iterator[slice]:
    """Slices of range(total) with at most max(1, 2^23 // per_item) items each."""
    size = max(1, _TEMP_ELEMENTS // max(per_item, 1))
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _cholesky_spd(H: torch.Tensor) -> torch.Tensor:
    """Cholesky factors [k, p, p] of SPD H [k, p, p]; adds a tiny ridge where H is singular."""
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
    """x_k with L_k L_k^T x_k = rhs_k for L [k, p, p] lower, rhs [k, p] -> [k, p].

    Two triangular solves (measured 4x faster than ``torch.cholesky_solve`` at p = 925).
    """
    half = torch.linalg.solve_triangular(L, rhs[:, :, None], upper=False)
    return torch.linalg.solve_triangular(L.mT, half, upper=True)[:, :, 0]


def _floor_weights(weights: torch.Tensor) -> torch.Tensor:
    """Zero Hessian row weights below 1e-30 of the largest (or 1e-250) -> [k, n].

    They add nothing at float64 precision, and their products would be subnormal numbers, on
    which BLAS runs ~50x slower.
    """
    floor = (weights.amax(1, keepdim=True) * 1e-30).clamp_min(1e-250)
    return torch.where(weights >= floor, weights, weights.new_zeros(()))


def _scaled_rows(At: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """(sqrt(w) * A) as a Fortran-ordered numpy [n, f] for At [f, n] (CPU), w [n]."""
    return (At * weights.sqrt()[None, :]).numpy().T


def _gram(At: torch.Tensor, weights: torch.Tensor, use_syrk: bool) -> torch.Tensor:
    """A_k^T diag(weights_k) A_k -> [k, f, f] for At = A^T [k, f, n], weights [k, n] (>= 0).

    With ``use_syrk`` (CPU) each matrix is one BLAS ``dsyrk`` (one triangle: half the flops of
    a general matmul), mirrored; otherwise one batched matmul.
    """
    weights = _floor_weights(weights)
    if not use_syrk:
        return (At * weights[:, None, :]) @ At.mT
    out = torch.empty(At.shape[0], At.shape[1], At.shape[1], dtype=At.dtype)
    for i in range(At.shape[0]):
        upper = np.triu(dsyrk(1.0, _scaled_rows(At[i], weights[i]), trans=1))
        out[i] = torch.from_numpy(upper + np.triu(upper, 1).T)
    return out


def _gram_factors(
    ZaT: torch.Tensor,
    problems: torch.Tensor,
    weights: torch.Tensor,
    diag: torch.Tensor,
    use_syrk: bool,
) -> torch.Tensor:
    """Cholesky factors [k, f, f] of A_k^T diag(weights_k) A_k + diag(diag_k), A_k^T = ZaT[p_k].

    ZaT: [B, f, n]; problems: [k]; weights: [k, n] (>= 0); diag: [k, f]. With ``use_syrk``
    (CPU) each matrix is one BLAS ``dsyrk`` factorised in place by LAPACK ``dpotrf``;
    otherwise batched matmuls and ``torch.linalg.cholesky_ex``.
    """
    k = problems.shape[0]
    if not use_syrk:
        At = ZaT.expand(k, -1, -1) if ZaT.shape[0] == 1 else ZaT[problems]
        return _cholesky_spd(_gram(At, weights, False) + torch.diag_embed(diag))
    weights = _floor_weights(weights)
    f = ZaT.shape[1]
    factors = torch.empty(k, f, f, dtype=ZaT.dtype)
    for i, b in enumerate(problems.tolist()):
        H_upper = dsyrk(1.0, _scaled_rows(ZaT[b], weights[i]), trans=1)  # [f, f] upper, F order
        H_upper[np.diag_indices(f)] += diag[i].numpy()
        U, info = dpotrf(H_upper, lower=0, clean=1, overwrite_a=1)
        if info == 0:
            factors[i] = torch.from_numpy(U).T  # U^T: lower
        else:  # not numerically positive definite: the ridge fallback of _cholesky_spd
            H = torch.from_numpy(np.triu(H_upper) + np.triu(H_upper, 1).T)
            factors[i] = _cholesky_spd(H[None])[0]
    return factors


class _LogisticBatch:
    """B logistic problems in solver coordinates: ZaT [B, p, n] = [Z, 1]^T, signs s [B, n].

    ``row_weight`` [B, n] (1 = row of the problem, 0 = padding) or None (all rows count).
    Parameters theta [K, p] hold K = B * m instances, problem-major: instance k belongs to
    problem k // m. ``penalty`` [p] is 1 for weights and 0 for the intercept (not penalised).
    The features are stored transposed, so that one feature's column is one contiguous row.
    """

    def __init__(
        self,
        Z: torch.Tensor,
        s: torch.Tensor,
        row_weight: torch.Tensor | None,
        fit_intercept: bool,
    ) -> None:
        B, n, _ = Z.shape
        ZT = Z.mT
        if fit_intercept:
            ZT = torch.cat([ZT, torch.ones(B, 1, n, dtype=Z.dtype, device=Z.device)], 1)
        self.ZaT = ZT.contiguous()
        self.s = s
        self.row_weight = row_weight
        self.B, self.p, self.n = self.ZaT.shape
        self.penalty = torch.ones(self.p, dtype=Z.dtype, device=Z.device)
        if fit_intercept:
            self.penalty[-1] = 0.0
        self.use_syrk = False

    def subset(self, problems: torch.Tensor) -> _LogisticBatch:
        """The batch of the given problems only (their data gathered)."""
        out = object.__new__(_LogisticBatch)
        out.__dict__.update(self.__dict__)
        out.ZaT, out.s = self.ZaT[problems], self.s[problems]
        out.row_weight = None if self.row_weight is None else self.row_weight[problems]
        out.B = int(problems.numel())
        return out

    def _per_instance(self, rows: torch.Tensor, K: int) -> torch.Tensor:
        """[B, n] -> [K, n] (each problem's row repeated for its K // B instances)."""
        return rows.repeat_interleave(K // self.B, 0)

    def margins(self, theta: torch.Tensor) -> torch.Tensor:
        """t_ki = s_i (z_i . theta_k) for theta [K, p] -> [K, n]."""
        K = theta.shape[0]
        t = theta.view(self.B, K // self.B, self.p) @ self.ZaT  # [B, m, n]
        return (t * self.s[:, None, :]).reshape(K, self.n)

    def loss(self, theta: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
        """C_k sum_i log(1 + exp(-t_ki)) over the rows of each instance's problem -> [K]."""
        terms = log1pexp(-self.margins(theta))
        if self.row_weight is not None:
            terms = terms * self._per_instance(self.row_weight, theta.shape[0])
        return C * terms.sum(1)

    def evaluate(
        self, theta: torch.Tensor, C: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """C * loss [K], its gradient [K, p] and Hessian row weights C sigma(t) sigma(-t) [K, n]."""
        K = theta.shape[0]
        t = self.margins(theta)
        terms = log1pexp(-t)
        s_neg = torch.sigmoid(-t)  # 1 - P(correct class)
        weights = C[:, None] * s_neg * torch.sigmoid(t)
        r = C[:, None] * s_neg * self._per_instance(self.s, K)
        if self.row_weight is not None:
            rw = self._per_instance(self.row_weight, K)
            terms, r, weights = terms * rw, r * rw, weights * rw
        grad = -(r.view(self.B, K // self.B, self.n) @ self.ZaT.mT).reshape(K, self.p)
        return C * terms.sum(1), grad, weights

    def hessian_factors(
        self, weights: torch.Tensor, problems: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cholesky factors [k, p, p] of the L2 Hessians diag(penalty) + Za^T diag(w_k) Za.

        weights: [k, n]; problems: [k] problem index of each row of weights (default: all 0).
        """
        k = weights.shape[0]
        if problems is None:
            problems = torch.zeros(k, dtype=torch.int64, device=weights.device)
        diag = self.penalty.expand(k, -1)
        parts = [
            _gram_factors(self.ZaT, problems[part], weights[part], diag[part], self.use_syrk)
            for part in _chunks(k, self.n * self.p)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def free_column_gram(
        self, weights: torch.Tensor, problems: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """A_k^T diag(w_k) A_k [k, f, f] with A_k = Za[problem_k][:, cols_k] [n, f].

        cols: [k, f] column indices; where ``valid`` [k, f] is False they are placeholders,
        whose rows and columns of the result are 0.
        """
        k, f = cols.shape
        parts = []
        use_syrk = self.use_syrk and self.n * f * f > SMALL_PROBLEM_FLOPS
        for part in _chunks(k, self.n * f):
            At = self.ZaT[problems[part, None], cols[part]]  # [k, f, n]: whole contiguous rows
            parts.append(_gram(At * valid[part, :, None], weights[part], use_syrk))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class _LiveProblems:
    """The problems that still have active instances, as a batch; regathered when half finish.

    Every Newton iteration evaluates all instances of its batch, so dropping finished problems
    keeps the cost of stragglers proportional to their number.
    """

    def __init__(self, batch: _LogisticBatch, m: int) -> None:
        self.full, self.m = batch, m
        self.batch = batch
        dev = batch.ZaT.device
        self.instances = torch.arange(batch.B * m, device=dev)
        self.problems = torch.arange(batch.B, device=dev).repeat_interleave(m)

    def update(self, active: torch.Tensor) -> tuple[_LogisticBatch, torch.Tensor, torch.Tensor]:
        """(batch, its instances' global indices [k], their problems in the batch [k])."""
        live = active.view(self.full.B, self.m).any(1)
        n_live = int(live.sum())
        if n_live <= self.batch.B // 2:
            ids = live.nonzero().squeeze(1)
            dev = ids.device
            self.batch = self.full.subset(ids)
            self.instances = (ids[:, None] * self.m + torch.arange(self.m, device=dev)).reshape(-1)
            self.problems = torch.arange(n_live, device=dev).repeat_interleave(self.m)
        return self.batch, self.instances, self.problems


def _newton_l2(
    batch: _LogisticBatch, C: torch.Tensor, theta: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Newton-Raphson with backtracking line search for K instances: C [K], start theta [K, p].

    Each step solves H_k step = -grad_k (Cholesky) and has Newton decrement
    lambda^2 = g^T H^-1 g (about twice f_C - min f_C near the optimum).
    - Converged when the step is small, ``||step||_inf <= tol * max(1, ||theta||_inf)``: the step
      is applied and, Newton being quadratically convergent there, the error left is of order
      step^2. (A gradient-norm test such as lbfgs' is loose when C is large: the Hessian is then
      ill-conditioned and a small gradient still allows a sizeable coefficient error.)
    - Chord test, before forming a new Hessian: once a full step has contracted the error 10x
      (quadratic regime), the step with the previous Cholesky factor estimates the Newton step
      well; if it is already below the tolerance it is applied and the instance stops, saving
      the last Hessian (about a quarter of all of them).
    - Otherwise the step length halves from 1 until the Armijo condition
      f(theta + a step) <= f(theta) - 1e-4 a lambda^2 holds; when lambda^2 is below 1e-12 |f|,
      where rounding in f would make that test meaningless, the full step is taken.
    - An instance whose line search finds no decrease at all stops there (float64 floor); it
      counts as converged when lambda^2 <= 1e-9 max(1, |f|).
    Returns the solutions [K, p], Newton steps [K], converged flags [K] and the last Cholesky
    factor of each instance's Hessian [K, p, p] (used for warm starts along the C path).
    """
    K, p = theta.shape
    dev = theta.device
    theta = theta.clone()
    n_iter = torch.zeros(K, dtype=torch.int64, device=dev)
    converged = torch.zeros(K, dtype=torch.bool, device=dev)
    active = torch.ones(K, dtype=torch.bool, device=dev)
    factors = torch.zeros(K, p, p, dtype=theta.dtype, device=dev)
    # size of the last step where it was a full Newton step (alpha = 1), else inf
    last_full_step = torch.full((K,), math.inf, dtype=theta.dtype, device=dev)
    penalty = batch.penalty
    live = _LiveProblems(batch, K // batch.B)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        view, inst, problems = live.update(active)
        th, c = theta[inst], C[inst]
        loss, grad, weights = view.evaluate(th, c)
        grad = grad + penalty * th
        f = 0.5 * (penalty * th * th).sum(1) + loss
        th_scale = th.abs().amax(1).clamp_min(1.0)
        act = active[inst].nonzero().squeeze(1)  # positions in the view
        ready = act[torch.isfinite(last_full_step[inst[act]])]
        if ready.numel() > 0:
            chord = -_solve(factors[inst[ready]], grad[ready])
            chord_size = chord.abs().amax(1)
            done = (chord_size <= tol * th_scale[ready]) & (
                chord_size <= 0.1 * last_full_step[inst[ready]]
            )
            if bool(done.any()):
                finished = inst[ready[done]]
                theta[finished] = th[ready[done]] + chord[done]
                converged[finished] = True
                active[finished] = False
                act = active[inst].nonzero().squeeze(1)
                if act.numel() == 0:
                    continue
        g_act = inst[act]
        L = view.hessian_factors(weights[act], problems[act])
        factors[g_act] = L
        step = -_solve(L, grad[act])
        decrement = -(grad[act] * step).sum(1)
        f0 = f[act]
        f_scale = f0.abs().clamp_min(1.0)
        n_iter[g_act] += 1
        step_size = step.abs().amax(1)
        small = step_size <= tol * th_scale[act]
        full = small | (decrement <= 1e-12 * f_scale)
        theta[g_act[full]] = th[act[full]] + step[full]
        last_full_step[g_act] = torch.where(full, step_size, math.inf)
        converged[g_act[small]] = True
        stop = small.clone()
        search = ~full
        if bool(search.any()):
            pos, s_step, s_dec = act[search], step[search], decrement[search]
            s_f0, s_scale = f0[search], f_scale[search]
            alpha = torch.ones_like(s_dec)
            accepted = torch.zeros_like(s_dec, dtype=torch.bool)
            for _ in range(_MAX_HALVINGS):
                todo = (~accepted).nonzero().squeeze(1)
                trial = th[pos[todo]] + alpha[todo, None] * s_step[todo]
                trial_view = th.clone()
                trial_view[pos[todo]] = trial
                f_trial = (
                    0.5 * (penalty * trial * trial).sum(1) + view.loss(trial_view, c)[pos[todo]]
                )
                ok = f_trial <= s_f0[todo] - _ARMIJO * alpha[todo] * s_dec[todo]
                theta[inst[pos[todo[ok]]]] = trial[ok]
                accepted[todo[ok]] = True
                alpha[todo[~ok]] *= 0.5
                if bool(accepted.all()):
                    break
            unit = alpha == 1.0
            last_full_step[inst[pos[unit]]] = s_step[unit].abs().amax(1)
            stalled = ~accepted
            converged[inst[pos[stalled & (s_dec <= 1e-9 * s_scale)]]] = True
            stop[search] = stalled  # stop the stalled ones too
        active[g_act[stop]] = False
    return theta, n_iter, converged, factors


def _along_path(
    C: torch.Tensor,
    theta0: torch.Tensor,
    p: int,
    solve: Callable[
        [torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]
    ],
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve each problem's Cs [B, m] one at a time in increasing order, warm-starting.

    All B problems advance together (position j of each problem's sorted Cs).
    ``solve(c [B], start [B, p]) -> (theta, n_iter, converged, extra)`` solves one C per problem;
    ``predict(c, c_next, theta, extra)`` gives the start for the next C. theta0: [B, p]. Returns
    solutions [B, m, p], Newton steps and converged flags [B, m].
    """
    B, m = C.shape
    order = torch.argsort(C, dim=1, stable=True)
    rows = torch.arange(B, device=C.device)
    thetas = torch.empty(B, m, p, dtype=theta0.dtype, device=theta0.device)
    n_iter = torch.zeros(B, m, dtype=torch.int64, device=C.device)
    converged = torch.zeros(B, m, dtype=torch.bool, device=C.device)
    start = theta0
    for pos in range(m):
        j = order[:, pos]
        c = C[rows, j]
        th, it, ok, extra = solve(c, start)
        thetas[rows, j], n_iter[rows, j], converged[rows, j] = th, it, ok
        if pos + 1 < m:
            start = predict(c, C[rows, order[:, pos + 1]], th, extra)
    return thetas, n_iter, converged


def _continuation_l2(
    batch: _LogisticBatch, C: torch.Tensor, theta0: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L2 fits for each problem's Cs [B, m] along the path (``_along_path``).

    The start for the next C is a first-order (tangent) prediction from the solution theta at the
    previous C: differentiating grad f_C(theta(C)) = 0 gives d theta / d log C = H^-1 (P theta),
    with P = diag(penalty) and H the Hessian at theta (its Cholesky factor is the last one the
    Newton loop computed).
    """

    def predict(c: torch.Tensor, c_next: torch.Tensor, th: torch.Tensor, L: Any) -> torch.Tensor:
        step = torch.log(c_next / c)[:, None] * _solve(L, batch.penalty * th)
        return torch.where(torch.isfinite(step), th + step, th)

    return _along_path(
        C, theta0, batch.p, lambda c, start: _newton_l2(batch, c, start, max_iter, tol), predict
    )


def _pseudo_gradient(theta: torch.Tensor, g: torch.Tensor, penalised: torch.Tensor) -> torch.Tensor:
    """Minimum-norm subgradient v [K, p] of ||w||_1 + C loss (g: gradient of C loss, [K, p]).

    v_j = g_j + sign(w_j) where w_j != 0; at w_j = 0 the shrunk g_j: g_j + 1 if g_j < -1,
    g_j - 1 if g_j > 1, else 0; v = g where not ``penalised`` [p] (the intercept).
    """
    at_zero = torch.where(g < -1.0, g + 1.0, torch.where(g > 1.0, g - 1.0, torch.zeros_like(g)))
    v = torch.where(theta != 0, g + torch.sign(theta), at_zero)
    return torch.where(penalised, v, g)


def _face_step(
    H: torch.Tensor,
    v: torch.Tensor,
    w: torch.Tensor,
    z: torch.Tensor,
    valid: torch.Tensor,
    mu: torch.Tensor,
) -> torch.Tensor:
    """Damped Newton step on the orthant face, re-solved while weights leave it -> [k, f].

    Minimises the model v . d + 0.5 d^T (H + mu I) d over the free coordinates (H [k, f, f];
    v, w, z [k, f]: pseudo-gradient, weights, orthant signs; ``valid`` marks real coordinates;
    mu [k]). Where the minimiser moves a nonzero weight across 0, or an entering zero weight
    against its orthant, that weight is fixed (at 0: d_j = -w_j) and the model is minimised
    again over the others, at most ``_FACE_RESOLVES`` times: weights that leave the support all
    leave in one Newton iteration instead of one line-search projection at a time. A row whose
    final step is not a descent direction (v . d >= 0; rare) takes the first, unconstrained step
    with its wrong-way entering weights zeroed, or failing that the diagonally scaled -v.
    """
    k = v.shape[0]
    one = torch.ones((), dtype=H.dtype, device=H.device)
    solved = valid.clone()  # coordinates the model is minimised over
    fixed_step = torch.zeros_like(v)  # -w_j for weights fixed at 0
    todo = torch.arange(k, device=H.device)
    step = torch.zeros_like(v)
    first = None
    for _ in range(_FACE_RESOLVES + 1):
        S, H_t = solved[todo], H[todo]
        rhs = -(v[todo] + (H_t @ fixed_step[todo, :, None])[:, :, 0]) * S
        system = H_t * S[:, :, None] * S[:, None, :] + torch.diag_embed(
            torch.where(S, mu[todo, None], one)
        )
        d = _solve(_cholesky_spd(system), rhs) * S + fixed_step[todo]
        step[todo] = d
        if first is None:
            first = torch.where((w == 0) & (d * z < 0), torch.zeros_like(d), d)
        w_t, z_t = w[todo], z[todo]
        leaving = S & (w_t != 0) & ((w_t + d) * z_t < 0)
        change = leaving | (S & (w_t == 0) & (d * z_t < 0))
        again = change.any(1)
        if not bool(again.any()):
            break
        todo, change, leaving = todo[again], change[again], leaving[again]
        solved[todo] &= ~change
        fixed_step[todo] = torch.where(leaving, -w[todo], fixed_step[todo])
    step = torch.where((w == 0) & (step * z < 0), torch.zeros_like(step), step)
    ascent = (v * step).sum(1) >= 0
    if bool(ascent.any()):
        step[ascent] = first[ascent]  # type: ignore[index]
        ascent &= (v * step).sum(1) >= 0
        scaled = -v / (H.diagonal(dim1=1, dim2=2) + mu[:, None]).clamp_min(1e-300) * valid
        step[ascent] = scaled[ascent]
    return step


def _free_columns(free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [k, f] of the True entries of free [k, p] first (f = most per row), and valid."""
    n_free = free.sum(1)
    f = int(n_free.max())
    cols = torch.argsort((~free).to(torch.int8), dim=1, stable=True)[:, :f]
    valid = torch.arange(f, device=free.device)[None, :] < n_free[:, None]
    return cols, valid


def _newton_l1(
    batch: _LogisticBatch, C: torch.Tensor, theta: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthant-wise damped Newton for the L1 objective (module docstring), K instances.

    C: [K]; theta: [K, p] starts. Returns solutions [K, p], Newton steps [K], converged [K].
    """
    K = theta.shape[0]
    dev, dtype = theta.device, theta.dtype
    theta = theta.clone()
    penalised = batch.penalty > 0  # [p]
    n_iter = torch.zeros(K, dtype=torch.int64, device=dev)
    converged = torch.zeros(K, dtype=torch.bool, device=dev)
    active = torch.ones(K, dtype=torch.bool, device=dev)
    kappa = torch.full((K,), _KAPPA_START, dtype=dtype, device=dev)
    live = _LiveProblems(batch, K // batch.B)
    for _ in range(max_iter):
        if not bool(active.any()):
            break
        view, inst, problems = live.update(active)
        th_view, c = theta[inst], C[inst]
        loss, g, weights = view.evaluate(th_view, c)
        act = active[inst].nonzero().squeeze(1)
        th = th_view[act]
        v = _pseudo_gradient(th, g[act], penalised)
        v_norm = v.abs().amax(1)
        # optimal to float64 precision: with ||v||_inf <= 0.01 tol, f - min f is at most
        # 0.01 tol ||theta - theta*||_1 (convexity), and flat directions (duplicate columns:
        # the optimum is not unique) no longer move theta
        optimal = v_norm <= 0.01 * tol
        if bool(optimal.any()):
            converged[inst[act[optimal]]] = True
            active[inst[act[optimal]]] = False
            keep = ~optimal
            act, th, v, v_norm = act[keep], th[keep], v[keep], v_norm[keep]
            if act.numel() == 0:
                continue
        g_act = inst[act]
        n_iter[g_act] += 1
        # free set: nonzero weights, zero weights with |g| > 1, the intercept; orthant signs z
        free = (th != 0) | (v != 0) | ~penalised
        orthant = torch.where(th != 0, torch.sign(th), -torch.sign(v)) * penalised
        cols, valid = _free_columns(free)
        H = view.free_column_gram(weights[act], problems[act], cols, valid)
        step_free = _face_step(
            H,
            v.gather(1, cols),
            th.gather(1, cols),
            orthant.gather(1, cols),
            valid,
            kappa[g_act] * v_norm,
        )
        step = torch.zeros_like(th).scatter_(1, cols, step_free)
        slope = (v * step).sum(1)  # directional derivative, < 0 (descent direction)
        f0 = loss[act] + (th.abs() * penalised).sum(1)
        f_scale = f0.abs().clamp_min(1.0)
        small = step.abs().amax(1) <= tol * th.abs().amax(1).clamp_min(1.0)
        full = small | (-slope <= 1e-12 * f_scale)  # no line search below rounding in f
        alpha = torch.ones_like(f0)
        accepted = full.clone()
        trial = th + step
        for _ in range(_MAX_HALVINGS + 1):
            trial = torch.where(trial * orthant < 0, torch.zeros_like(trial), trial)  # project
            todo = (~accepted).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            trial_view = th_view.clone()
            trial_view[act[todo]] = trial[todo]
            f_trial = view.loss(trial_view, c)[act[todo]] + (trial[todo].abs() * penalised).sum(1)
            decrease = _ARMIJO * (v[todo] * (trial[todo] - th[todo])).sum(1)
            ok = f_trial <= f0[todo] + decrease
            accepted[todo[ok]] = True
            alpha[todo[~ok]] *= 0.5
            trial[todo[~ok]] = th[todo[~ok]] + alpha[todo[~ok], None] * step[todo[~ok]]
        theta[g_act[accepted]] = trial[accepted]
        converged[g_act[small]] = True
        stalled = ~accepted  # no decrease found: float64 floor
        converged[g_act[stalled & (-slope <= 1e-9 * f_scale)]] = True
        # damping: less after a full step, more after a shortened one
        shortened = accepted & (alpha < 1.0)
        kappa[g_act] = torch.where(shortened, kappa[g_act] / alpha, kappa[g_act] / 4.0).clamp(
            _KAPPA_MIN, _KAPPA_MAX
        )
        active[g_act[small | stalled]] = False
    return theta, n_iter, converged


def _l1_tangent(
    batch: _LogisticBatch, C: torch.Tensor, C_next: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """Warm start [K, p] for C_next [K] from the L1 optima theta [K, p] at C [K].

    On the support S (nonzero weights and the intercept) the optimality condition
    C grad_S loss + z_S = 0 (z = sign(w), 0 for the intercept) gives the tangent
    d theta_S / d log C = H_SS^-1 z_S, H = the Hessian of C * loss. The prediction
    theta + log(C_next / C) * tangent, with weights that changed sign set to 0, is used where its
    objective at C_next is below that of theta itself.
    """
    K = theta.shape[0]
    penalised = batch.penalty > 0
    problems = torch.arange(batch.B, device=theta.device).repeat_interleave(K // batch.B)
    _, _, weights = batch.evaluate(theta, C)
    cols, valid = _free_columns((theta != 0) | ~penalised)
    H = batch.free_column_gram(weights, problems, cols, valid)
    z = torch.sign(theta).gather(1, cols) * valid * penalised[cols]
    one = torch.ones((), dtype=theta.dtype, device=theta.device)
    L = _cholesky_spd(H + torch.diag_embed(torch.where(valid, 0.0 * one, one)))
    tangent = torch.zeros_like(theta).scatter_(1, cols, _solve(L, z) * valid)
    pred = theta + torch.log(C_next / C)[:, None] * tangent
    pred = torch.where(pred * torch.sign(theta) < 0, torch.zeros_like(pred), pred)
    pred = torch.where(torch.isfinite(pred), pred, theta)
    f_pred = (pred.abs() * penalised).sum(1) + batch.loss(pred, C_next)
    f_theta = (theta.abs() * penalised).sum(1) + batch.loss(theta, C_next)
    return torch.where((f_pred < f_theta)[:, None], pred, theta)


def _path_l1(
    batch: _LogisticBatch, C: torch.Tensor, theta0: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L1 fits for each problem's Cs [B, m] along the path (``_along_path``); the start for the
    next C is ``_l1_tangent`` off the previous optimum."""

    def solve(c: torch.Tensor, start: torch.Tensor) -> tuple[Any, Any, Any, None]:
        return (*_newton_l1(batch, c, start, max_iter, tol), None)

    return _along_path(
        C,
        theta0,
        batch.p,
        solve,
        lambda c, c_next, th, _: _l1_tangent(batch, c, c_next, th),
    )


def solver_fingerprint(penalty: Literal["l1", "l2"]) -> dict[str, object]:
    """What in this module decides a fit's result (for cache keys): algorithm, version, defaults."""
    algorithm = "newton-l2" if penalty == "l2" else "orthant-wise-newton-l1"
    return {
        "algorithm": algorithm,
        "version": SOLVER_VERSION,
        "tol": DEFAULT_TOL,
        "max_iter": DEFAULT_MAX_ITER,
    }


def _as_float64(
    t: torch.Tensor | np.ndarray | Sequence[float], device: torch.device, name: str
) -> torch.Tensor:
    """A float64 tensor on ``device``; raises ``ProbeDataError`` on non-numeric input."""
    if isinstance(t, torch.Tensor):
        return t.detach().to(device=device, dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(t, dtype=np.float64), device=device)
    except (TypeError, ValueError) as exc:
        raise ProbeDataError(f"{name}: expected numbers, got {type(t).__name__}") from exc


def _as_mask(
    mask: torch.Tensor | np.ndarray | None,
    shape: tuple[int, int],
    device: torch.device,
    name: str,
) -> torch.Tensor | None:
    """A bool tensor of ``shape`` on ``device``, or None for None."""
    if mask is None:
        return None
    out = torch.as_tensor(mask, device=device)
    if tuple(out.shape) != shape:
        raise ProbeDataError(f"{name}: expected shape {shape}, got {tuple(out.shape)}")
    return out.to(torch.bool)


def fit_logistic_batch(
    X: torch.Tensor,
    y: torch.Tensor,
    Cs: torch.Tensor | Sequence[float],
    *,
    penalty: Literal["l1", "l2"],
    row_mask: torch.Tensor | None = None,
    feature_mask: torch.Tensor | None = None,
    fit_intercept: bool = True,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
) -> LogisticFit:
    """Fit B binary logistic problems x m values of C in one call (objectives: module docstring).

    Args:
        X: [B, n, p] features (computed in float64 on X's device); rows beyond a problem's size
            are padding (``row_mask``).
        y: [B, n] labels in {0, 1} (1 = positive class); padded rows may hold anything.
        Cs: [m] inverse regularisation strengths (> 0) shared by all problems, or [B, m].
        penalty: ``"l2"`` (0.5 ||w||^2) or ``"l1"`` (||w||_1).
        row_mask: [B, n] bool, False = padded row (contributes nothing). Default: all rows.
        feature_mask: [B, p] bool, False = padded column (its weight is fixed at exactly 0).
        fit_intercept: learn an unpenalised intercept c (needs both classes in each problem).
        init: warm start ``(coef [B, m, p], intercept [B, m])``; each (problem, C) starts from
            its own values (default: w = 0 and the intercept-only optimum log(n_pos / n_neg),
            continued along the C path).
        tol: stop a (problem, C) when its Newton step is at most ``tol * max(1, ||theta||_inf)``
            (default: the module's ``DEFAULT_TOL``, read at call time, as ``solver_fingerprint``).
        max_iter: most Newton steps per (problem, C) (default: ``DEFAULT_MAX_ITER``).

    Returns:
        ``LogisticFit`` with coef [B, m, p], intercept [B, m] (on X's device), n_iter and
        converged [B, m] (numpy).
    """
    if penalty not in ("l1", "l2"):
        raise ProbeDataError(f"penalty: expected 'l1' or 'l2', got {penalty!r}")
    tol = DEFAULT_TOL if tol is None else tol
    max_iter = DEFAULT_MAX_ITER if max_iter is None else max_iter
    if max_iter < 1:
        raise ProbeDataError(f"max_iter: expected a positive integer, got {max_iter}")
    if not (tol > 0):
        raise ProbeDataError(f"tol: expected a positive number, got {tol}")
    device = X.device if isinstance(X, torch.Tensor) else torch.device("cpu")
    X = _as_float64(X, device, "X")
    if X.ndim != 3 or 0 in X.shape:
        raise ProbeDataError(f"X: expected a non-empty 3-D array [B, n, p], got {tuple(X.shape)}")
    B, n, p = X.shape
    rows = _as_mask(row_mask, (B, n), device, "row_mask")
    feats = _as_mask(feature_mask, (B, p), device, "feature_mask")
    y_t = torch.as_tensor(y, device=device)
    if tuple(y_t.shape) != (B, n):
        raise ProbeDataError(f"y: expected shape {(B, n)}, got {tuple(y_t.shape)}")
    valid_rows = torch.ones(B, n, dtype=torch.bool, device=device) if rows is None else rows
    positive = y_t == 1
    if not bool(((positive | (y_t == 0)) | ~valid_rows).all()):
        raise ProbeDataError("y: expected labels in {0, 1}")
    n_rows = valid_rows.sum(1)
    n_pos = (positive & valid_rows).sum(1)
    if bool((n_rows == 0).any()):
        raise ProbeDataError(f"row_mask: problem {int((n_rows == 0).nonzero()[0])} has no rows")
    if fit_intercept and bool(((n_pos == 0) | (n_pos == n_rows)).any()):
        b = int(((n_pos == 0) | (n_pos == n_rows)).nonzero()[0])
        raise ProbeDataError(
            f"y: problem {b} has one class; both are needed to fit an intercept (its optimum "
            "is infinite)"
        )
    C = _as_float64(Cs, device, "Cs")
    if C.ndim == 1:
        C = C[None].expand(B, -1)
    if C.ndim != 2 or C.shape[0] != B or C.shape[1] == 0:
        raise ProbeDataError(f"Cs: expected shape [m] or [{B}, m], got {tuple(C.shape)}")
    if not bool((torch.isfinite(C) & (C > 0)).all()):
        raise ProbeDataError(f"Cs: expected finite positive numbers, got {C.cpu().numpy()}")
    m = C.shape[1]
    keep = valid_rows[:, :, None] if feats is None else valid_rows[:, :, None] & feats[:, None, :]
    if not bool((torch.isfinite(X) | ~keep).all()):
        raise ProbeDataError("X: a row of a problem has a NaN or infinite value")
    X = torch.where(keep, X, torch.zeros((), dtype=X.dtype, device=device))
    s = torch.where(positive, 1.0, -1.0).to(torch.float64)
    row_weight = None if rows is None else rows.to(torch.float64)
    intercept0 = torch.log(n_pos / (n_rows - n_pos)).to(torch.float64) if fit_intercept else None
    coef0 = b0 = None
    if init is not None:
        coef0 = _as_float64(init[0], device, "init coef")
        b0 = _as_float64(init[1], device, "init intercept")
        if tuple(coef0.shape) != (B, m, p) or tuple(b0.shape) != (B, m):
            raise ProbeDataError(
                f"init: expected coef {(B, m, p)} and intercept {(B, m)}, got "
                f"{tuple(coef0.shape)} and {tuple(b0.shape)}"
            )
        if not bool(torch.isfinite(coef0).all() & torch.isfinite(b0).all()):
            raise ProbeDataError("init: expected finite values")
        if feats is not None:
            coef0 = coef0 * feats[:, None, :]

    # unknowns per (problem, C) after the reduction, with the intercept
    P = (min(n, p) if penalty == "l2" else p) + int(fit_intercept)
    small = n * P * P <= SMALL_PROBLEM_FLOPS
    # L2: tiny problems (and accelerators, bound by per-call overhead) run all Cs at once from
    # a cold start; L1 always follows the path (its warm starts save more than half the steps)
    all_at_once = init is not None or (penalty == "l2" and (small or device.type != "cpu"))
    m_live = m if all_at_once else 1
    per_problem = m_live * max(P * P, n * P)
    coef = torch.empty(B, m, p, dtype=torch.float64, device=device)
    intercept = torch.zeros(B, m, dtype=torch.float64, device=device)
    n_iter = torch.empty(B, m, dtype=torch.int64, device=device)
    converged = torch.empty(B, m, dtype=torch.bool, device=device)
    for part in _chunks(B, per_problem):
        out = _fit_chunk(
            X[part],
            s[part],
            None if row_weight is None else row_weight[part],
            C[part],
            penalty,
            fit_intercept,
            None if intercept0 is None else intercept0[part],
            None if coef0 is None else (coef0[part], b0[part]),  # type: ignore[index]
            small,
            all_at_once,
            tol,
            max_iter,
        )
        coef[part], intercept[part], n_iter[part], converged[part] = out
    if feats is not None:
        coef = coef * feats[:, None, :]  # exact zeros (the reduced basis leaves ~1e-17)
    converged_np = converged.cpu().numpy()
    if not converged_np.all():
        logger.warning(
            "logistic regression (%s) did not converge for %d of %d (problem, C) pairs within "
            "%d Newton steps (e.g. C=%s)",
            penalty,
            int((~converged_np).sum()),
            converged_np.size,
            max_iter,
            float(C[torch.as_tensor(~converged_np, device=device)][0]),
        )
    return LogisticFit(coef, intercept, n_iter.cpu().numpy(), converged_np)


def _fit_chunk(
    X: torch.Tensor,
    s: torch.Tensor,
    row_weight: torch.Tensor | None,
    C: torch.Tensor,
    penalty: str,
    fit_intercept: bool,
    intercept0: torch.Tensor | None,
    init: tuple[torch.Tensor, torch.Tensor] | None,
    small: bool,
    all_at_once: bool,
    tol: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fit_logistic_batch`` on a chunk of problems (inputs validated, masked and zeroed)."""
    B, n, p = X.shape
    m = C.shape[1]
    Q = None
    if penalty == "l2" and n < p:
        # X^T = Q R, so X = R^T Q^T; solve for beta with w = Q beta (exact, module docstring).
        Q, R = torch.linalg.qr(X.mT, mode="reduced")
        Z = R.mT.contiguous()
    else:
        Z = X
    batch = _LogisticBatch(Z, s, row_weight, fit_intercept)
    batch.use_syrk = not small and X.device.type == "cpu"
    d = Z.shape[2]
    if init is None:
        theta0 = torch.zeros(B, batch.p, dtype=X.dtype, device=X.device)
        if intercept0 is not None:
            theta0[:, -1] = intercept0
        starts = None
    else:
        w0 = init[0] if Q is None else init[0] @ Q  # beta = Q^T w
        parts = [w0, init[1][:, :, None]] if fit_intercept else [w0]
        starts = torch.cat(parts, 2).reshape(B * m, batch.p)
    solve_all = _newton_l2 if penalty == "l2" else _newton_l1
    if starts is None and all_at_once:
        starts = theta0[:, None, :].expand(B, m, batch.p).reshape(B * m, batch.p)
    if starts is not None:  # every (problem, C) at once, each from its own start
        out = solve_all(batch, C.reshape(B * m), starts, max_iter, tol)
        thetas = out[0].view(B, m, batch.p)
        n_iter, converged = out[1].view(B, m), out[2].view(B, m)
    elif penalty == "l2":
        thetas, n_iter, converged = _continuation_l2(batch, C, theta0, max_iter, tol)
    else:
        thetas, n_iter, converged = _path_l1(batch, C, theta0, max_iter, tol)
    w = thetas[:, :, :d]
    if Q is not None:
        w = w @ Q.mT
    intercept = thetas[:, :, -1] if fit_intercept else torch.zeros_like(thetas[:, :, 0])
    return w, intercept, n_iter, converged
