"""SAE-ception's per-cycle metrics against hand computations, scikit-learn, scipy and transformers
(saelab.ception.metrics)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import entropy
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    calinski_harabasz_score,
    davies_bouldin_score,
    explained_variance_score,
    mean_squared_error,
    mutual_info_score,
    silhouette_score,
)
from sklearn.preprocessing import StandardScaler

from saelab.ception.metrics import (
    class_selectivity,
    classification_metrics,
    clustering_metrics,
    monosemanticity,
    perplexity_from,
    probe_accuracy,
    sae_quality,
    shifted_nll,
    uncertainty_coefficient,
)
from saelab.ception.names import METRIC_NAMES

# ------------------------------------------------------------------------------------------------
# classification


def test_classification_metrics_by_hand():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = classification_metrics(y_true, y_pred)
    # F1: class 0 P = R = 1/2 -> 0.5; class 1 P = 2/3, R = 1 -> 0.8; class 2 never predicted -> 0
    assert m == pytest.approx({"accuracy": 0.6, "f1_macro": 1.3 / 3, "f1_weighted": 2.6 / 5})
    assert all(type(v) is float for v in m.values())
    assert set(m) <= set(METRIC_NAMES)
    empty = classification_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert all(math.isnan(v) for v in empty.values())


# ------------------------------------------------------------------------------------------------
# class selectivity


def test_csi_hand_cases():
    y = np.array([0, 0, 1, 1])
    x = np.array(
        [
            [0.0, 2.0, 0.0, -1.0],
            [0.0, 2.0, 0.0, -3.0],
            [3.0, 2.0, 0.0, -2.0],
            [5.0, 2.0, 0.0, -1.0],
        ]
    )
    csi = class_selectivity(x, y)
    # fires only for class 1 -> 1; equal firing -> 0; never fires / only negative -> 0
    assert csi == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-9)


def test_csi_three_classes_rectified_and_canonical_mean():
    y = np.array([0, 0, 1, 1, 2, 2])
    col_a = [1.0, 3.0, 4.0, 4.0, 0.0, 0.0]  # class means 2, 4, 0 -> (4 - 1) / (4 + 1)
    col_b = [-5.0, 1.0, 4.0, 4.0, -1.0, -1.0]  # rectified means 0.5, 4, 0 -> 3.75 / 4.25
    csi = class_selectivity(np.array([col_a, col_b]).T, y, n_classes=3)
    assert csi == pytest.approx([0.6, 3.75 / 4.25])
    # unbalanced classes: mu_notmax is the mean of the other class means (4, 1, 0 -> 0.5), not
    # the pooled mean of the other rows ((1 + 1 + 1 + 0) / 4 = 0.75)
    y_unbal = np.array([0, 1, 1, 1, 2])
    col = np.array([[4.0], [1.0], [1.0], [1.0], [0.0]])
    assert class_selectivity(col, y_unbal)[0] == pytest.approx(3.5 / 4.5)


def test_csi_absent_classes_and_one_class():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(30, 7))
    y = gen.integers(0, 2, size=30)
    expected = class_selectivity(x, y)
    # the same two classes named 1 and 3 out of 5: absent classes are ignored
    relabelled = np.where(y == 0, 1, 3)
    assert class_selectivity(x, relabelled, n_classes=5) == pytest.approx(expected)
    assert np.all(np.isnan(class_selectivity(x, np.full(30, 2), n_classes=3)))
    assert np.all((expected >= 0) & (expected <= 1))
    with pytest.raises(ValueError, match="n_classes"):
        class_selectivity(x, y, n_classes=1)


# ------------------------------------------------------------------------------------------------
# uncertainty coefficient


def test_uncertainty_coefficient_equals_sklearn_and_scipy():
    gen = np.random.default_rng(1)
    n, f = 300, 40
    y = gen.choice(4, size=n, p=[0.1, 0.2, 0.3, 0.4])
    rates = gen.uniform(0.01, 0.9, size=f)
    x = np.where(gen.uniform(size=(n, f)) < rates, gen.exponential(size=(n, f)), 0.0)
    # make some units depend on the label
    x[:, :5] += (y[:, None] == np.arange(5)[None, :] % 4) * 2.0
    u = uncertainty_coefficient(x, y)
    h_y = entropy(np.bincount(y))
    for j in range(f):
        expected = mutual_info_score((x[:, j] > 0).astype(int), y) / h_y
        assert u[j] == pytest.approx(expected, abs=1e-10)
    # nonzero threshold
    u_t = uncertainty_coefficient(x, y, threshold=0.5)
    for j in (0, 7, 19):
        expected = mutual_info_score((x[:, j] > 0.5).astype(int), y) / h_y
        assert u_t[j] == pytest.approx(expected, abs=1e-10)
    # binary X: U <= log 2 / H(Y)
    assert np.all(u <= math.log(2) / h_y + 1e-12)


def test_uncertainty_coefficient_edge_units():
    y = np.array([0, 0, 1, 1])
    x = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 1.0, 1.0],
            [2.0, -1.0, 1.0, 0.0],
        ]
    )
    # perfect indicator -> 1 (two balanced classes); never fires / always fires -> 0;
    # independent of the label -> 0
    assert uncertainty_coefficient(x, y) == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-12)
    assert np.all(np.isnan(uncertainty_coefficient(x, np.zeros(4, dtype=np.int64))))


def test_monosemanticity_alive_conventions():
    y = np.array([0, 0, 1, 1])
    # selective (CSI 1, U 1), dead, always on (CSI 0, U 0), fires once per class (CSI 0, U 0)
    x = np.array(
        [
            [0.0, 0.0, 1.0, 1.0],
            [0.0, -2.0, 1.0, 0.0],
            [1.0, 0.0, 1.0, 1.0],
            [1.0, 0.0, 1.0, 0.0],
        ]
    )
    m = monosemanticity(x, y, "codes")
    assert m == pytest.approx(
        {
            "csi_codes_alive": 1 / 3,
            "csi_codes_all": 1 / 4,
            "u_codes_alive": 1 / 2,
            "u_codes_all": 1 / 4,
        },
        abs=1e-9,
    )
    assert set(m) <= set(METRIC_NAMES)
    # no live unit: alive means NaN, all-unit means 0
    dead = monosemanticity(-np.abs(x), y, "acts")
    assert math.isnan(dead["csi_acts_alive"]) and math.isnan(dead["u_acts_alive"])
    assert dead["csi_acts_all"] == 0.0 and dead["u_acts_all"] == 0.0
    single = monosemanticity(x, np.zeros(4, dtype=np.int64), "acts")
    assert all(math.isnan(v) for v in single.values())


# ------------------------------------------------------------------------------------------------
# clustering


def _blobs(n_per: int, n_classes: int, dim: int, spread: float, seed: int):
    gen = np.random.default_rng(seed)
    centres = np.eye(n_classes, dim) * 20.0
    y = np.repeat(np.arange(n_classes), n_per)
    x = centres[y] + gen.normal(scale=spread, size=(y.size, dim))
    perm = gen.permutation(y.size)
    return x[perm], y[perm]


def test_clustering_on_separated_blobs():
    x, y = _blobs(50, 3, 5, 1.0, seed=2)
    m = clustering_metrics(x, y, "codes", seed=0)
    assert set(m) == {
        "ari_codes",
        "silhouette_true_codes",
        "silhouette_kmeans_codes",
        "davies_bouldin_codes",
        "calinski_harabasz_codes",
    }
    assert set(m) <= set(METRIC_NAMES)
    assert m["ari_codes"] == pytest.approx(1.0)
    assert m["silhouette_true_codes"] > 0.8
    assert m["silhouette_kmeans_codes"] == pytest.approx(m["silhouette_true_codes"])
    assert m["davies_bouldin_codes"] == pytest.approx(davies_bouldin_score(x, y))
    assert m["davies_bouldin_codes"] < 0.3
    assert m["calinski_harabasz_codes"] == pytest.approx(calinski_harabasz_score(x, y))


def test_clustering_silhouette_sample_matches_sklearn():
    x, y = _blobs(30, 2, 4, 8.0, seed=3)
    m = clustering_metrics(x, y, "acts", seed=5, silhouette_sample=25)
    expected = silhouette_score(x, y, metric="euclidean", sample_size=25, random_state=5)
    assert m["silhouette_true_acts"] == pytest.approx(expected)
    full = clustering_metrics(x, y, "acts", seed=5)
    assert full["silhouette_true_acts"] == pytest.approx(silhouette_score(x, y))
    assert m["silhouette_true_acts"] != pytest.approx(full["silhouette_true_acts"])


def test_clustering_degenerate_inputs_give_nan_without_warnings():
    y = np.array([0, 1, 0, 1, 2, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = clustering_metrics(np.ones((6, 3)), y, "acts", seed=0)
        one_class = clustering_metrics(
            np.arange(12.0).reshape(6, 2), np.zeros(6, dtype=int), "a", 0
        )
        one_per_class = clustering_metrics(np.eye(3), np.array([0, 1, 2]), "b", seed=0)
    # identical rows: k-means finds one cluster (ARI 0 vs three classes), the rest is undefined
    assert same["ari_acts"] == pytest.approx(0.0)
    for key in ("silhouette_true", "silhouette_kmeans", "davies_bouldin", "calinski_harabasz"):
        assert math.isnan(same[f"{key}_acts"])
    assert all(math.isnan(v) for v in one_class.values())
    # as many classes as rows: silhouette, DB and CH are undefined; ARI is 1
    assert one_per_class["ari_b"] == pytest.approx(1.0)
    assert sum(math.isnan(v) for v in one_per_class.values()) == 4
    # classes collapsed to distinct points: DB 0 (no spread), CH undefined (no within scatter)
    # (class means of repeated 0.1s are off by rounding: sklearn's CH is then ~1e31, not 1 or NaN)
    pts = np.repeat(np.array([[0.1, 0.7], [0.3, 0.1], [0.7, 0.2]]), 3, axis=0)
    collapsed = clustering_metrics(pts, np.repeat([0, 1, 2], 3), "c", seed=0)
    assert collapsed["davies_bouldin_c"] == 0.0
    assert math.isnan(collapsed["calinski_harabasz_c"])
    assert collapsed["silhouette_true_c"] == pytest.approx(1.0)
    assert collapsed["ari_c"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# probe


def test_probe_accuracy_separable_constant_and_sparse():
    gen = np.random.default_rng(4)
    n = 120
    y = gen.integers(0, 3, size=n)
    x = np.zeros((n, 6))
    x[np.arange(n), y] = 1.0 + gen.uniform(size=n)
    x[:, 3:5] = gen.normal(size=(n, 2)) * 0.1
    # column 5 stays constant (zero)
    acc = probe_accuracy(x[:80], y[:80], x[80:], y[80:], seed=0)
    assert acc == 1.0
    acc_sparse = probe_accuracy(sp.csr_matrix(x[:80]), y[:80], sp.csr_matrix(x[80:]), y[80:], 0)
    scaler = StandardScaler(with_mean=False).fit(x[:80])
    model = LogisticRegression(max_iter=1000, random_state=0).fit(scaler.transform(x[:80]), y[:80])
    assert acc_sparse == pytest.approx(np.mean(model.predict(scaler.transform(x[80:])) == y[80:]))
    assert acc_sparse == 1.0
    assert math.isnan(probe_accuracy(x[:10], np.zeros(10, dtype=int), x[10:], y[10:], seed=0))


def test_probe_accuracy_noisy_labels_below_one():
    gen = np.random.default_rng(5)
    x = gen.normal(size=(200, 3))
    y = (x[:, 0] + gen.normal(scale=1.0, size=200) > 0).astype(np.int64)
    acc = probe_accuracy(x[:100], y[:100], x[100:], y[100:], seed=1)
    assert 0.55 < acc < 0.95


# ------------------------------------------------------------------------------------------------
# SAE quality


def test_sae_quality_matches_sklearn_and_hand_counts():
    gen = np.random.default_rng(6)
    x = gen.normal(size=(50, 8)) * np.arange(1, 9) + 3.0
    x_hat = x * 0.8 + gen.normal(scale=0.3, size=x.shape) + 0.5  # residual has a nonzero mean
    codes = np.zeros((50, 5))
    codes[:, 0] = gen.uniform(size=50)
    codes[::2, 1] = -2.0
    codes[:, 3] = np.where(gen.uniform(size=50) < 0.3, 1.5, 0.0)
    q = sae_quality(x, x_hat, codes.astype(np.float32))
    assert q["sae_mse"] == pytest.approx(mean_squared_error(x, x_hat))
    assert q["sae_explained_variance"] == pytest.approx(
        explained_variance_score(x, x_hat, multioutput="variance_weighted"), rel=1e-12
    )
    assert q["sae_l0"] == pytest.approx(np.mean((codes != 0).sum(axis=1)))
    l1 = np.mean(codes[:, 0] + 2.0 * (np.arange(50) % 2 == 0) + np.abs(codes[:, 3]))
    assert q["sae_l1"] == pytest.approx(l1, rel=1e-6)
    assert q["sae_dead_fraction"] == pytest.approx(2 / 5)  # latents 2 and 4
    assert set(q) <= set(METRIC_NAMES)
    flat = sae_quality(np.ones((4, 3)), np.zeros((4, 3)), np.zeros((4, 2)))
    assert math.isnan(flat["sae_explained_variance"]) and flat["sae_mse"] == 1.0
    assert flat["sae_dead_fraction"] == 1.0 and flat["sae_l0"] == 0.0


# ------------------------------------------------------------------------------------------------
# language-model NLL


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def test_shifted_nll_equals_transformers_loss(tiny_lm):
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 100, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = tiny_lm(ids, attention_mask=mask, labels=ids)
    nll, n = shifted_nll(out.logits, ids, mask)
    assert n == 3 * 11
    assert nll / n == pytest.approx(float(out.loss), rel=1e-5)
    assert perplexity_from(nll, n) == pytest.approx(math.exp(float(out.loss)), rel=1e-5)


def test_shifted_nll_excludes_right_padding(tiny_lm):
    gen = torch.Generator().manual_seed(8)
    ids = torch.randint(0, 100, (2, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        out = tiny_lm(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    nll, n = shifted_nll(out.logits, ids, mask)
    assert n == 9 + 5
    assert nll / n == pytest.approx(float(out.loss), rel=1e-5)
    # pad targets and the logits after the last real token do not count
    ids2, logits2 = ids.clone(), out.logits.clone()
    ids2[1, 6:] = 0
    logits2[1, 6:] = torch.randn(4, 100, generator=gen) * 50
    assert shifted_nll(logits2, ids2, mask) == (pytest.approx(nll, rel=1e-12), n)
    # ... which the scored tokens alone reproduce
    row1, _ = shifted_nll(out.logits[1:, :6], ids[1:, :6], mask[1:, :6])
    row0, _ = shifted_nll(out.logits[:1], ids[:1], mask[:1])
    assert row0 + row1 == pytest.approx(nll, rel=1e-12)


def test_shifted_nll_by_hand_and_left_padding():
    vocab = 7
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    uniform = torch.zeros(1, 5, vocab)
    nll, n = shifted_nll(uniform, ids, torch.ones_like(ids))
    assert (n, nll) == (4, pytest.approx(4 * math.log(vocab)))
    assert perplexity_from(nll, n) == pytest.approx(vocab)
    # a left-padded row scores the same tokens as the unpadded sequence
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 5, vocab, generator=gen, dtype=torch.float64)
    padded_ids = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    padded_logits = torch.cat(
        [torch.randn(1, 2, vocab, generator=gen, dtype=torch.float64), logits], 1
    )
    padded_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    plain = shifted_nll(logits, ids, torch.ones_like(ids))
    assert shifted_nll(padded_logits, padded_ids, padded_mask) == (pytest.approx(plain[0]), 4)
    # nothing to score
    assert shifted_nll(logits, ids, torch.zeros_like(ids)) == (0.0, 0)
    assert math.isnan(perplexity_from(0.0, 0))
    assert perplexity_from(1e6, 1) == math.inf
