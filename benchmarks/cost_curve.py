"""Benchmark: how the probe stage grows with the number of datasets, and the full-study estimate.

Two measurements with saelab's own pipeline (``saelab.run``, the ``local`` executor over the
cores), all-MiniLM-L6-v2 at layer 4, mean pooling, the quickstart's baseline sets and a TopK SAE
(8 x d_model, k = 32) loaded from a file, SAE probes on the code of the pooled activation:

1. **Linear growth**: the normal setting (five baselines, SAE probes L1 and L2, k = 1 ... 128) on
   the first 1, 10 and 30 of 30 datasets drawn across the families; the probe stage's wall time
   (``run.json`` ``stage_seconds.probes``: fitting, without reading activations or encoding).
2. **The full study, estimated**: the same 30 datasets in all five regimes at one layer (the
   quickstart's baseline sets: five in normal, logreg / PCA / KNN in scarcity and imbalance,
   logreg in label noise and OOD; the SAE probe's primary variant, k = 16 and 128, outside
   normal); probe-stage time x 113 / 30 is the estimate for the 113 datasets (an estimate: the
   30 are not a random sample of sizes, and 8 of them carry the bundled OOD sets).

Activations are extracted into ``benchmarks/out/cost_curve/cache`` as the runs need them (their
own stage, not in the probe-stage figures) and the SAE is trained once on the 30 datasets'
normal-split training tokens (about 15k per dataset).

Usage: ``python benchmarks/cost_curve.py [--no-write]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from results_md import write_section

import saelab
from saelab.activations import DEFAULT_MODEL, ActivationCache, hook_name, load_model
from saelab.data import OOD_PAIRS, list_bundled, load_dataset, normal_split
from saelab.sae import SAETrainConfig, save_sae, train_sae

OUT = Path(__file__).resolve().parent / "out" / "cost_curve"
LAYER = 4


def pick_datasets(n: int = 30) -> list[str]:
    """The 8 datasets with a bundled OOD set, then round-robin over the families (seeded order)."""
    chosen = [name for name, _ in OOD_PAIRS]
    families: dict[str, list[str]] = {}
    for info in list_bundled():
        families.setdefault(info.family, []).append(info.name)
    queues = [list(v) for _, v in sorted(families.items())]
    while len(chosen) < n and any(queues):
        for q in queues:
            while q and q[0] in chosen:
                q.pop(0)
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


def train_benchmark_sae(names: list[str]) -> tuple[Path, dict]:
    """A TopK SAE on the normal-split training tokens of ``names`` (cached on disk)."""
    folder = OUT / "sae"
    if (folder / "cfg.json").is_file():
        return folder, json.loads((folder / "stats.json").read_text("utf-8"))
    handle = load_model(DEFAULT_MODEL)
    cache = ActivationCache(OUT / "cache")
    tokens = []
    for name in names:
        ds = load_dataset(name)
        texts = [ds.prompts[i] for i in normal_split(ds.labels, dataset_name=name).train]
        la = cache.get_or_extract(
            handle, texts, [LAYER], "mean", max_length=256, keep_tokens=True, progress=False
        )[LAYER]
        keep = la.tokens[~la.special]
        step = max(1, keep.shape[0] // 15000)  # about 15k tokens per dataset
        tokens.append(keep[::step])
    cfg = SAETrainConfig(
        architecture="topk", d_sae=8 * handle.d_model, k=32, lr=0.004, batch_size=1024, epochs=4
    )
    sae, stats, _ = train_sae(
        torch.cat(tokens), cfg, progress=False, metadata={"hook_name": hook_name(LAYER)}
    )
    save_sae(sae, folder)
    (folder / "stats.json").write_text(json.dumps(stats), "utf-8")
    return folder, stats


def config(names: list[str], settings: list[str], sae: Path) -> dict:
    quick = saelab.load_config().model_dump(mode="json")
    quick.update(
        name=f"cost_{len(names)}_{len(settings)}",
        cache_dir=str(OUT / "cache"),
        layers=[LAYER],
        settings=settings,
        saes=[{"id": "topk", "path": str(sae), "layer": LAYER}],
    )
    quick["data"]["datasets"] = names
    quick["probes"]["sae_variants"] = [
        {"penalty": "l1", "code_pooling": "pooled"},
        {"penalty": "l2", "code_pooling": "pooled"},
    ]
    return quick


def timed_run(cfg: dict, folder: Path) -> dict:
    """One run in a fresh folder; its stage seconds are exclusive, so the probe stage's figure
    does not include extracting or reading activations, or encoding."""
    started = time.perf_counter()
    out = saelab.run(cfg, out=folder)
    wall = time.perf_counter() - started
    meta = json.loads((folder / "run.json").read_text("utf-8"))
    return {
        "wall": wall,
        "probes": meta["stage_seconds"]["probes"],
        "stages": meta["stage_seconds"],
        "units": meta["units"]["planned"],
        "fits": meta["units"]["splits"],
        "rows": len(out.results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    names = pick_datasets(30)
    for old in OUT.glob("normal_*"):  # fresh run folders: nothing resumed
        shutil.rmtree(old)
    shutil.rmtree(OUT / "regimes_30", ignore_errors=True)
    sae, stats = train_benchmark_sae(names)
    load_before = os.getloadavg()[0]
    curve = {}
    for n in (1, 10, 30):
        curve[n] = timed_run(config(names[:n], ["normal"], sae), OUT / f"normal_{n}")
        print(f"normal, {n} datasets: probes {curve[n]['probes']:.1f} s", flush=True)
    settings = ["normal", "scarcity", "imbalance", "label_noise", "ood"]
    full = timed_run(config(names, settings, sae), OUT / "regimes_30")
    print(f"five regimes, 30 datasets: probes {full['probes']:.1f} s", flush=True)
    load_after = os.getloadavg()[0]

    estimate = full["probes"] * 113 / 30
    per = {n: c["probes"] / n for n, c in curve.items()}
    lines = [
        "## Probe-stage cost curve and full-study estimate (`benchmarks/cost_curve.py`)",
        "",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores, CPU only; "
        f"torch {torch.__version__}, Python {platform.python_version()}; load average "
        f"{load_before:.1f} before, {load_after:.1f} after",
        f"- all-MiniLM-L6-v2 layer {LAYER}, mean pooling; TopK SAE 3072 latents, k 32 (fvu "
        f"{stats['fvu']:.3f}), loaded from a file; SAE probes on the code of the pooled "
        "activation; `local` executor (2 workers); probe stage = fitting only (reading "
        "activations and encoding are their own stages)",
        f"- Datasets: {', '.join(names)}",
        "",
        "| run | datasets | units | (split, probe) fits | probe stage s | per dataset s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, c in curve.items():
        lines.append(
            f"| normal (5 baselines, SAE L1 + L2, k 1..128) | {n} | {c['units']} | {c['fits']} | "
            f"{c['probes']:.1f} | {per[n]:.2f} | {c['wall']:.1f} |"
        )
    lines.append(
        f"| five regimes (quickstart's baseline sets) | 30 | {full['units']} | {full['fits']} | "
        f"{full['probes']:.1f} | {full['probes'] / 30:.2f} | {full['wall']:.1f} |"
    )
    lines += [
        "",
        f"Growth: {per[1]:.2f} s per dataset at 1, {per[10]:.2f} at 10, {per[30]:.2f} at 30 "
        "(linear up to the pool's start-up and the load balance of the last units).",
        "",
        f"**Full-study estimate (113 datasets, five regimes, one layer, one SAE; an estimate "
        f"from 30 datasets): {full['probes']:.0f} s x 113 / 30 = {estimate:.0f} s = "
        f"{estimate / 3600:.2f} hours on 2 cores** (goal < 2 hours). The peer's own time on the "
        "same kind of work is measured in the `vs_sae_probes` section.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("cost_curve", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
