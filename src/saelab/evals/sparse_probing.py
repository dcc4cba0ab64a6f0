"""Sparse probing: SAEBench's top-k mean-difference protocol and the paper's k sweep, per SAE.

Two protocols on the normal split of every dataset of a run (the same balanced train / test rows
the probe engine uses):

- **saebench** (SAEBench ``sae_bench/evals/sparse_probing/main.py`` with
  ``probe_training.py``: ``get_top_k_mean_diff_mask``, ``train_sklearn_probe``): features are the
  mean over a text's tokens of the SAE codes (special tokens left out, as SAEBench masks BOS /
  pad / EOS); on the training rows only, latent j scores ``|mean_{y=1} x_j - mean_{y=0} x_j|``, the
  k best are kept, and an L2 logistic regression with C = 1 (objective
  ``0.5 ||w||^2 + C sum_i log(1 + exp(-s_i (x_i . w + b)))``, intercept unpenalised: SAEBench's
  scikit-learn ``LogisticRegression(C=1.0, max_iter=1000)``) is fitted on those k columns and
  scored by test accuracy. The same on the mean-pooled raw activations gives the ``llm_top_k``
  baseline, and a dense L2 probe on every raw dimension ``llm_test_accuracy``.
- **paper** (Kantamneni et al. 2025, "Are Sparse Autoencoders Useful? A Case Study in Sparse
  Probing", §3.2): the probe engine's k sweep (``probes.ks``), test AUC per (dataset, k), read
  from the run's ``results.parquet`` (primary SAE probe variant).

Deviations from SAEBench, on purpose:
- the logistic fits solve the same objective to its optimum (``saelab.probes.LogisticProbe``, a
  float64 Newton method, tolerance 1e-8) instead of stopping lbfgs at tol 1e-4 / 1000 iterations;
  on well-conditioned problems both give the same predictions (tests compare with scikit-learn);
- ``llm_test_accuracy`` is that L2 (C = 1) probe fitted on the training rows only. SAEBench trains
  a torch probe (AdamW, 100 epochs) and keeps the epoch with the best accuracy on the *test* set
  (``train_probe_gpu``: early stopping on test accuracy), which leaks the test labels into the
  number it reports; saelab never looks at the test rows when fitting;
- SAEBench's datasets, sizes (4000 train / 1000 test per class pair) and per-class one-vs-rest
  tasks are replaced by the run's binary datasets and their normal split;
- ties in the mean-difference ranking go to the lower latent index (a stable sort; SAEBench's
  ``torch.argsort`` leaves their order unspecified); k larger than the width keeps every column.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saelab.config import RunConfig
from saelab.errors import ConfigError, ProbeDataError
from saelab.pipeline.logs import StageTimer
from saelab.probes.logistic import LogisticProbe
from saelab.probes.metrics import labels_1d
from saelab.probes.protocol import binary_labels
from saelab.probes.sae_probes import rank_latents

log = logging.getLogger(__name__)

#: SAEBench's default k values (``SparseProbingEvalConfig.k_values``).
SAEBENCH_KS = (1, 2, 5)
#: Inverse L2 strength of every SAEBench probe (scikit-learn's default, kept by SAEBench).
SAEBENCH_C = 1.0


@dataclass
class SparseProbingResult:
    """Sparse-probing numbers of one SAE.

    ``metrics``: ``sae_top_{k}_test_accuracy`` and ``llm_top_{k}_test_accuracy`` (SAEBench
    protocol, mean over datasets, as SAEBench averages its datasets), ``llm_test_accuracy`` (dense
    L2 probe on the raw pooled activations), ``paper_auc_k{k}`` (the paper's sweep: mean test AUC
    over datasets). ``details``: one record per (dataset, protocol, k). ``headline``: the key of
    the one metric to show first (see :func:`headline_metric`). ``timings``: seconds per stage of
    this call: ``pipeline`` (the probe engine in all) and its stages (``pipeline activations``,
    ``pipeline encode``, ``pipeline probes``, ...), then the SAEBench part's ``activations``
    (cache reads), ``encode`` and ``saebench probes``; the same for every SAE of the call.
    """

    metrics: dict[str, float]
    details: list[dict[str, Any]]
    headline: str
    timings: dict[str, float] = field(default_factory=dict)


def headline_metric(ks: Sequence[int]) -> str:
    """``sae_top_1_test_accuracy`` (the smallest k when 1 is not among ``ks``).

    SAEBench's ``sparse_probing/eval_output.py`` marks several fields ``ui_default_display``
    (``llm_test_accuracy``, ``llm_top_{1,2,5}``, ``sae_test_accuracy``, ``sae_top_{1,2,5}``); of
    the SAE fields, its plots (``sae_bench_utils/graphing_utils.get_custom_metric_key_and_name``)
    use ``sae_top_{k}_test_accuracy`` and the SAEBench paper's headline is k = 1 (how much of a
    concept a single latent carries). ``sae_test_accuracy`` (all latents) is not computed here.
    """
    return f"sae_top_{min(ks)}_test_accuracy"


def _check_ks(ks: Sequence[int], name: str = "ks") -> list[int]:
    out = [int(k) for k in ks]
    if not out or any(k < 1 or k != kk for k, kk in zip(out, ks, strict=True)):
        raise ConfigError(f"{name}: expected positive whole numbers, got {list(ks)}")
    return sorted(set(out))


def _n_rows(x: Any) -> int:
    return int(x.shape[0])


def _columns(x: Any, cols: np.ndarray) -> np.ndarray:
    """Columns ``cols`` of ``x`` [n, d] (CSR, numpy or torch) as a dense float64 array [n, k]."""
    if sp.issparse(x):
        return sp.csr_matrix(x)[:, cols].toarray().astype(np.float64)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()[:, torch.as_tensor(cols, dtype=torch.long)].double().numpy()
    return np.asarray(x, dtype=np.float64)[:, cols]


def _check_pair(
    train_x: Any, y_train: Any, test_x: Any, y_test: Any
) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels as int64 {0, 1} (train: both classes), and the shared width d; shapes checked."""
    for name, x in (("train_x", train_x), ("test_x", test_x)):
        if len(getattr(x, "shape", ())) != 2:
            raise ProbeDataError(f"{name}: expected a 2-D array [n, d], got {type(x).__name__}")
    y_tr = binary_labels(y_train, "y_train", _n_rows(train_x))
    y_te = labels_1d(y_test, "y_test")
    if y_te.shape[0] != _n_rows(test_x):
        raise ProbeDataError(
            f"y_test: expected {_n_rows(test_x)} labels (the rows of test_x), got {y_te.shape[0]}"
        )
    if not set(np.unique(y_te).tolist()) <= {0, 1}:
        raise ProbeDataError(f"y_test: expected labels 0/1, got {np.unique(y_te).tolist()[:10]}")
    d = int(train_x.shape[1])
    if int(test_x.shape[1]) != d:
        raise ProbeDataError(
            f"test_x: expected {d} columns (as train_x), got {int(test_x.shape[1])}"
        )
    return y_tr, y_te.astype(np.int64), d


def _l2_accuracy(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of the L2 logistic regression with C = 1 fitted on the training rows."""
    probe = LogisticProbe(C=SAEBENCH_C, penalty="l2").fit(x_train, y_train)
    if not probe.converged_:
        log.warning("SAEBench probe (%d rows, %d columns) did not converge", *x_train.shape)
    return float(np.mean(probe.predict(x_test) == y_test))


def saebench_top_k(
    train_x: Any, y_train: Any, test_x: Any, y_test: Any, ks: Sequence[int] = SAEBENCH_KS
) -> dict[int, tuple[float, list[int]]]:
    """:func:`saebench_probe` with the chosen columns: ``{k: (test accuracy, latents)}``.

    ``latents``: the k column indices, ascending (as SAEBench's mask keeps them).
    """
    ks = _check_ks(ks)
    y_tr, y_te, d = _check_pair(train_x, y_train, test_x, y_test)
    # |mean_pos - mean_neg| per column, descending, ties to the lower index (stable sort)
    order = rank_latents(train_x, y_tr, normalization="none")
    out: dict[int, tuple[float, list[int]]] = {}
    for k in ks:
        cols = np.sort(order[: min(k, d)])
        acc = _l2_accuracy(_columns(train_x, cols), y_tr, _columns(test_x, cols), y_te)
        out[k] = (acc, cols.tolist())
    return out


def saebench_probe(
    train_x: Any, y_train: Any, test_x: Any, y_test: Any, ks: Sequence[int] = SAEBENCH_KS
) -> dict[int, float]:
    """SAEBench's sparse probe: test accuracy of an L2 logistic regression (C = 1) on the k
    columns with the largest class mean difference on the training rows, per k.

    Source: SAEBench ``sae_bench/evals/sparse_probing/probe_training.py``
    (``get_top_k_mean_diff_mask``: ``|mean_{y=1} x_j - mean_{y=0} x_j|`` over the training rows,
    top k; ``train_sklearn_probe``: ``LogisticRegression(penalty="l2", C=1.0)``). The fit solves
    that objective to its optimum (module docstring); ties go to the lower column index.

    Args:
        train_x: [n_train, d] features (scipy sparse, numpy or torch): SAE codes or activations.
        y_train: [n_train] labels 0/1, both classes present.
        test_x: [n_test, d] features of the same columns.
        y_test: [n_test] labels 0/1.
        ks: numbers of columns (a k above d keeps all d).

    Returns:
        ``{k: test accuracy}``, ks ascending.
    """
    return {k: acc for k, (acc, _) in saebench_top_k(train_x, y_train, test_x, y_test, ks).items()}


def dense_probe_accuracy(train_x: Any, y_train: Any, test_x: Any, y_test: Any) -> float:
    """SAEBench's ``llm_test_accuracy`` without its test-set early stopping: test accuracy of an
    L2 logistic regression (C = 1) on all d columns, fitted on the training rows only.

    SAEBench (``probe_training.train_probe_gpu``) trains a torch linear probe with AdamW and keeps
    the epoch of best *test* accuracy; here the probe never sees the test rows. Shapes: train_x
    [n_train, d], test_x [n_test, d].
    """
    y_tr, y_te, _ = _check_pair(train_x, y_train, test_x, y_test)
    cols = np.arange(int(train_x.shape[1]))
    return _l2_accuracy(_columns(train_x, cols), y_tr, _columns(test_x, cols), y_te)


def mean_pooled(la: Any, include_special_tokens: bool = False) -> torch.Tensor:
    """Mean over each text's tokens of ``la.tokens`` [T, d] -> [N, d] float32, special tokens
    left out unless ``include_special_tokens`` (a text of special tokens only keeps them): the
    pooling of SAEBench's ``create_meaned_model_activations``, and of saelab's mean pooling."""
    offsets = la.offsets.long()
    lengths = offsets[1:] - offsets[:-1]
    text = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    keep = torch.ones(la.tokens.shape[0], dtype=torch.bool)
    if la.special is not None and not include_special_tokens:
        keep = ~la.special
        kept = torch.zeros(len(lengths), dtype=torch.long).index_add_(0, text, keep.long())
        keep = keep | (kept[text] == 0)
    tokens = la.tokens.double() * keep[:, None]
    sums = torch.zeros(len(lengths), la.tokens.shape[1], dtype=torch.float64)
    sums.index_add_(0, text, tokens)
    counts = torch.zeros(len(lengths), dtype=torch.float64).index_add_(0, text, keep.double())
    return (sums / counts.clamp_min(1)[:, None]).float()


def _check_run_config(cfg: RunConfig) -> int:
    if len(cfg.layers) != 1:
        raise ConfigError(
            f"key 'layers': the sparse-probing eval reads one layer, got {cfg.layers}; run one "
            "config per layer"
        )
    if "normal" not in cfg.settings:
        raise ConfigError(
            f"key 'settings': the sparse-probing eval needs the normal setting, got {cfg.settings}"
        )
    if not cfg.saes:
        raise ConfigError("key 'saes': the sparse-probing eval needs at least one SAE")
    return cfg.layers[0]


def paper_sweep(results: pd.DataFrame, sae_id: str, layer: int) -> pd.DataFrame:
    """The paper-sweep rows of SAE ``sae_id`` in a run's results: normal setting, in-distribution
    test, the primary SAE probe variant (``saelab.report.plots.primary_variant``), ``layer``."""
    from saelab.report.plots import primary_variant

    variant = primary_variant(results)
    rows = results[
        (results["method"] == "sae")
        & (results["sae"] == sae_id)
        & (results["setting"] == "normal")
        & (results["test_source"].isna())
        & (results["layer"] == layer)
        & (results["variant"] == variant)
    ]
    return rows.sort_values(["dataset", "k"]).reset_index(drop=True)


def sparse_probing_eval(
    run_cfg: RunConfig,
    run_dir: Path,
    ks: Sequence[int] = SAEBENCH_KS,
    progress: bool = True,
) -> dict[str, SparseProbingResult]:
    """Sparse probing of every SAE of ``run_cfg``: SAEBench's protocol at ``ks`` and the paper's
    k sweep (``run_cfg.probes.ks``) on the normal split of every dataset; results keyed by SAE id.

    1. The probe engine runs (or resumes) the run in ``run_dir`` (``run_pipeline``): the paper's
       sweep, and the activation cache filled for every row.
    2. For each dataset, the activations of the rows the run planned (``DatasetPlan.rows``) are
       read with their tokens (``PreparedRun.read_activations``: the cache just filled), each SAE
       encodes them to mean-pooled codes (``PreparedRun.encode(..., ["mean"])``) [rows, d_sae] CSR,
       and :func:`saebench_top_k` runs on the normal split's train / test rows; the ``llm``
       baselines use the mean-pooled activations [rows, d_model] at the hook the SAE reads and are
       shared by SAEs that read the same hook.
    3. Metrics are means over datasets (module docstring for the definitions).

    ``run_cfg`` must have one layer and the normal setting (ConfigError otherwise).
    """
    from saelab.activations import key_of
    from saelab.pipeline.run import prepare_run, run_pipeline, train_run_saes

    layer = _check_run_config(run_cfg)
    ks = _check_ks(ks)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    run = prepare_run(run_cfg, progress=progress)
    # the codes the probe engine computes are kept and reused below (each SAE encodes once)
    run.code_memo = {}
    outcome = run_pipeline(run_cfg, run_dir, progress=progress, prepared=run)
    pipeline_seconds = time.perf_counter() - started

    timer = StageTimer()
    run.timer = timer
    if any(sc.train is not None for sc in run_cfg.saes):
        train_run_saes(run)  # loads the SAEs the pipeline trained (SAE cache)
    sae_ids = [sc.id for sc in run_cfg.saes if (sc.id, layer) in run.sae_keys]
    hook_of = {
        sid: key_of(h) if (h := run.sae_hooks.get((sid, layer))) else layer for sid in sae_ids
    }
    details: dict[str, list[dict[str, Any]]] = {sid: [] for sid in sae_ids}
    bar = tqdm(run.plans, desc="sparse probing", unit="dataset", disable=not progress)
    for p in bar:
        name = p.dataset.name
        split = p.normal
        train = p.positions(split.train)
        test = p.positions(split.test)
        y_train = split.y_train(p.dataset.labels)
        y_test = np.asarray(p.dataset.labels[split.test], dtype=np.int64)
        acts = run.read_activations([p.dataset.prompts[i] for i in p.rows], with_tokens=True)
        llm: dict[Any, tuple[dict[int, tuple[float, list[int]]], float]] = {}
        for sid in sae_ids:
            la = acts[hook_of[sid]]
            if hook_of[sid] not in llm:
                with timer("saebench probes"):
                    raw = (
                        la.pooled
                        if run.pooling == "mean"
                        else mean_pooled(la, run.include_special_tokens)
                    ).numpy()
                    llm[hook_of[sid]] = (
                        saebench_top_k(raw[train], y_train, raw[test], y_test, ks),
                        dense_probe_accuracy(raw[train], y_train, raw[test], y_test),
                    )
            llm_top, llm_dense = llm[hook_of[sid]]
            codes = run.encode(sid, layer, la, ["mean"])["mean"]
            with timer("saebench probes"):
                codes = sp.csr_matrix(codes)
                top = saebench_top_k(codes[train], y_train, codes[test], y_test, ks)
            for k in ks:
                details[sid].append(
                    {
                        "dataset": name,
                        "protocol": "saebench",
                        "k": k,
                        "test_accuracy": top[k][0],
                        "llm_top_k_test_accuracy": llm_top[k][0],
                        "llm_test_accuracy": llm_dense,
                        "latents": top[k][1],
                        "n_train": len(train),
                        "n_test": len(test),
                    }
                )
        del acts

    timings = {
        "pipeline": pipeline_seconds,
        **{f"pipeline {stage}": sec for stage, sec in outcome.timings.items()},
        **timer.seconds,
    }
    results = outcome.results
    out: dict[str, SparseProbingResult] = {}
    for sid in sae_ids:
        recs = details[sid]
        metrics: dict[str, float] = {}
        for k in ks:
            mine = [r for r in recs if r["k"] == k]
            metrics[f"sae_top_{k}_test_accuracy"] = _mean(r["test_accuracy"] for r in mine)
            metrics[f"llm_top_{k}_test_accuracy"] = _mean(
                r["llm_top_k_test_accuracy"] for r in mine
            )
        metrics["llm_test_accuracy"] = _mean(
            r["llm_test_accuracy"] for r in recs if r["k"] == ks[0]
        )
        sweep = paper_sweep(results, sid, layer) if not results.empty else results
        for row in sweep.itertuples(index=False):
            recs.append(
                {
                    "dataset": row.dataset,
                    "protocol": "paper",
                    "k": int(row.k),
                    "test_auc": float(row.test_auc),
                    "test_accuracy": float(row.test_acc),
                    "variant": row.variant,
                    "n_train": int(row.n_train),
                    "n_test": int(row.n_test),
                }
            )
        if not sweep.empty:
            for k, auc in sweep.groupby("k")["test_auc"].mean().items():
                metrics[f"paper_auc_k{int(k)}"] = float(auc)
        out[sid] = SparseProbingResult(
            metrics=metrics, details=recs, headline=headline_metric(ks), timings=dict(timings)
        )
        log.info(
            "sparse probing %s: %s = %.4f (%d datasets)",
            sid,
            headline_metric(ks),
            metrics[headline_metric(ks)],
            len(run.plans),
        )
    return out


def _mean(values: Any) -> float:
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else math.nan
