"""saelab.probes: probe estimators, the one validation protocol, and SAE latent selection.

- ``run_protocol`` / ``validation_splits`` / ``C_GRID``: the paper's protocol, for every method,
  over many problems at once (``protocol.py``).
- ``LogisticProbe`` (estimator) and ``LogisticMethod`` (batched protocol method), L2 or L1, on
  ``fit_logistic_batch`` (``solvers.py``): the logreg baseline and the SAE probes' classifier.
- ``PCAProbe`` / ``KNNProbe`` / ``XGBoostProbe`` / ``MLPProbe`` and their methods; ``BASELINES``:
  the five baselines by name (``baselines.py``).
- ``rank_latents`` / ``SAEProbe`` / ``fit_sae_probes``: top-k SAE latent probes on sparse codes.
"""

from saelab.errors import ProbeDataError
from saelab.probes.baselines import (
    BASELINES,
    MLP_DEFAULTS,
    XGB_DEFAULTS,
    XGB_GRID,
    KNNMethod,
    KNNProbe,
    MLPMethod,
    MLPProbe,
    PCAMethod,
    PCAProbe,
    XGBoostMethod,
    XGBoostProbe,
    baseline_method,
    fit_baselines,
    mlp_configurations,
    power_of_two_grid,
    xgboost_configurations,
)
from saelab.probes.linear import LogisticMethod, solve_logistic_tasks
from saelab.probes.logistic import LogisticProbe, fit_logistic_path
from saelab.probes.metrics import roc_auc, weighted_f1
from saelab.probes.protocol import (
    C_GRID,
    ProbeMethod,
    Problem,
    decide_with_estimators,
    run_protocol,
    validation_splits,
)
from saelab.probes.result import ProbeResult
from saelab.probes.sae_probes import (
    CodeSplit,
    SAEProbe,
    fit_sae_probes,
    fit_sae_probes_many,
    rank_latents,
)
from saelab.probes.solvers import fit_logistic_batch

__all__ = [
    "BASELINES",
    "C_GRID",
    "MLP_DEFAULTS",
    "XGB_DEFAULTS",
    "XGB_GRID",
    "CodeSplit",
    "KNNMethod",
    "KNNProbe",
    "LogisticMethod",
    "LogisticProbe",
    "MLPMethod",
    "MLPProbe",
    "PCAMethod",
    "PCAProbe",
    "ProbeDataError",
    "ProbeMethod",
    "ProbeResult",
    "Problem",
    "SAEProbe",
    "XGBoostMethod",
    "XGBoostProbe",
    "baseline_method",
    "decide_with_estimators",
    "fit_baselines",
    "fit_logistic_batch",
    "fit_logistic_path",
    "fit_sae_probes",
    "fit_sae_probes_many",
    "mlp_configurations",
    "power_of_two_grid",
    "rank_latents",
    "roc_auc",
    "run_protocol",
    "solve_logistic_tasks",
    "validation_splits",
    "weighted_f1",
    "xgboost_configurations",
]
