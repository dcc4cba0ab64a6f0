"""saelab.data: the paper's bundled datasets, user dataset files, validation and splits.

- :mod:`~saelab.data.registry`: the 113 binary and 8 OOD datasets shipped with ``sae-probes``.
- :mod:`~saelab.data.datasets`: load and validate a bundled set or a CSV/zstd CSV/Parquet file.
- :mod:`~saelab.data.splits`: the paper's train/test draws (normal setting; more regimes later).
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
from saelab.data.splits import Split, normal_split, train_test_indices

__all__ = [
    "FAMILY_NUMBERS",
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
    "list_bundled",
    "load_dataset",
    "normal_split",
    "train_test_indices",
]
