"""SAE-ception results: summaries, the method check against the controls, figures, report, tables."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from browser import open_in_chromium
from saelab.ception.names import STRATEGIES
from saelab.ception.report import (
    ACCURACY_COLUMNS,
    CHECK_COLUMNS,
    SUMMARY_COLUMNS,
    accuracy_check,
    ception_section,
    check_against_controls,
    plot_cycles,
    print_ception_summary,
    render_ception_report,
    summarize,
    verdict_lines,
    write_tables,
)
from saelab.errors import ResultFileError
from saelab.report.plots import PlotFile

SEEDS = (0, 1, 2)
CYCLES = (0, 1, 2, 3)
# t_{0.975, 2}: the 97.5% quantile of Student's t with 2 degrees of freedom (statistical tables)
T_975_DF2 = 4.302652729911275
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_cycles() -> pd.DataFrame:
    """3 seeds x 4 strategies x cycles 0..3 with known effects.

    ari_codes: per_class rises by 0.1 per cycle (noise sd 0.003); per_example is the mean of the
    controls plus fixed offsets (+0.01, -0.01, +0.005), i.e. no effect; the controls stay flat.
    u_codes_alive: per_class rises by 0.05 per cycle, the others flat. accuracy: flat except
    per_example, which loses 3 points at cycle 3. perplexity: NaN (no LM head).
    """
    rng = np.random.default_rng(7)
    rows = []
    start = {s: (0.20 + 0.01 * s, 0.30 + 0.01 * s, 0.85 + 0.002 * s) for s in SEEDS}
    for seed in SEEDS:
        ari0, u0, acc0 = start[seed]
        control_ari = {c: ari0 + rng.normal(0, 0.003) for c in CYCLES[1:]}
        for strategy in STRATEGIES:
            for cycle in CYCLES:
                if cycle == 0:
                    ari, u, acc = ari0, u0, acc0
                elif strategy == "per_class":
                    ari = ari0 + 0.1 * cycle + rng.normal(0, 0.003)
                    u = u0 + 0.05 * cycle + rng.normal(0, 0.002)
                    acc = acc0 + rng.normal(0, 0.002)
                elif strategy == "per_example":
                    ari = control_ari[cycle] + (0.01, -0.01, 0.005)[seed]
                    u = u0 + rng.normal(0, 0.002)
                    acc = acc0 - (0.03 if cycle == 3 else 0.0) + rng.normal(0, 0.002)
                else:
                    ari = control_ari[cycle] + rng.normal(0, 0.001)
                    u = u0 + rng.normal(0, 0.002)
                    acc = acc0 + rng.normal(0, 0.002)
                rows.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "cycle": cycle,
                        "accuracy": acc,
                        "probe_acc_codes": acc - 0.01,
                        "ari_codes": ari,
                        "u_codes_alive": u,
                        "csi_codes_alive": 0.4 + 0.01 * cycle,
                        "sae_explained_variance": 0.9,
                        "perplexity": np.nan,
                        "seconds_finetune": 10.0,
                        "seconds_total": 12.5,
                        "val_accuracy": acc,
                        "aux_loss": 0.3 if cycle else np.nan,
                        "lambda_aux": 0.0 if strategy == "none" or cycle == 0 else 0.1,
                        "model_id": "tiny-bert",
                        "dataset": "sst2",
                        "config_hash": "abc123",
                        "saelab_version": "0.9.1",
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cycles() -> pd.DataFrame:
    return synthetic_cycles()


# ----- summarize ----------------------------------------------------------------------------------


def test_summarize_cell_by_hand(cycles):
    summary = summarize(cycles)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    metrics = ["accuracy", "probe_acc_codes", "sae_explained_variance", "csi_codes_alive"]
    assert set(metrics) <= set(summary["metric"])
    assert "seconds_total" not in set(summary["metric"])  # only metric columns
    # rows: STRATEGIES order, then cycle
    assert list(dict.fromkeys(summary["strategy"])) == list(STRATEGIES)
    assert (
        summary.groupby("strategy", sort=False)["cycle"]
        .apply(lambda c: c.is_monotonic_increasing)
        .all()
    )
    values = cycles.query("strategy == 'per_class' and cycle == 2")["ari_codes"].to_numpy()
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    se = sd / math.sqrt(3)
    cell = summary.query("strategy == 'per_class' and cycle == 2 and metric == 'ari_codes'")
    assert len(cell) == 1
    cell = cell.iloc[0]
    assert cell["n_seeds"] == 3
    assert cell["mean"] == pytest.approx(mean, abs=1e-12)
    assert cell["sd"] == pytest.approx(sd, rel=1e-9)
    assert cell["se"] == pytest.approx(se, rel=1e-9)
    assert cell["ci_low"] == pytest.approx(mean - T_975_DF2 * se, rel=1e-9)
    assert cell["ci_high"] == pytest.approx(mean + T_975_DF2 * se, rel=1e-9)


def test_summarize_counts_values_and_drops_nan(cycles):
    frame = cycles.copy()
    frame.loc[(frame["strategy"] == "random") & (frame["seed"] == 0), "ari_codes"] = np.nan
    frame.loc[(frame["strategy"] == "random") & (frame["seed"] == 1), "ari_codes"] = np.nan
    summary = summarize(frame, ["ari_codes", "perplexity"])
    assert set(summary["metric"]) == {"ari_codes", "perplexity"}
    one = summary.query("strategy == 'random' and cycle == 1 and metric == 'ari_codes'").iloc[0]
    assert one["n_seeds"] == 1
    assert (
        one["mean"]
        == frame.query("strategy == 'random' and cycle == 1 and seed == 2")["ari_codes"].item()
    )
    assert all(math.isnan(one[c]) for c in ("sd", "se", "ci_low", "ci_high"))
    ppl = summary[summary["metric"] == "perplexity"]
    assert (ppl["n_seeds"] == 0).all() and ppl["mean"].isna().all()


def test_summarize_rejects_bad_tables(cycles):
    with pytest.raises(ResultFileError, match="lacks column"):
        summarize(cycles.drop(columns=["seed"]))
    with pytest.raises(ResultFileError, match="repeats seed 0"):
        summarize(pd.concat([cycles, cycles.iloc[:1]]))
    bad = cycles.copy()
    bad["cycle"] = bad["cycle"].astype(float)
    bad.loc[5, "cycle"] = 1.5
    with pytest.raises(ResultFileError, match="row 5"):
        summarize(bad)


# ----- method check -------------------------------------------------------------------------------


def test_check_against_controls_finds_the_known_effects(cycles):
    checks = check_against_controls(cycles)
    assert list(checks.columns) == list(CHECK_COLUMNS)
    # 2 treated x 2 controls x 2 metrics x 3 cycles
    assert len(checks) == 24 and set(checks["cycle"]) == {1, 2, 3}
    per_class = checks[checks["treated"] == "per_class"]
    assert per_class["rises"].all() and per_class["improves"].all()
    assert not per_class["falls"].any()
    per_example = checks[(checks["treated"] == "per_example") & (checks["metric"] == "ari_codes")]
    assert not per_example["rises"].any()
    # the numbers of one row by hand: per_class against none, ari_codes, cycle 2
    t = cycles.query("strategy == 'per_class' and cycle == 2").set_index("seed")["ari_codes"]
    c = cycles.query("strategy == 'none' and cycle == 2").set_index("seed")["ari_codes"]
    d = (t - c).to_numpy()
    row = checks.query("treated == 'per_class' and control == 'none' and cycle == 2").query(
        "metric == 'ari_codes'"
    )
    row = row.iloc[0]
    assert row["n_seeds"] == 3
    assert row["diff_mean"] == pytest.approx(d.mean(), abs=1e-12)
    assert row["diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3), rel=1e-9)
    assert row["treated_mean"] == pytest.approx(t.mean()) and row["control_mean"] == pytest.approx(
        c.mean()
    )
    assert row["diff_mean"] == pytest.approx(0.2, abs=0.02)


def _two_strategies(treated: list[float], control: list[float], cycle: int = 1) -> pd.DataFrame:
    rows = []
    for seed, (t, c) in enumerate(zip(treated, control, strict=True)):
        rows.append({"seed": seed, "strategy": "per_class", "cycle": cycle, "ari_codes": t})
        rows.append({"seed": seed, "strategy": "none", "cycle": cycle, "ari_codes": c})
    return pd.DataFrame(rows)


def test_check_edge_cases_one_seed_and_zero_se():
    one = check_against_controls(_two_strategies([0.9], [0.1]), metrics=["ari_codes"])
    assert len(one) == 1 and one["n_seeds"].item() == 1
    assert one["diff_mean"].item() == pytest.approx(0.8) and math.isnan(one["diff_se"].item())
    assert not one["rises"].item() and not one["improves"].item()  # untested with one seed
    # exact binary fractions: every seed the same difference, so the SE is exactly 0
    control = [0.25, 0.5, 0.75]
    up = check_against_controls(_two_strategies([v + 0.125 for v in control], control))
    row = up[up["metric"] == "ari_codes"].iloc[0]
    assert row["diff_se"] == 0.0 and row["diff_mean"] == 0.125
    assert row["rises"] and row["improves"] and not row["falls"]
    same = check_against_controls(_two_strategies(control, control), metrics=["ari_codes"])
    assert same["diff_se"].item() == 0.0 and not same["rises"].item()
    assert not same["falls"].item()
    down = check_against_controls(
        _two_strategies([v - 0.125 for v in control], control), metrics=["ari_codes"]
    )
    assert not down["rises"].item() and down["falls"].item() and not down["improves"].item()
    # pairing is by seed: a seed without the control's value is left out
    frame = _two_strategies([0.9, 0.8, 0.7], [0.1, np.nan, 0.2])
    paired = check_against_controls(frame, metrics=["ari_codes"])
    assert paired["n_seeds"].item() == 2 and paired["diff_mean"].item() == pytest.approx(0.65)
    # a metric not measured gives rows without seeds
    missing = check_against_controls(frame, metrics=["u_codes_alive"])
    assert missing["n_seeds"].item() == 0 and not missing["rises"].item()
    assert (
        "u_codes_alive (higher is better): has no paired values" in verdict_lines(missing, None)[0]
    )


def test_check_lower_is_better_tests_falls():
    frame = _two_strategies([0.5, 0.7, 0.6], [1.0, 1.1, 1.05]).rename(
        columns={"ari_codes": "davies_bouldin_codes"}
    )
    row = check_against_controls(frame, metrics=["davies_bouldin_codes"]).iloc[0]
    assert row["better"] == "lower"
    assert row["falls"] and row["improves"] and not row["rises"]
    lines = verdict_lines(check_against_controls(frame, metrics=["davies_bouldin_codes"]), None)
    assert lines[0].startswith(
        "per_class, davies_bouldin_codes (lower is better): falls against none in the only "
        "cycle (1). cycle 1: falls against none (-0.450 ± 0.029 SE)"
    )


# ----- accuracy check -----------------------------------------------------------------------------


def test_accuracy_check(cycles):
    acc = accuracy_check(cycles)
    assert list(acc.columns) == list(ACCURACY_COLUMNS)
    assert len(acc) == 4 * 3
    left = acc[~acc["within"]]
    assert list(zip(left["strategy"], left["cycle"], strict=True)) == [("per_example", 3)]
    a = cycles.query("strategy == 'per_example' and cycle == 3").set_index("seed")["accuracy"]
    b = cycles.query("strategy == 'per_example' and cycle == 0").set_index("seed")["accuracy"]
    row = left.iloc[0]
    assert row["diff_mean"] == pytest.approx((a - b).mean(), abs=1e-12)
    assert row["diff_se"] == pytest.approx((a - b).std(ddof=1) / math.sqrt(3), rel=1e-9)
    assert row["accuracy_cycle0"] == pytest.approx(b.mean())
    wide = accuracy_check(cycles, tolerance=0.05)
    assert wide["within"].all() and (wide["tolerance"] == 0.05).all()
    assert accuracy_check(cycles.drop(columns=["accuracy"])).empty


def test_verdict_lines(cycles):
    lines = verdict_lines(check_against_controls(cycles), accuracy_check(cycles))
    assert len(lines) == 2 * 2 + 4  # treated x metric, then one accuracy line per strategy
    assert lines[0].startswith(
        "per_class, ari_codes (higher is better): rises against both controls in every cycle "
        "(1–3). cycle 1: rises against random (+0.1"
    )
    assert "and against none (+0." in lines[0] and lines[0].endswith("(3 seeds, paired by seed).")
    assert lines[1].startswith("per_class, u_codes_alive (higher is better): rises against both")
    assert lines[2].startswith(
        "per_example, ari_codes (higher is better): does not rise against either control in any "
        "cycle (1–3). cycle 1: does not rise against random ("
    )
    assert lines[4].startswith(
        "per_class: mean accuracy stays within ±2 points of cycle 0 in every cycle (1–3"
    )
    assert lines[5].startswith(
        "per_example: mean accuracy leaves ±2 points of cycle 0 in cycle 3 ("
    )
    assert lines[5].endswith("it stays within in cycles 1 and 2.")
    # mixed evidence: rises against one control only, and an untestable single seed
    frame = cycles[cycles["seed"] == 0]
    single = verdict_lines(check_against_controls(frame), accuracy_check(frame))
    assert single[0].startswith("per_class, ari_codes (higher is better): cannot be tested")
    assert "1 seed, no SE" in single[0]
    assert verdict_lines(check_against_controls(cycles.iloc[:0]), accuracy_check(cycles.iloc[:0]))[
        0
    ].startswith("No method check")


def test_verdict_mixed_controls():
    rows = []
    for seed, (t, r, n) in enumerate([(0.9, 0.1, 0.9), (0.8, 0.2, 0.85), (0.85, 0.15, 0.8)]):
        for strategy, v in (("per_class", t), ("random", r), ("none", n)):
            rows.append({"seed": seed, "strategy": strategy, "cycle": 1, "ari_codes": v})
    checks = check_against_controls(pd.DataFrame(rows), metrics=["ari_codes"])
    line = verdict_lines(checks, None)[0]
    assert "rises against both controls in no cycle (1). cycle 1:" in line
    assert (
        "cycle 1: rises against random (+0.700 ± 0.058 SE) but not against none (+0.000 ± 0.029 SE)"
        in line
    )


# ----- figures, report, tables, console -----------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, cycles) -> Path:
    frame = cycles.copy()
    odd = frame[frame["strategy"] == "none"].copy()
    odd["strategy"] = "odd<b>"
    frame = pd.concat([frame, odd], ignore_index=True)
    frame["dataset"] = "sst<2>"
    meta = {
        "name": "run <one>",
        "config": "model:\n  name: tiny <bert>\ncycle:\n  cycles: 3\n",
        "versions": {"torch": "2.13.0", "saelab": "0.9"},
        "timings": {"finetune": 30.0},
        "seconds": 99.5,
    }
    out = tmp_path_factory.mktemp("ception") / "run"
    return render_ception_report(out, frame, meta)


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory, cycles) -> tuple[Path, list[PlotFile]]:
    out = tmp_path_factory.mktemp("plots")
    (out / "perplexity.png").write_bytes(b"old")  # an old file of a metric now empty
    return out, plot_cycles(summarize(cycles), out)


def test_plot_cycles_writes_valid_figures(cycles, plotted, tmp_path):
    summary = summarize(cycles)
    out, figures = plotted
    assert all(isinstance(f, PlotFile) for f in figures)
    names = [f.name for f in figures]
    assert names[0] == "overview" and set(names[1:]) == set(summary["metric"])
    drawn = [f for f in figures if f.drawn]
    assert {f.name for f in figures if not f.drawn} == {"perplexity"}
    assert "no values" in next(f for f in figures if f.name == "perplexity").reason
    assert not (out / "perplexity.png").exists()
    for f in drawn:
        assert f.png == out / f"{f.name}.png" and f.png.read_bytes()[:8] == PNG_MAGIC
        assert f.svg is not None and "<svg" in f.svg.read_text("utf-8")[:2000]
    ari = next(f for f in figures if f.name == "ari_codes")
    assert ari.title == "ARI of k-means on SAE codes" and "3 seeds" in ari.caption
    assert "(lower is better)" not in ari.svg.read_text("utf-8")
    # a lower-is-better metric says so on the y axis (SVG text is kept as text)
    low = cycles.assign(sae_mse=0.1 + 0.01 * cycles["cycle"])
    only = plot_cycles(summarize(low, ["sae_mse"]), tmp_path)
    assert [f.name for f in only] == ["overview", "sae_mse"] and not only[0].drawn
    mse = only[1]
    assert "SAE MSE (lower is better)" in mse.svg.read_text("utf-8")


def test_report_sections_and_escaping(report):
    text = report.read_text("utf-8")
    assert report.name == "report.html"
    for key in ("check", "metrics", "plots", "run"):
        assert f'<section id="{key}">' in text
    assert text.index('id="check"') < text.index('id="metrics"') < text.index('id="plots"')
    assert "saelab ception report: run &lt;one&gt;" in text and "<one>" not in text
    assert "odd&lt;b&gt;" in text and "<b>odd" not in text and "odd<b>" not in text
    assert "sst&lt;2&gt;" in text and "tiny &lt;bert&gt;" in text
    assert "<td>torch</td><td>2.13.0</td>" in text and "saelab_version (cycle table)" in text
    assert "<script" not in text.lower() and not re.search(r"""(src|href)=["']?https?:""", text)
    assert "per_class, ari_codes (higher is better): rises against both controls" in text
    assert "4.30 SE" in text  # the rule's caveat at 3 seeds
    drawn = len(list((report.parent / "plots").glob("*.png")))
    assert text.count('<img src="data:image/png;base64,') == drawn >= 7
    assert "perplexity" in text.split('<section id="plots">')[1]  # listed as not drawn
    metrics = text.split('<section id="metrics">')[1].split("</section>")[0]
    table = metrics.split('id="metric-ari_codes"')[1].split("</table>")[0]
    assert table.count("<tr") == 1 + 5  # header + 5 strategies
    assert re.search(r"<td class=\"num\">0\.\d+ \[0\.\d+, 0\.\d+\]</td>", table)


def test_ception_section_fragment(cycles, plotted):
    summary = summarize(cycles)
    checks, acc = check_against_controls(cycles), accuracy_check(cycles)
    html = ception_section(summary, checks, acc, plotted[1])
    assert html.count("<table") >= 3 and '<figure id="plot-overview">' in html
    assert "mean diff (treated − control)" in html and "within ±2.0 points" in html
    assert "<html" not in html


def test_write_tables_round_trip(cycles, tmp_path):
    paths = write_tables(cycles, tmp_path)
    expected = {
        "cycles.parquet",
        "cycles.csv",
        "summary.parquet",
        "summary.csv",
        "checks.csv",
        "accuracy_check.csv",
    }
    assert set(paths) == expected and all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)  # no temporary files
    pd.testing.assert_frame_equal(pd.read_parquet(paths["cycles.parquet"]), cycles)
    pd.testing.assert_frame_equal(
        pd.read_csv(paths["cycles.csv"]), cycles, check_dtype=False, check_exact=False
    )
    summary = summarize(cycles)
    pd.testing.assert_frame_equal(pd.read_parquet(paths["summary.parquet"]), summary)
    pd.testing.assert_frame_equal(pd.read_csv(paths["summary.csv"]), summary, check_exact=False)
    checks = pd.read_csv(paths["checks.csv"])
    pd.testing.assert_frame_equal(checks, check_against_controls(cycles), check_exact=False)
    acc = pd.read_csv(paths["accuracy_check.csv"])
    pd.testing.assert_frame_equal(acc, accuracy_check(cycles), check_exact=False)


def test_print_ception_summary_escapes_markup(cycles):
    frame = cycles.copy()
    frame.loc[frame["strategy"] == "none", "strategy"] = "none[bold]"
    buffer = io.StringIO()
    print_ception_summary(frame, Console(file=buffer, width=200, color_system=None))
    out = buffer.getvalue()
    assert "none[bold]" in out  # printed as text, not taken for markup
    assert "per_class" in out and "ARI (codes)" in out and "± " in out
    assert "per_class, ari_codes (higher is better): rises against random" in out
    assert "mean accuracy leaves ±2 points of cycle 0 in cycle 3" in out
    assert "perplexity" not in out  # not a console column
    assert "0.400 ± 0.000" in out and "e-1" not in out  # rounding noise in a constant column


def test_small_standard_errors_keep_two_digits():
    control = [0.1, 0.2, 0.3]
    treated = [c + d for c, d in zip(control, (0.3001, 0.3003, 0.3002), strict=True)]
    frame = _two_strategies(treated, control)
    line = verdict_lines(check_against_controls(frame, metrics=["ari_codes"]), None)[0]
    assert "cycle 1: rises against none (+0.300200 ± 0.000058 SE)" in line


def test_ception_report_renders_in_chromium(report, tmp_path):
    """Every figure decodes in a real browser, offline, with no console or resource error."""
    text = report.read_text("utf-8")
    check, stderr = open_in_chromium(report, tmp_path)
    assert check["errors"] == []
    assert not re.search(r":CONSOLE[:(]", stderr), stderr[-2000:]
    assert check["figures"] == len(check["loaded"]) == text.count("<img ")
    assert all(check["loaded"]), check
    assert min(check["widths"]) > 200
    assert check["tables"] == text.count("<table ")
    assert check["fetched"] == []
