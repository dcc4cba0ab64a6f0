"""Config validation and CLI behaviour on bad input (no model work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from saelab.config import RunConfig, apply_overrides, load_config, quickstart_yaml
from saelab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_example_is_the_builtin_config():
    assert (ROOT / "examples" / "quickstart.yaml").read_text("utf-8") == quickstart_yaml()
    cfg = load_config()
    assert cfg.name == "quickstart"
    assert cfg.layers == [4] and len(cfg.data.datasets) >= 8
    assert cfg.saes[0].train is not None and cfg.saes[0].train.expansion_factor >= 8
    assert max(cfg.probes.ks) == 128
    # all five regimes, every baseline in the normal setting, the four SAE probe variants
    assert cfg.settings == ["normal", "scarcity", "imbalance", "label_noise", "ood"]
    assert cfg.baselines_for("normal") == ["logreg", "pca", "knn", "xgboost", "mlp"]
    assert len(cfg.variants_for("normal")) == 4


def test_paper_quiver_example_runs_the_five_baselines_where_the_paper_does():
    cfg = load_config(ROOT / "examples" / "paper_quiver.yaml")
    quick = load_config()
    for setting in ("normal", "scarcity", "imbalance"):
        assert cfg.baselines_for(setting) == ["logreg", "pca", "knn", "xgboost", "mlp"]
    for setting in ("label_noise", "ood"):
        assert cfg.baselines_for(setting) == ["logreg"]
    assert (cfg.layers, cfg.data.datasets, cfg.saes) == (
        quick.layers,
        quick.data.datasets,
        quick.saes,
    )


def test_paper_example_validates():
    cfg = load_config(ROOT / "examples" / "paper_gemma2_9b.yaml")
    assert cfg.layers == [20] and cfg.pooling == "last" and cfg.data.datasets == ["all"]
    assert [s.path is not None for s in cfg.saes] == [True, True, True]


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nprobes:\n  kz: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'probes\.kz'") as ei:
        load_config(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("layers: [-1]\n", "layers"),
        ("pooling: max\n", "pooling"),
        ("probes:\n  ks: [0, 2]\n", "probes.ks"),
        ("saes:\n  - id: a\n", "saes.0"),
        ("saes:\n  - id: a\n    path: x\n    train: {}\n", "saes.0"),
        ("saes:\n  - {id: a, path: x}\n  - {id: a, path: y}\n", "(top level)"),
        ("data:\n  max_test: 0\n", "data.max_test"),
        ("model:\n  dtype: float8\n", "model.dtype"),
        ("settings: [normal, scarce]\n", "settings.1"),
        ("probes:\n  baselines: [logreg, svm]\n", "probes.baselines.1"),
        ("probes:\n  sae_variants: [{penalty: l3}]\n", "probes.sae_variants.0.penalty"),
        ("probes:\n  sae_variants: [{penalty: l1, pool: max}]\n", "probes.sae_variants.0.pool"),
        ("regimes:\n  scarcity: {valus: [2]}\n", "regimes.scarcity.valus"),
        ("regimes:\n  ood: {pairs: [{dataset: a}]}\n", "regimes.ood.pairs.0.ood"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert f"'{key}'" in str(ei.value) or (key == "(top level)" and "unique" in str(ei.value))


def test_set_overrides_keep_types():
    data = apply_overrides({}, ["data.max_test=200", "layers=[1, 2]", "probes.ks=[4]", "name=abc"])
    cfg = RunConfig.model_validate(data)
    assert (
        cfg.data.max_test == 200
        and cfg.layers == [1, 2]
        and cfg.probes.ks == [4]
        and cfg.name == "abc"
    )
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["oops"])


def test_set_indexes_lists_and_names_bad_paths():
    cfg = load_config(None, ["saes.0.train.k=16", "data.datasets.1=92_glue_sst2"])
    assert cfg.saes[0].train.k == 16 and cfg.data.datasets[1] == "92_glue_sst2"
    with pytest.raises(ConfigError, match="not an index of the 1-item list 'saes'"):
        load_config(None, ["saes.3.train.k=16"])
    with pytest.raises(ConfigError, match="'name' is not a section"):
        load_config(None, ["name.x=1"])


def test_not_yaml_and_not_mapping(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "saelab.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_user_errors_exit_nonzero_without_traceback(tmp_path):
    r = _cli("run", "--set", "probes.kz=1", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown key 'probes.kz'" in r.stderr and "Traceback" not in r.stderr + r.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,label\nhello,1\n")
    r = _cli(
        "run", "--set", f"data.datasets=['{bad}']", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    assert "bad.csv" in r.stderr and "target" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_lists_datasets(tmp_path):
    r = _cli("datasets", "--ood", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "92_glue_sst2" in r.stdout and "87_glue_cola_OOD" in r.stdout
    assert "121 datasets" in r.stdout


def test_regime_options_resolve_per_setting():
    cfg = load_config(
        None,
        [
            "settings=[ood, normal, label_noise]",
            "probes.baselines=[logreg, knn]",
            "probes.sae_variants=[{penalty: l1}, {penalty: l2, binarize: true}]",
            "regimes.label_noise.baselines=[logreg]",
            "regimes.label_noise.sae_variants=all",
            "layers=[2, 4]",
            "regimes.ood.layers=[4]",
        ],
    )
    assert cfg.settings == ["normal", "label_noise", "ood"]  # the paper's order
    assert cfg.baselines_for("normal") == ["logreg", "knn"]
    assert cfg.baselines_for("label_noise") == ["logreg"]
    assert cfg.layers_for("ood") == [4] and cfg.layers_for("normal") == [2, 4]
    assert cfg.ks_for("normal") == [1, 2, 4, 8, 16, 32, 64, 128] and cfg.ks_for("ood") == [16, 128]
    assert [v.label("mean") for v in cfg.variants_for("label_noise")] == ["l1", "l2+bin"]
    assert [v.label("mean") for v in cfg.variants_for("ood")] == ["l1"]


def test_regime_layers_must_be_run_layers():
    with pytest.raises(ConfigError, match=r"key 'regimes.scarcity.layers': \[7\] not among") as ei:
        load_config(None, ["regimes.scarcity.layers=[7]"])
    assert "'model'" not in str(ei.value) and len(str(ei.value)) < 300  # not the whole config
    with pytest.raises(ConfigError, match="takes no 'values'"):
        load_config(None, ["regimes.normal.values=[1]"])


def test_overriding_the_run_layers_moves_the_regime_layers(tmp_path, caplog):
    # the README's example; a config whose regimes probe fewer layers than the run
    base = tmp_path / "c.yaml"
    base.write_text("layers: [2, 4]\nregimes:\n  scarcity: {layers: [4]}\n  ood: {layers: [2]}\n")
    with caplog.at_level("INFO", logger="saelab"):
        cfg = load_config(base, ["data.max_test=200", "layers=[3]"])
    assert cfg.layers == [3]
    for setting in ("normal", "scarcity", "imbalance", "label_noise", "ood"):
        assert cfg.layers_for(setting) == [3]
    assert "regimes.scarcity.layers [4] -> every run layer [3]" in caplog.text
    kept = load_config(base, ["layers=[1, 4]"])
    assert kept.layers_for("scarcity") == [4] and kept.layers_for("normal") == [1, 4]
    assert kept.layers_for("ood") == [1, 4]
    assert load_config(None, ["data.max_test=200", "layers=[3]"]).layers == [3]


def test_config_errors_show_the_key_and_value_not_the_config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("saes:\n  - {id: a, path: x}\n  - {id: a, path: y}\nprobes: {ks: [1, 2]}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = str(ei.value)
    assert "unique" in text and "ks" not in text and len(text) < 300


def test_executor_options_validate():
    cfg = load_config(None, ["executor=ray", "ray.address=auto", "workers=3"])
    assert (cfg.executor, cfg.ray.address, cfg.workers) == ("ray", "auto", 3)
    with pytest.raises(ConfigError, match="'executor'"):
        load_config(None, ["executor=dask"])
    with pytest.raises(ConfigError, match="'workers'"):
        load_config(None, ["workers=0"])
