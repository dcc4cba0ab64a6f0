"""SAE probes: rank SAE latents by class mean difference, then fit logreg on the top-k latents.

Source: sae-probes 0.4.2 ``run_sae_evals.py`` (``run_sae_eval``, ``get_sorted_indices``,
``mean_act_normalization``) and the paper's section 3.2. Codes stay sparse (CSR) throughout:
ranking works on the nonzeros, and only the top-k columns (k <= max(ks)) are ever densified, so a
1M-wide SAE never costs [n, d_sae] dense memory (the peer densifies the whole code matrix).

As in the paper, latents are ranked once on a split's whole training set, and the logistic
probe's C is then validated on the top-k columns (so the ranking has seen the validation rows).
:class:`SAEProbe` is the same probe as a scikit-learn estimator: with ``latents=None`` it ranks on
the rows given to ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from saelab.errors import ConfigError, ProbeDataError
from saelab.probes.linear import LogisticMethod, Penalty
from saelab.probes.logistic import LogisticProbe
from saelab.probes.protocol import ArrayLike, Problem, binary_labels, run_protocol
from saelab.probes.result import ProbeResult

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


def effective_ks(ks: Sequence[int], d_sae: int) -> list[int]:
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


def top_columns(codes: sp.csr_matrix, latents: np.ndarray, binarize: bool) -> np.ndarray:
    """Dense float64 [n, len(latents)] of the chosen code columns (indicator != 0 if binarize)."""
    dense = codes[:, latents].toarray().astype(np.float64)
    return (dense != 0).astype(np.float64) if binarize else dense


class SAEProbe(ClassifierMixin, BaseEstimator):
    """The top-k SAE latent probe as an estimator: rank latents, keep k, fit a logistic probe.

    ``fit(codes [n, d_sae], y)`` ranks the latents on those rows (:func:`rank_latents`, unless
    ``latents`` fixes the ranking), keeps the top ``k`` columns of the raw codes (the indicator
    code != 0 with ``binarize``) and fits ``LogisticProbe(C, penalty)`` on them. Codes may be
    scipy sparse, numpy or torch. Learned: ``latents_`` [k], ``logistic_``, ``classes_``,
    ``converged_``.
    """

    def __init__(
        self,
        k: int = 16,
        C: float = 1.0,
        penalty: Penalty = "l1",
        binarize: bool = False,
        normalization: Normalization = "mean",
        latents: Sequence[int] | None = None,
    ) -> None:
        self.k = k
        self.C = C
        self.penalty = penalty
        self.binarize = binarize
        self.normalization = normalization
        self.latents = latents

    def fit(self, codes: ArrayLike, y: ArrayLike) -> SAEProbe:
        A = as_csr(codes, "codes")
        if self.latents is None:
            order = rank_latents(A, y, self.normalization)
        else:
            order = np.asarray(self.latents, dtype=np.int64)
        self.latents_ = order[: effective_ks([self.k], A.shape[1])[0]]
        X = top_columns(A, self.latents_, self.binarize)
        self.logistic_ = LogisticProbe(C=self.C, penalty=self.penalty).fit(X, y)
        self.classes_ = self.logistic_.classes_
        self.converged_ = self.logistic_.converged_
        self.n_features_in_ = A.shape[1]
        return self

    def decision_function(self, codes: ArrayLike) -> np.ndarray:
        """x . w + b on the chosen latents -> [n] (> 0 predicts ``classes_[1]``)."""
        check_is_fitted(self)
        A = as_csr(codes, "codes")
        return self.logistic_.decision_function(top_columns(A, self.latents_, self.binarize))

    def predict_proba(self, codes: ArrayLike) -> np.ndarray:
        check_is_fitted(self)
        A = as_csr(codes, "codes")
        return self.logistic_.predict_proba(top_columns(A, self.latents_, self.binarize))

    def predict(self, codes: ArrayLike) -> np.ndarray:
        return self.classes_[(self.decision_function(codes) > 0).astype(np.int64)]


@dataclass
class CodeSplit:
    """SAE codes and labels of one train/test split: codes [n, d_sae] and [m, d_sae] (CSR)."""

    codes_train: ArrayLike
    y_train: ArrayLike
    codes_test: ArrayLike
    y_test: ArrayLike


def sae_problems(
    split: CodeSplit,
    ks: Sequence[int],
    normalization: Normalization = "mean",
    binarize: bool = False,
    variant: str | None = None,
) -> list[Problem]:
    """One protocol problem per effective k: the split's top-k latent columns (paper 4.1).

    Latents are ranked once on the split's training rows; problem k holds the dense top-k columns
    of the raw codes (their indicator with ``binarize``) and ``info = {k, latents, variant}``.
    """
    A_train = as_csr(split.codes_train, "codes_train")
    A_test = as_csr(split.codes_test, "codes_test")
    if A_test.shape[1] != A_train.shape[1]:
        raise ProbeDataError(
            f"codes_test: expected {A_train.shape[1]} latents like codes_train, "
            f"got {A_test.shape[1]}"
        )
    order = rank_latents(A_train, split.y_train, normalization)
    ks_eff = effective_ks(ks, A_train.shape[1])
    top = order[: max(ks_eff)]
    dense_train = top_columns(A_train, top, binarize)  # [n_train, max k]
    dense_test = top_columns(A_test, top, binarize)  # [n_test, max k]
    return [
        Problem(
            dense_train[:, :k],
            split.y_train,
            dense_test[:, :k],
            split.y_test,
            info={"k": k, "latents": [int(j) for j in top[:k]], "variant": variant},
        )
        for k in ks_eff
    ]


def fit_sae_probes_many(
    splits: Sequence[CodeSplit],
    ks: Sequence[int],
    seed: int = 42,
    Cs: Sequence[float] | np.ndarray | None = None,
    normalization: Normalization = "mean",
    binarize: bool = False,
    penalty: Penalty = "l1",
    variant: str | None = None,
    device: str = "cpu",
) -> list[list[ProbeResult]]:
    """SAE probes for every k on every split, all fits in batched solves (paper 4.1).

    Each split's latents are ranked once on its training rows; the protocol (C validated on the
    top-k columns, refit, test) then runs for all (split, k) problems at once.

    Returns, per split, one ``ProbeResult`` (method ``"sae"``) per effective k in the order of
    ``ks`` (capped at d_sae, repeats dropped), with ``k`` and ``latents`` (best first).
    """
    variant = variant if variant is not None else _variant(normalization, binarize)
    per_split = [sae_problems(s, ks, normalization, binarize, variant) for s in splits]
    method = LogisticMethod(penalty=penalty, Cs=Cs, name="sae", device=device)
    flat = run_protocol(method, [p for problems in per_split for p in problems], seed)
    out, start = [], 0
    for problems in per_split:
        out.append(flat[start : start + len(problems)])
        start += len(problems)
    return out


def fit_sae_probes(
    codes_train: ArrayLike,
    y_train: ArrayLike,
    codes_test: ArrayLike,
    y_test: ArrayLike,
    ks: Sequence[int],
    seed: int = 42,
    Cs: Sequence[float] | np.ndarray | None = None,
    normalization: Normalization = "mean",
    binarize: bool = False,
    penalty: Penalty = "l1",
    variant: str | None = None,
    device: str = "cpu",
) -> list[ProbeResult]:
    """SAE probes for each k on one split (:func:`fit_sae_probes_many` with one split).

    Args:
        codes_train: [n_train, d_sae], codes_test: [n_test, d_sae] (CSR preferred; dense works);
        y_train: [n_train], y_test: [n_test] 0/1 labels; ks: numbers of latents.
        penalty: ``"l1"`` (the paper's main SAE probe) or ``"l2"``.
        variant: label recorded in the results (default: derived from normalization/binarize).
    """
    split = CodeSplit(codes_train, y_train, codes_test, y_test)
    return fit_sae_probes_many(
        [split], ks, seed, Cs, normalization, binarize, penalty, variant, device
    )[0]
