"""Console summary of a results table: mean test AUC per method and k, one column per layer."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from saelab.names import SAE_METHOD


def method_label(row: pd.Series) -> str:
    """``logreg`` for baselines, ``sae <id> <variant> k=<k>`` for SAE probes (variants apart)."""
    if row["method"] == SAE_METHOD:
        variant = row.get("variant")
        variant = "" if variant is None or pd.isna(variant) else f" {variant}"
        return f"sae {row['sae']}{variant} k={int(row['k'])}"
    return str(row["method"])


def summary_frame(results: pd.DataFrame) -> pd.DataFrame:
    """Mean test AUC over datasets per (setting, probe, layer); baselines first, then SAE probes
    by SAE, variant and k. Every SAE variant (L1, L2, binarized, max-pooled) is its own row."""
    if results.empty:
        return pd.DataFrame()
    df = results.copy()
    if "variant" not in df.columns:
        df["variant"] = None
    df["probe"] = df.apply(method_label, axis=1)
    df["_order"] = df["k"].fillna(-1).astype(float)
    df["_is_sae"] = df["method"] == SAE_METHOD
    df["_variant"] = df["variant"].fillna("").astype(str)
    table = df.pivot_table(
        index=["setting", "_is_sae", "sae", "_variant", "_order", "probe"],
        columns="layer",
        values="test_auc",
        aggfunc="mean",
        dropna=False,
    )
    table = table.dropna(how="all").reset_index()
    table = table.drop(columns=["_is_sae", "sae", "_variant", "_order"]).set_index(
        ["setting", "probe"]
    )
    table.columns = [f"layer {c}" for c in table.columns]
    counts = df.groupby(["setting", "probe"])["dataset"].nunique().rename("datasets")
    return table.join(counts)


def print_summary(results: pd.DataFrame, console: Console | None = None, title: str = "") -> None:
    """Print the summary table (mean test AUC) to the console."""
    console = console or Console()
    frame = summary_frame(results)
    if frame.empty:
        console.print("no results")
        return
    table = Table(title=title or "mean test AUC over datasets")
    table.add_column("setting")
    table.add_column("probe")
    layer_cols = [c for c in frame.columns if c.startswith("layer ")]
    for c in layer_cols:
        table.add_column(c, justify="right")
    table.add_column("datasets", justify="right")
    for (setting, probe), row in frame.iterrows():
        cells = ["" if pd.isna(row[c]) else f"{row[c]:.4f}" for c in layer_cols]
        table.add_row(str(setting), str(probe), *cells, str(int(row["datasets"])))
    console.print(table)
