"""Benchmark: the probe engine against the one of commit 8a7840a, on the quickstart's probe work.

What is compared: the probe stage of the quickstart as it stood at commit 8a7840a (its config,
``git show 8a7840a:examples/quickstart.yaml``: 8 datasets, 2 layers, the five regimes, five
baselines, four SAE probe variants; 2052 (split, probe) fits), on identical inputs.

- Inputs: saelab's own stages (``prepare_run``, ``plan_run``, ``extract_activations``,
  ``train_run_saes``, ``unit_jobs``) build every unit's arrays exactly as ``saelab run`` does
  (cache under ``benchmarks/out/cache``). They are built once, outside both timings.
- Today's engine: those units on the ``local`` executor (a process pool over the cores, one
  thread per worker), as ``saelab run`` runs them. Timed from the first submission to the last
  result (the pool is started and warmed up before).
- The 8a7840a engine: its source (``git archive 8a7840a src/saelab``) in a subprocess that reads
  the same arrays (written once as safetensors, not timed) and calls its probe functions as its
  pipeline did: one call per (unit, split) of ``BASELINES[method](X_train, y_train, X_test,
  y_test, seed)`` or ``fit_sae_probes(..., penalty, binarize, variant)``, one after another in one
  process (its only executor), with its default threads. Timed around those calls only.

Agreement: test AUC per (dataset, setting, value, layer, probe, k). Expected differences come from
the engine's fixes (issue "One probe engine"): AUCs on decision values instead of probabilities,
the L1 probe's own solver (intercept not penalised, solved to the optimum, where LIBLINEAR
penalised it and stopped at tol 1e-6), XGBoost's peer draws, the MLP's peer-first draws.

Usage: ``python benchmarks/probe_engine.py [--commit 8a7840a] [--workers N] [--no-write]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import yaml
from results_md import write_section
from safetensors.numpy import save_file

from saelab.config import validate_config
from saelab.pipeline.executors import ProcessExecutor
from saelab.pipeline.logs import StageTimer
from saelab.pipeline.run import (
    extract_activations,
    plan_run,
    prepare_run,
    train_run_saes,
    unit_jobs,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"

# The 8a7840a side: read the exported units and fit them with that commit's functions.
OLD_RUNNER = r"""
import json, sys, time
import numpy as np, scipy.sparse as sp
from safetensors.numpy import load_file
from saelab.probes import BASELINES, fit_sae_probes

folder = sys.argv[1]
manifest = json.load(open(f"{folder}/units.json"))
arrays = load_file(f"{folder}/arrays.safetensors")

def feature(name):
    if f"{name}/indptr" in arrays:
        return sp.csr_matrix(
            (arrays[f"{name}/data"], arrays[f"{name}/indices"], arrays[f"{name}/indptr"]),
            shape=tuple(int(v) for v in arrays[f"{name}/shape"]),
        )
    return arrays[name]

out, seconds, by_method = [], 0.0, {}
for unit in manifest:
    x = feature(unit["x"])
    for split in unit["splits"]:
        xt = x if split["x_test"] is None else feature(split["x_test"])
        tr, te = np.array(split["train"]), np.array(split["test"])
        args = (x[tr], np.array(split["y_train"]), xt[te], np.array(split["y_test"]))
        start = time.perf_counter()
        if unit["kind"] == "baseline":
            results = [BASELINES[unit["method"]](*args, seed=unit["seed"])]
        else:
            o = unit["options"]
            results = fit_sae_probes(
                *args, ks=unit["ks"], seed=unit["seed"], normalization=o["latent_ranking"],
                binarize=o["binarize"], penalty=o["penalty"], variant=o["variant"],
            )
        spent = time.perf_counter() - start
        seconds += spent
        method = unit["method"] if unit["kind"] == "baseline" else "sae"
        by_method[method] = by_method.get(method, 0.0) + spent
        for r in results:
            out.append({"key": [unit["dataset"], unit["setting"], split["value"], unit["layer"],
                                unit["probe"], r.k], "test_auc": r.test_auc})
json.dump({"seconds": seconds, "by_method": by_method, "results": out},
          open(f"{folder}/old_results.json", "w"))
"""


def old_config(commit: str) -> dict[str, Any]:
    text = subprocess.run(
        ["git", "show", f"{commit}:examples/quickstart.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = yaml.safe_load(text)
    data["cache_dir"] = str(OUT / "cache")
    return data


def old_source(commit: str, into: Path) -> Path:
    archive = into / "old.tar"
    subprocess.run(
        ["git", "archive", "-o", str(archive), commit, "src/saelab"], cwd=ROOT, check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def export(jobs: list, folder: Path) -> None:
    """The units' shared arrays (safetensors) and their splits (JSON), for the old engine."""
    arrays: dict[str, np.ndarray] = {}
    names: dict[int, str] = {}

    def name_of(x: Any) -> str:
        key = id(x)
        if key not in names:
            name = f"x{len(names)}"
            names[key] = name
            if sp.issparse(x):
                csr = sp.csr_matrix(x)
                arrays.update(
                    {
                        f"{name}/data": csr.data,
                        f"{name}/indices": csr.indices,
                        f"{name}/indptr": csr.indptr,
                        f"{name}/shape": np.array(csr.shape, dtype=np.int64),
                    }
                )
            else:
                arrays[name] = np.ascontiguousarray(x)
        return names[key]

    manifest = []
    for spec, inputs in jobs:
        manifest.append(
            {
                "kind": spec.kind,
                "method": spec.method,
                "options": spec.options,
                "ks": list(spec.ks),
                "seed": spec.seed,
                "dataset": spec.dataset,
                "setting": spec.setting,
                "layer": spec.layer,
                "probe": spec.method
                if spec.kind == "baseline"
                else f"sae:{spec.sae}:{spec.options['variant']}",
                "x": name_of(inputs.x),
                "splits": [
                    {
                        "value": ref.setting_value,
                        "x_test": None
                        if s.test_source is None
                        else name_of(inputs.x_test[s.test_source]),
                        "train": s.train.tolist(),
                        "test": s.test.tolist(),
                        "y_train": s.y_train.tolist(),
                        "y_test": s.y_test.tolist(),
                    }
                    for ref, s in zip(spec.splits, inputs.splits, strict=True)
                ],
            }
        )
    save_file(arrays, str(folder / "arrays.safetensors"))
    (folder / "units.json").write_text(json.dumps(manifest), "utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default="8a7840a")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N units only (a smoke test)")
    args = parser.parse_args(argv)

    cfg = validate_config(old_config(args.commit), f"quickstart at {args.commit}")
    load_before = os.getloadavg()[0]
    timer = StageTimer()
    run = prepare_run(cfg, timer, progress=False)
    units = plan_run(run)[: args.limit]
    extract_activations(run, units)
    train_run_saes(run)
    started = time.perf_counter()
    jobs = list(unit_jobs(run, units))
    inputs_seconds = time.perf_counter() - started
    n_fits = sum(len(spec.splits) for spec, _ in jobs)
    print(f"{len(jobs)} units ({n_fits} split fits) built in {inputs_seconds:.0f} s", flush=True)

    executor = ProcessExecutor(args.workers)
    list(executor.map(jobs[:1]))  # start and warm the pool (not timed)
    started = time.perf_counter()
    new_rows = {}
    new_cpu: dict[str, float] = {}
    for spec, outcome in executor.map(jobs):
        if outcome.rows:
            new_cpu[spec.method] = new_cpu.get(spec.method, 0.0) + outcome.rows[0]["unit_seconds"]
        for r in outcome.rows:
            probe = r["method"] if spec.kind == "baseline" else f"sae:{spec.sae}:{r['variant']}"
            key = (r["dataset"], r["setting"], r["setting_value"], r["layer"], probe, r["k"])
            new_rows[json.dumps(key, default=float)] = r["test_auc"]
    new_seconds = time.perf_counter() - started
    executor.close()
    print(f"today's engine: {new_seconds:.1f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="probe_engine_") as tmp:
        folder = Path(tmp)
        export(jobs, folder)
        src = old_source(args.commit, folder)
        (folder / "runner.py").write_text(OLD_RUNNER, "utf-8")
        env = {**os.environ, "PYTHONPATH": str(src)}
        subprocess.run(
            [sys.executable, str(folder / "runner.py"), str(folder)], env=env, check=True
        )
        old = json.loads((folder / "old_results.json").read_text("utf-8"))
    load_after = os.getloadavg()[0]
    old_seconds = old["seconds"]
    print(f"{args.commit} engine: {old_seconds:.1f} s", flush=True)

    old_rows = {json.dumps(r["key"], default=float): r["test_auc"] for r in old["results"]}
    common = sorted(set(old_rows) & set(new_rows))
    diff = np.array([abs(old_rows[k] - new_rows[k]) for k in common])
    by_probe: dict[str, list[float]] = {}
    for k, d in zip(common, diff, strict=True):
        probe = json.loads(k)[4].split(":")
        by_probe.setdefault(probe[0] if len(probe) == 1 else f"sae {probe[-1]}", []).append(d)
    lines = [
        "## Probe engine: today against commit "
        f"{args.commit} on the quickstart's probe work (`benchmarks/probe_engine.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, CPU only; "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before:.1f} before, {load_after:.1f} after (1-minute)",
        f"- Work: the quickstart config of {args.commit} (8 datasets, layers 2 and 4, five "
        f"regimes, five baselines, four SAE variants): {len(jobs)} units today = {n_fits} "
        f"(split, probe) fits of the old engine, on identical arrays (built once, "
        f"{inputs_seconds:.0f} s, not timed)",
        f"- Today: `local` executor, {executor.workers} worker processes of one thread. "
        f"{args.commit}: its functions called per (unit, split), one process, its own threads",
        "",
        "| engine | probe-stage seconds | speed-up |",
        "|---|---:|---:|",
        f"| {args.commit} | {old_seconds:.1f} | 1.0x |",
        f"| today | {new_seconds:.1f} | **{old_seconds / new_seconds:.1f}x** |",
        "",
        f"Per method ({args.commit}: seconds in its calls, one process; today: CPU seconds of the "
        f"units, spread over {executor.workers} workers, so wall time is about their sum / "
        f"{executor.workers}):",
        "",
        f"| method | {args.commit} s | today, unit CPU s | ratio (per CPU second) |",
        "|---|---:|---:|---:|",
        *[
            f"| {m} | {old['by_method'].get(m, 0.0):.1f} | {new_cpu.get(m, 0.0):.1f} | "
            f"{old['by_method'].get(m, 0.0) / max(new_cpu.get(m, 0.0), 1e-9):.1f}x |"
            for m in sorted(set(old["by_method"]) | set(new_cpu))
        ],
        "",
        f"Agreement over {len(common)} results (test AUC, |today - {args.commit}|): mean "
        f"{diff.mean():.4f}, median {np.median(diff):.4f}, max {diff.max():.4f}; within 0.01 "
        f"for {np.mean(diff <= 0.01):.0%}.",
        "",
        "| probe | results | mean abs diff | max | within 0.01 |",
        "|---|---:|---:|---:|---:|",
    ]
    for probe, ds in sorted(by_probe.items()):
        d = np.array(ds)
        lines.append(
            f"| {probe} | {d.size} | {d.mean():.4f} | {d.max():.4f} | {np.mean(d <= 0.01):.0%} |"
        )
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("probe_engine", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
