"""Tests for saelab.probes.protocol: the paper's validation splits, selection, refit and scoring,
run once for every method and batched over many problems."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from probe_data import noisy_logistic_data, separable_data
from saelab.errors import ProbeDataError
from saelab.probes import (
    C_GRID,
    LogisticMethod,
    LogisticProbe,
    MLPProbe,
    ProbeResult,
    Problem,
    decide_with_estimators,
    fit_baselines,
    roc_auc,
    run_protocol,
    validation_splits,
)
from saelab.probes.protocol import Decisions, validate


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


def _logreg(X_train, y_train, X_test, y_test, seed=42):
    return run_protocol(LogisticMethod(), [Problem(X_train, y_train, X_test, y_test)], seed)[0]


def test_validation_scores_and_first_argmax():
    X, y = noisy_logistic_data(60, 5, seed=8)
    splits = validation_splits(y)
    (v,) = validate(LogisticMethod(), [Problem(X, y, X, y)])
    assert v.mean_auc.shape == (10,) and [s["C"] for s in v.settings] == C_GRID.tolist()
    assert v.chosen == int(np.argmax(v.mean_auc)) and v.mean_auc[v.chosen] == v.mean_auc.max()
    # mean AUC for one C, recomputed fold by fold with sklearn on decision values
    manual = []
    for tr, va in splits:
        ref = LogisticRegression(C=C_GRID[4], tol=1e-12, max_iter=10000).fit(X[tr], y[tr])
        manual.append(roc_auc_score(y[va], ref.decision_function(X[va])))
    assert v.mean_auc[4] == pytest.approx(np.mean(manual), abs=1e-9)
    # Perfectly separable classes: every C scores 1.0, the first (largest) C wins the tie.
    Xs, ys = separable_data(40, 2, seed=9)
    Xs[:, 0] += 20.0 * ys
    (vs,) = validate(LogisticMethod(), [Problem(Xs, ys, Xs, ys)])
    assert vs.chosen == 0 and np.all(vs.mean_auc == vs.mean_auc[0])


def test_leave_two_out_scores_are_pair_aucs():
    X, _ = noisy_logistic_data(10, 3, seed=10)
    y = np.r_[np.ones(5), np.zeros(5)].astype(np.int64)
    assert len(validation_splits(y)) == 25
    (v,) = validate(LogisticMethod(), [Problem(X, y, X, y)])
    # each pair scores 0, 0.5 or 1, so 50 * mean is an integer
    np.testing.assert_allclose(v.mean_auc * 50, np.round(v.mean_auc * 50), atol=1e-9)


def test_single_class_training_fold_scores_half():
    X = np.arange(8.0)[:, None]
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    assert len(validation_splits(y)) == 7  # every mixed pair holds the only positive
    (v,) = validate(LogisticMethod(), [Problem(X, y, X, y)])
    np.testing.assert_array_equal(v.mean_auc, 0.5)
    assert v.chosen == 0


def test_logreg_on_an_easy_problem():
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(150), np.zeros(150)].astype(np.int64)
    rng.shuffle(y)
    X = rng.normal(size=(300, 20))
    X[:, 0] += 2.5 * y
    r = _logreg(X[:200], y[:200], X[200:], y[200:])
    assert isinstance(r, ProbeResult)
    assert r.method == "logreg" and r.k is None and r.latents is None and r.converged
    assert r.test_auc > 0.9 and r.test_acc > 0.8 and r.val_auc > 0.85
    assert r.hyperparams["C"] in C_GRID
    assert (r.n_train, r.n_test) == (200, 100) and r.seconds > 0
    # the refit is the model with the chosen C on all training rows, scored on decision values
    probe = LogisticProbe(C=r.hyperparams["C"]).fit(X[:200], y[:200])
    assert r.test_auc == pytest.approx(
        roc_auc_score(y[200:], probe.decision_function(X[200:])), abs=1e-12
    )
    # torch inputs give the same result; so does the fit_baselines shortcut
    t = _logreg(torch.from_numpy(X[:200]), torch.from_numpy(y[:200]), X[200:], y[200:])
    assert (t.test_auc, t.hyperparams) == (r.test_auc, r.hyperparams)
    (b,) = fit_baselines(X[:200], y[:200], X[200:], y[200:], methods=["logreg"])
    assert (b.test_auc, b.hyperparams) == (r.test_auc, r.hyperparams)


def test_tiny_training_set_uses_default_C_and_training_auc():
    X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9]])
    y = np.array([0, 1, 0])
    r = _logreg(X, y, X, y)
    assert r.hyperparams == {"C": 1.0}
    probe = LogisticProbe(C=1.0).fit(X, y)
    assert r.val_auc == roc_auc_score(y, probe.decision_function(X)) == 1.0


def test_protocol_is_deterministic():
    X, y = noisy_logistic_data(150, 10, seed=12)
    a = asdict(_logreg(X[:100], y[:100], X[100:], y[100:]))
    b = asdict(_logreg(X[:100], y[:100], X[100:], y[100:]))
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_scores_use_decision_values_not_saturated_probabilities():
    # Well separated classes; test rows farther out than the training rows have margins above
    # 37, where float64 expit is exactly 1.0 (or 0.0): a probability AUC would see false ties.
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)
    X = rng.normal(size=(200, 4))
    X[:, 0] += 30.0 * (2 * y - 1)
    X_train, y_train = X[::2], y[::2]
    X_test, y_test = X[1::2].copy(), y[1::2].copy()
    X_test[:, 0] *= 4.0
    y_test[::8] = 1 - y_test[::8]  # some label noise in the test rows, so the order matters
    r = _logreg(X_train, y_train, X_test, y_test)
    probe = LogisticProbe(C=r.hyperparams["C"]).fit(X_train, y_train)
    margins = probe.decision_function(X_test)
    assert np.sum((expit(margins) == 1.0) | (expit(margins) == 0.0)) > 20  # saturated
    assert r.test_auc == pytest.approx(roc_auc_score(y_test, margins), abs=1e-12)
    assert r.test_auc != pytest.approx(roc_auc_score(y_test, expit(margins)), abs=1e-4)


def test_batched_problems_equal_separate_runs():
    problems = []
    for i, (n, d) in enumerate([(2, 6), (9, 6), (40, 6), (150, 6), (40, 6)]):
        X, y = noisy_logistic_data(n + 60, d, seed=20 + i)
        y[:2] = [0, 1]
        y[n : n + 2] = [0, 1]
        problems.append(Problem(X[:n], y[:n], X[n:], y[n:], info={"i": i}))
    for method in (LogisticMethod("l2"), LogisticMethod("l1")):
        together = run_protocol(method, problems)
        for p, r in zip(problems, together, strict=True):
            (alone,) = run_protocol(method, [p])
            assert r.info == p.info
            assert r.hyperparams == alone.hyperparams
            assert r.test_auc == pytest.approx(alone.test_auc, abs=1e-9)
            assert r.val_auc == pytest.approx(alone.val_auc, abs=1e-9)


def test_batched_decide_equals_the_estimator_loop():
    X, y = noisy_logistic_data(80, 7, seed=30)
    problems = [Problem(X[:30], y[:30], X[30:], y[30:]), Problem(X[:70], y[:70], X[70:], y[70:])]
    method = LogisticMethod()
    from saelab.probes.protocol import FitTask

    tasks = [
        FitTask(p.X_train, p.y_train, p.X_test, method.candidates(p.X_train, [])) for p in problems
    ]
    for fast, slow in zip(method.decide(tasks), decide_with_estimators(method, tasks), strict=True):
        np.testing.assert_allclose(fast.values, slow.values, rtol=1e-7, atol=1e-7)
        np.testing.assert_array_equal(fast.converged, slow.converged)


def test_a_fit_that_stops_at_its_cap_is_flagged():
    class CappedMLP:
        name = "mlp"

        def candidates(self, X_train, splits):
            return [{"max_iter": 2}]

        def default_setting(self, X_train):
            return {"max_iter": 2}

        def estimator(self, setting):
            return MLPProbe(hidden_layer_sizes=(4,), **setting)

        def decide(self, tasks):
            return decide_with_estimators(self, tasks)

        def fingerprint(self):
            return {}

    X, y = noisy_logistic_data(80, 4, seed=31)
    (r,) = run_protocol(CappedMLP(), [Problem(X[:50], y[:50], X[50:], y[50:])])
    assert r.converged is False
    assert _logreg(X[:50], y[:50], X[50:], y[50:]).converged is True


def test_bad_problems_name_what_is_wrong():
    X, y = noisy_logistic_data(20, 3, seed=6)
    with pytest.raises(ProbeDataError, match="y_train"):
        _logreg(X, y + 1, X, y)
    with pytest.raises(ProbeDataError, match="y_test"):
        _logreg(X, y, X, np.zeros(20, dtype=np.int64))
    with pytest.raises(ProbeDataError, match="problem 1: X_test: expected 3 columns"):
        run_protocol(LogisticMethod(), [Problem(X, y, X, y), Problem(X, y, X[:, :2], y)])
    assert Decisions(np.zeros((1, 2)), np.ones(1, dtype=bool)).values.shape == (1, 2)
