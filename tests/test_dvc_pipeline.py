"""The DVC pipeline of ``examples/sae_bench``: its params.yaml is a valid EvalConfig, its dvc.yaml a
DAG of ``saelab eval`` stages with disjoint outs and valid params, and ``dvc repro`` on a tiny
config in a temporary git repository runs every stage, reruns nothing the second time, and after
one param changes reruns only the stages that depend on it.

The repro test needs DVC (``pip install 'saelab[dvc]'``) and git; without them it is skipped, unless
``SAELAB_DVC_TEST=required`` (``make test`` sets it), when it fails instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pydantic import BaseModel

from saelab.config import QUICKSTART_DATASETS, EvalConfig, load_eval_config
from saelab.evals.runner import STAGES
from tiny_models import build_tiny_model, write_word_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sae_bench"
PIPELINE = (
    "setup",
    "core_eval",
    "sparse_probing",
    "optional_evals",
    "process_results",
    "visualize",
)
EDGES = {
    ("setup", "core_eval"),
    ("setup", "sparse_probing"),
    ("setup", "optional_evals"),
    ("core_eval", "process_results"),
    ("sparse_probing", "process_results"),
    ("optional_evals", "process_results"),
    ("process_results", "visualize"),
}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((EXAMPLE / "dvc.yaml").read_text("utf-8"))["stages"]


def _outs(stage: dict) -> list[str]:
    """Out paths of a dvc.yaml stage (plain strings or ``{path: {cache: ...}}`` mappings)."""
    return [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]


def _is_config_key(model: type[BaseModel], dotted: str) -> bool:
    """Whether ``dotted`` (``core`` or ``model.name``) names a field of ``model``'s sections."""
    head, _, rest = dotted.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _is_config_key(sub, rest)


# ----- the files, read statically -----------------------------------------------------------------
def test_example_params_is_the_six_sae_eval_config():
    cfg = load_eval_config(EXAMPLE / "params.yaml")
    assert cfg.model.name == "all-MiniLM-L6-v2"
    assert cfg.hook == "blocks.4.hook_resid_post"
    got = [(s.train.architecture, s.train.expansion_factor) for s in cfg.saes if s.train]
    assert sorted(got) == sorted(
        (a, e) for a in ("topk", "batchtopk", "jumprelu") for e in (8, 16)
    )  # 384 x 8 = 3072 and 384 x 16 = 6144 latents
    for s in cfg.saes:
        assert (s.train.target_l0 if s.train.architecture == "jumprelu" else s.train.k) == 32
        assert s.train.max_tokens == 200_000
    assert cfg.train.max_tokens == 200_000 and cfg.heldout.max_tokens == 100_000
    assert list(cfg.heldout.datasets) == list(QUICKSTART_DATASETS)
    assert list(cfg.sparse_probing.datasets) == list(QUICKSTART_DATASETS)
    assert cfg.evals == ["core", "sparse_probing", "absorption"]


def test_dvc_yaml_stages_run_saelab_with_valid_params_and_disjoint_outs():
    stages = _stages()
    assert tuple(stages) == PIPELINE
    covered: list[str] = []
    produced: dict[str, str] = {}  # out path -> stage
    written = yaml.safe_load((EXAMPLE / "params.yaml").read_text("utf-8"))
    for name, st in stages.items():
        argv = shlex.split(st["cmd"])
        assert argv[:3] == ["saelab", "eval", "params.yaml"], name
        assert argv[argv.index("--out") + 1] == "results" and "--no-progress" in argv
        asked = [argv[i + 1] for i, a in enumerate(argv) if a == "--stage"]
        assert asked and set(asked) <= set(STAGES), name
        covered += asked
        for key in st.get("params", []):
            assert _is_config_key(EvalConfig, key), f"{name}: params key {key!r}"
            node = written  # DVC refuses a params key that params.yaml does not spell out
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{name}: {key!r} not written"
                node = node[part]
        for dep in st.get("deps", []):  # every dep is an out of an earlier stage
            assert dep in produced, f"{name}: dep {dep} is no earlier stage's out"
        for out in _outs(st):
            assert out.startswith("results/"), out
            for other in produced:
                assert not (
                    out == other or out.startswith(other + "/") or other.startswith(out + "/")
                ), f"{name}: out {out} overlaps {other} of {produced[other]}"
            produced[out] = name
    assert sorted(covered) == sorted(STAGES)  # every runner stage, each once
    deps_edges = {(produced[d], name) for name, st in stages.items() for d in st.get("deps", [])}
    assert deps_edges == EDGES


# ----- dvc repro on a tiny config -----------------------------------------------------------------
def _dvc_or_skip() -> None:
    missing = [
        what
        for what, ok in (
            ("the dvc package (pip install 'saelab[dvc]')", importlib.util.find_spec("dvc")),
            ("git", shutil.which("git")),
        )
        if not ok
    ]
    if missing:
        if os.environ.get("SAELAB_DVC_TEST") == "required":
            pytest.fail(f"SAELAB_DVC_TEST=required but {' and '.join(missing)} is missing")
        pytest.skip(f"{' and '.join(missing)} not installed")


def _tiny_params(data: Path, model: Path) -> dict:
    """Two TopK SAEs (k 4 and 8, 64 latents) on a tiny random BERT and tiny word datasets."""
    return {
        "name": "tiny_bench",
        "seed": 42,
        "cache_dir": str(data / "cache"),
        "model": {"name": str(model), "batch_size": 32},
        "hook": "blocks.1.hook_resid_post",
        "saes": [
            {
                "id": "t",
                "train": {
                    "architecture": "topk",
                    "expansion_factor": 2,
                    "batch_size": 64,
                    "steps": 8,
                    "eval_every": 8,
                    "checkpoint_every": 8,
                    "max_tokens": 1000,
                    "seed": 0,
                },
                "sweep": {"k": [4, 8]},
            }
        ],
        "train": {"datasets": [], "files": [{"path": str(data / "train.csv")}]},
        "heldout": {
            "datasets": [],
            "files": [{"path": str(data / "heldout.csv")}],
            "max_tokens": 300,
        },
        "core": {"batch_size": 64, "splice": True, "splice_max_texts": 16},
        "sparse_probing": {
            "datasets": [str(data / "probe_a.csv"), str(data / "probe_b.csv")],
            "ks": [1, 2],
            "paper_ks": [1, 2],
            "max_train": 48,
        },
        "absorption": {"seed": 42},  # DVC needs every params key of dvc.yaml written out
        "comparison": {"n_boot": 100},
        "executor": "serial",
    }


def _stamps(repo: Path, stage: dict) -> dict[str, int]:
    """mtime (ns) of every file under the stage's outs."""
    out: dict[str, int] = {}
    for o in _outs(stage):
        p = repo / o
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f.relative_to(repo))] = f.stat().st_mtime_ns
    return out


@pytest.mark.integration
def test_dvc_repro_runs_all_then_nothing_then_only_what_a_param_change_touches(tmp_path):
    _dvc_or_skip()
    data = tmp_path / "data"
    data.mkdir()
    model = build_tiny_model(data / "bert", "bert")
    for name, n, seed in (
        ("train", 160, 1),
        ("heldout", 80, 2),
        ("probe_a", 120, 3),
        ("probe_b", 120, 4),
    ):
        write_word_dataset(data / f"{name}.csv", n, seed=seed)
    repo = tmp_path / "bench"
    repo.mkdir()
    shutil.copy(EXAMPLE / "dvc.yaml", repo / "dvc.yaml")
    params = _tiny_params(data, model)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    bindir = str(Path(sys.executable).parent)  # where the `saelab` script is installed
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
        "DVC_STUDIO_OFFLINE": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc_site"),  # its state and index, not /var/tmp
        "DVC_GLOBAL_CONFIG_DIR": str(tmp_path / "dvc_global"),  # no user config leaks in
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def sh(*argv: str) -> str:
        done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    def dvc(*args: str) -> str:
        return sh(sys.executable, "-m", "dvc", *args)

    def ran(log: str) -> set[str]:
        return set(re.findall(r"Running stage '([^']+)'", log))

    sh("git", "init", "-q")
    dvc("init", "-q")
    edges = set(re.findall(r'"([^"]+)" -> "([^"]+)"', dvc("dag", "--dot")))
    assert edges == EDGES

    # 1. everything runs, and every stage's outs exist
    assert ran(dvc("repro")) == set(PIPELINE)
    res = repo / "results"
    ids = ["t-4", "t-8"]
    assert [e["id"] for e in json.loads((res / "saes.json").read_text())["saes"]] == ids
    for sae_id in ids:
        assert (res / "saes" / sae_id / "sae_weights.safetensors").is_file()
        for ev in ("core", "sparse_probing", "absorption"):
            assert (res / "evals" / ev / f"{sae_id}.json").is_file()
    merged = pd.read_csv(res / "merged.csv")
    assert merged["sae"].tolist() == ids
    assert {"core.l0", "core.pooled_cossim_score", "sparse_probing.sae_top_1_test_accuracy"} <= set(
        merged.columns
    )
    assert set(pd.read_csv(res / "comparison.csv")["k"]) == {1, 2}
    assert (res / "report" / "report.html").is_file()
    # no stage wrote into another stage's outs after that stage ran: DVC sees them as recorded
    assert "up to date" in dvc("status")

    # 2. a second repro runs nothing and touches nothing
    stages = _stages()
    before = {name: _stamps(repo, st) for name, st in stages.items()}
    assert ran(dvc("repro")) == set()
    assert {name: _stamps(repo, st) for name, st in stages.items()} == before

    # 3. one core setting changes: core_eval and what reads its outs rerun, nothing else
    params["core"]["batch_size"] = 32
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), "utf-8")
    assert ran(dvc("repro")) == {"core_eval", "process_results", "visualize"}
    after = {name: _stamps(repo, st) for name, st in stages.items()}
    for name in ("setup", "sparse_probing", "optional_evals"):
        assert after[name] == before[name], name
    for name in ("core_eval", "process_results", "visualize"):
        assert set(after[name]) == set(before[name])
        assert all(after[name][f] != before[name][f] for f in before[name]), name
    env_json = json.loads((res / "evals" / "core" / "t-4.json").read_text())
    assert env_json["config"]["batch_size"] == 32
    assert "up to date" in dvc("status")
