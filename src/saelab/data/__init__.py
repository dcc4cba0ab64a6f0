"""saelab.data: the paper's bundled datasets, user dataset files, validation and splits.

- :mod:`~saelab.data.registry`: the 113 binary and 8 OOD datasets shipped with ``sae-probes``.
- :mod:`~saelab.data.datasets`: load and validate a bundled set or a CSV/zstd CSV/Parquet file.
- :mod:`~saelab.data.splits`: the paper's train/test draws for the five settings (normal, scarcity,
  class imbalance, label noise, OOD).
"""

from saelab.data.datasets import (
    SUPPORTED_SUFFIXES,
    Dataset,
    content_hash_of,
    count_file_rows,
    encode_labels,
    load_dataset,
)
from saelab.data.registry import (
    FAMILY_NUMBERS,
    DatasetInfo,
    bundled_data_dir,
    count_rows,
    find_bundled,
    list_bundled,
)
from saelab.data.splits import (
    BUNDLED_OOD_CLASS_MAPS,
    IMBALANCE_FRACTIONS,
    LABEL_NOISE_RATIOS,
    OOD_PAIRS,
    SCARCITY_SIZES,
    Split,
    flip_labels,
    imbalance_sizes,
    imbalance_splits,
    label_noise_splits,
    load_ood_pair,
    match_ood_classes,
    normal_split,
    ood_split,
    scarcity_splits,
    stratified_split,
    train_test_indices,
)

__all__ = [
    "BUNDLED_OOD_CLASS_MAPS",
    "FAMILY_NUMBERS",
    "IMBALANCE_FRACTIONS",
    "LABEL_NOISE_RATIOS",
    "OOD_PAIRS",
    "SCARCITY_SIZES",
    "SUPPORTED_SUFFIXES",
    "Dataset",
    "DatasetInfo",
    "Split",
    "bundled_data_dir",
    "content_hash_of",
    "count_file_rows",
    "count_rows",
    "encode_labels",
    "find_bundled",
    "flip_labels",
    "imbalance_sizes",
    "imbalance_splits",
    "label_noise_splits",
    "list_bundled",
    "load_dataset",
    "load_ood_pair",
    "match_ood_classes",
    "normal_split",
    "ood_split",
    "scarcity_splits",
    "stratified_split",
    "train_test_indices",
]
