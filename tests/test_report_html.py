"""Report build from a run folder: quivers, summary, figures, report.html; checked in Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from browser import open_in_chromium
from report_fixtures import synthetic_results
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.report.build import build_report
from saelab.report.plots import FIGURE_NAMES, read_manifest, write_plots
from saelab.report.quiver import compute_quivers

SKIPPED = {
    "dataset": "7_tiny_set",
    "setting": "scarcity",
    "setting_value": 1024,
    "layer": 2,
    "reason": "needs 1124 rows, has 900 <too small>",
}


def _write_run(run_dir: Path, results: pd.DataFrame, skipped: list | None = None) -> Path:
    """A run folder as ``saelab run`` leaves it: results.parquet and run.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results.to_parquet(run_dir / "results.parquet", index=False)
    meta = {
        "name": "synthetic <run>",
        "status": "complete",
        "started": "2025-01-02T03:04:05+0000",
        "finished": "2025-01-02T03:05:05+0000",
        "seconds": 60.0,
        "config": {"name": "synthetic", "probes": {"quiver_ks": [16, 128], "ks": [1, 16, 128]}},
        "versions": {"python": "3.11", "saelab": "0.1.0", "torch": "2.13.0"},
        "stage_seconds": {"activations": 12.5, "sae": 30.0, "probes": 17.5},
        "sae_training": {
            "topk@L2": {"d_sae": 512, "k": 32, "fvu": 0.125, "l0": 32.0, "epoch_losses": [1.0]}
        },
    }
    if skipped is not None:
        meta["skipped"] = skipped
    (run_dir / "run.json").write_text(json.dumps(meta), "utf-8")
    return run_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """One full report of the synthetic results (every setting, SAE probes at k 1, 16, 128)."""
    results = synthetic_results()
    run_dir = _write_run(tmp_path_factory.mktemp("run") / "run", results, [SKIPPED])
    report = build_report(run_dir, n_boot=50)
    return run_dir, report, results


def test_build_report_writes_tables_plots_and_html(built):
    run_dir, report, results = built
    assert report == run_dir / "report.html"
    for name in ("quivers.parquet", "quivers.csv", "summary.csv", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    for name in FIGURE_NAMES:
        png, svg = run_dir / "plots" / f"{name}.png", run_dir / "plots" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert "<svg" in svg.read_text("utf-8")[:2000], name
    assert [f.name for f in read_manifest(run_dir) if f.drawn] == list(FIGURE_NAMES)

    text = report.read_text("utf-8")
    # self-contained: every image inline, nothing fetched, no script
    assert text.count("<img ") == len(FIGURE_NAMES)
    assert text.count('<img src="data:image/png;base64,') == len(FIGURE_NAMES)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "url(" not in text and "@import" not in text and "<script" not in text.lower()
    # header, escaped text
    assert "saelab report: synthetic &lt;run&gt;" in text and "<run>" not in text
    # a summary table per setting, with <th> headers
    assert text.count('<table class="data summary">') == 5
    assert "<th>mean test AUC</th>" in text and "<th>95% CI vs logreg</th>" in text
    # a value that could be wrong: mean logreg test AUC, normal setting, layer 2, 4 decimals
    normal_lr = results.query("setting == 'normal' and layer == 2 and method == 'logreg'")
    assert "<td>logreg</td>" in text
    assert f'<td class="num">{normal_lr["test_auc"].mean():.4f}</td>' in text
    # quiver choices: SAE picks among best_with_sae points of the normal setting at layer 2
    q = pd.read_parquet(run_dir / "quivers.parquet")
    q = q[(q["setting"] == "normal") & (q["layer"] == 2) & (q["method"] == "best_with_sae")]
    n_sae = int((q["chosen_method"] == "sae").sum())
    assert f"{n_sae}/{len(q)} (" in text
    # skipped item, escaped; config, versions, timings and SAE statistics
    assert "7_tiny_set" in text and "needs 1124 rows, has 900 &lt;too small&gt;" in text
    assert "quiver_ks:" in text and "<td>torch</td><td>2.13.0</td>" in text
    assert "<td>activations</td>" in text and "<td>topk@L2</td>" in text
    assert "epoch_losses" not in text  # lists are left out of the SAE table
    assert "saelab 0.1.0" in text.split("<footer>")[1]


def test_report_renders_in_chromium(built, tmp_path):
    """Every embedded figure decodes in a real browser, with the network unreachable."""
    _, report, _ = built
    text = report.read_text("utf-8")
    check, _ = open_in_chromium(report, tmp_path)
    assert check["errors"] == []
    assert len(check["loaded"]) == len(FIGURE_NAMES)
    assert all(check["loaded"]), check
    assert min(check["widths"]) > 200
    assert check["tables"] == text.count("<table ") > 5
    assert check["fetched"] == []


def test_cli_report_prints_the_path(built, tmp_path):
    _, _, results = built
    fresh = _write_run(tmp_path / "fresh", results.query("setting == 'normal'"), [])
    r = subprocess.run(
        [sys.executable, "-m", "saelab.cli", "report", str(fresh), "--n-boot", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"report: {fresh / 'report.html'}" in r.stdout
    text = (fresh / "report.html").read_text("utf-8")
    assert "Nothing skipped." in text
    assert "not drawn: no OOD rows" in text and "not drawn: no scarcity rows" in text


def test_cli_report_errors_name_the_file(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert str(empty / "results.parquet") in err and "Traceback" not in err

    run_dir = _write_run(tmp_path / "no_meta", synthetic_results(settings=("normal",)))
    (run_dir / "run.json").unlink()
    with pytest.raises(SaelabError, match=re.escape(str(run_dir / "run.json"))):
        build_report(run_dir, n_boot=10)
    (run_dir / "run.json").write_text("{not json", "utf-8")
    with pytest.raises(SaelabError, match=r"run\.json: cannot read"):
        build_report(run_dir, n_boot=10)
    (run_dir / "results.parquet").write_bytes(b"not parquet")
    assert main(["report", str(run_dir)]) == 2
    assert "results.parquet: cannot read" in capsys.readouterr().err.replace("\n", "")


def test_plots_skip_gracefully_without_sae_rows(tmp_path):
    """Only the normal setting and no SAE rows: nothing to draw, every figure says why."""
    results = synthetic_results(settings=("normal",), ks=())
    assert not (results["method"] == "sae").any()
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "ood_bars.png").write_bytes(b"stale")  # from an earlier build
    figures = write_plots(tmp_path, results, compute_quivers(results))
    assert [f.name for f in figures] == list(FIGURE_NAMES)
    assert not any(f.drawn for f in figures)
    status = {f.name: f.status for f in figures}
    assert status["auc_vs_k"] == "not drawn: no SAE probe rows in the normal setting"
    assert status["scatter_sae_vs_baseline"] == "not drawn: no SAE probe rows in the normal setting"
    assert status["regime_label_noise"] == "not drawn: no label_noise rows"
    assert status["ood_bars"] == "not drawn: no OOD rows"
    assert sorted(p.name for p in plots.iterdir()) == ["plots.json"]
    assert [f.reason for f in read_manifest(tmp_path)] == [f.reason for f in figures]


def test_plots_with_some_settings_draw_what_is_there(tmp_path):
    results = synthetic_results(settings=("normal", "imbalance"), ks=(16, 128), layers=(3,))
    figures = {f.name: f for f in write_plots(tmp_path, results, compute_quivers(results))}
    drawn = sorted(name for name, f in figures.items() if f.drawn)
    assert drawn == ["auc_vs_k", "regime_imbalance", "scatter_sae_vs_baseline"]
    assert figures["regime_imbalance"].png.is_file() and figures["regime_imbalance"].svg.is_file()
    assert "positive fraction" in figures["regime_imbalance"].caption
