"""SAE-ception results: per-cycle summaries, the method check, figures, console and HTML report.

The input is the cycle table (``cycles.parquet``): one row per (seed, strategy, cycle), cycle 0
being the fine-tuned classifier every strategy starts from (its row repeated once per strategy),
and one column per metric of :data:`saelab.ception.names.METRICS` that was measured (absent or
NaN where it could not be, e.g. ``perplexity`` without an LM head). Other columns (timings,
losses, ids, versions) pass through untouched.

From it this module computes

* ``summarize``: mean, SD, SE and the 95% Student-t interval over seeds per (strategy, cycle,
  metric);
* ``check_against_controls``: the method check. Each sharpened strategy is paired by seed with
  each control (``random``, ``none``) at the same cycle, and a metric *rises* when the mean paired
  difference exceeds twice its standard error;
* ``accuracy_check``: whether the classifier keeps its cycle-0 test accuracy (paired by seed);
* ``verdict_lines``: the two checks in plain sentences;

and presents them: one figure per metric (``plot_cycles``), a rich console table
(``print_ception_summary``) and a self-contained HTML report (``render_ception_report``) built
from the run report's pieces (``saelab.report.html``). Every piece of text in the report is
HTML-escaped, and every piece printed to the console is escaped for rich markup.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from scipy import stats as sps

from saelab.ception.names import (
    CHECKED_METRICS,
    CONTROLS,
    METRIC_INFO,
    METRIC_NAMES,
    SHARPENED,
    STRATEGIES,
)
from saelab.errors import ResultFileError
from saelab.io import atomic_path, write_text_atomic
from saelab.report.html import (
    REPORT_NAME,
    esc,
    fmt_share,
    fmt_value,
    html_page,
    html_table,
    is_missing,
    plots_section,
)
from saelab.report.plots import _RC, OKABE_ITO, PlotFile, _legend, _save

log = logging.getLogger(__name__)

#: Columns every cycle table has.
KEY_COLUMNS: tuple[str, ...] = ("seed", "strategy", "cycle")
#: Columns of ``summarize`` output.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "strategy",
    "cycle",
    "metric",
    "n_seeds",
    "mean",
    "sd",
    "se",
    "ci_low",
    "ci_high",
)
#: Columns of ``check_against_controls`` output.
CHECK_COLUMNS: tuple[str, ...] = (
    "treated",
    "control",
    "metric",
    "cycle",
    "n_seeds",
    "treated_mean",
    "control_mean",
    "diff_mean",
    "diff_se",
    "better",
    "rises",
    "falls",
    "improves",
)
#: Columns of ``accuracy_check`` output.
ACCURACY_COLUMNS: tuple[str, ...] = (
    "strategy",
    "cycle",
    "n_seeds",
    "accuracy_cycle0",
    "accuracy",
    "diff_mean",
    "diff_se",
    "tolerance",
    "within",
)
#: The metrics of the overview figure and the console table, in panel order (those present).
MAIN_METRICS: tuple[str, ...] = (
    "accuracy",
    "probe_acc_codes",
    "ari_codes",
    "u_codes_alive",
    "csi_codes_alive",
    "silhouette_true_codes",
    "sae_explained_variance",
    "perplexity",
)
_CONSOLE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("probe_acc_codes", "probe acc (codes)"),
    ("ari_codes", "ARI (codes)"),
    ("u_codes_alive", "U (codes, alive)"),
    ("csi_codes_alive", "CSI (codes, alive)"),
    ("sae_explained_variance", "SAE EV"),
)
#: Training diagnostics shown in the run details when present (mean per strategy and cycle).
_DIAGNOSTICS: tuple[str, ...] = ("val_accuracy", "ce_loss", "aux_loss", "lambda_aux")
#: Multiple of the standard error a mean paired difference must exceed (the method check's rule).
SE_MULTIPLE = 2.0
#: Name of the overview figure.
OVERVIEW = "overview"

# Okabe-Ito colours (as in the run report); the SAE strategies solid, the controls dashed.
_STRATEGY_STYLES: dict[str, tuple[str, Any, str]] = {
    "per_class": (OKABE_ITO["blue"], "-", "o"),
    "per_example": (OKABE_ITO["vermillion"], "-", "s"),
    "random": ("#7F7F7F", (0, (5, 2)), "^"),
    "none": (OKABE_ITO["black"], (0, (2, 1.5)), "v"),
}
_OTHER_COLORS = (
    OKABE_ITO["green"],
    OKABE_ITO["purple"],
    OKABE_ITO["orange"],
    OKABE_ITO["sky_blue"],
)
_OTHER_MARKERS = ("D", "P", "X", "<", ">")


# ----- input ------------------------------------------------------------------------------------


def _validated(cycles: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``cycles`` with ``strategy`` as text and ``cycle`` as int, after checking the
    key columns: present, no missing value, cycle an integer >= 0, no repeated (seed, strategy,
    cycle). Raises ``ResultFileError`` naming what is wrong."""
    if not isinstance(cycles, pd.DataFrame):
        raise ResultFileError(f"the cycle table must be a pandas DataFrame, got {type(cycles)}")
    missing = [c for c in KEY_COLUMNS if c not in cycles.columns]
    if missing:
        raise ResultFileError(
            f"the cycle table lacks column(s) {missing}; expected {list(KEY_COLUMNS)} and one "
            "column per measured metric"
        )
    frame = cycles.reset_index(drop=True).copy()
    for column in KEY_COLUMNS:
        bad = frame.index[frame[column].isna()]
        if len(bad):
            raise ResultFileError(f"the cycle table has no {column!r} in row {int(bad[0])}")
    cycle = pd.to_numeric(frame["cycle"], errors="coerce")
    bad = frame.index[cycle.isna() | (cycle < 0) | (cycle != np.floor(cycle))]
    if len(bad):
        row = int(bad[0])
        raise ResultFileError(
            f"column 'cycle' of the cycle table must hold integers >= 0; row {row} has "
            f"{frame.loc[row, 'cycle']}"
        )
    frame["cycle"] = cycle.astype(np.int64)
    frame["strategy"] = frame["strategy"].astype(str)
    repeated = frame.duplicated(list(KEY_COLUMNS), keep=False)
    if repeated.any():
        row = frame[repeated].iloc[0]
        raise ResultFileError(
            f"the cycle table repeats seed {row['seed']}, strategy {row['strategy']!r}, cycle "
            f"{row['cycle']} ({int(repeated.sum())} rows); expected one row per (seed, strategy, "
            "cycle)"
        )
    return frame


def _metric_values(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Column ``metric`` as floats (all NaN when the column is absent)."""
    if metric not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=np.float64)
    try:
        return pd.to_numeric(frame[metric], errors="raise").astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ResultFileError(
            f"metric column {metric!r} of the cycle table must be numeric: {exc}"
        ) from None


def ordered_strategies(values: Iterable[Any]) -> list[str]:
    """The distinct strategies of ``values``: those of ``STRATEGIES`` in its order, then any
    others sorted by name."""
    present = {str(v) for v in values if not is_missing(v)}
    return [s for s in STRATEGIES if s in present] + sorted(present - set(STRATEGIES))


def _present_metrics(columns: Iterable[Any]) -> list[str]:
    names = {str(c) for c in columns}
    return [m for m in METRIC_NAMES if m in names]


def _ordered_metrics(values: Iterable[Any]) -> list[str]:
    """Distinct metric names: ``METRIC_NAMES`` order first, then the others in given order."""
    seen = list(dict.fromkeys(str(v) for v in values))
    return [m for m in METRIC_NAMES if m in seen] + [m for m in seen if m not in METRIC_INFO]


def _label(metric: str) -> str:
    info = METRIC_INFO.get(metric)
    return info.label if info else metric


def _better(metric: str) -> str:
    """``higher``, ``lower`` or ``neither``, from ``MetricInfo.higher_is_better`` (unknown
    metrics: ``higher``, the direction of the checked metrics)."""
    info = METRIC_INFO.get(metric)
    hib = True if info is None else info.higher_is_better
    return "neither" if hib is None else ("higher" if hib else "lower")


def t_multiplier(n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval in standard errors: t_{(1+level)/2, n-1}
    (``scipy.stats.t.ppf``); NaN for n < 2."""
    return float(sps.t.ppf(0.5 + level / 2, n - 1)) if n >= 2 else math.nan


# ----- summaries and checks ---------------------------------------------------------------------


def summarize(cycles: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per (strategy, cycle, metric): the mean over seeds with its 95% Student-t interval.

    Missing values are dropped per metric before counting, so ``n_seeds`` is the number of seeds
    with a value. ``sd`` is the sample standard deviation (ddof = 1), ``se = sd / sqrt(n)`` and
    ``[ci_low, ci_high] = mean -/+ t_{0.975, n-1} * se`` (Student 1908; ``scipy.stats.t.ppf``);
    ``sd``, ``se`` and the interval are NaN when n < 2, everything but ``n_seeds`` when n = 0.

    ``metrics``: the metric columns (default: those of ``METRIC_NAMES`` in the frame); one asked
    for but absent gives rows with ``n_seeds`` 0. Rows are ordered by strategy (``STRATEGIES``
    order, then others by name), cycle and metric; columns are ``SUMMARY_COLUMNS``.
    """
    frame = _validated(cycles)
    metrics = _present_metrics(frame.columns) if metrics is None else list(metrics)
    rows = []
    groups = frame.groupby(["strategy", "cycle"], sort=False)
    for strategy in ordered_strategies(frame["strategy"]):
        for cycle in sorted(frame.loc[frame["strategy"] == strategy, "cycle"].unique()):
            part = groups.get_group((strategy, cycle))
            for metric in metrics:
                values = _metric_values(part, metric).dropna().to_numpy()
                n = len(values)
                mean = float(values.mean()) if n else math.nan
                sd = float(values.std(ddof=1)) if n >= 2 else math.nan
                se = sd / math.sqrt(n) if n >= 2 else math.nan
                half = t_multiplier(n) * se
                rows.append(
                    (strategy, int(cycle), metric, n, mean, sd, se, mean - half, mean + half)
                )
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return out.astype({"cycle": np.int64, "n_seeds": np.int64})


def _paired(left: pd.DataFrame, right: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``metric`` in ``left`` and ``right`` for the seeds both have a value for (an
    inner join on ``seed``), ordered by seed."""
    a = pd.DataFrame(
        {"seed": left["seed"].to_numpy(), "a": _metric_values(left, metric).to_numpy()}
    )
    b = pd.DataFrame(
        {"seed": right["seed"].to_numpy(), "b": _metric_values(right, metric).to_numpy()}
    )
    both = a.merge(b, on="seed", how="inner").dropna(subset=["a", "b"]).sort_values("seed")
    return both["a"].to_numpy(np.float64), both["b"].to_numpy(np.float64)


def _diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float]:
    """n, mean and standard error (sd with ddof = 1, over sqrt(n)) of the paired a - b."""
    diff = a - b
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    se = float(diff.std(ddof=1)) / math.sqrt(n) if n >= 2 else math.nan
    return n, mean, se


def check_against_controls(
    cycles: pd.DataFrame,
    metrics: Sequence[str] = CHECKED_METRICS,
    treated: Sequence[str] = SHARPENED,
    controls: Sequence[str] = CONTROLS,
) -> pd.DataFrame:
    """The method check: each treated strategy against each control, per cycle >= 1 and metric.

    At one cycle, the treated and the control rows are paired by seed (inner join on ``seed``,
    seeds missing either value dropped); with d_s = treated_s - control_s over the n paired
    seeds, ``diff_mean`` = mean(d), ``diff_se`` = sd(d, ddof = 1) / sqrt(n) (NaN for n < 2), and
    ``treated_mean`` / ``control_mean`` are the two means over those seeds.

    ``rises`` = diff_mean > 2 * diff_se and ``falls`` = diff_mean < -2 * diff_se: both False when
    the SE is NaN (n < 2); with a zero SE (every seed the same difference) any non-zero mean
    counts. ``improves`` is the test in the metric's better direction
    (``MetricInfo.higher_is_better``; ``better`` names it): ``rises`` where higher is better,
    ``falls`` where lower is better, False where neither. For the checked metrics (ARI and U,
    higher is better) ``improves`` equals ``rises``.

    The 2-SE rule is the approximate two-sided 95% normal interval of the mean difference
    excluding zero (1.96 rounded to 2). It is a screening rule: with n = 3 seeds the Student-t
    95% interval needs t_{0.975, 2} = 4.30 SEs. Strategies or metrics absent from the frame give
    no rows (a metric absent or NaN gives rows with ``n_seeds`` 0). Columns: ``CHECK_COLUMNS``.
    """
    frame = _validated(cycles)
    present = set(frame["strategy"])
    rows = []
    for t_name in [s for s in dict.fromkeys(treated) if s in present]:
        for c_name in [s for s in dict.fromkeys(controls) if s in present and s != t_name]:
            t_rows = frame[frame["strategy"] == t_name]
            c_rows = frame[frame["strategy"] == c_name]
            later = sorted({int(c) for c in pd.concat([t_rows, c_rows])["cycle"] if c >= 1})
            for metric in dict.fromkeys(metrics):
                better = _better(metric)
                for cycle in later:
                    a, b = _paired(
                        t_rows[t_rows["cycle"] == cycle], c_rows[c_rows["cycle"] == cycle], metric
                    )
                    n, mean, se = _diff_stats(a, b)
                    rises = bool(n >= 2 and mean > SE_MULTIPLE * se)
                    falls = bool(n >= 2 and mean < -SE_MULTIPLE * se)
                    improves = (
                        rises if better == "higher" else falls if better == "lower" else False
                    )
                    rows.append(
                        (
                            t_name,
                            c_name,
                            metric,
                            cycle,
                            n,
                            float(a.mean()) if n else math.nan,
                            float(b.mean()) if n else math.nan,
                            mean,
                            se,
                            better,
                            rises,
                            falls,
                            improves,
                        )
                    )
    out = pd.DataFrame(rows, columns=list(CHECK_COLUMNS))
    flags = dict.fromkeys(("rises", "falls", "improves"), bool)
    return out.astype({"cycle": np.int64, "n_seeds": np.int64, **flags})


def accuracy_check(cycles: pd.DataFrame, tolerance: float = 0.02) -> pd.DataFrame:
    """Whether each strategy keeps the classifier's cycle-0 test accuracy, per cycle >= 1.

    Per strategy and cycle, rows are paired by seed with the strategy's cycle-0 rows (with none,
    the cycle-0 row of any strategy: they are the same classifier); with d_s = accuracy_c -
    accuracy_0 over the n paired seeds, ``diff_mean`` = mean(d), ``diff_se`` = sd(d, ddof = 1) /
    sqrt(n) (NaN for n < 2), and ``within`` = |diff_mean| <= ``tolerance`` (accuracy is a
    fraction: 0.02 is 2 percentage points). ``within`` judges the mean change only; ``diff_se``
    says how noisy it is. No ``accuracy`` column or no cycle-0 rows: an empty frame.
    Columns: ``ACCURACY_COLUMNS``.
    """
    if not (tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    frame = _validated(cycles)
    rows = []
    zero = frame[frame["cycle"] == 0]
    if "accuracy" in frame.columns and not zero.empty:
        for strategy in ordered_strategies(frame["strategy"]):
            own = frame[frame["strategy"] == strategy]
            base = own[own["cycle"] == 0]
            if base.empty:
                base = zero.drop_duplicates("seed")
            for cycle in sorted({int(c) for c in own["cycle"] if c >= 1}):
                a, b = _paired(own[own["cycle"] == cycle], base, "accuracy")
                n, mean, se = _diff_stats(a, b)
                rows.append(
                    (
                        strategy,
                        cycle,
                        n,
                        float(b.mean()) if n else math.nan,
                        float(a.mean()) if n else math.nan,
                        mean,
                        se,
                        float(tolerance),
                        bool(n > 0 and abs(mean) <= tolerance),
                    )
                )
    out = pd.DataFrame(rows, columns=list(ACCURACY_COLUMNS))
    return out.astype({"cycle": np.int64, "n_seeds": np.int64, "within": bool})


# ----- words ------------------------------------------------------------------------------------


def _num(value: Any, signed: bool = False) -> str:
    """A number for a sentence: 3 decimals (2 significant digits below 0.001, no decimals from
    1000 up); ``–`` when missing."""
    if is_missing(value):
        return "–"
    x = float(value)
    sign = "+" if signed else ""
    if x != 0 and abs(x) < 0.001:
        return f"{x:{sign}.2g}"
    return f"{x:{sign}.0f}" if abs(x) >= 1000 else f"{x:{sign}.3f}"


def _decimals(err: Any, ref: Any = 0.0) -> int:
    """Decimals to show a value with uncertainty ``err``: 3, or enough for 2 significant digits
    of an error below 0.001 (at most 6). Errors below 1e-9 of the value's scale are rounding
    noise and count as 0."""
    if is_missing(err):
        return 3
    e = abs(float(err))
    scale = 1.0 if is_missing(ref) else max(1.0, abs(float(ref)))
    if e <= 1e-9 * scale or e >= 0.001:
        return 3
    return min(6, 1 - math.floor(math.log10(e)))


def _pm(value: Any, err: Any, signed: bool = False) -> str:
    """``value ± err`` to the same decimals (``_decimals``); the value alone without ``err``."""
    if is_missing(value):
        return "–"
    d = _decimals(err, value)
    sign = "+" if signed else ""
    text = f"{float(value):{sign}.{d}f}"
    return text if is_missing(err) else f"{text} ± {abs(float(err)):.{d}f}"


def _points(value: Any, signed: bool = True) -> str:
    """A fraction as percentage points with one decimal (``+1.2``); ``–`` when missing."""
    return "–" if is_missing(value) else f"{100 * float(value):{'+' if signed else ''}.1f}"


def _cycles_text(cycles: Sequence[int]) -> str:
    """``1``, ``1 and 3``, ``1, 2 and 4`` or ``1–3`` for a run of consecutive cycles."""
    cycles = sorted(cycles)
    if len(cycles) > 2 and cycles == list(range(cycles[0], cycles[-1] + 1)):
        return f"{cycles[0]}–{cycles[-1]}"
    words = [str(c) for c in cycles]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _cycle_word(cycles: Sequence[int]) -> str:
    """``cycle 2`` or ``cycles 1 and 3``."""
    return f"cycle{'s' if len(cycles) > 1 else ''} {_cycles_text(cycles)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _verbs(better: str) -> tuple[str, str]:
    """(third person, base form) of the tested direction: ``falls`` where lower is better."""
    return ("falls", "fall") if better == "lower" else ("rises", "rise")


def _tested(row: Mapping[str, Any]) -> bool:
    """The direction-aware outcome of one check row (``rises`` for metrics with no direction)."""
    return bool(row["rises"]) if row["better"] == "neither" else bool(row["improves"])


def _evidence(row: Mapping[str, Any]) -> str:
    """``+0.041 ± 0.012 SE``, or what stands in for it with fewer than 2 seeds."""
    n = int(row["n_seeds"])
    if n == 0:
        return "no paired seeds"
    if n == 1:
        return f"{_num(row['diff_mean'], True)}, 1 seed, no SE"
    return f"{_pm(row['diff_mean'], row['diff_se'], True)} SE"


def _cycle_fragment(rows: pd.DataFrame, verb: str, base: str) -> str:
    """One cycle of one treated strategy and metric, against every control: e.g. ``rises
    against random (+0.041 ± 0.012 SE) but not against none (+0.010 ± 0.010 SE)``."""
    yes = [r for _, r in rows.iterrows() if _tested(r)]
    no = [r for _, r in rows.iterrows() if not _tested(r)]
    yes_text = " and ".join(f"against {r['control']} ({_evidence(r)})" for r in yes)
    no_text = "against " + " or ".join(f"{r['control']} ({_evidence(r)})" for r in no)
    if not no:
        return f"{verb} {yes_text}"
    if not yes:
        return f"does not {base} {no_text}"
    return f"{verb} {yes_text} but not {no_text}"


def verdict_lines(checks: pd.DataFrame, acc: pd.DataFrame) -> list[str]:
    """The method check and the accuracy check in plain sentences (for the README and report).

    One line per treated strategy and metric of ``checks`` (``check_against_controls``), with a
    headline over the cycles and the evidence of each cycle, e.g. ``per_class, ari_codes (higher
    is better): rises against both controls in every cycle (1–3). cycle 1: rises against random
    (+0.100 ± 0.006 SE) and against none (+0.101 ± 0.004 SE); ... (3 seeds, paired by seed).``
    ``rises`` means the mean paired difference exceeds 2 SE; where lower is better the sentence
    tests ``falls``. Then one line per strategy of ``acc`` (``accuracy_check``): whether the mean
    accuracy stays within the tolerance of cycle 0 in every cycle, or which cycles leave it.
    """
    lines: list[str] = []
    if checks is None or checks.empty:
        lines.append(
            "No method check: the cycle table has no sharpened strategy with a control at a "
            "cycle >= 1."
        )
    else:
        treated_order = list(dict.fromkeys(checks["treated"]))
        controls = list(dict.fromkeys(checks["control"]))
        for treated in ordered_strategies(treated_order):
            for metric in dict.fromkeys(checks.loc[checks["treated"] == treated, "metric"]):
                part = checks[(checks["treated"] == treated) & (checks["metric"] == metric)]
                lines.append(_metric_verdict(treated, metric, part, controls))
    if acc is None or acc.empty:
        lines.append("No accuracy check: the cycle table has no accuracy at cycle 0 and later.")
    else:
        for strategy in ordered_strategies(acc["strategy"]):
            lines.append(_accuracy_verdict(strategy, acc[acc["strategy"] == strategy]))
    return lines


def _metric_verdict(treated: str, metric: str, part: pd.DataFrame, controls: list[str]) -> str:
    better = str(part["better"].iloc[0])
    verb, base = _verbs(better)
    direction = {"higher": "higher is better", "lower": "lower is better"}.get(better, "no better")
    here = [c for c in controls if c in set(part["control"])]
    against = here[0] if len(here) == 1 else "both controls" if len(here) == 2 else "every control"
    cycles = sorted({int(c) for c in part["cycle"]})
    by_cycle = {c: part[part["cycle"] == c] for c in cycles}
    wins = [c for c in cycles if all(_tested(r) for _, r in by_cycle[c].iterrows())]
    if (part["n_seeds"] == 0).all():
        headline = "has no paired values (not measured, or missing for every seed)"
    elif (part["n_seeds"] < 2).all():
        headline = f"cannot be tested: fewer than 2 paired seeds against {against}"
    elif len(wins) == len(cycles):
        every = "the only cycle" if len(cycles) == 1 else "every cycle"
        headline = f"{verb} against {against} in {every} ({_cycles_text(cycles)})"
    elif wins:
        headline = f"{verb} against {against} in {_cycle_word(wins)} of {_cycles_text(cycles)}"
    elif len(here) > 1 and any(_tested(r) for _, r in part.iterrows()):
        headline = f"{verb} against {against} in no cycle ({_cycles_text(cycles)})"
    else:
        either = "either control" if len(here) == 2 else against
        headline = f"does not {base} against {either} in any cycle ({_cycles_text(cycles)})"
    rank = {c: i for i, c in enumerate(here)}
    details = "; ".join(
        f"cycle {c}: "
        + _cycle_fragment(by_cycle[c].sort_values("control", key=lambda s: s.map(rank)), verb, base)
        for c in cycles
    )
    seeds = sorted({int(n) for n in part["n_seeds"]})
    seeds_text = _plural(seeds[0], "seed") if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    return (
        f"{treated}, {metric} ({direction}): {headline}. {details} ({seeds_text}, paired by seed)."
    )


def _accuracy_verdict(strategy: str, part: pd.DataFrame) -> str:
    tol = float(part["tolerance"].iloc[0])
    band = f"±{100 * tol:g} points of cycle 0"
    cycles = [int(c) for c in part["cycle"]]
    tested = part[part["n_seeds"] > 0]
    if tested.empty:
        return (
            f"{strategy}: accuracy cannot be checked (no seed has accuracy at cycle 0 and later)."
        )
    out = tested[~tested["within"]]
    worst = tested.loc[tested["diff_mean"].abs().idxmax()]
    untested = sorted(set(cycles) - {int(c) for c in tested["cycle"]})
    gap = f"; {_cycle_word(untested)} without paired seeds" if untested else ""
    if out.empty:
        return (
            f"{strategy}: mean accuracy stays within {band} in every cycle "
            f"({_cycles_text([int(c) for c in tested['cycle']])}; largest mean change "
            f"{_points(worst['diff_mean'])} points, cycle {int(worst['cycle'])}){gap}."
        )
    left = ", ".join(
        f"cycle {int(r['cycle'])} ({_points(r['diff_mean'])} ± {_points(r['diff_se'], False)} "
        "points SE)"
        for _, r in out.iterrows()
    )
    kept = [int(c) for c in tested.loc[tested["within"], "cycle"]]
    stays = f"; it stays within in {_cycle_word(kept)}" if kept else ""
    return f"{strategy}: mean accuracy leaves {band} in {left}{stays}{gap}."


def rule_note(checks: pd.DataFrame | None) -> str:
    """The method check's rule in words, with the Student-t multiple at the number of seeds."""
    text = (
        "A metric rises (falls) against a control when the mean over seeds of the paired "
        f"difference treated − control is above {SE_MULTIPLE:g} standard errors (below −"
        f"{SE_MULTIPLE:g}), SE = sd(differences, ddof = 1) / √n; with fewer than 2 seeds it "
        "is untested."
    )
    if checks is not None and not checks.empty:
        n = int(checks["n_seeds"].max())
        if n >= 2:
            text += (
                f" With {n} seeds a two-sided 95% Student-t interval would need "
                f"{t_multiplier(n):.2f} SE, so the {SE_MULTIPLE:g}-SE rule is a screening rule, "
                "not a significance test."
            )
    return text


# ----- figures ----------------------------------------------------------------------------------


def _styles(strategies: Sequence[str]) -> dict[str, tuple[str, Any, str]]:
    """(colour, line style, marker) per strategy: fixed for the known ones, controls dashed."""
    out, i = {}, 0
    for s in strategies:
        if s in _STRATEGY_STYLES:
            out[s] = _STRATEGY_STYLES[s]
        else:
            out[s] = (_OTHER_COLORS[i % len(_OTHER_COLORS)], "-", _OTHER_MARKERS[i % 5])
            i += 1
    return out


def _file_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_.") or "metric"


def _y_label(metric: str) -> str:
    return _label(metric) + (" (lower is better)" if _better(metric) == "lower" else "")


def _draw(ax: Axes, part: pd.DataFrame, styles: Mapping[str, tuple[str, Any, str]]) -> None:
    """One metric on ``ax``: a line per strategy (means), 95% CI error bars where n >= 2; the
    strategies are shifted slightly along x so that equal points (cycle 0) stay visible."""
    strategies = [s for s in styles if s in set(part["strategy"])]
    cycles = sorted({int(c) for c in part["cycle"]})
    width = 0.06 * (len(strategies) - 1)
    for i, strategy in enumerate(strategies):
        line = part[(part["strategy"] == strategy) & part["mean"].notna()].sort_values("cycle")
        if line.empty:
            continue
        color, linestyle, marker = styles[strategy]
        shift = -width / 2 + 0.06 * i
        x = line["cycle"].to_numpy(np.float64) + shift
        y = line["mean"].to_numpy(np.float64)
        style = {"color": color, "linestyle": linestyle, "marker": marker, "markersize": 5}
        ax.plot(x, y, linewidth=1.6, label=strategy, **style)
        ok = line["ci_low"].notna().to_numpy() & line["ci_high"].notna().to_numpy()
        if ok.any():
            yerr = np.vstack(
                [y[ok] - line["ci_low"].to_numpy()[ok], line["ci_high"].to_numpy()[ok] - y[ok]]
            )
            ax.errorbar(x[ok], y[ok], yerr=yerr, fmt="none", ecolor=color, elinewidth=1, capsize=3)
    ax.set_xticks(cycles)
    ax.set_xlim(min(cycles) - 0.4, max(cycles) + 0.4)
    ax.grid(alpha=0.3)


def _seeds_text(part: pd.DataFrame) -> str:
    n = part.loc[part["n_seeds"] > 0, "n_seeds"]
    lo, hi = int(n.min()), int(n.max())
    return _plural(lo, "seed") if lo == hi else f"{lo}–{hi} seeds"


def _not_drawn(out_dir: Path, name: str, title: str, reason: str) -> PlotFile:
    for ext in ("png", "svg"):
        (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
    log.info("plot %s not drawn: %s", name, reason)
    return PlotFile(name, title, "", reason=reason)


def _plot_metric(
    summary: pd.DataFrame, metric: str, out_dir: Path, styles: Mapping[str, tuple[str, Any, str]]
) -> PlotFile:
    name, title = _file_name(metric), _label(metric)
    part = summary[summary["metric"] == metric]
    if part["mean"].isna().all():
        return _not_drawn(out_dir, name, title, f"no values: every {metric} entry is missing")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _draw(ax, part, styles)
    ax.set_xlabel("cycle (0: the fine-tuned classifier)")
    ax.set_ylabel(_y_label(metric))
    ax.set_title(title)
    _legend(fig, [ax])
    png, svg = _save(fig, out_dir, name)
    info = METRIC_INFO.get(metric)
    caption = (
        f"{title} ({metric}) per cycle: mean over {_seeds_text(part)} per strategy, with the "
        "95% Student-t interval as error bars (none where a single seed has a value); controls "
        "dashed, strategies shifted slightly along x so that the shared cycle 0 stays visible. "
        "The intervals are over seeds; the method check pairs treated and control by seed, which "
        "removes the between-seed spread these intervals include."
        + (f" Formula: {info.source}." if info else "")
    )
    return PlotFile(name, title, caption, png, svg)


def _plot_overview(
    summary: pd.DataFrame, out_dir: Path, styles: Mapping[str, tuple[str, Any, str]]
) -> PlotFile:
    title = "SAE-ception overview: the main metrics per cycle"
    metrics = [m for m in MAIN_METRICS if summary.loc[summary["metric"] == m, "mean"].notna().any()]
    if not metrics:
        return _not_drawn(out_dir, OVERVIEW, title, "none of the main metrics has a value")
    ncols = min(len(metrics), 4)
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(3.3 * ncols + 0.4, 2.9 * nrows + 0.9), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(len(metrics))]
    for ax, metric in zip(axes, metrics, strict=True):
        _draw(ax, summary[summary["metric"] == metric], styles)
        suffix = " ↓" if _better(metric) == "lower" else ""
        ax.set_title(textwrap.fill(_label(metric) + suffix, 34), fontsize="small")
        ax.set_xlabel("cycle", fontsize="small")
        ax.tick_params(labelsize="small")
    _legend(fig, axes)
    fig.suptitle(title, fontsize="medium")
    png, svg = _save(fig, out_dir, OVERVIEW)
    caption = (
        f"One panel per main metric ({', '.join(metrics)}): mean over seeds per strategy and "
        "cycle with 95% Student-t error bars; controls dashed; ↓ marks a metric where lower is "
        "better."
    )
    return PlotFile(OVERVIEW, title, caption, png, svg)


def plot_cycles(summary: pd.DataFrame, out_dir: Path) -> list[PlotFile]:
    """Draw the overview and one figure per metric of ``summary`` (``summarize`` output) into
    ``out_dir`` as ``<name>.png`` and ``.svg``; returns them, overview first.

    x: the cycle (integer ticks); one line per strategy with markers and 95% CI error bars, the
    controls dashed; title: the metric's label, y label noting ``(lower is better)`` where it is.
    A metric with no value is returned with the reason instead of files (old files removed).
    Figures are drawn with Agg on their own ``Figure`` and saved by ``saelab.report.plots``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    styles = _styles(ordered_strategies(summary["strategy"]) if not summary.empty else [])
    figures = []
    with matplotlib.rc_context(_RC):
        figures.append(_plot_overview(summary, out_dir, styles))
        for metric in _ordered_metrics(summary["metric"] if not summary.empty else []):
            figures.append(_plot_metric(summary, metric, out_dir, styles))
    return figures


# ----- HTML -------------------------------------------------------------------------------------


def _mean_ci(row: Mapping[str, Any]) -> str:
    """``mean [ci_low, ci_high]`` to 4 significant digits; ``mean (n = 1)`` without an interval."""
    if is_missing(row.get("mean")):
        return "–"
    mean = f"{float(row['mean']):.4g}"
    if is_missing(row.get("ci_low")) or is_missing(row.get("ci_high")):
        return f"{mean} (n = {int(row['n_seeds'])})"
    return f"{mean} [{float(row['ci_low']):.4g}, {float(row['ci_high']):.4g}]"


def metric_tables_html(summary: pd.DataFrame) -> str:
    """Per metric, a strategy × cycle table of ``mean [95% CI]``."""
    if summary is None or summary.empty:
        return '<p class="note">No metric was measured.</p>'
    strategies = ordered_strategies(summary["strategy"])
    cycles = sorted({int(c) for c in summary["cycle"]})
    parts = [
        '<p class="note">Each cell: the mean over seeds and its 95% Student-t interval '
        "(mean ± t<sub>0.975, n−1</sub> · SD/√n); (n = 1): a single seed had a value. Cycle 0 "
        "is the fine-tuned classifier every strategy starts from.</p>"
    ]
    empty = []
    for metric in _ordered_metrics(summary["metric"]):
        part = summary[summary["metric"] == metric]
        if part["mean"].isna().all():
            empty.append(metric)
            continue
        cells = {(r["strategy"], int(r["cycle"])): _mean_ci(r) for _, r in part.iterrows()}
        rows = [[s, *(cells.get((s, c), "–") for c in cycles)] for s in strategies]
        info = METRIC_INFO.get(metric)
        note = (
            f'<p class="note">{esc(_better(metric))} is better'
            + (f"; {esc(info.source)}" if info else "")
            + f"; {esc(_seeds_text(part))}.</p>"
        )
        parts.append(
            f'<h3 id="metric-{esc(_file_name(metric))}">{esc(_label(metric))} '
            f"<code>{esc(metric)}</code></h3>{note}"
        )
        parts.append(
            html_table(
                ["strategy", *(f"cycle {c}" for c in cycles)],
                rows,
                [False] + [True] * len(cycles),
                row_classes=["baseline" if s in CONTROLS else "" for s in strategies],
                css_class="data ception-metric",
            )
        )
    if empty:
        parts.append(f'<p class="note">No values (not measured): {esc(", ".join(empty))}.</p>')
    return "\n".join(parts)


def _outcome(row: Mapping[str, Any]) -> str:
    n = int(row["n_seeds"])
    if n < 2:
        return "no paired seeds" if n == 0 else "untested (1 seed)"
    if row["rises"]:
        return "rises" + (" (worse)" if row["better"] == "lower" else "")
    if row["falls"]:
        return "falls" + (" (better)" if row["better"] == "lower" else "")
    return "no clear change"


def check_tables_html(checks: pd.DataFrame, acc: pd.DataFrame) -> str:
    """The method-check table (treated against each control) and the accuracy-check table."""
    parts = []
    if checks is None or checks.empty:
        parts.append('<p class="note">No method check rows.</p>')
    else:
        rows = [
            [
                r["treated"],
                r["control"],
                r["metric"],
                fmt_value(r["cycle"]),
                fmt_value(r["n_seeds"]),
                _num(r["treated_mean"]),
                _num(r["control_mean"]),
                f"{float(r['diff_mean']):+.{_decimals(r['diff_se'], r['diff_mean'])}f}"
                if r["n_seeds"]
                else "–",
                f"{float(r['diff_se']):.{_decimals(r['diff_se'], r['diff_mean'])}f}"
                if r["n_seeds"] >= 2
                else "–",
                _outcome(r),
            ]
            for _, r in checks.iterrows()
        ]
        headers = [
            "treated",
            "control",
            "metric",
            "cycle",
            "seeds",
            "treated mean",
            "control mean",
            "mean diff (treated − control)",
            "SE",
            "result",
        ]
        numeric = [False, False, False, True, True, True, True, True, True, False]
        parts.append(html_table(headers, rows, numeric, css_class="data ception-check"))
    parts.append("<h3>Accuracy against cycle 0</h3>")
    if acc is None or acc.empty:
        parts.append('<p class="note">No accuracy check: no accuracy at cycle 0 and later.</p>')
    else:
        rows = [
            [
                r["strategy"],
                fmt_value(r["cycle"]),
                fmt_value(r["n_seeds"]),
                fmt_share(r["accuracy_cycle0"]),
                fmt_share(r["accuracy"]),
                _points(r["diff_mean"]),
                _points(r["diff_se"], False),
                ("yes" if r["within"] else "no") if r["n_seeds"] else "–",
            ]
            for _, r in acc.iterrows()
        ]
        tol = _points(acc["tolerance"].iloc[0], False)
        headers = [
            "strategy",
            "cycle",
            "seeds",
            "accuracy, cycle 0",
            "accuracy",
            "mean change (points)",
            "SE (points)",
            f"within ±{tol} points",
        ]
        numeric = [False, True, True, True, True, True, True, False]
        parts.append(
            '<p class="note">Test accuracy of each cycle against the same seed\'s cycle 0; '
            "within: the mean change over seeds is at most the tolerance.</p>"
        )
        parts.append(html_table(headers, rows, numeric, css_class="data ception-accuracy"))
    return "\n".join(parts)


def _verdicts_html(checks: pd.DataFrame, acc: pd.DataFrame) -> str:
    items = "".join(f"<li>{esc(line)}</li>" for line in verdict_lines(checks, acc))
    return f'<ul class="verdicts">{items}</ul><p class="note">{esc(rule_note(checks))}</p>'


def ception_section(
    summary: pd.DataFrame,
    checks: pd.DataFrame,
    acc: pd.DataFrame,
    figures: Sequence[PlotFile],
) -> str:
    """The SAE-ception results as one HTML fragment: the verdicts, the method-check and accuracy
    tables, the figures (``plots_section``) and a mean [95% CI] table per metric."""
    return "\n".join(
        [
            "<h3>Verdict</h3>",
            _verdicts_html(checks, acc),
            "<h3>Method check against the controls</h3>",
            check_tables_html(checks, acc),
            "<h3>Figures</h3>",
            plots_section(figures),
            "<h3>Metrics per cycle</h3>",
            metric_tables_html(summary),
        ]
    )


def _model(meta: Mapping[str, Any], cycles: pd.DataFrame) -> str:
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    found = meta.get("model") or meta.get("model_id") or (config.get("model") or {}).get("name")
    return str(found) if found else _distinct(cycles, "model_id")


def _dataset(meta: Mapping[str, Any], cycles: pd.DataFrame) -> str:
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    found = meta.get("dataset") or (config.get("data") or {}).get("dataset")
    return str(found) if found else _distinct(cycles, "dataset")


def _distinct(frame: pd.DataFrame, column: str) -> str:
    if column not in frame.columns:
        return ""
    return ", ".join(str(v) for v in pd.unique(frame[column].dropna()))


def _header(name: str, meta: Mapping[str, Any], cycles: pd.DataFrame) -> str:
    facts = []
    if meta.get("status"):
        status = str(meta["status"])
        cls = "status-complete" if status == "complete" else "status-other"
        facts.append(f'status <span class="{cls}">{esc(status)}</span>')
    for key, word in (("model", _model(meta, cycles)), ("dataset", _dataset(meta, cycles))):
        if word:
            facts.append(f"{key} {esc(word)}")
    seeds = pd.unique(cycles["seed"]).tolist()
    with contextlib.suppress(TypeError):  # seeds of mixed types: keep their order
        seeds = sorted(seeds)
    facts.append(f"seeds {esc(', '.join(str(s) for s in seeds))}")
    facts.append(f"strategies {esc(', '.join(ordered_strategies(cycles['strategy'])))}")
    facts.append(f"cycles 0–{int(cycles['cycle'].max())}")
    for key in ("started", "finished"):
        if meta.get(key):
            facts.append(f"{key} {esc(meta[key])}")
    if not is_missing(meta.get("seconds")):
        facts.append(f"{float(meta['seconds']):.1f} s")
    error = f'<p class="status-other">error: {esc(meta["error"])}</p>' if meta.get("error") else ""
    return (
        f"<header><h1>saelab ception report: {esc(name)}</h1>"
        f'<p class="meta">{" · ".join(facts)}</p>{error}</header>'
    )


def _timings_html(meta: Mapping[str, Any], cycles: pd.DataFrame) -> str:
    parts = []
    columns = [c for c in cycles.columns if str(c).startswith("seconds_")]
    if columns:
        # cycle 0 is one classifier per seed, repeated once per strategy: count it once
        zero = cycles[cycles["cycle"] == 0].drop_duplicates("seed")
        later = cycles[cycles["cycle"] >= 1]
        rows = []
        for c in columns:
            z = pd.to_numeric(zero[c], errors="coerce")
            lt = pd.to_numeric(later[c], errors="coerce")
            total = z.sum(min_count=1) if z.notna().any() else 0.0
            total = total + (lt.sum() if lt.notna().any() else 0.0)
            rows.append(
                [
                    c.removeprefix("seconds_"),
                    f"{z.mean():.1f}" if z.notna().any() else "–",
                    f"{lt.mean():.1f}" if lt.notna().any() else "–",
                    f"{float(total):.1f}",
                ]
            )
        parts.append(
            '<p class="note">Seconds per (seed, strategy, cycle) row of the cycle table; the '
            "total counts each seed's cycle 0 once.</p>"
        )
        parts.append(
            html_table(
                ["step", "mean, cycle 0", "mean, cycles ≥ 1", "total"],
                rows,
                [False, True, True, True],
                css_class="data timings",
            )
        )
    extra = meta.get("timings") or meta.get("stage_seconds") or {}
    if isinstance(extra, Mapping) and extra:
        rows = [[k, fmt_value(v)] for k, v in extra.items()]
        parts.append(html_table(["stage", "seconds"], rows, [False, True], css_class="data"))
    if not is_missing(meta.get("seconds")):
        parts.append(f'<p class="note">Whole run (wall clock): {float(meta["seconds"]):.1f} s.</p>')
    return "\n".join(parts) or '<p class="note">No timings recorded.</p>'


def _diagnostics_html(cycles: pd.DataFrame) -> str:
    columns = [c for c in _DIAGNOSTICS if c in cycles.columns]
    if not columns:
        return '<p class="note">No training diagnostics in the cycle table.</p>'
    numbers = cycles[["strategy", "cycle"]].copy()
    for c in columns:
        numbers[c] = pd.to_numeric(cycles[c], errors="coerce")
    means = numbers.groupby(["strategy", "cycle"], sort=False)[columns].mean()
    rows = [
        [s, str(c), *(fmt_value(means.loc[(s, c), k]) for k in columns)]
        for s in ordered_strategies(numbers["strategy"])
        for c in sorted({int(c) for c in numbers.loc[numbers["strategy"] == s, "cycle"]})
    ]
    return '<p class="note">Means over seeds.</p>' + html_table(
        ["strategy", "cycle", *columns],
        rows,
        [False, True] + [True] * len(columns),
        css_class="data diagnostics",
    )


def details_html(meta: Mapping[str, Any], cycles: pd.DataFrame) -> str:
    """Run details: model and dataset, the config (YAML), versions, timings, diagnostics."""
    parts = ["<h3>Model and data</h3>"]
    facts = [
        ["model", _model(meta, cycles) or "–"],
        ["dataset", _dataset(meta, cycles) or "–"],
        ["rows of the cycle table", str(len(cycles))],
    ]
    for column in ("config_hash", "lambda_aux"):
        if column in cycles.columns:
            facts.append([column, _distinct(cycles, column) or "–"])
    parts.append(html_table(["item", "value"], facts, css_class="data facts"))
    parts.append("<h3>Config</h3>")
    config = meta.get("config")
    if isinstance(config, str) and config.strip():
        parts.append(f'<pre class="config">{esc(config)}</pre>')
    elif isinstance(config, Mapping) and config:
        text = yaml.safe_dump(
            dict(config), sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        parts.append(f'<pre class="config">{esc(text)}</pre>')
    else:
        parts.append('<p class="note">No config recorded.</p>')
    parts.append("<h3>Versions</h3>")
    rows = [[k, v] for k, v in (meta.get("versions") or {}).items()]
    rows += [
        [f"{c} (cycle table)", _distinct(cycles, c)]
        for c in cycles.columns
        if "version" in str(c).lower()
    ]
    if rows:
        parts.append(html_table(["package", "version"], rows, css_class="data versions"))
    else:
        parts.append('<p class="note">No versions recorded.</p>')
    parts.append("<h3>Timings</h3>")
    parts.append(_timings_html(meta, cycles))
    parts.append("<h3>Training diagnostics</h3>")
    parts.append(_diagnostics_html(cycles))
    return "\n".join(parts)


def render_ception_report(out_dir: Path, cycles: pd.DataFrame, meta: Mapping[str, Any]) -> Path:
    """Write ``out_dir/report.html`` (figures under ``out_dir/plots/``) and return its path.

    Computes ``summarize``, ``check_against_controls`` and ``accuracy_check`` of ``cycles`` and
    lays them out as sections: the method check (verdicts, tables), the metric tables, the
    figures and the run details. ``meta`` (all optional): ``name``, ``model`` / ``model_id``,
    ``dataset``, ``config`` (YAML text or a mapping), ``versions`` (mapping), ``timings``
    (stage -> seconds), ``seconds``, ``status``, ``started``, ``finished``, ``error``. The file
    is self-contained (PNG data URIs, inline CSS, no script) and every text is HTML-escaped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    frame = _validated(cycles)
    summary = summarize(frame)
    checks = check_against_controls(frame)
    acc = accuracy_check(frame)
    figures = plot_cycles(summary, out_dir / "plots")
    name = str(meta.get("name") or out_dir.name)
    sections = [
        ("check", "Method check", _verdicts_html(checks, acc) + check_tables_html(checks, acc)),
        ("metrics", "Metrics per cycle", metric_tables_html(summary)),
        ("plots", "Figures", plots_section(figures)),
        ("run", "Run details", details_html(meta, frame)),
    ]
    text = html_page(
        f"saelab ception report: {name}",
        _header(name, meta, frame),
        sections,
        "from the cycle table",
    )
    path = out_dir / REPORT_NAME
    write_text_atomic(path, text)
    return path


def write_tables(cycles: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write the cycle table, its summary and both checks into ``out_dir`` atomically.

    Files: ``cycles.parquet`` / ``.csv`` (``cycles`` as given, without its index),
    ``summary.parquet`` / ``.csv`` (``summarize``), ``checks.csv`` (``check_against_controls``)
    and ``accuracy_check.csv`` (``accuracy_check``). Returns file name -> path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = _validated(cycles)
    tables = {
        "cycles": cycles.reset_index(drop=True),
        "summary": summarize(frame),
        "checks": check_against_controls(frame),
        "accuracy_check": accuracy_check(frame),
    }
    written: dict[str, Path] = {}
    for stem, table in tables.items():
        formats = ("parquet", "csv") if stem in ("cycles", "summary") else ("csv",)
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            with atomic_path(path) as tmp:
                if fmt == "parquet":
                    table.to_parquet(tmp, index=False)
                else:
                    table.to_csv(tmp, index=False)
            written[path.name] = path
    return written


# ----- console ----------------------------------------------------------------------------------


def _console_cell(row: pd.Series | None) -> str:
    if row is None or is_missing(row["mean"]):
        return "–"
    half = row["ci_high"] - row["mean"]
    return _pm(row["mean"], None if is_missing(half) else half)


def print_ception_summary(cycles: pd.DataFrame, console: Console | None = None) -> None:
    """Print a strategy × cycle table of the main metrics (mean ± 95% CI half-width over seeds),
    then the verdict lines and the check's rule. Text is escaped for rich markup."""
    console = console or Console()
    if not console.is_terminal and console.width < 120:
        console = Console(file=console.file, width=120)  # logs and pipes: don't squeeze the table
    frame = _validated(cycles)
    columns = [(m, h) for m, h in _CONSOLE_METRICS if m in frame.columns]
    summary = summarize(frame, [m for m, _ in columns])
    cells = {(r["strategy"], int(r["cycle"]), r["metric"]): r for _, r in summary.iterrows()}
    table = Table(
        title="SAE-ception: mean ± 95% CI half-width over seeds",
        title_justify="left",
    )
    table.add_column("strategy", no_wrap=True)
    table.add_column("cycle", justify="right")
    table.add_column("seeds", justify="right")
    for _, header in columns:
        table.add_column(rich_escape(header), justify="right", no_wrap=True)
    for strategy in ordered_strategies(frame["strategy"]):
        own = frame[frame["strategy"] == strategy]
        for cycle in sorted({int(c) for c in own["cycle"]}):
            seeds = own.loc[own["cycle"] == cycle, "seed"].nunique()
            table.add_row(
                rich_escape(strategy),
                str(cycle),
                str(seeds),
                *(_console_cell(cells.get((strategy, cycle, m))) for m, _ in columns),
            )
    console.print(table)
    checks = check_against_controls(frame)
    for line in verdict_lines(checks, accuracy_check(frame)):
        console.print(rich_escape(line))
    console.print(rich_escape(rule_note(checks)), style="dim")
