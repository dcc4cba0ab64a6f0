"""saelab.probes: probe estimators, the paper's validation protocol and SAE latent selection.

- ``LogisticProbe`` / ``fit_logistic_path``: exact L2 logistic regression (batched Newton).
- ``validation_splits`` / ``select_hyperparameter`` / ``C_GRID``: the paper's protocol (spec 3.1).
- ``fit_logreg_probe``: the logistic-regression baseline (spec 3.2).
- ``rank_latents`` / ``fit_sae_probes``: top-k SAE latent probes on sparse codes (spec 4.1).
- ``fit_pca_probe`` / ``fit_knn_probe`` / ``fit_xgboost_probe`` / ``fit_mlp_probe`` and their
  estimators: the paper's other four baselines; ``BASELINES``: all five by name (spec 3.2-3.3).
"""

from saelab.errors import ProbeDataError
from saelab.probes.baseline import fit_logreg_probe, fit_probe_protocol
from saelab.probes.logistic import LogisticProbe, fit_logistic_path
from saelab.probes.quiver import (
    BASELINES,
    MLP_GRID,
    XGB_GRID,
    KNNProbe,
    MLPProbe,
    PCAProbe,
    XGBoostProbe,
    draw_configurations,
    fit_baselines,
    fit_knn_probe,
    fit_mlp_probe,
    fit_pca_probe,
    fit_xgboost_probe,
    mean_validation_auc,
    power_of_two_grid,
)
from saelab.probes.result import ProbeResult
from saelab.probes.sae_probes import fit_sae_probes, rank_latents
from saelab.probes.validation import C_GRID, roc_auc, select_hyperparameter, validation_splits

__all__ = [
    "BASELINES",
    "C_GRID",
    "MLP_GRID",
    "XGB_GRID",
    "KNNProbe",
    "LogisticProbe",
    "MLPProbe",
    "PCAProbe",
    "ProbeDataError",
    "ProbeResult",
    "XGBoostProbe",
    "draw_configurations",
    "fit_baselines",
    "fit_knn_probe",
    "fit_logistic_path",
    "fit_logreg_probe",
    "fit_mlp_probe",
    "fit_pca_probe",
    "fit_probe_protocol",
    "fit_sae_probes",
    "fit_xgboost_probe",
    "mean_validation_auc",
    "power_of_two_grid",
    "rank_latents",
    "roc_auc",
    "select_hyperparameter",
    "validation_splits",
]
