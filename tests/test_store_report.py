"""Results store (atomic unit files, damaged-file recovery) and the console summary."""

from __future__ import annotations

import pandas as pd

from saelab.pipeline.store import RESULT_COLUMNS, ResultStore, normalise_rows
from saelab.report import summary_frame


def _rows(dataset, layer):
    base = {"dataset": dataset, "setting": "normal", "layer": layer, "n_train": 10, "n_test": 5}
    return [
        {**base, "method": "logreg", "test_auc": 0.9},
        {**base, "method": "sae", "sae": "s", "k": 16, "test_auc": 0.8, "latents": [3, 1]},
        {**base, "method": "sae", "sae": "s", "k": 2, "test_auc": 0.6, "latents": [3, 1]},
    ]


def test_store_roundtrip_and_damage(tmp_path):
    store = ResultStore(tmp_path)
    assert not store.has("a")
    store.put("a", _rows("d1", 1))
    skip = {"dataset": "d2", "setting": "scarcity", "setting_value": 4.0, "reason": "one class"}
    store.put("b", _rows("d2", 1), [skip])
    assert store.has("a") and store.has("b")
    got, skipped = store.collect(["b", "a", "missing"])
    assert skipped == [skip]  # a finished unit keeps the splits it skipped
    assert list(got.columns) == list(RESULT_COLUMNS)
    assert got.dataset.tolist() == ["d2"] * 3 + ["d1"] * 3
    assert got.latents.iloc[1] == "[3, 1]"
    (tmp_path / "units" / "a.parquet").write_bytes(b"garbage")
    assert not store.has("a")  # damaged -> treated as missing and removed
    assert not (tmp_path / "units" / "a.parquet").exists()
    assert not list((tmp_path / "units").glob("*.tmp"))
    pq, csv = store.write_tables(got)
    assert len(pd.read_parquet(pq)) == 6 and len(pd.read_csv(csv)) == 6


def test_normalise_keeps_extra_columns_after_standard_ones():
    frame = normalise_rows([{"dataset": "x", "my_metric": 1.0}])
    assert list(frame.columns) == [*RESULT_COLUMNS, "my_metric"]


def test_summary_keeps_sae_variants_apart():
    rows = []
    for variant, auc in (("l1", 0.8), ("l2", 0.7), ("l1+bin", 0.6), ("l1+max", 0.5)):
        for r in _rows("d1", 1)[1:2]:
            rows.append({**r, "variant": variant, "test_auc": auc})
    table = summary_frame(normalise_rows(rows))
    got = {p: table.loc[("normal", p), "layer 1"] for _, p in table.index}
    assert got == {
        "sae s l1 k=16": 0.8,
        "sae s l1+bin k=16": 0.6,
        "sae s l1+max k=16": 0.5,
        "sae s l2 k=16": 0.7,
    }  # not one average of the four


def test_summary_means_per_layer_and_k_order():
    rows = _rows("d1", 1) + _rows("d2", 1) + _rows("d1", 3)
    rows[3]["test_auc"] = 0.7  # d2 logreg
    table = summary_frame(normalise_rows(rows))
    probes = [p for _, p in table.index]
    assert probes == ["logreg", "sae s k=2", "sae s k=16"]
    assert abs(table.loc[("normal", "logreg"), "layer 1"] - 0.8) < 1e-12
    assert abs(table.loc[("normal", "logreg"), "layer 3"] - 0.9) < 1e-12
    assert table.loc[("normal", "logreg"), "datasets"] == 2
