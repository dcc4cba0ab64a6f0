"""The result record every probe method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProbeResult:
    """Scores of one fitted probe (one problem of ``saelab.probes.protocol.run_protocol``).

    Attributes:
        method: the probe method's name (``"logreg"``, ``"pca"``, ..., ``"sae"``).
        test_auc: ROC AUC of the decision values on the test rows.
        test_acc: accuracy of the hard predictions (decision value > 0) on the test rows.
        val_auc: best mean validation AUC over the candidate settings; the training AUC when
            n_train <= 3 (sae-probes ``find_best_*``).
        hyperparams: the chosen setting, e.g. ``{"C": 46.4}``.
        n_train, n_test: number of training and test rows.
        seconds: this problem's share of the wall time of the (batched) fits.
        converged: False when the refit, or a validation fit of the chosen setting, stopped at its
            iteration cap (a flagged result rather than only a log line).
        k: number of SAE latents (``None`` for baselines).
        latents: the chosen SAE latent ids, best-ranked first (``None`` for baselines).
        variant: short label of an SAE probe variant (``None`` for baselines).
        test_f1: support-weighted F1 of the hard predictions on the test rows (the paper's
            ``test_f1``).
        info: anything else the caller attached to the problem.
    """

    method: str
    test_auc: float
    test_acc: float
    val_auc: float
    hyperparams: dict[str, Any]
    n_train: int
    n_test: int
    seconds: float
    converged: bool = True
    k: int | None = None
    latents: list[int] | None = None
    variant: str | None = None
    test_f1: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
