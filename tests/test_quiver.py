"""Tests for saelab.probes.quiver: the PCA, KNN, XGBoost and MLP baselines and the registry."""

from __future__ import annotations

import json
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

import saelab.probes.quiver as quiver
from saelab.errors import ConfigError
from saelab.probes import (
    BASELINES,
    MLP_GRID,
    XGB_GRID,
    KNNProbe,
    MLPProbe,
    PCAProbe,
    ProbeDataError,
    ProbeResult,
    XGBoostProbe,
    draw_configurations,
    fit_baselines,
    fit_knn_probe,
    fit_logreg_probe,
    fit_mlp_probe,
    fit_pca_probe,
    fit_xgboost_probe,
    mean_validation_auc,
    power_of_two_grid,
    validation_splits,
)
from saelab.probes.quiver import MLP_DEFAULTS, XGB_DEFAULTS

FITS = {
    "pca": fit_pca_probe,
    "knn": fit_knn_probe,
    "xgboost": fit_xgboost_probe,
    "mlp": fit_mlp_probe,
}


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


def test_draw_configurations_distinct_seeded_and_json_ready():
    configs = draw_configurations(XGB_GRID, 10, seed=42)
    assert len(configs) == 10
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 10
    assert all(in_grid(c, XGB_GRID) for c in configs)
    assert configs == draw_configurations(XGB_GRID, 10, seed=42)
    assert configs != draw_configurations(XGB_GRID, 10, seed=43)
    json.dumps(configs)  # plain Python values only
    small = {"a": (1, 2), "b": ((3,), (4, 5))}
    every = draw_configurations(small, 10, seed=0)  # capped at the 4 combinations
    assert sorted(json.dumps(c) for c in every) == sorted(
        json.dumps({"a": a, "b": list(b)}) for a in (1, 2) for b in ((3,), (4, 5))
    )
    with pytest.raises(ConfigError, match="n_configs"):
        draw_configurations(small, 0)


# ----------------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", list(FITS))
def test_each_method_learns_an_easy_problem(method):
    X, y = easy_data(300, 6, seed=1)
    r = FITS[method](X[:200], y[:200], X[200:], y[200:], seed=42)
    assert isinstance(r, ProbeResult) and r.method == method
    assert r.k is None and r.latents is None and r.variant is None
    assert r.test_auc > 0.9 and r.val_auc > 0.9 and r.test_acc > 0.8
    assert (r.n_train, r.n_test) == (200, 100) and r.seconds > 0
    hp = r.hyperparams
    if method == "pca":
        assert hp["n_components"] in power_of_two_grid(6)
        probe = PCAProbe(**hp)
    elif method == "knn":
        assert hp["n_neighbors"] in power_of_two_grid(min(199, 100, 160))
        probe = KNNProbe(**hp)
    elif method == "xgboost":
        assert in_grid(hp, XGB_GRID)
        probe = XGBoostProbe(**hp, random_state=42)
    else:
        assert in_grid(hp, MLP_GRID)
        probe = MLPProbe(**hp, random_state=42)
    # the reported scores are those of the chosen setting refitted on all training rows
    p = probe.fit(X[:200], y[:200]).predict_proba(X[200:])[:, 1]
    assert r.test_auc == pytest.approx(roc_auc_score(y[200:], p), abs=1e-12)
    assert r.test_acc == pytest.approx(np.mean((p > 0.5) == y[200:]), abs=1e-12)


@pytest.mark.parametrize("method", list(FITS))
def test_same_seed_same_result(method):
    X, y = noisy_data(90, 5, seed=2)
    kwargs = {"n_configs": 3} if method == "mlp" else {}  # 6 folds x 3 MLPs, twice
    first = FITS[method](X[:60], y[:60], X[60:], y[60:], seed=7, **kwargs)  # 6-fold regime
    second = FITS[method](
        torch.from_numpy(X[:60]), y[:60], X[60:], torch.from_numpy(y[60:]), 7, **kwargs
    )
    assert without_seconds(first) == without_seconds(second)


def test_pca_validation_fits_scaler_and_pca_inside_each_fold():
    X, y = noisy_data(60, 8, seed=3)
    X_test, y_test = noisy_data(40, 8, seed=4)
    r = fit_pca_probe(X, y, X_test, y_test, seed=42)
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
            aucs.append(roc_auc_score(y[val], ref.predict_proba(X[val])[:, 1]))
        manual.append(np.mean(aucs))
    best = int(np.argmax(manual))
    assert r.hyperparams == {"n_components": grid[best]}
    assert r.val_auc == pytest.approx(manual[best], abs=1e-9)
    # the paper's variant (scaler and PCA fitted on all 60 rows first) scores differently
    Z = PCA(grid[best]).fit_transform(StandardScaler().fit_transform(X))
    leaky = np.mean(
        [
            roc_auc_score(y[va], LogisticRegression().fit(Z[tr], y[tr]).predict_proba(Z[va])[:, 1])
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

    monkeypatch.setattr(quiver, "PCA", SpyPCA)
    monkeypatch.setattr(quiver, "StandardScaler", SpyScaler)
    X, y = noisy_data(20, 30, seed=5)  # maxc = min(20, 30, 100) = 20 > every fold's rows
    r = fit_pca_probe(X, y, X, y, seed=42)
    fold_rows = sorted(len(tr) for tr, _ in validation_splits(y, seed=42))
    pca_fits = [(rows, c) for kind, rows, c in fits if kind == "pca"]
    scaler_rows = [rows for kind, rows, _ in fits if kind == "scaler"]
    # one scaler and one PCA per fold on the fold's training rows, then one of each for the refit
    assert sorted(rows for rows, _ in pca_fits[:-1]) == fold_rows
    assert sorted(scaler_rows[:-1]) == fold_rows
    assert pca_fits[-1][0] == scaler_rows[-1] == 20
    assert all(c <= rows for rows, c in pca_fits)  # capped at the fold's size
    assert max(power_of_two_grid(20)) == 20 and r.hyperparams["n_components"] in power_of_two_grid(
        20
    )


def test_knn_neighbour_path_matches_separate_fits_and_manual_validation():
    X, y = noisy_data(60, 4, seed=6)
    probe = KNNProbe(n_neighbors=12).fit(X[:40], y[:40])
    path = probe.proba_for_neighbors(X[40:], [1, 3, 12])
    for row, k in enumerate([1, 3, 12]):
        single = KNNProbe(n_neighbors=k).fit(X[:40], y[:40]).predict_proba(X[40:])[:, 1]
        np.testing.assert_array_equal(path[row], single)
    with pytest.raises(ConfigError, match="ks"):
        probe.proba_for_neighbors(X[40:], [13])
    with pytest.raises(ConfigError, match="n_neighbors"):
        KNNProbe(n_neighbors=41).fit(X[:40], y[:40])
    r = fit_knn_probe(X, y, X[:20], y[:20], seed=42)
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
    r = fit_mlp_probe(X, y, X_test, y_test, seed=3, n_configs=4)
    configs = draw_configurations(MLP_GRID, 4, seed=3)
    assert len({json.dumps(c) for c in configs}) == 4
    # hold-out regime: one validation fit per configuration, then the refit of the winner
    assert len(fitted) == 5
    for params, config in zip(fitted[:4], configs, strict=True):
        assert {k: params[k] for k in config} == config and params["random_state"] == 3
    ((train, val),) = validation_splits(y, seed=3)
    aucs = [
        roc_auc_score(
            y[val],
            real_fit(MLPProbe(**c, random_state=3), X[train], y[train]).predict_proba(X[val])[:, 1],
        )
        for c in configs
    ]
    assert len(set(aucs)) > 1  # the choice is not a tie
    best = int(np.argmax(aucs))
    assert r.hyperparams == configs[best]
    assert r.val_auc == pytest.approx(aucs[best], abs=1e-12)
    assert {k: fitted[-1][k] for k in configs[best]} == configs[best]


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
    for method, (hyperparams, probe) in expected.items():
        r = FITS[method](X, y, X_test, y_test, seed=42)
        assert r.hyperparams == hyperparams, method
        probe.fit(X, y)
        assert r.val_auc == roc_auc_score(y, probe.predict_proba(X)[:, 1]), method
        assert r.test_auc == roc_auc_score(y_test, probe.predict_proba(X_test)[:, 1]), method
    assert fit_knn_probe(X, y, X_test, y_test).val_auc == 1.0  # k = 1 on its own rows
    # with <= 3 rows no XGBoost tree can split (Hessians sum to < min_child_weight = 1)
    assert fit_xgboost_probe(X, y, X_test, y_test).test_auc == 0.5


def test_xgboost_tiny_path_scales_the_test_rows(monkeypatch):
    seen: list[np.ndarray] = []
    real = xgboost.XGBClassifier.predict_proba

    def spy(self, X, *args, **kwargs):
        seen.append(np.array(X))
        return real(self, X, *args, **kwargs)

    monkeypatch.setattr(xgboost.XGBClassifier, "predict_proba", spy)
    X = np.array([[0.0, 100.0], [1.0, 300.0], [4.0, 200.0]])
    y = np.array([0, 1, 1])
    X_test = np.array([[2.0, 250.0], [0.5, 90.0], [9.0, 400.0]])
    fit_xgboost_probe(X, y, X_test, np.array([0, 1, 0]))
    scaled_test = (X_test - X.mean(0)) / X.std(0)
    assert len(seen) == 2  # training rows (val_auc), then test rows
    np.testing.assert_allclose(seen[1], scaled_test.astype(np.float32), rtol=1e-6)


def test_single_class_training_part_scores_half():
    X, y = easy_data(8, 2, seed=10)
    ones = np.flatnonzero(y == 1)
    zeros = np.flatnonzero(y == 0)
    mixed = (np.r_[ones[:2], zeros[:2]], np.r_[ones[2:], zeros[2:]])
    one_class = (ones[:3], np.r_[ones[3:], zeros])

    def fold_proba(X_tr, y_tr, X_val):
        assert np.unique(y_tr).size == 2
        return np.stack([X_val[:, 0], -X_val[:, 0]])

    auc = mean_validation_auc(X, y, [mixed, one_class], 2, fold_proba)
    first = roc_auc_score(y[mixed[1]], X[mixed[1], 0])
    np.testing.assert_allclose(auc, [(first + 0.5) / 2, (1 - first + 0.5) / 2])
    with pytest.raises(ProbeDataError, match="fold_proba"):
        mean_validation_auc(X, y, [mixed], 3, fold_proba)


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
        fit_pca_probe(X, y, X[:, :2], y)
    with pytest.raises(ProbeDataError, match="y_train"):
        fit_knn_probe(X, np.zeros(20, dtype=np.int64), X, y)
    bad = X.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ProbeDataError, match="row 4"):
        fit_mlp_probe(bad, y, X, y)
    with pytest.raises(ConfigError, match="max_components"):
        fit_pca_probe(X, y, X, y, max_components=0)


# ----------------------------------------------------------------------------------- registry


def test_registry_names_and_fit_baselines():
    assert list(BASELINES) == ["logreg", "pca", "knn", "xgboost", "mlp"]
    assert BASELINES["logreg"] is fit_logreg_probe
    X, y = easy_data(120, 4, seed=13)
    results = fit_baselines(X[:80], y[:80], X[80:], y[80:], methods=["logreg", "pca", "knn"])
    assert [r.method for r in results] == ["logreg", "pca", "knn"]
    for r in results:
        again = BASELINES[r.method](X[:80], y[:80], X[80:], y[80:], seed=42)
        assert without_seconds(again) == without_seconds(r)
    tiny = [BASELINES[m](X[:3], np.array([0, 1, 0]), X, y, seed=42) for m in BASELINES]
    assert [r.method for r in tiny] == list(BASELINES)
    with pytest.raises(ConfigError, match="svm"):
        fit_baselines(X, y, X, y, methods=["svm"])
