"""Architecture comparison: pairing, win rates, bootstrap intervals, Wilcoxon p-values, Holm."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from saelab.errors import SaelabError
from saelab.evals.architectures import (
    COLUMNS,
    TEST_NAME,
    compare_architectures,
    comparison_html,
    holm_adjust,
    print_architecture_comparison,
)
from saelab.report.stats import paired_bootstrap_ci


def _long(aucs: dict[str, list[float]], k: int = 16, prefix: str = "d") -> pd.DataFrame:
    """Long table from {sae: [auc of dataset 0, 1, ...]} at one k (NaN entries kept as rows)."""
    rows = [
        {"sae": sae, "dataset": f"{prefix}{i}", "k": k, "test_auc": v, "layer": 3}
        for sae, values in aucs.items()
        for i, v in enumerate(values)
    ]
    return pd.DataFrame(rows)


def _noisy(n: int = 30, shift: float = 0.0, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.9, n)
    return {
        "a": list(base + shift + rng.normal(0, 0.01, n)),
        "b": list(base + rng.normal(0, 0.01, n)),
    }


# ----------------------------------------------------------------------------------- Holm


def test_holm_matches_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    got = holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=0, atol=1e-15)
    # capped at 1; NaN stays NaN and does not count in m (m = 2 here)
    got = holm_adjust([0.6, np.nan, 0.2])
    np.testing.assert_allclose(got, [0.6, np.nan, 0.4])
    assert holm_adjust([0.7, 0.8]).tolist() == [1.0, 1.0]
    assert holm_adjust([]).shape == (0,)
    with pytest.raises(ValueError, match="pvalues"):
        holm_adjust([0.1, 1.5])


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40):
        p = rng.uniform(0, 0.2, n) ** 2
        p[: n // 3] = p[0]  # ties
        expected = multitest.multipletests(p, alpha=0.05, method="holm")[1]
        np.testing.assert_allclose(holm_adjust(p), expected, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------- statistics


def test_win_rate_counts_ties_half_and_means_are_paired():
    # diffs a - b: +0.1, 0 (exact), 0 up to float noise (0.1 + 0.2 vs 0.3), -0.05
    table = compare_architectures(
        _long({"a": [0.9, 0.8, 0.1 + 0.2, 0.6], "b": [0.8, 0.8, 0.3, 0.65]}), n_boot=200
    )
    assert len(table) == 1
    r = table.iloc[0]
    assert (r.sae_a, r.sae_b, r.k, r.n_datasets) == ("a", "b", 16, 4)
    assert r.win_rate == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert r.mean_a == pytest.approx((0.9 + 0.8 + 0.3 + 0.6) / 4)
    assert r.mean_b == pytest.approx((0.8 + 0.8 + 0.3 + 0.65) / 4)
    assert r.mean_diff == pytest.approx(0.05 / 4)
    assert r.test == TEST_NAME
    assert list(table.columns) == list(COLUMNS)


def test_constant_difference_gives_a_point_interval():
    n = 15
    base = np.linspace(0.6, 0.9, n)
    table = compare_architectures(_long({"a": list(base + 0.03), "b": list(base)}), n_boot=500)
    r = table.iloc[0]
    assert r.mean_diff == pytest.approx(0.03)
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.03), pytest.approx(0.03))
    assert r.win_rate == 1.0


def test_two_datasets_interval_spans_both_differences():
    # diffs 0.1 and 0.3: a resample's mean is 0.1, 0.2 or 0.3 with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are 0.1 and 0.3
    table = compare_architectures(_long({"a": [0.8, 0.9], "b": [0.7, 0.6]}), n_boot=4000)
    r = table.iloc[0]
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.1), pytest.approx(0.3))


def test_interval_is_the_paired_bootstrap_of_the_differences():
    aucs = _noisy(n=25, shift=0.01, seed=4)
    table = compare_architectures(_long(aucs), n_boot=700, seed=9, ci=0.9)
    diff = np.array(aucs["a"]) - np.array(aucs["b"])
    expected = paired_bootstrap_ci(diff, [f"d{i}" for i in range(25)], n_boot=700, seed=9, ci=0.9)
    r = table.iloc[0]
    assert (r.ci_low, r.ci_high) == pytest.approx(expected)
    assert r.ci_level == 0.9
    assert r.ci_low < diff.mean() < r.ci_high


def _exact_signed_rank_p(diff: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank statistic by enumerating all 2^n sign patterns."""
    ranks = np.argsort(np.argsort(np.abs(diff))) + 1.0  # distinct |diff|: plain ranks
    centre = ranks.sum() / 2
    observed = abs(ranks[diff > 0].sum() - centre)
    hits = 0
    for signs in itertools.product((0, 1), repeat=diff.size):
        w_plus = ranks[np.array(signs, dtype=bool)].sum()
        hits += abs(w_plus - centre) >= observed - 1e-12
    return hits / 2**diff.size


def test_p_value_is_the_exact_signed_rank_test():
    rng = np.random.default_rng(5)
    diff = rng.normal(0.01, 0.02, 9)
    b = rng.uniform(0.6, 0.8, 9)
    table = compare_architectures(_long({"a": list(b + diff), "b": list(b)}), n_boot=100)
    assert table.iloc[0].p_value == pytest.approx(_exact_signed_rank_p(diff), rel=1e-9)
    # all ten differences positive and distinct: only the all-positive and all-negative sign
    # patterns are as extreme, p = 2 / 2^10
    b = np.linspace(0.6, 0.8, 10)
    table = compare_architectures(
        _long({"a": list(b + np.linspace(0.01, 0.05, 10)), "b": list(b)}), n_boot=100
    )
    assert table.iloc[0].p_value == pytest.approx(2 / 1024)


def test_clearly_different_pair_is_significant_identical_pair_is_not():
    aucs = _noisy(n=40, shift=0.05, seed=1)
    aucs["c"] = list(aucs["b"])  # c is b: every difference ties
    table = compare_architectures(_long(aucs), n_boot=300).set_index(["sae_a", "sae_b"])
    ab, bc = table.loc[("a", "b")], table.loc[("b", "c")]
    assert ab.p_value < 1e-6 and ab.significant and ab.win_rate == 1.0
    assert bc.p_value == 1.0 and bc.p_holm == 1.0 and not bc.significant
    assert bc.win_rate == 0.5 and bc.mean_diff == 0.0
    assert (bc.ci_low, bc.ci_high) == (0.0, 0.0)


def test_holm_runs_over_every_pair_and_k():
    frames = [
        _long(_noisy(n=12, shift=0.02, seed=2), k=128),
        _long(_noisy(n=12, shift=0.0, seed=3), k=16),
    ]
    extra = _long({"c": list(np.linspace(0.55, 0.95, 12))}, k=16)
    table = compare_architectures(pd.concat([*frames, extra]), n_boot=200, alpha=0.01)
    # ks ascending; SAEs in order of first appearance (a, b, then c)
    assert table[["k", "sae_a", "sae_b"]].values.tolist() == [
        [16, "a", "b"],
        [16, "a", "c"],
        [16, "b", "c"],
        [128, "a", "b"],
    ]
    np.testing.assert_allclose(table.p_holm, holm_adjust(table.p_value.to_numpy()))
    assert (table.correction == "holm over 4 tests").all()
    assert (table.significant == (table.p_holm < 0.01)).all()
    assert (table.p_holm >= table.p_value).all()


def test_pairing_drops_unmatched_datasets_and_nan_aucs():
    a = [0.9, 0.8, 0.7, np.nan, 0.6]
    b = [0.85, 0.8, 0.75, 0.7, 0.5]
    frame = _long({"a": a, "b": b})
    frame = frame[~((frame.sae == "b") & (frame.dataset == "d0"))]  # b lacks d0
    frame = pd.concat([frame, _long({"a": [0.66]}, prefix="x")])  # only a has x0
    r = compare_architectures(frame, n_boot=200).iloc[0]
    # paired: d1, d2, d4 (d0 and x0 unmatched, d3 has a NaN AUC)
    assert (r.n_datasets, r.n_unpaired, r.n_nan) == (3, 2, 1)
    assert r.mean_a == pytest.approx((0.8 + 0.7 + 0.6) / 3)
    assert r.mean_b == pytest.approx((0.8 + 0.75 + 0.5) / 3)
    assert r.win_rate == pytest.approx((0.5 + 0 + 1) / 3)


def test_pair_without_common_datasets_has_no_p_value_and_is_not_counted():
    frame = pd.concat([_long({"a": [0.7, 0.8]}), _long({"b": [0.6, 0.9]}, prefix="x")])
    frame = pd.concat([frame, _long({"c": [0.5, 0.6]})])
    table = compare_architectures(frame, n_boot=100).set_index(["sae_a", "sae_b"])
    ab = table.loc[("a", "b")]
    assert ab.n_datasets == 0 and ab.n_unpaired == 4
    assert np.isnan(ab.mean_diff) and np.isnan(ab.p_value) and np.isnan(ab.ci_low)
    assert not ab.significant
    assert table.loc[("b", "c")].n_datasets == 0 and table.loc[("a", "c")].n_datasets == 2
    assert (table.correction == "holm over 1 tests").all()  # only a-c has a p-value


def test_deterministic_for_a_seed():
    frame = pd.concat(
        [_long(_noisy(n=20, shift=0.005, seed=s), k=k) for s, k in ((7, 16), (8, 64))]
    )
    first = compare_architectures(frame, n_boot=300, seed=11)
    # the same rows in another order within each SAE (SAE order of first appearance kept)
    shuffled = pd.concat(
        [g.sample(frac=1.0, random_state=0) for _, g in frame.groupby("sae", sort=False)]
    )
    again = compare_architectures(shuffled, n_boot=300, seed=11)
    pd.testing.assert_frame_equal(first, again)
    other = compare_architectures(frame, n_boot=300, seed=12)
    assert not np.allclose(first.ci_low, other.ci_low)
    pd.testing.assert_series_equal(first.p_value, other.p_value)


def test_bad_input_names_the_problem():
    with pytest.raises(SaelabError, match="test_auc"):
        compare_architectures(pd.DataFrame({"sae": ["a"], "dataset": ["d"], "k": [1]}))
    dup = pd.concat([_long({"a": [0.7]}), _long({"a": [0.8]})])
    with pytest.raises(SaelabError, match="share their"):
        compare_architectures(dup)
    with pytest.raises(ValueError, match="alpha"):
        compare_architectures(_long({"a": [0.7]}), alpha=1.5)
    empty = compare_architectures(_long({"a": [0.7, 0.8]}))
    assert empty.empty and list(empty.columns) == list(COLUMNS)


# ----------------------------------------------------------------------------------- display


def test_console_and_html_show_the_pairs_escaped():
    aucs = _noisy(n=10, shift=0.05, seed=6)
    aucs["<b>x&y</b>[red]"] = aucs.pop("b")  # HTML and rich markup in an SAE id
    table = compare_architectures(_long(aucs), n_boot=100)
    buf = io.StringIO()
    print_architecture_comparison(table, Console(file=buf, width=400))
    text = buf.getvalue()
    assert "k=16" in text and "<b>x&y</b>[red]" in text and "holm over 1 tests" in text
    assert "+0.05" in text and "100.0%" in text

    html = comparison_html(table)
    assert "&lt;b&gt;x&amp;y&lt;/b&gt;[red]" in html and "<b>" not in html
    assert html.count("<tr>") + html.count("<tr ") == 2  # header and one pair
    assert "holm over 1 tests" in html and "wilcoxon signed-rank" in html
    assert "No SAE pairs" in comparison_html(table.iloc[:0])
