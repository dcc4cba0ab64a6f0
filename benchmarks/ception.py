"""SAE-ception's check on real data (issue: "SAE-ception ... measured honestly"), on this machine.

``saelab ception`` with its defaults: all-MiniLM-L6-v2 fine-tuned on the bundled ``92_glue_sst2``
(1024 training, 256 validation, 1000 test rows), a TopK SAE (4x, k = 32) on the classifier's
mean-pooled last-block output each cycle, 3 cycles, the four strategies (per_class, per_example,
random, none), 3 seeds. Target: <= 45 minutes on 2 CPU cores, from an empty output folder. Written
to RESULTS.md: the wall time, peak memory, one cycle's time split (fine-tuning, sharpening,
activations, SAE training, metrics), the per-cycle table (mean and 95% interval over seeds) and
the method check (ARI and U against both controls, accuracy against cycle 0).

There is no peer run beside it: the authors' language-model code (SAE-ception-2.0) reports no
results and needs GPT-2 from the hub and a GPU; their published vision figures are quoted as
figures only.

Usage: ``cd benchmarks && ../.venv/bin/python ception.py [--out DIR] [--set KEY=VALUE ...]
[--section NAME]`` (``--set cycle.lambda_aux=1.0 --section ception_sst2_lambda1``: the same check
with a 10x stronger pull).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from results_md import write_section

from saelab.ception.names import CHECKED_METRICS
from saelab.ception.report import accuracy_check, check_against_controls, summarize, verdict_lines
from saelab.ception.run import TIMING_COLUMNS

BIN = Path(sys.executable).parent
TABLE_METRICS = (
    "accuracy",
    "f1_macro",
    "probe_acc_acts",
    "probe_acc_codes",
    "ari_codes",
    "ari_acts",
    "u_codes_alive",
    "u_codes_all",
    "csi_codes_alive",
    "silhouette_true_codes",
    "davies_bouldin_codes",
    "sae_explained_variance",
    "sae_l0",
    "sae_dead_fraction",
)
SPLIT = TIMING_COLUMNS


def _peak_rss_gb(stderr: str) -> float | None:
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    return int(match.group(1)) / 1024**2 if match else None


def _wall_seconds(text: str) -> float:
    """``Elapsed (wall clock) time`` of ``/usr/bin/time -v`` in seconds."""
    match = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if not match:
        sys.exit("no /usr/bin/time output in the console log")
    seconds = 0.0
    for part in match.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _cell(row: pd.Series) -> str:
    if pd.isna(row["ci_low"]):
        return f"{row['mean']:.3f}"
    half = (row["ci_high"] - row["ci_low"]) / 2
    return f"{row['mean']:.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="default: out/<section>, emptied first")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--section", default="ception_sst2", help="RESULTS.md section name")
    parser.add_argument(
        "--existing",
        action="store_true",
        help="do not run: write the section from a finished --out folder (its console log)",
    )
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(__file__).parent / "out" / args.section
    if args.existing:
        console = (out / "benchmark_console.txt").read_text("utf-8")
        wall = _wall_seconds(console)
        stderr = console
    else:
        if not args.out and out.exists():
            shutil.rmtree(out)  # the benchmark's own folder: a rerun starts from empty
        if out.exists() and any(out.iterdir()):
            sys.exit(f"{out} is not empty: the benchmark times a run from an empty folder")
        cmd = ["/usr/bin/time", "-v", str(BIN / "saelab"), "ception", "--out", str(out)]
        cmd += [x for s in args.set for x in ("--set", s)]
        cmd.append("--no-progress")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (out / "benchmark_console.txt").write_text(proc.stdout + "\n" + proc.stderr[-20000:])
        if proc.returncode != 0:
            sys.exit(f"saelab ception failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        stderr = proc.stderr
    peak = _peak_rss_gb(stderr)
    cycles = pd.read_parquet(out / "cycles.parquet")
    cfg = yaml.safe_load((out / "config.yaml").read_text("utf-8"))

    summary = summarize(cycles, [m for m in TABLE_METRICS if m in cycles.columns])
    checks = check_against_controls(cycles, CHECKED_METRICS)
    acc = accuracy_check(cycles)
    verdicts = verdict_lines(checks, acc)

    later = cycles[cycles["cycle"] >= 1]
    split = later.groupby("strategy")[list(SPLIT)].median()
    cycle0 = cycles[cycles["cycle"] == 0].drop_duplicates("seed")[list(SPLIT)].median()

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.node() or 'this machine'} "
        f"({os.cpu_count()} CPU cores, no GPU), `saelab ception` with its defaults "
        "(all-MiniLM-L6-v2 on 92_glue_sst2: 1024 train / 256 validation / 1000 test rows; TopK "
        "SAE 4x, k 32, on the mean-pooled output of block 5; the last 2 blocks and the head "
        f"trained; 3 cycles x 4 strategies x 3 seeds; lambda {cfg['cycle']['lambda_aux']}, "
        f"K {cfg['cycle']['sharpen_k']}), empty output folder.",
        "",
        f"- **Wall time: {wall / 60:.1f} min** (target <= 45 min: "
        f"{'met' if wall <= 45 * 60 else 'missed'}); peak memory "
        f"{peak:.2f} GB"
        if peak
        else f"- **Wall time: {wall / 60:.1f} min**",
        f"- {len(cycles.drop_duplicates(['seed', 'strategy', 'cycle']))} table rows; "
        f"{cycles['seed'].nunique()} seeds.",
        "",
        "One cycle's wall time, median over seeds (seconds): cycle 0 and each strategy's later "
        "cycles.",
        "",
        "| cycle | fine-tuning | sharpening | activations | SAE training | metrics | total |",
        "|---|---:|---:|---:|---:|---:|---:|",
        "| 0 (shared) | " + " | ".join(f"{cycle0[c]:.1f}" for c in SPLIT) + " |",
    ]
    for strategy, row in split.iterrows():
        lines.append(f"| {strategy} 1-3 | " + " | ".join(f"{row[c]:.1f}" for c in SPLIT) + " |")
    lines += [
        "",
        "Per-cycle metrics on the test rows, mean ± 95% t-interval half-width over seeds:",
        "",
    ]
    strategies = list(dict.fromkeys(summary["strategy"]))
    header = "| metric | strategy | " + " | ".join(
        f"cycle {c}" for c in sorted(summary["cycle"].unique())
    )
    lines += [header + " |", "|---|---|" + "---:|" * summary["cycle"].nunique()]
    for metric in TABLE_METRICS:
        part = summary[summary["metric"] == metric]
        if part.empty:
            continue
        for strategy in strategies:
            rows = part[part["strategy"] == strategy].sort_values("cycle")
            cells = [_cell(r) for _, r in rows.iterrows()]
            lines.append(f"| {metric} | {strategy} | " + " | ".join(cells) + " |")
    lines += ["", "Method check (paired by seed; 'rises' = mean difference > 2 SE):", ""]
    lines += [f"- {v}" for v in verdicts]
    lines += [
        "",
        "| treated | control | cycle | metric | difference | SE | rises |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for _, r in checks.iterrows():
        lines.append(
            f"| {r['treated']} | {r['control']} | {r['cycle']} | {r['metric']} | "
            f"{r['diff_mean']:+.4f} | {r['diff_se']:.4f} | {bool(r['rises'])} |"
        )
    lines += ["", "| strategy | cycle | accuracy - cycle 0 | SE | within ±2 points |"]
    lines += ["|---|---:|---:|---:|---|"]
    for _, r in acc.iterrows():
        lines.append(
            f"| {r['strategy']} | {r['cycle']} | {100 * r['diff_mean']:+.2f} pts | "
            f"{100 * r['diff_se']:.2f} | {bool(r['within'])} |"
        )
    overrides = " ".join(f"--set {x}" for x in args.set)
    title = f"## SAE-ception on SST-2 (benchmarks/ception.py{' ' + overrides if overrides else ''})"
    write_section(args.section, title + "\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
