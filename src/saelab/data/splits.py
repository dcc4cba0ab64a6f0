"""Train/test splits of a binary dataset, drawn exactly as the paper draws them.

Every setting (normal here; scarcity, class imbalance, label noise and OOD later) returns a
:class:`Split` of row indices into the dataset's labels. The draw itself is
:func:`train_test_indices`, which reproduces ``sae_probes.utils_data.get_train_test_indices``
index for index (spec §1.6), so baselines and SAE probes see identical rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from saelab.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

#: Normal-setting defaults (spec §2): train on min(N - 100, 1024) rows, test on N - n_train - 1.
MAX_TRAIN = 1024
MIN_TEST = 100


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices of one train/test split.

    Attributes:
        train: ``[n_train]`` int64 row indices into the dataset (in the order drawn), read-only.
        test: ``[n_test]`` int64 row indices, read-only. For an OOD setting they index the OOD set.
        setting: ``"normal"`` (later also ``"scarcity"``, ``"imbalance"``, ``"label_noise"``,
            ``"ood"``).
        setting_value: the setting's parameter (train size, positive fraction, noise rate) or
            ``None`` for the normal setting.
        seed: seed of the ``np.random.RandomState`` that drew the split.
    """

    train: np.ndarray
    test: np.ndarray
    setting: str
    setting_value: float | None
    seed: int

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            arr = np.array(getattr(self, name), dtype=np.int64, copy=True)
            if arr.ndim != 1:
                raise ValueError(f"Split.{name} must be 1-D, got shape {tuple(arr.shape)}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test rows."""
        return int(self.test.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return (
            (self.setting, self.setting_value, self.seed)
            == (other.setting, other.setting_value, other.seed)
            and np.array_equal(self.train, other.train)
            and np.array_equal(self.test, other.test)
        )

    def __hash__(self) -> int:
        return hash((self.setting, self.setting_value, self.seed, self.train.tobytes()))


def _check_labels(labels: np.ndarray, dataset_name: str = "") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"{_label(dataset_name)}labels must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise DatasetError(f"{_label(dataset_name)}labels must be 0/1, found values {bad}")
    return y


def _label(dataset_name: str) -> str:
    return f"dataset {dataset_name!r}: " if dataset_name else ""


def _class_sizes(n_train: int, n_test: int, pos_fraction: float) -> tuple[int, int, int, int]:
    """``(pos_train, neg_train, pos_test, neg_test)``: positives are ``ceil(p·n)`` (spec §1.6)."""
    pos_train = math.ceil(pos_fraction * n_train)
    pos_test = math.ceil(pos_fraction * n_test)
    return pos_train, n_train - pos_train, pos_test, n_test - pos_test


def train_test_indices(
    labels: np.ndarray,
    n_train: int,
    n_test: int,
    pos_fraction: float = 0.5,
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a stratified train/test split exactly as the paper does (spec §1.6).

    With one ``np.random.RandomState(seed)`` and without replacement: ``ceil(p·n_train)`` training
    positives, then ``n_train − ceil(p·n_train)`` training negatives, then ``ceil(p·n_test)`` test
    positives and ``n_test − ceil(p·n_test)`` test negatives from the rows left over; then a
    permutation of the training indices, then of the test indices. Identical, index for index, to
    ``sae_probes.utils_data.get_train_test_indices(labels, n_train, n_test, p, seed)``.

    Args:
        labels: ``[N]`` 0/1 labels.
        n_train, n_test: split sizes.
        pos_fraction: fraction ``p`` of positives (label 1) in both sets.
        seed: seed of the ``RandomState``.

    Returns:
        ``(train, test)``: ``[n_train]`` and ``[n_test]`` int64 row indices, disjoint.
    """
    y = _check_labels(labels)
    if n_train < 0 or n_test < 0:
        raise ConfigError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    if not 0.0 <= pos_fraction <= 1.0:
        raise ConfigError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    pos_rows = np.where(y == 1)[0]
    neg_rows = np.where(y == 0)[0]
    pos_train, neg_train, pos_test, neg_test = _class_sizes(n_train, n_test, pos_fraction)
    for cls, have, need in (
        (1, len(pos_rows), pos_train + pos_test),
        (0, len(neg_rows), neg_train + neg_test),
    ):
        if need > have:
            raise DatasetError(
                f"a split of {n_train} train + {n_test} test rows with positive fraction "
                f"{pos_fraction} needs {need} rows of class {cls}; the labels have {have}"
            )

    rng = np.random.RandomState(seed)
    train_pos = rng.choice(pos_rows, size=pos_train, replace=False)
    train_neg = rng.choice(neg_rows, size=neg_train, replace=False)
    test_pos = rng.choice(np.setdiff1d(pos_rows, train_pos), size=pos_test, replace=False)
    test_neg = rng.choice(np.setdiff1d(neg_rows, train_neg), size=neg_test, replace=False)
    train = rng.permutation(np.concatenate([train_pos, train_neg]))
    test = rng.permutation(np.concatenate([test_pos, test_neg]))
    return train.astype(np.int64, copy=False), test.astype(np.int64, copy=False)


def _normal_sizes(
    n_rows: int, max_train: int, min_test: int, max_test: int | None
) -> tuple[int, int]:
    """``n_train = min(N − min_test, max_train)``, ``n_test = N − n_train − 1`` (spec §2, normal).

    ``n_test`` is further capped at ``max_test`` when given (an saelab option, not in the paper).
    """
    n_train = min(n_rows - min_test, max_train)
    n_test = n_rows - n_train - 1
    if max_test is not None:
        n_test = min(n_test, max_test)
    return n_train, n_test


def normal_split(
    labels: np.ndarray,
    seed: int = 42,
    max_train: int = MAX_TRAIN,
    min_test: int = MIN_TEST,
    max_test: int | None = None,
    dataset_name: str = "",
) -> Split:
    """The paper's normal setting: a balanced train set of ``min(N − 100, 1024)`` rows and a
    balanced test set of the ``N − n_train − 1`` rows after it (spec §2; drawn by
    :func:`train_test_indices` with ``p = 0.5``).

    ``max_test`` caps the test set; the training rows (and their order) do not change, because the
    training rows are drawn first from the same ``RandomState`` and ``RandomState.choice`` without
    replacement consumes the same random numbers whatever the sample size.

    The 113 bundled datasets are exactly balanced, so the paper's sizes always fit. When a user
    dataset's minority class cannot supply the balanced draw, the split is computed as if the
    dataset had ``N' < N`` rows, with ``N'`` the largest row count whose balanced sizes fit both
    classes (a warning is logged). If even that leaves fewer than 2 training rows or 1 test row
    per class, DatasetError names the dataset and the rows needed and available.

    Args:
        labels: ``[N]`` 0/1 labels.
        seed: seed of the draw (the paper uses 42).
        max_train: cap on the training set (1024 in the paper).
        min_test: rows held back from training (100 in the paper).
        max_test: optional cap on the test set.
        dataset_name: used in warnings and errors.

    Returns:
        A :class:`Split` with ``setting="normal"`` and ``setting_value=None``.
    """
    y = _check_labels(labels, dataset_name)
    if max_train < 4 or min_test < 0 or (max_test is not None and max_test < 1):
        raise ConfigError(
            f"normal split needs max_train >= 4, min_test >= 0 and max_test >= 1 or None; got "
            f"max_train={max_train}, min_test={min_test}, max_test={max_test}"
        )
    n_rows = int(y.shape[0])
    n_pos = int(y.sum())
    n_neg = n_rows - n_pos

    def fits(n: int) -> bool:  # both classes can supply the balanced draw for N' = n
        pos_train, neg_train, pos_test, neg_test = _class_sizes(
            *_normal_sizes(n, max_train, min_test, max_test), 0.5
        )
        return pos_train + pos_test <= n_pos and neg_train + neg_test <= n_neg

    def usable(n: int) -> bool:  # at least 2 training rows and 1 test row per class
        n_train, n_test = _normal_sizes(n, max_train, min_test, max_test)
        return n_train >= 4 and n_test >= 2

    n_eff = n_rows
    if not fits(n_rows):
        # Class needs grow monotonically with N', so bisect for the largest N' that fits.
        lo, hi = 0, n_rows  # fits(lo) holds (empty draw), fits(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        n_eff = lo
    if not usable(n_eff):
        n_min = next(n for n in range(n_eff, n_eff + min_test + max_train + 8) if usable(n))
        pos_train, neg_train, pos_test, neg_test = _class_sizes(
            *_normal_sizes(n_min, max_train, min_test, max_test), 0.5
        )
        raise DatasetError(
            f"{_label(dataset_name) or 'labels: '}too few rows for the normal split: it needs at "
            f"least 2 training rows and 1 test row per class with min_test={min_test} held back, "
            f"i.e. at least {pos_train + pos_test} rows of class 1 and {neg_train + neg_test} of "
            f"class 0; the dataset has {n_pos} of class 1 and {n_neg} of class 0 "
            "(add rows or lower min_test)"
        )
    n_train, n_test = _normal_sizes(n_eff, max_train, min_test, max_test)
    if n_eff < n_rows:
        paper_train, paper_test = _normal_sizes(n_rows, max_train, min_test, max_test)
        logger.warning(
            "%sclasses are imbalanced (%d of class 1, %d of class 0): a balanced normal split of "
            "%d train + %d test rows does not fit, using %d train + %d test rows",
            _label(dataset_name),
            n_pos,
            n_neg,
            paper_train,
            paper_test,
            n_train,
            n_test,
        )
    train, test = train_test_indices(y, n_train, n_test, pos_fraction=0.5, seed=seed)
    return Split(train=train, test=test, setting="normal", setting_value=None, seed=seed)
