"""The names SAE-ception's stages share, defined once: strategies, controls, metric columns.

Every per-cycle metric is one column of the cycle table (``cycles.parquet``); its entry here gives
the label plots and tables show, whether higher is better, and where the formula comes from (the
functions in :mod:`saelab.ception.metrics` carry the full formulas).
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES: tuple[str, ...] = ("per_class", "per_example", "random", "none")
"""Sharpening strategies, in table order: two that use the SAE, then the two controls."""
CONTROLS: tuple[str, ...] = ("random", "none")
"""Controls: a random unit target (the SAE ignored) and lambda = 0 (plain continued fine-tuning)."""
SHARPENED: tuple[str, ...] = ("per_class", "per_example")
"""Strategies whose targets come from the SAE's sharpened codes."""


@dataclass(frozen=True)
class MetricInfo:
    """One per-cycle metric column.

    Attributes:
        name: the column of the cycle table.
        label: short human label.
        higher_is_better: True / False, or None when neither (e.g. L0).
        group: classification, probe, sae, monosemanticity, clustering, language_model.
        source: where the formula comes from (one line).
    """

    name: str
    label: str
    higher_is_better: bool | None
    group: str
    source: str


def _clustering(space: str, where: str) -> tuple[MetricInfo, ...]:
    return (
        MetricInfo(f"ari_{space}", f"ARI of k-means on {where}", True, "clustering",
                   "Hubert & Arabie 1985; sklearn adjusted_rand_score; k-means with C clusters"),
        MetricInfo(f"silhouette_true_{space}", f"silhouette, true labels ({where})", True,
                   "clustering", "Rousseeuw 1987; sklearn silhouette_score, labels = classes"),
        MetricInfo(f"silhouette_kmeans_{space}", f"silhouette, k-means labels ({where})", True,
                   "clustering", "Rousseeuw 1987; sklearn silhouette_score, labels = k-means"),
        MetricInfo(f"davies_bouldin_{space}", f"Davies-Bouldin ({where})", False, "clustering",
                   "Davies & Bouldin 1979; sklearn davies_bouldin_score, true labels"),
        MetricInfo(f"calinski_harabasz_{space}", f"Calinski-Harabasz ({where})", True,
                   "clustering", "Calinski & Harabasz 1974; sklearn, true labels"),
    )  # fmt: skip


def _monosemanticity(space: str, where: str) -> tuple[MetricInfo, ...]:
    return (
        MetricInfo(f"csi_{space}_alive", f"mean CSI, alive units ({where})", True,
                   "monosemanticity", "Morcos et al. 2018; Leavitt & Morcos 2020"),
        MetricInfo(f"csi_{space}_all", f"mean CSI, all units ({where})", True,
                   "monosemanticity", "Morcos et al. 2018; dead units count as 0"),
        MetricInfo(f"u_{space}_alive", f"mean U(Y|X), alive units ({where}, nats)", True,
                   "monosemanticity", "Theil's uncertainty coefficient I(X;Y)/H(Y)"),
        MetricInfo(f"u_{space}_all", f"mean U(Y|X), all units ({where}, nats)", True,
                   "monosemanticity", "Theil's U; dead and always-on units count as 0"),
    )  # fmt: skip


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("accuracy", "test accuracy", True, "classification", "sklearn accuracy_score"),
    MetricInfo("f1_macro", "macro F1", True, "classification", "sklearn f1_score(average='macro')"),
    MetricInfo("f1_weighted", "weighted F1", True, "classification",
               "sklearn f1_score(average='weighted')"),
    MetricInfo("probe_acc_acts", "linear-probe accuracy on the layer", True, "probe",
               "logistic regression fitted on training rows, scored on test rows"),
    MetricInfo("probe_acc_codes", "linear-probe accuracy on SAE codes", True, "probe",
               "logistic regression fitted on training rows, scored on test rows"),
    MetricInfo("sae_mse", "SAE MSE", False, "sae", "mean over rows and dims of (x - x_hat)^2"),
    MetricInfo("sae_explained_variance", "SAE explained variance", True, "sae",
               "1 - sum_d Var(x_d - x_hat_d) / sum_d Var(x_d)"),
    MetricInfo("sae_l0", "SAE L0", None, "sae", "mean number of nonzero codes per row"),
    MetricInfo("sae_l1", "SAE L1", None, "sae", "mean over rows of sum_j |f_j|"),
    MetricInfo("sae_dead_fraction", "SAE dead fraction", False, "sae",
               "share of latents that never fire on the test rows"),
    *_monosemanticity("codes", "SAE codes"),
    *_monosemanticity("acts", "activations"),
    *_clustering("codes", "SAE codes"),
    *_clustering("acts", "activations"),
    MetricInfo("perplexity", "LM perplexity (held-out text)", False, "language_model",
               "exp(mean shifted next-token NLL); models with an LM head only"),
)  # fmt: skip
"""Every per-cycle metric column, in table order."""

METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
METRIC_INFO: dict[str, MetricInfo] = {m.name: m for m in METRICS}
CHECKED_METRICS: tuple[str, ...] = ("ari_codes", "u_codes_alive")
"""The metrics the method check compares against both controls (issue: ARI and U)."""
