"""The paper's validation protocol, written once for every probe method and run for many problems.

Source: sae-probes 0.4.2 ``utils_training.py`` (``get_cv``, ``get_splits`` and the ``find_best_*``
functions) and the paper's section 3 (Kantamneni et al. 2025): for one training set,

1. n <= 3 rows: no validation; the method's default setting is fitted and its validation AUC is
   the training AUC.
2. otherwise: the validation splits of :func:`validation_splits`; every candidate setting of the
   method is fitted on each split's training rows and scored by ROC AUC on its validation rows; a
   split whose training part has one class scores :data:`SINGLE_CLASS_SCORE` for every setting.
3. the setting with the first maximum of the mean validation AUC (candidates in the method's
   order) is refitted on all training rows and scored once on the test rows.

:func:`run_protocol` runs that for a list of problems (e.g. every training size of the scarcity
regime, every k of an SAE probe) at once: all fold fits of all problems go to the method's
``decide`` in one call, and all refits in a second, so a method can solve many small problems in
one batched solve (``LogisticMethod``) instead of one Python call per fold.

Every score is computed on **decision values** (the margin x . w + b of a logistic probe, the
booster margin of XGBoost, the output logit of the MLP, the vote share minus 1/2 for KNN); a
decision value > 0 predicts class 1.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from saelab.errors import ProbeDataError
from saelab.probes.metrics import labels_1d, roc_auc, weighted_f1
from saelab.probes.result import ProbeResult

logger = logging.getLogger(__name__)

ArrayLike = Any  # np.ndarray | torch.Tensor | scipy.sparse matrix | nested lists

PROTOCOL_VERSION = 3
"""Changes whenever the protocol's rules change (it is part of every probe unit's key)."""

C_GRID = np.logspace(5, -5, 10)
"""The paper's C grid for logistic probes, largest first (``find_best_reg``: logspace(5, -5, 10));
with the first-maximum rule, validation-AUC ties go to the larger C."""

NO_VALIDATION_MAX_ROWS = 3
"""Training sets of at most this many rows are not validated: defaults are used (``find_best_*``)."""

LEAVE_TWO_OUT_MAX_ROWS = 12
"""Up to this many rows: leave-two-out over the pairs with both classes (``get_cv``)."""

KFOLD_SPLITS = 6
"""Below :data:`HOLDOUT_MIN_ROWS` rows: stratified 6-fold (``get_cv``)."""

HOLDOUT_MIN_ROWS = 128
"""From this many rows: one hold-out of the last min(int(0.2 n), 100) rows (``get_cv``)."""

HOLDOUT_FRACTION = 0.2
HOLDOUT_MAX_ROWS = 100

SINGLE_CLASS_SCORE = 0.5
"""Validation score of a split whose training part has one class (``find_best_reg``'s neutral
score; the paper's other methods raise there)."""

Split = tuple[np.ndarray, np.ndarray]


def protocol_fingerprint() -> dict[str, Any]:
    """The protocol's constants, for the keys of cached results (a change recomputes them)."""
    return {
        "version": PROTOCOL_VERSION,
        "no_validation_max_rows": NO_VALIDATION_MAX_ROWS,
        "leave_two_out_max_rows": LEAVE_TWO_OUT_MAX_ROWS,
        "kfold_splits": KFOLD_SPLITS,
        "holdout": [HOLDOUT_MIN_ROWS, HOLDOUT_FRACTION, HOLDOUT_MAX_ROWS],
        "single_class_score": SINGLE_CLASS_SCORE,
    }


# ----------------------------------------------------------------------------------- splits


def validation_splits(y: ArrayLike, seed: int = 42) -> list[Split]:
    """(train_rows, validation_rows) index pairs for choosing hyperparameters on n training rows.

    sae-probes ``get_cv`` + ``get_splits``:
    - n <= 3: no split (``[]``); the caller uses default hyperparameters.
    - n <= 12: leave-2-out over all pairs (i < j, lexicographic, as ``LeavePOut(2)``), keeping the
      pairs whose two rows have both classes.
    - 13 <= n < 128: ``StratifiedKFold(6, shuffle=True, random_state=seed)``, keeping the folds
      whose validation part has both classes.
    - n >= 128: one hold-out, the last ``v = min(int(0.2 n), 100)`` rows (the rows are already in
      random order). Deliberate fix: the paper does not check this hold-out, and
      ``roc_auc_score`` raises when it has one class (and a one-class training part makes every
      setting score 0.5). When either part has one class we take instead the last
      ``v_pos = round(v * n_pos / n)`` positive rows and the last ``v - v_pos`` negative rows, with
      each class count clipped to [1, class size - 1] where possible, so that both parts keep both
      classes.

    Args:
        y: [n] labels (any two values; one value gives no usable split for n < 128).
        seed: ``random_state`` of the stratified K-fold.

    Returns:
        A list of (train_rows [n - v], validation_rows [v]) int64 arrays, each in increasing order.
    """
    y = labels_1d(y, "y")
    n = y.shape[0]
    if n <= NO_VALIDATION_MAX_ROWS:
        return []
    if n <= LEAVE_TWO_OUT_MAX_ROWS:
        splits = []
        for i, j in combinations(range(n), 2):
            if y[i] != y[j]:
                train = np.array([r for r in range(n) if r != i and r != j], dtype=np.int64)
                splits.append((train, np.array([i, j], dtype=np.int64)))
        return splits
    if n < HOLDOUT_MIN_ROWS:
        kfold = StratifiedKFold(n_splits=KFOLD_SPLITS, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # "least populated class has fewer than 6 members"
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            folds = list(kfold.split(np.zeros((n, 1)), y))
        return [
            (train.astype(np.int64), val.astype(np.int64))
            for train, val in folds
            if np.unique(y[val]).size == 2
        ]
    v = min(int(HOLDOUT_FRACTION * n), HOLDOUT_MAX_ROWS)
    rows = np.arange(n, dtype=np.int64)
    both = np.unique(y[n - v :]).size == 2 and np.unique(y[: n - v]).size == 2
    if both or np.unique(y).size < 2:
        return [(rows[: n - v], rows[n - v :])]
    return [_stratified_holdout(y, v)]


def _stratified_holdout(y: np.ndarray, v: int) -> Split:
    """Hold out the last rows of each class, v in total, in proportion to the class sizes."""
    n = y.shape[0]
    positive = y == np.unique(y)[1]
    pos_rows, neg_rows = np.flatnonzero(positive), np.flatnonzero(~positive)
    v_pos = round(v * pos_rows.size / n)
    v_pos = max(1, min(v_pos, pos_rows.size - 1, v - 1))
    v_neg = v - v_pos
    v_neg = max(1, min(v_neg, neg_rows.size - 1))
    val = np.sort(
        np.concatenate([pos_rows[pos_rows.size - v_pos :], neg_rows[neg_rows.size - v_neg :]])
    )
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val)
    logger.info(
        "hold-out of the last %d rows leaves one class in a part; using the last %d positive and "
        "%d negative rows",
        v,
        v_pos,
        v_neg,
    )
    return train.astype(np.int64), val.astype(np.int64)


# ----------------------------------------------------------------------------------- inputs


def as_float64_matrix(X: ArrayLike, name: str = "X") -> np.ndarray:
    """Return ``X`` as a C-contiguous float64 numpy array [n, d]; raise on bad shape or values.

    Accepts numpy arrays, torch tensors (any device), scipy sparse matrices (densified) and nested
    lists. Raises ``ProbeDataError`` naming ``name`` and the first non-finite row.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().to("cpu", torch.float64).numpy()
    elif sp.issparse(X):
        X = X.toarray()
    try:
        arr = np.ascontiguousarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProbeDataError(
            f"{name}: expected a numeric 2-D array, got {type(X).__name__}"
        ) from exc
    if arr.ndim != 2:
        raise ProbeDataError(f"{name}: expected a 2-D array [n, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ProbeDataError(f"{name}: expected at least one row and one column, got {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ProbeDataError(f"{name}: row {row} has a NaN or infinite value")
    return arr


def validate_estimator_input(
    estimator: Any, X: ArrayLike, y: ArrayLike | None = None, reset: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """scikit-learn's input checks for an estimator (messages, ``n_features_in_``), then ours.

    Returns X as float64 [n, d] (sparse and torch inputs densified; every row finite) and y [n]
    (when fitting, ``reset=True``). Errors are ``ProbeDataError`` with scikit-learn's message.
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().to("cpu", torch.float64).numpy()
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    kwargs = {"accept_sparse": True, "dtype": np.float64, "ensure_all_finite": False}
    try:
        if reset:
            X, y = validate_data(estimator, X, y, reset=True, **kwargs)
            check_classification_targets(y)
        else:
            X = validate_data(estimator, X, reset=False, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ProbeDataError(f"{type(estimator).__name__} input: {exc}") from exc
    return as_float64_matrix(X, "X"), y


def binary_labels(y: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    """Labels as int64 {0, 1} [n]; raises ``ProbeDataError`` unless both classes are present."""
    arr = labels_1d(y, name)
    if n is not None and arr.shape[0] != n:
        raise ProbeDataError(f"{name}: expected a 1-D array of {n} labels, got shape {arr.shape}")
    values = np.unique(arr)
    if not set(values.tolist()) <= {0, 1}:
        raise ProbeDataError(f"{name}: expected labels 0/1, got values {values.tolist()[:10]}")
    if values.size < 2:
        raise ProbeDataError(f"{name}: expected both classes 0 and 1, got only {values.tolist()}")
    return arr.astype(np.int64)


@dataclass
class Problem:
    """One probing problem: a training set and a test set (one split, one k of an SAE probe).

    ``X_train`` [n, d] and ``X_test`` [m, d] (anything :func:`as_float64_matrix` takes),
    ``y_train`` [n] and ``y_test`` [m] 0/1 labels with both classes. ``info`` is copied into the
    result (e.g. ``{"k": 16, "latents": [...]}``).
    """

    X_train: ArrayLike
    y_train: ArrayLike
    X_test: ArrayLike
    y_test: ArrayLike
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitTask:
    """Fit every setting on (X_fit [n, d], y_fit [n] 0/1) and give decision values on X_eval [m, d].

    ``init``: an optional warm start per setting (a state a method returned in
    ``Decisions.states``, e.g. a validation fold's solution for the refit); methods that cannot
    use one ignore it. The optimum does not depend on it.
    """

    X_fit: np.ndarray
    y_fit: np.ndarray
    X_eval: np.ndarray
    settings: list[dict[str, Any]]
    init: list[Any] | None = None


@dataclass
class Decisions:
    """What a method returns per task: ``values`` [n_settings, m] (> 0 predicts class 1),
    ``converged`` [n_settings] (False where a fit stopped at its iteration cap) and optionally the
    fitted ``states`` [n_settings] (warm starts for later fits of the same setting)."""

    values: np.ndarray
    converged: np.ndarray
    states: list[Any] | None = None


class ProbeMethod(Protocol):
    """A probe family the protocol can run (one per probe: ``LogisticMethod`` in
    ``probes/linear.py``, ``PCAMethod``, ``KNNMethod``, ``XGBoostMethod``, ``MLPMethod`` in
    ``probes/baselines.py``).

    ``candidates`` lists the settings searched (in order: the first maximum of the mean
    validation AUC wins), ``default_setting`` is used for n <= 3 training rows, ``estimator``
    builds the scikit-learn style estimator of one setting, and ``decide`` fits many
    (task, setting) pairs at once. ``fingerprint`` lists every constant and library version
    that changes a fit, for the keys of cached results.
    """

    name: str

    def candidates(self, X_train: np.ndarray, splits: Sequence[Split]) -> list[dict[str, Any]]: ...

    def default_setting(self, X_train: np.ndarray) -> dict[str, Any]: ...

    def estimator(self, setting: dict[str, Any]) -> Any: ...

    def decide(self, tasks: Sequence[FitTask]) -> list[Decisions]: ...

    def fingerprint(self) -> dict[str, Any]: ...


def decide_with_estimators(method: ProbeMethod, tasks: Sequence[FitTask]) -> list[Decisions]:
    """``decide`` by fitting ``method.estimator(setting)`` per (task, setting), one at a time.

    The reference every batched ``decide`` must agree with. An estimator reports a fit that hit
    its iteration cap with ``converged_ = False`` (estimators without it always converge).
    """
    out = []
    for task in tasks:
        values, converged = [], []
        for setting in task.settings:
            est = method.estimator(setting).fit(task.X_fit, task.y_fit)
            values.append(np.asarray(est.decision_function(task.X_eval), dtype=np.float64))
            converged.append(bool(getattr(est, "converged_", True)))
        out.append(Decisions(np.stack(values), np.asarray(converged, dtype=bool)))
    return out


# ----------------------------------------------------------------------------------- protocol


@dataclass
class _Checked:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any]


def _check(problem: Problem, index: int) -> _Checked:
    where = "" if index == 0 else f"problem {index}: "
    X_tr = as_float64_matrix(problem.X_train, f"{where}X_train")
    X_te = as_float64_matrix(problem.X_test, f"{where}X_test")
    y_tr = binary_labels(problem.y_train, f"{where}y_train", X_tr.shape[0])
    y_te = binary_labels(problem.y_test, f"{where}y_test", X_te.shape[0])
    if X_te.shape[1] != X_tr.shape[1]:
        raise ProbeDataError(
            f"{where}X_test: expected {X_tr.shape[1]} columns like X_train, got {X_te.shape[1]}"
        )
    return _Checked(X_tr, y_tr, X_te, y_te, dict(problem.info))


@dataclass
class Validation:
    """The validation of one problem: candidate ``settings``, ``mean_auc`` [n_settings] (None
    for n <= 3), the ``chosen`` index (first maximum) and whether every fold fit of the chosen
    setting converged."""

    settings: list[dict[str, Any]]
    mean_auc: np.ndarray | None
    chosen: int
    converged: bool
    state: Any = None  # the last fold's fitted state of the chosen setting (a warm start)


def validate(method: ProbeMethod, problems: Sequence[Problem], seed: int = 42) -> list[Validation]:
    """Step 1-2 of the protocol for every problem: all fold fits in one ``method.decide`` call
    (single-threaded, as :func:`run_protocol`)."""
    with single_threaded():
        return _validate(method, [_check(p, i) for i, p in enumerate(problems)], seed)


def _validate(method: ProbeMethod, checked: Sequence[_Checked], seed: int) -> list[Validation]:
    tasks: list[FitTask] = []
    owners: list[tuple[int, int, np.ndarray]] = []  # (problem, split, validation rows)
    grids: list[list[dict[str, Any]]] = []
    scores: list[np.ndarray | None] = []
    fold_converged: list[np.ndarray | None] = []
    last_states: list[list[Any] | None] = [None] * len(checked)
    for i, c in enumerate(checked):
        if c.X_train.shape[0] <= NO_VALIDATION_MAX_ROWS:
            grids.append([method.default_setting(c.X_train)])
            scores.append(None)
            fold_converged.append(None)
            continue
        splits = validation_splits(c.y_train, seed=seed)
        if not splits:
            raise ProbeDataError("y_train: no validation split has both classes")
        settings = method.candidates(c.X_train, splits)
        grids.append(settings)
        scores.append(np.full((len(splits), len(settings)), SINGLE_CLASS_SCORE))
        fold_converged.append(np.ones((len(splits), len(settings)), dtype=bool))
        for s, (train, val) in enumerate(splits):
            if np.unique(c.y_train[train]).size < 2:
                continue  # keeps SINGLE_CLASS_SCORE
            tasks.append(FitTask(c.X_train[train], c.y_train[train], c.X_train[val], settings))
            owners.append((i, s, val))
    for (i, s, val), dec in zip(owners, method.decide(tasks), strict=True):
        scores[i][s] = roc_auc(checked[i].y_train[val], dec.values)  # type: ignore[index]
        fold_converged[i][s] = dec.converged  # type: ignore[index]
        if dec.states is not None:
            last_states[i] = dec.states
    out = []
    for i in range(len(checked)):
        if scores[i] is None:
            out.append(Validation(grids[i], None, 0, True))
            continue
        mean = scores[i].mean(axis=0)  # type: ignore[union-attr]
        best = int(np.argmax(mean))  # the first maximum
        converged = bool(fold_converged[i][:, best].all())  # type: ignore[index]
        state = None if last_states[i] is None else last_states[i][best]  # type: ignore[index]
        out.append(Validation(grids[i], mean, best, converged, state))
    return out


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with one torch thread and one BLAS / OpenMP thread, then restore them.

    The probe engine's fits are many small problems: measured on this project's 2-core machine,
    multi-threaded MKL ran a 129 x 129 Cholesky 100-500x slower than one thread, and a whole
    probe protocol about 10x slower. Parallelism comes from running many units at once
    (``saelab.pipeline.executors``), each on one thread, which also makes the numbers independent
    of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def run_protocol(
    method: ProbeMethod, problems: Sequence[Problem], seed: int = 42
) -> list[ProbeResult]:
    """Validate, select, refit and score ``method`` on every problem (module docstring).

    All fold fits of all problems are handed to ``method.decide`` in one call, then all refits in
    a second one, single-threaded (:func:`single_threaded`). Returns one :class:`ProbeResult` per
    problem, in order; ``seconds`` is the wall time of the whole call divided by the number of
    problems (the fits are shared), and ``converged`` is False when the refit or a validation fit
    of the chosen setting stopped at its iteration cap.
    """
    with single_threaded():
        return _run_protocol(method, problems, seed)


def _run_protocol(method: ProbeMethod, problems: Sequence[Problem], seed: int) -> list[ProbeResult]:
    start = time.perf_counter()
    checked = [_check(p, i) for i, p in enumerate(problems)]
    validations = _validate(method, checked, seed)

    # ---- refit the chosen setting on all training rows, one decide() call
    refits = []
    for c, v in zip(checked, validations, strict=True):
        X_eval = c.X_test if v.mean_auc is not None else np.concatenate([c.X_test, c.X_train])
        init = None if v.state is None else [v.state]
        refits.append(FitTask(c.X_train, c.y_train, X_eval, [v.settings[v.chosen]], init))
    decided = method.decide(refits)
    per_problem = (time.perf_counter() - start) / max(len(checked), 1)

    results = []
    for c, v, dec in zip(checked, validations, decided, strict=True):
        m = c.X_test.shape[0]
        test_values = dec.values[0, :m]
        if v.mean_auc is None:  # n <= 3: the training AUC of the default fit
            val_auc = float(roc_auc(c.y_train, dec.values[0, m:]))
        else:
            val_auc = float(v.mean_auc[v.chosen])
        pred = (test_values > 0).astype(np.int64)
        info = dict(c.info)
        results.append(
            ProbeResult(
                method=method.name,
                test_auc=float(roc_auc(c.y_test, test_values)),
                test_acc=float(np.mean(pred == c.y_test)),
                test_f1=weighted_f1(c.y_test, pred),
                val_auc=val_auc,
                hyperparams=dict(v.settings[v.chosen]),
                n_train=c.X_train.shape[0],
                n_test=m,
                seconds=per_problem,
                converged=bool(dec.converged[0]) and v.converged,
                k=info.pop("k", None),
                latents=info.pop("latents", None),
                variant=info.pop("variant", None),
                info=info,
            )
        )
    return results
