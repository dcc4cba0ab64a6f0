"""Command line: ``saelab run``, ``report``, ``compare``, ``datasets``, ``cache``, ``sae train``,
``eval``, ``merge``, ``eval-schema`` and ``ception``."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from saelab.errors import SaelabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="saelab: are sparse autoencoders useful? Activations, SAEs, sparse probes and baselines.",
)
console = Console(stderr=False)
err_console = Console(stderr=True)


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML config; omit for the built-in quickstart"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key: --set data.max_test=200 (repeatable)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="run folder (default: runs/<name>); rerunning resumes it"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    report: Annotated[
        bool, typer.Option(help="build summary.csv, plots and report.html at the end")
    ] = True,
) -> None:
    """Run the pipeline: datasets -> activations -> SAEs -> probes -> results, summary, report."""
    from saelab.config import load_config
    from saelab.pipeline.run import run_pipeline
    from saelab.report import print_regime_summary, print_summary

    cfg = load_config(config, set_ or [])
    run_dir = out or Path("runs") / cfg.name
    start = time.perf_counter()
    outcome = run_pipeline(cfg, run_dir, progress=progress)
    summary = None
    if report:
        from saelab.report import build_report

        try:
            html = build_report(run_dir)
            summary = pd.read_csv(run_dir / "summary.csv")
            console.print(f"report: {html}")
        except Exception as exc:  # the results are saved; a report failure must not hide them
            logging.getLogger("saelab").warning(
                "could not build the report (%s: %s); rebuild it with: saelab report %s",
                type(exc).__name__,
                exc,
                run_dir,
            )
    if summary is not None and not summary.empty:
        print_regime_summary(summary, console, sae_ks=cfg.probes.quiver_ks)
    else:
        print_summary(outcome.results, console, title=f"{cfg.name}: mean test AUC over datasets")
    if outcome.skipped:
        console.print(
            f"{len(outcome.skipped)} item(s) skipped (warnings above; list in skipped.csv)"
        )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in outcome.timings.items())
    console.print(
        f"{len(outcome.results)} rows from {outcome.n_units} units "
        f"({outcome.n_units_done_before} reused) in {time.perf_counter() - start:.1f}s \\[{stages}]"
    )
    console.print(
        f"results: {run_dir / 'results.parquet'} and results.csv; config and timings: run.json"
    )


@app.command()
def datasets(
    ood: Annotated[bool, typer.Option("--ood", help="also list the 8 OOD test sets")] = False,
) -> None:
    """List the bundled datasets (name, rows, family)."""
    from saelab.data import count_rows, list_bundled

    table = Table(title="bundled datasets (from the sae-probes package)")
    table.add_column("name")
    table.add_column("rows", justify="right")
    table.add_column("family")
    table.add_column("kind")
    infos = list_bundled(include_ood=ood)
    for info in infos:
        table.add_row(
            info.name,
            str(count_rows(info)),
            info.family,
            info.kind + (f" of {info.ood_of}" if info.ood_of else ""),
        )
    console.print(table)
    console.print(f"{len(infos)} datasets")


@app.command()
def compare(
    run_dir: Annotated[Path, typer.Argument(help="run folder with results.parquet")],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="reference CSV (default: the paper's numbers, spec 6)"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="reference model, e.g. gemma-2-9b (default: the run's)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="also write the comparison to this CSV")
    ] = None,
) -> None:
    """Compare a run's mean test AUCs with the paper's headline numbers."""
    from saelab.io import atomic_path
    from saelab.report.compare import compare_with_reference, print_comparison

    table = compare_with_reference(run_dir, reference=reference, model=model)
    print_comparison(table, console)
    if out is not None:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
        console.print(f"comparison: {out}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="run folder with results.parquet and run.json")],
    n_boot: Annotated[
        int,
        typer.Option("--n-boot", min=1, help="bootstrap draws per confidence interval"),
    ] = 2000,
) -> None:
    """Rebuild a run's quivers, summary, plots and self-contained report.html from its results."""
    from saelab.report.build import build_report

    path = build_report(run_dir, n_boot=n_boot)
    console.print(f"report: {path}", soft_wrap=True)


cache_app = typer.Typer(
    help="What the cache holds (activations, trained SAEs), and pruning it.",
    no_args_is_help=False,
    invoke_without_command=True,
)
app.add_typer(cache_app, name="cache")

CacheDir = Annotated[
    Path | None,
    typer.Option("--dir", help="cache folder (default: $SAELAB_CACHE or ~/.cache/saelab)"),
]


def _cache_root(folder: Path | None) -> Path:
    from saelab.pipeline.run import default_cache_dir

    return folder or default_cache_dir()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _print_entries(entries: list, title: str) -> None:
    table = Table(title=title)
    for col in ("kind", "what", "size", "last used", "path"):
        table.add_column(col, justify="right" if col == "size" else "left", overflow="fold")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        table.add_row(e.kind, e.what, _size(e.bytes), when, str(e.path))
    console.print(table)
    console.print(f"{len(entries)} entries, {_size(sum(e.bytes for e in entries))}")


@cache_app.callback()
def cache_main(ctx: typer.Context, folder: CacheDir = None) -> None:
    """List the cache (``saelab cache``), or prune it (``saelab cache prune``)."""
    if ctx.invoked_subcommand is None:
        cache_list(folder)


@cache_app.command("list")
def cache_list(folder: CacheDir = None) -> None:
    """List every cache entry: what it is, how big, when last used (most recent first)."""
    from saelab.pipeline.cache import list_cache

    root = _cache_root(folder)
    _print_entries(list_cache(root), f"saelab cache {root}")


@cache_app.command("prune")
def cache_prune(
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max-size", help="keep at most this much, e.g. 5GB (least recently used go)"
        ),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="remove entries unused this long, e.g. 30d, 12h"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would go")] = False,
    folder: CacheDir = None,
) -> None:
    """Remove cache entries by age and/or to fit a size; runs recompute what they need."""
    from saelab.errors import ConfigError
    from saelab.pipeline.cache import parse_age, parse_size, prune_cache

    if max_size is None and older_than is None:
        raise ConfigError("saelab cache prune: give --max-size and/or --older-than")
    try:
        max_bytes = None if max_size is None else parse_size(max_size)
        age = None if older_than is None else parse_age(older_than)
    except ValueError as exc:
        raise ConfigError(f"saelab cache prune: {exc}") from None
    root = _cache_root(folder)
    gone = prune_cache(root, max_bytes=max_bytes, older_than=age, dry_run=dry_run)
    _print_entries(gone, "would remove" if dry_run else "removed")


sae_app = typer.Typer(help="SAEs outside a probing run.", no_args_is_help=True)
app.add_typer(sae_app, name="sae")


@sae_app.command("train")
def sae_train(
    config: Annotated[Path, typer.Argument(help="YAML: model, hook, texts, saes (id -> config)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: runs/sae_train/<config name>)"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key: --set saes.topk.k=16 (repeatable)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Train SAEs on token activations of bundled datasets' texts or text files; rerun resumes."""
    from saelab.config import load_sae_train_config
    from saelab.sae.training.corpus import train_saes_on_corpus

    cfg = load_sae_train_config(config, set_ or [])
    folder = out or Path("runs") / "sae_train" / config.stem
    stats = train_saes_on_corpus(cfg, folder, progress=progress)
    table = Table(title=f"SAEs in {folder}")
    for col in ("id", "architecture", "d_sae", "L0", "FVU", "dead", "seconds"):
        table.add_column(col, justify="left" if col in ("id", "architecture") else "right")
    for sae_id, s in stats.items():
        table.add_row(
            sae_id,
            f"{s['architecture']} (saved as {s['saved_as']})",
            str(s["d_sae"]),
            f"{s['l0']:.1f}",
            f"{s['fvu']:.4f}",
            f"{s['dead_fraction']:.1%}",
            f"{s['seconds']:.0f}",
        )
    console.print(table)


@app.command("eval")
def eval_(
    config: Annotated[
        Path, typer.Argument(help="YAML: model, hook, saes, evals (saelab.config.EvalConfig)")
    ],
    stage: Annotated[
        list[str] | None,
        typer.Option(
            "--stage",
            help="setup | core | sparse_probing | absorption | compare | merge | visualize | all "
            "(repeatable; default all)",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: runs/<name>); rerunning resumes it"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key: --set heldout.max_tokens=50000"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Evaluate SAEs: core metrics and splicing, sparse probing, absorption, comparison, report."""
    from saelab.config import load_eval_config
    from saelab.evals.runner import run_eval

    cfg = load_eval_config(config, set_ or [])
    folder = out or Path("runs") / cfg.name
    start = time.perf_counter()
    run = run_eval(cfg, folder, stage, progress=progress)
    merged = folder / "merged.csv"
    if merged.is_file() and (not stage or {"merge", "all"} & set(stage)):
        _print_merged(pd.read_csv(merged))
    if (folder / "comparison.csv").is_file() and (not stage or {"compare", "all"} & set(stage)):
        from saelab.evals.architectures import print_architecture_comparison

        print_architecture_comparison(pd.read_csv(folder / "comparison.csv"), console)
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in run.timer.seconds.items())
    console.print(f"{folder} in {time.perf_counter() - start:.1f}s \\[{stages}]")
    if (folder / "report" / "report.html").is_file():
        console.print(f"report: {folder / 'report' / 'report.html'}", soft_wrap=True)


def _print_merged(merged: pd.DataFrame) -> None:
    """One line per SAE: its headline metrics."""
    cols = [
        ("core.l0", "L0", ".1f"),
        ("core.explained_variance", "EV", ".4f"),
        ("core.ce_loss_score", "CE score", ".4f"),
        ("core.pooled_cossim_score", "cos score", ".4f"),
        ("sparse_probing.sae_top_1_test_accuracy", "top-1 acc", ".4f"),
        ("sparse_probing.sae_top_5_test_accuracy", "top-5 acc", ".4f"),
        ("absorption.mean_absorption_fraction_score", "absorption", ".4f"),
    ]
    cols = [c for c in cols if c[0] in merged.columns]
    table = Table(title="SAE evaluation")
    for name in ("sae", "architecture", "d_sae"):
        table.add_column(name)
    for _, label, _ in cols:
        table.add_column(label, justify="right")
    for row in merged.to_dict("records"):
        cells = [str(row["sae"]), str(row["architecture"]), str(row["d_sae"])]
        for col, _, spec in cols:
            value = row.get(col)
            cells.append("-" if value is None or pd.isna(value) else format(float(value), spec))
        table.add_row(*cells)
    console.print(table)


@app.command()
def ception(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML (saelab.config.CeptionConfig); default: MiniLM on SST-2"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: runs/<name>); rerunning resumes it"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a config key: --set cycle.cycles=2 (repeatable)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """SAE-ception: fine-tune a classifier, train an SAE on it, retrain with an auxiliary loss
    toward sharpened SAE codes, repeat; metrics per cycle, strategy and seed, with a report."""
    from saelab.ception.report import print_ception_summary
    from saelab.ception.run import run_ception
    from saelab.config import load_ception_config

    cfg = load_ception_config(config, set_ or [])
    folder = out or Path("runs") / cfg.name
    result = run_ception(cfg, folder, progress=progress)
    print_ception_summary(result.cycles, console)
    console.print(f"{folder} in {result.seconds:.1f}s")
    console.print(f"report: {folder / 'report.html'}", soft_wrap=True)


@app.command()
def merge(
    paths: Annotated[list[Path], typer.Argument(help="eval result JSON files or folders of them")],
    out: Annotated[
        Path, typer.Option("--out", help="merged table (.csv or .parquet); details.parquet beside")
    ] = Path("merged.csv"),
) -> None:
    """Join eval result envelopes into one table (one row per SAE, <eval>.<metric> columns)."""
    from saelab.evals.runner import write_merged

    wide = write_merged(paths, out)
    _print_merged(wide)
    console.print(f"merged {len(wide)} SAEs: {out}")


@app.command("eval-schema")
def eval_schema(
    out: Annotated[Path | None, typer.Option("--out", help="write to this file")] = None,
) -> None:
    """The JSON schema of eval result envelopes (generated from the pydantic models)."""
    import json

    from saelab.evals.envelope import envelope_schema
    from saelab.io import write_text_atomic

    text = json.dumps(envelope_schema(), indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out, text)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2; Ctrl-C exits 130 (rerun to resume)."""
    try:
        app(args=argv, standalone_mode=False)
    except SaelabError as exc:
        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
        logging.getLogger("saelab").debug("user error", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted: finished units are saved; rerun the same command to resume")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 130
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
