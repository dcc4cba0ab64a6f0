"""The results store of a run folder: one parquet file per finished unit, merged into tidy tables.

Layout of a run folder::

    run.json            resolved config, versions, stage timings, status
    run.log             the log of every invocation
    units/<key>.parquet rows of one finished probe unit (written atomically; presence = done),
                        with the splits it skipped in the file's metadata
    skipped.csv         what could not be done (dataset, setting, value, layer, reason)
    results.parquet     all rows of the units planned by the current config
    results.csv         the same, as CSV
"""

from __future__ import annotations

import json
import logging
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from saelab.io import atomic_path

log = logging.getLogger(__name__)

_SKIPPED_META = b"saelab.skipped"

#: Columns every result row carries, in order. Later evals add their own columns after these.
RESULT_COLUMNS: tuple[str, ...] = (
    "run",
    "dataset",
    "family",
    "setting",
    "setting_value",
    "test_source",
    "layer",
    "hook_name",
    "pooling",
    "pooling_special_tokens",
    "method",
    "sae",
    "k",
    "penalty",
    "binarize",
    "code_pooling",
    "variant",
    "probe",
    "n_train",
    "n_test",
    "test_auc",
    "test_acc",
    "test_f1",
    "val_auc",
    "converged",
    "C",
    "hyperparams",
    "latents",
    "seed",
    "seconds",
    "unit_seconds",
    "model",
    "model_id",
    "unit_key",
    "config_hash",
    "unit_config",
    "saelab_version",
    "versions",
)

_VERSIONED = (
    "torch",
    "transformers",
    "scikit-learn",
    "numpy",
    "pandas",
    "safetensors",
    "scipy",
    "xgboost",
    "sae-probes",
)


def package_versions() -> dict[str, str]:
    """Versions of Python, saelab and the packages that affect results."""
    out = {"python": platform.python_version()}
    for name in ("saelab", *_VERSIONED):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class ResultStore:
    """Finished units of a run folder, keyed by the hash of everything that affects them."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.units_dir = self.run_dir / "units"
        self.units_dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.units_dir / f"{key}.parquet"

    def has(self, key: str) -> bool:
        """True when the unit's rows are on disk and readable (a damaged file counts as missing)."""
        path = self._path(key)
        if not path.is_file():
            return False
        try:
            pq.read_metadata(path)  # footer only: a truncated or damaged file fails here
        except Exception as exc:
            log.warning("result file %s is unreadable (%s); the unit will be recomputed", path, exc)
            path.unlink(missing_ok=True)
            return False
        return True

    def put(self, key: str, rows: list[dict[str, Any]], skipped: list[dict[str, Any]] = ()) -> None:
        """Write the rows of one finished unit atomically, with the splits it skipped.

        The skipped splits (dicts of ``Skipped``) travel in the parquet file's metadata, so a
        finished unit is one file and a resumed run still reports them.
        """
        frame = normalise_rows(rows)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_SKIPPED_META] = json.dumps(list(skipped)).encode("utf-8")
        with atomic_path(self._path(key)) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)

    def collect(self, keys: list[str]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
        """All rows of the given units, in the given order, and the splits they skipped."""
        frames, skipped = [], []
        for k in keys:
            path = self._path(k)
            if not path.is_file():
                continue
            table = pq.read_table(path)
            frames.append(table.to_pandas())
            raw = (table.schema.metadata or {}).get(_SKIPPED_META)
            if raw:
                skipped.extend(json.loads(raw.decode("utf-8")))
        if not frames:
            return normalise_rows([]), skipped
        with warnings.catch_warnings():
            # all-null columns (e.g. ``sae`` in a baseline unit) take the dtype of the others
            warnings.simplefilter("ignore", FutureWarning)
            return pd.concat(frames, ignore_index=True), skipped

    def write_skipped(self, skipped: list[dict[str, Any]]) -> Path:
        """Write ``skipped.csv``: what the run could not do, one row per item, with the reason."""
        cols = ["dataset", "setting", "setting_value", "layer", "test_source", "reason"]
        frame = pd.DataFrame(skipped, columns=cols)
        path = self.run_dir / "skipped.csv"
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
        return path

    def write_tables(self, frame: pd.DataFrame) -> tuple[Path, Path]:
        """Write ``results.parquet`` and ``results.csv`` atomically."""
        parquet, csv = self.run_dir / "results.parquet", self.run_dir / "results.csv"
        with atomic_path(parquet) as tmp:
            frame.to_parquet(tmp, index=False)
        with atomic_path(csv) as tmp:
            frame.to_csv(tmp, index=False)
        return parquet, csv


def normalise_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame with the standard columns first (missing ones as nulls), extra columns after."""
    frame = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in frame.columns:
            frame[col] = None
    extra = [c for c in frame.columns if c not in RESULT_COLUMNS]
    frame = frame[list(RESULT_COLUMNS) + extra]
    for col in ("latents", "hyperparams", "unit_config", "versions"):
        frame[col] = frame[col].map(
            lambda v: v if v is None or isinstance(v, str) else json.dumps(v, sort_keys=True)
        )
    frame["k"] = frame["k"].astype("Int64")
    frame["setting_value"] = frame["setting_value"].astype("Float64")
    return frame
