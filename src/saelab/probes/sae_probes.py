"""SAE probes: rank SAE latents by class mean difference, then fit logreg on the top-k latents.

Source: sae-probes spec section 4.1 (``run_sae_eval``, ``get_sorted_indices``,
``mean_act_normalization``). Codes stay sparse (CSR) throughout: ranking works on the nonzeros, and
only the top-k columns (k <= max(ks)) are ever densified, so a 1M-wide SAE never costs
[n, d_sae] dense memory (the peer densifies the whole code matrix, spec 7.2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saelab.errors import ConfigError, ProbeDataError
from saelab.probes.baseline import binary_labels, fit_probe_protocol
from saelab.probes.logistic import ArrayLike, limit_solver_threads
from saelab.probes.result import ProbeResult
from saelab.probes.validation import C_GRID

logger = logging.getLogger(__name__)

Normalization = Literal["mean", "none"]
_NORMALIZATIONS = ("mean", "none")
_EPS = 1e-6  # the two 1e-6 of the paper's mean_act_normalization


def as_csr(codes: ArrayLike, name: str) -> sp.csr_matrix:
    """Codes [n, d_sae] as a canonical float CSR matrix (sparse input is never densified).

    Accepts scipy sparse matrices/arrays, numpy arrays and torch tensors (dense, sparse COO or
    sparse CSR). Raises
    ``ProbeDataError`` naming ``name`` and the first row with a NaN or infinite value.
    """
    if isinstance(codes, torch.Tensor):
        codes = _torch_to_scipy(codes.detach().cpu())
    if sp.issparse(codes):
        A = sp.csr_matrix(codes)
    else:
        arr = np.asarray(codes)
        if arr.ndim != 2:
            raise ProbeDataError(f"{name}: expected a 2-D code matrix [n, d_sae], got {arr.shape}")
        A = sp.csr_matrix(arr)
    if not np.issubdtype(A.dtype, np.floating):
        A = A.astype(np.float64)
    if not A.has_canonical_format:
        A = A.copy()
        A.sum_duplicates()
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ProbeDataError(f"{name}: expected at least one row and one column, got {A.shape}")
    bad = ~np.isfinite(A.data)
    if bad.any():
        row = int(np.searchsorted(A.indptr, np.flatnonzero(bad)[0], side="right") - 1)
        raise ProbeDataError(f"{name}: row {row} has a NaN or infinite value")
    return A


def _torch_to_scipy(codes: torch.Tensor) -> sp.csr_matrix | np.ndarray:
    """A torch tensor as scipy CSR (sparse COO / CSR layouts, without densifying) or numpy."""
    if codes.layout == torch.sparse_coo:
        c = codes.coalesce()
        rows, cols = c.indices().numpy()
        return sp.csr_matrix((c.values().numpy(), (rows, cols)), shape=tuple(c.shape))
    if codes.layout == torch.sparse_csr:
        return sp.csr_matrix(
            (codes.values().numpy(), codes.col_indices().numpy(), codes.crow_indices().numpy()),
            shape=tuple(codes.shape),
        )
    return codes.numpy()


def rank_latents(
    codes_train: ArrayLike, y_train: ArrayLike, normalization: Normalization = "mean"
) -> np.ndarray:
    """Latent indices [d_sae] sorted by class mean difference, best first (spec 4.1.3).

    With ``normalization="mean"`` each latent j is first divided by its mean magnitude over the
    rows where it fires (the paper's ``mean_act_normalization``)::

        norm_j = sum_i |a_ij| / (#{i : a_ij != 0} + 1e-6) + 1e-6

    and ``"none"`` uses norm_j = 1. The score is

        score_j = | mean_{i: y_i = 1} a_ij / norm_j - mean_{i: y_i = 0} a_ij / norm_j |,

    sorted descending with ties broken by the lower latent index (stable sort). Computed on the
    nonzeros of the CSR matrix in float64 (class sums are divided by norm_j once, which equals
    normalising every entry first); O(nnz + d_sae) time and memory.

    Args:
        codes_train: [n, d_sae] codes (scipy sparse, numpy or torch); y_train: [n] 0/1 labels.
        normalization: ``"mean"`` (the paper's default since its rebuttal) or ``"none"``.
    """
    if normalization not in _NORMALIZATIONS:
        raise ConfigError(
            f"normalization: expected one of {list(_NORMALIZATIONS)}, got {normalization!r}"
        )
    A = as_csr(codes_train, "codes_train")
    n, d = A.shape
    y = binary_labels(y_train, "y_train", n)
    data = A.data.astype(np.float64)
    cols = A.indices
    row_of_entry = np.repeat(np.arange(n), np.diff(A.indptr))
    on_pos = y[row_of_entry] == 1
    n_pos = int(y.sum())
    pos_mean = np.bincount(cols, weights=np.where(on_pos, data, 0.0), minlength=d) / n_pos
    neg_mean = np.bincount(cols, weights=np.where(on_pos, 0.0, data), minlength=d) / (n - n_pos)
    diff = pos_mean - neg_mean
    if normalization == "mean":
        abs_sum = np.bincount(cols, weights=np.abs(data), minlength=d)
        fires = np.bincount(cols[data != 0], minlength=d)
        diff = diff / (abs_sum / (fires + _EPS) + _EPS)
    return np.argsort(-np.abs(diff), kind="stable")


def _effective_ks(ks: Sequence[int], d_sae: int) -> list[int]:
    """ks capped at d_sae, duplicates after capping dropped, first-seen order kept."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"ks: expected positive integers, got {k!r}")
        k_eff = min(int(k), d_sae)
        if k_eff not in out:
            out.append(k_eff)
    if not out:
        raise ConfigError("ks: expected at least one k")
    return out


def _variant(normalization: str, binarize: bool) -> str | None:
    """None for the default SAE probe; else e.g. ``"rank=none"``, ``"binarize"``."""
    parts = ([] if normalization == "mean" else [f"rank={normalization}"]) + (
        ["binarize"] if binarize else []
    )
    return ",".join(parts) or None


def fit_sae_probes(
    codes_train: ArrayLike,
    y_train: ArrayLike,
    codes_test: ArrayLike,
    y_test: ArrayLike,
    ks: Sequence[int],
    seed: int = 42,
    Cs: Sequence[float] | np.ndarray = C_GRID,
    normalization: Normalization = "mean",
    binarize: bool = False,
    progress: bool = False,
    penalty: Literal["l1", "l2"] = "l2",
    variant: str | None = None,
) -> list[ProbeResult]:
    """SAE probes for each k: the top-k ranked latents, fitted with the logreg protocol (spec 4.1).

    Latents are ranked once on the training rows (``rank_latents``). For each k (capped at d_sae,
    duplicates after capping dropped) the top-k columns of the **raw** codes are densified
    (indicator a != 0 with ``binarize``) and passed to ``fit_probe_protocol``: the same
    validation, refit and scoring as the logreg baseline.

    Args:
        codes_train: [n_train, d_sae], codes_test: [n_test, d_sae] (CSR preferred; dense works);
        y_train: [n_train], y_test: [n_test] 0/1 labels; ks: numbers of latents.
        penalty: ``"l2"`` (batched Newton) or ``"l1"`` (LIBLINEAR; the paper's main SAE probe).
        variant: label recorded in the results (default: derived from normalization/binarize).

    Returns:
        One ``ProbeResult`` (method ``"sae"``) per effective k, in the order of ``ks``, with ``k``
        and ``latents`` (the chosen latent ids, best first).
    """
    A_train = as_csr(codes_train, "codes_train")
    A_test = as_csr(codes_test, "codes_test")
    if A_test.shape[1] != A_train.shape[1]:
        raise ProbeDataError(
            f"codes_test: expected {A_train.shape[1]} latents like codes_train, "
            f"got {A_test.shape[1]}"
        )
    order = rank_latents(A_train, y_train, normalization)
    ks_eff = _effective_ks(ks, A_train.shape[1])
    top = order[: max(ks_eff)]
    dense_train = A_train[:, top].toarray().astype(np.float64)  # [n_train, max k]
    dense_test = A_test[:, top].toarray().astype(np.float64)  # [n_test, max k]
    if binarize:
        dense_train = (dense_train != 0).astype(np.float64)
        dense_test = (dense_test != 0).astype(np.float64)
    variant = variant if variant is not None else _variant(normalization, binarize)
    results = []
    with limit_solver_threads(A_train.shape[0], max(ks_eff)):  # set once for all ks
        for k in tqdm(ks_eff, desc="SAE probes (k)", disable=not progress):
            result = fit_probe_protocol(
                dense_train[:, :k],
                y_train,
                dense_test[:, :k],
                y_test,
                method="sae",
                seed=seed,
                Cs=Cs,
                k=k,
                latents=[int(j) for j in top[:k]],
                variant=variant,
                penalty=penalty,
            )
            logger.debug("SAE probe k=%d: test AUC %.4f", k, result.test_auc)
            results.append(result)
    return results
