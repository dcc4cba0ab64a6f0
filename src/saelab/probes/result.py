"""The result record every probe method returns, and the error raised for bad probe inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ProbeResult:
    """Scores of one fitted probe.

    Attributes:
        method: ``"logreg"`` (baseline on dense activations) or ``"sae"`` (top-k SAE latents).
        test_auc: ROC AUC of the positive-class probability on the test rows.
        test_acc: accuracy of the hard predictions (decision value > 0) on the test rows.
        val_auc: best mean validation AUC over the C grid; the training AUC when n_train <= 3
            (sae-probes spec section 3).
        hyperparams: chosen hyperparameters, e.g. ``{"C": 46.4}``.
        n_train, n_test: number of training and test rows.
        seconds: wall time of validation, refit and scoring.
        k: number of SAE latents (``None`` for baselines).
        latents: the chosen SAE latent ids, best-ranked first (``None`` for baselines).
        variant: ``None`` for the default method; otherwise a short descriptor of a non-default
            variant, e.g. ``"rank=none"`` or ``"binarize"``.
        test_f1: support-weighted F1 of the hard predictions on the test rows (the paper's
            ``test_f1``).
    """

    method: str
    test_auc: float
    test_acc: float
    val_auc: float
    hyperparams: dict[str, Any]
    n_train: int
    n_test: int
    seconds: float
    k: int | None = None
    latents: list[int] | None = None
    variant: str | None = None
    test_f1: float | None = None
