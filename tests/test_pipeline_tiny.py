"""The pipeline on a tiny random decoder (last-token pooling), user CSV files, trained and loaded SAEs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from saelab.config import RunConfig
from saelab.pipeline import executors
from saelab.pipeline.run import run_pipeline
from saelab.sae import SAEConfig, build_sae, save_sae
from tiny_models import HIDDEN, build_tiny_model, write_word_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pipeline")
    model = build_tiny_model(root / "gpt2", "gpt2")
    write_word_dataset(root / "first.csv", 300, seed=1)
    write_word_dataset(root / "second.csv", 260, seed=2)
    cfg = SAEConfig(
        d_in=HIDDEN,
        d_sae=4 * HIDDEN,
        architecture="standard",
        metadata={"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny"},
    )
    save_sae(build_sae(cfg, seed=3), root / "loaded_sae")
    return root, model


def _config(root, model) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "tiny",
            "cache_dir": str(root / "cache"),
            "model": {"name": str(model), "batch_size": 16},
            "layers": [1, 2],
            "data": {
                "datasets": [str(root / "first.csv"), str(root / "second.csv")],
                "max_train": 128,
            },
            "saes": [
                {
                    "id": "trained",
                    "train": {"expansion_factor": 2, "k": 4, "epochs": 2, "batch_size": 256},
                },
                {"id": "loaded", "path": str(root / "loaded_sae")},
            ],
            "probes": {"ks": [1, 2, 8]},
            "executor": "serial",
        }
    )


def test_decoder_user_files_trained_and_loaded_saes(setup):
    root, model = setup
    outcome = run_pipeline(_config(root, model), root / "run", progress=False)
    res = outcome.results
    assert (res.pooling == "last").all()  # GPT-2 is a decoder: the paper's last-token pooling
    assert set(res.dataset) == {"first", "second"}
    assert (res.family == "user").all()
    # normal split: n_train = min(N - 100, max_train), n_test = N - n_train - 1
    sizes = res.groupby("dataset")[["n_train", "n_test"]].first()
    assert sizes.loc["first"].tolist() == [128, 171] and sizes.loc["second"].tolist() == [128, 131]
    # the loaded SAE reads layer 1 only (its hook_name); the trained one every layer
    per_sae = res[res.method == "sae"].groupby("sae").layer.unique().map(sorted).to_dict()
    assert per_sae == {"loaded": [1], "trained": [1, 2]}
    # 2 datasets x (2 layers x (logreg + trained x 3 k) + 1 layer x loaded x 3 k)
    assert len(res) == 2 * (2 * (1 + 3) + 3)
    # the last word decides the label, so the last-token baseline finds it even in a random model
    assert res[res.method == "logreg"].test_auc.min() > 0.9


def test_crash_mid_run_keeps_finished_units(setup, monkeypatch, tmp_path):
    root, model = setup
    cfg = _config(root, model)
    calls = {"n": 0}
    real = executors.run_unit_or_skip

    def flaky(spec, inputs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the 4th unit
        return real(spec, inputs)

    monkeypatch.setattr(executors, "run_unit_or_skip", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert len(list((tmp_path / "run" / "units").glob("*.parquet"))) == 3
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["error"].startswith("KeyboardInterrupt")
    monkeypatch.setattr(executors, "run_unit_or_skip", real)
    resumed = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert resumed.n_units_done_before == 3
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "complete" and "error" not in meta
    assert [i["status"] for i in meta["invocations"]] == ["interrupted", "complete"]
    assert meta["invocations"][1]["units_done_before"] == 3
    full = run_pipeline(cfg, tmp_path / "fresh", progress=False)
    cols = ["dataset", "layer", "method", "sae", "k", "test_auc", "val_auc", "C"]
    pd.testing.assert_frame_equal(resumed.results[cols], full.results[cols])


def test_two_files_with_one_name_are_refused(setup, tmp_path):
    from saelab.errors import ConfigError

    root, model = setup
    (tmp_path / "other").mkdir()
    write_word_dataset(tmp_path / "other" / "first.csv", 200, seed=5)
    cfg = _config(root, model).model_copy(deep=True)
    cfg.data.datasets = [str(root / "first.csv"), str(tmp_path / "other" / "first.csv")]
    with pytest.raises(ConfigError, match="two datasets are named 'first'"):
        run_pipeline(cfg, tmp_path / "run", progress=False)


def test_five_regimes_encode_once_and_skip_what_cannot_be_done(setup, monkeypatch, tmp_path):
    root, model = setup
    write_word_dataset(root / "first_shifted.csv", 120, seed=7)
    cfg = _config(root, model).model_copy(deep=True)
    data = cfg.model_dump(mode="json")
    data["layers"] = [1]
    data["saes"] = [data["saes"][0]]
    data["settings"] = ["ood", "label_noise", "normal", "scarcity", "imbalance"]
    data["probes"] = {
        "baselines": ["logreg", "knn"],
        "ks": [2, 8],
        "regime_ks": [8],
        "sae_variants": [
            {"penalty": "l1"},
            {"penalty": "l2", "binarize": True},
            {"penalty": "l2", "code_pooling": "max"},
        ],
    }
    data["regimes"] = {
        "scarcity": {"values": [4, 10, 200]},  # 200 > N - 100 for the 260-row set
        "imbalance": {"values": [0.2, 0.5]},
        "label_noise": {"values": [0.0, 0.3], "baselines": ["logreg"]},
        "ood": {
            "pairs": [
                {"dataset": "first", "ood": str(root / "first_shifted.csv")},
                {"dataset": "second", "ood": str(root / "missing.csv")},
            ]
        },
    }
    cfg = RunConfig.model_validate(data)
    import saelab.sae.encode as encode_module

    calls: list[tuple[str, int]] = []
    real_encode = encode_module.encode_rows

    def counting(sae, acts, pooling, mode="pool_codes", *args, **kw):
        calls.append((mode, acts.n_rows))
        return real_encode(sae, acts, pooling, mode, *args, **kw)

    monkeypatch.setattr(encode_module, "encode_rows", counting)
    out = run_pipeline(cfg, tmp_path / "run", progress=False)
    res = out.results
    assert list(dict.fromkeys(res.setting)) == [
        "normal",
        "scarcity",
        "imbalance",
        "label_noise",
        "ood",
    ]
    # codes: once per (dataset, code pooling) for all settings, plus once for the OOD set
    assert sorted(calls) == sorted(
        [("code_pooled", n) for n in (300, 260)]
        + [("max_codes", n) for n in (300, 260)]
        + [("code_pooled", 120)]
    )
    # what could not be done is recorded, and the run went on
    skipped = {(s.dataset, s.setting, s.setting_value) for s in out.skipped}
    assert skipped == {("second", "scarcity", 200.0), ("second", "ood", None)}
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(meta["skipped"]) == 2 and "missing.csv" in json.dumps(meta["skipped"])
    assert len(pd.read_csv(tmp_path / "run" / "skipped.csv")) == 2
    sc = res[(res.setting == "scarcity") & (res.method == "logreg")]
    assert sorted(sc[sc.dataset == "first"].n_train) == [4, 10, 200]
    # variants: all three in normal, the primary (l1) elsewhere; baselines per setting
    normal_variants = set(res[(res.setting == "normal") & (res.method == "sae")].variant)
    assert normal_variants == {"l1", "l2+bin", "l2+max"}
    assert set(res[(res.setting != "normal") & (res.method == "sae")].variant) == {"l1"}
    assert set(res[res.setting == "label_noise"].method) == {"logreg", "sae"}
    assert set(res[res.setting == "imbalance"].method) == {"logreg", "knn", "sae"}
    # label noise at r = 0 is the normal setting exactly; noise hurts
    ln = res[(res.setting == "label_noise") & (res.method == "logreg")].set_index(
        ["dataset", "setting_value"]
    )
    normal = res[(res.setting == "normal") & (res.method == "logreg")].set_index("dataset")
    for ds in ("first", "second"):
        assert ln.loc[(ds, 0.0), "test_auc"] == normal.loc[ds, "test_auc"]
    # OOD: trained on the ID set, tested on every row of the shifted file
    ood = res[res.setting == "ood"]
    assert set(ood.dataset) == {"first"} and (ood.n_test == 120).all()
    assert (ood.test_source == "first_shifted").all()
    # imbalance: the same training size for every fraction
    imb = res[(res.setting == "imbalance") & (res.method == "logreg")]
    assert imb.groupby("dataset").n_train.nunique().max() == 1
    # everything is resumable: a rerun does nothing new
    again = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert again.n_units_done_before == again.n_units == out.n_units
    pd.testing.assert_frame_equal(again.results, res)


def test_unit_keys_cover_the_engine_constants(setup, monkeypatch, tmp_path):
    import saelab.probes.protocol as protocol
    import saelab.probes.solvers as solvers

    root, model = setup
    cfg = _config(root, model)
    first = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert run_pipeline(cfg, tmp_path / "run", progress=False).n_units_done_before == first.n_units
    # another C grid: every logistic unit (the logreg baseline, the SAE probes) is recomputed
    monkeypatch.setattr(protocol, "C_GRID", np.logspace(3, -3, 5))
    grid = run_pipeline(cfg, tmp_path / "run", progress=False)
    assert grid.n_units_done_before == 0
    assert set(grid.results.C.dropna()) <= set(np.logspace(3, -3, 5).tolist())
    assert len(grid.results) == len(first.results)  # no rows of the old units mixed in
    # another solver tolerance: recomputed again
    monkeypatch.setattr(solvers, "DEFAULT_TOL", 1e-5)
    assert run_pipeline(cfg, tmp_path / "run", progress=False).n_units_done_before == 0
    # a library version is part of every unit key too
    spec = json.loads(first.results.unit_config.iloc[0])
    assert "torch" in json.dumps(spec["engine"])
