"""The pipeline on a tiny random decoder (last-token pooling), user CSV files, trained and loaded SAEs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from saelab.config import RunConfig
from saelab.pipeline import units as units_module
from saelab.pipeline.run import run_pipeline
from saelab.sae import SAEConfig, build_sae, save_sae
from tiny_models import HIDDEN, WORDS, build_tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_dataset(path, n: int, seed: int) -> None:
    """Sentences of random words; the label is decided by the last word (first or second half of WORDS)."""
    rng = np.random.default_rng(seed)
    half = len(WORDS) // 2
    rows = []
    for i in range(n):
        label = i % 2
        body = rng.choice(WORDS, size=rng.integers(2, 7)).tolist()
        last = rng.choice(WORDS[half:] if label else WORDS[:half])
        rows.append({"prompt": " ".join([*body, last]), "target": "yes" if label else "no"})
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pipeline")
    model = build_tiny_model(root / "gpt2", "gpt2")
    _write_dataset(root / "first.csv", 300, seed=1)
    _write_dataset(root / "second.csv", 260, seed=2)
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
    real = units_module.run_unit

    def flaky(spec, inputs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the 4th unit
        return real(spec, inputs)

    monkeypatch.setattr("saelab.pipeline.run.run_unit", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, tmp_path / "run", progress=False)
    assert len(list((tmp_path / "run" / "units").glob("*.parquet"))) == 3
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["error"].startswith("KeyboardInterrupt")
    monkeypatch.setattr("saelab.pipeline.run.run_unit", real)
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
    _write_dataset(tmp_path / "other" / "first.csv", 200, seed=5)
    cfg = _config(root, model).model_copy(deep=True)
    cfg.data.datasets = [str(root / "first.csv"), str(tmp_path / "other" / "first.csv")]
    with pytest.raises(ConfigError, match="two datasets are named 'first'"):
        run_pipeline(cfg, tmp_path / "run", progress=False)
