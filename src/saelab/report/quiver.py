"""The paper's "quiver of arrows": per point, the probe with the best validation AUC, scored on test.

Source: sae-probes spec section 3.3 (and 4.4 for which candidates each regime uses). For every
quiver point, i.e. every (dataset, setting, setting_value, test_source, layer), two rows are made:

- ``best_baseline``: among the baseline rows (``method`` in ``BASELINE_ORDER``), the row with the
  highest ``val_auc``; its test scores are reported.
- ``best_with_sae``: the same over the baseline rows plus the SAE probe rows (``method == "sae"``)
  whose ``k`` is in ``sae_ks`` (the paper: k in {16, 128}, every SAE and variant).

Ties. Validation AUCs tie often (1.0 on easy sets, coarse values at tiny n), and the tie rule moves
the means (spec 6.2-6.3: normal quiver + SAE 0.9366 with ties to baselines, 0.9362 with ties to
SAEs). ``val_auc`` values are compared after rounding to 12 decimals; among the rows tied at the
top, the first in this order wins:

- ``ties="baseline_first"`` (default): baselines in ``BASELINE_ORDER``, then SAE rows by (SAE id in
  order of first appearance in the results, k ascending, variant label ascending). An SAE probe is
  therefore chosen only when it validates strictly better than every baseline, which is
  conservative for the SAE and equals the paper's CSV-order rule (spec 6.2: 0.9366, SAE chosen on
  14.2% of datasets).
- ``ties="sae_first"``: the SAE rows first (same order among them), then the baselines; the other
  end of the sensitivity range (spec 6.2: 0.9362, SAE chosen on 43.4%).

Rows with a null ``val_auc`` are not candidates. Rows of any other method (neither a baseline nor
``sae``) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from saelab.names import BASELINES

BASELINE_ORDER: tuple[str, ...] = BASELINES
"""The paper's five baselines (``saelab.names.BASELINES``), in the order that wins
validation-AUC ties."""

QUIVER_KEYS: tuple[str, ...] = ("dataset", "setting", "setting_value", "test_source", "layer")
"""Columns that identify one quiver point; null values (normal setting, non-OOD) form groups."""

QUIVER_METHODS: tuple[str, ...] = ("best_baseline", "best_with_sae")
"""The ``method`` (and ``probe``) labels of the two quiver rows."""

TieRule = Literal["baseline_first", "sae_first"]

QUIVER_COLUMNS: tuple[str, ...] = (
    *QUIVER_KEYS,
    "family",
    "method",
    "probe",
    "chosen_probe",
    "chosen_method",
    "chosen_sae",
    "chosen_k",
    "test_auc",
    "test_acc",
    "test_f1",
    "val_auc",
    "n_train",
    "n_test",
    "n_candidates",
    "n_tied",
    "ties",
)
"""Columns of ``compute_quivers``' output, in order."""

_TIE_DECIMALS = 12
_OPTIONAL_COLUMNS = (
    "family",
    "sae",
    "k",
    "variant",
    "penalty",
    "test_acc",
    "test_f1",
    "n_train",
    "n_test",
    "test_source",
    "setting_value",
)


def variant_labels(results: pd.DataFrame) -> pd.Series:
    """The SAE probe variant of each row: ``variant``, else ``penalty``, else ``"l2"``.

    Old results carry no ``variant`` column; their SAE probes were L2 logistic regressions.
    Baseline rows get the same fill but it is never used for them.
    """
    out = pd.Series("l2", index=results.index, dtype=object)
    for col in ("penalty", "variant"):  # later columns take precedence
        if col in results.columns:
            values = results[col]
            out = out.where(values.isna(), values.astype(object))
    return out


def probe_labels(results: pd.DataFrame) -> pd.Series:
    """The ``probe`` label of every row, filling rows (or whole old tables) that lack one.

    Baselines: the method name (``logreg``); SAE rows: ``sae:<sae>:k<k>:<variant>`` with the
    variant from ``variant_labels`` (``"l2"`` when null). Existing non-null labels are kept.
    """
    method = results["method"].astype(object)
    sae = results["sae"].astype(object) if "sae" in results.columns else None
    k = results["k"] if "k" in results.columns else None
    filled = method.copy()
    is_sae = method.eq("sae")
    if is_sae.any():
        sae_text = sae.where(sae.notna(), "") if sae is not None else ""
        if k is not None:
            k_num = pd.to_numeric(k, errors="coerce")
            k_text = k_num.map(lambda v: "" if pd.isna(v) else str(int(v)))
        else:
            k_text = ""
        label = "sae:" + pd.Series(sae_text, index=results.index).astype(str)
        label = label + ":k" + pd.Series(k_text, index=results.index).astype(str)
        label = label + ":" + variant_labels(results).astype(str)
        filled = filled.where(~is_sae, label)
    if "probe" in results.columns:
        existing = results["probe"].astype(object)
        filled = existing.where(existing.notna() & existing.ne(""), filled)
    return filled.rename("probe")


def with_probe_labels(results: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``results`` with ``probe`` filled (``probe_labels``) and optional columns present.

    Columns that old tables may lack (``sae``, ``k``, ``variant``, ``test_acc``, ...) are added
    as nulls, so later code can rely on them.
    """
    if "method" not in results.columns:
        raise KeyError("results: column 'method' is missing")
    df = results.copy()
    for col in _OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan if col.startswith(("test_", "n_")) and col != "test_source" else None
    df["probe"] = probe_labels(df)
    df["variant"] = np.where(df["method"].eq("sae"), variant_labels(df), df["variant"])
    return df


def compute_quivers(
    results: pd.DataFrame,
    sae_ks: Sequence[int] | None = (16, 128),
    ties: TieRule = "baseline_first",
) -> pd.DataFrame:
    """The ``best_baseline`` and ``best_with_sae`` rows of every quiver point (spec 3.3).

    Args:
        results: the results table (docs/RESULTS.md), one row per fitted probe; needs
            ``method``, ``val_auc``, ``test_auc`` and the ``QUIVER_KEYS``.
        sae_ks: k values of the SAE probes that join ``best_with_sae``; ``None`` = every k.
        ties: which candidates win exact validation-AUC ties (module docstring).

    Returns:
        One row per (point, quiver method), columns ``QUIVER_COLUMNS``: the chosen row's test
        scores, its ``probe`` label as ``chosen_probe``, ``n_candidates`` (candidates with a
        validation AUC) and ``n_tied`` (candidates sharing the top validation AUC). A point
        without baseline rows has no ``best_baseline`` row. Ordered by point, then method.
    """
    if ties not in ("baseline_first", "sae_first"):
        raise ValueError(f"ties: expected 'baseline_first' or 'sae_first', got {ties!r}")
    missing = [c for c in ("method", "val_auc", "test_auc", *QUIVER_KEYS) if c not in results]
    missing = [c for c in missing if c not in _OPTIONAL_COLUMNS]
    if missing:
        raise KeyError(f"results: columns {missing} are missing")
    df = with_probe_labels(results)
    is_base = df["method"].isin(BASELINE_ORDER)
    is_sae = df["method"].eq("sae")
    if sae_ks is not None:
        k_num = pd.to_numeric(df["k"], errors="coerce")
        is_sae &= k_num.isin([int(k) for k in sae_ks])
    val = pd.to_numeric(df["val_auc"], errors="coerce").astype("float64")
    keep = (is_base | is_sae) & val.notna()
    df = df.loc[keep].copy()
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in QUIVER_COLUMNS})

    df["_val"] = val[keep].round(_TIE_DECIMALS)
    df["_gid"] = df.groupby(list(QUIVER_KEYS), dropna=False, sort=False).ngroup()
    df["_is_sae"] = df["method"].eq("sae")
    # order among tied candidates: class (baselines vs SAE), then baseline order or SAE order
    df["_class"] = df["_is_sae"].astype(int) if ties == "baseline_first" else (~df["_is_sae"]) * 1
    base_rank = {m: i for i, m in enumerate(BASELINE_ORDER)}
    df["_base"] = df["method"].map(base_rank).fillna(len(BASELINE_ORDER)).astype(int)
    sae_first_seen = pd.factorize(results.loc[results["method"].eq("sae"), "sae"].astype(str))[1]
    sae_rank = {s: i for i, s in enumerate(sae_first_seen)}
    df["_sae"] = df["sae"].astype(str).map(sae_rank).where(df["_is_sae"], -1).fillna(-1)
    df["_k"] = pd.to_numeric(df["k"], errors="coerce").where(df["_is_sae"], -1).fillna(-1)
    df["_variant"] = df["variant"].astype(str).where(df["_is_sae"], "")
    df = df.sort_values(
        ["_gid", "_val", "_class", "_base", "_sae", "_k", "_variant"],
        ascending=[True, False, True, True, True, True, True],
        kind="stable",
    )

    parts = []
    for method, pool in (("best_baseline", df[~df["_is_sae"]]), ("best_with_sae", df)):
        if pool.empty:
            continue
        groups = pool.groupby("_gid", sort=False)["_val"]
        top = groups.transform("max")
        n_tied = pool["_val"].eq(top).groupby(pool["_gid"], sort=False).sum()
        n_candidates = groups.size()
        chosen = pool.drop_duplicates("_gid", keep="first").set_index("_gid")
        out = chosen[[*QUIVER_KEYS, "family"]].copy()
        out["method"] = method
        out["probe"] = method
        out["chosen_probe"] = chosen["probe"]
        out["chosen_method"] = chosen["method"]
        out["chosen_sae"] = chosen["sae"].where(chosen["_is_sae"], None)
        out["chosen_k"] = pd.to_numeric(chosen["k"], errors="coerce").where(chosen["_is_sae"])
        for col in ("test_auc", "test_acc", "test_f1", "val_auc", "n_train", "n_test"):
            out[col] = chosen[col]
        out["n_candidates"] = n_candidates.reindex(out.index).astype(int)
        out["n_tied"] = n_tied.reindex(out.index).astype(int)
        out["ties"] = ties
        out["_order"] = 0 if method == "best_baseline" else 1
        parts.append(out.reset_index())
    quivers = pd.concat(parts, ignore_index=True)
    quivers = quivers.sort_values(["_gid", "_order"], kind="stable")
    quivers["chosen_k"] = quivers["chosen_k"].astype("Int64")
    return quivers[list(QUIVER_COLUMNS)].reset_index(drop=True)


def sae_chosen_share(quivers: pd.DataFrame) -> float:
    """Share of ``best_with_sae`` points whose chosen probe is an SAE probe (spec 6.2: 14.2%)."""
    rows = quivers[quivers["method"].eq("best_with_sae")]
    if rows.empty:
        return float("nan")
    return float(rows["chosen_method"].eq("sae").mean())
