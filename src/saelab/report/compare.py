"""A run's mean test AUCs beside the paper's headline numbers (``resources/paper_reference.csv``).

The reference table holds the means of sae-probes spec section 6.1-6.4 (computed there from the
paper's own result CSVs): one row per (model, layer, setting, setting_value, probe, sae). Columns:

- ``model`` (``gemma-2-9b``, ``gemma-2-2b``, ``llama-3.1-8b``), ``layer`` (block index or
  ``embed``), ``setting``, ``setting_value`` (empty: the mean over all points of the setting).
- ``probe``: ``logreg``, ``pca``, ``knn``, ``xgboost``, ``mlp``, ``best_baseline``,
  ``best_with_sae`` or ``sae_k<k>``; ``sae`` names the paper's SAE of an ``sae_k<k>`` row.
- ``mean_test_auc``, ``n_points`` (points averaged), ``ties`` (quiver rows: the tie rule,
  ``baseline_first``, ``sae_first`` or ``notebook``), ``win_rate_vs_logreg`` (the paper's share
  of points where the SAE probe beats logreg; ties count as losses there, half here), ``source``
  (spec section) and ``note``.

How a run's probes are matched to reference rows:

- Baselines, ``best_baseline`` and ``best_with_sae``: by name. The run's quivers are recomputed
  with the paper's candidate set (SAE probes with k in {16, 128}) and the chosen tie rule;
  reference quiver rows with another tie rule are left out.
- ``sae_k<k>``: the run's SAE probes with that k. SAEs are matched by position: the j-th SAE of the
  run (order of first appearance in the results, i.e. config order) stands for the j-th SAE the
  reference lists for that model, layer and setting (the paper's order: 16k, 131k, 1m), and the
  run's first variant of that SAE (its primary one) is used. A run with one SAE is therefore
  compared with the paper's best SAE (16k, L0 408) and shows the other SAEs as missing.
- Layers: run layers the reference has for the model are compared with themselves; when the run
  has none of them, every run layer is compared with the reference's main layer for the model
  (the one with the most rows: 20 for gemma-2-9b).
- Model: ``model`` if given, else the run's ``model`` column (its last path part, e.g.
  ``google/gemma-2-9b`` -> ``gemma-2-9b``) when the reference has it, else ``gemma-2-9b``.

A reference row the run cannot fill keeps a null run value and ``status = "missing in run"``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from saelab.errors import SaelabError
from saelab.report.quiver import TieRule, compute_quivers, with_probe_labels
from saelab.report.stats import _paired, _points, load_results

REFERENCE_COLUMNS: tuple[str, ...] = (
    "model",
    "layer",
    "setting",
    "setting_value",
    "probe",
    "sae",
    "mean_test_auc",
    "n_points",
    "source",
    "note",
)
"""Columns a reference CSV must have; ``ties`` and ``win_rate_vs_logreg`` are optional."""

PAPER_QUIVER_KS: tuple[int, ...] = (16, 128)
"""SAE k values of the paper's ``best_with_sae`` (spec 3.3, 4.4)."""

DEFAULT_MODEL = "gemma-2-9b"

COMPARISON_COLUMNS: tuple[str, ...] = (
    "model",
    "setting",
    "setting_value",
    "probe",
    "sae",
    "ties",
    "layer",
    "run_layer",
    "run_probe",
    "run_auc",
    "ref_auc",
    "auc_diff",
    "run_n_points",
    "ref_n_points",
    "run_win_rate_vs_logreg",
    "ref_win_rate_vs_logreg",
    "status",
    "source",
    "note",
)
"""Columns of ``compare_with_reference``' output; ``auc_diff = run_auc - ref_auc``."""

_VALUE_DECIMALS = 6


def default_reference_path() -> Path:
    """The bundled ``saelab/resources/paper_reference.csv``."""
    return Path(str(importlib.resources.files("saelab") / "resources" / "paper_reference.csv"))


def load_reference(path: str | Path | None = None) -> pd.DataFrame:
    """Read and check a reference CSV (default: the bundled paper numbers).

    Returns the rows with ``setting_value``, ``mean_test_auc`` and ``win_rate_vs_logreg`` as
    floats (null when empty), ``n_points`` as Int64, ``layer`` and text columns as strings.
    Raises ``SaelabError`` naming the file when it is missing or unreadable, lacks a column
    (named) or holds a non-numeric score.
    """
    path = Path(path) if path is not None else default_reference_path()
    if not path.is_file():
        raise SaelabError(f"{path}: reference CSV not found")
    try:
        ref = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise SaelabError(f"{path}: cannot read the reference CSV ({exc})") from exc
    missing = [c for c in REFERENCE_COLUMNS if c not in ref.columns]
    if missing:
        raise SaelabError(f"{path}: reference CSV lacks the column(s) {missing}")
    for col in ("ties", "win_rate_vs_logreg"):
        if col not in ref.columns:
            ref[col] = ""
    for col in ref.columns:
        ref[col] = ref[col].str.strip()
    for col in ("setting_value", "mean_test_auc", "win_rate_vs_logreg", "n_points"):
        values = pd.to_numeric(ref[col].replace("", np.nan), errors="coerce")
        bad = values.isna() if col == "mean_test_auc" else ref[col].ne("") & values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise SaelabError(
                f"{path}: column '{col}' row {row + 2}: expected a number, got {ref[col].iloc[row]!r}"
            )
        ref[col] = values.astype("float64")
    ref["n_points"] = ref["n_points"].round().astype("Int64")
    return ref


def _run_model(results: pd.DataFrame) -> str | None:
    """The run's model name without organisation, lower case (``google/gemma-2-9b`` -> ...)."""
    if "model" not in results.columns:
        return None
    names = results["model"].dropna().astype(str)
    return names.iloc[0].rstrip("/").split("/")[-1].lower() if len(names) else None


def _pick_model(ref: pd.DataFrame, results: pd.DataFrame, model: str | None, path: Any) -> str:
    models = list(dict.fromkeys(ref["model"]))
    lower = {m.lower(): m for m in models}
    if model is not None:
        if model.lower() not in lower:
            raise SaelabError(f"--model {model!r}: not in the reference {path}; it has {models}")
        return lower[model.lower()]
    run_model = _run_model(results)
    if run_model in lower:
        return lower[run_model]
    return lower.get(DEFAULT_MODEL, models[0] if models else DEFAULT_MODEL)


def _layer_pairs(ref: pd.DataFrame, run_layers: list[Any]) -> list[tuple[Any, str]]:
    """(run layer, reference layer) pairs: same layer where the reference has it, else main."""
    ref_layers = list(dict.fromkeys(ref["layer"]))
    matched = [(la, str(la)) for la in run_layers if str(la) in ref_layers]
    if matched or not ref_layers:
        return matched
    main = ref["layer"].value_counts(sort=True).index[0]
    return [(la, main) for la in run_layers]


def _sae_probe_map(results: pd.DataFrame) -> dict[tuple[int, int], str]:
    """(SAE position, k) -> probe label of the run's primary variant of that SAE (first seen)."""
    rows = with_probe_labels(results)
    rows = rows[rows["method"].eq("sae")]
    if rows.empty:
        return {}
    rows = rows.assign(_sae=rows["sae"].astype(str), _k=pd.to_numeric(rows["k"], errors="coerce"))
    first = rows.drop_duplicates("_sae")  # order of first appearance; its variant is primary
    out: dict[tuple[int, int], str] = {}
    for j, (sae, variant) in enumerate(zip(first["_sae"], first["variant"], strict=True)):
        match = rows[rows["_sae"].eq(sae) & rows["variant"].eq(variant) & rows["_k"].notna()]
        for k, label in zip(match["_k"], match["probe"], strict=True):
            out.setdefault((j, int(k)), str(label))
    return out


def compare_with_reference(
    run: Path | str | pd.DataFrame,
    reference: Path | str | None = None,
    model: str | None = None,
    ties: TieRule = "baseline_first",
) -> pd.DataFrame:
    """The run's mean test AUC beside each applicable reference row (module docstring).

    Args:
        run: a run folder (its ``results.parquet``), a results file, or a results frame.
        reference: a reference CSV (default: the bundled paper numbers, spec 6).
        model: the reference model to compare with (default: the run's model, else gemma-2-9b).
        ties: the quiver tie rule of the run's quivers and of the reference quiver rows kept.

    Returns:
        Columns ``COMPARISON_COLUMNS``, one row per (run layer, reference row), in the
        reference's row order. ``run_auc`` is the run's mean test AUC over the points of the
        setting (or of the setting value), null with ``status = "missing in run"`` when the run
        has no such probe, setting or value.
    """
    results = run.copy() if isinstance(run, pd.DataFrame) else load_results(run)
    if results.empty:
        raise SaelabError("the run has no result rows to compare")
    ref_path = reference if reference is not None else default_reference_path()
    ref_all = load_reference(ref_path)
    chosen = _pick_model(ref_all, results, model, ref_path)
    ref = ref_all[ref_all["model"].eq(chosen)].reset_index(drop=True)

    # the j-th SAE listed per (layer, setting), over all tie rules, so positions are stable
    sae_rows = ref[ref["sae"].ne("")]
    sae_pos = {
        (la, st, s): j
        for (la, st), block in sae_rows.groupby(["layer", "setting"], sort=False)
        for j, s in enumerate(dict.fromkeys(block["sae"]))
    }
    ref = ref[ref["ties"].isin(["", ties])].reset_index(drop=True)

    quivers = compute_quivers(results, sae_ks=PAPER_QUIVER_KS, ties=ties)
    pts = _points(results, quivers)
    pts["_v"] = pts["setting_value"].astype("float64").round(_VALUE_DECIMALS)
    paired = _paired(pts, "logreg")
    paired["_v"] = paired["setting_value"].astype("float64").round(_VALUE_DECIMALS)
    regime = _means(pts, paired, ["setting", "layer", "probe"])
    by_value = _means(pts, paired, ["setting", "_v", "layer", "probe"])
    sae_map = _sae_probe_map(results)

    rows = []
    run_layers = sorted(pts["layer"].dropna().unique().tolist())
    for run_layer, ref_layer in _layer_pairs(ref, run_layers):
        for rec in ref[ref["layer"].eq(ref_layer)].to_dict("records"):
            probe = rec["probe"]
            run_probe: str | None = probe
            if probe.startswith("sae_k") and probe[5:].isdigit():
                j = sae_pos.get((rec["layer"], rec["setting"], rec["sae"]), -1)
                run_probe = sae_map.get((j, int(probe[5:])))
            value = rec["setting_value"]
            stat = None
            if run_probe is not None:
                if pd.isna(value):
                    key = (rec["setting"], run_layer, run_probe)
                    stat = regime.loc[key] if key in regime.index else None
                else:
                    key = (
                        rec["setting"],
                        round(float(value), _VALUE_DECIMALS),
                        run_layer,
                        run_probe,
                    )
                    stat = by_value.loc[key] if key in by_value.index else None
            run_auc = float(stat["mean_test_auc"]) if stat is not None else np.nan
            rows.append(
                {
                    "model": chosen,
                    "setting": rec["setting"],
                    "setting_value": value,
                    "probe": probe,
                    "sae": rec["sae"] or None,
                    "ties": rec["ties"] or None,
                    "layer": ref_layer,
                    "run_layer": run_layer,
                    "run_probe": run_probe,
                    "run_auc": run_auc,
                    "ref_auc": rec["mean_test_auc"],
                    "auc_diff": run_auc - rec["mean_test_auc"],
                    "run_n_points": int(stat["n_points"]) if stat is not None else None,
                    "ref_n_points": rec["n_points"],
                    "run_win_rate_vs_logreg": (
                        float(stat["win_rate_vs_logreg"]) if stat is not None else np.nan
                    ),
                    "ref_win_rate_vs_logreg": rec["win_rate_vs_logreg"],
                    "status": "ok" if stat is not None else "missing in run",
                    "source": rec["source"],
                    "note": rec["note"],
                }
            )
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    table["setting_value"] = table["setting_value"].astype("float64")
    table["run_n_points"] = table["run_n_points"].astype("Int64")
    table["ref_n_points"] = table["ref_n_points"].astype("Int64")
    return table


def _means(pts: pd.DataFrame, paired: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean test AUC, number of points and win rate vs logreg per ``by`` group (indexed)."""
    table = pts.groupby(by, dropna=False).agg(
        mean_test_auc=("test_auc", "mean"), n_points=("test_auc", "size")
    )
    win = paired.groupby(by, dropna=False)["win"].mean().rename("win_rate_vs_logreg")
    return table.join(win)


def _num(value: Any, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(float(value), spec)


def print_comparison(table: pd.DataFrame, console: Console | None = None) -> None:
    """Print ``compare_with_reference`` output as a rich table (missing run values as "—")."""
    console = console or Console()
    if not console.is_terminal and console.width < 110:
        console = Console(file=console.file, width=110)  # logs and pipes: don't squeeze the table
    if table.empty:
        console.print("no reference rows apply to this run")
        return
    model = table["model"].iloc[0]
    layer_names = [
        str(ref) if str(run) == str(ref) else f"{run}→{ref}"
        for run, ref in dict.fromkeys(zip(table["run_layer"], table["layer"], strict=True))
    ]
    one_layer = len(layer_names) == 1
    title = f"this run vs the paper ({model}"
    title += f", layer {layer_names[0]}" if one_layer else ""
    rules = sorted({str(t) for t in table["ties"].dropna()})
    title += f"; quiver ties: {', '.join(rules)})" if rules else ")"
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    cells = [_comparison_cells(r) for r in table.to_dict("records")]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    heads = ["setting", "layer", "probe (paper SAE)", "paper", "run", "Δ", "pts"]
    for i, head in enumerate(heads):
        if head == "layer" and one_layer:
            continue
        wrap = head == "probe (paper SAE)"
        width = None if wrap else max(widths[i], len(head))
        out.add_column(
            head, justify="left" if i in (0, 2) else "right", no_wrap=not wrap, width=width
        )
    for r, row in zip(table.to_dict("records"), cells, strict=True):
        if one_layer:
            row = row[:1] + row[2:]
        out.add_row(*row, style="dim" if r["status"] != "ok" else None)
    console.print(out)
    sae_rows = table[table["probe"].str.startswith("sae_k") & table["run_probe"].notna()]
    pairs = dict.fromkeys(
        f"{p} ({s}) <- {rp}"
        for p, s, rp in sae_rows[["probe", "sae", "run_probe"]].itertuples(index=False)
    )
    if pairs:
        console.print("SAE probes compared: " + "; ".join(pairs), highlight=False)
    n_ok = int(table["status"].eq("ok").sum())
    console.print(
        f"{n_ok} of {len(table)} reference rows matched by this run (— = missing in run; pts = points in run/paper; Δ = run − paper)"
    )


def _comparison_cells(r: dict[str, Any]) -> list[str]:
    """Text cells of one comparison row: setting, layer, probe, paper, run, Δ, points."""
    layer = str(r["layer"])
    if str(r["run_layer"]) != layer:
        layer = f"{r['run_layer']}→{layer}"
    setting = str(r["setting"])
    if pd.notna(r["setting_value"]):
        setting += f" {_num(r['setting_value'], 'g')}"
    probe = str(r["probe"])
    if r["sae"]:
        probe += f" ({str(r['sae']).removeprefix('gemma-scope ')})"
    missing = r["status"] != "ok"
    run_points = "—" if pd.isna(r["run_n_points"]) else str(r["run_n_points"])
    ref_points = "" if pd.isna(r["ref_n_points"]) else str(r["ref_n_points"])
    return [
        setting,
        layer,
        probe,
        _num(r["ref_auc"], ".4f"),
        "—" if missing else _num(r["run_auc"], ".4f"),
        "" if missing else _num(r["auc_diff"], "+.4f"),
        f"{run_points}/{ref_points}",
    ]
