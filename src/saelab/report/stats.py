"""Regime statistics of a run: mean scores, win rates and paired cluster-bootstrap intervals.

A *point* is one (setting, layer, dataset, setting_value, test_source): one training/test split at
one layer. Each probe has at most one test score per point; the quiver rows of
``saelab.report.quiver`` join as the probes ``best_baseline`` and ``best_with_sae``. Every mean
below is over points, as the paper aggregates (spec 4.4 and 6.3: e.g. scarcity, mean over 2247
(dataset, n) points).

Paired comparison of probe P against a reference R (``logreg`` or ``best_baseline``), over the
points where both have a test AUC:

- ``diff = AUC_P - AUC_R`` per point; ``mean_diff`` is its mean.
- ``win_rate = mean(1[diff > 0] + 0.5 * 1[diff == 0])``: ties (equal after rounding to 12
  decimals) count half. The paper's "% of datasets where the SAE beats logreg" (spec 6.2-6.3)
  counts ties as losses, so it is lower where AUCs tie (e.g. 1.0 on easy sets).
- CI: paired cluster bootstrap over datasets (points of one dataset are correlated: same texts at
  every n, f or r). Each of ``n_boot`` draws resamples the D datasets with replacement; the draw's
  statistic is the mean ``diff`` over all paired points of the drawn datasets (with multiplicity),
  i.e. ``sum_d c_d S_d / sum_d c_d n_d`` for draw counts ``c`` [D], per-dataset diff sums ``S`` [D]
  and point counts ``n`` [D]. The interval is the (1-ci)/2 and (1+ci)/2 percentiles of the draws
  (Efron & Tibshirani 1993, percentile interval; cluster resampling: Field & Welsh 2007).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from saelab.errors import SaelabError
from saelab.io import atomic_path
from saelab.names import SETTINGS
from saelab.report.quiver import (
    BASELINE_ORDER,
    QUIVER_METHODS,
    compute_quivers,
    with_probe_labels,
)

SETTING_ORDER: tuple[str, ...] = SETTINGS
"""Order of the settings in every table; unknown settings follow alphabetically."""

REFERENCES: tuple[str, ...] = ("logreg", "best_baseline")
"""Probes every other probe is compared with (paired win rate, mean difference, bootstrap CI)."""

DEFAULT_QUIVER_KS: tuple[int, ...] = (16, 128)
"""SAE k values of ``best_with_sae`` when the run folder does not say (the paper's, spec 4.4)."""

_POINT = ["setting", "layer", "dataset", "_sv", "_src"]
_GROUP = ["setting", "layer", "probe"]
_TIE_DECIMALS = 12
_METRICS = ("test_auc", "test_acc", "test_f1")


# ----------------------------------------------------------------------------------- points


def _points(results: pd.DataFrame, quivers: pd.DataFrame | None) -> pd.DataFrame:
    """Results rows plus quiver rows, one row per (point, probe), with filled point keys.

    Columns: setting, layer, dataset, setting_value, test_source, probe, method, sae, k, variant,
    test_auc, test_acc, test_f1, chosen_method, and the merge keys ``_sv`` (setting_value as
    float64 rounded to 9 decimals, -1 when null) and ``_src`` (test_source, "" when null).
    Duplicate (point, probe) rows are averaged.
    """
    rows = with_probe_labels(results)
    if quivers is None:
        quivers = compute_quivers(results)
    frames = [rows]
    if not quivers.empty:
        q = quivers.copy()
        for col in ("sae", "k", "variant"):
            q[col] = None
        frames.append(q)
    cols = [
        "setting",
        "layer",
        "dataset",
        "setting_value",
        "test_source",
        "probe",
        "method",
        "sae",
        "k",
        "variant",
        *_METRICS,
        "chosen_method",
    ]
    parts = []
    for frame in frames:
        part = pd.DataFrame(index=frame.index)
        for col in cols:  # object dtype for the descriptors: concat then keeps their values
            values = frame[col] if col in frame.columns else None
            part[col] = pd.Series(values, index=frame.index, dtype=object)
        if not part.empty:
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=[*cols, "_sv", "_src"])
    pts = pd.concat(parts, ignore_index=True).infer_objects()
    for col in _METRICS:
        pts[col] = pd.to_numeric(pts[col], errors="coerce").astype("float64")
    pts["setting_value"] = pd.to_numeric(pts["setting_value"], errors="coerce").astype("Float64")
    pts["k"] = pd.to_numeric(pts["k"], errors="coerce").astype("Int64")
    pts["_sv"] = pts["setting_value"].astype("float64").round(9).fillna(-1.0)
    pts["_src"] = pts["test_source"].astype(object).where(pts["test_source"].notna(), "")
    pts = pts[pts["test_auc"].notna()]
    keys = [*_POINT, "probe"]
    if pts.duplicated(keys).any():
        agg: dict[str, Any] = {c: "first" for c in cols if c not in keys}
        agg.update({c: "mean" for c in _METRICS})
        pts = pts.groupby(keys, sort=False, dropna=False).agg(agg).reset_index()
    return pts.reset_index(drop=True)


def _order_columns(frame: pd.DataFrame, sae_order: dict[str, int]) -> pd.DataFrame:
    """Sort keys of the standard order: setting, layer, then probe (module docstring)."""
    setting_rank = {s: i for i, s in enumerate(SETTING_ORDER)}
    out = pd.DataFrame(index=frame.index)
    out["_set"] = frame["setting"].map(setting_rank).fillna(len(SETTING_ORDER))
    out["_set_name"] = frame["setting"].astype(str)
    out["_layer"] = pd.to_numeric(frame["layer"], errors="coerce")
    base_rank = {m: i for i, m in enumerate(BASELINE_ORDER)}
    quiver_rank = {m: i for i, m in enumerate(QUIVER_METHODS)}
    is_base = frame["probe"].isin(BASELINE_ORDER)
    is_quiver = frame["probe"].isin(QUIVER_METHODS)
    is_sae = frame["method"].eq("sae") & ~is_base & ~is_quiver
    out["_class"] = np.select([is_base, is_quiver, is_sae], [0, 1, 2], default=3)
    out["_within"] = frame["probe"].map(base_rank).fillna(frame["probe"].map(quiver_rank)).fillna(0)
    out["_sae"] = frame["sae"].astype(str).map(sae_order).where(is_sae, -1).fillna(-1)
    out["_k"] = pd.to_numeric(frame["k"], errors="coerce").fillna(-1)
    out["_variant"] = frame["variant"].astype(str).where(is_sae, "")
    out["_probe"] = frame["probe"].astype(str)
    return out


def _sorted(
    frame: pd.DataFrame, sae_order: dict[str, int], extra: Sequence[str] = ()
) -> pd.DataFrame:
    """``frame`` in the standard order (settings, layers, probes; then ``extra`` columns)."""
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = _order_columns(frame, sae_order)
    by = ["_set", "_set_name", "_layer", "_class", "_within", "_sae", "_k", "_variant", "_probe"]
    if extra:
        for col in extra:
            keys[f"_x_{col}"] = frame[col]
        by = ["_set", "_set_name", "_layer", *[f"_x_{c}" for c in extra], *by[3:]]
    index = keys.sort_values(by, kind="stable", na_position="first").index
    return frame.loc[index].reset_index(drop=True)


def _sae_order(results: pd.DataFrame) -> dict[str, int]:
    """SAE ids in order of first appearance among the SAE rows of ``results``."""
    if "sae" not in results.columns:
        return {}
    ids = results.loc[results["method"].eq("sae"), "sae"].astype(str)
    return {s: i for i, s in enumerate(pd.unique(ids))}


# ----------------------------------------------------------------------------------- bootstrap


def _boot_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_clusters] counts of each cluster in ``n_boot`` resamples with replacement.

    A fresh ``np.random.default_rng(seed)`` per call: the same seed and cluster count give the
    same draws, whatever else is computed. Clusters are taken in sorted order of their labels.
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def _ci_from_sums(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, seed: int, ci: float, cache: dict
) -> tuple[float, float]:
    """Percentile CI of sum(c S) / sum(c n) over bootstrap count draws c (module docstring)."""
    n = sums.size
    if n == 0:
        return float("nan"), float("nan")
    if n not in cache:
        cache[n] = _boot_counts(n, n_boot, seed)
    draws = cache[n]
    means = (draws @ sums) / (draws @ counts)
    low, high = np.quantile(means, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(low), float(high)


def paired_bootstrap_ci(
    diff: Sequence[float] | np.ndarray,
    cluster: Sequence[Any] | np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float]:
    """Cluster-bootstrap percentile interval of the mean of paired differences.

    Args:
        diff: [n_points] paired differences (probe AUC - reference AUC).
        cluster: [n_points] cluster label of each point (the dataset).
        n_boot: number of resamples of the clusters; seed: seeds a fresh numpy Generator.
        ci: coverage, e.g. 0.95 for the 2.5 and 97.5 percentiles.

    Returns:
        (low, high); (nan, nan) without points. Formula in the module docstring.
    """
    _check_boot_args(n_boot, ci)
    d = np.asarray(diff, dtype=np.float64)
    # clusters in sorted order, as in ``summary_table``, so both draw the same resamples
    labels = pd.Series(np.asarray(cluster, dtype=object)).astype(str)
    codes, _ = pd.factorize(labels, sort=True)
    if d.shape != codes.shape:
        raise ValueError(
            f"diff and cluster: expected equal lengths, got {d.shape} and {codes.shape}"
        )
    sums = np.bincount(codes, weights=d) if d.size else np.zeros(0)
    counts = np.bincount(codes).astype(np.float64) if d.size else np.zeros(0)
    return _ci_from_sums(sums, counts, n_boot, seed, ci, {})


def _check_boot_args(n_boot: int, ci: float) -> None:
    if int(n_boot) < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot}")
    if not 0.0 < float(ci) < 1.0:
        raise ValueError(f"ci: expected a coverage in (0, 1), got {ci}")


# ----------------------------------------------------------------------------------- paired


def win_scores(diff: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    """[n] win score of each paired difference: 1 if diff > 0, 0.5 if tied, 0 if diff < 0.

    A tie is a difference equal to 0 after rounding to 12 decimals (so AUCs equal up to float
    noise tie). The win rate of the module docstring is the mean of these scores; NaN scores NaN.
    """
    d = np.round(np.asarray(diff, dtype=np.float64), _TIE_DECIMALS)
    scores = (d > 0).astype(np.float64) + 0.5 * (d == 0).astype(np.float64)
    scores[np.isnan(d)] = np.nan
    return scores


def _paired(pts: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Rows of every probe but ``reference`` joined with the reference's row at the same point.

    Columns: setting, layer, probe, dataset, setting_value (the probe's), diff, win.
    """
    ref = pts.loc[pts["probe"].eq(reference), [*_POINT, "test_auc"]]
    other = pts.loc[pts["probe"].ne(reference), [*_POINT, "setting_value", "probe", "test_auc"]]
    merged = other.merge(ref, on=_POINT, suffixes=("", "_ref"), how="inner")
    merged["diff"] = merged["test_auc"] - merged["test_auc_ref"]
    merged["win"] = win_scores(merged["diff"])
    return merged


def _paired_stats(paired: pd.DataFrame, by: list[str], suffix: str) -> pd.DataFrame:
    """Win rate, mean difference and number of pairs per ``by`` group of ``_paired`` output."""
    g = paired.groupby(by, sort=False, dropna=False)
    return pd.DataFrame(
        {
            f"win_rate_{suffix}": g["win"].mean(),
            f"mean_diff_{suffix}": g["diff"].mean(),
            f"n_pairs_{suffix}": g["diff"].size(),
        }
    )


# ----------------------------------------------------------------------------------- tables


def summary_table(
    results: pd.DataFrame,
    quivers: pd.DataFrame | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """One row per (setting, layer, probe): means over points and paired comparisons.

    Args:
        results: the results table (docs/RESULTS.md).
        quivers: ``compute_quivers(results)`` output; computed with its defaults when None.
        n_boot, seed, ci: the cluster bootstrap (module docstring).

    Returns:
        Columns: setting, layer, probe, method, sae, k, variant, n_points (number of
        (dataset, setting_value) points), n_datasets, mean_test_auc, mean_test_acc,
        mean_test_f1; for R in (logreg, best_baseline): win_rate_vs_R, mean_diff_vs_R,
        ci_low_vs_R, ci_high_vs_R, n_pairs_vs_R (null for R itself and where R is absent);
        sae_chosen_share (best_with_sae rows: share of points whose pick is an SAE probe).
        Ordered by setting (``SETTING_ORDER``), layer, then probe: baselines in
        ``BASELINE_ORDER``, best_baseline, best_with_sae, SAE probes by (SAE id in order of first
        appearance, k, variant), other probes by label.
    """
    _check_boot_args(n_boot, ci)
    pts = _points(results, quivers)
    columns = [
        "setting",
        "layer",
        "probe",
        "method",
        "sae",
        "k",
        "variant",
        "n_points",
        "n_datasets",
        "mean_test_auc",
        "mean_test_acc",
        "mean_test_f1",
    ]
    for ref in REFERENCES:
        columns += [f"{s}_vs_{ref}" for s in ("win_rate", "mean_diff", "ci_low", "ci_high")]
        columns.append(f"n_pairs_vs_{ref}")
    columns.append("sae_chosen_share")
    if pts.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})

    g = pts.groupby(_GROUP, sort=False, dropna=False)
    table = g.agg(
        method=("method", "first"),
        sae=("sae", "first"),
        k=("k", "first"),
        variant=("variant", "first"),
        n_points=("test_auc", "size"),
        n_datasets=("dataset", "nunique"),
        mean_test_auc=("test_auc", "mean"),
        mean_test_acc=("test_acc", "mean"),
        mean_test_f1=("test_f1", "mean"),
    )
    cache: dict[int, np.ndarray] = {}
    for ref in REFERENCES:
        paired = _paired(pts, ref)
        suffix = f"vs_{ref}"
        stats = _paired_stats(paired, _GROUP, suffix)
        per_ds = paired.groupby([*_GROUP, "dataset"], sort=True)["diff"].agg(["sum", "size"])
        bounds = {}
        for key, block in per_ds.groupby(level=[0, 1, 2], sort=False):
            bounds[key] = _ci_from_sums(
                block["sum"].to_numpy(np.float64),
                block["size"].to_numpy(np.float64),
                n_boot,
                seed,
                ci,
                cache,
            )
        ci_frame = pd.DataFrame.from_dict(
            bounds, orient="index", columns=[f"ci_low_{suffix}", f"ci_high_{suffix}"]
        )
        if not ci_frame.empty:
            ci_frame.index = pd.MultiIndex.from_tuples(ci_frame.index, names=_GROUP)
        stats = stats.join(ci_frame) if not stats.empty else stats
        table = table.join(stats)
    share = (
        pts[pts["probe"].eq("best_with_sae")]
        .assign(_sae_pick=lambda d: d["chosen_method"].eq("sae").astype(float))
        .groupby(_GROUP, sort=False)["_sae_pick"]
        .mean()
        .rename("sae_chosen_share")
    )
    table = table.join(share).reset_index()
    for col in columns:
        if col not in table.columns:
            table[col] = np.nan
    table["k"] = table["k"].astype("Int64")
    for col in ("n_pairs_vs_logreg", "n_pairs_vs_best_baseline"):
        table[col] = table[col].astype("Int64")
    return _sorted(table[columns], _sae_order(results))


def regime_curves(results: pd.DataFrame, quivers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean test AUC per (setting, setting_value, layer, probe): the per-regime plot lines.

    Returns:
        Columns: setting, setting_value, layer, probe, method, sae, k, variant, mean_test_auc,
        sem_test_auc (standard deviation over points / sqrt(n_points), ddof 1), n_datasets,
        n_points. Ordered like ``summary_table``, setting_value ascending within a layer.
    """
    pts = _points(results, quivers)
    columns = [
        "setting",
        "setting_value",
        "layer",
        "probe",
        "method",
        "sae",
        "k",
        "variant",
        "mean_test_auc",
        "sem_test_auc",
        "n_datasets",
        "n_points",
    ]
    if pts.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    g = pts.groupby(["setting", "_sv", "layer", "probe"], sort=False, dropna=False)
    table = g.agg(
        setting_value=("setting_value", "first"),
        method=("method", "first"),
        sae=("sae", "first"),
        k=("k", "first"),
        variant=("variant", "first"),
        mean_test_auc=("test_auc", "mean"),
        sem_test_auc=("test_auc", "sem"),
        n_datasets=("dataset", "nunique"),
        n_points=("test_auc", "size"),
    ).reset_index()
    table["k"] = table["k"].astype("Int64")
    table = _sorted(table, _sae_order(results), extra=["_sv"])
    return table[columns]


# ----------------------------------------------------------------------------------- console


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "" if value is None or pd.isna(value) else format(float(value), spec)


def print_regime_summary(
    summary: pd.DataFrame,
    console: Console | None = None,
    sae_ks: Sequence[int] | None = DEFAULT_QUIVER_KS,
) -> None:
    """Print one compact table per setting from ``summary_table`` output.

    One line per (probe, layer): mean test AUC over points, the number of points, and for every
    probe but logreg the win rate vs logreg and the mean AUC difference vs logreg with its
    bootstrap interval. SAE probes are shown at ``sae_ks`` only (None: every k; when none of a
    setting's SAE probes has such a k, all are shown); ``summary.csv`` has them all.
    """
    console = console or Console()
    if not console.is_terminal and console.width < 100:
        console = Console(file=console.file, width=100)  # logs and pipes: don't squeeze the table
    if summary is None or summary.empty:
        console.print("no results")
        return
    one_sae = summary.loc[summary["method"] == "sae", "sae"].nunique() <= 1

    def label(r: pd.Series) -> str:
        if r["method"] != "sae":
            return str(r["probe"])
        who = "" if one_sae else f" {r['sae']}"
        return f"SAE{who} k={int(r['k'])} {r['variant']}"

    for setting, block in summary.groupby("setting", sort=False):
        if sae_ks is not None:
            is_sae = block["method"] == "sae"
            shown = is_sae & block["k"].isin(list(sae_ks))
            if shown.any():
                block = block[~is_sae | shown]
        order = {p: i for i, p in enumerate(dict.fromkeys(block["probe"]))}
        block = block.assign(_order=block["probe"].map(order)).sort_values(
            ["_order", "layer"], kind="stable"
        )
        table = Table(title=f"{setting}: mean test AUC over points", title_justify="left")
        table.add_column("probe", no_wrap=True)
        table.add_column("layer", justify="right", no_wrap=True, min_width=5)
        table.add_column("AUC", justify="right", no_wrap=True)
        table.add_column("pts", justify="right", no_wrap=True)
        table.add_column("win vs LR", justify="right", no_wrap=True)
        table.add_column("Δ vs LR [95% CI]", justify="right", no_wrap=True)
        for _, r in block.iterrows():
            paired = r["probe"] != "logreg" and not pd.isna(r.get("mean_diff_vs_logreg"))
            table.add_row(
                label(r),
                str(int(r["layer"])),
                _fmt(r["mean_test_auc"]),
                str(int(r["n_points"])),
                _fmt(r["win_rate_vs_logreg"], ".0%") if paired else "",
                (
                    f"{_fmt(r['mean_diff_vs_logreg'], '+.3f')} "
                    f"[{_fmt(r['ci_low_vs_logreg'], '+.3f')}, {_fmt(r['ci_high_vs_logreg'], '+.3f')}]"
                )
                if paired
                else "",
            )
        console.print(table)


# ----------------------------------------------------------------------------------- files


def load_results(run: str | Path) -> pd.DataFrame:
    """The results table of a run folder (``<run>/results.parquet``) or of a parquet/CSV file.

    Raises ``SaelabError`` naming the file when it is missing, unreadable or lacks the columns
    the report needs (dataset, setting, layer, method, test_auc, val_auc).
    """
    path = Path(run)
    if path.is_dir() or not path.suffix:
        path = path / "results.parquet"
    if not path.is_file():
        raise SaelabError(f"{path}: results table not found (run `saelab run` first)")
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as exc:
        raise SaelabError(f"{path}: cannot read the results table ({exc})") from exc
    missing = [
        c
        for c in ("dataset", "setting", "layer", "method", "test_auc", "val_auc")
        if c not in frame.columns
    ]
    if missing:
        raise SaelabError(f"{path}: results table lacks the column(s) {missing}")
    return frame


def quiver_ks_of(run_dir: str | Path) -> tuple[int, ...]:
    """``probes.quiver_ks`` of the config recorded in ``<run_dir>/run.json``; (16, 128) if absent."""
    try:
        meta = json.loads((Path(run_dir) / "run.json").read_text("utf-8"))
        ks = meta["config"]["probes"]["quiver_ks"]
        return tuple(int(k) for k in ks)
    except Exception:
        return DEFAULT_QUIVER_KS


def write_summary(run_dir: str | Path, n_boot: int = 2000, seed: int = 0) -> dict[str, Path]:
    """Read ``results.parquet`` of a run folder; write quivers.parquet, quivers.csv, summary.csv.

    Quivers use the run's ``probes.quiver_ks`` (``quiver_ks_of``) and ties to baselines. Files
    are written atomically. Returns ``{"quivers": ..., "quivers_csv": ..., "summary": ...}``.
    """
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    quivers = compute_quivers(results, sae_ks=quiver_ks_of(run_dir))
    summary = summary_table(results, quivers, n_boot=n_boot, seed=seed)
    paths = {
        "quivers": run_dir / "quivers.parquet",
        "quivers_csv": run_dir / "quivers.csv",
        "summary": run_dir / "summary.csv",
    }
    with atomic_path(paths["quivers"]) as tmp:
        quivers.to_parquet(tmp, index=False)
    with atomic_path(paths["quivers_csv"]) as tmp:
        quivers.to_csv(tmp, index=False)
    with atomic_path(paths["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    return paths
