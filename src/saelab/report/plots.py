"""Figures of a run: SAE probe AUC against k, the hard-regime curves, OOD bars, per-dataset scatter.

What is plotted follows the paper's aggregation (sae-probes spec section 4.4): mean test AUC over
datasets per probe, the quiver of arrows (``best_baseline``, ``best_with_sae``) in the hard regimes,
L2 logreg against the SAE probe at k = 128 out of distribution, and per-dataset comparisons.

Every figure is drawn on its own ``matplotlib.figure.Figure`` (Agg, no pyplot state) and written
atomically as PNG and SVG into ``run_dir/plots/``. Colours come from the Okabe-Ito palette, which
colour-blind readers can tell apart, and every series also has its own line style, marker or
hatch so that the figures read in greyscale. A figure whose data is absent is not drawn: it is
returned with the reason instead of files.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from saelab.io import write_bytes_atomic, write_json_atomic
from saelab.names import BASELINES

log = logging.getLogger(__name__)

#: Resolution of the PNG files (the SVG files are vector).
DPI = 110
#: Names of every figure, in report order.
FIGURE_NAMES: tuple[str, ...] = (
    "auc_vs_k",
    "regime_scarcity",
    "regime_imbalance",
    "regime_label_noise",
    "ood_bars",
    "scatter_sae_vs_baseline",
)
#: Title of each figure.
TITLES: dict[str, str] = {
    "auc_vs_k": "Sparse probes: mean test AUC against the number of latents k (normal setting)",
    "regime_scarcity": "Mean test AUC under data scarcity",
    "regime_imbalance": "Mean test AUC under class imbalance",
    "regime_label_noise": "Mean test AUC under label noise",
    "ood_bars": "Out-of-distribution test sets: test AUC per dataset",
    "scatter_sae_vs_baseline": "Per dataset: SAE probe against baseline (normal setting)",
}
#: File listing the figures of the last build (name, title, files, caption, reason not drawn).
MANIFEST = "plots.json"

# Okabe & Ito (2008), "Color Universal Design": eight colours distinguishable with any common
# colour-vision deficiency.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
_GREY = "#7F7F7F"

_QUIVERS = ("best_baseline", "best_with_sae")


@dataclass(frozen=True)
class Style:
    """How one series is drawn: colour, line style, marker, bar hatch, line width."""

    color: str
    linestyle: Any = "-"
    marker: str = "o"
    hatch: str = ""
    linewidth: float = 1.6

    def line(self) -> dict[str, Any]:
        """Keyword arguments of ``Axes.plot``."""
        return {
            "color": self.color,
            "linestyle": self.linestyle,
            "marker": self.marker,
            "linewidth": self.linewidth,
            "markersize": 5,
        }


#: Fixed styles of the baselines and the two quivers; SAE series take ``_SAE_STYLES`` in turn.
_FIXED_STYLES: dict[str, Style] = {
    "logreg": Style(OKABE_ITO["black"], "-", "o", "", 2.0),
    "pca": Style(_GREY, (0, (5, 2)), "s", "\\\\"),
    "knn": Style(_GREY, (0, (1, 1.5)), "v", ".."),
    "xgboost": Style(_GREY, (0, (6, 2, 1, 2)), "P", "++"),
    "mlp": Style(_GREY, (0, (2, 3)), "X", "--"),
    "best_baseline": Style(OKABE_ITO["orange"], (0, (7, 2)), "D", "//", 2.0),
    "best_with_sae": Style(OKABE_ITO["vermillion"], "-.", "*", "xx", 2.0),
}
_SAE_COLORS = (OKABE_ITO["blue"], OKABE_ITO["green"], OKABE_ITO["purple"], OKABE_ITO["sky_blue"])
_SAE_MARKERS = ("^", "s", "v", "D", "<", ">")
_SAE_HATCHES = ("..", "oo", "**", "||")
#: Line style of an SAE probe line by the rank of its k from the largest drawn: the largest is solid.
_K_LINESTYLES = ("-", (0, (3, 1.5)), (0, (1, 1)), (0, (5, 1, 1, 1)))

_DISPLAY = {"best_baseline": "best baseline (quiver)", "best_with_sae": "best with SAE (quiver)"}
_REGIMES = {
    "scarcity": ("training size n", True, "data scarcity"),
    "imbalance": ("positive fraction of the training set", False, "class imbalance"),
    "label_noise": ("fraction of training labels flipped", False, "label noise"),
}


@dataclass(frozen=True)
class PlotFile:
    """One figure of the report: its files, or why it was not drawn."""

    name: str
    title: str
    caption: str
    png: Path | None = None
    svg: Path | None = None
    reason: str | None = None

    @property
    def drawn(self) -> bool:
        """True when the PNG and SVG files were written."""
        return self.reason is None

    @property
    def status(self) -> str:
        """``drawn`` or ``not drawn: <reason>``."""
        return "drawn" if self.drawn else f"not drawn: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """The manifest entry (file names relative to the plots folder)."""
        out = asdict(self)
        out["png"] = self.png.name if self.png else None
        out["svg"] = self.svg.name if self.svg else None
        return out


class _NotDrawn(Exception):
    """Raised inside a figure function when its data is absent; carries the reason."""


def display_name(label: str) -> str:
    """Readable legend text of a probe label: ``sae:topk:k16:l1`` -> ``SAE topk k=16 (l1)``."""
    if label.startswith("sae:"):
        parts = label.split(":")
        if len(parts) >= 4:
            sae, k, variant = parts[1], parts[2].removeprefix("k"), ":".join(parts[3:])
            return f"SAE {sae} k={k} ({variant})"
    return _DISPLAY.get(label, label)


def primary_variant(results: pd.DataFrame) -> str | None:
    """The primary SAE probe variant: the one run outside the normal setting most often.

    The hard regimes run only the first configured variant by default (config
    ``probes.sae_variants``), so it is the most frequent there; with the normal setting alone,
    the variant of the first SAE row (the pipeline writes variants in config order).
    """
    sae = results[results["method"] == "sae"]
    if sae.empty or "variant" not in sae:
        return None
    order = list(pd.unique(sae["variant"].dropna()))
    if not order:
        return None
    hard = sae[sae["setting"] != "normal"]["variant"].value_counts()
    if hard.empty:
        return str(order[0])
    return str(max(order, key=lambda v: (hard.get(v, 0), -order.index(v))))


def _layer_grid(n: int, width: float = 4.2, height: float = 3.4, rows: int = 1) -> Figure:
    """A constrained-layout figure sized for ``n`` panels per row (at most 3 per row)."""
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols) * rows
    figsize = (max(width * ncols + 0.4, 6.8), height * nrows + 0.9)  # room for the title
    return Figure(figsize=figsize, layout="constrained")


def _panels(fig: Figure, layers: Sequence[Any], rows: int = 1) -> list[list[Axes]]:
    """``rows`` groups of one axes per layer, laid out at most 3 per row."""
    ncols = min(len(layers), 3)
    per_group = math.ceil(len(layers) / ncols)
    grid = fig.add_gridspec(per_group * rows, ncols)
    out = []
    for r in range(rows):
        axes = []
        for i in range(len(layers)):
            axes.append(fig.add_subplot(grid[r * per_group + i // ncols, i % ncols]))
        out.append(axes)
    return out


def _legend(fig: Figure, axes: Iterable[Axes], ncols: int = 4) -> None:
    """One legend for the whole figure, below the panels (outside the data)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen.keys()),
            loc="outside lower center",
            ncols=min(ncols, len(seen)),
            frameon=False,
            fontsize="small",
        )


def _save(fig: Figure, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``fig`` as ``<name>.png`` and ``<name>.svg`` atomically; returns both paths."""
    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot may have chosen elsewhere
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        meta = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=meta)
        path = out_dir / f"{name}.{fmt}"
        write_bytes_atomic(path, buf.getvalue())
        paths.append(path)
    return paths[0], paths[1]


def _layers(frame: pd.DataFrame) -> list[Any]:
    return sorted(pd.unique(frame["layer"]))


class _SAEStyles:
    """Consistent colours and markers per (SAE id, variant) across every figure of a build."""

    def __init__(self, results: pd.DataFrame, primary: str | None) -> None:
        sae = results[results["method"] == "sae"][["sae", "variant"]].drop_duplicates()
        keys = [(str(s), str(v)) for s, v in zip(sae["sae"], sae["variant"], strict=True)]
        # the primary variant first (a stable sort), so it takes the first colour
        keys = sorted(keys, key=lambda key: key[1] != str(primary))
        self._index = {key: i for i, key in enumerate(keys)}

    def style(self, sae: Any, variant: Any, k_rank: int = 0) -> Style:
        """Style of the SAE series; ``k_rank`` (0 for the largest k drawn) picks the line style."""
        i = self._index.get((str(sae), str(variant)), len(self._index))
        return Style(
            _SAE_COLORS[i % len(_SAE_COLORS)],
            _K_LINESTYLES[k_rank % len(_K_LINESTYLES)],
            _SAE_MARKERS[(i + 2 * k_rank) % len(_SAE_MARKERS)],
            _SAE_HATCHES[i % len(_SAE_HATCHES)],
        )


def _sae_probe_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The distinct SAE probes of ``frame``: probe, sae, k, variant."""
    sae = frame[frame["method"] == "sae"]
    cols = ["probe", "sae", "k", "variant"]
    return sae[cols].drop_duplicates("probe").reset_index(drop=True)


def _pick_k(ks: Iterable[Any], preferred: Sequence[int]) -> int:
    """The largest of ``preferred`` present in ``ks``; otherwise the largest k present."""
    present = {int(k) for k in ks if pd.notna(k)}
    for k in sorted(preferred, reverse=True):
        if k in present:
            return k
    return max(present)


def _main_sae_probes(
    frame: pd.DataFrame, preferred: Sequence[int], primary: str | None
) -> list[tuple[str, Any, int, Any]]:
    """One SAE probe per SAE id: the primary variant (if run) at the largest preferred k.

    Returns (probe label, SAE id, k, variant) per SAE id, in order of first appearance.
    """
    table = _sae_probe_table(frame)
    if table.empty:
        return []
    chosen = []
    for sae_id, group in table.groupby("sae", sort=False):
        if primary is not None and (group["variant"] == primary).any():
            group = group[group["variant"] == primary]
        else:
            group = group[group["variant"] == group["variant"].iloc[0]]
        k = _pick_k(group["k"], preferred)
        row = group[group["k"].astype(int) == k].iloc[0]
        chosen.append((str(row["probe"]), sae_id, k, row["variant"]))
    return chosen


def plot_auc_vs_k(
    results: pd.DataFrame,
    quivers: pd.DataFrame | None,
    out_dir: Path,
    styles: _SAEStyles,
) -> PlotFile:
    """Normal setting: mean test AUC against k per SAE probe series, baselines as flat lines."""
    title = TITLES["auc_vs_k"]
    normal = results[results["setting"] == "normal"]
    if normal.empty:
        raise _NotDrawn("no normal-setting rows")
    sae = normal[normal["method"] == "sae"]
    if sae.empty:
        raise _NotDrawn("no SAE probe rows in the normal setting")
    base = normal[normal["method"] != "sae"]
    curves = sae.groupby(["layer", "sae", "variant", "k"], sort=True)["test_auc"].mean()
    flat = base.groupby(["layer", "method"])["test_auc"].mean()
    # with a single baseline the best baseline is that baseline: no second line
    best = _quiver_means(quivers, "normal", "best_baseline") if base.method.nunique() > 1 else None
    layers = _layers(normal)
    fig = _layer_grid(len(layers))
    axes = _panels(fig, layers)[0]
    for ax, layer in zip(axes, layers, strict=True):
        per_layer = curves.loc[layer] if layer in curves.index.get_level_values(0) else None
        ks_all: list[int] = []
        if per_layer is not None:
            for (sae_id, variant), line in per_layer.groupby(level=[0, 1], sort=False):
                ks = line.index.get_level_values("k").astype(int).to_numpy()
                ks_all.extend(ks.tolist())
                st = styles.style(sae_id, variant)
                ax.plot(ks, line.to_numpy(), label=f"SAE {sae_id} ({variant})", **st.line())
        for method in _ordered_methods(flat.loc[layer].index if layer in flat.index else []):
            st = _FIXED_STYLES.get(method, Style(_GREY))
            ax.axhline(
                flat.loc[(layer, method)],
                color=st.color,
                linestyle=st.linestyle,
                linewidth=st.linewidth,
                label=method,
            )
        if best is not None and layer in best.index:
            st = _FIXED_STYLES["best_baseline"]
            ax.axhline(
                best.loc[layer],
                color=st.color,
                linestyle=st.linestyle,
                linewidth=st.linewidth,
                label=_DISPLAY["best_baseline"],
            )
        ax.set_xscale("log", base=2)
        if ks_all:
            ticks = sorted(set(ks_all))
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("k (SAE latents kept)")
        ax.set_ylabel("mean test AUC")
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    fig.suptitle(title, fontsize="medium")
    png, svg = _save(fig, out_dir, "auc_vs_k")
    n = normal["dataset"].nunique()
    caption = (
        f"Mean test ROC AUC over {n} datasets in the normal setting for SAE probes with the top k "
        "latents (one line per SAE and probe variant; log2 x axis). Horizontal lines: each "
        "baseline on the raw activations and the best baseline by validation AUC."
    )
    return PlotFile("auc_vs_k", title, caption, png, svg)


def _ordered_methods(methods: Iterable[str]) -> list[str]:
    present = list(methods)
    known = [m for m in BASELINES if m in present]
    return known + sorted(m for m in present if m not in known)


def _quiver_means(quivers: pd.DataFrame | None, setting: str, method: str) -> pd.Series | None:
    """Mean test AUC per layer of one quiver in one setting (None when absent)."""
    rows = _quiver_rows(quivers, setting, method)
    return None if rows is None else rows.groupby("layer")["test_auc"].mean()


def _regime_lines(
    curves: pd.DataFrame,
    quiver_ks: Sequence[int],
    primary: str | None,
    sae_table: pd.DataFrame,
    max_sae_lines: int = 6,
) -> list[str]:
    """Probe labels drawn in a regime plot: logreg, the quivers, then SAE probes at the quiver ks.

    Every SAE probe of the primary variant is drawn; other variants join while there are fewer
    than ``max_sae_lines`` SAE lines. When no SAE probe has a quiver k, the largest k is drawn.
    """
    present = set(curves["probe"])
    labels = [p for p in ("logreg", *_QUIVERS) if p in present]
    sae = sae_table[sae_table["probe"].isin(present)]
    if sae.empty:
        return labels
    ks = [k for k in quiver_ks if (sae["k"].astype(int) == k).any()] or [int(sae["k"].max())]
    sae = sae[sae["k"].astype(int).isin(ks)]
    is_primary = sae["variant"] == primary
    chosen = list(sae[is_primary].sort_values(["sae", "k"], kind="stable")["probe"])
    for probe in sae[~is_primary].sort_values(["variant", "sae", "k"], kind="stable")["probe"]:
        if len(chosen) >= max_sae_lines:
            break
        chosen.append(probe)
    return labels + chosen


def plot_regime(
    setting: str,
    curves: pd.DataFrame,
    sae_table: pd.DataFrame,
    out_dir: Path,
    styles: _SAEStyles,
    quiver_ks: Sequence[int],
    primary: str | None,
) -> PlotFile:
    """One hard regime: mean test AUC against the regime's value, one panel per layer."""
    xlabel, log_x, words = _REGIMES[setting]
    name = f"regime_{setting}"
    title = TITLES[name]
    data = curves[curves["setting"] == setting] if not curves.empty else curves
    if data.empty:
        raise _NotDrawn(f"no {setting} rows")
    labels = _regime_lines(data, quiver_ks, primary, sae_table)
    single_baseline = data["probe"].isin(BASELINES).groupby(data["probe"]).any().sum() <= 1
    if single_baseline:  # the best baseline is that baseline: its line would hide under it
        labels = [label for label in labels if label != "best_baseline"]
    if not labels:
        raise _NotDrawn(f"no logreg, quiver or SAE probe rows in {setting}")
    sae_info = sae_table[sae_table["probe"].isin(labels)].set_index("probe")
    ks_drawn = sorted({int(k) for k in sae_info["k"]}, reverse=True)
    layers = _layers(data)
    fig = _layer_grid(len(layers))
    axes = _panels(fig, layers)[0]
    for ax, layer in zip(axes, layers, strict=True):
        per_layer = data[data["layer"] == layer]
        for label in labels:
            line = per_layer[per_layer["probe"] == label].sort_values("setting_value")
            if line.empty:
                continue
            if label in sae_info.index:
                info = sae_info.loc[label]
                st = styles.style(info["sae"], info["variant"], ks_drawn.index(int(info["k"])))
            else:
                st = _FIXED_STYLES.get(label, Style(_GREY))
            x = line["setting_value"].astype(float).to_numpy()
            ax.plot(x, line["mean_test_auc"].to_numpy(), label=display_name(label), **st.line())
        if log_x:
            ax.set_xscale("log")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean test AUC")
        ax.grid(alpha=0.3)
    _legend(fig, axes, ncols=3)
    fig.suptitle(title, fontsize="medium")
    png, svg = _save(fig, out_dir, name)
    quiver_text = (
        "the best of baselines and SAE probes (chosen per dataset and value by validation AUC; "
        "only one baseline ran, so the best baseline is that baseline)"
        if single_baseline
        else "the best baseline and the best of baselines and SAE probes (both chosen per "
        "dataset and value by validation AUC)"
    )
    caption = (
        f"{words.capitalize()}: mean test ROC AUC over datasets against the {xlabel}"
        f"{' (log x axis)' if log_x else ''}: logreg on the raw activations, {quiver_text}, "
        "and the SAE probes at the quiver ks (solid line: the largest k)."
    )
    return PlotFile(name, title, caption, png, svg)


def plot_ood_bars(
    results: pd.DataFrame,
    quivers: pd.DataFrame | None,
    out_dir: Path,
    styles: _SAEStyles,
    primary: str | None,
) -> PlotFile:
    """Out of distribution: per OOD test set, logreg, best baseline and the SAE probe(s)."""
    title = TITLES["ood_bars"]
    ood = results[results["setting"] == "ood"]
    if ood.empty:
        raise _NotDrawn("no OOD rows")
    keys = ["layer", "dataset"]
    # (legend label, test AUC by (layer, dataset), style)
    bars: list[tuple[str, pd.Series, Style]] = []
    base = ood[ood["method"] != "sae"]
    logreg = base[base["method"] == "logreg"]
    if not logreg.empty:
        bars.append(("logreg", logreg.groupby(keys)["test_auc"].mean(), _FIXED_STYLES["logreg"]))
    best = _quiver_rows(quivers, "ood", "best_baseline")
    if best is not None and base["method"].nunique() > 1:
        bars.append(
            (
                display_name("best_baseline"),
                best.groupby(keys)["test_auc"].mean(),
                _FIXED_STYLES["best_baseline"],
            )
        )
    for probe, sae_id, _k, variant in _main_sae_probes(ood, (128, 16), primary):
        rows = ood[ood["probe"] == probe]
        bars.append(
            (
                display_name(probe),
                rows.groupby(keys)["test_auc"].mean(),
                styles.style(sae_id, variant),
            )
        )
    if not bars:
        raise _NotDrawn("no logreg or SAE probe rows in the OOD setting")
    layers = _layers(ood)
    datasets = sorted(pd.unique(ood["dataset"]))
    # horizontal bars: dataset names stay readable however many OOD sets there are
    height_in = max(2.5, len(datasets) * (0.16 * len(bars) + 0.12) + 1.4)
    fig = Figure(figsize=(3.6 * len(layers) + 2.2, height_in), layout="constrained")
    axes = [fig.add_subplot(1, len(layers), i + 1) for i in range(len(layers))]
    height = 0.8 / len(bars)
    y = np.arange(len(datasets))
    lowest = min(float(series.min()) for _, series, _ in bars)
    xmin = max(0.0, math.floor((lowest - 0.05) * 20) / 20)
    for i_ax, (ax, layer) in enumerate(zip(axes, layers, strict=True)):
        for i, (label, series, st) in enumerate(bars):
            values = [series.get((layer, d), np.nan) for d in datasets]  # absent: no bar
            ax.barh(
                y + (i - (len(bars) - 1) / 2) * height,
                values,
                height,
                label=label,
                color=st.color,
                hatch=st.hatch,
                edgecolor="white" if st.color == OKABE_ITO["black"] else "black",
                linewidth=0.5,
            )
        ax.set_yticks(y, datasets if i_ax == 0 else [""] * len(datasets), fontsize="small")
        ax.set_ylim(len(datasets) - 0.5, -0.5)  # first dataset on top
        ax.set_xlim(xmin, 1.0)
        ax.set_xlabel("test AUC")
        ax.set_title(f"layer {layer}")
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, axes)
    fig.suptitle(title, fontsize="medium")
    png, svg = _save(fig, out_dir, "ood_bars")
    has_best = any(st is _FIXED_STYLES["best_baseline"] for _, _, st in bars)
    caption = (
        f"Test ROC AUC on {len(datasets)} out-of-distribution test sets, the probes trained on "
        "the in-distribution dataset: logreg on the raw activations"
        + (", the best baseline by validation AUC" if has_best else "")
        + " and the SAE probe at the largest of k = 128, 16 (or the largest k run)."
    )
    return PlotFile("ood_bars", title, caption, png, svg)


def _quiver_rows(quivers: pd.DataFrame | None, setting: str, method: str) -> pd.DataFrame | None:
    """The quiver rows of one method in one setting (None when absent)."""
    if quivers is None or quivers.empty:
        return None
    rows = quivers[(quivers["setting"] == setting) & (quivers["method"] == method)]
    return None if rows.empty else rows


def plot_scatter(
    results: pd.DataFrame,
    quivers: pd.DataFrame | None,
    out_dir: Path,
    styles: _SAEStyles,
    primary: str | None,
) -> PlotFile:
    """Normal setting, per dataset: SAE probe test AUC against logreg (and quiver against quiver).

    Top row: the SAE probe at k = 128 (or the largest k) against logreg. Bottom row, when the
    quivers are given: ``best_with_sae`` against ``best_baseline``.
    """
    title = TITLES["scatter_sae_vs_baseline"]
    normal = results[results["setting"] == "normal"]
    if normal.empty:
        raise _NotDrawn("no normal-setting rows")
    probes = _main_sae_probes(normal, (128,), primary)
    if not probes:
        raise _NotDrawn("no SAE probe rows in the normal setting")
    logreg = normal[normal["method"] == "logreg"].groupby(["layer", "dataset"])["test_auc"].mean()
    if logreg.empty:
        raise _NotDrawn("no logreg rows in the normal setting")
    layers = _layers(normal)
    # per layer: (label, x = baseline AUC, y = SAE AUC, style) for each point set
    top: dict[Any, list[tuple[str, pd.Series, pd.Series, Style]]] = {layer: [] for layer in layers}
    for probe, sae_id, _k, variant in probes:
        sae = normal[normal["probe"] == probe].groupby(["layer", "dataset"])["test_auc"].mean()
        both = pd.concat({"x": logreg, "y": sae}, axis=1).dropna()
        for layer in layers:
            if layer in both.index.get_level_values(0):
                pts = both.loc[layer]
                top[layer].append(
                    (display_name(probe), pts["x"], pts["y"], styles.style(sae_id, variant))
                )
    bottom: dict[Any, list[tuple[str, pd.Series, pd.Series, Style]]] = {}
    q = _quiver_rows(quivers, "normal", "best_baseline")
    q_sae = _quiver_rows(quivers, "normal", "best_with_sae")
    if q is not None and q_sae is not None:
        both = pd.concat(
            {
                "x": q.groupby(["layer", "dataset"])["test_auc"].mean(),
                "y": q_sae.groupby(["layer", "dataset"])["test_auc"].mean(),
            },
            axis=1,
        ).dropna()
        st = Style(_FIXED_STYLES["best_with_sae"].color, marker="D")
        for layer in layers:
            if layer in both.index.get_level_values(0):
                pts = both.loc[layer]
                bottom[layer] = [("best with SAE vs best baseline", pts["x"], pts["y"], st)]
    rows = 2 if bottom else 1
    values = [
        v for sets in (*top.values(), *bottom.values()) for _, x, y, _ in sets for v in (x, y)
    ]
    lowest = min(float(v.min()) for v in values) if values else 0.5
    lim = (max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1.005)
    fig = _layer_grid(len(layers), width=3.8, height=3.6, rows=rows)
    grid = _panels(fig, layers, rows=rows)
    names = [
        ("logreg test AUC", "SAE probe test AUC"),
        ("best baseline: test AUC", "best with SAE: test AUC"),
    ]
    for r, sets_by_layer in enumerate([top, bottom][:rows]):
        for ax, layer in zip(grid[r], layers, strict=True):
            for label, x, y, st in sets_by_layer.get(layer, []):
                diff = (y - x).round(12)
                above, below = int((diff > 0).sum()), int((diff < 0).sum())
                ax.scatter(x, y, s=18, color=st.color, marker=st.marker, alpha=0.8, label=label)
                ax.text(
                    0.97,
                    0.03,
                    f"above y = x: {above}, on: {len(x) - above - below}, below: {below}",
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize="small",
                )
            _diagonal(ax, lim, *names[r], f"layer {layer}")
    _legend(fig, [ax for row in grid for ax in row], ncols=3)
    fig.suptitle(title, fontsize="medium")
    png, svg = _save(fig, out_dir, "scatter_sae_vs_baseline")
    caption = (
        "One point per dataset in the normal setting. Top: the SAE probe at k = 128 (or the "
        "largest k run) against logreg on the raw activations; points above the dashed y = x "
        "line are datasets where the SAE probe scores the higher test AUC."
        + (
            " Bottom: the best of baselines and SAE probes against the best baseline (each "
            "chosen per dataset by validation AUC)."
            if rows == 2
            else ""
        )
    )
    return PlotFile("scatter_sae_vs_baseline", title, caption, png, svg)


def _diagonal(ax: Axes, lim: tuple[float, float], xlabel: str, ylabel: str, title: str) -> None:
    ax.plot(lim, lim, color=_GREY, linestyle="--", linewidth=1, label="y = x")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def regime_means(results: pd.DataFrame, quivers: pd.DataFrame | None) -> pd.DataFrame:
    """Mean test AUC per (setting, setting_value, layer, probe) of the hard regimes and quivers."""
    from saelab.report.stats import regime_curves

    curves = regime_curves(results, quivers)
    if "mean_test_auc" not in curves.columns and "test_auc" in curves.columns:
        curves = curves.rename(columns={"test_auc": "mean_test_auc"})
    return curves


def write_plots(
    run_dir: Path,
    results: pd.DataFrame,
    quivers: pd.DataFrame | None = None,
    quiver_ks: Sequence[int] = (16, 128),
) -> list[PlotFile]:
    """Draw every figure into ``run_dir/plots/`` and return them, drawn or with the reason not.

    ``quivers`` is ``saelab.report.quiver.compute_quivers(results, sae_ks=quiver_ks)``,
    computed here when not given. Figures not drawn this time have their old files removed, so
    the folder holds one build; ``plots/plots.json`` lists the figures with titles and captions.
    """
    from saelab.report.quiver import compute_quivers, with_probe_labels

    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    if quivers is None:
        quivers = compute_quivers(results, sae_ks=quiver_ks)
    results = with_probe_labels(results)
    primary = primary_variant(results)
    styles = _SAEStyles(results, primary)
    sae_table = _sae_probe_table(results)
    hard = results[results["setting"].isin(list(_REGIMES))]
    curves = regime_means(results, quivers) if not hard.empty else pd.DataFrame()
    draw: dict[str, Callable[[], PlotFile]] = {
        "auc_vs_k": lambda: plot_auc_vs_k(results, quivers, out_dir, styles),
        "ood_bars": lambda: plot_ood_bars(results, quivers, out_dir, styles, primary),
        "scatter_sae_vs_baseline": lambda: plot_scatter(results, quivers, out_dir, styles, primary),
    }
    for setting in _REGIMES:
        draw[f"regime_{setting}"] = lambda s=setting: plot_regime(
            s, curves, sae_table, out_dir, styles, quiver_ks, primary
        )
    figures = []
    with matplotlib.rc_context(_RC):
        for name in FIGURE_NAMES:
            try:
                figure = draw[name]()
            except _NotDrawn as reason:
                for ext in ("png", "svg"):
                    (out_dir / f"{name}.{ext}").unlink(missing_ok=True)
                figure = PlotFile(name, TITLES[name], "", reason=str(reason))
                log.info("plot %s not drawn: %s", name, reason)
            else:
                log.info("plot %s -> %s and .svg", name, figure.png)
            figures.append(figure)
    write_json_atomic(out_dir / MANIFEST, [f.to_json() for f in figures])
    return figures


def read_manifest(run_dir: Path) -> list[PlotFile]:
    """The figures listed in ``run_dir/plots/plots.json`` (empty when absent or unreadable)."""
    import json

    out_dir = Path(run_dir) / "plots"
    try:
        entries = json.loads((out_dir / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return []
    figures = []
    for e in entries:
        figures.append(
            PlotFile(
                name=e["name"],
                title=e.get("title", e["name"]),
                caption=e.get("caption", ""),
                png=out_dir / e["png"] if e.get("png") else None,
                svg=out_dir / e["svg"] if e.get("svg") else None,
                reason=e.get("reason"),
            )
        )
    return figures


#: Matplotlib settings of every figure: text kept as text in SVG, no random ids (stable files).
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "saelab",
    "font.size": 9,
    "axes.titlesize": "medium",
    "legend.fontsize": "small",
    "hatch.linewidth": 0.6,
}
