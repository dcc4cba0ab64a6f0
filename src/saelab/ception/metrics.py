"""SAE-ception's per-cycle metrics: one function per group of columns of the cycle table.

Notation: ``x`` is an ``[N, F]`` matrix (the classifier's pooled activations, or the SAE codes of
those activations), ``a_ij`` unit ``j`` on row ``i``, ``y`` the int labels ``0 .. C-1``. Every
function returns plain Python floats (or a float array per unit) and gives NaN where a number is
undefined, instead of raising, on degenerate but valid inputs (one class, constant rows, no live
unit). Column names are those of :mod:`saelab.ception.names`.

- **classification** (:func:`classification_metrics`): ``accuracy`` (sklearn ``accuracy_score``),
  ``f1_macro`` / ``f1_weighted`` (sklearn ``f1_score(average='macro' | 'weighted',
  zero_division=0)``; F1_c = 2 P_c R_c / (P_c + R_c), macro = mean_c F1_c, weighted =
  sum_c (n_c / N) F1_c).
- **class selectivity index** (:func:`class_selectivity`; Morcos et al. 2018, "On the importance
  of single directions for generalization"; Leavitt & Morcos 2020, "Selectivity considered
  harmful"): on rectified values ``max(0, a_ij)``, CSI_j = (mu_max - mu_notmax) /
  (mu_max + mu_notmax + eps), mu_max the largest class mean, mu_notmax the mean of the other
  C - 1 class means. In [0, 1]: 0 = no preference, 1 = fires for one class only.
- **uncertainty coefficient** (:func:`uncertainty_coefficient`; Theil 1970, "On the estimation of
  relationships involving qualitative variables"): U(Y|X_j) = I(X_j; Y) / H(Y) with
  X_j = 1[a_ij > threshold], both in nats (sklearn ``mutual_info_score``; scipy ``entropy``).
  Because X_j is binary, U <= log 2 / H(Y) (<= 0.5 for four balanced classes).
- **monosemanticity** (:func:`monosemanticity`): the means of CSI and U over all units and over
  live units (``csi_{space}_*``, ``u_{space}_*``).
- **clustering** (:func:`clustering_metrics`): k-means with C clusters (sklearn ``KMeans``,
  ``n_init=10``), its adjusted Rand index against the classes (Hubert & Arabie 1985, sklearn
  ``adjusted_rand_score``), silhouette with the class labels and with the k-means labels
  (Rousseeuw 1987, sklearn ``silhouette_score``, euclidean), Davies-Bouldin (Davies & Bouldin
  1979) and Calinski-Harabasz (Calinski & Harabasz 1974) with the *true* labels, as both
  published SAE-ception codebases compute them.
- **linear probe** (:func:`probe_accuracy`): sklearn ``StandardScaler`` then
  ``LogisticRegression`` (lbfgs, L2, C = 1) fitted on the training rows, accuracy on test rows.
- **SAE quality** (:func:`sae_quality`): MSE = mean_{i,d} (x_id - x^_id)^2, explained variance
  1 - sum_d Var(x_d - x^_d) / sum_d Var(x_d) (sklearn ``explained_variance_score(
  multioutput='variance_weighted')``), L0 = mean_i #{j : f_ij != 0}, L1 = mean_i sum_j |f_ij|,
  dead fraction = share of latents with no nonzero code on any row.
- **language-model drift** (:func:`shifted_nll`, :func:`perplexity_from`): the summed next-token
  negative log-likelihood, logits at t scored against the token at t + 1 (the shift Hugging Face
  causal LMs apply when given ``labels=input_ids``), padding excluded; perplexity =
  exp(sum NLL / #predicted tokens).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.stats import entropy
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    f1_score,
    pairwise_distances,
    silhouette_score,
)
from sklearn.preprocessing import StandardScaler

_NAN = math.nan
#: Within-class scatter at most this share of the total scatter counts as 0 (rounding of the
#: class means of repeated rows), leaving Calinski-Harabasz undefined.
_REL_TOL = 1e-12


def _labels(y: np.ndarray, n_rows: int, what: str = "y") -> np.ndarray:
    """``y`` as a 1-d int64 array of ``n_rows`` non-negative labels; ValueError otherwise."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise ValueError(f"{what}: expected {n_rows} labels in a 1-d array, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"{what}: expected non-negative integer labels, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _matrix(x: np.ndarray, what: str = "x") -> np.ndarray:
    """``x`` as a 2-d float64 array; ValueError otherwise."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-d [N, F] array, got shape {x.shape}")
    return x


def _one_hot_present(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-hot matrix ``[N, C_present]`` (float64) of the classes present in ``y``, and their
    row counts ``[C_present]``. Absent classes get no column."""
    present, inverse = np.unique(y, return_inverse=True)
    one_hot = np.zeros((y.shape[0], present.shape[0]), dtype=np.float64)
    one_hot[np.arange(y.shape[0]), inverse] = 1.0
    return one_hot, one_hot.sum(axis=0)


def _mean_or_nan(values: np.ndarray) -> float:
    """The mean of ``values`` as a float; NaN when empty or when any value is NaN."""
    return float(np.mean(values)) if values.size else _NAN


# ----------------------------------------------------------------------------------------------
# classification


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Test accuracy and F1 scores of a classifier's predictions.

    ``accuracy`` = sklearn ``accuracy_score``; ``f1_macro`` / ``f1_weighted`` = sklearn
    ``f1_score(average='macro' | 'weighted', zero_division=0)`` over the classes that occur in
    ``y_true`` or ``y_pred`` (F1_c = 2 P_c R_c / (P_c + R_c); macro = mean_c F1_c; weighted =
    sum_c (n_c / N) F1_c with n_c the true count of class c). All NaN for zero rows.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred: expected the same length, got {y_true.size} and {y_pred.size}"
        )
    if y_true.size == 0:
        return {"accuracy": _NAN, "f1_macro": _NAN, "f1_weighted": _NAN}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
    }


# ----------------------------------------------------------------------------------------------
# monosemanticity


def class_selectivity(
    x: np.ndarray, y: np.ndarray, n_classes: int | None = None, eps: float = 1e-12
) -> np.ndarray:
    """The class selectivity index of every unit, ``[F]`` float64.

    Morcos et al. 2018 (§2.4) and Leavitt & Morcos 2020, canonical form: rectify
    ``r_ij = max(0, a_ij)`` (so dense signed activations count only their positive part, and
    codes of non-negative SAEs are unchanged); ``mu_c(j)`` = mean of ``r_ij`` over the rows of
    class c; ``mu_max`` = max_c mu_c; ``mu_notmax`` = the mean of the other C - 1 class means (not
    the pooled mean of the other rows, which differs when classes are unbalanced);
    ``CSI_j = (mu_max - mu_notmax) / (mu_max + mu_notmax + eps)``, in [0, 1].

    Units whose rectified values are all 0 get 0. Classes absent from ``y`` are left out (C is
    the number of classes present); with fewer than two classes present every unit is NaN.
    ``n_classes``, when given, bounds the labels (a label >= ``n_classes`` is a ValueError).
    """
    x = _matrix(x)
    y = _labels(y, x.shape[0])
    if n_classes is not None and y.size and int(y.max()) >= n_classes:
        raise ValueError(f"y: expected labels below n_classes={n_classes}, got {int(y.max())}")
    one_hot, counts = _one_hot_present(y)
    n_present = counts.shape[0]
    if n_present < 2:
        return np.full(x.shape[1], np.nan)
    rect = np.maximum(x, 0.0)
    means = (one_hot.T @ rect) / counts[:, None]  # [C_present, F]
    ordered = np.sort(means, axis=0)
    mu_max = ordered[-1]
    mu_notmax = ordered[:-1].sum(axis=0) / (n_present - 1)
    csi = (mu_max - mu_notmax) / (mu_max + mu_notmax + eps)
    csi[~(rect > 0).any(axis=0)] = 0.0
    return csi


def uncertainty_coefficient(x: np.ndarray, y: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Theil's uncertainty coefficient U(Y | X_j) of every unit, ``[F]`` float64, in nats.

    ``X_j = 1[a_ij > threshold]`` (``threshold = 0``: the unit fires); U = I(X_j; Y) / H(Y) with
    I(X; Y) = sum_{x,c} p(x,c) log[p(x,c) / (p(x) p(c))] (sklearn ``mutual_info_score``, natural
    log, clipped at 0 as sklearn does) and H(Y) = scipy ``entropy(np.bincount(y))`` (natural log).
    Vectorised over units: the 2 x C contingency counts of every unit come from one product
    ``B^T @ onehot(y)`` (firing rows per class) and the class counts minus it (silent rows).

    Units that never or always cross the threshold carry no information and get 0. With fewer than
    two classes present H(Y) = 0 and every unit is NaN. Since X_j is binary, U <= log 2 / H(Y).
    """
    x = _matrix(x)
    y = _labels(y, x.shape[0])
    n = x.shape[0]
    one_hot, counts = _one_hot_present(y)
    if counts.shape[0] < 2:
        return np.full(x.shape[1], np.nan)
    h_y = float(entropy(counts))
    fires = (x > threshold).astype(np.float64)
    n_on = fires.T @ one_hot  # [F, C]: rows with X_j = 1, per class
    n_off = counts[None, :] - n_on  # [F, C]: rows with X_j = 0, per class
    mi = np.zeros(x.shape[1])
    for table in (n_on, n_off):
        marginal = table.sum(axis=1, keepdims=True)  # rows with this value of X_j
        with np.errstate(divide="ignore", invalid="ignore"):
            term = table / n * np.log(table * n / (marginal * counts[None, :]))
        mi += np.where(table > 0, term, 0.0).sum(axis=1)
    mi = np.clip(mi, 0.0, None)
    n_fire = n_on.sum(axis=1)
    mi[(n_fire == 0) | (n_fire == n)] = 0.0
    return mi / h_y


def monosemanticity(x: np.ndarray, y: np.ndarray, space: str) -> dict[str, float]:
    """Mean CSI and mean U of the units of ``x``, over all units and over live units.

    Keys ``csi_{space}_alive``, ``csi_{space}_all``, ``u_{space}_alive``, ``u_{space}_all``.
    CSI is :func:`class_selectivity` (rectified values), U is :func:`uncertainty_coefficient`
    with threshold 0, so a dense signed activation "fires" where it is positive, the same
    rectify convention as CSI. Live units:

    - for CSI, units with ``a_ij > 0`` on at least one row (the others have CSI 0 and count as 0
      in ``csi_{space}_all``);
    - for U, units with ``a_ij > 0`` on at least one row and not on every row (units that never
      or always fire have U 0 and count as 0 in ``u_{space}_all``).

    A mean over no unit is NaN, and so is every mean when ``y`` has fewer than two classes.
    """
    x = _matrix(x)
    csi = class_selectivity(x, y)
    u = uncertainty_coefficient(x, y, threshold=0.0)
    n_fire = (x > 0).sum(axis=0)
    csi_alive = n_fire > 0
    u_alive = (n_fire > 0) & (n_fire < x.shape[0])
    return {
        f"csi_{space}_alive": _mean_or_nan(csi[csi_alive]),
        f"csi_{space}_all": _mean_or_nan(csi),
        f"u_{space}_alive": _mean_or_nan(u[u_alive]),
        f"u_{space}_all": _mean_or_nan(u),
    }


# ----------------------------------------------------------------------------------------------
# clustering


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int, sample: int) -> float:
    """sklearn ``silhouette_score(x, labels, metric='euclidean', sample_size=sample,
    random_state=seed)`` when N > ``sample`` (the same rows: the first ``sample`` of
    ``RandomState(seed).permutation(N)``), on every row otherwise; NaN when the rows used hold
    fewer than 2 or more than n - 1 distinct labels (sklearn's bound) or are all identical
    (every distance 0, so every s(i) = 0 / 0, which sklearn reports as 0)."""
    if x.shape[0] > sample:
        rows = np.random.RandomState(seed).permutation(x.shape[0])[:sample]
        x, labels = x[rows], labels[rows]
    n_labels = np.unique(labels).shape[0]
    if not 2 <= n_labels <= x.shape[0] - 1 or np.all(x == x[0]):
        return _NAN
    return float(silhouette_score(x, labels, metric="euclidean"))


def clustering_metrics(
    x: np.ndarray, y: np.ndarray, space: str, seed: int, silhouette_sample: int = 5000
) -> dict[str, float]:
    """How well the rows of ``x`` cluster by class.

    Keys (``space`` = ``codes`` or ``acts``):

    - ``ari_{space}``: sklearn ``KMeans(n_clusters=C, n_init=10, random_state=seed)`` on ``x``
      (float64), C = the number of distinct classes in ``y``; the adjusted Rand index of its
      labels against ``y`` (Hubert & Arabie 1985; sklearn ``adjusted_rand_score``: 1 = the
      clusters are the classes, about 0 = chance).
    - ``silhouette_true_{space}`` / ``silhouette_kmeans_{space}``: mean s(i) = (b_i - a_i) /
      max(a_i, b_i), euclidean (Rousseeuw 1987; sklearn ``silhouette_score``), with the class
      labels / with the k-means labels; on ``silhouette_sample`` rows drawn with
      ``random_state=seed`` when N is larger.
    - ``davies_bouldin_{space}`` (Davies & Bouldin 1979; sklearn ``davies_bouldin_score``, lower
      is better) and ``calinski_harabasz_{space}`` (Calinski & Harabasz 1974; sklearn
      ``calinski_harabasz_score``) with the **true** labels, as SAE-ception's v1 and v2 code
      compute them.

    NaN where a value is undefined, without exceptions or warnings: every key when ``y`` has
    fewer than two classes; a silhouette whose labelling has fewer than 2 or more than N - 1
    groups (e.g. k-means finding one cluster on identical rows) or whose rows are all identical;
    Davies-Bouldin when every class centroid coincides (sklearn returns 0); Calinski-Harabasz
    when the within-class scatter is 0 up to rounding, <= 1e-12 of the total scatter (sklearn
    returns 1 for exactly 0 and ~1e31 for rounding residue); both when C > N - 1. k-means's
    warning that it found fewer distinct points than clusters is silenced.
    """
    x = _matrix(x)
    y = _labels(y, x.shape[0])
    keys = ("ari", "silhouette_true", "silhouette_kmeans", "davies_bouldin", "calinski_harabasz")
    out = dict.fromkeys((f"{k}_{space}" for k in keys), _NAN)
    classes = np.unique(y)
    n_clusters = classes.shape[0]
    if n_clusters < 2:
        return out
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        kmeans = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(x)
    out[f"ari_{space}"] = float(adjusted_rand_score(y, kmeans))
    out[f"silhouette_true_{space}"] = _silhouette(x, y, seed, silhouette_sample)
    out[f"silhouette_kmeans_{space}"] = _silhouette(x, kmeans, seed, silhouette_sample)
    if n_clusters <= x.shape[0] - 1:
        centroids = np.stack([x[y == c].mean(axis=0) for c in classes])
        if not np.all(np.isclose(pairwise_distances(centroids), 0.0)):
            out[f"davies_bouldin_{space}"] = float(davies_bouldin_score(x, y))
        within = float(((x - centroids[np.searchsorted(classes, y)]) ** 2).sum())
        total = float(((x - x.mean(axis=0)) ** 2).sum())
        if within > _REL_TOL * total:
            out[f"calinski_harabasz_{space}"] = float(calinski_harabasz_score(x, y))
    return out


# ----------------------------------------------------------------------------------------------
# linear probe


def probe_accuracy(
    x_train: np.ndarray | sp.spmatrix | sp.sparray,
    y_train: np.ndarray,
    x_test: np.ndarray | sp.spmatrix | sp.sparray,
    y_test: np.ndarray,
    seed: int,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a standardised logistic-regression probe fitted on the training rows.

    sklearn ``StandardScaler`` (fitted on the training rows; ``with_mean=False`` for
    scipy.sparse inputs, which keeps them sparse; constant columns are left unscaled, sklearn's
    rule) then ``LogisticRegression(max_iter=max_iter, random_state=seed)``: lbfgs, L2 penalty,
    C = 1, multinomial for C >= 3 (sklearn's default since 1.5, so no ``multi_class``
    argument); score = sklearn ``accuracy_score`` on the test rows. NaN when the training rows
    hold a single class or either split is empty.
    """
    y_train = np.asarray(y_train).ravel()
    y_test = np.asarray(y_test).ravel()
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(
            f"probe: expected one label per row, got {x_train.shape[0]} training rows with "
            f"{y_train.shape[0]} labels and {x_test.shape[0]} test rows with {y_test.shape[0]}"
        )
    if y_test.size == 0 or np.unique(y_train).shape[0] < 2:
        return _NAN
    sparse = sp.issparse(x_train)
    if sparse:
        x_train = sp.csr_matrix(x_train, dtype=np.float64)
        x_test = sp.csr_matrix(x_test, dtype=np.float64)
    else:
        x_train = _matrix(x_train, "x_train")
        x_test = _matrix(x_test, "x_test")
    scaler = StandardScaler(with_mean=not sparse).fit(x_train)
    model = LogisticRegression(max_iter=max_iter, random_state=seed)
    model.fit(scaler.transform(x_train), y_train)
    return float(accuracy_score(y_test, model.predict(scaler.transform(x_test))))


# ----------------------------------------------------------------------------------------------
# SAE quality


def sae_quality(x: np.ndarray, x_hat: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """Reconstruction and sparsity of an SAE on the rows ``x`` ``[N, D]``, in float64.

    - ``sae_mse`` = mean over rows and dims of (x_id - x^_id)^2 (torch ``F.mse_loss``).
    - ``sae_explained_variance`` = 1 - sum_d Var(x_d - x^_d) / sum_d Var(x_d), population
      variances over the rows (sklearn ``explained_variance_score(x, x_hat,
      multioutput='variance_weighted')``; the residual's mean is removed, unlike r2_score). NaN
      when every column of ``x`` is constant.
    - ``sae_l0`` = mean over rows of #{j : f_ij != 0}; ``sae_l1`` = mean over rows of
      sum_j |f_ij|.
    - ``sae_dead_fraction`` = share of the F latents with no nonzero code on any row.

    Every value is NaN for zero rows.
    """
    x = _matrix(x, "x")
    x_hat = _matrix(x_hat, "x_hat")
    codes = _matrix(codes, "codes")
    if x.shape != x_hat.shape or codes.shape[0] != x.shape[0]:
        raise ValueError(
            f"sae_quality: expected x and x_hat of one shape and one code row per row, got "
            f"x {x.shape}, x_hat {x_hat.shape}, codes {codes.shape}"
        )
    keys = ("sae_mse", "sae_explained_variance", "sae_l0", "sae_l1", "sae_dead_fraction")
    if x.shape[0] == 0:
        return dict.fromkeys(keys, _NAN)
    residual = x - x_hat
    total_var = float(x.var(axis=0).sum())
    active = codes != 0
    return {
        "sae_mse": float(np.mean(residual**2)),
        "sae_explained_variance": (
            1.0 - float(residual.var(axis=0).sum()) / total_var if total_var > 0 else _NAN
        ),
        "sae_l0": float(active.sum(axis=1).mean()),
        "sae_l1": float(np.abs(codes).sum(axis=1).mean()),
        "sae_dead_fraction": float((~active.any(axis=0)).mean()) if codes.shape[1] else _NAN,
    }


# ----------------------------------------------------------------------------------------------
# language-model drift


@torch.no_grad()
def shifted_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of a batch and the number of tokens it scores.

    ``logits`` ``[B, T, V]`` at position t are scored against ``input_ids[:, t + 1]`` (logits
    ``[:, :-1]`` against ids ``[:, 1:]``, the shift Hugging Face causal LMs apply when given
    ``labels=input_ids``): NLL_t = -log softmax(logits_t)[id_{t+1}] (torch ``F.cross_entropy``,
    computed in float32, or float64 for float64 logits), summed in float64.

    A position counts only when the target token and the token it is predicted from are both
    real (``attention_mask[:, 1:] == 1`` and ``attention_mask[:, :-1] == 1``). With right
    padding this is exactly "target not padding" (Hugging Face's ``labels = -100`` on pads);
    with left padding it also skips the first real token, predicted from a pad, so a padded row
    scores the same tokens as the unpadded sequence.
    """
    if (
        logits.ndim != 3
        or tuple(input_ids.shape) != tuple(logits.shape[:2])
        or tuple(attention_mask.shape) != tuple(logits.shape[:2])
    ):
        raise ValueError(
            f"shifted_nll: expected logits [B, T, V] with input_ids and attention_mask [B, T], got "
            f"{tuple(logits.shape)}, {tuple(input_ids.shape)}, {tuple(attention_mask.shape)}"
        )
    if logits.shape[1] < 2:
        return 0.0, 0
    mask = attention_mask.bool()
    keep = mask[:, 1:] & mask[:, :-1]
    n_tokens = int(keep.sum())
    if n_tokens == 0:
        return 0.0, 0
    scored = logits[:, :-1][keep]
    if scored.dtype != torch.float64:
        scored = scored.float()
    nll = F.cross_entropy(scored, input_ids[:, 1:][keep].long(), reduction="none")
    return float(nll.double().sum()), n_tokens


def perplexity_from(nll_sum: float, n_tokens: int) -> float:
    """Perplexity exp(nll_sum / n_tokens) from summed next-token NLL (nats); NaN when
    ``n_tokens == 0``, inf when the exponent overflows a float."""
    if n_tokens == 0:
        return _NAN
    try:
        return math.exp(nll_sum / n_tokens)
    except OverflowError:
        return math.inf
