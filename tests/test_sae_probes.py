"""Tests for saelab.probes.sae_probes: latent ranking on sparse codes and top-k SAE probes."""

from __future__ import annotations

import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone

from saelab.errors import ConfigError, ProbeDataError
from saelab.probes import (
    CodeSplit,
    LogisticMethod,
    LogisticProbe,
    Problem,
    SAEProbe,
    fit_sae_probes,
    fit_sae_probes_many,
    rank_latents,
    run_protocol,
)


def _protocol(X_train, y_train, X_test, y_test, penalty):
    method = LogisticMethod(penalty=penalty, name="sae")
    return run_protocol(method, [Problem(X_train, y_train, X_test, y_test)])[0]


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
        # the same protocol as the logistic baseline (L1) on the dense top-k raw columns
        cols = order[: r.k]
        ref = _protocol(
            A_train[:, cols].toarray(), y_train, A_test[:, cols].toarray(), y_test, "l1"
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
    ref = _protocol(
        (A_train[:, cols].toarray() != 0).astype(float),
        y_train,
        (A_test[:, cols].toarray() != 0).astype(float),
        y_test,
        "l1",
    )
    assert r.test_auc == ref.test_auc and r.hyperparams == ref.hyperparams
    none = fit_sae_probes(A_train, y_train, A_test, y_test, ks=[2], normalization="none")
    assert none[0].variant == "rank=none"
    with pytest.raises(ConfigError, match="ks"):
        fit_sae_probes(A_train, y_train, A_test, y_test, ks=[0])
    with pytest.raises(ProbeDataError, match="codes_test"):
        fit_sae_probes(A_train, y_train, A_test[:, :10], y_test, ks=[2])


def test_sae_probe_estimator_is_the_protocols_refit():
    A = random_codes(150, 60, 0.2, seed=19)
    y = (np.arange(150) % 2).astype(np.int64)
    A = A.tolil()
    A[np.flatnonzero(y == 1), 3] = 1.5
    A = A.tocsr()
    (r,) = fit_sae_probes(A[:100], y[:100], A[100:], y[100:], ks=[8], penalty="l1")
    probe = SAEProbe(k=8, C=r.hyperparams["C"], penalty="l1").fit(A[:100], y[:100])
    assert probe.latents_.tolist() == r.latents
    np.testing.assert_array_equal(probe.predict(A[100:]), (probe.decision_function(A[100:]) > 0))
    from sklearn.metrics import roc_auc_score

    assert r.test_auc == pytest.approx(
        roc_auc_score(y[100:], probe.decision_function(A[100:])), abs=1e-9
    )
    # L1 really is L1: a small C leaves most weights exactly 0, an L2 fit does not
    sparse = SAEProbe(k=40, C=0.01, penalty="l1").fit(A[:100], y[:100]).logistic_.coef_
    dense = SAEProbe(k=40, C=0.01, penalty="l2").fit(A[:100], y[:100]).logistic_.coef_
    assert (sparse == 0).sum() > 30 and (dense == 0).sum() == 0
    assert clone(probe).get_params()["k"] == 8
    assert isinstance(probe.logistic_, LogisticProbe)


def test_many_splits_equal_one_at_a_time():
    A = random_codes(200, 50, 0.15, seed=21)
    y = (np.arange(200) % 2).astype(np.int64)
    splits = [CodeSplit(A[:n], y[:n], A[150:], y[150:]) for n in (3, 10, 40, 130)]
    together = fit_sae_probes_many(splits, ks=[2, 16], penalty="l1")
    for split, results in zip(splits, together, strict=True):
        alone = fit_sae_probes(
            split.codes_train, split.y_train, split.codes_test, split.y_test, ks=[2, 16]
        )
        for a, b in zip(results, alone, strict=True):
            assert (a.k, a.latents, a.hyperparams) == (b.k, b.latents, b.hyperparams)
            assert a.test_auc == pytest.approx(b.test_auc, abs=1e-9)
