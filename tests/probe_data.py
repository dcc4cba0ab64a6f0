"""Synthetic logistic-regression data and the L2 objective, shared by the probe tests."""

from __future__ import annotations

import numpy as np


def noisy_logistic_data(n: int, d: int, seed: int, scale: float = 1.0):
    """Rows x ~ N(0, scale^2), labels drawn from a logistic model: never linearly separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * scale
    w = rng.normal(size=d) / scale
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ w + 0.3)))).astype(np.int64)
    return X, y


def separable_data(n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 3.0
    w = rng.normal(size=d)
    y = (X @ w + 0.5 > 0).astype(np.int64)
    return X, y


def objective(X, y, w, b, C):
    """sklearn's L2 objective 0.5||w||^2 + C sum log(1 + exp(-y (x.w + b))), y in {-1, +1}."""
    t = np.where(y == 1, 1.0, -1.0) * (X @ w + b)
    return 0.5 * w @ w + C * np.logaddexp(0.0, -t).sum()


def objective_gradient(X, y, w, b, C, fit_intercept=True):
    s = np.where(y == 1, 1.0, -1.0)
    r = s / (1.0 + np.exp(s * (X @ w + b)))  # y_i sigma(-y_i z_i)
    gw = w - C * X.T @ r
    gb = -C * r.sum() if fit_intercept else 0.0
    return np.append(gw, gb)
