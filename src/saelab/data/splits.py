"""Train/test splits of a binary dataset for the paper's five settings, drawn as the paper draws them.

Every setting returns :class:`Split` objects of row indices into the dataset's labels (spec §2):

- :func:`normal_split`: balanced ``min(N − 100, 1024)`` train rows, the rest (``N − n − 1``) test;
- :func:`scarcity_splits`: one split per training size in :data:`SCARCITY_SIZES`;
- :func:`imbalance_splits`: one split per positive fraction in :data:`IMBALANCE_FRACTIONS`, with a
  train and test size fixed across fractions;
- :func:`label_noise_splits`: the normal split with a share of the training labels flipped
  (:data:`LABEL_NOISE_RATIOS`); the noisy labels travel in ``Split.train_labels``;
- :func:`ood_split`: train on an in-distribution set, test on a whole out-of-distribution set
  (``Split.test_source`` names it); :data:`OOD_PAIRS`, :func:`load_ood_pair` and
  :func:`match_ood_classes` pair the files and check that their classes agree.

The draw itself is :func:`train_test_indices`, which reproduces
``sae_probes.utils_data.get_train_test_indices`` index for index (spec §1.6), so baselines and SAE
probes see identical rows. The regimes compute class counts with exact decimal arithmetic instead of
binary floats (see :func:`imbalance_splits` and :func:`flip_labels`); on the paper's data this
matches the peer except where the peer contradicts itself (spec §7.3 spirit: fix, don't copy).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from saelab.data.datasets import Dataset, content_hash_of, load_dataset
from saelab.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

#: Normal-setting defaults (spec §2): train on min(N - 100, 1024) rows, test on N - n_train - 1.
MAX_TRAIN = 1024
MIN_TEST = 100

#: Scarcity training sizes: ``unique(round(2**linspace(1, 10, 20)))`` (spec §2), i.e.
#: ``(2, 3, 4, 5, 7, 10, 14, 20, 28, 38, 53, 74, 103, 143, 198, 275, 382, 531, 737, 1024)``.
SCARCITY_SIZES: tuple[int, ...] = tuple(
    int(v) for v in np.unique(np.round(2.0 ** np.linspace(1, 10, 20)).astype(np.int64))
)

#: Imbalance positive fractions 0.05, 0.10, ..., 0.95 (spec §2: ``linspace(0.05, 0.95, 19)``),
#: rounded to 2 decimals (the peer's baseline runner rounds to the nearest 0.05 the same way).
IMBALANCE_FRACTIONS: tuple[float, ...] = tuple(
    round(float(f), 2) for f in np.linspace(0.05, 0.95, 19)
)

#: The extreme fractions the paper sizes the imbalance split for (spec §2: M uses 0.05 and 0.95).
IMBALANCE_BOUNDS = (0.05, 0.95)

#: Label-noise ratios 0, 0.05, ..., 0.5 (spec §2: ``linspace(0, 0.5, 11)``), rounded to 2 decimals.
LABEL_NOISE_RATIOS: tuple[float, ...] = tuple(round(float(r), 2) for r in np.linspace(0, 0.5, 11))

#: OOD setting defaults (spec §2): 1024 balanced training rows from the first 1500 ID rows.
OOD_TRAIN = 1024
OOD_MAX_ROWS = 1500

#: The 8 bundled (in-distribution name, OOD name) pairs, in number order (spec §1.4); equal to the
#: OOD entries of ``saelab.data.list_bundled(include_ood=True)`` (checked by the tests).
OOD_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (name, f"{name}_OOD")
    for name in (
        "5_hist_fig_ismale",
        "6_hist_fig_isamerican",
        "7_hist_fig_ispolitician",
        "66_living-room",
        "67_social-security",
        "73_control-group",
        "87_glue_cola",
        "90_glue_qnli",
    )
)

#: Bundled OOD sets whose raw targets differ from their ID set's: OOD raw value -> ID raw value.
#: The qnli OOD targets are ``'1'`` and ``'not_entailment'`` while the ID set uses 0/1 with
#: 1 = not-entailment (spec §1.4); both encode to the same 0/1 labels.
BUNDLED_OOD_CLASS_MAPS: dict[str, dict[Any, Any]] = {
    "90_glue_qnli_OOD": {"1": 0, "not_entailment": 1},
}


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices of one train/test split, plus noisy training labels and the test set's source.

    Attributes:
        train: ``[n_train]`` int64 row indices into the dataset (in the order drawn), read-only.
        test: ``[n_test]`` int64 row indices, read-only. They index the dataset named by
            ``test_source`` when that is set (the OOD setting), else the training dataset.
        setting: ``"normal"``, ``"scarcity"``, ``"imbalance"``, ``"label_noise"`` or ``"ood"``.
        setting_value: the setting's parameter: train size (scarcity), positive fraction
            (imbalance), noise ratio (label noise); ``None`` for the normal and OOD settings.
        seed: seed of the ``np.random.RandomState`` that drew the split (and flipped the labels).
        train_labels: ``[n_train]`` int64 0/1 training labels aligned with ``train`` when they are
            not the dataset's own (the label-noise setting), read-only; ``None`` means
            ``labels[train]``. Test labels are always the dataset's own (spec §2: test is clean).
            Use :meth:`y_train` rather than indexing the labels yourself.
        test_source: ``None`` when ``test`` indexes the training dataset; otherwise the name of
            the dataset it indexes (the OOD set's name in the ``"ood"`` setting).
    """

    train: np.ndarray
    test: np.ndarray
    setting: str
    setting_value: float | None
    seed: int
    train_labels: np.ndarray | None = None
    test_source: str | None = None

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            arr = np.array(getattr(self, name), dtype=np.int64, copy=True)
            if arr.ndim != 1:
                raise ValueError(f"Split.{name} must be 1-D, got shape {tuple(arr.shape)}")
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        if self.train_labels is not None:
            noisy = np.array(self.train_labels, copy=True)
            if noisy.shape != self.train.shape:
                raise ValueError(
                    f"Split.train_labels must have the shape of train {tuple(self.train.shape)}, "
                    f"got {tuple(noisy.shape)}"
                )
            if noisy.size and not np.isin(noisy, (0, 1)).all():
                raise ValueError("Split.train_labels must be 0/1")
            noisy = noisy.astype(np.int64)
            noisy.setflags(write=False)
            object.__setattr__(self, "train_labels", noisy)

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test rows."""
        return int(self.test.shape[0])

    def y_train(self, labels: np.ndarray) -> np.ndarray:
        """``[n_train]`` int64 training labels: ``train_labels`` when set, else ``labels[train]``.

        Args:
            labels: ``[N]`` 0/1 labels of the training dataset.
        """
        if self.train_labels is not None:
            return self.train_labels
        return np.asarray(labels, dtype=np.int64)[self.train]

    def key_parts(self) -> dict[str, Any]:
        """Everything that identifies the split, as JSON-able values (for cache and result keys)."""
        return {
            "train": self.train.tolist(),
            "test": self.test.tolist(),
            "setting": self.setting,
            "value": self.setting_value,
            "seed": self.seed,
            "train_labels": None if self.train_labels is None else self.train_labels.tolist(),
            "test_source": self.test_source,
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        if (self.train_labels is None) != (other.train_labels is None):
            return False
        return (
            (self.setting, self.setting_value, self.seed, self.test_source)
            == (other.setting, other.setting_value, other.seed, other.test_source)
            and np.array_equal(self.train, other.train)
            and np.array_equal(self.test, other.test)
            and (
                self.train_labels is None or np.array_equal(self.train_labels, other.train_labels)  # type: ignore[arg-type]
            )
        )

    def __hash__(self) -> int:
        noisy = None if self.train_labels is None else self.train_labels.tobytes()
        return hash(
            (
                self.setting,
                self.setting_value,
                self.seed,
                self.test_source,
                self.train.tobytes(),
                noisy,
            )
        )


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
    """``(pos_train, neg_train, pos_test, neg_test)``: positives are ``ceil(p·n)`` (spec §1.6).

    Binary float arithmetic, exactly as the peer computes it (so ``ceil(0.55 * 100) == 56``).
    """
    pos_train = math.ceil(pos_fraction * n_train)
    pos_test = math.ceil(pos_fraction * n_test)
    return pos_train, n_train - pos_train, pos_test, n_test - pos_test


def _decimal(value: float) -> Fraction:
    """The decimal a float stands for: ``Fraction(repr(x))``, so ``0.55 -> 11/20`` exactly.

    ``0.55`` is stored as 0.55000000000000004441, so ``math.ceil(0.55 * 100)`` is 56, not 55.
    Reading the shortest repr back as a decimal removes that binary noise.
    """
    return Fraction(repr(float(value)))


def _exact_class_sizes(n_train: int, n_test: int, pos_fraction: float) -> tuple[int, int, int, int]:
    """``(pos_train, neg_train, pos_test, neg_test)`` with positives ``ceil(p·n)`` in exact
    decimal arithmetic (spec §1.6 formula; see :func:`_decimal`)."""
    p = _decimal(pos_fraction)
    pos_train = math.ceil(p * n_train)
    pos_test = math.ceil(p * n_test)
    return pos_train, n_train - pos_train, pos_test, n_test - pos_test


def _draw(y: np.ndarray, counts: tuple[int, int, int, int], seed: int) -> tuple[np.ndarray, ...]:
    """The paper's draw (spec §1.6) for given class counts; the caller has checked they fit.

    One ``RandomState(seed)``, without replacement: training positives, training negatives, test
    positives and test negatives from the rows left, then a permutation of the training indices
    and one of the test indices. ``RandomState.choice(a, k, replace=False)`` is
    ``permutation(len(a))[:k]``, so the numbers it consumes depend on ``len(a)`` only: capping a
    test size never changes the training rows.
    """
    pos_train, neg_train, pos_test, neg_test = counts
    pos_rows = np.where(y == 1)[0]
    neg_rows = np.where(y == 0)[0]
    rng = np.random.RandomState(seed)
    train_pos = rng.choice(pos_rows, size=pos_train, replace=False)
    train_neg = rng.choice(neg_rows, size=neg_train, replace=False)
    test_pos = rng.choice(np.setdiff1d(pos_rows, train_pos), size=pos_test, replace=False)
    test_neg = rng.choice(np.setdiff1d(neg_rows, train_neg), size=neg_test, replace=False)
    train = rng.permutation(np.concatenate([train_pos, train_neg]))
    test = rng.permutation(np.concatenate([test_pos, test_neg]))
    return train.astype(np.int64, copy=False), test.astype(np.int64, copy=False)


def _fits(counts: tuple[int, int, int, int], n_pos: int, n_neg: int) -> bool:
    pos_train, neg_train, pos_test, neg_test = counts
    return pos_train + pos_test <= n_pos and neg_train + neg_test <= n_neg


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
    ``sae_probes.utils_data.get_train_test_indices(labels, n_train, n_test, p, seed)``, including
    its binary-float ``ceil`` (the regimes use exact decimal counts instead).

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
    n_pos = int(y.sum())
    n_neg = int(y.shape[0]) - n_pos
    pos_train, neg_train, pos_test, neg_test = counts = _class_sizes(n_train, n_test, pos_fraction)
    for cls, have, need in (
        (1, n_pos, pos_train + pos_test),
        (0, n_neg, neg_train + neg_test),
    ):
        if need > have:
            raise DatasetError(
                f"a split of {n_train} train + {n_test} test rows with positive fraction "
                f"{pos_fraction} needs {need} rows of class {cls}; the labels have {have}"
            )
    train, test = _draw(y, counts, seed)
    return train, test


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


# ---------------------------------------------------------------------------------------------
# Hard regimes (spec §2)


def _check_test_caps(setting: str, max_test: int | None, min_test: int) -> None:
    if min_test < 0 or (max_test is not None and max_test < 2):
        raise ConfigError(
            f"{setting} splits need min_test >= 0 and max_test >= 2 or None; got "
            f"min_test={min_test}, max_test={max_test}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """A finite int or float (numpy scalars included), not a bool."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
    )


def _counts_text(n_pos: int, n_neg: int) -> str:
    return f"{n_pos} of class 1 and {n_neg} of class 0"


def scarcity_splits(
    labels: np.ndarray,
    seed: int = 42,
    sizes: Sequence[int] = SCARCITY_SIZES,
    max_test: int | None = None,
    min_test: int = MIN_TEST,
    dataset_name: str = "",
) -> list[Split]:
    """The paper's data-scarcity setting: one split per training size ``n`` (spec §2).

    For each ``n``: a balanced train set of ``n`` rows (``ceil(n/2)`` positives) and a balanced
    test set of ``N − n − 1`` rows, drawn by the paper's draw with ``p = 0.5`` and a fresh
    ``RandomState(seed)`` per size (index for index ``get_train_test_indices(y, n, N − n − 1)``).
    The test set changes with ``n``.

    Sizes the dataset cannot supply are **skipped**, as the paper skips ``n > N − 100``: the
    returned list holds only the sizes that fit (read them from ``split.setting_value``) and the
    skipped ones are logged at INFO. In general a size is kept when its test set can hold at least
    ``max(2, min_test − 1)`` rows (99 for the paper's ``min_test=100``; 2 so that both classes are
    tested).

    On imbalanced user data, when the minority class cannot fill a balanced test set of
    ``N − n − 1`` rows after the training draw, the test set is the largest balanced one that fits
    (``min(2·pos_left, 2·neg_left + 1)`` rows; a warning names the sizes affected). The 113
    bundled datasets are exactly balanced, so this never happens there.

    Args:
        labels: ``[N]`` 0/1 labels.
        seed: seed of each draw (the paper uses 42).
        sizes: training sizes, integers >= 2 (default :data:`SCARCITY_SIZES`).
        max_test: optional cap on each test set (an saelab option; the training rows do not
            change, see :func:`_draw`).
        min_test: rows held back from training (100 in the paper).
        dataset_name: used in log messages and errors.

    Returns:
        One :class:`Split` per kept size, in the order of ``sizes``, ``setting="scarcity"`` and
        ``setting_value=n``.

    Raises:
        ConfigError: a size is not an integer >= 2, or bad ``min_test``/``max_test``.
        DatasetError: no size fits; the message gives the rows the smallest size needs.
    """
    y = _check_labels(labels, dataset_name)
    _check_test_caps("scarcity", max_test, min_test)
    sizes = tuple(sizes)
    bad = [s for s in sizes if not _is_int(s) or s < 2]
    if not sizes or bad:
        raise ConfigError(f"scarcity sizes must be integers >= 2, got {list(sizes)!r}")
    n_rows = int(y.shape[0])
    n_pos = int(y.sum())
    n_neg = n_rows - n_pos
    least_test = max(2, min_test - 1)

    splits: list[Split] = []
    skipped: list[int] = []
    shrunk: list[tuple[int, int, int]] = []
    for n in (int(s) for s in sizes):
        pos_train, neg_train = (n + 1) // 2, n // 2
        # A balanced test set of t rows needs ceil(t/2) positives and floor(t/2) negatives.
        t_fit = min(2 * (n_pos - pos_train), 2 * (n_neg - neg_train) + 1)
        t_avail = min(n_rows - n - 1, t_fit)
        if t_avail < least_test:
            skipped.append(n)
            continue
        if t_avail < n_rows - n - 1:
            shrunk.append((n, n_rows - n - 1, t_avail))
        n_test = t_avail if max_test is None else min(t_avail, max_test)
        counts = (pos_train, neg_train, (n_test + 1) // 2, n_test // 2)
        train, test = _draw(y, counts, seed)
        splits.append(Split(train=train, test=test, setting="scarcity", setting_value=n, seed=seed))

    if not splits:
        smallest = min(int(s) for s in sizes)
        need_pos = (smallest + 1) // 2 + (least_test + 1) // 2
        need_neg = smallest // 2 + least_test // 2
        raise DatasetError(
            f"{_label(dataset_name) or 'labels: '}no scarcity training size fits: the smallest, "
            f"{smallest}, needs a balanced test set of at least {least_test} rows as well, i.e. "
            f"{need_pos} rows of class 1 and {need_neg} of class 0; the dataset has "
            f"{_counts_text(n_pos, n_neg)} (add rows or lower min_test)"
        )
    if skipped:
        logger.info(
            "%sscarcity sizes %s skipped: %d rows (%s) leave fewer than %d balanced test rows",
            _label(dataset_name),
            skipped,
            n_rows,
            _counts_text(n_pos, n_neg),
            least_test,
        )
    if shrunk:
        logger.warning(
            "%sclasses are imbalanced (%s): balanced scarcity test sets shrunk, "
            "(train size, paper test size, used test size) = %s",
            _label(dataset_name),
            _counts_text(n_pos, n_neg),
            shrunk,
        )
    return splits


def imbalance_sizes(
    n_pos: int,
    n_neg: int,
    fractions: Sequence[float] = IMBALANCE_FRACTIONS,
    max_train: int = MAX_TRAIN,
    min_test: int = MIN_TEST,
) -> tuple[int, int]:
    """The imbalance setting's train and test sizes, fixed across fractions (spec §2).

    ``M = floor(min(neg / (1 − f_lo), pos / f_hi))``, ``n_train = min(M − min_test, max_train)``,
    ``n_test = max(min_test, M − n_train − 1)``, as ``get_classimabalance_num_train`` computes them
    with ``f_lo, f_hi = 0.05, 0.95`` (for balanced data ``M = int(N / 1.9)``). Here
    ``f_lo = min(0.05, min(fractions))`` and ``f_hi = max(0.95, max(fractions))``: the paper's
    sizes for any fractions within [0.05, 0.95], smaller ones when a fraction lies outside.
    ``M`` is computed in exact decimal arithmetic (the peer's float division gives the same
    integer: ``pos·20/19`` is never within float error of an integer unless it is one).

    Args:
        n_pos, n_neg: rows of class 1 and class 0.
        fractions: the positive fractions that will be drawn.
        max_train: cap on the training set (1024 in the paper).
        min_test: test rows held back (100 in the paper).

    Returns:
        ``(n_train, n_test)``; ``n_train`` may be < 2 for tiny data (the caller checks).
    """
    f_lo = min(_decimal(IMBALANCE_BOUNDS[0]), *(_decimal(f) for f in fractions))
    f_hi = max(_decimal(IMBALANCE_BOUNDS[1]), *(_decimal(f) for f in fractions))
    total = math.floor(min(Fraction(n_neg) / (1 - f_lo), Fraction(n_pos) / f_hi))
    n_train = min(total - min_test, max_train)
    n_test = max(min_test, total - n_train - 1)
    return n_train, n_test


def imbalance_splits(
    labels: np.ndarray,
    seed: int = 42,
    fractions: Sequence[float] = IMBALANCE_FRACTIONS,
    max_test: int | None = None,
    max_train: int = MAX_TRAIN,
    min_test: int = MIN_TEST,
    dataset_name: str = "",
) -> list[Split]:
    """The paper's class-imbalance setting: one split per positive fraction ``f`` (spec §2).

    Train and test sizes come from :func:`imbalance_sizes` and are the same for every ``f``; both
    sets hold the same fraction ``f`` of positives: ``ceil(f·n)`` of the ``n`` training rows and
    ``ceil(f·t)`` of the ``t`` test rows, drawn by the paper's draw with a fresh
    ``RandomState(seed)`` per fraction.

    ``ceil(f·n)`` is computed in exact decimal arithmetic. The peer's two runners disagree here:
    the baseline runner rounds f to ``k/20`` and computes ``ceil(0.55 * 100) = 56`` in binary
    floats, the SAE runner passes the raw ``linspace`` float 0.5499999999999999 and gets 55, so at
    ``f = 0.55`` the paper's baselines and SAE probes were tested on different rows for the 41
    bundled sets whose test size is 100. saelab's counts equal the exact ones, which the SAE
    runner's raw floats give for every size up to 6000 (checked in the tests): the splits equal
    ``get_train_test_indices(y, n, t, f_raw, seed)`` for all 19 fractions.

    If a fraction's draw does not fit the data (possible on imbalanced user data through the
    rounding up of ``ceil``), the test size is lowered for all fractions until every draw fits,
    with a warning; it never changes on the bundled sets.

    Args:
        labels: ``[N]`` 0/1 labels.
        seed: seed of each draw (the paper uses 42).
        fractions: positive fractions in (0, 1) (default :data:`IMBALANCE_FRACTIONS`).
        max_test: optional cap on the test size (the training rows do not change).
        max_train: cap on the training set (1024 in the paper).
        min_test: test rows held back (100 in the paper).
        dataset_name: used in log messages and errors.

    Returns:
        One :class:`Split` per fraction, in the order given, ``setting="imbalance"`` and
        ``setting_value=f``.

    Raises:
        ConfigError: a fraction outside (0, 1), or bad sizes.
        DatasetError: the data cannot supply at least one row of each class in the train and the
            test set of every fraction; the message gives the rows needed and available.
    """
    y = _check_labels(labels, dataset_name)
    _check_test_caps("imbalance", max_test, min_test)
    fractions = tuple(fractions)
    bad = [f for f in fractions if not _is_real(f) or not 0.0 < f < 1.0]
    if not fractions or bad:
        raise ConfigError(f"imbalance fractions must lie in (0, 1), got {list(fractions)!r}")
    fractions = tuple(float(f) for f in fractions)
    if max_train < 2:
        raise ConfigError(f"imbalance splits need max_train >= 2, got {max_train}")
    n_rows = int(y.shape[0])
    n_pos = int(y.sum())
    n_neg = n_rows - n_pos
    n_train, paper_test = imbalance_sizes(n_pos, n_neg, fractions, max_train, min_test)
    where = _label(dataset_name) or "labels: "

    # The training draw must hold both classes at the extreme fractions.
    low_train = [f for f in fractions if min(_exact_class_sizes(max(n_train, 0), 0, f)[:2]) < 1]
    if n_train < 2 or low_train:
        f_hi = max(fractions, key=_decimal)
        # ceil(f·n) >= 1 positive holds for any n >= 1; n − ceil(f·n) >= 1 needs n >= 1/(1 − f).
        need = max(2, math.ceil(1 / (1 - _decimal(f_hi))))
        raise DatasetError(
            f"{where}too few rows for the imbalance setting: its training size is "
            f"min(M − {min_test}, {max_train}) = {n_train}, with M = floor(min(neg / (1 − f_lo), "
            f"pos / f_hi)) (f_lo, f_hi = 0.05, 0.95 unless the fractions go further); a training "
            f"set with both classes up to f = {f_hi} needs at least {need} rows, i.e. "
            f"M >= {need + min_test}; the dataset has {_counts_text(n_pos, n_neg)} "
            "(add rows or lower min_test)"
        )

    n_test = paper_test if max_test is None else min(paper_test, max_test)

    def all_fit(t: int) -> bool:
        return all(_fits(_exact_class_sizes(n_train, t, f), n_pos, n_neg) for f in fractions)

    def both_classes_tested(t: int) -> bool:
        return all(min(_exact_class_sizes(n_train, t, f)[2:]) >= 1 for f in fractions)

    fitted = n_test
    while fitted > 0 and not all_fit(fitted):
        fitted -= 1
    if not both_classes_tested(fitted):
        f_hi = max(fractions, key=_decimal)
        pos_train, neg_train, pos_test, neg_test = _exact_class_sizes(n_train, n_test, f_hi)
        raise DatasetError(
            f"{where}too few rows for the imbalance setting: with {n_train} training rows every "
            f"fraction's test set needs at least one row of each class (at f={f_hi} the paper's "
            f"sizes need {pos_train + pos_test} rows of class 1 and {neg_train + neg_test} of "
            f"class 0); the dataset has {_counts_text(n_pos, n_neg)}"
        )
    if fitted < n_test:
        logger.warning(
            "%sthe imbalance test size %d does not fit every fraction (%s); using %d test rows",
            _label(dataset_name),
            n_test,
            _counts_text(n_pos, n_neg),
            fitted,
        )
    splits = []
    for f in fractions:
        train, test = _draw(y, _exact_class_sizes(n_train, fitted, f), seed)
        splits.append(
            Split(train=train, test=test, setting="imbalance", setting_value=f, seed=seed)
        )
    return splits


def flip_labels(y_train: np.ndarray, ratio: float, seed: int = 42) -> np.ndarray:
    """Flip ``floor(n·r)`` of ``n`` training labels, chosen uniformly without replacement (spec §2).

    ``RandomState(seed).choice(n, floor(n·r), replace=False)`` picks the positions (class
    ignored) and each picked label becomes ``1 − y``: index for index the peer's
    ``corrupt_ytrain``. ``floor(n·r)`` is exact decimal arithmetic; the peer's ``int(n·r)`` in
    binary floats loses one flip at ``r = 0.35`` for ``n`` in {180, 340, 360, 660, ...} when its
    baseline runner rounds r to ``k/20`` (no bundled training size is affected). Because
    ``choice`` takes a prefix of one permutation, the flipped positions of a smaller ratio are a
    subset of those of a larger one.

    Args:
        y_train: ``[n]`` 0/1 training labels, in training order.
        ratio: share of labels to flip, in [0, 0.5].
        seed: seed of the ``RandomState`` (the paper uses the split's seed, 42).

    Returns:
        ``[n]`` int64 noisy labels (a new array).
    """
    y = _check_labels(y_train)
    if not _is_real(ratio) or not 0 <= ratio <= 0.5:
        raise ConfigError(f"label-noise ratio must lie in [0, 0.5], got {ratio!r}")
    n = int(y.shape[0])
    n_flip = math.floor(_decimal(ratio) * n)
    flip = np.random.RandomState(seed).choice(n, size=n_flip, replace=False)
    noisy = y.astype(np.int64, copy=True)
    noisy[flip] = 1 - noisy[flip]
    return noisy


def label_noise_splits(
    labels: np.ndarray,
    seed: int = 42,
    ratios: Sequence[float] = LABEL_NOISE_RATIOS,
    max_test: int | None = None,
    max_train: int = MAX_TRAIN,
    min_test: int = MIN_TEST,
    dataset_name: str = "",
) -> list[Split]:
    """The paper's label-noise ("corrupt") setting: the normal split with noisy training labels.

    For each ratio ``r``: the rows of :func:`normal_split` (same seed) and
    ``train_labels = flip_labels(labels[train], r, seed)``; the test labels stay clean (spec §2).
    Consumers must train on ``split.y_train(labels)``.

    Args:
        labels: ``[N]`` 0/1 labels.
        seed: seed of the split and of the flips (the paper uses 42 for both).
        ratios: noise ratios in [0, 0.5] (default :data:`LABEL_NOISE_RATIOS`).
        max_test, max_train, min_test: as for :func:`normal_split`.
        dataset_name: used in warnings and errors.

    Returns:
        One :class:`Split` per ratio, ``setting="label_noise"``, ``setting_value=r`` and
        ``train_labels`` set (equal to ``labels[train]`` at ``r = 0``).
    """
    ratios = tuple(ratios)
    bad = [r for r in ratios if not _is_real(r) or not 0 <= r <= 0.5]
    if not ratios or bad:
        raise ConfigError(f"label-noise ratios must lie in [0, 0.5], got {list(ratios)!r}")
    ratios = tuple(float(r) for r in ratios)
    y = _check_labels(labels, dataset_name)
    base = normal_split(
        y,
        seed=seed,
        max_train=max_train,
        min_test=min_test,
        max_test=max_test,
        dataset_name=dataset_name,
    )
    clean = y.astype(np.int64)[base.train]
    return [
        Split(
            train=base.train,
            test=base.test,
            setting="label_noise",
            setting_value=r,
            seed=seed,
            train_labels=flip_labels(clean, r, seed),
        )
        for r in ratios
    ]


# ---------------------------------------------------------------------------------------------
# Out of distribution (spec §1.4, §2)


def ood_split(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 42,
    n_train: int = OOD_TRAIN,
    max_rows: int = OOD_MAX_ROWS,
    dataset_name: str = "",
    ood_name: str = "",
) -> Split:
    """The OOD setting: train on the in-distribution (ID) set, test on the whole OOD set (spec §2).

    Train: a balanced draw of ``n_train`` rows (``ceil(n/2)`` positives) from the first
    ``max_rows`` ID rows, by the paper's draw with ``RandomState(seed)`` and no test rows: index for
    index ``get_train_test_indices(y_id[:1500], 1024, 0, 0.5, seed)``, which is what sae-probes
    0.4.2's ``get_OOD_traintest`` draws. The paper's original runner instead took the first 512
    rows of each class in file order and shuffled them without a seed; saelab uses the seeded draw
    on purpose, so the split is reproducible and the training rows are not biased to the file's
    start. Test: every OOD row, in file order (``arange(N_ood)``).

    Args:
        train_labels: ``[N_id]`` 0/1 labels of the ID dataset.
        test_labels: ``[N_ood]`` 0/1 labels of the OOD dataset, in the ID set's encoding (see
            :func:`match_ood_classes`).
        seed: seed of the training draw.
        n_train: training rows (1024 in the paper).
        max_rows: draw from the first ``max_rows`` ID rows (1500 in the paper).
        dataset_name, ood_name: names of the ID and OOD sets; ``ood_name`` becomes
            ``Split.test_source`` (``"ood"`` when empty).

    Returns:
        A :class:`Split` with ``setting="ood"``, ``setting_value=None`` and ``test_source`` set:
        ``train`` indexes the ID set, ``test`` the OOD set.

    Raises:
        ConfigError: ``n_train < 2`` or ``max_rows < n_train``.
        DatasetError: the first ``max_rows`` ID rows cannot supply the balanced draw, or the OOD
            set lacks a class; the message names the set and the rows needed and available.
    """
    if not _is_int(n_train) or not _is_int(max_rows) or n_train < 2 or max_rows < n_train:
        raise ConfigError(
            f"OOD split needs integers n_train >= 2 and max_rows >= n_train; got "
            f"n_train={n_train!r}, max_rows={max_rows!r}"
        )
    y_id = _check_labels(train_labels, dataset_name)[:max_rows]
    y_ood = _check_labels(test_labels, ood_name)
    id_pos = int(y_id.sum())
    id_neg = int(y_id.shape[0]) - id_pos
    counts = ((n_train + 1) // 2, n_train // 2, 0, 0)
    if not _fits(counts, id_pos, id_neg):
        largest = 2 * min(id_pos, id_neg) + (1 if id_pos > id_neg else 0)
        raise DatasetError(
            f"{_label(dataset_name) or 'in-distribution labels: '}the OOD training draw of "
            f"{n_train} balanced rows needs {counts[0]} rows of class 1 and {counts[1]} of class 0 "
            f"among the first {max_rows} rows; they hold {_counts_text(id_pos, id_neg)} "
            f"(pass n_train <= {largest} or a larger max_rows)"
        )
    ood_pos = int(y_ood.sum())
    if ood_pos == 0 or ood_pos == y_ood.shape[0]:
        raise DatasetError(
            f"{_label(ood_name) or 'OOD labels: '}the OOD test set needs rows of both classes; it "
            f"has {_counts_text(ood_pos, int(y_ood.shape[0]) - ood_pos)}"
        )
    train, _ = _draw(y_id, counts, seed)
    return Split(
        train=train,
        test=np.arange(y_ood.shape[0], dtype=np.int64),
        setting="ood",
        setting_value=None,
        seed=seed,
        test_source=ood_name or "ood",
    )


def _same_value(a: Any, b: Any) -> bool:
    """Class values match when equal or equal as text (``'1'`` from a config matches ``1``)."""
    return a == b or str(a) == str(b)


def _bundled_class_map(ood: Dataset) -> dict[Any, Any] | None:
    """The known class map of a bundled OOD file (:data:`BUNDLED_OOD_CLASS_MAPS`), if ``ood`` is one."""
    if ood.name not in BUNDLED_OOD_CLASS_MAPS:
        return None
    from saelab.data.registry import find_bundled

    try:
        bundled = find_bundled(ood.name).path
    except DatasetError:
        return None
    if Path(ood.path).resolve() != Path(bundled).resolve():
        return None
    return BUNDLED_OOD_CLASS_MAPS[ood.name]


def match_ood_classes(
    id_dataset: Dataset, ood_dataset: Dataset, class_map: Mapping[Any, Any] | None = None
) -> Dataset:
    """Check that an OOD set has its ID set's two classes in the same 0/1 encoding.

    Without ``class_map`` the raw classes must be equal (``id.classes == ood.classes``, spec §1.1:
    label 1 is the larger value in both files). ``class_map`` maps each OOD raw value to the ID raw
    value it stands for (``{"1": 0, "not_entailment": 1}``); for the bundled qnli OOD file this map
    is known and applied by default (spec §1.4, :data:`BUNDLED_OOD_CLASS_MAPS`). When the map says
    the two encodings run the opposite way, the OOD labels are flipped into the ID encoding.

    Args:
        id_dataset: the in-distribution dataset.
        ood_dataset: the OOD dataset.
        class_map: optional OOD value -> ID value map (values compared as equal or equal as text).

    Returns:
        ``ood_dataset`` itself, or a copy with labels ``1 − y`` and the classes swapped.

    Raises:
        DatasetError: naming both files, when the classes differ and no map reconciles them.
    """
    pair = f"OOD pair {id_dataset.path} (in-distribution) and {ood_dataset.path} (OOD)"
    if class_map is None:
        class_map = _bundled_class_map(ood_dataset)
    if class_map is None:
        if all(
            _same_value(a, b) for a, b in zip(id_dataset.classes, ood_dataset.classes, strict=True)
        ):
            return ood_dataset
        raise DatasetError(
            f"{pair}: the classes differ: the ID file has {id_dataset.classes!r} (label 0, "
            f"label 1), the OOD file {ood_dataset.classes!r}; both need the same two classes in "
            "the same encoding (or pass class_map={ood value: id value, ...})"
        )
    mapped = []
    for value in ood_dataset.classes:
        keys = [k for k in class_map if _same_value(k, value)]
        if len(keys) != 1:
            raise DatasetError(
                f"{pair}: class_map {dict(class_map)!r} must name each OOD class "
                f"{ood_dataset.classes!r} exactly once; {value!r} is matched by {len(keys)} keys"
            )
        mapped.append(class_map[keys[0]])
    id_low, id_high = id_dataset.classes
    if _same_value(mapped[0], id_low) and _same_value(mapped[1], id_high):
        return ood_dataset
    if _same_value(mapped[0], id_high) and _same_value(mapped[1], id_low):
        flipped = (1 - ood_dataset.labels).astype(np.int64)
        logger.info(
            "%s: OOD labels flipped into the ID encoding (%r -> %r)",
            pair,
            ood_dataset.classes,
            id_dataset.classes,
        )
        return dataclasses.replace(
            ood_dataset,
            labels=flipped,
            classes=(ood_dataset.classes[1], ood_dataset.classes[0]),
            content_hash=content_hash_of(ood_dataset.prompts, flipped),
        )
    raise DatasetError(
        f"{pair}: class_map {dict(class_map)!r} maps the OOD classes {ood_dataset.classes!r} to "
        f"{tuple(mapped)!r}, which are not the ID classes {id_dataset.classes!r}"
    )


def load_ood_pair(
    id_spec: str | Path,
    ood_spec: str | Path | None = None,
    class_map: Mapping[Any, Any] | None = None,
    max_rows: int = 5000,
) -> tuple[Dataset, Dataset]:
    """Load an (in-distribution, OOD) pair and check their classes (:func:`match_ood_classes`).

    Args:
        id_spec: a bundled name (``"87_glue_cola"``) or a file path (see ``load_dataset``).
        ood_spec: the OOD set's name or path; ``None`` means the bundled ``"<id name>_OOD"``.
        class_map: optional OOD value -> ID value map for files whose class values differ.
        max_rows: rows read from each file (the OOD split itself uses the first 1500 ID rows).

    Returns:
        ``(id_dataset, ood_dataset)``, the OOD labels in the ID encoding.
    """
    id_dataset = load_dataset(id_spec, max_rows=max_rows)
    if ood_spec is None:
        ood_spec = f"{id_dataset.name}_OOD"
        if (id_dataset.name, ood_spec) not in OOD_PAIRS:
            raise DatasetError(
                f"{id_dataset.path}: no bundled OOD set for {id_dataset.name!r} (bundled pairs: "
                f"{', '.join(name for name, _ in OOD_PAIRS)}); pass ood_spec, a path to the "
                "OOD file"
            )
    ood_dataset = load_dataset(ood_spec, max_rows=max_rows)
    return id_dataset, match_ood_classes(id_dataset, ood_dataset, class_map)


def stratified_split(
    labels: np.ndarray, sizes: Sequence[int | None], seed: int, source: str = "dataset"
) -> list[np.ndarray]:
    """Disjoint stratified parts of the rows of ``labels`` (any number of classes).

    Each part keeps the class shares of the whole: part ``p`` takes ``floor(n_p * N_c / N)`` rows
    of class ``c`` and the rows left to fill ``n_p`` go to the classes with the largest remainders
    (Hamilton's method, ties to the smaller class index; a class with no rows left passes its
    share to the next); rows are drawn without replacement, in
    part order, from one permutation per class (``np.random.default_rng(seed)``), and each part is
    returned sorted. A size of None means every row the earlier parts left (only last).

    Raises:
        DatasetError: the parts need more rows than ``labels`` has, or a part would be empty.
    """
    y = np.asarray(labels)
    n = int(y.shape[0])
    classes, counts = np.unique(y, return_counts=True)
    fixed = [s for s in sizes if s is not None]
    if any(s is None for s in sizes[:-1]):
        raise ConfigError("only the last part of a stratified split may take 'the rest'")
    if sum(fixed) > n:
        raise DatasetError(
            f"{source}: the split needs {sum(fixed)} rows ({', '.join(map(str, sizes))}), "
            f"the data has {n}"
        )
    rng = np.random.default_rng(seed)
    pools = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in classes}
    used = dict.fromkeys(pools, 0)
    parts: list[np.ndarray] = []
    for size in sizes:
        if size is None:
            rest = [pools[c][used[c] :] for c in pools]
            parts.append(np.sort(np.concatenate(rest)).astype(np.int64))
            break
        exact = size * counts / n
        left = np.array([len(pools[c]) - used[c] for c in classes.tolist()], dtype=np.int64)
        if size > int(left.sum()):
            raise DatasetError(
                f"{source}: the split needs {size} more rows, {int(left.sum())} are left"
            )
        take = np.minimum(np.floor(exact).astype(np.int64), left)
        order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - take[i]), i))
        while int(take.sum()) < size:  # the rest by largest remainder, classes with rows left
            for i in order:
                if int(take.sum()) < size and take[i] < left[i]:
                    take[i] += 1
        chosen = []
        for i, c in enumerate(classes.tolist()):
            chosen.append(pools[c][used[c] : used[c] + take[i]])
            used[c] += int(take[i])
        parts.append(np.sort(np.concatenate(chosen)).astype(np.int64))
    empty = [i for i, part in enumerate(parts) if part.size == 0]
    if empty:
        raise DatasetError(
            f"{source}: split part {empty[0] + 1} of {len(sizes)} would be empty "
            f"(sizes {', '.join(map(str, sizes))} of {n} rows)"
        )
    return parts
