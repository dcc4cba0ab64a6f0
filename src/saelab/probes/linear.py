"""Logistic probes as a protocol method: many small fits grouped into batched torch solves.

The validation protocol hands :class:`LogisticMethod` every fold of every problem of a unit at
once (e.g. the 25 leave-two-out folds of a 10-row training set, the 6 folds of each training size
of the scarcity regime, the hold-out fold of every flip ratio of the label-noise regime).
:func:`solve_logistic_tasks` groups those fits by shape, pads rows (masked out) and columns (weight
fixed at 0) within a group, and solves each group with one call of
:func:`saelab.probes.solvers.fit_logistic_batch` over the whole C grid, so the cost is a few large
batched tensor operations instead of one Python-level solve per fold. Padding is exact: a masked
row contributes nothing and a masked column keeps weight 0, so every fit equals the unpadded one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from saelab.errors import ConfigError
from saelab.probes import protocol, solvers
from saelab.probes.logistic import LogisticProbe
from saelab.probes.protocol import Decisions, FitTask, Split

Penalty = Literal["l1", "l2"]

# A group of fits is padded to its largest column count only while the padded problem stays
# small (rows * columns^2 below this); larger problems are grouped by their exact column count.
_MERGE_COLUMNS_BELOW = 1 << 22
# Bound on the elements of one padded [B, n, p] batch (float64: 8 bytes each).
_MAX_BATCH_ELEMENTS = 1 << 24


@dataclass
class LogisticTask:
    """One logistic fit over a C path: X [n, p] float64, y [n] 0/1, Cs [m].

    ``n_features``: fit only the first ``n_features`` columns (the others keep weight 0), so
    nested feature sets (PCA components, top-k latents) can share one matrix.
    """

    X: np.ndarray
    y: np.ndarray
    Cs: Sequence[float]
    n_features: int | None = None
    init: tuple[np.ndarray, np.ndarray] | None = None  # warm start: coef [m, p], intercept [m]


@dataclass
class LogisticSolution:
    """coef [m, p] (0 beyond ``n_features``), intercept [m], converged [m], n_iter [m] for the
    Cs [m]."""

    coef: np.ndarray
    intercept: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    Cs: Sequence[float] = ()


def _row_bucket(n: int) -> int:
    """Rows a fit of n rows is padded to: n itself up to 32, else the next multiple of n/8."""
    if n <= 32:
        return n
    step = 1 << (int(math.log2(n)) - 3)
    return -(-n // step) * step


def _groups(tasks: Sequence[LogisticTask]) -> list[list[int]]:
    """Indices of tasks solved together: the same row bucket, path length and warm-start kind;
    different widths only while the padded problem stays small; at most ``_MAX_BATCH_ELEMENTS``
    padded entries per group."""
    keyed: dict[tuple[int, int, bool], list[int]] = {}
    for i, t in enumerate(tasks):
        key = (_row_bucket(t.X.shape[0]), len(t.Cs), t.init is not None)
        keyed.setdefault(key, []).append(i)
    out = []
    for (rows, _, _), idx in keyed.items():
        idx.sort(key=lambda i: tasks[i].X.shape[1])
        group: list[int] = []
        for i in idx:
            p = tasks[i].X.shape[1]  # the widest so far (sorted by width)
            mixed = bool(group) and p != tasks[group[0]].X.shape[1]
            if (mixed and rows * p * p > _MERGE_COLUMNS_BELOW) or (
                group and (len(group) + 1) * rows * p > _MAX_BATCH_ELEMENTS
            ):
                out.append(group)
                group = []
            group.append(i)
        out.append(group)
    return out


def solve_logistic_tasks(
    tasks: Sequence[LogisticTask],
    penalty: Penalty,
    device: str | torch.device = "cpu",
) -> list[LogisticSolution]:
    """Solve every task (each over its own C path) in as few batched solves as shapes allow.

    Objectives: :func:`saelab.probes.solvers.fit_logistic_batch` (L2: 0.5 ||w||^2, L1: ||w||_1,
    plus C times the summed log-loss; the intercept is not penalised). Returns one
    :class:`LogisticSolution` per task, in order.
    """
    if penalty not in ("l1", "l2"):
        raise ConfigError(f"penalty: expected 'l1' or 'l2', got {penalty!r}")
    out: list[LogisticSolution | None] = [None] * len(tasks)
    for group in _groups(tasks):
        B = len(group)
        n = max(tasks[i].X.shape[0] for i in group)
        p = max(tasks[i].X.shape[1] for i in group)
        X = np.zeros((B, n, p))
        y = np.zeros((B, n))
        rows = np.zeros((B, n), dtype=bool)
        cols = np.zeros((B, p), dtype=bool)
        m = len(tasks[group[0]].Cs)
        Cs = np.zeros((B, m))
        warm = tasks[group[0]].init is not None
        coef0, b0 = np.zeros((B, m, p)), np.zeros((B, m))
        for b, i in enumerate(group):
            t = tasks[i]
            ni, pi = t.X.shape
            X[b, :ni, :pi] = t.X
            y[b, :ni] = t.y
            rows[b, :ni] = True
            cols[b, : pi if t.n_features is None else min(t.n_features, pi)] = True
            Cs[b] = t.Cs
            if warm:
                coef0[b, :, :pi] = t.init[0]  # type: ignore[index]
                b0[b] = t.init[1]  # type: ignore[index]
        fit = solvers.fit_logistic_batch(
            torch.from_numpy(X).to(device),
            torch.from_numpy(y).to(device),
            torch.from_numpy(Cs).to(device),
            penalty=penalty,
            row_mask=None if rows.all() else torch.from_numpy(rows).to(device),
            feature_mask=None if cols.all() else torch.from_numpy(cols).to(device),
            init=(torch.from_numpy(coef0).to(device), torch.from_numpy(b0).to(device))
            if warm
            else None,
        )
        coef = fit.coef.cpu().numpy()
        intercept = fit.intercept.cpu().numpy()
        for b, i in enumerate(group):
            pi = tasks[i].X.shape[1]
            out[i] = LogisticSolution(
                coef=coef[b, :, :pi],
                intercept=intercept[b],
                converged=np.asarray(fit.converged[b], dtype=bool),
                n_iter=np.asarray(fit.n_iter[b]),
                Cs=tasks[i].Cs,
            )
    return out  # type: ignore[return-value]


class LogisticMethod:
    """Logistic regression over the paper's C grid (``find_best_reg``), L2 or L1, batched.

    ``name`` defaults to ``"logreg"`` (the paper's L2 baseline on raw activations, unscaled);
    SAE probes use it on their top-k latent columns. n <= 3: C = 1.
    """

    def __init__(
        self,
        penalty: Penalty = "l2",
        Cs: Sequence[float] | np.ndarray | None = None,
        name: str = "logreg",
        device: str | torch.device = "cpu",
    ) -> None:
        if penalty not in ("l1", "l2"):
            raise ConfigError(f"penalty: expected 'l1' or 'l2', got {penalty!r}")
        self.penalty: Penalty = penalty
        grid = protocol.C_GRID if Cs is None else Cs  # the paper's grid, read when built
        self.Cs = [float(c) for c in np.asarray(grid, dtype=np.float64).ravel()]
        self.name = name
        self.device = device

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]:
        return [{"C": c} for c in self.Cs]

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]:
        return {"C": 1.0}

    def estimator(self, setting: dict[str, Any]) -> LogisticProbe:
        return LogisticProbe(C=setting["C"], penalty=self.penalty)

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]:
        """Batched fits; each setting's state is its (coef [d], intercept), a warm start that
        the protocol hands to the refit of the chosen C."""
        jobs = []
        for t in tasks:
            init = None
            if t.init is not None and all(s is not None for s in t.init):
                init = (np.stack([s[0] for s in t.init]), np.array([s[1] for s in t.init]))
            jobs.append(LogisticTask(t.X_fit, t.y_fit, [s["C"] for s in t.settings], init=init))
        solved = solve_logistic_tasks(jobs, self.penalty, self.device)
        return [
            Decisions(
                values=(t.X_eval @ s.coef.T + s.intercept).T,
                converged=s.converged,
                states=[(s.coef[j], float(s.intercept[j])) for j in range(len(s.Cs))],
            )
            for t, s in zip(tasks, solved, strict=True)
        ]

    def fingerprint(self) -> dict[str, Any]:
        return {
            "penalty": self.penalty,
            "Cs": self.Cs,
            "solver": solvers.solver_fingerprint(self.penalty),
            "torch": torch.__version__,
        }
