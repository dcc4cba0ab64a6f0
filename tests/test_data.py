"""Tests for saelab.data: bundled registry, dataset loading and validation, the paper's splits."""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import LabelEncoder

from saelab.data import (
    FAMILY_NUMBERS,
    Dataset,
    Split,
    bundled_data_dir,
    count_rows,
    encode_labels,
    find_bundled,
    list_bundled,
    load_dataset,
    normal_split,
    train_test_indices,
)
from saelab.errors import DatasetError, SaelabError

# ---------------------------------------------------------------------------------------------
# helpers


def write_csv(path: Path, rows: list[list[object]], header: tuple[str, ...] = ("prompt", "target")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_zst(path: Path, data: bytes) -> Path:
    path.write_bytes(zstandard.ZstdCompressor().compress(data))
    return path


def balanced_labels(n: int, seed: int = 0) -> np.ndarray:
    y = np.array([0, 1] * (n // 2) + [1] * (n % 2), dtype=np.int64)
    return np.random.RandomState(seed).permutation(y)


def paper_sizes(n: int) -> tuple[int, int]:
    """Spec §2, normal setting: n_train = min(N − 100, 1024), n_test = N − n_train − 1."""
    n_train = min(n - 100, 1024)
    return n_train, n - n_train - 1


SIMPLE_ROWS = [["good movie", "pos"], ["bad movie", "neg"], ["fine film", "pos"], ["dull", "neg"]]


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_has_113_binary_and_8_ood_sets_in_number_order():
    binary = list_bundled()
    everything = list_bundled(include_ood=True)
    ood = [info for info in everything if info.kind == "ood"]
    assert len(binary) == 113
    assert len(everything) == 121 and len(ood) == 8
    assert all(info.kind == "binary" and info.ood_of is None for info in binary)
    numbers = [info.number for info in binary]
    assert numbers == sorted(numbers) and len(set(numbers)) == 113
    assert binary[0].name == "5_hist_fig_ismale" and binary[-1].name == "163_agnews_2"
    assert "131_temp_cat_Typical Time" in {info.name for info in binary}
    for info in everything:
        assert info.path.is_file(), info.path
        assert info.path.is_relative_to(bundled_data_dir())
    binary_names = {info.name for info in binary}
    assert sorted(info.name for info in ood) == sorted(
        f"{n}_OOD"
        for n in [
            "5_hist_fig_ismale",
            "6_hist_fig_isamerican",
            "7_hist_fig_ispolitician",
            "66_living-room",
            "67_social-security",
            "73_control-group",
            "87_glue_cola",
            "90_glue_qnli",
        ]
    )
    for info in ood:
        assert info.ood_of in binary_names and info.name == f"{info.ood_of}_OOD"
        assert info.family == find_bundled(info.ood_of).family
    assert not any("translations" in info.name for info in everything)
    assert (bundled_data_dir() / "OOD data" / "66_living-room_translations.csv.zst").is_file()


def test_every_binary_dataset_has_its_spec_family():
    expected_sizes = {  # spec §1.2
        "historical_figures": 3,
        "headlines": 5,
        "qa_truth": 6,
        "ethics": 5,
        "wikidata": 9,
        "bigram": 21,
        "glue": 8,
        "text_classification": 10,
        "one_vs_rest": 40,
        "code": 6,
    }
    binary = list_bundled()
    assert all(info.family in FAMILY_NUMBERS for info in binary)
    counts = {fam: sum(info.family == fam for info in binary) for fam in FAMILY_NUMBERS}
    assert counts == expected_sizes
    assert find_bundled("136_glue_mnli_entailment").family == "glue"
    assert find_bundled("129_arith_mc_A").family == "one_vs_rest"
    assert find_bundled("157_amazon_5star").family == "text_classification"
    assert find_bundled("161_agnews_0").family == "code"


def test_find_bundled_accepts_numbered_bare_and_ood_names():
    assert find_bundled("92_glue_sst2").name == "92_glue_sst2"
    assert find_bundled("glue_sst2").name == "92_glue_sst2"
    assert find_bundled("GLUE_SST2").name == "92_glue_sst2"
    assert find_bundled("92").name == "92_glue_sst2"
    info = find_bundled("87_glue_cola_OOD")
    assert (info.kind, info.ood_of, info.family) == ("ood", "87_glue_cola", "glue")
    assert find_bundled("glue_cola_OOD") == info


def test_find_bundled_unknown_name_suggests_close_matches():
    with pytest.raises(DatasetError, match="glue_sst3") as err:
        find_bundled("glue_sst3")
    assert "92_glue_sst2" in str(err.value) or "'glue_sst2'" in str(err.value)


def test_bundled_data_dir_without_sae_probes_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "sae_probes" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(DatasetError, match="sae-probes"):
        bundled_data_dir()


def test_count_rows_matches_spec_totals_and_normal_setting_sizes():
    binary = list_bundled()
    rows = {info.name: count_rows(info) for info in binary}
    # spec §1.1: 728 to 5000 rows, 334,092 in total.
    assert sum(rows.values()) == 334_092
    assert min(rows.values()) == 728 and max(rows.values()) == 5000
    assert rows["41_truthqa_tf"] == 786 and rows["95_toxic_is"] == 728
    assert count_rows(find_bundled("5_hist_fig_ismale_OOD")) == 299
    # spec §2: 102 sets reach n_train = 1024; 11 get 628-1023; test sizes 99-3975, mean 1945.
    sizes = [paper_sizes(n) for n in rows.values()]
    short = [n_train for n_train, _ in sizes if n_train < 1024]
    assert len(short) == 11 and min(short) == 628 and max(short) <= 1023
    tests = [n_test for _, n_test in sizes]
    assert (min(tests), max(tests), round(sum(tests) / len(tests))) == (99, 3975, 1945)


# ---------------------------------------------------------------------------------------------
# loading bundled datasets


def test_load_glue_sst2_is_balanced_with_0_1_labels():
    ds = load_dataset("92_glue_sst2")
    assert (ds.name, ds.family, ds.n_rows) == ("92_glue_sst2", "glue", 5000)
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == {0, 1}
    assert ds.class_counts == (2500, 2500)
    assert ds.classes == (0, 1)
    ref = pd.read_csv(ds.path, compression="zstd")
    assert list(ds.prompts) == ref["prompt"].tolist()
    assert np.array_equal(ds.labels, ref["target"].to_numpy())
    assert len(ds.content_hash) == 64
    assert load_dataset("glue_sst2") == ds  # same content, same hash
    with pytest.raises(ValueError):
        ds.labels[0] = 1  # read-only


def test_load_respects_max_rows():
    full = load_dataset("92_glue_sst2")
    head = load_dataset("92_glue_sst2", max_rows=100)
    assert head.n_rows == 100 and head.prompts == full.prompts[:100]
    assert np.array_equal(head.labels, full.labels[:100])
    assert head.content_hash != full.content_hash


def test_load_ood_sets():
    qnli = load_dataset("90_glue_qnli_OOD")
    # spec §1.4: targets '1' and 'not_entailment'; LabelEncoder maps 'not_entailment' to 1.
    assert qnli.classes == ("1", "not_entailment")
    assert (qnli.n_rows, qnli.class_counts, qnli.family) == (300, (150, 150), "glue")
    fiction = load_dataset("5_hist_fig_ismale_OOD")
    assert (fiction.n_rows, fiction.class_counts) == (299, (143, 156))
    politician = load_dataset("7_hist_fig_ispolitician_OOD")
    assert politician.class_counts == (156, 144)


def test_bundled_labels_equal_label_encoder_on_pandas_for_all_121_sets():
    """The paper encodes targets with sklearn LabelEncoder on pandas-parsed CSVs (spec §1.1)."""
    for info in list_bundled(include_ood=True):
        ds = load_dataset(info.name)
        ref = pd.read_csv(info.path, compression="zstd")
        expected = LabelEncoder().fit_transform(ref["target"].to_numpy())
        assert np.array_equal(ds.labels, expected), info.name
        assert list(ds.prompts) == ref["prompt"].tolist(), info.name
        if info.kind == "binary":  # spec §1.1: all 113 are exactly class-balanced
            assert ds.class_counts[0] == ds.class_counts[1], info.name


def test_bool_and_string_targets_follow_label_encoder_order():
    assert load_dataset("21_headline_istrump").classes == (False, True)
    assert load_dataset("65_high-school").classes == ("bigram", "not_bigram")
    assert load_dataset("58_wikidatapolitical_party").classes == (
        "Democratic Party",
        "Republican Party",
    )


# ---------------------------------------------------------------------------------------------
# user files


def test_user_csv_zstd_and_parquet_give_the_same_dataset(tmp_path):
    csv_path = write_csv(tmp_path / "reviews.csv", SIMPLE_ROWS)
    zst_path = write_zst(tmp_path / "reviews.csv.zst", csv_path.read_bytes())
    zstd_path = write_zst(tmp_path / "reviews.csv.zstd", csv_path.read_bytes())
    pq_path = tmp_path / "reviews.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": [r[0] for r in SIMPLE_ROWS],
                "target": [r[1] for r in SIMPLE_ROWS],
                "extra": [1, 2, 3, 4],
            }
        ),
        pq_path,
    )
    loaded = [load_dataset(p) for p in (csv_path, zst_path, zstd_path, pq_path)]
    for ds in loaded:
        assert ds.name == "reviews" and ds.family == "user"
        assert ds.prompts == ("good movie", "bad movie", "fine film", "dull")
        assert ds.labels.tolist() == [1, 0, 1, 0]  # 'neg' < 'pos'
        assert ds.classes == ("neg", "pos")
        assert ds.content_hash == loaded[0].content_hash
    assert load_dataset(str(csv_path), family="reviews").family == "reviews"


def test_csv_extra_columns_blank_lines_and_multiline_prompts(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text(
        'id,target,prompt\n1,0,"line one\nline two"\n\n2,1,plain\n3,1," padded "\n', "utf-8"
    )
    ds = load_dataset(path)
    assert ds.prompts == ("line one\nline two", "plain", " padded ")
    assert ds.labels.tolist() == [0, 1, 1]


def test_numeric_targets_sort_numerically(tmp_path):
    path = write_csv(tmp_path / "nums.csv", [["a", 10], ["b", 9], ["c", "9.0"], ["d", 10]])
    ds = load_dataset(path)
    assert ds.labels.tolist() == [1, 0, 0, 1] and ds.classes == (9, 10)


# ---------------------------------------------------------------------------------------------
# validation errors: each names the file and, where one applies, the row and line


def _error(spec, **kwargs) -> str:
    with pytest.raises(DatasetError) as err:
        load_dataset(spec, **kwargs)
    assert isinstance(err.value, SaelabError)
    return str(err.value)


def test_error_file_not_found(tmp_path):
    msg = _error(tmp_path / "nope.csv")
    assert "nope.csv" in msg and "not found" in msg


def test_error_unsupported_extension(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]")
    msg = _error(path)
    assert "data.json" in msg and ".parquet" in msg and "unsupported" in msg


def test_error_corrupt_zstd(tmp_path):
    path = tmp_path / "broken.csv.zst"
    path.write_bytes(b"this is not zstd at all")
    msg = _error(path)
    assert "broken.csv.zst" in msg and "zstd" in msg


def test_error_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 definitely not parquet")
    msg = _error(path)
    assert "broken.parquet" in msg and "Parquet" in msg


def test_error_not_utf8_names_row_line_and_byte(tmp_path):
    path = tmp_path / "latin.csv"
    data = b'prompt,target\nhello,1\n"multi\nline",0\ncaf\xe9,0\n'
    path.write_bytes(data)
    msg = _error(path)
    assert "latin.csv" in msg and "UTF-8" in msg
    assert "row 3 (line 5 of the file)" in msg
    bad_byte = data.index(b"\xe9")
    assert f"byte {bad_byte}" in msg and "'prompt'" in msg


def test_error_not_utf8_inside_zstd(tmp_path):
    path = write_zst(tmp_path / "latin.csv.zst", b"prompt,target\nok,1\nno\xff,0\n")
    msg = _error(path)
    assert "latin.csv.zst" in msg and "row 2 (line 3 of the file)" in msg
    assert "decompressed" in msg


def test_error_missing_columns_lists_found_columns(tmp_path):
    path = write_csv(tmp_path / "cols.csv", [["x", "1"]], header=("text", "label"))
    msg = _error(path)
    assert "cols.csv" in msg and "'prompt', 'target'" in msg and "['text', 'label']" in msg
    translations = bundled_data_dir() / "OOD data" / "66_living-room_translations.csv.zst"
    msg = _error(translations)
    assert "['Language', 'Translation']" in msg


def test_error_missing_parquet_column(tmp_path):
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "label": [0, 1]}), path)
    msg = _error(path)
    assert "cols.parquet" in msg and "'target'" in msg and "['prompt', 'label']" in msg


def test_error_empty_prompt_names_row_and_line(tmp_path):
    rows = [["a", 0], ["b", 1], ["", 0], ["d", 1]]
    msg = _error(write_csv(tmp_path / "empty.csv", rows))
    assert "empty.csv: row 3 (line 4 of the file)" in msg and "empty" in msg


def test_error_whitespace_prompt_after_multiline_prompt(tmp_path):
    path = tmp_path / "ws.csv"
    path.write_text('prompt,target\n"a\nb\nc",0\n"   ",1\n', "utf-8")
    msg = _error(path)
    assert "ws.csv: row 2 (line 5 of the file)" in msg and "whitespace" in msg


def test_error_non_string_prompt_in_parquet(tmp_path):
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"prompt": [1, 2, 3], "target": [0, 1, 0]}), path)
    msg = _error(path)
    assert "ints.parquet: row 1" in msg and "int" in msg and "3 rows" in msg


def test_error_null_prompt_in_parquet(tmp_path):
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"], "target": [0, 1, 0]}), path)
    msg = _error(path)
    assert "nulls.parquet: row 2" in msg and "null" in msg


def test_error_missing_prompt_field_in_csv(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("target,prompt\n0,a\n1\n0,c\n", "utf-8")
    msg = _error(path)
    assert "short.csv: row 2 (line 3 of the file)" in msg and "prompt is missing" in msg


def test_error_empty_target_in_csv(tmp_path):
    msg = _error(write_csv(tmp_path / "t.csv", [["a", "x"], ["b", "y"], ["c", ""]]))
    assert "t.csv: row 3 (line 4 of the file)" in msg and "target" in msg


def test_error_nan_target_in_csv(tmp_path):
    msg = _error(write_csv(tmp_path / "t.csv", [["a", "x"], ["b", "NaN"], ["c", "y"]]))
    assert "t.csv: row 2 (line 3 of the file)" in msg and "NaN" in msg


def test_error_nan_target_in_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "target": [0.0, float("nan"), 1.0]}), path)
    msg = _error(path)
    assert "t.parquet: row 2" in msg and "target" in msg


def test_error_one_class_lists_classes_and_counts(tmp_path):
    msg = _error(write_csv(tmp_path / "one.csv", [["a", "x"], ["b", "x"]]))
    assert "one.csv" in msg and "found 1: 'x' (2 rows)" in msg


def test_error_three_classes_lists_classes_and_counts(tmp_path):
    rows = [["a", "x"], ["b", "y"], ["c", "z"], ["d", "x"]]
    msg = _error(write_csv(tmp_path / "three.csv", rows))
    assert "three.csv" in msg and "found 3" in msg
    assert "'x' (2 rows)" in msg and "'y' (1 rows)" in msg and "'z' (1 rows)" in msg


def test_error_no_rows(tmp_path):
    msg = _error(write_csv(tmp_path / "header_only.csv", []))
    assert "header_only.csv" in msg and "no data rows" in msg
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert "empty.csv" in _error(empty)


def test_error_too_many_fields_and_bad_quoting(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("prompt,target\na,0\nb,1,extra\n", "utf-8")
    msg = _error(path)
    assert "wide.csv: row 2 (line 3 of the file)" in msg and "3 fields" in msg
    path = tmp_path / "quote.csv"
    path.write_text('prompt,target\na,0\n"unterminated,1\nc,0\n', "utf-8")
    msg = _error(path)
    assert "quote.csv" in msg and "line 3" in msg


def test_error_unknown_bundled_name_and_bad_max_rows():
    assert "did you mean" in _error("glue_sst")
    with pytest.raises(SaelabError, match="max_rows"):
        load_dataset("92_glue_sst2", max_rows=0)


# ---------------------------------------------------------------------------------------------
# property tests: label encoding and CSV round trips

_NA_WORDS = {"na", "nan", "null", "none", "n/a", "inf", "infinity", "true", "false"}
class_words = st.text(string.ascii_letters + "_", min_size=1, max_size=8).filter(
    lambda s: s.lower() not in _NA_WORDS
)
prompt_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
).filter(lambda s: s.strip() != "")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prompts=st.lists(prompt_text, min_size=2, max_size=15),
    pair=st.one_of(
        st.lists(st.integers(-10_000, 10_000), min_size=2, max_size=2, unique=True),
        st.lists(class_words, min_size=2, max_size=2, unique=True),
        st.tuples(st.integers(0, 99), class_words).map(list),
    ),
    choices=st.lists(st.booleans(), min_size=15, max_size=15),
)
def test_csv_round_trip_matches_label_encoder(prompts, pair, choices):
    targets = [pair[0], pair[1]] + [pair[int(c)] for c in choices[: len(prompts) - 2]]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(
            Path(tmp) / "prop.csv", [[p, t] for p, t in zip(prompts, targets, strict=True)]
        )
        ds = load_dataset(path)
        ref = pd.read_csv(path)["target"].to_numpy()
    assert ds.prompts == tuple(prompts)
    assert np.array_equal(ds.labels, LabelEncoder().fit_transform(ref))
    low, high = sorted(pair) if all(isinstance(v, int) for v in pair) else sorted(map(str, pair))
    assert ds.classes == (low, high)
    assert ds.labels.tolist() == [int(str(t) == str(high)) for t in targets]


@settings(max_examples=100, deadline=None)
@given(
    pair=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=2, max_size=2
    ).filter(lambda p: p[0] != p[1]),
    picks=st.lists(st.booleans(), max_size=20),
)
def test_numeric_strings_encode_in_numeric_order(pair, picks):
    values = [repr(pair[0]), repr(pair[1])] + [repr(pair[int(b)]) for b in picks]
    labels, classes = encode_labels(values)
    high = max(pair)
    assert labels.tolist() == [int(float(v) == high) for v in values]
    assert classes[1] == pytest.approx(high) and classes[0] == pytest.approx(min(pair))


@given(values=st.lists(class_words, min_size=1, max_size=30))
def test_encode_labels_rejects_anything_but_two_classes(values):
    if len(set(values)) == 2:
        labels, classes = encode_labels(values)
        assert set(labels.tolist()) == {0, 1} and classes == tuple(sorted(set(values)))
    else:
        with pytest.raises(DatasetError, match=f"found {len(set(values))}"):
            encode_labels(values, source="file.csv")


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.lists(
        st.text(string.ascii_letters + " \n", min_size=1, max_size=12).filter(str.strip),
        min_size=1,
        max_size=12,
    ),
    data=st.data(),
)
def test_bad_row_is_reported_at_its_row_and_line(prompts, data):
    bad = data.draw(st.integers(0, len(prompts)))
    rows = [[p, i % 2] for i, p in enumerate(prompts)]
    rows.insert(bad, ["  ", 1])
    expected_line = 2 + bad + sum(p.count("\n") for p in prompts[:bad])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "rows.csv", rows)
        with pytest.raises(DatasetError) as err:
            load_dataset(path)
    assert f"rows.csv: row {bad + 1} (line {expected_line} of the file)" in str(err.value)


def test_bool_words_sort_false_first():
    labels, classes = encode_labels(["true", "False", "TRUE", "false"])
    assert labels.tolist() == [1, 0, 1, 0] and classes == (False, True)


# ---------------------------------------------------------------------------------------------
# splits


@pytest.fixture(scope="module")
def peer_utils_data():
    """The peer's module (slow to import: it pulls torch and transformer_lens); imported once."""
    return pytest.importorskip("sae_probes.utils_data")


@pytest.mark.parametrize("n", [728, 786, 1000, 1124, 3200, 5000])
def test_normal_split_sizes_balance_and_disjointness(n):
    y = balanced_labels(n, seed=n)
    split = normal_split(y, seed=42)
    n_train, n_test = paper_sizes(n)
    assert (split.n_train, split.n_test) == (n_train, n_test)
    assert (split.setting, split.setting_value, split.seed) == ("normal", None, 42)
    assert split.train.dtype == np.int64 and split.test.dtype == np.int64
    assert not set(split.train.tolist()) & set(split.test.tolist())
    assert len(set(split.train.tolist())) == n_train and len(set(split.test.tolist())) == n_test
    assert int(y[split.train].sum()) == math.ceil(n_train / 2)
    assert int(y[split.test].sum()) == math.ceil(n_test / 2)
    assert normal_split(y, seed=42) == split
    other = normal_split(y, seed=7)
    assert not np.array_equal(other.train, split.train)


@pytest.mark.parametrize("n", [728, 786, 1000, 1124, 3200, 5000])
def test_normal_split_equals_peer_indices(peer_utils_data, n):
    y = balanced_labels(n, seed=n + 1)
    n_train, n_test = paper_sizes(n)
    ref_train, ref_test = peer_utils_data.get_train_test_indices(y, n_train, n_test, 0.5, 42)
    split = normal_split(y)
    assert np.array_equal(split.train, ref_train) and np.array_equal(split.test, ref_test)


@pytest.mark.parametrize(
    ("n_train", "n_test", "pos_fraction", "seed"),
    [(100, 50, 0.3, 0), (200, 101, 0.05, 3), (31, 17, 0.95, 42), (1024, 0, 0.5, 42)],
)
def test_train_test_indices_equal_peer(peer_utils_data, n_train, n_test, pos_fraction, seed):
    y = balanced_labels(1500, seed=5)  # 1500 rows, 1024 train, 0 test: the paper's OOD draw (§2)
    ours = train_test_indices(y, n_train, n_test, pos_fraction=pos_fraction, seed=seed)
    ref = peer_utils_data.get_train_test_indices(y, n_train, n_test, pos_fraction, seed)
    assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[1], ref[1])
    assert int(y[ours[0]].sum()) == math.ceil(pos_fraction * n_train)


def test_normal_split_on_real_dataset_equals_peer(peer_utils_data):
    ds = load_dataset("41_truthqa_tf")
    ref_train, ref_test = peer_utils_data.get_train_test_indices(ds.labels, 686, 99, 0.5, 42)
    split = normal_split(ds.labels, dataset_name=ds.name)
    assert np.array_equal(split.train, ref_train) and np.array_equal(split.test, ref_test)


def test_max_test_cap_keeps_train_identical():
    y = balanced_labels(5000, seed=1)
    full = normal_split(y)
    capped = normal_split(y, max_test=500)
    assert np.array_equal(capped.train, full.train)  # same rows, same order
    assert capped.n_test == 500 and int(y[capped.test].sum()) == 250
    assert not set(capped.train.tolist()) & set(capped.test.tolist())
    assert normal_split(y, max_test=10_000) == full


def test_imbalanced_user_data_shrinks_with_warning(caplog):
    y = np.random.RandomState(0).permutation(np.array([0] * 300 + [1] * 700))
    with caplog.at_level(logging.WARNING, logger="saelab.data.splits"):
        split = normal_split(y, dataset_name="skewed")
    # Paper sizes (900 + 99) need 499 negatives; the largest N' that 300 negatives support is
    # 603: n_train = 503 (252 pos, 251 neg) and n_test = 99 (50 pos, 49 neg): 300 negatives.
    assert (split.n_train, split.n_test) == (503, 99)
    assert int(y[split.train].sum()) == 252 and int(y[split.test].sum()) == 50
    assert int((y[split.train] == 0).sum() + (y[split.test] == 0).sum()) == 300
    assert "skewed" in caplog.text and "imbalanced" in caplog.text


def test_too_few_minority_rows_is_an_error():
    y = np.array([0] * 40 + [1] * 500)
    with pytest.raises(DatasetError) as err:
        normal_split(y, dataset_name="tiny_minority")
    msg = str(err.value)
    assert "tiny_minority" in msg and "40 of class 0" in msg and "51 of class 0" in msg
    # with a smaller held-back test set the same data works
    split = normal_split(y, min_test=20, dataset_name="tiny_minority")
    assert split.n_train >= 4 and int((y[split.test] == 0).sum()) >= 1


def test_train_test_indices_with_too_few_rows_is_an_error():
    with pytest.raises(DatasetError, match="needs 60 rows of class 1"):
        train_test_indices(balanced_labels(100), 100, 20)


def test_split_is_immutable_and_comparable():
    split = Split(np.array([1, 2]), np.array([3]), "normal", None, 42)
    assert (split.n_train, split.n_test) == (2, 1)
    with pytest.raises(ValueError):
        split.train[0] = 5
    assert split == Split([1, 2], [3], "normal", None, 42)
    assert split != Split([2, 1], [3], "normal", None, 42)


def test_dataset_rejects_mismatched_labels(tmp_path):
    with pytest.raises(ValueError):
        Dataset("x", "user", tmp_path, ("a", "b"), np.array([0]), (0, 1), "h")
