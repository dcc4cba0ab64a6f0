"""SAEs in a run: a sweep of trained architectures, an IHTP encoder on a loaded dictionary, the SAE
table (saes.csv, run.json, report) and their keys."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from saelab.config import RunConfig, expand_sae_sweeps, validate_config
from saelab.errors import ConfigError
from saelab.pipeline.run import run_pipeline
from saelab.sae import SAEConfig, build_sae, load_sae, save_sae
from saelab.sae.quality import reconstruction_quality
from tiny_models import HIDDEN, build_tiny_model, write_word_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sweep_expands_to_one_sae_per_point():
    entries = [
        {"id": "plain", "path": "x"},
        {
            "id": "s",
            "train": {"expansion_factor": 2},
            "sweep": {"architecture": ["topk", "batchtopk"], "k": [4, 8]},
        },
        {
            "id": "m",
            "train": {},
            "sweep": [
                {"architecture": "standard", "l1_coefficient": 3},
                {"architecture": "jumprelu"},
            ],
        },
    ]
    out = expand_sae_sweeps(entries)
    assert [e["id"] for e in out] == [
        "plain",
        "s-topk-4",
        "s-topk-8",
        "s-batchtopk-4",
        "s-batchtopk-8",
        "m-standard-3",
        "m-jumprelu",
    ]
    assert out[4]["train"] == {"expansion_factor": 2, "architecture": "batchtopk", "k": 8}
    cfg = RunConfig.model_validate({"saes": entries[1:]})
    assert [s.train.architecture for s in cfg.saes] == [
        "topk",
        "topk",
        "batchtopk",
        "batchtopk",
        "standard",
        "jumprelu",
    ]
    with pytest.raises(ConfigError, match=r"saes\.0\.sweep\.k"):
        expand_sae_sweeps([{"id": "s", "train": {}, "sweep": {"k": 4}}])
    with pytest.raises(ConfigError, match="field name 5"):
        expand_sae_sweeps([{"id": "s", "train": {}, "sweep": {5: [1]}}])
    with pytest.raises(ConfigError, match="needs a 'train' section"):
        expand_sae_sweeps([{"id": "s", "path": "p", "sweep": {"k": [4]}}])


def test_ihtp_must_name_a_dictionary_of_the_run():
    with pytest.raises(ConfigError, match=r"ihtp\.dictionary"):
        validate_config({"saes": [{"id": "i", "ihtp": {"dictionary": "nope", "k": 4}}]}, "t.yaml")


def test_quality_matches_hand_computation():
    cfg = SAEConfig(d_in=4, d_sae=6, architecture="topk", arch={"k": 2})
    sae = build_sae(cfg, seed=1)
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    q = reconstruction_quality(sae, x)
    assert q["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert q["l0"] == pytest.approx(float((f != 0).sum()) / 50)
    assert q["dead_fraction"] == pytest.approx(float(((f != 0).sum(0) == 0).float().mean()))
    assert q["n_tokens"] == 50


def test_run_with_a_sweep_and_ihtp(tmp_path):
    model = build_tiny_model(tmp_path / "gpt2", "gpt2")
    write_word_dataset(tmp_path / "words.csv", 260, seed=1)
    dictionary = SAEConfig(
        d_in=HIDDEN,
        d_sae=3 * HIDDEN,
        architecture="standard",
        metadata={"hook_name": "blocks.1.hook_resid_post"},
    )
    save_sae(build_sae(dictionary, seed=3), tmp_path / "dict")
    raw = {
        "name": "sweep",
        "cache_dir": str(tmp_path / "cache"),
        "model": {"name": str(model), "batch_size": 16},
        "layers": [1],
        "settings": ["normal"],
        "data": {"datasets": [str(tmp_path / "words.csv")], "max_train": 96},
        "saes": [
            {
                "id": "sw",
                "train": {"expansion_factor": 2, "epochs": 1, "batch_size": 128, "k": 4},
                "sweep": {"architecture": ["topk", "batchtopk"]},
            },
            {"id": "dict", "path": str(tmp_path / "dict")},
            {"id": "pursuit", "ihtp": {"dictionary": "dict", "k": 3}},
        ],
        "probes": {"ks": [1, 2]},
        "executor": "serial",
    }
    run_dir = tmp_path / "run"
    outcome = run_pipeline(RunConfig.model_validate(raw), run_dir, progress=False)
    res = outcome.results
    assert set(res[res.method == "sae"].sae) == {"sw-topk", "sw-batchtopk", "dict", "pursuit"}
    table = pd.read_csv(run_dir / "saes.csv").set_index("sae")
    assert set(table.index) == {"sw-topk", "sw-batchtopk", "dict", "pursuit"}
    # BatchTopK is saved (and probed) as JumpReLU with its learned threshold, as SAELens does
    assert table.loc["sw-batchtopk", "architecture"] == "jumprelu"
    assert table.loc["pursuit", "architecture"] == "ihtp"
    assert table.loc["sw-topk", "l0"] == pytest.approx(4.0)
    assert (table.fvu > 0).all() and (table.n_tokens > 0).all()
    meta = json.loads((run_dir / "run.json").read_text("utf-8"))
    assert {r["sae"] for r in meta["sae_table"]} == set(table.index)
    # the IHTP key follows its dictionary and k
    keys = meta["saes"]
    assert keys["pursuit@L1"] != keys["dict@L1"]
    again = run_pipeline(RunConfig.model_validate(raw), run_dir, progress=False)
    assert again.n_units_done_before == again.n_units
    raw["saes"][2]["ihtp"]["k"] = 2
    third = run_pipeline(RunConfig.model_validate(raw), run_dir, progress=False)
    meta3 = json.loads((run_dir / "run.json").read_text("utf-8"))
    assert meta3["saes"]["pursuit@L1"] != keys["pursuit@L1"]
    assert third.n_units_done_before == third.n_units - 1  # only the IHTP unit is recomputed
    raw["saes"][2]["ihtp"]["k"] = 10**6
    with pytest.raises(ConfigError, match=r"saes\.pursuit\.ihtp\.k"):
        run_pipeline(RunConfig.model_validate(raw), run_dir, progress=False)
    # the trained SAEs load back as saved (a folder per key in the cache)
    assert (
        load_sae(next((tmp_path / "cache" / "saes").glob("*/cfg.json")).parent).d_sae == 2 * HIDDEN
    )


def test_a_loaded_sae_over_the_memory_budget_is_streamed_with_the_same_results(
    tmp_path, monkeypatch
):
    model = build_tiny_model(tmp_path / "gpt2", "gpt2")
    write_word_dataset(tmp_path / "words.csv", 240, seed=2)
    wide = SAEConfig(
        d_in=HIDDEN,
        d_sae=8 * HIDDEN,
        architecture="jumprelu",
        metadata={"hook_name": "blocks.1.hook_resid_post"},
    )
    sae = build_sae(wide, seed=5)
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    save_sae(sae, tmp_path / "wide")

    def run(name):
        raw = {
            "name": name,
            "cache_dir": str(tmp_path / "cache"),
            "model": {"name": str(model), "batch_size": 16},
            "layers": [1],
            "settings": ["normal"],
            "data": {"datasets": [str(tmp_path / "words.csv")], "max_train": 96},
            "saes": [{"id": "wide", "path": str(tmp_path / "wide")}],
            "probes": {"ks": [1, 4]},
            "executor": "serial",
        }
        return run_pipeline(RunConfig.model_validate(raw), tmp_path / name, progress=False)

    in_memory = run("memory").results
    monkeypatch.setenv("SAELAB_SAE_MEMORY_BUDGET", "1KB")
    streamed = run("streamed")
    log = (tmp_path / "streamed" / "run.log").read_text("utf-8")
    assert "stream" in log.lower()
    a = in_memory[in_memory.method == "sae"].sort_values("k").test_auc.to_numpy()
    b = streamed.results[streamed.results.method == "sae"].sort_values("k").test_auc.to_numpy()
    assert len(a) == 2 and a == pytest.approx(b, abs=1e-6)
    table = pd.read_csv(tmp_path / "streamed" / "saes.csv")
    assert table.architecture.tolist() == ["jumprelu"] and table.d_sae.tolist() == [8 * HIDDEN]
