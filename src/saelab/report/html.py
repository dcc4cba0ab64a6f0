"""The run report: one self-contained HTML file (inline CSS, PNG figures as data URIs, no scripts).

``render_report`` assembles what the other report modules computed: the summary tables of
``saelab.report.stats.summary_table``, the quiver choices of ``saelab.report.quiver``, the figures
of ``saelab.report.plots`` and the run's own record (``run.json``: config, versions, timings,
SAE training statistics, skipped items). Every piece of text is HTML-escaped; the file fetches
nothing, so it can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import html
import json
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from saelab import __version__
from saelab.io import write_text_atomic
from saelab.names import SETTINGS
from saelab.report.plots import PlotFile, read_manifest

REPORT_NAME = "report.html"
_SETTING_TITLES = {
    "normal": "Normal setting",
    "scarcity": "Data scarcity",
    "imbalance": "Class imbalance",
    "label_noise": "Label noise",
    "ood": "Out of distribution",
}
_SAE_STAT_ORDER = (
    "d_in",
    "d_sae",
    "k",
    "steps",
    "tokens_seen",
    "train_tokens",
    "eval_tokens",
    "mse",
    "fvu",
    "l0",
    "dead_fraction",
    "train_seconds",
    "seconds",
)
_SKIPPED_ORDER = ("dataset", "setting", "setting_value", "layer", "reason")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a;
       margin: 0 auto; max-width: 1200px; padding: 1.5em 2em 3em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
.meta { color: #444; margin-top: 0; }
.status-complete { color: #006d4f; font-weight: 600; }
.status-other { color: #b34700; font-weight: 600; }
nav ul { columns: 2; padding-left: 1.2em; }
table.data { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 13px; }
table.data th, table.data td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; }
table.data th { background: #f0f0f0; text-align: left; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums;
                    white-space: nowrap; }
table.data tr.first td { border-top: 2px solid #888; }
table.data tr.quiver td { background: #fff7e6; }
table.data tr.baseline td { background: #f7f7f7; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { color: #333; max-width: 60em; margin-top: 0.4em; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto;
      font-size: 12px; }
.note { color: #555; }
footer { margin-top: 3em; border-top: 1px solid #ccc; padding-top: 0.6em; color: #666;
         font-size: 12px; }
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_auc(value: Any) -> str:
    """An AUC or AUC difference to 4 decimals; ``–`` when missing."""
    return "–" if is_missing(value) else f"{float(value):.4f}"


def fmt_diff(value: Any) -> str:
    """A signed difference to 4 decimals (``+0.0123``); ``–`` when missing."""
    return "–" if is_missing(value) else f"{float(value):+.4f}"


def fmt_ci(low: Any, high: Any) -> str:
    """A confidence interval as ``[lo, hi]`` to 4 decimals; ``–`` when missing."""
    if is_missing(low) or is_missing(high):
        return "–"
    return f"[{float(low):+.4f}, {float(high):+.4f}]"


def fmt_share(value: Any) -> str:
    """A proportion as a percentage with one decimal; ``–`` when missing."""
    return "–" if is_missing(value) else f"{100 * float(value):.1f}%"


def fmt_value(value: Any) -> str:
    """A plain cell: integers without decimals, floats to 4 significant digits, text as is."""
    if is_missing(value):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    ):
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    return str(value)


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    numeric: Sequence[bool] | None = None,
    row_classes: Sequence[str] | None = None,
    css_class: str = "data",
) -> str:
    """An HTML table; cells are escaped, numeric columns right-aligned."""
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        cells = "".join(
            f'<td class="num">{esc(c)}</td>' if numeric[j] else f"<td>{esc(c)}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return (
        f'<table class="{esc(css_class)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _ordered_settings(values: Iterable[Any]) -> list[str]:
    present = [str(v) for v in pd.unique(pd.Series(list(values), dtype=object).dropna())]
    known = [s for s in SETTINGS if s in present]
    return known + sorted(s for s in present if s not in known)


def _probe_class(probe: str) -> str:
    if probe in ("best_baseline", "best_with_sae"):
        return "quiver"
    return "" if probe.startswith("sae:") else "baseline"


def summary_section(summary: pd.DataFrame | None) -> str:
    """One table per setting: mean test AUC and the comparisons against logreg and best baseline."""
    if summary is None or summary.empty:
        return '<p class="note">No summary table: the results have no rows.</p>'
    comparisons = [c for c in ("logreg", "best_baseline") if f"win_rate_vs_{c}" in summary]
    headers = ["layer", "probe", "points", "datasets", "mean test AUC"]
    for c in comparisons:
        headers += [f"win rate vs {c}", f"mean diff vs {c}", f"95% CI vs {c}"]
    numeric = [True, False, True, True, True] + [True, True, False] * len(comparisons)
    parts = [
        '<p class="note">Mean test ROC AUC over the points of each setting (a point is a dataset '
        "and, in the hard regimes, one training size, positive fraction or flip ratio). Win rate: "
        "share of points where the probe's test AUC is higher than the comparison's; mean diff: "
        "probe minus comparison; 95% CI: paired bootstrap interval of the mean difference.</p>"
    ]
    for setting in _ordered_settings(summary["setting"]):
        rows_df = summary[summary["setting"] == setting]
        rows, classes = [], []
        previous_layer = None
        for _, r in rows_df.iterrows():
            row = [
                fmt_value(r.get("layer")),
                str(r.get("probe")),
                fmt_value(r.get("n_points")),
                fmt_value(r.get("n_datasets")),
                fmt_auc(r.get("mean_test_auc")),
            ]
            for c in comparisons:
                row += [
                    fmt_share(r.get(f"win_rate_vs_{c}")),
                    fmt_diff(r.get(f"mean_diff_vs_{c}")),
                    fmt_ci(r.get(f"ci_low_vs_{c}"), r.get(f"ci_high_vs_{c}")),
                ]
            rows.append(row)
            cls = _probe_class(str(r.get("probe")))
            if previous_layer is not None and r.get("layer") != previous_layer:
                cls = f"{cls} first".strip()  # a rule above the first row of each layer
            previous_layer = r.get("layer")
            classes.append(cls)
        title = _SETTING_TITLES.get(setting, setting)
        parts.append(f'<h3 id="summary-{esc(setting)}">{esc(title)}</h3>')
        parts.append(html_table(headers, rows, numeric, classes, css_class="data summary"))
    return "\n".join(parts)


def quiver_section(quivers: pd.DataFrame | None) -> str:
    """Per (setting, layer): the quiver means, how often an SAE probe was chosen, and ties."""
    if quivers is None or quivers.empty:
        return '<p class="note">No quiver points: no baseline or SAE probe rows with a validation AUC.</p>'
    rows = []
    ties = ", ".join(sorted({str(t) for t in quivers.get("ties", pd.Series(dtype=object))}))
    for setting in _ordered_settings(quivers["setting"]):
        per_setting = quivers[quivers["setting"] == setting]
        for layer in sorted(pd.unique(per_setting["layer"])):
            q = per_setting[per_setting["layer"] == layer]
            base = q[q["method"] == "best_baseline"]
            with_sae = q[q["method"] == "best_with_sae"]
            n = len(with_sae)
            n_sae = int((with_sae["chosen_method"] == "sae").sum())
            tied = int((with_sae["n_tied"] > 1).sum())
            top = with_sae["chosen_probe"].value_counts()
            rows.append(
                [
                    setting,
                    fmt_value(layer),
                    str(n),
                    fmt_auc(base["test_auc"].mean() if not base.empty else None),
                    fmt_auc(with_sae["test_auc"].mean() if n else None),
                    f"{n_sae}/{n} ({fmt_share(n_sae / n if n else None)})",
                    f"{tied}/{n}",
                    f"{top.index[0]} ({int(top.iloc[0])})" if not top.empty else "–",
                ]
            )
    headers = [
        "setting",
        "layer",
        "points",
        "best baseline: mean test AUC",
        "best with SAE: mean test AUC",
        "best with SAE picks an SAE probe",
        "points with tied top val AUC",
        "most chosen (best with SAE)",
    ]
    numeric = [False, True, True, True, True, True, True, False]
    note = (
        '<p class="note">At each point the quiver picks the probe with the highest validation AUC '
        "(best baseline: among the baselines; best with SAE: also among the SAE probes at the "
        f"quiver ks), then reports its test AUC. Ties in validation AUC: {esc(ties or '–')}.</p>"
    )
    return note + html_table(headers, rows, numeric, css_class="data quivers")


def _image_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def plots_section(figures: Sequence[PlotFile]) -> str:
    """Every drawn figure (PNG embedded) with its caption; the others listed with the reason."""
    if not figures:
        return '<p class="note">No figures were made.</p>'
    parts, not_drawn = [], []
    for f in figures:
        if f.drawn and f.png is not None and f.png.is_file():
            parts.append(
                f'<figure id="plot-{esc(f.name)}"><img src="{_image_data_uri(f.png)}" '
                f'alt="{esc(f.title)}"><figcaption><b>{esc(f.title)}.</b> '
                f"{esc(f.caption)} (files: plots/{esc(f.png.name)}, "
                f"plots/{esc(f.svg.name if f.svg else '')})</figcaption></figure>"
            )
        else:
            not_drawn.append([f.name, f"not drawn: {f.reason or 'the file is missing'}"])
    if not_drawn:
        parts.append("<h3>Figures not drawn</h3>")
        parts.append(html_table(["figure", "status"], not_drawn, css_class="data not-drawn"))
    return "\n".join(parts)


def skipped_section(skipped: Any) -> str:
    """The (dataset, setting, value, layer) items the run could not do, with the reason."""
    if not skipped:
        return '<p class="note">Nothing skipped.</p>'
    items = [s if isinstance(s, Mapping) else {"reason": s} for s in skipped]
    keys = [k for k in _SKIPPED_ORDER if any(k in s for s in items)]
    keys += sorted({k for s in items for k in s} - set(keys))
    rows = [[fmt_value(s.get(k)) for k in keys] for s in items]
    numeric = [k in ("setting_value", "layer") for k in keys]
    return f'<p class="note">{len(items)} skipped.</p>' + html_table(
        [k.replace("_", " ") for k in keys], rows, numeric, css_class="data skipped"
    )


def run_section(meta: Mapping[str, Any]) -> str:
    """The run's config (YAML), package versions, stage timings and SAE training statistics."""
    parts = ["<h3>Config</h3>"]
    config = meta.get("config")
    if config:
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
        parts.append(f'<pre class="config">{esc(text)}</pre>')
    else:
        parts.append('<p class="note">run.json holds no config.</p>')
    versions = meta.get("versions") or {}
    parts.append("<h3>Versions</h3>")
    if versions:
        rows = [[k, v] for k, v in versions.items()]
        parts.append(html_table(["package", "version"], rows, css_class="data versions"))
    else:
        parts.append('<p class="note">No versions recorded.</p>')
    parts.append("<h3>Stage timings</h3>")
    stages = meta.get("stage_seconds") or {}
    if stages:
        total = sum(float(s) for s in stages.values()) or float("nan")
        rows = [[k, f"{float(s):.1f}", fmt_share(float(s) / total)] for k, s in stages.items()]
        if not is_missing(meta.get("seconds")):
            rows.append(["whole run (wall clock)", f"{float(meta['seconds']):.1f}", ""])
        parts.append(
            html_table(
                ["stage", "seconds", "share of stage time"],
                rows,
                [False, True, True],
                css_class="data timings",
            )
        )
    else:
        parts.append('<p class="note">No stage timings recorded.</p>')
    parts.append("<h3>SAEs</h3>")
    parts.append(sae_table_html(meta.get("sae_table") or []))
    parts.append("<h3>SAE training</h3>")
    parts.append(_sae_training_table(meta.get("sae_training") or {}))
    return "\n".join(parts)


SAE_TABLE_COLUMNS = (
    ("sae", "SAE"),
    ("layer", "layer"),
    ("hook", "hook"),
    ("source", "source"),
    ("architecture", "architecture"),
    ("d_sae", "width"),
    ("l0", "L0"),
    ("fvu", "FVU"),
    ("dead_fraction", "dead fraction"),
    ("n_tokens", "held-out tokens"),
)


def sae_table_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """The run's SAEs side by side: origin, architecture, width and their FVU, L0 and dead
    fraction on the same held-out tokens (``saes.csv``)."""
    if not rows:
        return '<p class="note">No SAE table recorded for this run.</p>'
    body = [[fmt_value(r.get(key)) for key, _ in SAE_TABLE_COLUMNS] for r in rows]
    numeric = [
        key in {"layer", "d_sae", "l0", "fvu", "dead_fraction", "n_tokens"}
        for key, _ in SAE_TABLE_COLUMNS
    ]
    note = (
        '<p class="note">FVU, L0 and dead fraction (latents silent on every one of these tokens) '
        "on the first normal-split test texts of each dataset; NaN for a streamed SAE, whose "
        "weights are never held whole.</p>"
    )
    return (
        html_table([h for _, h in SAE_TABLE_COLUMNS], body, numeric, css_class="data sae-table")
        + note
    )


def _sae_training_table(stats: Mapping[str, Any]) -> str:
    """One row per trained or loaded SAE, with its scalar statistics (fvu, l0, dead fraction...)."""
    if not stats:
        return '<p class="note">No SAE was trained in this run (or none was recorded).</p>'
    per_sae = {k: v for k, v in stats.items() if isinstance(v, Mapping)}
    scalars = {
        key
        for v in per_sae.values()
        for key, x in v.items()
        if isinstance(x, (int, float, str, bool)) or x is None
    }
    keys = [k for k in _SAE_STAT_ORDER if k in scalars]
    keys += sorted(scalars - set(keys))
    rows = [[name, *(fmt_value(v.get(k)) for k in keys)] for name, v in per_sae.items()]
    numeric = [False] + [True] * len(keys)
    return html_table(["SAE @ layer", *keys], rows, numeric, css_class="data sae-training")


def _header(meta: Mapping[str, Any], run_dir: Path, results: pd.DataFrame | None) -> str:
    name = meta.get("name") or run_dir.name
    status = str(meta.get("status") or "unknown")
    status_class = "status-complete" if status == "complete" else "status-other"
    facts = [f'status <span class="{status_class}">{esc(status)}</span>']
    if meta.get("started"):
        facts.append(f"started {esc(meta['started'])}")
    if meta.get("finished"):
        facts.append(f"finished {esc(meta['finished'])}")
    if not is_missing(meta.get("seconds")):
        facts.append(f"{float(meta['seconds']):.1f} s")
    model = meta.get("model_id") or ((meta.get("config") or {}).get("model") or {}).get("name")
    if model:
        facts.append(f"model {esc(model)}")
    if results is not None and not results.empty:
        facts.append(
            f"{len(results)} probe rows, {results['dataset'].nunique()} datasets, "
            f"{results['layer'].nunique()} layers"
        )
    error = f'<p class="status-other">error: {esc(meta["error"])}</p>' if meta.get("error") else ""
    return (
        f"<header><h1>saelab report: {esc(name)}</h1>"
        f'<p class="meta">{" · ".join(facts)}</p>{error}</header>'
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_frame(path: Path, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame | None:
    try:
        return reader(path)
    except (OSError, ValueError):
        return None


def html_page(
    title: str, header: str, sections: Sequence[tuple[str, str, str]], built_from: str = ""
) -> str:
    """One self-contained page: ``header`` (HTML), a navigation list, one ``<section>`` per
    ``(id, title, HTML content)``, and a footer naming the saelab version, the time and
    ``built_from`` (text)."""
    nav = "".join(f'<li><a href="#{key}">{esc(name)}</a></li>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{esc(name)}</h2>\n{content}</section>'
        for key, name, content in sections
    )
    built = time.strftime("%Y-%m-%d %H:%M:%S %z")
    origin = f" {esc(built_from)}" if built_from else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"{header}\n"
        f"<nav><ul>{nav}</ul></nav>\n{body}\n"
        f"<footer>Built by saelab {esc(__version__)} on {esc(built)}{origin}.</footer>\n"
        "</body></html>\n"
    )


def render_report(
    run_dir: Path,
    *,
    run_meta: Mapping[str, Any] | None = None,
    results: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
    quivers: pd.DataFrame | None = None,
    figures: Sequence[PlotFile] | None = None,
) -> str:
    """Write ``run_dir/report.html`` and return its text.

    Anything not passed is read from the run folder: ``run.json``, ``results.parquet``,
    ``summary.csv``, ``quivers.parquet`` and the figure list ``plots/plots.json`` (an absent
    file leaves its section with a note). The file embeds the PNG figures as data URIs and
    needs no network, script or other file to display.
    """
    run_dir = Path(run_dir)
    meta = dict(run_meta) if run_meta is not None else _read_json(run_dir / "run.json")
    if results is None:
        results = _read_frame(run_dir / "results.parquet", pd.read_parquet)
    if summary is None:
        summary = _read_frame(run_dir / "summary.csv", pd.read_csv)
    if quivers is None:
        quivers = _read_frame(run_dir / "quivers.parquet", pd.read_parquet)
    if figures is None:
        figures = read_manifest(run_dir)
    name = meta.get("name") or run_dir.name
    sections = [
        ("summary", "Summary tables", summary_section(summary)),
        ("quivers", "Quiver choices", quiver_section(quivers)),
        ("plots", "Figures", plots_section(figures)),
        ("skipped", "Skipped", skipped_section(meta.get("skipped"))),
        ("run", "Run details", run_section(meta)),
    ]
    text = html_page(
        f"saelab report: {name}",
        _header(meta, run_dir, results),
        sections,
        f"from the files of the run folder {run_dir.name}",
    )
    write_text_atomic(run_dir / REPORT_NAME, text)
    return text
