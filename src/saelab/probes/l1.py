"""L1-regularised logistic regression over a C grid (the paper's sparse SAE probe, spec 4.1.5).

Objective (scikit-learn user guide, "Linear Models > Logistic regression", binary case with the
L1 penalty, https://scikit-learn.org/stable/modules/linear_model.html#logistic-regression):

    f_C(w, b) = ||w||_1 + C * sum_i log(1 + exp(-y_i (x_i . w + b))),   y_i in {-1, +1}.

The intercept b is not penalised: this is exactly the objective of the paper's ``saga`` fits
(max_iter=1000, unstandardised features), which at large C stop at the iteration cap far from
the optimum. saelab solves it to the optimum with its own torch solver
(``saelab.probes.solvers.fit_logistic_batch``, an orthant-wise damped Newton method, on the GPU
when there is one), deterministic and tight enough that the fit is a continuous function of the
data (last-bit differences in the codes do not move the chosen C). Earlier versions used
LIBLINEAR (newGLMNET) through scikit-learn, which penalises the intercept as an extra weight on a
constant feature of value s = ``intercept_scaling`` (a penalty |b| / s on b), randomises its
coordinate order (hence the ``seed`` argument, now unused) and stopped at tol=1e-6.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saelab.probes.logistic import fit_logistic_path


def fit_l1_path(
    X: np.ndarray, y: np.ndarray, Cs: Sequence[float] | np.ndarray, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """L1 logistic fits for every C: ``(coef [n_C, d], intercept [n_C])``, in the order of Cs.

    Args:
        X: [n, d] float64 features (not standardised, as in the paper); y: [n] 0/1 labels with
            both classes; Cs: inverse regularisation strengths (> 0); seed: unused (kept for
            callers of the LIBLINEAR version; the solver is deterministic).
    """
    del seed
    coef, intercept, _ = fit_logistic_path(X, y, Cs, penalty="l1")
    return coef, intercept
