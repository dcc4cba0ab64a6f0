"""Load a text dataset (bundled or a user file), validate it and encode its labels to 0/1.

A dataset file has a ``prompt`` column (text, used as-is) and a ``target`` column (two classes;
with ``multiclass=True`` two or more, encoded to ``0..C-1``); other columns are ignored. Accepted files: ``.csv``, zstd-compressed CSV (``.csv.zst``,
``.csv.zstd``) and ``.parquet``. The first ``max_rows`` rows are used (the paper's ``MAX_AMT``,
spec §1.6). Every problem raises :class:`saelab.errors.DatasetError` naming the file and the
1-based data row (and, for CSV, the line of the file where that row starts).

CSV files are parsed with Python's :mod:`csv` module in strict mode, every field kept as a string
(no NaN guessing), so an empty prompt stays an empty string and line numbers are exact even when
quoted prompts span several lines. On the 121 bundled files this gives exactly the strings of
``pandas.read_csv(dtype=str, keep_default_na=False)``. Blank lines are skipped, as pandas does.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from saelab.errors import ConfigError, DatasetError
from saelab.io import hash_texts, stable_hash

logger = logging.getLogger(__name__)

#: File suffixes load_dataset accepts (matched case-insensitively on the end of the file name).
CSV_SUFFIXES = (".csv",)
ZSTD_CSV_SUFFIXES = (".csv.zst", ".csv.zstd")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = ZSTD_CSV_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES

#: Target cells that mean "no value" (pandas' usual NaN spellings, minus "None", which can be a
#: real class name). Whitespace-only cells are missing too.
MISSING_TARGET_TOKENS = frozenset(
    {"", "nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "<NA>", "null", "NULL"}
)

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BOOL_WORDS = {"false": False, "true": True}
_MAX_FIELD_CHARS = 2**31 - 1  # csv's default cap is 128 KiB per field; prompts may be longer


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated dataset: binary unless loaded with ``multiclass=True``.

    Attributes:
        name: numbered tag for bundled sets (``"92_glue_sst2"``), the file stem for user files.
        family: bundled family (spec §1.2), ``"user"`` for user files, or what the caller passed.
        path: the file the rows were read from.
        prompts: ``N`` texts, used as-is (no template).
        labels: ``[N]`` int64 of 0/1 (``0..C-1`` for a multiclass load), read-only;
            ``labels[i]`` is the class of ``prompts[i]``.
        classes: the raw target values for label 0 and label 1, or for labels ``0..C-1`` of a
            multiclass load (see :func:`encode_labels`); ``classes[k]`` is the value of label ``k``.
        content_hash: SHA-256 hex digest of the prompts and labels (see :func:`content_hash_of`).
    """

    name: str
    family: str
    path: Path
    prompts: tuple[str, ...]
    labels: np.ndarray = field(repr=False)
    classes: tuple[Any, ...]
    content_hash: str

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64, copy=True)
        if labels.shape != (len(self.prompts),):
            raise ValueError(
                f"labels must have shape ({len(self.prompts)},), got {tuple(labels.shape)}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in 0..{len(self.classes) - 1} (one per class in classes), "
                f"got values from {int(labels.min())} to {int(labels.max())}"
            )
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    @property
    def n_rows(self) -> int:
        """Number of rows ``N``."""
        return len(self.prompts)

    @property
    def n_classes(self) -> int:
        """Number of classes ``C`` (``len(classes)``; 2 for a binary dataset)."""
        return len(self.classes)

    @property
    def class_counts(self) -> tuple[int, ...]:
        """Rows per label: ``(count of label 0, ..., count of label C-1)``.

        ``np.bincount(labels, minlength=C)``; for a binary dataset ``(N - n_pos, n_pos)``.
        """
        counts = np.bincount(self.labels, minlength=self.n_classes)
        return tuple(int(c) for c in counts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Dataset):
            return NotImplemented
        return (self.name, self.family, self.path, self.classes, self.content_hash) == (
            other.name,
            other.family,
            other.path,
            other.classes,
            other.content_hash,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.content_hash))


def content_hash_of(prompts: Sequence[str], labels: np.ndarray) -> str:
    """SHA-256 over the prompts (length-prefixed, :func:`saelab.io.hash_texts`) and the labels.

    0/1 labels: ``stable_hash({"format": 1, "prompts": hash_texts(prompts),
    "labels": hash_texts(["0110..."])}, 64)``. Labels with a value above 1 (multiclass) are
    written comma-separated (``"0,2,10,1"``) under ``"format": 2``, so that label 2 is not
    hashed as label 1 and multi-digit labels cannot run together.
    """
    values = [int(v) for v in np.asarray(labels).tolist()]
    if all(v in (0, 1) for v in values):
        label_text = "".join("1" if v else "0" for v in values)
        fmt = 1
    else:
        label_text = ",".join(str(v) for v in values)
        fmt = 2
    parts = {
        "format": fmt,
        "prompts": hash_texts(list(prompts)),
        "labels": hash_texts([label_text]),
    }
    return stable_hash(parts, length=64)


# ---------------------------------------------------------------------------------------------
# Label encoding


def _is_missing_target(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str):
        return value.strip() in MISSING_TARGET_TOKENS
    return False


def _is_number(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.integer, np.floating)):
        return math.isfinite(value)
    return isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()) is not None


def _class_key(values: list[Any]) -> tuple[str, list[Any]]:
    """The sort kind and one sortable key per value (see :func:`encode_labels`)."""
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return "bool", [bool(v) for v in values]
    if all(_is_number(v) for v in values):
        return "numeric", [float(v) for v in values]
    if all(
        isinstance(v, (bool, np.bool_)) or (isinstance(v, str) and v.strip().lower() in _BOOL_WORDS)
        for v in values
    ):
        return "bool", [
            v if isinstance(v, bool) else _BOOL_WORDS[v.strip().lower()] for v in values
        ]
    return "string", [str(v) for v in values]


def _class_value(kind: str, key: Any, raw_example: Any) -> Any:
    """The value reported in ``Dataset.classes`` for one class key (``raw_example`` has it)."""
    if kind == "numeric":
        return int(key) if float(key).is_integer() else float(key)
    if kind == "bool":
        return bool(key)
    return str(raw_example)


def encode_labels(
    values: Sequence[Any], source: str = "target", multiclass: bool = False
) -> tuple[np.ndarray, tuple[Any, ...]]:
    """Map exactly two distinct target values to int64 labels 0 and 1 by sorted order.

    With ``multiclass=True``, map ``C >= 2`` distinct values to labels ``0..C-1`` by the same
    sorted order (sklearn's ``LabelEncoder`` again: label ``k`` is the ``k``-th smallest class);
    for two classes the result is the binary one.

    This reproduces sklearn's ``LabelEncoder`` on pandas-parsed targets, which the paper uses
    (spec §1.1: "class 1 is the larger value"):

    - numeric values (numbers, or strings that all parse as decimal numbers) sort numerically,
      so ``"9" -> 0, "10" -> 1`` and ``"1"`` equals ``"1.0"``; classes are ints when integral;
    - booleans (or strings that are all true/false in any letter case) sort ``False -> 0``;
    - anything else sorts as strings (code point order), e.g. the qnli OOD targets
      ``"1" -> 0, "not_entailment" -> 1`` (spec §1.4).

    Args:
        values: ``N`` raw target values, none missing.
        source: what to name in error messages (file and column).
        multiclass: accept two or more classes instead of exactly two.

    Returns:
        ``labels`` ``[N]`` int64 of 0/1 and ``classes`` (the value of class 0, of class 1); with
        ``multiclass`` labels ``0..C-1`` and ``classes`` the ``C`` values, label ``k`` first.

    Raises:
        DatasetError: not exactly two classes (``multiclass``: fewer than two), naming ``source``
            and listing the classes found with their row counts.
    """
    raw = list(values)
    kind, keys = _class_key(raw)
    counts = Counter(keys)
    examples: dict[Any, Any] = {}  # class key -> its first raw value
    for key, value in zip(keys, raw, strict=True):
        examples.setdefault(key, value)
    if len(counts) < 2 or (len(counts) != 2 and not multiclass):
        listed = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
        shown = ", ".join(f"{examples[k]!r} ({n} rows)" for k, n in listed[:10])
        more = f", ... ({len(listed) - 10} more)" if len(listed) > 10 else ""
        found = f"found {len(counts)}: {shown}{more}" if counts else "found none"
        expected = "at least two classes" if multiclass else "exactly two classes"
        raise DatasetError(f"{source}: expected {expected} in column 'target', {found}")
    ordered = sorted(counts)
    index = {key: i for i, key in enumerate(ordered)}
    labels = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    classes = tuple(_class_value(kind, key, examples[key]) for key in ordered)
    return labels, classes


# ---------------------------------------------------------------------------------------------
# File reading


@dataclass
class _Table:
    """The two columns of interest from the first ``max_rows`` data rows of a file."""

    prompts: list[Any]
    targets: list[Any]
    lines: list[int] | None  # CSV only: the file line where each data row starts (1-based)
    short_rows: set[int]  # CSV rows (0-based) that lack the prompt or target field


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(ZSTD_CSV_SUFFIXES):
        return "zstd_csv"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DatasetError(
        f"{path}: unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _dataset_stem(path: Path) -> str:
    name = path.name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _where(path: Path, row: int, lines: list[int] | None) -> str:
    """``"file: row 17 (line 18 of the file)"`` for 0-based data row ``row``."""
    if lines is None:
        return f"{path}: row {row + 1}"
    return f"{path}: row {row + 1} (line {lines[row]} of the file)"


def _read_bytes(path: Path, kind: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            if kind != "zstd_csv":
                return fh.read()
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            return reader.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc})") from exc
    except zstandard.ZstdError as exc:
        raise DatasetError(
            f"{path}: not a valid zstd-compressed file ({exc}); expected a CSV compressed with zstd"
        ) from exc


def _decode(path: Path, raw: bytes, kind: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _utf8_error(path, raw, kind, exc) from exc


_ESCAPED_BYTE_RE = re.compile("[\udc80-\udcff]")


def _utf8_error(path: Path, raw: bytes, kind: str, exc: UnicodeDecodeError) -> DatasetError:
    """Name the byte, line and (when the CSV parses) the data row and column of a bad byte."""
    line = raw.count(b"\n", 0, exc.start) + 1
    of = "of the decompressed text" if kind == "zstd_csv" else "of the file"
    where = f"line {line}"
    # Re-decode with undecodable bytes kept as lone surrogates, then find the first record that
    # holds one: exact row numbers even when quoted prompts span several lines.
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    try:
        header: list[str] = []
        for row, (start, fields) in enumerate(_csv_records(path, text)):
            if row == 0:
                header = fields
            bad = [i for i, f in enumerate(fields) if _ESCAPED_BYTE_RE.search(f)]
            if bad:
                column = header[bad[0]].strip() if bad[0] < len(header) else f"#{bad[0] + 1}"
                record = "the header row" if row == 0 else f"row {row}"
                where = f"{record} (line {start} of the file), column {column!r}"
                break
    except DatasetError:
        pass  # malformed CSV as well: the byte position and line still locate the problem
    return DatasetError(
        f"{path}: not valid UTF-8 at {where}: byte {exc.start} {of} is "
        f"0x{raw[exc.start]:02x}; save the file as UTF-8"
    )


def _csv_records(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(start_line, fields)`` for each non-blank CSV record of ``text``."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    old_limit = csv.field_size_limit(_MAX_FIELD_CHARS)
    try:
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DatasetError(
                    f"{path}: malformed CSV in the record starting at line {start} "
                    f"(error at line {reader.line_num}: {exc}); check the quoting"
                ) from exc
            if fields:  # blank lines are skipped, as pandas.read_csv does
                yield start, fields
    finally:
        csv.field_size_limit(old_limit)


def _missing_column_error(path: Path, columns: list[str]) -> DatasetError:
    missing = [c for c in ("prompt", "target") if c not in columns]
    return DatasetError(
        f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
        f"expected columns 'prompt' and 'target', found {columns}"
    )


def _read_csv_table(path: Path, text: str, max_rows: int) -> _Table:
    records = _csv_records(path, text)
    first = next(records, None)
    if first is None:
        raise DatasetError(f"{path}: the file is empty; expected a header row 'prompt,target'")
    header = [name.strip() for name in first[1]]
    if "prompt" not in header or "target" not in header:
        raise _missing_column_error(path, header)
    i_prompt, i_target = header.index("prompt"), header.index("target")
    prompts: list[Any] = []
    targets: list[Any] = []
    lines: list[int] = []
    short: set[int] = set()
    for line, fields in records:
        if len(prompts) >= max_rows:
            break
        row = len(prompts)
        lines.append(line)
        if len(fields) > len(header):
            raise DatasetError(
                f"{_where(path, row, lines)} has {len(fields)} fields but the header has "
                f"{len(header)}; quote fields that contain commas"
            )
        if len(fields) <= max(i_prompt, i_target):
            short.add(row)
        prompts.append(fields[i_prompt] if i_prompt < len(fields) else None)
        targets.append(fields[i_target] if i_target < len(fields) else None)
    return _Table(prompts, targets, lines, short)


def _read_parquet_table(path: Path, max_rows: int) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
        columns = list(pfile.schema_arrow.names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    if "prompt" not in columns or "target" not in columns:
        raise _missing_column_error(path, columns)
    try:
        table = pfile.read(columns=["prompt", "target"]).slice(0, max_rows)
        data = table.to_pydict()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read columns 'prompt' and 'target' ({exc})") from exc
    return _Table(list(data["prompt"]), list(data["target"]), None, set())


def _read_table(path: Path, max_rows: int) -> _Table:
    kind = _suffix_kind(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    if kind == "parquet":
        return _read_parquet_table(path, max_rows)
    text = _decode(path, _read_bytes(path, kind), kind)
    return _read_csv_table(path, text, max_rows)


def _first_bad(rows: list[int], path: Path, lines: list[int] | None, problem: str) -> str:
    others = f" ({len(rows)} rows have this problem; the first is shown)" if len(rows) > 1 else ""
    return f"{_where(path, rows[0], lines)}: {problem}{others}"


def _validate(path: Path, table: _Table, multiclass: bool = False) -> None:
    """Raise DatasetError for the first bad prompt, then the first missing target."""
    n = len(table.prompts)
    if n == 0:
        raise DatasetError(f"{path}: no data rows; expected a header and at least one row")
    non_string = [i for i, p in enumerate(table.prompts) if not isinstance(p, str)]
    if non_string:
        i = non_string[0]
        value = table.prompts[i]
        if i in table.short_rows:
            what = "prompt is missing (the row has fewer fields than the header)"
        elif value is None:
            what = "prompt is null"
        else:
            what = f"prompt is {type(value).__name__} {value!r}"
        raise DatasetError(
            _first_bad(non_string, path, table.lines, f"{what}; expected a non-empty string")
        )
    empty = [i for i, p in enumerate(table.prompts) if not p.strip()]
    if empty:
        raise DatasetError(
            _first_bad(
                empty,
                path,
                table.lines,
                f"prompt is empty or whitespace-only ({table.prompts[empty[0]]!r}); "
                "expected a non-empty string",
            )
        )
    missing = [i for i, t in enumerate(table.targets) if _is_missing_target(t)]
    if missing:
        value = table.targets[missing[0]]
        what = (
            "target is missing (the row has fewer fields than the header)"
            if missing[0] in table.short_rows
            else f"target is empty or NaN ({value!r})"
        )
        expected = "a class value" if multiclass else "one of two class values"
        raise DatasetError(_first_bad(missing, path, table.lines, f"{what}; expected {expected}"))


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or "." in Path(spec).name or Path(spec).is_file()


def load_dataset(
    spec: str | Path, max_rows: int = 5000, family: str | None = None, multiclass: bool = False
) -> Dataset:
    """Load a bundled dataset by name or a user file by path, validate it and encode its labels.

    Args:
        spec: a bundled name (``"92_glue_sst2"``, ``"glue_sst2"``, ``"87_glue_cola_OOD"``) or a path
            to a ``.csv``, ``.csv.zst``/``.csv.zstd`` or ``.parquet`` file with columns ``prompt``
            and ``target``. A string with a ``/`` or a ``.`` in it, or naming an existing file, is
            a path.
        max_rows: use the first ``max_rows`` rows (the paper's ``MAX_AMT=5000``, spec §1.6).
        family: family to record; defaults to the bundled family, or ``"user"`` for files.
        multiclass: accept two or more classes (labels ``0..C-1``, ``Dataset.n_classes == C``)
            instead of exactly two; a two-class file loads exactly as without it.

    Returns:
        The :class:`Dataset`, labels encoded by :func:`encode_labels`.

    Raises:
        DatasetError: unknown name, missing/unsupported/corrupt/non-UTF-8 file, missing columns,
            empty or non-string prompt, missing target, not exactly two classes (``multiclass``:
            fewer than two), no rows.
        ConfigError: ``max_rows < 1``.
    """
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ConfigError(f"max_rows must be a positive integer, got {max_rows!r}")
    if isinstance(spec, Path) or _looks_like_path(str(spec)):
        path = Path(spec).expanduser()
        name = _dataset_stem(path)
        family = family or "user"
    else:
        from saelab.data.registry import find_bundled

        info = find_bundled(str(spec))
        path, name, family = info.path, info.name, family or info.family

    table = _read_table(path, int(max_rows))
    _validate(path, table, multiclass=multiclass)
    labels, classes = encode_labels(table.targets, source=str(path), multiclass=multiclass)
    prompts = tuple(table.prompts)
    dataset = Dataset(
        name=name,
        family=family,
        path=path,
        prompts=prompts,
        labels=labels,
        classes=classes,
        content_hash=content_hash_of(prompts, labels),
    )
    logger.debug(
        "loaded %s from %s: %d rows, classes %r, counts %r",
        name,
        path,
        dataset.n_rows,
        classes,
        dataset.class_counts,
    )
    return dataset


@functools.lru_cache(maxsize=256)
def _count_rows_cached(path: Path, size: int, mtime_ns: int) -> int:
    kind = _suffix_kind(path)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable Parquet file ({exc})") from exc
    text = _decode(path, _read_bytes(path, kind), kind)
    return max(0, sum(1 for _ in _csv_records(path, text)) - 1)


def count_file_rows(path: str | Path) -> int:
    """Number of data rows in a dataset file (header and blank lines excluded; no validation)."""
    path = Path(path)
    _suffix_kind(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise DatasetError(f"{path}: file not found ({exc})") from exc
    return _count_rows_cached(path, stat.st_size, stat.st_mtime_ns)
