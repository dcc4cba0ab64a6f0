"""Sparse probing (saelab.evals.sparse_probing): SAEBench's protocol against hand computations and
scikit-learn, and the whole eval on a tiny random BERT against an independent re-computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression

from saelab.activations import LayerActivations
from saelab.config import RunConfig
from saelab.errors import ConfigError, ProbeDataError
from saelab.evals.sparse_probing import (
    dense_probe_accuracy,
    headline_metric,
    mean_pooled,
    saebench_probe,
    saebench_top_k,
    sparse_probing_eval,
)
from saelab.sae import SAEConfig, build_sae, save_sae
from tiny_models import HIDDEN, build_tiny_model, write_word_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# 8 training rows, 4 columns. Class means (y=1 minus y=0) by hand:
#   col 0: 2.0 - 0.0 = 2.0;  col 1: 1.0 - 0.5 = 0.5;  col 2: 3.0 - 0.0 = 3.0;  col 3: 0.0 - 2.0 = -2.0
# so |diff| ranks col 2 (3.0), then col 0 and col 3 tied at 2.0 (the lower index, 0, first), then 1.
Y_TRAIN = np.array([1, 1, 1, 1, 0, 0, 0, 0])
X_TRAIN = np.array(
    [
        [2.0, 1.0, 3.0, 0.0],
        [2.0, 1.5, 3.0, 0.0],
        [2.0, 0.5, 3.0, 0.0],
        [2.0, 1.0, 3.0, 0.0],
        [0.0, 0.5, 0.0, 2.0],
        [0.0, 0.0, 0.0, 2.0],
        [0.0, 1.0, 0.0, 2.0],
        [0.0, 0.5, 0.0, 2.0],
    ]
)
# with column 2 alone the training set is symmetric about 1.5, so the boundary is x_2 = 1.5:
# predictions 0, 1, 1, 0 against labels 0, 1, 0, 0 -> 3 of 4 right
X_TEST = np.array(
    [
        [0.0, 0.0, 0.2, 2.0],
        [2.0, 1.0, 2.9, 0.0],
        [0.0, 1.0, 2.5, 2.0],
        [2.0, 0.0, 0.1, 0.0],
    ]
)
Y_TEST = np.array([0, 1, 0, 0])


def _sklearn_accuracy(x_train, y_train, x_test, y_test, cols) -> tuple[float, np.ndarray]:
    """SAEBench's ``train_sklearn_probe`` (L2, C = 1), run to a tight tolerance."""
    clf = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-12)
    clf.fit(x_train[:, cols], y_train)
    return float((clf.predict(x_test[:, cols]) == y_test).mean()), clf.coef_[0]


def test_hand_computed_ranking_ties_and_accuracy():
    out = saebench_top_k(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, ks=(1, 2, 3, 9))
    assert [out[k][1] for k in (1, 2, 3, 9)] == [[2], [0, 2], [0, 2, 3], [0, 1, 2, 3]]
    assert out[1][0] == 0.75
    for k in (2, 3, 9):
        want, _ = _sklearn_accuracy(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, out[k][1])
        assert out[k][0] == want
    assert saebench_probe(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, ks=[3, 1]) == {
        1: 0.75,
        3: out[3][0],
    }


def _noisy_problem(seed: int, n: int = 240, d: int = 60):
    """Sparse non-negative codes where 6 columns carry the label with different strengths."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.exponential(1.0, (n, d)) * (rng.random((n, d)) < 0.15)
    for j, s in zip((3, 17, 29, 41, 50, 58), (2.0, 1.2, 0.9, 0.6, 0.4, 0.3), strict=True):
        x[:, j] += s * y * rng.random(n) + 0.3 * rng.random(n)
    return x, y


def test_equals_scikit_learn_on_the_mean_difference_columns_and_csr_equals_dense():
    x, y = _noisy_problem(0)
    tr, te = slice(0, 160), slice(160, None)
    diff = np.abs(x[tr][y[tr] == 1].mean(0) - x[tr][y[tr] == 0].mean(0))
    order = np.argsort(-diff, kind="stable")
    dense = saebench_top_k(x[tr], y[tr], x[te], y[te], ks=(1, 2, 5, 10))
    for k, (acc, latents) in dense.items():
        assert latents == sorted(order[:k].tolist())
        assert acc == _sklearn_accuracy(x[tr], y[tr], x[te], y[te], latents)[0]
    # the same from CSR and from torch tensors; float32 CSR (as SAE codes leave saelab.sae) ranks
    # the same latents
    csr = sp.csr_matrix(x)
    assert saebench_top_k(csr[:160], y[tr], csr[160:], y[te], ks=(1, 2, 5, 10)) == dense
    csr32 = sp.csr_matrix(x.astype(np.float32))
    got32 = saebench_top_k(csr32[:160], y[tr], csr32[160:], y[te], ks=(1, 2, 5, 10))
    assert {k: v[1] for k, v in got32.items()} == {k: v[1] for k, v in dense.items()}
    as_torch = torch.from_numpy(x)
    assert saebench_top_k(as_torch[tr], y[tr], as_torch[te], y[te], ks=(1, 2, 5, 10)) == dense
    assert dense_probe_accuracy(x[tr], y[tr], x[te], y[te]) == pytest.approx(
        _sklearn_accuracy(x[tr], y[tr], x[te], y[te], np.arange(x.shape[1]))[0]
    )


def test_bad_inputs_name_the_argument():
    with pytest.raises(ProbeDataError, match="y_train"):
        saebench_probe(X_TRAIN, np.ones(8), X_TEST, Y_TEST)
    with pytest.raises(ProbeDataError, match="test_x: expected 4 columns"):
        saebench_probe(X_TRAIN, Y_TRAIN, X_TEST[:, :3], Y_TEST)
    with pytest.raises(ProbeDataError, match="y_test"):
        saebench_probe(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST[:3])
    with pytest.raises(ConfigError, match="ks"):
        saebench_probe(X_TRAIN, Y_TRAIN, X_TEST, Y_TEST, ks=(0, 1))
    assert headline_metric((1, 2, 5)) == "sae_top_1_test_accuracy"
    assert headline_metric((5, 2)) == "sae_top_2_test_accuracy"


def test_mean_pooled_leaves_special_tokens_out():
    tokens = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    la = LayerActivations(
        pooled=torch.zeros(2, 2),
        tokens=tokens,
        offsets=torch.tensor([0, 4, 6]),
        special=torch.tensor([True, False, False, True, True, True]),  # text 2: specials only
    )
    want = torch.stack([tokens[1:3].mean(0), tokens[4:6].mean(0)])
    torch.testing.assert_close(mean_pooled(la), want)
    torch.testing.assert_close(
        mean_pooled(la, include_special_tokens=True),
        torch.stack([tokens[0:4].mean(0), tokens[4:6].mean(0)]),
    )


# ----- the whole eval on a tiny random BERT ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse_probing")
    model = build_tiny_model(root / "bert", "bert")
    write_word_dataset(root / "first.csv", 300, seed=1)
    write_word_dataset(root / "second.csv", 260, seed=2)
    cfg = SAEConfig(
        d_in=HIDDEN,
        d_sae=4 * HIDDEN,
        architecture="topk",
        arch={"k": 8},
        metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"},
    )
    sae = build_sae(cfg, seed=3)
    save_sae(sae, root / "loaded_sae")
    run_cfg = RunConfig.model_validate(
        {
            "name": "tiny-sparse-probing",
            "cache_dir": str(root / "cache"),
            "model": {"name": str(model), "batch_size": 32},
            "layers": [1],
            "settings": ["normal"],
            "data": {
                "datasets": [str(root / "first.csv"), str(root / "second.csv")],
                "max_train": 128,
            },
            "saes": [
                {"id": "loaded", "path": str(root / "loaded_sae")},
                {
                    "id": "trained",
                    "train": {"expansion_factor": 2, "k": 4, "epochs": 1, "batch_size": 256},
                },
            ],
            "probes": {"ks": [1, 2, 4], "baselines": ["logreg"]},
            "executor": "serial",
        }
    )
    out = sparse_probing_eval(run_cfg, root / "run", ks=(1, 2, 5), progress=False)
    return root, model, sae, run_cfg, out


def test_eval_shapes_and_paper_aucs_equal_the_run_results(tiny_run):
    root, _, _, _, out = tiny_run
    assert set(out) == {"loaded", "trained"}
    results = pd.read_parquet(root / "run" / "results.parquet")
    for sae_id, res in out.items():
        assert res.headline == "sae_top_1_test_accuracy"
        assert set(res.metrics) == {
            *(f"sae_top_{k}_test_accuracy" for k in (1, 2, 5)),
            *(f"llm_top_{k}_test_accuracy" for k in (1, 2, 5)),
            "llm_test_accuracy",
            *(f"paper_auc_k{k}" for k in (1, 2, 4)),
        }
        assert all(0.0 <= v <= 1.0 for v in res.metrics.values())
        saebench = [d for d in res.details if d["protocol"] == "saebench"]
        paper = [d for d in res.details if d["protocol"] == "paper"]
        assert sorted((d["dataset"], d["k"]) for d in saebench) == [
            (ds, k) for ds in ("first", "second") for k in (1, 2, 5)
        ]
        assert sorted((d["dataset"], d["k"]) for d in paper) == [
            (ds, k) for ds in ("first", "second") for k in (1, 2, 4)
        ]
        # normal split: n_train = min(N - 100, 128), n_test = N - n_train - 1
        sizes = {d["dataset"]: (d["n_train"], d["n_test"]) for d in res.details}
        assert sizes == {"first": (128, 171), "second": (128, 131)}
        # the paper sweep is the run's own rows (primary variant l1), and its means
        rows = results[(results.method == "sae") & (results.sae == sae_id)]
        assert set(rows.variant) == {"l1"}
        for d in paper:
            row = rows[(rows.dataset == d["dataset"]) & (rows.k == d["k"])]
            assert len(row) == 1 and d["test_auc"] == row.test_auc.iloc[0]
        for k in (1, 2, 4):
            assert res.metrics[f"paper_auc_k{k}"] == pytest.approx(
                rows[rows.k == k].test_auc.mean()
            )
        for k in (1, 2, 5):
            accs = [d["test_accuracy"] for d in saebench if d["k"] == k]
            assert res.metrics[f"sae_top_{k}_test_accuracy"] == pytest.approx(np.mean(accs))
    # the LLM baselines read the same hook for both SAEs: identical
    llm = {k: v for k, v in out["loaded"].metrics.items() if k.startswith("llm_")}
    assert llm == {k: v for k, v in out["trained"].metrics.items() if k.startswith("llm_")}
    # the last word decides the label; a random BERT's mean-pooled activations still carry some of it
    assert out["loaded"].metrics["llm_test_accuracy"] > 0.55
    timings = out["loaded"].timings
    assert {"pipeline", "pipeline encode", "activations", "saebench probes"} <= set(timings)
    assert timings["pipeline"] >= timings["pipeline encode"] > 0
    # the codes the probe engine computed are reused: no SAE is encoded a second time
    assert "encode" not in timings


def test_eval_equals_an_independent_recomputation(tiny_run):
    """Splits re-drawn, activations re-extracted and codes re-encoded token by token outside the
    pipeline; SAEBench's protocol on them gives the eval's latents and accuracies."""
    from saelab.activations import extract, load_model
    from saelab.data import load_dataset, normal_split

    root, model, sae, _, out = tiny_run
    handle = load_model(str(model), device="cpu")
    for name in ("first", "second"):
        ds = load_dataset(str(root / f"{name}.csv"))
        split = normal_split(ds.labels, seed=42, max_train=128, dataset_name=name)
        feats = {}
        for part, idx in (("train", split.train), ("test", split.test)):
            la = extract(
                handle, [ds.prompts[i] for i in idx], [1], "mean", keep_tokens=True, progress=False
            )[1]
            with torch.no_grad():
                codes = sae.encode(la.tokens)
            rows = []
            for i in range(len(idx)):
                lo, hi = int(la.offsets[i]), int(la.offsets[i + 1])
                keep = ~la.special[lo:hi]
                rows.append(codes[lo:hi][keep].double().mean(0))
            feats[part] = (torch.stack(rows).numpy(), la.pooled.numpy(), ds.labels[idx])
        (c_tr, a_tr, y_tr), (c_te, a_te, y_te) = feats["train"], feats["test"]
        sae_top = saebench_top_k(c_tr, y_tr, c_te, y_te, ks=(1, 2, 5))
        llm_top = saebench_probe(a_tr, y_tr, a_te, y_te, ks=(1, 2, 5))
        dense = dense_probe_accuracy(a_tr, y_tr, a_te, y_te)
        got = {
            d["k"]: d
            for d in out["loaded"].details
            if d["dataset"] == name and d["protocol"] == "saebench"
        }
        for k in (1, 2, 5):
            assert got[k]["latents"] == sae_top[k][1]
            assert got[k]["test_accuracy"] == sae_top[k][0]
            assert got[k]["llm_top_k_test_accuracy"] == llm_top[k]
            assert got[k]["llm_test_accuracy"] == dense


def test_eval_refuses_two_layers(tiny_run, tmp_path):
    _, _, _, run_cfg, _ = tiny_run
    cfg = run_cfg.model_copy(deep=True)
    cfg.layers = [1, 2]
    with pytest.raises(ConfigError, match="key 'layers'"):
        sparse_probing_eval(cfg, tmp_path / "run", progress=False)
