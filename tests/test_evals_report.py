"""Eval sweep figures and report: Pareto fronts, L0-vs-metric plots, report.html in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from browser import open_in_chromium
from saelab.evals.architectures import compare_architectures
from saelab.evals.plots import L0, METRICS, l0_axis_scale, pareto_front, plot_l0_vs_metrics
from saelab.evals.report import _generic_comparison_html, render_eval_report

HOOK = "blocks.3.hook_resid_post"
ARCHITECTURES = ("topk", "batchtopk", "jumprelu")
WIDTHS = (3072, 6144)


def _brute_front(x, y, minimize_x, maximize_y) -> list[int]:
    """Every valid point that no other valid point dominates, sorted by (x, index)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    sx = 1.0 if minimize_x else -1.0
    sy = -1.0 if maximize_y else 1.0
    valid = [i for i in range(len(x)) if not (np.isnan(x[i]) or np.isnan(y[i]))]
    front = []
    for i in valid:
        dominated = False
        for j in valid:
            no_worse = sx * x[j] <= sx * x[i] and sy * y[j] <= sy * y[i]
            better = sx * x[j] < sx * x[i] or sy * y[j] < sy * y[i]
            dominated |= no_worse and better
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (x[i], i))


def test_pareto_front_by_hand():
    # (4, .7) is dominated by (3, .7); (2, .4) by (1, .5)
    assert pareto_front([1, 2, 3, 4], [0.5, 0.4, 0.7, 0.7]).tolist() == [0, 2]
    # lower is better: (3, .2) beats (4, .2); (1, .5) has the lowest L0
    assert pareto_front([4, 1, 3, 2], [0.2, 0.5, 0.2, 0.6], maximize_y=False).tolist() == [1, 2]
    assert pareto_front([1, 1], [1.0, 1.0]).tolist() == [0, 1]  # equal points: both
    assert pareto_front([np.nan, 2, 1], [9.0, 1.0, np.nan]).tolist() == [1]
    assert pareto_front([], []).tolist() == []
    with pytest.raises(ValueError, match="shapes"):
        pareto_front([1, 2], [1])


_value = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")))


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(st.tuples(_value, _value), max_size=14),
    minimize_x=st.booleans(),
    maximize_y=st.booleans(),
)
def test_pareto_front_matches_brute_force(points, minimize_x, maximize_y):
    """Small integer grids force ties in x, in y and whole duplicate points."""
    x = [p[0] for p in points]
    y = [p[1] for p in points]
    got = pareto_front(x, y, minimize_x=minimize_x, maximize_y=maximize_y).tolist()
    assert got == _brute_front(x, y, minimize_x, maximize_y)


def test_l0_axis_scale():
    assert l0_axis_scale([10, 100]) == "linear"  # exactly 10x
    assert l0_axis_scale([10, 101, np.nan]) == "log"
    assert l0_axis_scale([0, 50, 500]) == "linear"  # log cannot show 0
    assert l0_axis_scale([]) == "linear"


def synthetic_merged(seed: int = 0) -> pd.DataFrame:
    """3 architectures x 2 widths, every metric column of the contract, deterministic values."""
    rng = np.random.default_rng(seed)
    rows = []
    for a, arch in enumerate(ARCHITECTURES):
        for w, width in enumerate(WIDTHS):
            l0 = 8.0 * 4 ** (a + w) * (1 + 0.05 * rng.random())  # 8 .. ~1000: log axis
            ev = 1 - 1 / np.sqrt(l0) - 0.02 * rng.random()
            rows.append(
                {
                    "sae": f"{arch}-{width}",
                    "architecture": arch,
                    "d_sae": width,
                    "hook": HOOK,
                    "core.l0": l0,
                    "core.explained_variance": ev,
                    "core.explained_variance_legacy": ev - 0.05,
                    "core.mse": 1 - ev,
                    "core.cossim": np.sqrt(ev),
                    "core.ce_loss_score": ev - 0.1,
                    "core.kl_div_score": ev - 0.05,
                    "core.dead_fraction": 0.1 * rng.random(),
                    "sparse_probing.sae_top_1_test_accuracy": 0.7 + 0.1 * rng.random(),
                    "sparse_probing.sae_top_5_test_accuracy": 0.8 + 0.1 * rng.random(),
                    "sparse_probing.paper_auc_k16": 0.85 + 0.1 * rng.random(),
                    "absorption.mean_absorption_fraction_score": 0.2 * rng.random(),
                    "absorption.mean_full_absorption_score": 0.1 * rng.random(),
                }
            )
    return pd.DataFrame(rows)


def test_plots_for_every_metric_present(tmp_path):
    merged = synthetic_merged()
    figures = {f.name: f for f in plot_l0_vs_metrics(merged, tmp_path)}
    # every known metric is listed; only the pooled cosine (an encoder-only metric) is absent
    assert len(figures) == len(METRICS)
    not_drawn = {n: f.reason for n, f in figures.items() if not f.drawn}
    assert not_drawn == {
        "l0_vs_core_pooled_cossim_score": "no core.pooled_cossim_score column (eval not run or n/a)"
    }
    for name, f in figures.items():
        if f.drawn:
            assert f.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            svg = f.svg.read_text("utf-8")
            assert all(arch in svg for arch in ARCHITECTURES), name
            assert "L0 (mean number of active latents per token)" in svg
            assert "Pareto front per architecture" in svg  # each architecture has 2 points
            assert "logarithmic" in f.caption  # L0 spans ~8 to ~1000
    ev = figures["l0_vs_core_explained_variance"]
    assert "Pareto front, all SAEs (higher is better)" in ev.svg.read_text("utf-8")
    absorption = figures["l0_vs_absorption_mean_absorption_fraction_score"]
    assert "Pareto front, all SAEs (lower is better)" in absorption.svg.read_text("utf-8")
    assert "Lower is better" in absorption.caption
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{ext}" for n, f in figures.items() if f.drawn for ext in ("png", "svg")
    )


def test_plots_with_missing_and_nan_columns(tmp_path):
    merged = synthetic_merged().drop(
        columns=["core.ce_loss_score", "absorption.mean_full_absorption_score"]
    )
    merged["core.kl_div_score"] = np.nan  # eval ran, nothing measured
    merged["absorption.mean_absorption_fraction_score"] = np.nan
    merged["absorption.skipped_reason"] = "no whole-word tokens"  # as `saelab merge` writes it
    merged.loc[2, "sparse_probing.sae_top_1_test_accuracy"] = np.nan
    merged["sparse_probing.sae_top_2_test_accuracy"] = 0.75  # a k not in the table
    merged.loc[3, "hook"] = "blocks.5.hook_resid_post"  # a second hook: a second panel
    (tmp_path / "l0_vs_core_kl_div_score.png").write_bytes(b"stale")
    figures = {f.name: f for f in plot_l0_vs_metrics(merged, tmp_path)}
    assert figures["l0_vs_core_ce_loss_score"].reason == (
        "no core.ce_loss_score column (eval not run or n/a)"
    )
    assert figures["l0_vs_core_kl_div_score"].reason == (
        "no SAE has both core.l0 and core.kl_div_score"
    )
    assert not (tmp_path / "l0_vs_core_kl_div_score.png").exists()
    assert figures["l0_vs_absorption_mean_full_absorption_score"].reason == (
        "no absorption.mean_full_absorption_score column (absorption skipped: no whole-word tokens)"
    )
    assert figures["l0_vs_absorption_mean_absorption_fraction_score"].reason.endswith(
        "absorption.mean_absorption_fraction_score (absorption skipped: no whole-word tokens)"
    )
    top1 = figures["l0_vs_sparse_probing_sae_top_1_test_accuracy"]
    assert top1.drawn and "1 SAE(s) without a value left out." in top1.caption
    top2 = figures["l0_vs_sparse_probing_sae_top_2_test_accuracy"]
    assert top2.drawn and "k = 2" in top2.caption
    svg = figures["l0_vs_core_explained_variance"].svg.read_text("utf-8")
    assert HOOK in svg and "blocks.5.hook_resid_post" in svg

    no_l0 = plot_l0_vs_metrics(merged.drop(columns=[L0.column]), tmp_path / "none")
    assert {f.reason for f in no_l0} == {"no core.l0 column (L0 comes from core)"}


def _comparison() -> pd.DataFrame:
    pairs = [("topk-3072", "batchtopk-3072"), ("topk-3072", "jumprelu-3072")]
    rows = []
    for k in (1, 16):
        for i, (a, b) in enumerate(pairs):
            rows.append(
                {
                    "k": k,
                    "sae_a": a,
                    "sae_b": b,
                    "n_datasets": 113,
                    "mean_diff": 0.0123 * (i + 1),
                    "ci_low": 0.005,
                    "ci_high": 0.02 * (i + 1),
                    "win_rate": 0.625,
                    "p_value": 0.004,
                    "p_holm": 0.016,
                    "significant": True,
                    "correction": "holm over 4 comparisons",
                }
            )
    return pd.DataFrame(rows)


def test_generic_comparison_table():
    text = _generic_comparison_html(_comparison())
    assert text.count("<tr>") == 5  # header + 4 rows
    assert '<td class="num">+0.0246</td>' in text and "<td>[+0.0050, +0.0400]</td>" in text
    assert '<td class="num">62.5%</td>' in text and '<td class="num">0.016</td>' in text
    assert "<td>yes</td>" in text and "Correction: holm over 4 comparisons." in text


META = {
    "name": "sweep <six>",
    "model": "tiny-minilm",
    "when": "2025-01-02T03:04:05+0000",
    "versions": {"saelab": "0.1.0", "torch": "2.13.0"},
    "config": {"saes": ["topk-3072"], "n_tokens": 200000},
}


def _probe_aucs(saes: list[str]) -> pd.DataFrame:
    """Per (sae, dataset, k) test AUCs: the long table ``compare_architectures`` reads."""
    rng = np.random.default_rng(1)
    rows = [
        {"sae": sae, "dataset": f"d{d}", "k": k, "test_auc": 0.7 + 0.02 * i + 0.05 * rng.random()}
        for k in (1, 16)
        for i, sae in enumerate(saes)
        for d in range(12)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    merged = synthetic_merged()
    merged.loc[0, "core.kl_div_score"] = np.nan
    comparison = compare_architectures(_probe_aucs(list(merged["sae"][:3])), n_boot=50)
    out = tmp_path_factory.mktemp("eval") / "eval"
    return render_eval_report(out, merged, comparison, META), merged


def test_report_is_one_self_contained_file(report):
    path, merged = report
    assert path.name == "report.html"
    text = path.read_text("utf-8")
    drawn = len(METRICS) - 1  # all but the pooled cosine
    assert text.count('<img src="data:image/png;base64,') == text.count("<img ") == drawn
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "url(" not in text and "@import" not in text and "<script" not in text.lower()
    assert "saelab eval report: sweep &lt;six&gt;" in text and "<six>" not in text
    assert "model tiny-minilm" in text and f"hook {HOOK}" in text and "6 SAEs" in text
    assert "<td>torch</td><td>2.13.0</td>" in text and "n_tokens: 200000" in text
    # the SAE table: one row per SAE, a value that could be wrong (4 significant digits)
    table = text.split('<table class="data eval-saes">')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(merged)
    row = merged.iloc[3]
    assert f"<td>{row['sae']}</td>" in table
    assert f'<td class="num">{row["core.explained_variance"]:.4g}</td>' in table
    assert "<th>EV ↑</th>" in table and "<th>absorption ↓</th>" in table
    assert '<td class="num">–</td>' in table  # the NaN KL score of the first SAE
    assert "Not evaluated: core.pooled_cossim_score." in text
    # comparison, definitions
    comparison = text.split('<section id="comparison">')[1].split("</section>")[0]
    assert comparison.count("<tr") == 1 + 2 * 3  # 2 ks x 3 pairs of the first 3 SAEs
    assert "topk-3072" in comparison and "batchtopk-3072" in comparison and "holm" in comparison
    assert "docs/METRICS.md" in text
    for words in ("(CE_zero − CE_sae) / (CE_zero − CE_clean)", "(KL_zero − KL_sae) / KL_zero"):
        assert words in text
    assert "E‖x‖² − ‖E x‖²" in text and "pooled output embedding" in text


def test_report_without_comparison(tmp_path):
    merged = synthetic_merged().drop(columns=[c for c in synthetic_merged() if "." in c][1:])
    merged["absorption.skipped_reason"] = "no <whole-word> tokens"
    text = render_eval_report(tmp_path, merged).read_text("utf-8")
    assert "No architecture comparison was run." in text
    assert "absorption skipped: no &lt;whole-word&gt; tokens." in text
    assert "<img " not in text and "not drawn: no core.explained_variance column" in text


def test_eval_report_renders_in_chromium(report, tmp_path):
    """Every L0 figure decodes in a real browser, offline, with no console or resource error."""
    path, _ = report
    text = path.read_text("utf-8")
    check, stderr = open_in_chromium(path, tmp_path)
    assert check["errors"] == []
    assert not re.search(r":CONSOLE[:(]", stderr), stderr[-2000:]  # any console message
    assert check["figures"] == len(check["loaded"]) == len(METRICS) - 1
    assert all(check["loaded"]), check
    assert min(check["widths"]) > 200
    assert check["tables"] == text.count("<table ")
    assert check["fetched"] == []
