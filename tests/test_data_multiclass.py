"""Tests for multiclass loading in saelab.data: ``load_dataset(..., multiclass=True)``,
``encode_labels(..., multiclass=True)``, ``Dataset.n_classes`` and ``Dataset.class_counts``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.preprocessing import LabelEncoder

from saelab.data import Dataset, content_hash_of, encode_labels, load_dataset
from saelab.errors import DatasetError


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("prompt", "target"))
        writer.writerows(rows)
    return path


THREE_ROWS = [
    ["the cat sat", "cat"],
    ["a dog ran", "dog"],
    ["fish swim", "fish"],
    ["kitten naps", "cat"],
    ["puppy barks", "dog"],
    ["tabby purrs", "cat"],
]

# numeric strings: numeric order 2 < 9 < 10 < 33 (string order would be "10" < "2" < "33" < "9")
FOUR_ROWS = [
    ["p0", "10"],
    ["p1", "9"],
    ["p2", "2"],
    ["p3", "33"],
    ["p4", "9.0"],
    ["p5", "2"],
    ["p6", "10"],
    ["p7", "2"],
]


# ---------------------------------------------------------------------------------------------
# user files


def test_three_string_classes_from_csv(tmp_path):
    ds = load_dataset(write_csv(tmp_path / "animals.csv", THREE_ROWS), multiclass=True)
    assert ds.name == "animals" and ds.family == "user"
    assert ds.classes == ("cat", "dog", "fish") and ds.n_classes == 3
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 1, 2, 0, 1, 0]
    assert ds.class_counts == (3, 2, 1)
    assert ds.prompts == tuple(r[0] for r in THREE_ROWS)
    # the paper's encoder: sklearn's LabelEncoder on the raw strings
    ref = LabelEncoder().fit_transform([r[1] for r in THREE_ROWS])
    assert np.array_equal(ds.labels, ref)


def test_four_numeric_classes_sort_numerically(tmp_path):
    ds = load_dataset(write_csv(tmp_path / "nums.csv", FOUR_ROWS), multiclass=True)
    assert ds.classes == (2, 9, 10, 33) and ds.n_classes == 4
    assert ds.labels.tolist() == [2, 1, 0, 3, 1, 0, 2, 0]  # "9" and "9.0" are one class
    assert ds.class_counts == (3, 2, 2, 1)
    ref = LabelEncoder().fit_transform([float(r[1]) for r in FOUR_ROWS])
    assert np.array_equal(ds.labels, ref)


def test_parquet_matches_csv(tmp_path):
    csv_ds = load_dataset(write_csv(tmp_path / "nums.csv", FOUR_ROWS), multiclass=True)
    pq_path = tmp_path / "nums.parquet"
    pq.write_table(
        pa.table(
            {
                "prompt": [r[0] for r in FOUR_ROWS],
                "target": [float(r[1]) for r in FOUR_ROWS],
                "extra": list(range(len(FOUR_ROWS))),
            }
        ),
        pq_path,
    )
    pq_ds = load_dataset(pq_path, multiclass=True)
    assert pq_ds.prompts == csv_ds.prompts
    assert pq_ds.labels.tolist() == csv_ds.labels.tolist()
    assert pq_ds.classes == csv_ds.classes == (2, 9, 10, 33)
    assert pq_ds.content_hash == csv_ds.content_hash

    str_path = tmp_path / "animals.parquet"
    pq.write_table(
        pa.table({"prompt": [r[0] for r in THREE_ROWS], "target": [r[1] for r in THREE_ROWS]}),
        str_path,
    )
    ds = load_dataset(str_path, multiclass=True)
    assert ds.classes == ("cat", "dog", "fish") and ds.class_counts == (3, 2, 1)


def test_multiclass_file_still_rejected_without_flag(tmp_path):
    path = write_csv(tmp_path / "animals.csv", THREE_ROWS)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert "animals.csv" in msg and "expected exactly two classes" in msg and "found 3" in msg


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_one_class_file_is_an_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"single{suffix}"
    if suffix == ".csv":
        write_csv(path, [["a", "x"], ["b", "x"], ["c", "x"]])
    else:
        pq.write_table(pa.table({"prompt": ["a", "b", "c"], "target": ["x", "x", "x"]}), path)
    with pytest.raises(DatasetError) as info:
        load_dataset(path, multiclass=True)
    msg = str(info.value)
    assert str(path) in msg
    assert "expected at least two classes" in msg and "found 1: 'x' (3 rows)" in msg


def test_missing_target_message_in_multiclass_mode(tmp_path):
    path = write_csv(tmp_path / "gap.csv", [["a", "x"], ["b", ""], ["c", "y"], ["d", "z"]])
    with pytest.raises(DatasetError) as info:
        load_dataset(path, multiclass=True)
    msg = str(info.value)
    assert "gap.csv: row 2" in msg and "expected a class value" in msg


@pytest.mark.parametrize(
    "rows",
    [
        [["good movie", "pos"], ["bad movie", "neg"], ["fine film", "pos"], ["dull", "neg"]],
        [["a", 10], ["b", 9], ["c", "9.0"], ["d", 10]],
        [["a", "True"], ["b", "false"], ["c", "FALSE"]],
    ],
)
def test_binary_files_load_identically_with_multiclass(tmp_path, rows):
    path = write_csv(tmp_path / "bin.csv", rows)
    plain = load_dataset(path)
    multi = load_dataset(path, multiclass=True)
    assert set(multi.labels.tolist()) == {0, 1}
    assert multi.labels.tolist() == plain.labels.tolist()
    assert multi.classes == plain.classes and multi.n_classes == plain.n_classes == 2
    assert multi.class_counts == plain.class_counts
    n_pos = int(plain.labels.sum())
    assert plain.class_counts == (plain.n_rows - n_pos, n_pos)
    assert multi.content_hash == plain.content_hash
    assert multi == plain


def test_bundled_sst2_with_multiclass_is_the_binary_dataset():
    multi = load_dataset("92_glue_sst2", multiclass=True)
    plain = load_dataset("92_glue_sst2")
    assert multi.n_classes == 2 and multi.classes == (0, 1)
    assert multi.class_counts == plain.class_counts == (2500, 2500)
    assert np.array_equal(multi.labels, plain.labels)
    assert multi.content_hash == plain.content_hash


# ---------------------------------------------------------------------------------------------
# encode_labels, Dataset and content_hash_of


def test_encode_labels_multiclass_and_binary_agree_on_two_classes():
    values = ["b", "a", "b", "a", "a"]
    assert encode_labels(values)[0].tolist() == encode_labels(values, multiclass=True)[0].tolist()
    assert encode_labels(values)[1] == encode_labels(values, multiclass=True)[1] == ("a", "b")
    labels, classes = encode_labels(["z", "y", "x", "y"], multiclass=True)
    assert labels.tolist() == [2, 1, 0, 1] and classes == ("x", "y", "z")
    # bool words stay bools; at most two classes
    labels, classes = encode_labels(["TRUE", "false"], multiclass=True)
    assert labels.tolist() == [1, 0] and classes == (False, True)


def test_encode_labels_multiclass_errors_name_the_source():
    with pytest.raises(DatasetError, match=r"^my\.csv: expected at least two classes.*found 1"):
        encode_labels(["only", "only"], source="my.csv", multiclass=True)
    with pytest.raises(DatasetError, match=r"^my\.csv: expected at least two classes.*found none"):
        encode_labels([], source="my.csv", multiclass=True)
    many = [str(i) for i in range(12)]
    with pytest.raises(DatasetError, match=r"found 12: .*\(2 more\)"):
        encode_labels(many, source="my.csv")
    labels, classes = encode_labels(many, multiclass=True)
    assert labels.tolist() == list(range(12)) and classes == tuple(range(12))


def test_class_counts_include_absent_classes_and_labels_are_checked(tmp_path):
    ds = Dataset("x", "user", tmp_path, ("a", "b"), np.array([0, 2]), ("p", "q", "r"), "h")
    assert ds.n_classes == 3 and ds.class_counts == (1, 0, 1)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        Dataset("x", "user", tmp_path, ("a", "b"), np.array([0, 2]), (0, 1), "h")
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        Dataset("x", "user", tmp_path, ("a",), np.array([-1]), ("p", "q", "r"), "h")


def test_content_hash_separates_multiclass_labels():
    prompts = ["a", "b", "c"]
    h01 = content_hash_of(prompts, np.array([0, 1, 1]))
    h02 = content_hash_of(prompts, np.array([0, 1, 2]))
    h12 = content_hash_of(prompts, np.array([0, 2, 1]))
    assert len({h01, h02, h12}) == 3
    # multi-digit labels cannot run together: [1, 10] vs [11, 0]
    assert content_hash_of(["a", "b"], np.array([1, 10])) != content_hash_of(
        ["a", "b"], np.array([11, 0])
    )
