"""Build everything the report derives from a run folder: quivers, summary, figures, report.html.

Only ``results.parquet`` and ``run.json`` are read, so ``saelab report RUN_DIR`` can rebuild the
report of any finished (or interrupted) run, and ``saelab run`` calls the same function at its end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from saelab.errors import SaelabError
from saelab.report.html import REPORT_NAME, render_report
from saelab.report.plots import write_plots
from saelab.report.stats import load_results, quiver_ks_of, write_summary

log = logging.getLogger(__name__)


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """The run record ``run_dir/run.json``; ``SaelabError`` naming the file if missing or bad."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise SaelabError(f"{path}: no run record here (is this a saelab run folder?)")
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SaelabError(f"{path}: cannot read the run record ({exc})") from exc
    if not isinstance(meta, dict):
        raise SaelabError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def build_report(run_dir: Path, n_boot: int = 2000) -> Path:
    """Write quivers, summary, plots and ``report.html`` for ``run_dir``; return the report path.

    Reads ``run_dir/results.parquet`` and ``run_dir/run.json`` (``SaelabError`` naming the file
    when either is missing or unreadable). Writes ``quivers.parquet``, ``quivers.csv``,
    ``summary.csv`` (``saelab.report.stats.write_summary``, ``n_boot`` bootstrap draws per
    interval), ``plots/*.png``, ``plots/*.svg``, ``plots/plots.json`` and ``report.html``, each
    atomically.
    """
    run_dir = Path(run_dir)
    start = time.perf_counter()
    if not run_dir.is_dir():
        raise SaelabError(f"{run_dir}: no such run folder")
    results = load_results(run_dir)
    meta = read_run_json(run_dir)
    paths = write_summary(run_dir, n_boot=n_boot)
    quivers = pd.read_parquet(paths["quivers"])
    summary = pd.read_csv(paths["summary"])
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    figures = write_plots(run_dir, results, quivers, quiver_ks=quiver_ks_of(run_dir))
    drawn = [f.name for f in figures if f.drawn]
    log.info(
        "wrote %d figures to %s (%s)%s",
        len(drawn),
        run_dir / "plots",
        ", ".join(drawn) or "none",
        "".join(f"; {f.name} {f.status}" for f in figures if not f.drawn),
    )
    render_report(
        run_dir,
        run_meta=meta,
        results=results,
        summary=summary,
        quivers=quivers,
        figures=figures,
    )
    report = run_dir / REPORT_NAME
    log.info("wrote %s in %.1fs", report, time.perf_counter() - start)
    return report
