"""``saelab eval`` stages end to end on a tiny random BERT: setup (training a sweep), core eval,
skip on rerun, rerun on a config change, merge, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from saelab.cli import main
from saelab.config import EvalConfig, load_eval_config
from saelab.evals.envelope import read_envelope
from saelab.evals.runner import run_eval, stages_of
from tiny_models import build_tiny_causal_lm, build_tiny_model, write_word_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_world")
    model = build_tiny_model(root / "bert", "bert")
    write_word_dataset(root / "train.csv", 160, seed=1)
    write_word_dataset(root / "heldout.csv", 80, seed=2)
    return {"root": root, "model": model}


def config(world: dict[str, Path], **over) -> dict:
    cfg = {
        "name": "tiny_eval",
        "cache_dir": str(world["root"] / "cache"),
        "model": {"name": str(world["model"]), "batch_size": 16},
        "hook": "blocks.1.hook_resid_post",
        "saes": [
            {
                "id": "t",
                "train": {
                    "architecture": "topk",
                    "expansion_factor": 2,
                    "batch_size": 64,
                    "epochs": 2,
                    "max_tokens": 1000,
                    "seed": 0,
                },
                "sweep": {"k": [2, 4]},
            },
            {"id": "t-ihtp", "ihtp": {"dictionary": "t-4", "k": 2}},
        ],
        "train": {"datasets": [], "files": [{"path": str(world["root"] / "train.csv")}]},
        "heldout": {
            "datasets": [],
            "files": [{"path": str(world["root"] / "heldout.csv")}],
            "max_tokens": 300,
        },
        "evals": ["core"],
        "core": {"splice": True, "splice_max_texts": 20, "batch_size": 64},
        "executor": "serial",
    }
    cfg.update(over)
    return cfg


def test_stages_of_all_follows_the_config():
    cfg = EvalConfig.model_validate(
        {"saes": [{"id": "a", "path": "x"}, {"id": "b", "path": "y"}], "evals": ["core"]}
    )
    assert stages_of(cfg, None) == ["setup", "core", "merge", "visualize"]
    cfg2 = cfg.model_copy(update={"evals": ["sparse_probing", "core"]})
    assert stages_of(cfg2, ["all"])[:4] == ["setup", "core", "sparse_probing", "compare"]
    assert stages_of(cfg, ["merge", "setup"]) == ["setup", "merge"]


def test_setup_core_merge_skip_and_rerun(world, tmp_path):
    out = tmp_path / "out"
    cfg = EvalConfig.model_validate(config(world))
    run_eval(cfg, out, ["setup", "core", "merge"], progress=False)
    manifest = json.loads((out / "saes.json").read_text())
    assert [e["id"] for e in manifest["saes"]] == ["t-2", "t-4", "t-ihtp"]
    assert [e["kind"] for e in manifest["saes"]] == ["trained", "trained", "ihtp"]
    assert (out / "saes" / "t-2" / "cfg.json").is_file()
    envs = {p.stem: read_envelope(p) for p in (out / "evals" / "core").glob("*.json")}
    assert set(envs) == {"t-2", "t-4", "t-ihtp"}
    for sae_id, env in envs.items():
        m = env.metrics
        assert 0 < m["n_tokens"] <= 300 + 20  # whole texts up to the cap
        assert m["fvu"] == pytest.approx(1 - m["explained_variance"])
        assert env.sae.hook == "blocks.1.hook_resid_post"
        assert env.provenance.versions["saelab"]
        assert sum(d["latents"] for d in env.details) == env.sae.d_sae
        if sae_id != "t-ihtp":  # TopK: exactly k per token (a few tokens may have fewer)
            assert m["l0"] <= int(sae_id.split("-")[1]) + 1e-9
    # rerun: nothing recomputed (files untouched)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "evals" / "core").glob("*.json")}
    run_eval(cfg, out, ["setup", "core", "merge"], progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a core setting changes: the core evals rerun, the SAEs are not retrained
    sae_stamp = (out / "saes" / "t-2" / "sae_weights.safetensors").stat().st_mtime_ns
    cfg2 = EvalConfig.model_validate(config(world, core={"splice": False, "batch_size": 32}))
    for env in envs.values():  # the encoder's splice: pooled-embedding cosine, 20 texts
        assert env.metrics["splice_n_texts"] == 20 and "ce_loss_score" not in env.metrics
        assert env.metrics["pooled_cossim_zero"] < env.metrics["pooled_cossim_sae"] <= 1 + 1e-6
        assert env.headline == "pooled_cossim_score"
    run_eval(cfg2, out, ["setup", "core", "merge"], progress=False)
    assert all(p.stat().st_mtime_ns != stamps[p] for p in stamps)
    assert (out / "saes" / "t-2" / "sae_weights.safetensors").stat().st_mtime_ns == sae_stamp
    merged = pd.read_csv(out / "merged.csv")
    assert merged["sae"].tolist() == ["t-2", "t-4", "t-ihtp"]
    assert {"core.l0", "core.explained_variance", "core.explained_variance_legacy"} <= set(
        merged.columns
    )


def test_core_metrics_match_a_direct_computation(world, tmp_path):
    """The envelope's numbers are core_metrics of the loaded SAE on the held-out tokens."""
    from saelab.evals.core import core_metrics
    from saelab.evals.runner import EvalRun, heldout_tokens

    out = tmp_path / "out"
    cfg = EvalConfig.model_validate(config(world, saes=config(world)["saes"][:1]))
    run_eval(cfg, out, ["setup", "core"], progress=False)
    run = EvalRun(cfg=cfg, out=out, progress=False)
    held = heldout_tokens(run)
    direct = core_metrics(run.sae("t-2"), held.tokens, batch_size=64)
    env = read_envelope(out / "evals" / "core" / "t-2.json")
    for name in ("mse", "explained_variance", "l0", "cossim", "relative_reconstruction_bias"):
        assert env.metrics[name] == pytest.approx(direct[name], rel=1e-9)


def test_cli_errors_exit_2(world, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config(world), "hook": "blocks.1.hook_nope"}))
    assert main(["eval", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "hook" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config(world)))
    # core before setup: a clear error naming the missing manifest
    assert main(["eval", str(good), "--stage", "core", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "saes.json" in err and "setup" in err and "Traceback" not in err
    assert main(["eval", str(good), "--stage", "nope", "--out", str(tmp_path / "o3")]) == 2
    assert load_eval_config(good).saes[0].id == "t-2"


def test_core_on_a_causal_lm_scores_next_token_loss(world, tmp_path):
    """A checkpoint with an LM head gets the CE / KL scores of the splice (loaded with its head)."""
    folder = build_tiny_causal_lm(tmp_path / "llama", "llama")
    cfg = EvalConfig.model_validate(
        config(world, model={"name": str(folder), "batch_size": 16}, saes=config(world)["saes"][:1])
    )
    run_eval(cfg, tmp_path / "out", ["setup", "core"], progress=False)
    env = read_envelope(tmp_path / "out" / "evals" / "core" / "t-2.json")
    m = env.metrics
    assert env.headline == "ce_loss_score"
    assert m["ce_loss_score"] == pytest.approx(
        (m["ce_loss_with_ablation"] - m["ce_loss_with_sae"])
        / (m["ce_loss_with_ablation"] - m["ce_loss_without_sae"])
    )
    assert m["kl_div_with_sae"] >= 0 and "pooled_cossim_score" not in m


def test_absorption_that_cannot_apply_is_written_as_skipped(world, tmp_path):
    """The tiny tokenizer has a few whole words, not 20 per letter: the envelope says why, with no
    metrics, and merge carries the reason."""
    out = tmp_path / "out"
    sweep = {**config(world)["saes"][0], "sweep": [{"architecture": "batchtopk", "k": 2}, {"k": 4}]}
    cfg = EvalConfig.model_validate(config(world, saes=[sweep], evals=["absorption"]))
    run_eval(cfg, out, progress=False)
    env = read_envelope(out / "evals" / "absorption" / "t-batchtopk-2.json")
    # named by how it was trained, though saved (and loaded) as jumprelu
    assert env.sae.architecture == "batchtopk"
    assert json.loads((out / "saes" / "t-batchtopk-2" / "cfg.json").read_text())[
        "architecture"
    ] == ("jumprelu")
    assert env.skipped_reason and env.metrics == {} and env.headline is None
    assert env.config["min_probe_f1"] == 0.6
    merged = pd.read_csv(out / "merged.csv")
    assert dict(zip(merged["sae"], merged["architecture"], strict=True)) == {
        "t-batchtopk-2": "batchtopk",
        "t-4": "topk",
    }
    assert merged["absorption.skipped_reason"].tolist() == [env.skipped_reason] * 2
    assert (out / "report" / "report.html").is_file()


def test_heldout_texts_never_include_a_training_text(world, tmp_path):
    """Test rows repeat training rows' texts in the bundled data, and a file may sit on both sides:
    the held-out set drops every training text and repeats (any seed)."""
    from saelab.evals.runner import heldout_texts, training_texts
    from tiny_models import tiny_tokenizer

    both = tmp_path / "both.csv"
    pd.DataFrame({"prompt": ["shared text one", "shared text one", "only here"]}).to_csv(
        both, index=False
    )
    for seed in (0, 42):
        cfg = EvalConfig.model_validate(
            config(
                world,
                seed=seed,
                train={"datasets": ["87_glue_cola"], "files": [{"path": str(both)}]},
                heldout={
                    "datasets": ["87_glue_cola"],
                    "files": [{"path": str(both)}],
                    "max_tokens": None,
                },
            )
        )
        train = set(training_texts(cfg))
        held = heldout_texts(cfg, tiny_tokenizer("bert"), 64)
        assert held and not (set(held) & train)
        assert len(held) == len(set(held))
        assert "only here" not in held and "shared text one" not in held


def test_a_stale_manifest_or_a_foreign_layer_is_refused(world, tmp_path):
    from saelab.errors import ConfigError

    out = tmp_path / "out"
    base = config(world, saes=config(world)["saes"][:1])
    run_eval(EvalConfig.model_validate(base), out, ["setup"], progress=False)
    changed = config(world, saes=[{**base["saes"][0], "sweep": {"k": [2, 3]}}])
    with pytest.raises(ConfigError, match="rerun the setup stage"):
        run_eval(EvalConfig.model_validate(changed), out, ["core"], progress=False)
    retrained = json.loads(json.dumps(base))
    retrained["saes"][0]["train"]["epochs"] = 3
    with pytest.raises(ConfigError, match=r"config of SAE\(s\) \['t-2', 't-4'\] changed"):
        run_eval(EvalConfig.model_validate(retrained), out, ["core"], progress=False)
    with pytest.raises(ConfigError, match="set up for model"):
        run_eval(
            EvalConfig.model_validate({**base, "hook": "blocks.2.hook_resid_post"}),
            out,
            ["core"],
            progress=False,
        )
    loaded = config(
        world, saes=[{"id": "x", "path": str(out / "saes" / "t-2"), "layer": 2}], evals=["core"]
    )
    with pytest.raises(ConfigError, match="every SAE of an eval reads that one hook"):
        run_eval(EvalConfig.model_validate(loaded), tmp_path / "o2", ["setup"], progress=False)


def test_tables_leave_out_results_of_removed_saes(world, tmp_path):
    out = tmp_path / "out"
    run_eval(EvalConfig.model_validate(config(world)), out, ["setup", "core"], progress=False)
    fewer = config(world, saes=config(world)["saes"][:1])
    run_eval(EvalConfig.model_validate(fewer), out, ["setup", "core", "merge"], progress=False)
    assert (out / "evals" / "core" / "t-ihtp.json").is_file()  # kept on disk
    assert pd.read_csv(out / "merged.csv")["sae"].tolist() == ["t-2", "t-4"]
