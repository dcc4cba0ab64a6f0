"""L0 against each SAE metric, with Pareto fronts: the sweep figures of the eval report.

Most SAE metrics move with sparsity, so SAEs are compared at equal L0 (SAEBench's README; its
``sae_bench/sae_bench_utils/graphing_utils.py::plot_2var_graph`` draws one scatter of L0 against
each metric, marker per trainer). Here each metric of the merged eval table gets one figure: a
scatter of L0 (x) against the metric (y), colour and marker per architecture, the width ``d_sae``
written beside each point, and the Pareto front (the SAEs no other SAE beats on both L0 and the
metric) drawn as a step line, over all SAEs and per architecture. One panel per hook when the table
holds several.

Figures are drawn on their own ``matplotlib.figure.Figure`` with Agg and written as PNG and SVG by
``saelab.report.plots._save``, in the colours of the run report (Okabe-Ito).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from saelab.report.plots import _RC, OKABE_ITO, PlotFile, _legend, _save

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """One column of the merged eval table: its axis label, direction and definition in words."""

    column: str
    label: str
    short: str
    higher_is_better: bool
    definition: str

    @property
    def direction(self) -> str:
        """``higher is better`` or ``lower is better``."""
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def arrow(self) -> str:
        """``↑`` when higher is better, else ``↓``."""
        return "↑" if self.higher_is_better else "↓"


#: The x axis of every figure.
L0 = Metric(
    "core.l0",
    "L0 (mean number of active latents per token)",
    "L0",
    False,
    "L0: the mean over held-out tokens of the number of latents with a non-zero code.",
)


def top_k_accuracy(k: int) -> Metric:
    """The SAEBench sparse-probing accuracy with the top ``k`` latents (column of that eval)."""
    latents = (
        "latent with the largest class mean difference"
        if k == 1
        else ("latents with the largest class mean differences")
    )
    return Metric(
        f"sparse_probing.sae_top_{k}_test_accuracy",
        f"sparse probing accuracy, top-{k} latent{'' if k == 1 else 's'}",
        f"probe acc k={k}",
        True,
        "Sparse probing (SAEBench protocol): test accuracy of an L2 logistic regression on the "
        f"k = {k} mean-pooled {latents}, averaged over datasets.",
    )


def paper_auc(k: int) -> Metric:
    """The mean test AUC of the paper's SAE probe at ``k`` latents (sparse-probing eval)."""
    return Metric(
        f"sparse_probing.paper_auc_k{k}",
        f"SAE probe test AUC, k = {k}",
        f"probe AUC k={k}",
        True,
        f"SAE probes of the paper's k sweep: mean test ROC AUC of the k = {k} probe over datasets.",
    )


#: Every metric the figures know, in report order, with its direction (one place to change).
METRICS: tuple[Metric, ...] = (
    Metric(
        "core.explained_variance",
        "explained variance (about the mean)",
        "EV",
        True,
        "Explained variance about the mean: 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²) over held-out tokens.",
    ),
    Metric(
        "core.explained_variance_legacy",
        "explained variance, legacy per-token",
        "EV legacy",
        True,
        "Legacy explained variance (SAEBench's paper number): the mean over tokens of "
        "1 − ‖x_t − x̂_t‖² / ‖x_t − mean_B x‖², B the token's batch.",
    ),
    Metric(
        "core.mse",
        "MSE, E‖x − x̂‖²",
        "MSE",
        False,
        "Mean squared error: E‖x − x̂‖², summed over dimensions, averaged over tokens.",
    ),
    Metric(
        "core.cossim",
        "cosine similarity cos(x, x̂)",
        "cos",
        True,
        "Cosine similarity: the mean over tokens of cos(x, x̂).",
    ),
    Metric(
        "core.ce_loss_score",
        "CE-loss score (CE_zero − CE_sae) / (CE_zero − CE_clean)",
        "CE score",
        True,
        "CE-loss score (loss recovered): (CE_zero − CE_sae) / (CE_zero − CE_clean), next-token "
        "cross-entropies averaged over tokens with the hook's output replaced by the SAE's "
        "reconstruction (sae), by zeros (zero) or left alone (clean).",
    ),
    Metric(
        "core.kl_div_score",
        "KL score (KL_zero − KL_sae) / KL_zero",
        "KL score",
        True,
        "KL score: (KL_zero − KL_sae) / KL_zero, KL(p_clean ‖ p_spliced) of the next-token "
        "distributions averaged over tokens, spliced with the reconstruction (sae) or zeros (zero).",
    ),
    Metric(
        "core.pooled_cossim_score",
        "pooled-embedding cosine score (cos_sae − cos_zero) / (1 − cos_zero)",
        "pooled cos",
        True,
        "Pooled cosine score (encoders without an LM head): (cos_sae − cos_zero) / (1 − cos_zero), "
        "cos_m the mean over texts of the cosine between the model's mean-pooled output embedding "
        "without a splice and with the reconstruction (sae) or zeros (zero) spliced in.",
    ),
    Metric(
        "core.dead_fraction",
        "fraction of dead latents",
        "dead",
        False,
        "Dead fraction: the share of latents that never fire on the evaluated tokens.",
    ),
    top_k_accuracy(1),
    top_k_accuracy(5),
    paper_auc(16),
    Metric(
        "absorption.mean_absorption_fraction_score",
        "absorption fraction (first-letter task)",
        "absorption",
        False,
        "Absorption (SAEBench's first-letter task, Chanin et al.): the mean fraction of the "
        "probe direction carried by latents other than the letter's main latents (partial and "
        "full absorption).",
    ),
    Metric(
        "absorption.mean_full_absorption_score",
        "full absorption rate (first-letter task)",
        "full absorption",
        False,
        "Full absorption (SAEBench's first-letter task): the mean rate of words where one other "
        "latent absorbs the letter's direction while the main latents stay silent.",
    ),
)

_TOP_K_ACCURACY = re.compile(r"^sparse_probing\.sae_top_(\d+)_test_accuracy$")
_PAPER_AUC = re.compile(r"^sparse_probing\.paper_auc_k(\d+)$")
_ARCH_COLORS = (
    OKABE_ITO["blue"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["green"],
    OKABE_ITO["purple"],
    OKABE_ITO["orange"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["black"],
)
_ARCH_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
#: Points are labelled with their width when a panel has at most this many.
_MAX_LABELLED = 24


def _extra_metric(column: str) -> Metric | None:
    """A metric of a top-k sparse-probing column not listed in ``METRICS`` (other ks)."""
    for pattern, build in ((_TOP_K_ACCURACY, top_k_accuracy), (_PAPER_AUC, paper_auc)):
        if m := pattern.match(column):
            return build(int(m.group(1)))
    return None


def metrics_for(columns: Sequence[str]) -> list[Metric]:
    """The metrics to plot for a table with ``columns``: every entry of ``METRICS`` (present or
    not, so that an absent one is reported), then the other top-k probing columns present."""
    known = {m.column for m in METRICS}
    extras = [e for c in columns if c not in known and (e := _extra_metric(str(c))) is not None]
    return [*METRICS, *extras]


def pareto_front(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    minimize_x: bool = True,
    maximize_y: bool = True,
) -> np.ndarray:
    """Indices of the non-dominated points, ordered by x (ascending; ties by index).

    Point i is dominated when some j is at least as good on both axes and strictly better on one
    (with the default directions: x_j <= x_i and y_j >= y_i, one strictly). Points with a NaN
    coordinate are neither on the front nor dominate. Equal points are all on the front.
    One sweep over the points sorted by x: a point is on the front when it has the best y of its
    x and that y beats every y at a strictly better x. ``x``, ``y``: shape ``[n]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, got shapes {x.shape} and {y.shape}")
    valid = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    a = x[valid] if minimize_x else -x[valid]  # both costs: smaller is better
    b = -y[valid] if maximize_y else y[valid]
    order = np.lexsort((b, a))
    front: list[int] = []
    best_before = np.inf  # the best cost b among points with a strictly smaller a
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and a[order[j]] == a[order[i]]:
            j += 1
        group_best = b[order[i]]  # sorted by b within equal a
        if group_best < best_before:
            front.extend(int(valid[p]) for p in order[i:j] if b[p] == group_best)
        best_before = min(best_before, group_best)
        i = j
    chosen = np.asarray(front, dtype=np.int64)
    return chosen[np.lexsort((chosen, x[chosen]))] if len(chosen) else chosen


def l0_axis_scale(l0: Sequence[float] | np.ndarray) -> str:
    """``log`` when the finite positive L0 values span more than a factor 10, else ``linear``."""
    values = np.asarray(l0, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0 or values.min() <= 0:
        return "linear"
    return "log" if values.max() / values.min() > 10 else "linear"


def _figure_name(metric: Metric) -> str:
    return "l0_vs_" + re.sub(r"[^A-Za-z0-9]+", "_", metric.column).strip("_")


def _width_label(d_sae: object) -> str:
    try:
        return f"{int(float(d_sae))}"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""


def _step(ax: Axes, x: np.ndarray, y: np.ndarray, x_right: float, **kwargs: object) -> None:
    """The front as a staircase: at budget L0 in [x_i, x_i+1) the best value reachable is y_i,
    held to the largest L0 of the panel."""
    if x_right > x[-1]:
        x, y = np.append(x, x_right), np.append(y, y[-1])
    ax.step(x, y, where="post", **kwargs)


def _draw_panel(
    ax: Axes,
    frame: pd.DataFrame,
    metric: Metric,
    styles: dict[str, tuple[str, str]],
    scale: str,
) -> None:
    """One panel: points per architecture, per-architecture fronts (dotted), the overall front."""
    x = frame[L0.column].to_numpy(np.float64)
    y = frame[metric.column].to_numpy(np.float64)
    arch = frame["architecture"].astype(str).to_numpy()
    x_right = float(x.max())
    per_architecture = False
    for name in sorted(set(arch)):
        color, marker = styles[name]
        mask = arch == name
        ax.scatter(
            x[mask],
            y[mask],
            color=color,
            marker=marker,
            s=36,
            edgecolors="black",
            linewidths=0.4,
            zorder=3,
            label=name,
        )
        if mask.sum() >= 2:
            idx = pareto_front(x[mask], y[mask], maximize_y=metric.higher_is_better)
            _step(ax, x[mask][idx], y[mask][idx], x_right, color=color, linestyle=":", lw=1.0)
            per_architecture = True
    idx = pareto_front(x, y, maximize_y=metric.higher_is_better)
    _step(
        ax,
        x[idx],
        y[idx],
        x_right,
        color="black",
        lw=1.5,
        alpha=0.75,
        zorder=2,
        label=f"Pareto front, all SAEs ({metric.direction})",
    )
    if per_architecture:  # one legend entry for the dotted fronts
        ax.add_line(
            Line2D([], [], color="#555555", ls=":", lw=1.0, label="Pareto front per architecture")
        )
    if "d_sae" in frame and len(frame) <= _MAX_LABELLED:
        for xi, yi, d in zip(x, y, frame["d_sae"], strict=True):
            ax.annotate(
                _width_label(d),
                (xi, yi),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=6.5,
                color="#333333",
            )
    ax.set_xscale(scale)
    if scale == "log":  # label the decades only: minor labels (3x10^1, 4x10^1) collide
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(L0.label)
    ax.set_ylabel(f"{metric.label} {metric.arrow}")
    ax.grid(True, color="#e6e6e6", lw=0.6)


def skip_reasons(merged: pd.DataFrame, column: str) -> str:
    """The distinct ``<eval>.skipped_reason`` values (``saelab merge``) of ``column``'s eval, as
    ``<eval> skipped: <reason>; ...``; empty when the table records none."""
    eval_type = column.split(".", 1)[0]
    reasons = merged.get(f"{eval_type}.skipped_reason", pd.Series(dtype=object)).dropna()
    return "; ".join(f"{eval_type} skipped: {r}" for r in pd.unique(reasons.astype(str)) if r)


def _plot_metric(
    merged: pd.DataFrame,
    metric: Metric,
    out_dir: Path,
    styles: dict[str, tuple[str, str]],
) -> PlotFile:
    """One figure for ``metric`` (a panel per hook), or a ``PlotFile`` with the reason not."""
    name = _figure_name(metric)
    title = f"L0 against {metric.label}"
    if L0.column not in merged:
        return PlotFile(name, title, "", reason=f"no {L0.column} column (L0 comes from core)")
    if metric.column not in merged:
        why = skip_reasons(merged, metric.column) or "eval not run or n/a"
        return PlotFile(name, title, "", reason=f"no {metric.column} column ({why})")
    frame = merged.copy()
    frame[L0.column] = pd.to_numeric(frame[L0.column], errors="coerce")
    frame[metric.column] = pd.to_numeric(frame[metric.column], errors="coerce")
    keep = frame[L0.column].notna() & frame[metric.column].notna()
    left_out = int((~keep).sum())
    frame = frame[keep]
    if frame.empty:
        why = skip_reasons(merged, metric.column)
        reason = f"no SAE has both {L0.column} and {metric.column}" + (f" ({why})" if why else "")
        return PlotFile(name, title, "", reason=reason)
    hooks = (
        [h for h in pd.unique(frame["hook"].astype(str))]
        if "hook" in frame and frame["hook"].notna().all()
        else []
    )
    panels = [(h, frame[frame["hook"].astype(str) == h]) for h in hooks] if len(hooks) > 1 else []
    panels = panels or [(hooks[0] if hooks else "", frame)]
    scale = l0_axis_scale(frame[L0.column])
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(max(5.2 * ncols, 6.4), 3.9 * nrows + 0.9), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(len(panels))]
    for ax, (hook, part) in zip(axes, panels, strict=True):
        _draw_panel(ax, part, metric, styles, scale)
        if hook:
            ax.set_title(hook)
    fig.suptitle(title)
    _legend(fig, axes, ncols=3)
    png, svg = _save(fig, out_dir, name)
    caption = (
        f"{metric.definition} {metric.direction.capitalize()}. Each point is one SAE (colour and "
        "marker: architecture; number: width d_sae). Black steps: the Pareto front over all "
        f"SAEs{' of the hook' if len(panels) > 1 else ''} (no other SAE has both a lower or equal "
        "L0 and an equal or better value, one strictly); dotted steps: each architecture's own "
        f"front. L0 axis {'logarithmic' if scale == 'log' else 'linear'}."
    )
    if left_out:
        caption += f" {left_out} SAE(s) without a value left out."
    return PlotFile(name, title, caption, png=png, svg=svg)


def _architecture_styles(merged: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """(colour, marker) per architecture, in sorted order, the same in every figure."""
    names = sorted({str(a) for a in merged.get("architecture", pd.Series(dtype=object))})
    return {
        name: (_ARCH_COLORS[i % len(_ARCH_COLORS)], _ARCH_MARKERS[i % len(_ARCH_MARKERS)])
        for i, name in enumerate(names)
    }


def plot_l0_vs_metrics(merged: pd.DataFrame, out_dir: Path) -> list[PlotFile]:
    """Draw L0 against each metric of ``merged`` into ``out_dir``; one ``PlotFile`` per metric.

    ``merged`` has one row per SAE: ``sae``, ``architecture``, ``d_sae``, ``hook`` and metric
    columns ``<eval>.<metric>`` (``metrics_for`` lists those drawn). A metric absent or NaN for
    every SAE is returned with the reason instead of files, and its old files are removed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = merged.copy()
    if "architecture" not in merged:
        merged["architecture"] = "unknown"
    merged["architecture"] = merged["architecture"].fillna("unknown").astype(str)
    styles = _architecture_styles(merged)
    figures = []
    with matplotlib.rc_context(_RC):
        for metric in metrics_for(list(merged.columns)):
            figure = _plot_metric(merged, metric, out_dir, styles)
            if not figure.drawn:
                for ext in ("png", "svg"):
                    (out_dir / f"{figure.name}.{ext}").unlink(missing_ok=True)
                log.info("plot %s not drawn: %s", figure.name, figure.reason)
            figures.append(figure)
    return figures
