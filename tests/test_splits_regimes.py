"""Tests for the paper's hard-regime splits: scarcity, class imbalance, label noise and OOD (spec §2).

Index equality with the peer uses ``sae_probes.utils_data`` (imported once per module: it pulls
torch and transformer_lens); those tests are skipped when the package is not installed.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from saelab.data import (
    IMBALANCE_FRACTIONS,
    LABEL_NOISE_RATIOS,
    OOD_PAIRS,
    SCARCITY_SIZES,
    Split,
    count_rows,
    flip_labels,
    imbalance_sizes,
    imbalance_splits,
    label_noise_splits,
    list_bundled,
    load_dataset,
    load_ood_pair,
    match_ood_classes,
    normal_split,
    ood_split,
    scarcity_splits,
)
from saelab.errors import ConfigError, DatasetError

LOGGER = "saelab.data.splits"

# The peer's raw fraction / ratio lists (spec §2), written out so the tests that do not need the
# peer's module do not import it.
RAW_FRACTIONS = np.linspace(0.05, 0.95, 19).tolist()
RAW_RATIOS = np.linspace(0, 0.5, 11).tolist()


@pytest.fixture(scope="module")
def peer():
    """The peer's ``sae_probes.utils_data`` (slow to import), imported once for the module."""
    return pytest.importorskip("sae_probes.utils_data")


def balanced_labels(n: int, seed: int = 0) -> np.ndarray:
    y = np.array([0, 1] * (n // 2) + [1] * (n % 2), dtype=np.int64)
    return np.random.RandomState(seed).permutation(y)


def skewed_labels(n_pos: int, n_neg: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).permutation(np.array([1] * n_pos + [0] * n_neg))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def assert_valid(split: Split, y: np.ndarray, n_train: int, pos_train: int, n_test: int, pos_test):
    """Sizes, class counts, dtype, uniqueness and disjointness of one split."""
    assert split.train.dtype == np.int64 and split.test.dtype == np.int64
    assert (split.n_train, split.n_test) == (n_train, n_test)
    assert len(set(split.train.tolist())) == n_train and len(set(split.test.tolist())) == n_test
    assert not set(split.train.tolist()) & set(split.test.tolist())
    assert int(y[split.train].sum()) == pos_train
    assert int(y[split.test].sum()) == pos_test


# ---------------------------------------------------------------------------------------------
# the lists


def test_regime_lists_follow_the_paper_formulas():
    formula = np.unique(np.round(2 ** np.linspace(1, 10, 20)).astype(int)).tolist()  # spec §2
    assert list(SCARCITY_SIZES) == formula
    paper = (2, 3, 4, 5, 7, 10, 14, 20, 28, 38, 53, 74, 103, 143, 198, 275, 382, 531, 737, 1024)
    assert paper == SCARCITY_SIZES
    assert all(type(s) is int for s in SCARCITY_SIZES)
    assert len(IMBALANCE_FRACTIONS) == 19
    assert tuple(k / 20 for k in range(1, 20)) == IMBALANCE_FRACTIONS
    assert IMBALANCE_FRACTIONS[0] == 0.05 and IMBALANCE_FRACTIONS[-1] == 0.95
    assert IMBALANCE_FRACTIONS[7] == 0.4  # not the raw 0.39999999999999997
    assert len(LABEL_NOISE_RATIOS) == 11
    assert tuple(k / 20 for k in range(11)) == LABEL_NOISE_RATIOS
    # the peer's baseline runners round to the nearest 0.05 the same way
    assert tuple(round(f * 20) / 20 for f in RAW_FRACTIONS) == IMBALANCE_FRACTIONS
    assert tuple(round(r * 20) / 20 for r in RAW_RATIOS) == LABEL_NOISE_RATIOS


def test_regime_lists_equal_the_peers(peer):
    assert list(SCARCITY_SIZES) == peer.get_training_sizes()
    assert peer.get_class_imbalance() == RAW_FRACTIONS
    assert peer.get_corrupt_frac() == RAW_RATIOS
    assert [round(f, 2) for f in peer.get_class_imbalance()] == list(IMBALANCE_FRACTIONS)


# ---------------------------------------------------------------------------------------------
# scarcity


@pytest.mark.parametrize("n_rows", [300, 728, 1124, 3200, 5000])
def test_scarcity_sizes_counts_and_skips(n_rows, caplog):
    y = balanced_labels(n_rows, seed=n_rows)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        splits = scarcity_splits(y, dataset_name=f"bal{n_rows}")
    kept = [s for s in SCARCITY_SIZES if s <= n_rows - 100]  # spec §2: skip n > N − 100
    skipped = [s for s in SCARCITY_SIZES if s > n_rows - 100]
    assert [sp.setting_value for sp in splits] == kept
    for sp in splits:
        n = sp.setting_value
        assert (sp.setting, sp.seed, sp.train_labels, sp.test_source) == (
            "scarcity",
            42,
            None,
            None,
        )
        t = n_rows - n - 1
        assert_valid(sp, y, n, ceil_div(n, 2), t, ceil_div(t, 2))
    if skipped:
        assert f"bal{n_rows}" in caplog.text and str(skipped) in caplog.text
    else:
        assert "skipped" not in caplog.text


def test_scarcity_is_deterministic_per_seed():
    y = balanced_labels(1000, seed=3)
    a, b = scarcity_splits(y, seed=5), scarcity_splits(y, seed=5)
    assert a == b
    c = scarcity_splits(y, seed=6)
    assert all(not np.array_equal(x.train, z.train) for x, z in zip(a[4:], c[4:], strict=True))


@pytest.mark.parametrize("n_rows", [728, 1124, 5000])
def test_scarcity_equals_peer_indices(peer, n_rows):
    y = balanced_labels(n_rows, seed=n_rows + 1)
    for sp in scarcity_splits(y):
        n = sp.setting_value
        ref_train, ref_test = peer.get_train_test_indices(y, n, n_rows - n - 1, 0.5, 42)
        assert np.array_equal(sp.train, ref_train) and np.array_equal(sp.test, ref_test)


def test_scarcity_on_real_dataset_equals_peer(peer):
    ds = load_dataset("41_truthqa_tf")  # 786 rows: 737 and 1024 are skipped
    splits = scarcity_splits(ds.labels, sizes=(2, 53, 531, 686, 687, 737), dataset_name=ds.name)
    assert [sp.setting_value for sp in splits] == [2, 53, 531, 686]
    for sp in splits:
        n = sp.setting_value
        ref_train, ref_test = peer.get_train_test_indices(ds.labels, n, 786 - n - 1, 0.5, 42)
        assert np.array_equal(sp.train, ref_train) and np.array_equal(sp.test, ref_test)
    # the largest scarcity size is the normal split
    assert np.array_equal(splits[-1].train, normal_split(ds.labels).train)


def test_scarcity_max_test_keeps_training_rows():
    y = balanced_labels(2000, seed=9)
    full = scarcity_splits(y, sizes=(10, 198))
    capped = scarcity_splits(y, sizes=(10, 198), max_test=200)
    for a, b in zip(full, capped, strict=True):
        assert np.array_equal(a.train, b.train)
        assert b.n_test == 200 and int(y[b.test].sum()) == 100
        assert not set(b.train.tolist()) & set(b.test.tolist())


def test_scarcity_on_imbalanced_data_shrinks_test_and_warns(caplog):
    y = skewed_labels(n_pos=700, n_neg=300)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        splits = scarcity_splits(y, dataset_name="skewed")
    # A balanced test needs floor(t/2) <= 300 − floor(n/2) negatives: t = 2·(300 − n//2) + 1,
    # kept while t >= 99, i.e. up to n = 382 (531 would leave 69 rows).
    assert [sp.setting_value for sp in splits] == [s for s in SCARCITY_SIZES if s <= 382]
    for sp in splits:
        n = sp.setting_value
        t = min(1000 - n - 1, 2 * (300 - n // 2) + 1)
        assert_valid(sp, y, n, ceil_div(n, 2), t, ceil_div(t, 2))
        assert int((y[sp.train] == 0).sum() + (y[sp.test] == 0).sum()) == 300
    assert (
        "skewed" in caplog.text
        and "imbalanced" in caplog.text
        and "[531, 737, 1024]" in caplog.text
    )


def test_scarcity_errors():
    with pytest.raises(DatasetError) as err:
        scarcity_splits(balanced_labels(100), dataset_name="tiny")
    msg = str(err.value)
    assert "tiny" in msg and "51 rows of class 1 and 50 of class 0" in msg
    assert "50 of class 1 and 50 of class 0" in msg
    for sizes in [(1,), (2, 3.5), (), (True,)]:
        with pytest.raises(ConfigError, match="integers >= 2"):
            scarcity_splits(balanced_labels(500), sizes=sizes)
    with pytest.raises(DatasetError, match=r"'bad'.*0/1"):
        scarcity_splits(np.array([0, 1, 2]), dataset_name="bad")


# ---------------------------------------------------------------------------------------------
# class imbalance


def paper_imbalance_sizes(y: np.ndarray) -> tuple[int, int]:
    """Spec §2 / get_classimabalance_num_train, written out independently."""
    pos = int(y.sum())
    neg = len(y) - pos
    m = int(min(neg / (1 - 0.05), pos / 0.95))
    n = min(m - 100, 1024)
    return n, max(100, m - n - 1)


@pytest.mark.parametrize("n_rows", [728, 786, 1124, 2400, 5000])
def test_imbalance_sizes_counts_and_determinism(n_rows):
    y = balanced_labels(n_rows, seed=n_rows)
    n, t = paper_imbalance_sizes(y)
    assert imbalance_sizes(int(y.sum()), n_rows - int(y.sum())) == (n, t)
    splits = imbalance_splits(y, dataset_name=f"bal{n_rows}")
    assert [sp.setting_value for sp in splits] == list(IMBALANCE_FRACTIONS)
    for k, sp in enumerate(splits, start=1):
        assert (sp.setting, sp.seed, sp.train_labels) == ("imbalance", 42, None)
        # positives are ceil(f·n) with f = k/20, computed exactly in integers
        assert_valid(sp, y, n, ceil_div(k * n, 20), t, ceil_div(k * t, 20))
    assert imbalance_splits(y) == splits
    other = imbalance_splits(y, seed=1)
    assert not np.array_equal(other[3].train, splits[3].train)


def test_imbalance_sizes_of_the_bundled_sets_match_spec():
    # spec §2: n from 283 to 1024 (72 sets at 1024), test 100–1606 (median 659); all exactly
    # balanced, so the row count decides the sizes.
    sizes = [imbalance_sizes(count_rows(i) // 2, count_rows(i) // 2) for i in list_bundled()]
    ns, ts = [n for n, _ in sizes], sorted(t for _, t in sizes)
    assert (min(ns), max(ns), sum(n == 1024 for n in ns)) == (283, 1024, 72)
    assert (ts[0], ts[-1], ts[len(ts) // 2]) == (100, 1606, 659)


@pytest.mark.parametrize("n_rows", [728, 1124, 5000])
def test_imbalance_equals_peer_sae_runner_indices(peer, n_rows):
    y = balanced_labels(n_rows, seed=n_rows + 2)
    n, t = paper_imbalance_sizes(y)
    for sp, f_raw in zip(imbalance_splits(y), peer.get_class_imbalance(), strict=True):
        ref_train, ref_test = peer.get_train_test_indices(y, n, t, f_raw, 42)
        assert np.array_equal(sp.train, ref_train) and np.array_equal(sp.test, ref_test)


def test_imbalance_on_real_dataset_equals_peer(peer):
    ds = load_dataset("95_toxic_is")  # 728 rows: n = 283, t = 100 (spec §2 minimum)
    assert peer.get_classimabalance_num_train(ds.name) == (283, 100)
    assert imbalance_sizes(*reversed(ds.class_counts)) == (283, 100)
    splits = imbalance_splits(ds.labels, dataset_name=ds.name)
    for sp, f_raw in zip(splits, peer.get_class_imbalance(), strict=True):
        ref_train, ref_test = peer.get_train_test_indices(ds.labels, 283, 100, f_raw, 42)
        assert np.array_equal(sp.train, ref_train) and np.array_equal(sp.test, ref_test)
    # The peer's baseline runner rounds f to 0.55 and gets ceil(0.55 * 100) = 56 test positives
    # (a float artifact); its SAE runner and saelab get 55: the peer's two runners disagree.
    _, base_test = peer.get_train_test_indices(ds.labels, 283, 100, 0.55, 42)
    at_055 = splits[10]
    assert at_055.setting_value == 0.55
    assert int(ds.labels[base_test].sum()) == 56 and int(ds.labels[at_055.test].sum()) == 55
    # at every other fraction the baseline runner's draw is saelab's too
    for sp in splits[:10] + splits[11:]:
        ref = peer.get_train_test_indices(ds.labels, 283, 100, sp.setting_value, 42)
        assert np.array_equal(sp.train, ref[0]) and np.array_equal(sp.test, ref[1])


def test_exact_counts_equal_the_raw_linspace_floats():
    # The docstring's claim: for every size below 6000, ceil(f_raw·n) with the peer's raw
    # linspace floats is the exact ceil(k·n/20); the rounded floats k/20 are not (0.55·100).
    for k, f_raw in enumerate(RAW_FRACTIONS, start=1):
        assert all(math.ceil(f_raw * n) == ceil_div(k * n, 20) for n in range(6000))
    assert math.ceil(0.55 * 100) == 56 != ceil_div(11 * 100, 20)
    for k, r_raw in enumerate(RAW_RATIOS):
        assert all(int(r_raw * n) == k * n // 20 for n in range(6000))
    assert int(0.35 * 180) == 62 != 7 * 180 // 20


def test_imbalance_max_test_keeps_training_rows():
    y = balanced_labels(5000, seed=4)
    full = imbalance_splits(y, fractions=(0.1, 0.5))
    capped = imbalance_splits(y, fractions=(0.1, 0.5), max_test=300)
    for a, b in zip(full, capped, strict=True):
        assert np.array_equal(a.train, b.train) and b.n_test == 300
    assert int(y[capped[0].test].sum()) == 30


def test_imbalance_on_skewed_data_lowers_test_size_to_fit(caplog):
    # pos / 0.965 bounds M = floor(143.005) = 143: n = 43, t = 100, but f = 0.965 needs
    # ceil(41.495) = 42 + ceil(96.5) = 97 = 139 positives of 138; t = 99 needs 42 + 96 = 138.
    y = skewed_labels(n_pos=138, n_neg=200, seed=2)
    assert imbalance_sizes(138, 200, (0.965,)) == (43, 100)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        (sp,) = imbalance_splits(y, fractions=(0.965,), dataset_name="skew")
    assert_valid(sp, y, 43, 42, 99, 96)
    assert "skew" in caplog.text and "using 99 test rows" in caplog.text


def test_imbalance_on_user_data_uses_the_minority_class():
    y = skewed_labels(n_pos=700, n_neg=300, seed=1)
    n, t = paper_imbalance_sizes(y)
    assert (n, t) == (215, 100) and imbalance_sizes(700, 300) == (215, 100)
    for k, sp in enumerate(imbalance_splits(y), start=1):
        assert_valid(sp, y, 215, ceil_div(k * 215, 20), 100, ceil_div(k * 100, 20))


def test_imbalance_errors():
    y = balanced_labels(200)  # M = 105: n = 5 < 20 rows needed for a negative at f = 0.95
    with pytest.raises(DatasetError) as err:
        imbalance_splits(y, dataset_name="small")
    msg = str(err.value)
    assert (
        "small" in msg and "at least 20 rows" in msg and "100 of class 1 and 100 of class 0" in msg
    )
    assert imbalance_splits(y, fractions=(0.25, 0.75), min_test=50)[0].n_train == 55
    for fractions in [(0.0,), (0.5, 1.0), (), ("0.5",)]:
        with pytest.raises(ConfigError, match=r"\(0, 1\)"):
            imbalance_splits(balanced_labels(5000), fractions=fractions)


# ---------------------------------------------------------------------------------------------
# label noise


@pytest.mark.parametrize("n_rows", [728, 1124, 5000])
def test_label_noise_flips_exact_counts_on_the_normal_split(n_rows):
    y = balanced_labels(n_rows, seed=n_rows)
    normal = normal_split(y)
    splits = label_noise_splits(y, dataset_name="bal")
    assert [sp.setting_value for sp in splits] == list(LABEL_NOISE_RATIOS)
    n = normal.n_train
    previous: set[int] = set()
    for k, sp in enumerate(splits):
        assert (sp.setting, sp.seed, sp.test_source) == ("label_noise", 42, None)
        assert np.array_equal(sp.train, normal.train) and np.array_equal(sp.test, normal.test)
        assert sp.train_labels is not None and sp.train_labels.dtype == np.int64
        flipped = set(np.flatnonzero(sp.train_labels != y[sp.train]).tolist())
        assert len(flipped) == k * n // 20  # floor(n·r), r = k/20
        assert previous <= flipped  # smaller ratios flip a subset
        previous = flipped
        assert np.array_equal(sp.y_train(y), sp.train_labels)
    assert label_noise_splits(y) == splits
    assert label_noise_splits(y, seed=3)[5] != splits[5]


def test_label_noise_equals_peer_corrupt_ytrain(peer):
    for n_rows in (728, 786, 1000, 1052, 1062, 5000):  # the bundled training sizes 628 ... 1024
        y = balanced_labels(n_rows, seed=n_rows)
        splits = label_noise_splits(y)
        y_train = y[splits[0].train]
        for sp, r_raw in zip(splits, peer.get_corrupt_frac(), strict=True):
            assert np.array_equal(sp.train_labels, peer.corrupt_ytrain(y_train, r_raw, seed=42))
            # the baseline runner's rounded ratio gives the same labels on these sizes
            r_base = round(r_raw * 20) / 20
            assert np.array_equal(sp.train_labels, peer.corrupt_ytrain(y_train, r_base, seed=42))
    # Where the peer's float int() loses a flip (n = 180, r = 0.35), saelab matches the exact
    # count, which the raw linspace float also gives.
    y = balanced_labels(180, seed=1)
    ours = flip_labels(y, 0.35, seed=7)
    assert int((ours != y).sum()) == 63
    assert int((peer.corrupt_ytrain(y, 0.35, seed=7) != y).sum()) == 62
    assert np.array_equal(ours, peer.corrupt_ytrain(y, RAW_RATIOS[7], seed=7))


def test_label_noise_on_real_dataset_equals_peer(peer):
    ds = load_dataset("41_truthqa_tf")
    splits = label_noise_splits(ds.labels, ratios=(0.1, 0.5), dataset_name=ds.name)
    ref_train, _ = peer.get_train_test_indices(ds.labels, 686, 99, 0.5, 42)
    for sp in splits:
        assert np.array_equal(sp.train, ref_train)
        ref = peer.corrupt_ytrain(ds.labels[ref_train], sp.setting_value, seed=42)
        assert np.array_equal(sp.train_labels, ref)


def test_label_noise_errors():
    for ratios in [(0.6,), (-0.1,), (), (True,)]:
        with pytest.raises(ConfigError, match=r"\[0, 0.5\]"):
            label_noise_splits(balanced_labels(500), ratios=ratios)
    with pytest.raises(ConfigError):
        flip_labels(np.array([0, 1]), 0.75)
    with pytest.raises(DatasetError, match="'few'"):
        label_noise_splits(np.array([0] * 40 + [1] * 500), dataset_name="few")


# ---------------------------------------------------------------------------------------------
# OOD


def test_ood_pairs_are_the_bundled_ones():
    pairs = tuple(
        (info.ood_of, info.name) for info in list_bundled(include_ood=True) if info.kind == "ood"
    )
    assert pairs == OOD_PAIRS and len(OOD_PAIRS) == 8


def test_ood_split_on_glue_cola(peer):
    id_ds, ood_ds = load_ood_pair("87_glue_cola")
    assert (id_ds.name, ood_ds.name, ood_ds.n_rows) == ("87_glue_cola", "87_glue_cola_OOD", 300)
    split = ood_split(id_ds.labels, ood_ds.labels, dataset_name=id_ds.name, ood_name=ood_ds.name)
    assert (split.setting, split.setting_value, split.seed) == ("ood", None, 42)
    assert split.test_source == "87_glue_cola_OOD" and split.train_labels is None
    assert split.n_train == 1024 and int(id_ds.labels[split.train].sum()) == 512
    assert split.train.max() < 1500 and len(set(split.train.tolist())) == 1024
    assert np.array_equal(split.test, np.arange(300))
    # the draw of sae-probes 0.4.2's get_OOD_traintest: 1024 train, 0 test, first 1500 rows
    ref_train, ref_test = peer.get_train_test_indices(id_ds.labels[:1500], 1024, 0, 0.5, 42)
    assert np.array_equal(split.train, ref_train) and len(ref_test) == 0
    again = ood_split(id_ds.labels, ood_ds.labels, dataset_name=id_ds.name, ood_name=ood_ds.name)
    assert again == split and hash(again) == hash(split)
    other = ood_split(id_ds.labels, ood_ds.labels, seed=1, ood_name=ood_ds.name)
    assert not np.array_equal(other.train, split.train)
    assert ood_split(id_ds.labels, ood_ds.labels).test_source == "ood"


def test_ood_split_errors():
    y_id = np.array([1] * 1100 + [0] * 900)  # 400 negatives in the first 1500 rows
    y_ood = balanced_labels(300)
    with pytest.raises(DatasetError) as err:
        ood_split(y_id, y_ood, dataset_name="lopsided")
    msg = str(err.value)
    assert (
        "lopsided" in msg
        and "512 of class 0" in msg
        and "1100 of class 1 and 400 of class 0" in msg
    )
    assert "n_train <= 801" in msg
    assert ood_split(y_id, y_ood, n_train=800).n_train == 800
    assert ood_split(y_id, y_ood, max_rows=1900).n_train == 1024
    with pytest.raises(DatasetError, match=r"'mono'.*both classes"):
        ood_split(balanced_labels(2000), np.ones(50, dtype=np.int64), ood_name="mono")
    with pytest.raises(ConfigError):
        ood_split(balanced_labels(2000), y_ood, n_train=1024, max_rows=1000)


def test_bundled_qnli_pair_has_matching_encodings():
    id_ds, ood_ds = load_ood_pair("90_glue_qnli")
    assert id_ds.classes == (0, 1) and ood_ds.classes == ("1", "not_entailment")
    assert ood_ds.class_counts == (150, 150)
    raw = load_dataset("90_glue_qnli_OOD")
    assert np.array_equal(ood_ds.labels, raw.labels)  # 'not_entailment' is label 1 in both
    with pytest.raises(DatasetError, match="no bundled OOD set"):
        load_ood_pair("92_glue_sst2")


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "target"])
        writer.writerows(rows)
    return path


def test_user_pair_class_check(tmp_path):
    id_path = write_csv(tmp_path / "reviews.csv", [("good", "pos"), ("bad", "neg"), ("ok", "pos")])
    same = write_csv(tmp_path / "same.csv", [("great", "pos"), ("awful", "neg")])
    other = write_csv(tmp_path / "other.csv", [("great", "good"), ("awful", "bad")])
    reversed_ = write_csv(tmp_path / "rev.csv", [("great", "a_positive"), ("awful", "z_negative")])

    id_ds, ood_ds = load_ood_pair(id_path, same)
    assert ood_ds.classes == id_ds.classes == ("neg", "pos")
    assert ood_ds.labels.tolist() == [1, 0]

    with pytest.raises(DatasetError) as err:
        load_ood_pair(id_path, other)
    msg = str(err.value)
    assert str(id_path) in msg and str(other) in msg
    assert "('neg', 'pos')" in msg and "('bad', 'good')" in msg

    _, mapped = load_ood_pair(id_path, other, class_map={"bad": "neg", "good": "pos"})
    assert mapped.labels.tolist() == [1, 0]

    # 'a_positive' sorts first, so its file label is 0; the map says it is the ID's label 1.
    raw = load_dataset(reversed_)
    assert raw.labels.tolist() == [0, 1]
    fixed = match_ood_classes(
        load_dataset(id_path), raw, class_map={"a_positive": "pos", "z_negative": "neg"}
    )
    assert fixed.labels.tolist() == [1, 0] and fixed.classes == ("z_negative", "a_positive")
    assert fixed.content_hash != raw.content_hash

    with pytest.raises(DatasetError, match="not the ID classes") as err:
        load_ood_pair(id_path, other, class_map={"bad": "neg", "good": "meh"})
    assert str(other) in str(err.value)
    with pytest.raises(DatasetError, match="exactly once"):
        load_ood_pair(id_path, other, class_map={"bad": "neg"})


# ---------------------------------------------------------------------------------------------
# Split's new fields


def test_split_train_labels_and_test_source_fields():
    old_style = Split(np.array([1, 2]), np.array([3]), "normal", None, 42)
    assert old_style.train_labels is None and old_style.test_source is None
    y = np.array([0, 1, 1, 0])
    assert old_style.y_train(y).tolist() == [1, 1]

    noisy = Split(np.array([1, 2]), np.array([3]), "label_noise", 0.5, 42, train_labels=[0, 1])
    assert noisy.y_train(y).tolist() == [0, 1]
    with pytest.raises(ValueError):
        noisy.train_labels[0] = 1  # read-only
    assert noisy != Split(np.array([1, 2]), np.array([3]), "label_noise", 0.5, 42)
    assert noisy != Split(np.array([1, 2]), np.array([3]), "label_noise", 0.5, 42, [1, 1])
    same = Split(np.array([1, 2]), np.array([3]), "label_noise", 0.5, 42, np.array([0, 1]))
    assert noisy == same and hash(noisy) == hash(same)
    assert Split([1], [0], "ood", None, 42, test_source="x") != Split([1], [0], "ood", None, 42)

    parts = noisy.key_parts()
    assert json.loads(json.dumps(parts)) == parts
    assert parts["train_labels"] == [0, 1] and parts["test_source"] is None
    with pytest.raises(ValueError, match="shape"):
        Split([1, 2], [3], "label_noise", 0.5, 42, train_labels=[0])
    with pytest.raises(ValueError, match="0/1"):
        Split([1, 2], [3], "label_noise", 0.5, 42, train_labels=[0, 2])
