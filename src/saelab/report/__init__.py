"""Tables, statistics, plots and the HTML report built from a run's results."""

from typing import Any

from saelab.report.compare import compare_with_reference, load_reference, print_comparison
from saelab.report.quiver import (
    BASELINE_ORDER,
    QUIVER_KEYS,
    compute_quivers,
    probe_labels,
    sae_chosen_share,
)
from saelab.report.stats import (
    load_results,
    paired_bootstrap_ci,
    print_regime_summary,
    regime_curves,
    summary_table,
    write_summary,
)
from saelab.report.summary import print_summary, summary_frame

__all__ = [
    "BASELINE_ORDER",
    "QUIVER_KEYS",
    "build_report",
    "compare_with_reference",
    "compute_quivers",
    "load_reference",
    "load_results",
    "paired_bootstrap_ci",
    "print_comparison",
    "print_regime_summary",
    "print_summary",
    "probe_labels",
    "regime_curves",
    "render_report",
    "sae_chosen_share",
    "summary_frame",
    "summary_table",
    "write_plots",
    "write_summary",
]

#: Report builders import matplotlib, so they load on first use: ``saelab run`` stays light.
_LAZY = {
    "build_report": "saelab.report.build",
    "render_report": "saelab.report.html",
    "write_plots": "saelab.report.plots",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
