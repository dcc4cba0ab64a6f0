"""Tests for saelab.probes' logistic estimator and its Newton solver (L2) and the L1 path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from probe_data import noisy_logistic_data, objective, objective_gradient, separable_data
from saelab.errors import SaelabError
from saelab.probes import C_GRID, LogisticProbe, ProbeDataError, fit_logistic_path

# ----------------------------------------------------------------------------------- solver


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("C", [1e-3, 0.1, 1.0, 100.0])
def test_logistic_probe_matches_sklearn(C, fit_intercept):
    X, y = noisy_logistic_data(400, 12, seed=0)
    X_test, y_test = noisy_logistic_data(300, 12, seed=1)
    ours = LogisticProbe(C=C, fit_intercept=fit_intercept).fit(X, y)
    ref = LogisticRegression(C=C, fit_intercept=fit_intercept, tol=1e-10, max_iter=10000).fit(X, y)
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=0, atol=1e-6 * max(scale, 1))
    np.testing.assert_allclose(
        ours.predict_proba(X_test), ref.predict_proba(X_test), rtol=0, atol=1e-7
    )
    np.testing.assert_array_equal(ours.predict(X_test), ref.predict(X_test))
    auc_ours = roc_auc_score(y_test, ours.predict_proba(X_test)[:, 1])
    auc_ref = roc_auc_score(y_test, ref.predict_proba(X_test)[:, 1])
    assert abs(auc_ours - auc_ref) <= 1e-6
    # Ours is the exact optimum: no larger objective than sklearn's and a vanishing gradient.
    b = ours.intercept_[0]
    assert objective(X, y, ours.coef_[0], b, C) <= objective(
        X, y, ref.coef_[0], ref.intercept_[0], C
    ) + 1e-9 * abs(objective(X, y, ref.coef_[0], ref.intercept_[0], C))
    grad = objective_gradient(X, y, ours.coef_[0], b, C, fit_intercept)
    assert np.abs(grad).max() <= 1e-9 * max(1.0, C * len(y))


def test_path_equals_individual_fits_and_newton_cholesky():
    X, y = noisy_logistic_data(300, 8, seed=2)
    coef, intercept, n_iter = fit_logistic_path(X, y, C_GRID)
    assert coef.shape == (10, 8) and intercept.shape == (10,) and n_iter.shape == (10,)
    for i in (0, 3, 9):
        ref = LogisticRegression(
            C=C_GRID[i], solver="newton-cholesky", tol=1e-12, max_iter=1000
        ).fit(X, y)
        np.testing.assert_allclose(coef[i], ref.coef_[0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(intercept[i], ref.intercept_[0], rtol=1e-9, atol=1e-12)
        single, b_single, _ = fit_logistic_path(X, y, [C_GRID[i]])
        np.testing.assert_allclose(single[0], coef[i], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b_single[0], intercept[i], rtol=1e-9, atol=1e-12)


def test_reduced_basis_when_fewer_rows_than_features():
    # n < d: solved in the n-dim row space of X; must equal the primal optimum.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 200))
    y = np.r_[np.ones(15), np.zeros(15)].astype(np.int64)
    rng.shuffle(y)  # random labels: separable (n < d) but unstructured
    for C in (0.01, 1.0):
        coef, intercept, _ = fit_logistic_path(X, y, [C])
        grad = objective_gradient(X, y, coef[0], intercept[0], C)
        assert np.abs(grad).max() <= 1e-9 * C * len(y)
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(X, y)
        np.testing.assert_allclose(coef[0], ref.coef_[0], atol=1e-5 * np.abs(coef).max())


@pytest.mark.parametrize(("n", "d"), [(200, 5), (40, 120)])
def test_separable_data_with_largest_C_converges_to_finite_weights(n, d):
    X, y = separable_data(n, d, seed=4)
    coef, intercept, n_iter = fit_logistic_path(X, y, C_GRID, max_iter=100)
    assert np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept))
    assert np.all(n_iter < 100)
    # The optimum is finite and the KKT condition holds at C = 1e5.
    grad = objective_gradient(X, y, coef[0], intercept[0], 1e5)
    assert np.abs(grad).max() <= 1e-6 * np.abs(coef[0]).max()
    assert roc_auc_score(y, X @ coef[0] + intercept[0]) == 1.0
    # Weaker regularisation gives a larger norm along the path.
    norms = np.linalg.norm(coef, axis=1)
    assert np.all(np.diff(norms) < 0)


def test_logistic_probe_estimator_contract():
    X, y = noisy_logistic_data(200, 4, seed=5)
    labels = np.where(y == 1, "yes", "no")
    probe = LogisticProbe(C=2.0).fit(X, labels)
    assert list(probe.classes_) == ["no", "yes"]
    assert probe.coef_.shape == (1, 4) and probe.intercept_.shape == (1,)
    proba = probe.predict_proba(X)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    dec = probe.decision_function(X)
    np.testing.assert_array_equal(probe.predict(X), np.where(dec > 0, "yes", "no"))
    assert probe.get_params() == {
        "C": 2.0,
        "fit_intercept": True,
        "max_iter": 100,
        "penalty": "l2",
        "tol": 1e-8,
    }
    other = clone(probe).set_params(C=0.5)
    assert other.C == 0.5 and not hasattr(other, "coef_")
    # torch input gives the same model
    torch_probe = LogisticProbe(C=2.0).fit(torch.from_numpy(X).float(), labels)
    np.testing.assert_allclose(
        torch_probe.coef_, LogisticProbe(C=2.0).fit(X.astype(np.float32), labels).coef_
    )
    assert 0.0 <= probe.score(X, labels) <= 1.0  # ClassifierMixin


def test_bad_inputs_raise_saelab_errors():
    X, y = noisy_logistic_data(20, 3, seed=6)
    X_bad = X.copy()
    X_bad[7, 1] = np.nan
    with pytest.raises(ProbeDataError, match="row 7"):
        LogisticProbe().fit(X_bad, y)
    with pytest.raises(SaelabError, match="two classes"):
        LogisticProbe().fit(X, np.zeros(20))
    with pytest.raises(ProbeDataError, match="inconsistent numbers of samples"):
        LogisticProbe().fit(X, y[:-1])
    with pytest.raises(ProbeDataError, match="Cs"):
        fit_logistic_path(X, y, [1.0, -1.0])
    with pytest.raises(ProbeDataError, match="expecting 3 features"):
        LogisticProbe().fit(X, y).predict(X[:, :2])


def test_hessian_factorisations_agree_and_survive_singular_hessians():
    from saelab.probes.solvers import _LogisticBatch

    rng = np.random.default_rng(17)
    Z = torch.from_numpy(rng.normal(size=(300, 20)))
    y = torch.from_numpy(np.where(rng.random(300) < 0.5, 1.0, -1.0))
    weights = torch.from_numpy(rng.random((2, 300)))
    prob = _LogisticBatch(Z[None], y[None], None, True)  # one problem, B = 1
    L_torch = prob.hessian_factors(weights)
    prob.use_syrk = True  # BLAS dsyrk + LAPACK dpotrf path
    L_blas = prob.hessian_factors(weights)
    np.testing.assert_allclose(L_blas.numpy(), L_torch.numpy(), rtol=1e-10, atol=1e-12)
    # zero sample weights: the unpenalised intercept has zero curvature; a tiny ridge is added
    L_zero = prob.hessian_factors(torch.zeros(1, 300, dtype=torch.float64))
    assert torch.isfinite(L_zero).all()
    H = L_zero[0] @ L_zero[0].T
    np.testing.assert_allclose(H[:20, :20].numpy(), np.eye(20), atol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(400, 30), (30, 60)])
def test_warm_start_reaches_the_same_optimum_in_fewer_steps(n, d):
    X, y = noisy_logistic_data(n, d, seed=18)
    cold = LogisticProbe(C=100.0).fit(X, y)
    near = LogisticProbe(C=100.0).fit(X[:-2], y[:-2])
    warm = LogisticProbe(C=100.0).fit(X, y, near.coef_, near.intercept_[0])
    np.testing.assert_allclose(warm.coef_, cold.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(warm.intercept_, cold.intercept_, rtol=1e-8, atol=1e-10)
    assert warm.n_iter_[0] < cold.n_iter_[0]
    with pytest.raises(ProbeDataError, match="coef_init"):
        LogisticProbe().fit(X, y, np.zeros(d + 1))


def test_l1_path_is_deterministic_and_reaches_the_l1_optimum():
    rng = np.random.default_rng(3)
    X = np.maximum(rng.normal(size=(200, 12)) * 2 - 1, 0)
    y = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=200) > 0).astype(np.int64)
    a = fit_logistic_path(X, y, [0.05, 1.0], penalty="l1")
    b = fit_logistic_path(X, y, [0.05, 1.0], penalty="l1")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    coef, intercept, _ = a
    assert (coef[0] == 0).sum() > (coef[1] == 0).sum()  # stronger penalty, sparser
    # optimality: subgradient condition of ||w||_1 + C sum log(1 + exp(-s z)) at C = 1
    s = 2 * y - 1
    z = X @ coef[1] + intercept[1]
    grad = -(X * (s / (1 + np.exp(s * z)))[:, None]).sum(0)
    on = coef[1] != 0
    np.testing.assert_allclose(grad[on], -np.sign(coef[1][on]), atol=2e-2)
    assert np.all(np.abs(grad[~on]) <= 1 + 2e-2)
