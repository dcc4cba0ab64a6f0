"""Tests for saelab.probes: the Newton logistic solver, the paper's protocol, SAE latent probes."""

from __future__ import annotations

import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from saelab.errors import ConfigError, SaelabError
from saelab.probes import (
    C_GRID,
    LogisticProbe,
    ProbeDataError,
    ProbeResult,
    fit_logistic_path,
    fit_logreg_probe,
    fit_probe_protocol,
    fit_sae_probes,
    rank_latents,
    roc_auc,
    select_hyperparameter,
    validation_splits,
)

# ----------------------------------------------------------------------------------- helpers


def noisy_logistic_data(n: int, d: int, seed: int, scale: float = 1.0):
    """Rows x ~ N(0, scale^2), labels drawn from a logistic model: never linearly separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * scale
    w = rng.normal(size=d) / scale
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ w + 0.3)))).astype(np.int64)
    return X, y


def separable_data(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 3.0
    w = rng.normal(size=d)
    y = (X @ w + 0.5 > 0).astype(np.int64)
    return X, y


def objective(X, y, w, b, C):
    """sklearn's L2 objective 0.5||w||^2 + C sum log(1 + exp(-y (x.w + b))), y in {-1, +1}."""
    t = np.where(y == 1, 1.0, -1.0) * (X @ w + b)
    return 0.5 * w @ w + C * np.logaddexp(0.0, -t).sum()


def objective_gradient(X, y, w, b, C, fit_intercept=True):
    s = np.where(y == 1, 1.0, -1.0)
    r = s / (1.0 + np.exp(s * (X @ w + b)))  # y_i sigma(-y_i z_i)
    gw = w - C * X.T @ r
    gb = -C * r.sum() if fit_intercept else 0.0
    return np.append(gw, gb)


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
    assert probe.get_params() == {"C": 2.0, "fit_intercept": True, "max_iter": 100, "tol": 1e-8}
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
    with pytest.raises(ProbeDataError, match="y_train"):
        fit_logreg_probe(X, y + 1, X, y)
    with pytest.raises(ProbeDataError, match="y_test"):
        fit_logreg_probe(X, y, X, np.zeros(20, dtype=np.int64))


# ----------------------------------------------------------------------------------- protocol


def test_c_grid_is_the_papers():
    np.testing.assert_allclose(C_GRID[[0, 3, 9]], [1e5, 46.41588833612773, 1e-5])
    assert np.all(np.diff(C_GRID) < 0)


@pytest.mark.parametrize(
    ("n", "n_splits", "n_train", "n_val"),
    [
        (2, 0, None, None),
        (3, 0, None, None),
        (4, 4, 2, 2),  # 2 x 2 mixed pairs
        (10, 25, 8, 2),  # 5 x 5 mixed pairs
        (12, 36, 10, 2),
        (128, 1, 103, 25),  # min(int(25.6), 100)
        (500, 1, 400, 100),
        (1024, 1, 924, 100),
    ],
)
def test_validation_split_sizes(n, n_splits, n_train, n_val):
    y = np.arange(n) % 2
    splits = validation_splits(y, seed=42)
    assert len(splits) == n_splits
    for train, val in splits:
        assert len(train) == n_train and len(val) == n_val
        assert np.intersect1d(train, val).size == 0
        assert np.array_equal(np.sort(np.r_[train, val]), np.arange(n))
        assert set(y[val]) == {0, 1}
    if n >= 128:
        np.testing.assert_array_equal(splits[0][1], np.arange(n - n_val, n))  # the last rows


@pytest.mark.filterwarnings("ignore:The least populated class")
@pytest.mark.parametrize(
    ("n", "period", "n_kept"),
    [(13, 2, 6), (13, 3, 5), (50, 3, 6), (127, 2, 6)],  # 13 with 5 positives: one fold dropped
)
def test_validation_splits_stratified_kfold(n, period, n_kept):
    y = (np.arange(n) % period == 0).astype(np.int64)
    splits = validation_splits(y, seed=42)
    folds = list(StratifiedKFold(6, shuffle=True, random_state=42).split(np.zeros(n), y))
    expected = [(tr, va) for tr, va in folds if len(set(y[va])) == 2]
    assert len(splits) == len(expected) == n_kept
    for (tr, va), (etr, eva) in zip(splits, expected, strict=True):
        np.testing.assert_array_equal(tr, etr)
        np.testing.assert_array_equal(va, eva)
        assert set(y[va]) == {0, 1}
    assert sum(len(va) for _, va in folds) == n
    assert validation_splits(y, seed=0)[0][1].tolist() != splits[0][1].tolist()


def test_leave_two_out_keeps_only_mixed_pairs_in_order():
    y = np.array([1, 0, 0, 1, 1])
    splits = validation_splits(y)
    pairs = [tuple(val) for _, val in splits]
    assert pairs == [(0, 1), (0, 2), (1, 3), (1, 4), (2, 3), (2, 4)]
    np.testing.assert_array_equal(splits[0][0], [2, 3, 4])


def test_one_class_holdout_is_fixed_by_class_proportions():
    n = 200
    y = np.zeros(n, dtype=np.int64)
    y[np.arange(0, 150, 3)] = 1  # 50 positives, all within the first 150 rows
    assert set(y[-40:]) == {0}  # the paper's hold-out (last 40 rows) has one class
    (train, val) = validation_splits(y)[0]
    assert len(val) == 40 and len(train) == 160
    pos_rows, neg_rows = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    # round(40 * 50 / 200) = 10 last positives, 30 last negatives
    np.testing.assert_array_equal(val, np.sort(np.r_[pos_rows[-10:], neg_rows[-30:]]))
    np.testing.assert_array_equal(train, np.setdiff1d(np.arange(n), val))
    assert set(y[train]) == {0, 1}
    # An ordinary hold-out is left as the paper has it.
    y2 = np.arange(n) % 2
    np.testing.assert_array_equal(validation_splits(y2)[0][1], np.arange(160, 200))


def test_roc_auc_equals_sklearn_with_ties_and_batches():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 60)
    scores = rng.integers(0, 5, size=(3, 60)).astype(float)  # many ties
    got = roc_auc(y, scores)
    for i in range(3):
        assert got[i] == pytest.approx(roc_auc_score(y, scores[i]), abs=1e-12)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.2]) == 0.0
    assert roc_auc([0, 1], [1.0, 1.0]) == 0.5


def test_select_hyperparameter_scores_and_first_argmax():
    X, y = noisy_logistic_data(60, 5, seed=8)
    splits = validation_splits(y)
    best, mean_auc = select_hyperparameter(X, y, splits, C_GRID)
    assert mean_auc.shape == (10,)
    assert best == int(np.argmax(mean_auc)) and mean_auc[best] == mean_auc.max()
    # mean AUC for one C, recomputed fold by fold with sklearn
    manual = []
    for tr, va in splits:
        ref = LogisticRegression(C=C_GRID[4], tol=1e-12, max_iter=10000).fit(X[tr], y[tr])
        manual.append(roc_auc_score(y[va], ref.predict_proba(X[va])[:, 1]))
    assert mean_auc[4] == pytest.approx(np.mean(manual), abs=1e-9)
    # Perfectly separable classes: every C scores 1.0, the first (largest) C wins the tie.
    Xs, ys = separable_data(40, 2, seed=9)
    Xs[:, 0] += 20.0 * ys
    best_s, mean_s = select_hyperparameter(Xs, ys, validation_splits(ys), C_GRID)
    assert best_s == 0 and np.all(mean_s == mean_s[0])


def test_leave_two_out_scores_are_pair_aucs():
    X, y = noisy_logistic_data(10, 3, seed=10)
    y = np.r_[np.ones(5), np.zeros(5)].astype(np.int64)
    splits = validation_splits(y)
    assert len(splits) == 25
    _, mean_auc = select_hyperparameter(X, y, splits, C_GRID)
    # each pair scores 0, 0.5 or 1, so 50 * mean is an integer
    np.testing.assert_allclose(mean_auc * 50, np.round(mean_auc * 50), atol=1e-9)


def test_single_class_training_fold_scores_half():
    X = np.arange(8.0)[:, None]
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    splits = validation_splits(y)  # every mixed pair holds the only positive
    assert len(splits) == 7
    best, mean_auc = select_hyperparameter(X, y, splits, C_GRID)
    np.testing.assert_array_equal(mean_auc, 0.5)
    assert best == 0


def test_fit_logreg_probe_easy_problem():
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(150), np.zeros(150)].astype(np.int64)
    rng.shuffle(y)
    X = rng.normal(size=(300, 20))
    X[:, 0] += 2.5 * y
    r = fit_logreg_probe(X[:200], y[:200], X[200:], y[200:], seed=42)
    assert isinstance(r, ProbeResult)
    assert r.method == "logreg" and r.k is None and r.latents is None
    assert r.test_auc > 0.9 and r.test_acc > 0.8 and r.val_auc > 0.85
    assert r.hyperparams["C"] in C_GRID
    assert (r.n_train, r.n_test) == (200, 100) and r.seconds > 0
    # the refit is the model with the chosen C on all training rows
    probe = LogisticProbe(C=r.hyperparams["C"]).fit(X[:200], y[:200])
    assert r.test_auc == pytest.approx(
        roc_auc_score(y[200:], probe.predict_proba(X[200:])[:, 1]), abs=1e-12
    )
    # torch inputs give the same result
    t = fit_logreg_probe(torch.from_numpy(X[:200]), torch.from_numpy(y[:200]), X[200:], y[200:])
    assert (t.test_auc, t.hyperparams) == (r.test_auc, r.hyperparams)


def test_fit_logreg_probe_tiny_training_set_uses_default_C():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9]])
    y = np.array([0, 1, 0])
    r = fit_logreg_probe(X, y, X, y)
    assert r.hyperparams == {"C": 1.0}
    probe = LogisticProbe(C=1.0).fit(X, y)
    assert r.val_auc == roc_auc_score(y, probe.predict_proba(X)[:, 1]) == 1.0


def test_protocol_is_deterministic():
    X, y = noisy_logistic_data(150, 10, seed=12)
    a = asdict(fit_logreg_probe(X[:100], y[:100], X[100:], y[100:]))
    b = asdict(fit_logreg_probe(X[:100], y[:100], X[100:], y[100:]))
    a.pop("seconds"), b.pop("seconds")
    assert a == b


# ----------------------------------------------------------------------------------- SAE probes

# Hand-computed ranking example. y = [1, 1, 0, 0]; per column (pos mean, neg mean, norm):
#   c0 [4, 4, 0, 0]        4,    0,    8/2=4      none 4     mean 1.0
#   c1 [0, 0, 1, 0]        0,    0.5,  1/1=1      none 0.5   mean 0.5
#   c2 [6, 2, 1, 1]        4,    1,    10/4=2.5   none 3     mean 1.2
#   c3 [0, .2, 0, .1]      0.1,  0.05, 0.3/2=.15  none 0.05  mean 0.333
#   c4 [0, 0, 0, 0]        0,    0,    ~1e-6      none 0     mean 0
#   c5 [-2, -2, -1, 0]     -2,   -0.5, 5/3        none 1.5   mean 0.9
#   c6 = c1 (exact tie; the lower index comes first)
HAND_CODES = np.array(
    [
        [4, 0, 6, 0.0, 0, -2, 0],
        [4, 0, 2, 0.2, 0, -2, 0],
        [0, 1, 1, 0.0, 0, -1, 1],
        [0, 0, 1, 0.1, 0, 0, 0],
    ]
)
HAND_Y = np.array([1, 1, 0, 0])


def test_rank_latents_hand_example():
    assert rank_latents(HAND_CODES, HAND_Y, "mean").tolist() == [2, 0, 5, 1, 6, 3, 4]
    assert rank_latents(HAND_CODES, HAND_Y, "none").tolist() == [0, 2, 5, 1, 6, 3, 4]
    sparse = sp.csr_matrix(HAND_CODES.astype(np.float32))
    assert rank_latents(sparse, HAND_Y, "mean").tolist() == [2, 0, 5, 1, 6, 3, 4]
    with pytest.raises(ConfigError, match="normalization"):
        rank_latents(HAND_CODES, HAND_Y, "max")  # type: ignore[arg-type]


def random_codes(n: int, d: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    A = sp.random(n, d, density=density, format="csr", random_state=rng, dtype=np.float32)
    A.data = (A.data * 3.0).astype(np.float32)
    return A


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("normalization", ["mean", "none"])
def test_rank_latents_sparse_and_dense_agree(normalization):
    A = random_codes(80, 300, 0.05, seed=13)
    y = np.arange(80) % 2
    sparse_order = rank_latents(A, y, normalization)
    dense_order = rank_latents(A.toarray(), y, normalization)
    np.testing.assert_array_equal(sparse_order, dense_order)
    dense_t = torch.from_numpy(A.toarray())
    for codes in (dense_t, dense_t.to_sparse(), dense_t.to_sparse_csr()):
        np.testing.assert_array_equal(rank_latents(codes, y, normalization), sparse_order)
    # the peer's formula on dense tensors (sae_probes.run_sae_evals.get_sorted_indices)
    X = torch.from_numpy(A.toarray()).double()
    if normalization == "mean":
        X = X / (X.abs().sum(0) / ((X != 0).sum(0) + 1e-6) + 1e-6)
    score = (X[torch.from_numpy(y) == 1].mean(0) - X[torch.from_numpy(y) == 0].mean(0)).abs()
    nonzero = int((score > 0).sum())
    expected = torch.argsort(score, descending=True, stable=True).numpy()
    np.testing.assert_array_equal(sparse_order[:nonzero], expected[:nonzero])


def test_rank_latents_huge_width_stays_sparse():
    d_sae = 1 << 20
    rng = np.random.default_rng(14)
    n = 40
    rows = np.repeat(np.arange(n), 8)
    cols = rng.integers(0, d_sae, size=rows.size)
    vals = rng.random(rows.size).astype(np.float32) + 0.1
    y = np.arange(n) % 2
    cols[cols == 123_456] = 0  # keep column 123_456 for the planted latent
    pos = np.flatnonzero(y == 1)
    rows, cols = np.r_[rows, pos], np.r_[cols, np.full(pos.size, 123_456)]
    vals = np.r_[vals, np.full(pos.size, 5.0, dtype=np.float32)]  # fires on every positive only
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n, d_sae))
    tracemalloc.start()
    order = rank_latents(A, y)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert order[0] == 123_456 and order.shape == (d_sae,)
    assert peak < 0.25 * n * d_sae * 8  # far below one dense float64 copy (335 MB)
    results = fit_sae_probes(A, y, A, y, ks=[1, 4], Cs=[1.0])
    assert results[0].latents == [123_456] and results[0].test_auc == 1.0


def test_fit_sae_probes_results_per_k():
    A = random_codes(120, 40, 0.2, seed=15)
    y = np.arange(120) % 2
    A = A.tolil()
    A[np.flatnonzero(y == 1), 7] = 2.0  # latent 7 fires on exactly the positives
    A[np.flatnonzero(y == 0), 7] = 0.0
    A = A.tocsr()
    A_train, A_test, y_train, y_test = A[:80], A[80:], y[:80], y[80:]
    order = rank_latents(A_train, y_train)
    assert order[0] == 7
    results = fit_sae_probes(A_train, y_train, A_test, y_test, ks=[1, 4, 40, 64, 100], seed=42)
    assert [r.k for r in results] == [1, 4, 40]  # capped at d_sae = 40, duplicates dropped
    for r in results:
        assert r.method == "sae" and r.variant is None
        assert r.latents == order[: r.k].tolist()
        assert (r.n_train, r.n_test) == (80, 40)
        # the same protocol as the baseline on the dense top-k raw columns
        cols = order[: r.k]
        ref = fit_logreg_probe(
            A_train[:, cols].toarray(), y_train, A_test[:, cols].toarray(), y_test
        )
        assert (r.test_auc, r.val_auc, r.hyperparams) == (
            ref.test_auc,
            ref.val_auc,
            ref.hyperparams,
        )
    assert results[0].test_auc == 1.0


def test_fit_sae_probes_binarize_and_determinism():
    A = random_codes(100, 30, 0.3, seed=16)
    y = (np.arange(100) % 3 == 0).astype(np.int64)
    A_train, A_test, y_train, y_test = A[:70], A[70:], y[:70], y[70:]
    first = fit_sae_probes(A_train, y_train, A_test, y_test, ks=[2, 8], binarize=True)
    second = fit_sae_probes(A_train, y_train, A_test, y_test, ks=[2, 8], binarize=True)
    for a, b in zip(first, second, strict=True):
        da, db = asdict(a), asdict(b)
        da.pop("seconds"), db.pop("seconds")
        assert da == db
    r = first[1]
    assert r.variant == "binarize"
    cols = np.array(r.latents)
    ref = fit_probe_protocol(
        (A_train[:, cols].toarray() != 0).astype(float),
        y_train,
        (A_test[:, cols].toarray() != 0).astype(float),
        y_test,
        method="sae",
    )
    assert r.test_auc == ref.test_auc and r.hyperparams == ref.hyperparams
    none = fit_sae_probes(A_train, y_train, A_test, y_test, ks=[2], normalization="none")
    assert none[0].variant == "rank=none"
    with pytest.raises(ConfigError, match="ks"):
        fit_sae_probes(A_train, y_train, A_test, y_test, ks=[0])
    with pytest.raises(ProbeDataError, match="codes_test"):
        fit_sae_probes(A_train, y_train, A_test[:, :10], y_test, ks=[2])


def test_hessian_factorisations_agree_and_survive_singular_hessians():
    from saelab.probes.logistic import _Problem

    rng = np.random.default_rng(17)
    Z = torch.from_numpy(rng.normal(size=(300, 20)))
    y = torch.from_numpy(np.where(rng.random(300) < 0.5, 1.0, -1.0))
    weights = torch.from_numpy(rng.random((2, 300)))
    prob = _Problem(Z, y, fit_intercept=True)
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


def test_l1_path_is_seeded_and_reaches_the_l1_optimum():
    from saelab.probes.l1 import fit_l1_path

    rng = np.random.default_rng(3)
    X = np.maximum(rng.normal(size=(200, 12)) * 2 - 1, 0)
    y = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=200) > 0).astype(np.int64)
    a = fit_l1_path(X, y, [0.05, 1.0], seed=7)
    b = fit_l1_path(X, y, [0.05, 1.0], seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    coef, intercept = a
    assert (coef[0] == 0).sum() > (coef[1] == 0).sum()  # stronger penalty, sparser
    # optimality: subgradient condition of ||w||_1 + C sum log(1 + exp(-s z)) at C = 1
    s = 2 * y - 1
    z = X @ coef[1] + intercept[1]
    grad = -(X * (s / (1 + np.exp(s * z)))[:, None]).sum(0)
    on = coef[1] != 0
    np.testing.assert_allclose(grad[on], -np.sign(coef[1][on]), atol=2e-2)
    assert np.all(np.abs(grad[~on]) <= 1 + 2e-2)
