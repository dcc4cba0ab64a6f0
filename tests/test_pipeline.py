"""The whole pipeline on the real MiniLM and 2 real datasets at small sizes; resume and determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from saelab.config import RunConfig
from saelab.pipeline.run import run_pipeline
from saelab.pipeline.store import RESULT_COLUMNS

pytestmark = pytest.mark.integration

DATASETS = ["5_hist_fig_ismale", "114_nyc_borough_Manhattan"]


def _config(cache_dir, **over) -> RunConfig:
    data = {
        "name": "it",
        "seed": 42,
        "cache_dir": str(cache_dir),
        "model": {"name": "all-MiniLM-L6-v2", "batch_size": 64, "max_length": 64},
        "layers": [1, 3],
        "data": {"datasets": DATASETS, "max_train": 160, "max_test": 120},
        "saes": [
            {
                "id": "tiny-topk",
                "train": {
                    "expansion_factor": 2,
                    "k": 8,
                    "epochs": 2,
                    "batch_size": 512,
                    "max_tokens": 20000,
                },
            }
        ],
        "probes": {"ks": [1, 4, 16]},
        "executor": "serial",
    }
    data.update(over)
    return RunConfig.model_validate(data)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipeline")
    cfg = _config(base / "cache")
    outcome = run_pipeline(cfg, base / "run", progress=False)
    return cfg, base, outcome


def test_results_table(first_run):
    _cfg, base, _outcome = first_run
    res = pd.read_parquet(base / "run" / "results.parquet")
    assert list(res.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    # 2 datasets x 2 layers x (1 baseline + 3 ks)
    assert len(res) == 16
    assert set(res.dataset) == set(DATASETS)
    assert set(res.layer) == {1, 3}
    assert set(res.hook_name) == {"blocks.1.hook_resid_post", "blocks.3.hook_resid_post"}
    assert (res.pooling == "mean").all()  # MiniLM is an encoder
    base_rows = res[res.method == "logreg"]
    sae_rows = res[res.method == "sae"]
    assert len(base_rows) == 4 and base_rows.k.isna().all() and base_rows.sae.isna().all()
    assert (
        sorted(sae_rows.k.unique().tolist()) == [1, 4, 16] and (sae_rows.sae == "tiny-topk").all()
    )
    assert (res.n_train == 160).all() and (res.n_test == 120).all()
    assert res.test_auc.between(0, 1).all() and res.val_auc.between(0, 1).all()
    # real signal: the baseline separates male/female historical figures from MiniLM activations
    assert base_rows[base_rows.dataset == "5_hist_fig_ismale"].test_auc.min() > 0.75
    # latent ids recorded for SAE rows, k of them
    for _, row in sae_rows.iterrows():
        assert len(json.loads(row.latents)) == row.k
    assert res.C.notna().all() and (res.seconds >= 0).all()
    csv = pd.read_csv(base / "run" / "results.csv")
    assert len(csv) == len(res)
    meta = json.loads((base / "run" / "run.json").read_text())
    assert meta["status"] == "complete" and meta["config"]["name"] == "it"
    assert "torch" in meta["versions"] and "activations" in meta["stage_seconds"]
    assert set(meta["sae_training"]) == {"tiny-topk@L1", "tiny-topk@L3"}


def test_rerun_reuses_everything(first_run):
    cfg, base, outcome = first_run
    again = run_pipeline(cfg, base / "run", progress=False)
    assert again.n_units_done_before == again.n_units == 8
    cols = ["dataset", "layer", "method", "k", "test_auc", "val_auc", "C"]
    pd.testing.assert_frame_equal(again.results[cols], outcome.results[cols])
    assert "saes" not in again.timings or again.timings["saes"] < 5


def test_interrupted_run_resumes_to_the_same_numbers(first_run):
    cfg, base, outcome = first_run
    units = sorted((base / "run" / "units").glob("*.parquet"))
    units[0].unlink()
    units[1].write_bytes(b"not parquet")  # a damaged result file is redone, not trusted
    again = run_pipeline(cfg, base / "run", progress=False)
    assert again.n_units_done_before == 6
    cols = ["dataset", "layer", "method", "k", "test_auc", "val_auc", "C", "latents"]
    a = again.results[cols].sort_values(cols[:4]).reset_index(drop=True)
    b = outcome.results[cols].sort_values(cols[:4]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_same_seed_same_results_in_a_fresh_folder(first_run, tmp_path):
    cfg, _base, outcome = first_run
    fresh = run_pipeline(cfg, tmp_path / "run2", progress=False)  # cache reused, probes refit
    assert fresh.n_units_done_before == 0
    np.testing.assert_array_equal(
        fresh.results.test_auc.to_numpy(), outcome.results.test_auc.to_numpy()
    )


def test_bad_layer_is_a_config_error(first_run, tmp_path):
    from saelab.errors import ConfigError

    _cfg, base, _ = first_run
    bad = _config(base / "cache", layers=[9])
    with pytest.raises(ConfigError, match=r"blocks 0\.\.5"):
        run_pipeline(bad, tmp_path / "r", progress=False)
