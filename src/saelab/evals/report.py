"""The eval report: one self-contained HTML file for a sweep of SAEs (tables, L0 figures, stats).

``render_eval_report`` writes ``report.html`` from the merged eval table (one row per SAE, metric
columns ``<eval>.<metric>``): a header (name, model, hook, date, versions), the SAEs with their
headline metrics, L0 against each metric with Pareto fronts (``saelab.evals.plots``), the pairwise
architecture comparison when given, and the metric definitions in words (``docs/METRICS.md`` puts
them beside SAEBench's and SAELens's). Figures are PNG data URIs, text is HTML-escaped, nothing is
fetched and no script runs, as in the run report (``saelab.report.html``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from saelab.evals.architectures import COLUMNS as COMPARISON_COLUMNS
from saelab.evals.architectures import comparison_html
from saelab.evals.plots import (
    L0,
    METRICS,
    Metric,
    metrics_for,
    plot_l0_vs_metrics,
    skip_reasons,
)
from saelab.io import write_text_atomic
from saelab.report.html import (
    REPORT_NAME,
    esc,
    fmt_ci,
    fmt_diff,
    fmt_share,
    fmt_value,
    html_page,
    html_table,
    is_missing,
    plots_section,
)
from saelab.report.plots import PlotFile

#: Identity columns of the SAE table, with their headers.
_ID_COLUMNS = (
    ("sae", "SAE"),
    ("architecture", "architecture"),
    ("d_sae", "width"),
    ("hook", "hook"),
)
#: Sort order of the SAE table rows (those present).
_SORT = ("hook", "architecture", "d_sae", L0.column)

#: The definitions section: anchor, term, definition in words (the formulas of docs/METRICS.md).
DEFINITIONS: tuple[tuple[str, str, str], ...] = (
    (
        "def-explained-variance",
        "Explained variance (about the mean)",
        "1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²) over the held-out tokens: the share of the activations' "
        "variance about their mean that the reconstruction x̂ keeps. SAEBench 0.6.0 subtracts a "
        "different term and so measures variance about zero, which inflates the score when "
        "activations have a large mean.",
    ),
    (
        "def-explained-variance-legacy",
        "Legacy explained variance",
        "The mean over tokens of 1 − ‖x_t − x̂_t‖² / ‖x_t − mean_B x‖², B the token's batch: a mean "
        "of per-token ratios that depends on the batch size, kept because SAEBench's paper "
        "reports it.",
    ),
    (
        "def-ce-loss-score",
        "CE-loss score",
        "(CE_zero − CE_sae) / (CE_zero − CE_clean), from the next-token cross-entropy averaged over "
        "tokens with the hook's output left alone (clean), replaced by the SAE's reconstruction "
        "(sae) and by zeros (zero); averages first, then the ratio. 1: the reconstruction loses "
        "nothing; 0: as bad as zero ablation.",
    ),
    (
        "def-kl-score",
        "KL score",
        "(KL_zero − KL_sae) / KL_zero, with KL_sae the mean over tokens of KL(p_clean ‖ p_sae) "
        "between the model's next-token distributions without and with the reconstruction "
        "spliced in, and KL_zero the same with zeros spliced in.",
    ),
    (
        "def-pooled-cosine",
        "Pooled cosine score",
        "For encoders without an LM head (MiniLM): (cos_sae − cos_zero) / (1 − cos_zero), where "
        "cos_sae is the mean over texts of the cosine similarity between the model's mean-pooled "
        "output embedding without a splice and with the reconstruction spliced in at the hook, and "
        "cos_zero the same with zeros spliced in. 1: the embedding is unchanged; 0: as far off as "
        "zero ablation.",
    ),
    (
        "def-pareto",
        "Pareto front",
        "The SAEs that no other SAE beats on both axes: none has an L0 lower or equal and a metric "
        "equal or better, one of the two strictly. Drawn as steps: at any L0 budget the step's "
        "height is the best value an SAE within the budget reaches.",
    ),
)


def _headline_metrics(merged: pd.DataFrame) -> list[Metric]:
    """L0 and every plotted metric that has a value for at least one SAE, in report order."""
    metrics = [L0, *metrics_for(list(merged.columns))]
    return [m for m in metrics if m.column in merged and merged[m.column].notna().any()]


def sae_section(merged: pd.DataFrame) -> str:
    """One row per SAE: identity and headline metrics (4 significant digits, ``–`` when absent)."""
    if merged.empty:
        return '<p class="note">The merged table has no SAEs.</p>'
    one_hook = "hook" in merged and merged["hook"].nunique(dropna=False) == 1  # in the header
    ids = [(c, h) for c, h in _ID_COLUMNS if c in merged and not (c == "hook" and one_hook)]
    metrics = _headline_metrics(merged)
    sort = [c for c in _SORT if c in merged]
    rows_df = merged.sort_values(sort, kind="stable") if sort else merged
    headers = [h for _, h in ids] + [
        m.short if m is L0 else f"{m.short} {m.arrow}" for m in metrics
    ]
    rows = [
        [fmt_value(r.get(c)) for c, _ in ids] + [fmt_value(r.get(m.column)) for m in metrics]
        for _, r in rows_df.iterrows()
    ]
    numeric = [c == "d_sae" for c, _ in ids] + [True] * len(metrics)
    legend = "; ".join(f"{esc(m.short)}: <code>{esc(m.column)}</code>" for m in metrics)
    absent = [m.column for m in METRICS if m.column not in merged or merged[m.column].isna().all()]
    skipped = sorted({why for c in absent if (why := skip_reasons(merged, c))})
    note = (
        f'<p class="note">↑ higher is better, ↓ lower is better. Columns: {legend}.'
        + (f" Not evaluated: {esc(', '.join(absent))}." if absent else "")
        + "".join(f" {esc(why)}." for why in skipped)
        + "</p>"
    )
    return html_table(headers, rows, numeric, css_class="data eval-saes") + note


def _fmt_p(value: Any) -> str:
    return "–" if is_missing(value) else f"{float(value):.3g}"


def _fmt_flag(value: Any) -> str:
    return "–" if is_missing(value) else ("yes" if bool(value) else "no")


def _generic_comparison_html(comparison: pd.DataFrame) -> str:
    """Pairwise comparison rows (sae_a − sae_b per k) with the correction named beside them."""
    if comparison.empty:
        return '<p class="note">The comparison table has no rows.</p>'
    columns = (
        ("k", "k", fmt_value, True),
        ("sae_a", "SAE a", fmt_value, False),
        ("sae_b", "SAE b", fmt_value, False),
        ("n_datasets", "datasets", fmt_value, True),
        ("mean_diff", "mean AUC diff (a − b)", fmt_diff, True),
        (None, "95% CI", None, False),
        ("win_rate", "win rate of a", fmt_share, True),
        ("p_value", "p", _fmt_p, True),
        ("p_holm", "p (Holm)", _fmt_p, True),
        ("significant", "significant", _fmt_flag, False),
    )
    rows = []
    for _, r in comparison.iterrows():
        row = []
        for key, _, fmt, _ in columns:
            row.append(
                fmt_ci(r.get("ci_low"), r.get("ci_high")) if key is None else fmt(r.get(key))
            )
        rows.append(row)
    corrections = sorted({str(c) for c in comparison.get("correction", []) if not is_missing(c)})
    note = (
        '<p class="note">Per k and pair of SAEs: the mean over datasets of the test AUC '
        "difference a − b, its paired bootstrap interval, the share of datasets where a wins, and "
        "the p-value before and after the multiple-comparison correction. Correction: "
        f"{esc(', '.join(corrections) or 'not stated')}.</p>"
    )
    return note + html_table(
        [h for _, h, _, _ in columns],
        rows,
        [n for _, _, _, n in columns],
        css_class="data comparison",
    )


def comparison_section(comparison: pd.DataFrame | None) -> str:
    """The architecture comparison: ``saelab.evals.architectures.comparison_html`` for a table with
    every column of ``compare_architectures`` output, else the generic table of what it has."""
    if comparison is None:
        return '<p class="note">No architecture comparison was run.</p>'
    if set(COMPARISON_COLUMNS) <= set(comparison.columns):
        return comparison_html(comparison)
    return _generic_comparison_html(comparison)


def definitions_section() -> str:
    """The metric definitions in words, with the file that gives their formulas and peers."""
    items = "".join(
        f'<dt id="{esc(anchor)}"><b>{esc(term)}</b></dt><dd>{esc(text)}</dd>'
        for anchor, term, text in DEFINITIONS
    )
    metrics = "".join(
        f"<dt><code>{esc(m.column)}</code> ({esc(m.direction)})</dt><dd>{esc(m.definition)}</dd>"
        for m in (L0, *METRICS)
    )
    return (
        '<p class="note">saelab\'s definitions, formula by formula beside SAEBench 0.6.0 and '
        "SAELens, are in <code>docs/METRICS.md</code> of the saelab repository. Notation: x a "
        "token activation, x̂ the SAE's reconstruction, E the mean over held-out tokens.</p>"
        f"<dl>{items}</dl><h3>Columns of the merged table</h3><dl>{metrics}</dl>"
    )


def details_section(meta: Mapping[str, Any]) -> str:
    """Versions and the eval config (YAML) from ``meta``."""
    parts = ["<h3>Versions</h3>"]
    versions = meta.get("versions") or {}
    if versions:
        rows = [[k, v] for k, v in versions.items()]
        parts.append(html_table(["package", "version"], rows, css_class="data versions"))
    else:
        parts.append('<p class="note">No versions recorded.</p>')
    if meta.get("config"):
        text = yaml.safe_dump(
            meta["config"], sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        parts.append(f'<h3>Config</h3><pre class="config">{esc(text)}</pre>')
    return "\n".join(parts)


def _header(name: str, meta: Mapping[str, Any], merged: pd.DataFrame) -> str:
    facts = []
    model = meta.get("model") or meta.get("model_id")
    if model:
        facts.append(f"model {esc(model)}")
    hooks = meta.get("hook") or (
        ", ".join(str(h) for h in pd.unique(merged["hook"].dropna())) if "hook" in merged else ""
    )
    if hooks:
        facts.append(f"hook {esc(hooks)}")
    facts.append(f"{len(merged)} SAEs")
    if "architecture" in merged:
        archs = sorted({str(a) for a in merged["architecture"].dropna()})
        facts.append(f"architectures {esc(', '.join(archs))}")
    when = meta.get("when") or meta.get("finished") or meta.get("created")
    if when:
        facts.append(f"evaluated {esc(when)}")
    versions = meta.get("versions") or {}
    if versions:
        facts.append(
            "versions " + esc(", ".join(f"{k} {v}" for k, v in list(versions.items())[:4]))
        )
    return (
        f"<header><h1>saelab eval report: {esc(name)}</h1>"
        f'<p class="meta">{" · ".join(facts)}</p></header>'
    )


def render_eval_report(
    out_dir: Path,
    merged: pd.DataFrame,
    comparison: pd.DataFrame | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (figures under ``out_dir/plots/``) and return its path.

    ``merged``: one row per SAE (``sae``, ``architecture``, ``d_sae``, ``hook``, ``<eval>.<metric>``
    columns; any metric may be absent or NaN). ``comparison``: the pairwise architecture
    comparison (k, sae_a, sae_b, n_datasets, mean_diff, ci_low, ci_high, win_rate, p_value, p_holm,
    significant, correction). ``meta``: optional ``name``, ``model``, ``hook``, ``when``,
    ``versions`` (dict) and ``config`` (dict).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    figures: Sequence[PlotFile] = plot_l0_vs_metrics(merged, out_dir / "plots")
    name = str(meta.get("name") or out_dir.name)
    sections = [
        ("saes", "SAEs", sae_section(merged)),
        ("plots", "L0 against each metric", plots_section(figures)),
        ("comparison", "Architecture comparison", comparison_section(comparison)),
        ("definitions", "Definitions", definitions_section()),
        ("details", "Details", details_section(meta)),
    ]
    text = html_page(f"saelab eval report: {name}", _header(name, meta, merged), sections)
    path = out_dir / REPORT_NAME
    write_text_atomic(path, text)
    return path
