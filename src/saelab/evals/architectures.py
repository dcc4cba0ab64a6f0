"""Architecture comparison (the paper's §6): which SAE gives better probes, pair by pair, per k.

Input: a long table of SAE-probe test AUCs at one layer, one row per (sae, dataset, k). For every
k and every unordered pair of SAEs (A, B), over the D datasets where both have a finite AUC at
that k (``d_i = AUC_A,i - AUC_B,i``, one point per dataset):

- ``mean_diff`` = mean_i d_i; ``mean_a`` and ``mean_b`` are the means over the same D datasets.
- ``win_rate`` = mean_i [1(d_i > 0) + 0.5 * 1(d_i = 0)]: ties (equal after rounding to 12
  decimals) count half (``saelab.report.stats.win_scores``).
- ``ci_low``, ``ci_high``: paired bootstrap percentile interval of ``mean_diff``, resampling the D
  datasets with replacement (Efron & Tibshirani 1993, ch. 13; ``saelab.report.stats
  .paired_bootstrap_ci`` with each dataset its own cluster).
- ``p_value``: two-sided Wilcoxon signed-rank test of the d_i (Wilcoxon 1945), the test Demšar
  (2006, JMLR 7, "Statistical comparisons of classifiers over multiple data sets", §3.1.3)
  recommends for two classifiers over many datasets. Zero differences are kept and their rank
  split between the positive and negative sums (``zero_method="zsplit"``, Demšar's handling),
  so tied datasets pull p towards 1 instead of being dropped; ``scipy.stats.wilcoxon`` with
  ``method="auto"`` (exact null distribution for small D without ties, else the normal
  approximation with tie correction; see its Notes for the scipy version in use). All d_i = 0
  gives p = 1. The test is on location (the median of the d_i), the interval on the mean; both
  are reported, neither replaces the other.
- ``p_holm``: Holm's step-down adjustment over every finite p-value of the table (all pairs and
  all ks together; Holm 1979), ``significant`` = ``p_holm < alpha``. Holm controls the
  family-wise error rate at ``alpha`` under any dependence between the tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from scipy import stats as sps

from saelab.errors import SaelabError
from saelab.report.html import esc, fmt_auc, fmt_ci, fmt_diff, fmt_share, fmt_value, html_table
from saelab.report.stats import paired_bootstrap_ci, win_scores

#: Name of the paired test, written in the ``test`` column.
TEST_NAME = "wilcoxon signed-rank (two-sided, zero_method=zsplit)"

REQUIRED_COLUMNS: tuple[str, ...] = ("sae", "dataset", "k", "test_auc")

COLUMNS: tuple[str, ...] = (
    "k",
    "sae_a",
    "sae_b",
    "n_datasets",
    "n_unpaired",
    "n_nan",
    "mean_a",
    "mean_b",
    "mean_diff",
    "ci_low",
    "ci_high",
    "ci_level",
    "win_rate",
    "p_value",
    "test",
    "p_holm",
    "significant",
    "alpha",
    "correction",
)
"""Columns of ``compare_architectures`` output, in order."""

_HOLM_COLUMNS = ("p_holm", "significant", "alpha", "correction")


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Holm (1979), "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 6:
    with the m finite p-values sorted ascending, p_(1) <= ... <= p_(m),
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where ``adj < alpha`` is
    Holm's step-down test at family-wise level alpha. NaN entries stay NaN and do not count in m.

    Args:
        pvalues: [n] p-values in [0, 1] (NaN allowed).

    Returns:
        [n] float64 adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"pvalues: expected values in [0, 1], got {p[finite].tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _wilcoxon_p(diff: np.ndarray, ties: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``diff`` [n]; ``ties`` [n] marks d = 0 (module docstring)."""
    if diff.size == 0:
        return float("nan")
    d = np.where(ties, 0.0, diff)  # float noise around 0 counts as a tie, as in the win rate
    if np.all(d == 0):
        return 1.0
    res = sps.wilcoxon(d, zero_method="zsplit", alternative="two-sided", method="auto")
    return float(res.pvalue)


def _check_results(results: pd.DataFrame) -> pd.DataFrame:
    """The four needed columns of ``results`` (test_auc as float64); raise on missing or duplicate keys."""
    if not isinstance(results, pd.DataFrame):
        raise SaelabError(f"results: expected a pandas DataFrame, got {type(results).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise SaelabError(
            f"results: the architecture comparison needs the columns {list(REQUIRED_COLUMNS)}; "
            f"missing {missing}"
        )
    frame = results.loc[:, list(REQUIRED_COLUMNS)].copy()
    if frame["sae"].isna().any() or frame["dataset"].isna().any() or frame["k"].isna().any():
        raise SaelabError("results: sae, dataset and k must be set on every row (found nulls)")
    frame["sae"] = frame["sae"].astype(str)
    frame["dataset"] = frame["dataset"].astype(str)
    frame["test_auc"] = pd.to_numeric(frame["test_auc"], errors="coerce").astype(np.float64)
    dup = frame.duplicated(["sae", "dataset", "k"], keep=False)
    if dup.any():
        first = frame.loc[dup, ["sae", "dataset", "k"]].iloc[0].tolist()
        raise SaelabError(
            f"results: {int(dup.sum())} rows share their (sae, dataset, k), e.g. {first}; "
            "keep one layer and one probe variant per SAE before comparing architectures"
        )
    return frame


def _k_sort_key(k: Any) -> tuple[int, float, str]:
    try:
        return (0, float(k), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(k))


def compare_architectures(
    results: pd.DataFrame,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Pairwise comparison of SAEs by their probes' test AUC over datasets, per k, Holm-corrected.

    Args:
        results: long table with columns sae, dataset, k, test_auc (one row per SAE, dataset
            and k; other columns are ignored). A repeated (sae, dataset, k) raises.
        n_boot, ci, seed: the paired bootstrap (same seed for every pair: deterministic).
        alpha: family-wise error rate of ``significant`` (Holm over all rows).

    Returns:
        One row per (k, sae_a, sae_b): ks ascending; for every k, every unordered pair of the
        SAEs that have rows at that k, sae_a before sae_b in order of first appearance in
        ``results``. Columns (``COLUMNS``): n_datasets (datasets paired: both AUCs finite),
        n_unpaired (datasets at this k with a row for only one of the two), n_nan (datasets with
        both rows dropped because an AUC is NaN), mean_a, mean_b, mean_diff (a - b), ci_low,
        ci_high, ci_level, win_rate (a beats b; ties half), p_value, test, p_holm, significant,
        alpha, correction ("holm over m tests"). Statistics are NaN where n_datasets is 0; such rows
        have no p-value and are not counted in m. Formulas in the module docstring.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")
    frame = _check_results(results)
    sae_order = list(pd.unique(frame["sae"]))
    rows: list[dict[str, Any]] = []
    for k in sorted(pd.unique(frame["k"]), key=_k_sort_key):
        at_k = frame[frame["k"] == k]
        wide = at_k.pivot(index="dataset", columns="sae", values="test_auc")
        present = at_k.assign(_one=1).pivot(index="dataset", columns="sae", values="_one")
        saes = [s for s in sae_order if s in wide.columns]
        for a, b in itertools.combinations(saes, 2):
            both = present[a].notna() & present[b].notna()
            finite = both & wide[a].notna() & wide[b].notna()
            auc_a = wide.loc[finite, a].to_numpy(np.float64)
            auc_b = wide.loc[finite, b].to_numpy(np.float64)
            datasets = wide.index[finite].to_numpy()
            diff = auc_a - auc_b
            wins = win_scores(diff)
            n = int(diff.size)
            low, high = paired_bootstrap_ci(diff, datasets, n_boot=n_boot, seed=seed, ci=ci)
            rows.append(
                {
                    "k": k,
                    "sae_a": a,
                    "sae_b": b,
                    "n_datasets": n,
                    "n_unpaired": int((present[a].notna() ^ present[b].notna()).sum()),
                    "n_nan": int((both & ~finite).sum()),
                    "mean_a": float(auc_a.mean()) if n else np.nan,
                    "mean_b": float(auc_b.mean()) if n else np.nan,
                    "mean_diff": float(diff.mean()) if n else np.nan,
                    "ci_low": low,
                    "ci_high": high,
                    "ci_level": float(ci),
                    "win_rate": float(wins.mean()) if n else np.nan,
                    "p_value": _wilcoxon_p(diff, wins == 0.5),
                    "test": TEST_NAME,
                }
            )
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in _HOLM_COLUMNS])
    p_holm = holm_adjust(table["p_value"].to_numpy(np.float64))
    m = int(np.isfinite(table["p_value"].to_numpy(np.float64)).sum())
    table["p_holm"] = p_holm
    table["significant"] = pd.Series(p_holm < alpha, index=table.index, dtype=bool)
    table["alpha"] = float(alpha)
    table["correction"] = f"holm over {m} tests"
    for col in ("n_datasets", "n_unpaired", "n_nan"):
        table[col] = table[col].astype(np.int64)
    for col in ("mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "win_rate", "p_value"):
        table[col] = table[col].astype(np.float64)
    return table[list(COLUMNS)]


# ----------------------------------------------------------------------------------- display


def _p_text(value: Any) -> str:
    """A p-value to 3 significant digits, ``<1e-04`` below that; ``–`` when missing."""
    if value is None or pd.isna(value):
        return "–"
    return "<1e-04" if float(value) < 1e-4 else f"{float(value):.3g}"


def _ci_title(table: pd.DataFrame) -> str:
    levels = pd.unique(table["ci_level"].dropna()) if "ci_level" in table else []
    return f"{100 * float(levels[0]):g}% CI" if len(levels) == 1 else "CI"


def _caption(table: pd.DataFrame) -> str:
    def joined(col: str) -> str:
        return ", ".join(fmt_value(v) for v in pd.unique(table[col].dropna()))

    return (
        "Δ = mean test AUC of A − B over the datasets both have; win: share of datasets where "
        f"A > B (ties half); CI: paired bootstrap over datasets; p: {joined('test')}; "
        f"p Holm: {joined('correction')} (all ks and pairs); "
        f"significant: p Holm < {joined('alpha')}."
    )


def print_architecture_comparison(table: pd.DataFrame, console: Console | None = None) -> None:
    """Print ``compare_architectures`` output as one rich table per k."""
    console = console or Console()
    if not console.is_terminal and console.width < 120:
        console = Console(file=console.file, width=120)  # logs and pipes: don't squeeze the table
    if table is None or table.empty:
        console.print("no SAE pairs to compare")
        return
    ci_title = _ci_title(table)
    for k, block in table.groupby("k", sort=False):
        out = Table(
            title=f"SAE architectures at k={fmt_value(k)}: paired test AUC",
            title_justify="left",
            caption=rich_escape(_caption(block)),
            caption_justify="left",
        )
        out.add_column("A", no_wrap=True)
        out.add_column("B", no_wrap=True)
        for name in ("datasets", "AUC A", "AUC B", f"Δ A−B [{ci_title}]", "win A", "p", "p Holm"):
            out.add_column(name, justify="right", no_wrap=True)
        out.add_column("sig", no_wrap=True)
        for _, r in block.iterrows():
            out.add_row(
                rich_escape(str(r["sae_a"])),
                rich_escape(str(r["sae_b"])),
                str(int(r["n_datasets"])),
                fmt_auc(r["mean_a"]),
                fmt_auc(r["mean_b"]),
                f"{fmt_diff(r['mean_diff'])} {fmt_ci(r['ci_low'], r['ci_high'])}",
                fmt_share(r["win_rate"]),
                _p_text(r["p_value"]),
                _p_text(r["p_holm"]),
                "yes" if bool(r["significant"]) else "no",
            )
        console.print(out)


def comparison_html(table: pd.DataFrame) -> str:
    """An HTML fragment (a note and one table) of ``compare_architectures`` output; all text escaped."""
    if table is None or table.empty:
        return '<p class="note">No SAE pairs to compare.</p>'
    ci_title = _ci_title(table)
    headers = [
        "k",
        "SAE A",
        "SAE B",
        "datasets",
        "mean test AUC A",
        "mean test AUC B",
        "mean diff (A − B)",
        ci_title,
        "win rate A",
        "p",
        "p Holm",
        "significant",
    ]
    numeric = [True, False, False, True, True, True, True, False, True, True, True, False]
    rows, classes = [], []
    previous_k = None
    for _, r in table.iterrows():
        rows.append(
            [
                fmt_value(r["k"]),
                str(r["sae_a"]),
                str(r["sae_b"]),
                fmt_value(r["n_datasets"]),
                fmt_auc(r["mean_a"]),
                fmt_auc(r["mean_b"]),
                fmt_diff(r["mean_diff"]),
                fmt_ci(r["ci_low"], r["ci_high"]),
                fmt_share(r["win_rate"]),
                _p_text(r["p_value"]),
                _p_text(r["p_holm"]),
                "yes" if bool(r["significant"]) else "no",
            ]
        )
        classes.append("first" if previous_k is not None and r["k"] != previous_k else "")
        previous_k = r["k"]
    note = f'<p class="note">{esc(_caption(table))}</p>'
    return note + html_table(headers, rows, numeric, classes, css_class="data architectures")
