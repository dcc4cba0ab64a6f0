"""saelab from Python (notebooks, scripts): load a config, run it, read the results table.

Example::

    import saelab

    cfg = saelab.load_config("examples/quickstart.yaml", overrides=["data.max_test=200"])
    outcome = saelab.run(cfg, out="runs/demo")  # resumes if runs/demo has finished units
    table = outcome.results                      # one row per fitted probe (docs/RESULTS.md)
    table = saelab.read_results("runs/demo")     # the same, from the run folder

``run`` is what ``saelab run`` does, without the console summary: plan, inputs, execute (the
config's executor: a local process pool by default; a script that uses it needs the usual
``if __name__ == "__main__":`` guard of Python multiprocessing), store, and optionally the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from saelab.config import RunConfig, load_config
from saelab.errors import ConfigError

__all__ = ["load_config", "read_results", "run"]


def run(
    config: RunConfig | str | Path | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = False,
    report: bool = False,
) -> Any:
    """Run (or resume) a config and return its ``RunOutcome`` (``.results``, ``.timings``, ...).

    Args:
        config: a ``RunConfig``, a YAML path, a mapping of config keys, or None (the quickstart).
        out: the run folder (default ``runs/<name>``).
        overrides: ``key=value`` strings, as ``saelab run --set`` (YAML paths and None only).
        progress: show progress bars.
        report: also build ``summary.csv``, the plots and ``report.html``.
    """
    from saelab.pipeline.run import run_pipeline

    if isinstance(config, RunConfig):
        if overrides:
            raise ConfigError("overrides: apply them to the mapping or YAML, not to a RunConfig")
        cfg = config
    elif isinstance(config, dict):
        from saelab.config import apply_overrides, validate_config

        cfg = validate_config(apply_overrides(dict(config), overrides or []), "<mapping>")
    else:
        cfg = load_config(config, overrides or [])
    run_dir = Path(out) if out is not None else Path("runs") / cfg.name
    outcome = run_pipeline(cfg, run_dir, progress=progress)
    if report:
        from saelab.report import build_report

        build_report(run_dir)
    return outcome


def read_results(run_dir: str | Path) -> pd.DataFrame:
    """The results table of a run folder (``results.parquet``)."""
    path = Path(run_dir) / "results.parquet"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run the config first (saelab run)")
    return pd.read_parquet(path)
