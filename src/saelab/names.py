"""The names every stage shares, defined once: the paper's settings and its five baselines.

Kept free of heavy imports, so the config, the CLI and the report can use them without loading
torch or scikit-learn.
"""

from __future__ import annotations

SETTINGS: tuple[str, ...] = ("normal", "scarcity", "imbalance", "label_noise", "ood")
"""The paper's five regimes (Kantamneni et al. 2025, section 4), in the order runs and reports use."""

BASELINES: tuple[str, ...] = ("logreg", "pca", "knn", "xgboost", "mlp")
"""The paper's five baselines on raw activations (its "quiver of arrows", section 3), in the order
that wins validation-AUC ties in the quiver (sae-probes' result files list them in this order)."""

SAE_METHOD = "sae"
"""The ``method`` of SAE probe rows (top-k latents of an SAE's codes, then a logistic probe)."""
