"""Tests for saelab.probes.baselines: the paper's five baselines as estimators and protocol methods."""

from __future__ import annotations

import json
import random
from dataclasses import asdict

import numpy as np
import pytest
import torch
import xgboost
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import saelab.probes.baselines as baselines
from saelab.errors import ConfigError
from saelab.names import BASELINES as BASELINE_NAMES
from saelab.probes import (
    BASELINES,
    MLP_DEFAULTS,
    XGB_DEFAULTS,
    XGB_GRID,
    KNNMethod,
    KNNProbe,
    MLPMethod,
    MLPProbe,
    PCAMethod,
    PCAProbe,
    ProbeDataError,
    ProbeResult,
    Problem,
    XGBoostProbe,
    baseline_method,
    decide_with_estimators,
    fit_baselines,
    mlp_configurations,
    power_of_two_grid,
    run_protocol,
    validation_splits,
    xgboost_configurations,
)
from saelab.probes.baselines import MLP_ALPHAS, MLP_HIDDEN_SIZES, MLP_LEARNING_RATES
from saelab.probes.protocol import FitTask

METHODS = ("pca", "knn", "xgboost", "mlp")


def fit(name, X_train, y_train, X_test, y_test, seed=42, method=None):
    """One baseline through the protocol on one split."""
    method = method or baseline_method(name, seed=seed)
    return run_protocol(method, [Problem(X_train, y_train, X_test, y_test)], seed)[0]


def easy_data(n: int, d: int, seed: int, shift: float = 3.0):
    """Balanced labels in random order; column 0 shifted by ``shift`` for the positives."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(y)
    X = rng.normal(size=(n, d))
    X[:, 0] += shift * y
    X[:, 1] = 5.0 * X[:, 1] + 10.0  # a column on another scale, for the scaler to matter
    return X, y


def noisy_data(n: int, d: int, seed: int):
    """Labels from a noisy logistic model on all columns (validation AUCs well below 1)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = X @ rng.normal(size=d)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    return X, y


def in_grid(config: dict, grid: dict) -> bool:
    return set(config) == set(grid) and all(
        any(
            json.dumps(config[k]) == json.dumps(list(v) if isinstance(v, tuple) else v)
            for v in grid[k]
        )
        for k in grid
    )


def without_seconds(result: ProbeResult) -> dict:
    out = asdict(result)
    out.pop("seconds")
    return out


# ----------------------------------------------------------------------------------- grids


def test_power_of_two_grid_is_the_papers_formula():
    assert power_of_two_grid(100) == [1, 2, 4, 7, 12, 21, 35, 59, 99]
    for m in [1, 2, 3, 7, 10, 41, 923]:
        expected = np.unique(np.logspace(0, np.log2(m), num=10, base=2, dtype=int)).tolist()
        assert power_of_two_grid(m) == expected
    with pytest.raises(ConfigError, match="positive"):
        power_of_two_grid(0)


def test_xgboost_configurations_are_the_peers_draws_in_its_order():
    # sae-probes 0.4.2 find_best_xgboost: rng = random.Random(seed); for each of 10 draws,
    # {k: rng.choice(list(v)) for k, v in param_space.items()} (param_space as in its source)
    param_space = {
        "n_estimators": np.arange(50, 300, step=50),
        "max_depth": np.arange(2, 6),
        "learning_rate": np.logspace(-3, -1, num=10),
        "subsample": np.linspace(0.7, 1.0, num=5),
        "colsample_bytree": np.linspace(0.7, 1.0, num=5),
        "reg_alpha": np.logspace(-3, 1, num=10),
        "reg_lambda": np.logspace(-3, 1, num=10),
        "min_child_weight": np.arange(1, 10),
    }
    for seed in (42, 0):
        rng = random.Random(seed)
        peer = []
        for _ in range(10):
            draw = {k: rng.choice(list(v)).item() for k, v in param_space.items()}
            if draw not in peer:
                peer.append(draw)
        ours = xgboost_configurations(10, seed)
        assert len(ours) == len(peer)
        for a, b in zip(ours, peer, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-12), key
    json.dumps(xgboost_configurations(10, 42))  # plain Python values only
    assert list(XGB_GRID) == list(param_space)


def test_mlp_configurations_start_with_the_peers_single_draw():
    configs = mlp_configurations(5, seed=42)
    assert configs[0] == {
        "hidden_layer_sizes": [16, 16, 16],
        "learning_rate_init": pytest.approx(10**-2.5),
        "alpha": pytest.approx(1e-2),
    }
    # the peer's draw, from its source (find_best_mlp with n_iter=1)
    rng = np.random.RandomState(7)
    peer = {
        "hidden_layer_sizes": list(MLP_HIDDEN_SIZES[rng.randint(9)]),
        "learning_rate_init": float(MLP_LEARNING_RATES[rng.randint(5)]),
        "alpha": float(rng.choice(np.asarray(MLP_ALPHAS))),
    }
    assert mlp_configurations(3, seed=7)[0] == peer
    assert len({json.dumps(c) for c in configs}) == 5
    with pytest.raises(ConfigError, match="n_configs"):
        mlp_configurations(0)


# ----------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", METHODS)
def test_each_method_learns_an_easy_problem(name):
    X, y = easy_data(300, 6, seed=1)
    r = fit(name, X[:200], y[:200], X[200:], y[200:])
    assert isinstance(r, ProbeResult) and r.method == name
    assert r.k is None and r.latents is None and r.variant is None
    assert r.test_auc > 0.9 and r.val_auc > 0.9 and r.test_acc > 0.8
    assert (r.n_train, r.n_test) == (200, 100) and r.seconds > 0
    probe = baseline_method(name).estimator(r.hyperparams)
    # the reported scores are those of the chosen setting refitted on all training rows
    d = probe.fit(X[:200], y[:200]).decision_function(X[200:])
    assert r.test_auc == pytest.approx(roc_auc_score(y[200:], d), abs=1e-9)
    assert r.test_acc == pytest.approx(np.mean((d > 0) == y[200:]), abs=1e-12)
    np.testing.assert_array_equal(probe.predict(X[200:]), (d > 0).astype(int))


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_result(name):
    X, y = noisy_data(90, 5, seed=2)
    method = MLPMethod(seed=7, n_configs=3) if name == "mlp" else baseline_method(name, seed=7)
    first = fit(name, X[:60], y[:60], X[60:], y[60:], seed=7, method=method)  # 6-fold regime
    second = fit(
        name, torch.from_numpy(X[:60]), y[:60], X[60:], torch.from_numpy(y[60:]), 7, method
    )
    assert without_seconds(first) == without_seconds(second)


@pytest.mark.parametrize("method", [PCAMethod(), KNNMethod()], ids=lambda m: m.name)
def test_batched_decide_equals_the_estimator_loop(method):
    X, y = noisy_data(120, 7, seed=14)
    tasks = []
    for n in (10, 40, 90):
        splits = validation_splits(y[:n])
        tasks.append(FitTask(X[:n], y[:n], X[100:], method.candidates(X[:n], splits)))
    for fast, slow in zip(method.decide(tasks), decide_with_estimators(method, tasks), strict=True):
        np.testing.assert_allclose(fast.values, slow.values, rtol=1e-7, atol=1e-9)


def test_pca_validation_fits_scaler_and_pca_inside_each_fold():
    X, y = noisy_data(60, 8, seed=3)
    X_test, y_test = noisy_data(40, 8, seed=4)
    r = fit("pca", X, y, X_test, y_test)
    # the mean validation AUC per number of components, recomputed fold by fold with sklearn
    splits = validation_splits(y, seed=42)
    grid = power_of_two_grid(8)
    manual = []
    for c in grid:
        aucs = []
        for train, val in splits:
            ref = make_pipeline(
                StandardScaler(), PCA(c), LogisticRegression(C=1.0, tol=1e-12, max_iter=10000)
            ).fit(X[train], y[train])
            aucs.append(roc_auc_score(y[val], ref.decision_function(X[val])))
        manual.append(np.mean(aucs))
    best = int(np.argmax(manual))
    assert r.hyperparams == {"n_components": grid[best]}
    assert r.val_auc == pytest.approx(manual[best], abs=1e-9)
    # the paper's variant (scaler and PCA fitted on all 60 rows first) scores differently
    Z = PCA(grid[best]).fit_transform(StandardScaler().fit_transform(X))
    leaky = np.mean(
        [
            roc_auc_score(y[va], LogisticRegression().fit(Z[tr], y[tr]).decision_function(Z[va]))
            for tr, va in splits
        ]
    )
    assert abs(leaky - r.val_auc) > 1e-6


def test_pca_spy_sees_fold_rows_and_caps_components(monkeypatch):
    fits: list[tuple[str, int, int]] = []

    class SpyPCA(PCA):
        def fit_transform(self, X, y=None):
            fits.append(("pca", X.shape[0], self.n_components))
            return super().fit_transform(X, y)

    class SpyScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            fits.append(("scaler", X.shape[0], 0))
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(baselines, "PCA", SpyPCA)
    monkeypatch.setattr(baselines, "StandardScaler", SpyScaler)
    X, y = noisy_data(20, 30, seed=5)  # maxc = min(20, 30, 100) = 20 > every fold's rows
    r = fit("pca", X, y, X, y)
    fold_rows = sorted(len(tr) for tr, _ in validation_splits(y, seed=42))
    pca_fits = [(rows, c) for kind, rows, c in fits if kind == "pca"]
    scaler_rows = [rows for kind, rows, _ in fits if kind == "scaler"]
    # one scaler and one PCA per fold on the fold's training rows, then one of each for the refit
    assert sorted(rows for rows, _ in pca_fits[:-1]) == fold_rows
    assert sorted(scaler_rows[:-1]) == fold_rows
    assert pca_fits[-1][0] == scaler_rows[-1] == 20
    assert all(c <= rows for rows, c in pca_fits)  # capped at the fold's size
    assert r.hyperparams["n_components"] in power_of_two_grid(20)


def test_knn_matches_scikit_learn_and_manual_validation():
    X, y = noisy_data(60, 4, seed=6)
    for k in (1, 3, 12):
        ours = KNNProbe(n_neighbors=k).fit(X[:40], y[:40]).predict_proba(X[40:])[:, 1]
        ref = make_pipeline(StandardScaler(), KNeighborsClassifier(k)).fit(X[:40], y[:40])
        np.testing.assert_array_equal(ours, ref.predict_proba(X[40:])[:, 1])
        np.testing.assert_array_equal(
            KNNProbe(n_neighbors=k).fit(X[:40], y[:40]).predict(X[40:]), ref.predict(X[40:])
        )
    with pytest.raises(ConfigError, match="n_neighbors"):
        KNNProbe(n_neighbors=41).fit(X[:40], y[:40])
    r = fit("knn", X, y, X[:20], y[:20])
    splits = validation_splits(y, seed=42)
    grid = power_of_two_grid(min(59, 100, min(len(tr) for tr, _ in splits)))
    manual = [
        np.mean(
            [
                roc_auc_score(
                    y[va],
                    make_pipeline(StandardScaler(), KNeighborsClassifier(k))
                    .fit(X[tr], y[tr])
                    .predict_proba(X[va])[:, 1],
                )
                for tr, va in splits
            ]
        )
        for k in grid
    ]
    best = int(np.argmax(manual))
    assert r.hyperparams == {"n_neighbors": grid[best]}
    assert r.val_auc == pytest.approx(manual[best], abs=1e-12)


def test_mlp_draws_several_configurations_and_selects_by_validation_auc(monkeypatch):
    X, y = noisy_data(200, 6, seed=7)
    X_test, y_test = noisy_data(60, 6, seed=8)
    fitted: list[dict] = []
    real_fit = MLPProbe.fit

    def spy_fit(self, X_, y_):
        fitted.append(self.get_params())
        return real_fit(self, X_, y_)

    monkeypatch.setattr(MLPProbe, "fit", spy_fit)
    method = MLPMethod(seed=3, n_configs=4)
    r = fit("mlp", X, y, X_test, y_test, seed=3, method=method)
    configs = mlp_configurations(4, seed=3)
    # hold-out regime: one validation fit per configuration, then the refit of the winner
    assert len(fitted) == 5
    for params, config in zip(fitted[:4], configs, strict=True):
        assert {k: params[k] for k in config} == config and params["random_state"] == 3
    ((train, val),) = validation_splits(y, seed=3)
    aucs = [
        roc_auc_score(
            y[val],
            real_fit(MLPProbe(**c, random_state=3), X[train], y[train]).decision_function(X[val]),
        )
        for c in configs
    ]
    assert len(set(aucs)) > 1  # the choice is not a tie
    best = int(np.argmax(aucs))
    assert r.hyperparams == configs[best]
    assert r.val_auc == pytest.approx(aucs[best], abs=1e-12)


def test_mlp_and_xgboost_decisions_are_logits_of_their_probabilities():
    X, y = easy_data(120, 4, seed=15)
    mlp = MLPProbe(hidden_layer_sizes=[8], learning_rate_init=1e-2).fit(X, y)
    p = mlp.predict_proba(X)[:, 1]
    ok = (p > 1e-5) & (p < 1 - 1e-5)
    np.testing.assert_allclose(
        mlp.decision_function(X)[ok], np.log(p[ok] / (1 - p[ok])), rtol=1e-3, atol=1e-3
    )
    xgb = XGBoostProbe(n_estimators=30, max_depth=2).fit(X, y)
    q = xgb.predict_proba(X)[:, 1]
    np.testing.assert_allclose(xgb.decision_function(X), np.log(q / (1 - q)), rtol=1e-4, atol=1e-4)


def test_tiny_training_sets_use_the_papers_defaults():
    X = np.array([[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 2.5, 0.1], [0.2, 0.9, 1.0, 0.3]])
    y = np.array([0, 1, 0])
    X_test, y_test = easy_data(30, 4, seed=9)
    expected = {
        "pca": ({"n_components": 3}, PCAProbe(n_components=3)),
        "knn": ({"n_neighbors": 1}, KNNProbe(n_neighbors=1)),
        "xgboost": (XGB_DEFAULTS, XGBoostProbe(**XGB_DEFAULTS, random_state=42)),
        "mlp": (MLP_DEFAULTS, MLPProbe(hidden_layer_sizes=(32,), random_state=42)),
    }
    for name, (hyperparams, probe) in expected.items():
        r = fit(name, X, y, X_test, y_test)
        assert r.hyperparams == hyperparams, name
        probe.fit(X, y)
        assert r.val_auc == roc_auc_score(y, probe.decision_function(X)), name
        assert r.test_auc == roc_auc_score(y_test, probe.decision_function(X_test)), name
    assert fit("knn", X, y, X_test, y_test).val_auc == 1.0  # k = 1 on its own rows
    # with <= 3 rows no XGBoost tree can split (Hessians sum to < min_child_weight = 1)
    assert fit("xgboost", X, y, X_test, y_test).test_auc == 0.5


def test_xgboost_tiny_path_scales_the_test_rows(monkeypatch):
    seen: list[np.ndarray] = []
    real = xgboost.XGBClassifier.predict

    def spy(self, X, *args, **kwargs):
        seen.append(np.array(X))
        return real(self, X, *args, **kwargs)

    monkeypatch.setattr(xgboost.XGBClassifier, "predict", spy)
    X = np.array([[0.0, 100.0], [1.0, 300.0], [4.0, 200.0]])
    y = np.array([0, 1, 1])
    X_test = np.array([[2.0, 250.0], [0.5, 90.0], [9.0, 400.0]])
    fit("xgboost", X, y, X_test, np.array([0, 1, 0]))
    scaled = (np.r_[X_test, X] - X.mean(0)) / X.std(0)
    assert len(seen) == 1  # test rows and training rows (val_auc) in one call
    np.testing.assert_allclose(seen[0], scaled.astype(np.float32), rtol=1e-6)


def test_single_class_training_part_scores_half():
    X, y = easy_data(8, 2, seed=10)
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    r = fit("knn", X, y, X, y)
    assert r.val_auc == 0.5  # every mixed pair holds the only positive


# ----------------------------------------------------------------------------------- contract


@pytest.mark.parametrize(
    "probe",
    [
        PCAProbe(n_components=2),
        KNNProbe(n_neighbors=3),
        XGBoostProbe(n_estimators=20, max_depth=2),
        MLPProbe(hidden_layer_sizes=[8], learning_rate_init=1e-2),
    ],
)
def test_estimator_contract(probe):
    X, y = easy_data(60, 4, seed=11)
    twin = clone(probe)
    assert twin.get_params() == probe.get_params()
    proba = probe.fit(X, y).predict_proba(X)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert set(probe.predict(X).tolist()) <= {0, 1} and probe.n_features_in_ == 4
    assert probe.decision_function(X).shape == (60,)
    np.testing.assert_array_equal(
        twin.fit(torch.from_numpy(X).float(), torch.from_numpy(y)).predict_proba(X).round(5),
        probe.fit(X.astype(np.float32), y).predict_proba(X).round(5),
    )
    with pytest.raises(ProbeDataError, match="features"):
        probe.predict_proba(X[:, :3])
    with pytest.raises(ProbeDataError, match="two classes"):
        clone(probe).fit(X, np.zeros(60, dtype=np.int64))


def test_bad_inputs_name_what_is_wrong():
    X, y = easy_data(20, 3, seed=12)
    with pytest.raises(ProbeDataError, match="X_test"):
        fit("pca", X, y, X[:, :2], y)
    with pytest.raises(ProbeDataError, match="y_train"):
        fit("knn", X, np.zeros(20, dtype=np.int64), X, y)
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ProbeDataError, match="row 4"):
        fit("mlp", bad, y, X, y)
    with pytest.raises(ConfigError, match="max_components"):
        PCAMethod(max_components=0)
    with pytest.raises(ConfigError, match="svm"):
        baseline_method("svm")


# ----------------------------------------------------------------------------------- registry


def test_registry_names_and_fit_baselines():
    assert tuple(BASELINES) == BASELINE_NAMES == ("logreg", "pca", "knn", "xgboost", "mlp")
    X, y = easy_data(120, 4, seed=13)
    results = fit_baselines(X[:80], y[:80], X[80:], y[80:], methods=["logreg", "pca", "knn"])
    assert [r.method for r in results] == ["logreg", "pca", "knn"]
    for r in results:
        again = fit(r.method, X[:80], y[:80], X[80:], y[80:])
        assert without_seconds(again) == without_seconds(r)
    tiny = [fit(m, X[:3], np.array([0, 1, 0]), X, y) for m in BASELINES]
    assert [r.method for r in tiny] == list(BASELINES)
