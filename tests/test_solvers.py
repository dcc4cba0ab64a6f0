"""Tests for saelab.probes.solvers: batched L2 / L1 logistic regression over a C grid."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from saelab.errors import ProbeDataError
from saelab.probes import solvers
from saelab.probes.logistic import fit_logistic_path
from saelab.probes.solvers import fit_logistic_batch

SKLEARN_VERSION = tuple(int(v) for v in re.findall(r"\d+", sklearn.__version__)[:2])
CS = np.logspace(5, -5, 10)

# ----------------------------------------------------------------------------------- helpers


def sklearn_l1(C: float, **kwargs) -> LogisticRegression:
    """scikit-learn's L1 logistic regression on any version from 1.5 to 1.9.

    1.8 deprecated ``penalty`` in favour of ``l1_ratio``; before 1.8, ``l1_ratio=1`` without
    ``penalty="l1"`` fits L2.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if SKLEARN_VERSION < (1, 8):
            return LogisticRegression(C=C, penalty="l1", **kwargs)
        return LogisticRegression(C=C, l1_ratio=1.0, **kwargs)


def fit_quietly(model: LogisticRegression, X: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def loss(X, y, w, b, C):
    """C * sum_i log(1 + exp(-s_i (x_i . w + b))), s_i = 2 y_i - 1."""
    return C * np.logaddexp(0.0, -(2 * y - 1) * (X @ w + b)).sum()


def l1_objective(X, y, w, b, C):
    return np.abs(w).sum() + loss(X, y, w, b, C)


def loss_gradient(X, y, w, b, C):
    """Gradient of the C * loss term: (g_w [d], g_b)."""
    s = 2 * y - 1
    r = -C * s / (1.0 + np.exp(s * (X @ w + b)))
    return X.T @ r, r.sum()


def assert_l1_kkt(X, y, w, b, C, fit_intercept=True, atol=1e-7):
    """Optimality of ||w||_1 + C loss: g_j = -sign(w_j) on the support, |g_j| <= 1 off it."""
    g, g_b = loss_gradient(X, y, w, b, C)
    on = w != 0
    scale = max(1.0, np.abs(g).max())
    np.testing.assert_allclose(g[on], -np.sign(w[on]), atol=atol * scale)
    assert np.all(np.abs(g[~on]) <= 1.0 + atol * scale)
    if fit_intercept:
        assert abs(g_b) <= atol * scale


def sae_codes(n: int, p: int, seed: int, informative: int = 4):
    """Sparse non-negative "SAE code" columns and labels from a noisy linear rule on a few."""
    rng = np.random.default_rng(seed)
    informative = min(informative, p)
    density = np.full(p, 0.1)
    density[:informative] = 0.6
    X = (rng.random((n, p)) < density) * rng.exponential(2.0, size=(n, p))
    w = np.zeros(p)
    w[:informative] = rng.choice([-1.0, 1.0], informative)
    score = X @ w + rng.normal(size=n)
    y = (score > np.median(score)).astype(np.int64)
    return X, y


def normal_data(n: int, p: int, seed: int, standardise: bool = False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    if standardise:
        X = (X - X.mean(0)) / X.std(0)
    y = (X[:, 0] - X[:, 1] + rng.normal(size=n) > 0).astype(np.int64)
    y[:2] = [0, 1]  # both classes
    return X, y


def batch(problems):
    X = torch.from_numpy(np.stack([p[0] for p in problems]))
    y = torch.from_numpy(np.stack([p[1] for p in problems]))
    return X, y


# ----------------------------------------------------------------------------------- L2


@pytest.mark.parametrize(("n", "p"), [(40, 6), (8, 30)])
def test_l2_batch_equals_single_fits_and_newton_cholesky(n, p):
    problems = [normal_data(n, p, seed) for seed in range(4)]
    X, y = batch(problems)
    fit = fit_logistic_batch(X, y, CS, penalty="l2")
    assert fit.coef.shape == (4, 10, p) and fit.intercept.shape == (4, 10)
    assert fit.n_iter.shape == (4, 10) and fit.converged.all()
    for b, (Xb, yb) in enumerate(problems):
        coef, intercept, _ = fit_logistic_path(Xb, yb, CS)
        np.testing.assert_allclose(fit.coef[b].numpy(), coef, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(fit.intercept[b].numpy(), intercept, rtol=1e-8, atol=1e-10)
        for j in (2, 5, 9):
            ref = LogisticRegression(C=CS[j], solver="newton-cholesky", tol=1e-12, max_iter=1000)
            ref = fit_quietly(ref, Xb, yb)
            scale = max(1.0, np.abs(ref.coef_).max())
            np.testing.assert_allclose(fit.coef[b, j].numpy(), ref.coef_[0], atol=1e-8 * scale)
            np.testing.assert_allclose(float(fit.intercept[b, j]), ref.intercept_[0], atol=1e-8)


@pytest.mark.parametrize("penalty", ["l2", "l1"])
@pytest.mark.parametrize(("n", "p"), [(30, 6), (6, 12)])
def test_padded_rows_and_columns_give_the_unpadded_solution(penalty, n, p):
    sizes = [(n, p), (n - 2, p), (n, p - 3), (n - 3, p - 2)]
    problems = [sae_codes(ni, pi, seed=i) for i, (ni, pi) in enumerate(sizes)]
    X = torch.full((4, n, p), float("nan"), dtype=torch.float64)  # padding holds garbage
    y = torch.full((4, n), 7, dtype=torch.int64)
    rows = torch.zeros(4, n, dtype=torch.bool)
    cols = torch.zeros(4, p, dtype=torch.bool)
    for b, (Xb, yb) in enumerate(problems):
        X[b, : len(yb), : Xb.shape[1]] = torch.from_numpy(Xb)
        y[b, : len(yb)] = torch.from_numpy(yb)
        rows[b, : len(yb)] = True
        cols[b, : Xb.shape[1]] = True
    Cs = [1e3, 10.0, 0.3]
    fit = fit_logistic_batch(X, y, Cs, penalty=penalty, row_mask=rows, feature_mask=cols)
    assert fit.converged.all()
    for b, (Xb, yb) in enumerate(problems):
        alone = fit_logistic_batch(
            torch.from_numpy(Xb)[None], torch.from_numpy(yb)[None], Cs, penalty=penalty
        )
        pb = Xb.shape[1]
        assert torch.all(fit.coef[b, :, pb:] == 0)  # exact zeros in padded columns
        np.testing.assert_allclose(fit.coef[b, :, :pb], alone.coef[0], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(fit.intercept[b], alone.intercept[0], rtol=1e-10, atol=1e-10)


def test_chunked_batch_equals_one_batch(monkeypatch):
    X, y = batch([normal_data(12, 20, seed) for seed in range(6)])
    whole = {pen: fit_logistic_batch(X, y, [100.0, 1.0], penalty=pen) for pen in ("l1", "l2")}
    monkeypatch.setattr(solvers, "_TEMP_ELEMENTS", 64)  # one problem (and one Gram) per chunk
    for pen, ref in whole.items():
        fit = fit_logistic_batch(X, y, [100.0, 1.0], penalty=pen)
        np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------- L1


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_l1_reaches_sklearns_optimum_or_better(fit_intercept):
    # scikit-learn's saga has the same objective (unpenalised intercept); liblinear penalises
    # the intercept, so it is a reference only without one.
    X, y = normal_data(60, 8, seed=1, standardise=True)
    Cs = [0.01, 0.1, 1.0, 10.0]
    fit = fit_logistic_batch(
        torch.from_numpy(X)[None],
        torch.from_numpy(y)[None],
        Cs,
        penalty="l1",
        fit_intercept=fit_intercept,
    )
    assert fit.converged.all()
    solvers_ = ["saga"] + ([] if fit_intercept else ["liblinear"])
    for j, C in enumerate(Cs):
        w, b = fit.coef[0, j].numpy(), float(fit.intercept[0, j])
        ours = l1_objective(X, y, w, b, C)
        for solver in solvers_:
            model = sklearn_l1(
                C, solver=solver, tol=1e-12, max_iter=100_000, fit_intercept=fit_intercept
            )
            ref = fit_quietly(model, X, y)
            theirs = l1_objective(X, y, ref.coef_[0], np.atleast_1d(ref.intercept_)[0], C)
            assert ours <= theirs + 1e-10 * abs(theirs), (solver, C, ours, theirs)
            np.testing.assert_allclose(w, ref.coef_[0], atol=1e-5)
        assert_l1_kkt(X, y, w, b, C, fit_intercept)


def test_l1_solution_is_sparse_and_meets_the_kkt_conditions():
    X, y = sae_codes(80, 30, seed=2)
    fit = fit_logistic_batch(torch.from_numpy(X)[None], torch.from_numpy(y)[None], CS, penalty="l1")
    assert fit.converged.all()
    nonzero = (fit.coef[0] != 0).sum(1).numpy()  # in the order of CS (decreasing C)
    assert nonzero[-1] == 0 and nonzero[-3] == 0  # tiny C: all weights exactly 0
    assert 0 < nonzero[5] < 10  # moderate C: a few weights
    assert np.all(np.diff(nonzero[4:]) <= 0)
    for j, C in enumerate(CS):
        assert_l1_kkt(X, y, fit.coef[0, j].numpy(), float(fit.intercept[0, j]), C)
    # with all weights 0 the intercept is the intercept-only optimum
    np.testing.assert_allclose(float(fit.intercept[0, -1]), np.log(y.mean() / (1 - y.mean())))


def test_l1_separable_data_at_the_largest_C_has_finite_weights():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 10)) * 3.0
    y = (X @ rng.normal(size=10) + 0.5 > 0).astype(np.int64)
    fit = fit_logistic_batch(
        torch.from_numpy(X)[None], torch.from_numpy(y)[None], [1e5, 1e3], penalty="l1"
    )
    assert fit.converged.all() and torch.isfinite(fit.coef).all()
    for j, C in enumerate([1e5, 1e3]):
        w, b = fit.coef[0, j].numpy(), float(fit.intercept[0, j])
        assert np.all(((X @ w + b) > 0) == (y == 1))  # separates the classes
        assert_l1_kkt(X, y, w, b, C, atol=1e-6)


@pytest.mark.parametrize("binarize", [False, True])
def test_l1_with_fewer_rows_than_features_converges(binarize):
    # n = 6 < p = 40: the free set outgrows the rank of X (damping); binarized codes also
    # have duplicate columns and rows.
    problems = [sae_codes(6, 40, seed) for seed in range(5)]
    if binarize:
        problems = [((X != 0).astype(np.float64), y) for X, y in problems]
    X, y = batch(problems)
    fit = fit_logistic_batch(X, y, CS, penalty="l1")
    assert fit.converged.all() and fit.n_iter.max() < 60
    for b, (Xb, yb) in enumerate(problems):
        for j, C in enumerate(CS):
            w = fit.coef[b, j].numpy()
            assert binarize or (w != 0).sum() <= 6  # generic data: support <= n rows
            assert_l1_kkt(Xb, yb, w, float(fit.intercept[b, j]), C, atol=1e-6)


def test_per_problem_Cs_and_warm_start():
    problems = [sae_codes(20, 12, seed) for seed in range(3)]
    X, y = batch(problems)
    Cs = torch.tensor([[0.1, 10.0], [1.0, 1e3], [3.0, 0.3]], dtype=torch.float64)
    for penalty in ("l1", "l2"):
        fit = fit_logistic_batch(X, y, Cs, penalty=penalty)
        for b in range(3):
            alone = fit_logistic_batch(X[b : b + 1], y[b : b + 1], Cs[b], penalty=penalty)
            np.testing.assert_allclose(fit.coef[b], alone.coef[0], rtol=1e-9, atol=1e-10)
        # warm start from the solutions for slightly different data: same optimum, fewer steps
        near = fit_logistic_batch(X * 1.01, y, Cs, penalty=penalty)
        warm = fit_logistic_batch(X, y, Cs, penalty=penalty, init=(near.coef, near.intercept))
        np.testing.assert_allclose(warm.coef, fit.coef, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(warm.intercept, fit.intercept, rtol=1e-8, atol=1e-9)
        cold = fit_logistic_batch(
            X, y, Cs, penalty=penalty, init=(torch.zeros_like(near.coef), near.intercept * 0)
        )
        assert warm.n_iter.sum() < cold.n_iter.sum()


def test_l1_is_a_continuous_function_of_the_data():
    # last-bit changes in X must not move the solution beyond rounding (tight convergence)
    X, y = sae_codes(40, 16, seed=5)
    X2 = X * (1 + 1e-15 * np.random.default_rng(0).standard_normal(X.shape))
    a = fit_logistic_path(X, y, CS, penalty="l1")
    b = fit_logistic_path(X2, y, CS, penalty="l1")
    np.testing.assert_allclose(a[0], b[0], rtol=1e-9, atol=1e-10)


def test_l1_path_shapes_and_unpenalised_intercept():
    X, y = sae_codes(50, 10, seed=6)
    coef, intercept, _ = fit_logistic_path(X, y, [10.0, 0.01], penalty="l1")
    assert coef.shape == (2, 10) and intercept.shape == (2,)
    again = fit_logistic_path(X, y, [10.0, 0.01], penalty="l1")  # deterministic
    np.testing.assert_array_equal(coef, again[0])
    # the intercept is free: at C = 0.01 all weights are 0 and b is log(n_pos / n_neg)
    assert np.all(coef[1] == 0)
    np.testing.assert_allclose(intercept[1], np.log(y.sum() / (len(y) - y.sum())), atol=1e-12)


# ----------------------------------------------------------------------------------- contract


def test_cpu_blas_path_equals_the_device_agnostic_path_and_keeps_thread_settings(monkeypatch):
    # n p^2 > 1e6: on the CPU the Hessians come from BLAS dsyrk, one (problem, C) at a time;
    # elsewhere (and for small problems) from batched torch matmuls. Same optimum either way.
    X, y = batch([normal_data(800, 60, seed) for seed in range(2)])
    Cs = [100.0, 1.0]

    def refuse(*args, **kwargs):
        raise AssertionError("the solver changed a thread setting")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "set_num_threads", refuse)
        blas = {pen: fit_logistic_batch(X, y, Cs, penalty=pen) for pen in ("l1", "l2")}
    monkeypatch.setattr(solvers, "SMALL_PROBLEM_FLOPS", 10**12)
    for pen, ref in blas.items():
        fit = fit_logistic_batch(X, y, Cs, penalty=pen)
        assert ref.converged.all() and fit.converged.all()
        np.testing.assert_allclose(fit.coef, ref.coef, rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(fit.intercept, ref.intercept, rtol=1e-9, atol=1e-11)


def test_bad_inputs_raise_probe_data_errors():
    X, y = batch([normal_data(10, 3, 0)])
    with pytest.raises(ProbeDataError, match="penalty"):
        fit_logistic_batch(X, y, [1.0], penalty="l3")  # type: ignore[arg-type]
    with pytest.raises(ProbeDataError, match="Cs"):
        fit_logistic_batch(X, y, [1.0, 0.0], penalty="l1")
    with pytest.raises(ProbeDataError, match="labels"):
        fit_logistic_batch(X, y + 1, [1.0], penalty="l1")
    with pytest.raises(ProbeDataError, match="one class"):
        fit_logistic_batch(X, torch.zeros_like(y), [1.0], penalty="l2")
    X_bad = X.clone()
    X_bad[0, 3, 1] = float("inf")
    with pytest.raises(ProbeDataError, match="NaN or infinite"):
        fit_logistic_batch(X_bad, y, [1.0], penalty="l2")
    with pytest.raises(ProbeDataError, match="row_mask"):
        fit_logistic_batch(X, y, [1.0], penalty="l2", row_mask=torch.ones(1, 9, dtype=bool))
    with pytest.raises(ProbeDataError, match="init"):
        fit_logistic_batch(
            X, y, [1.0], penalty="l2", init=(torch.zeros(1, 1, 4), torch.zeros(1, 1))
        )
