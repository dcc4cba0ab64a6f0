"""The run: plan -> inputs -> execute -> store, resumable, on any executor.

Each stage is a function of typed inputs, callable on its own (``prepare_run``, ``plan_run``,
``train_run_saes``, ``unit_jobs``, ``execute_units``); ``run_pipeline`` chains them and keeps the
run folder's ``run.json``. Stages, in order (``run.json`` records the seconds of each, exclusive:
reading activations and encoding inside the probe stage count as theirs):

1. **datasets / splits**: load and validate every dataset (a bad file stops the run before any
   heavy work), then draw the splits of every configured setting (``regimes.py``).
2. **model, SAEs, plan**: load the model, load the SAE files, key the SAEs trained here, and plan
   one unit per (dataset, setting, layer, probe) with all of the setting's splits (``plan.py``).
   Units whose rows are already in the run folder are done.
3. **activations / SAE training**: SAEs not in the cache are trained on token-level activations
   of the normal split's training texts only.
4. **probes**: dataset by dataset, the inputs (activations read once, each SAE encoded once per
   layer and code pooling: ``inputs.py``) go to the executor (``executors.py``: serial, a local
   process pool, or Ray); each finished unit's rows are written at once (``store.py``), so an
   interrupted run resumes where it stopped.
5. **results**: ``results.parquet`` / ``results.csv``, ``skipped.csv`` and ``run.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from saelab import __version__
from saelab.config import RunConfig
from saelab.errors import ConfigError, SaelabError
from saelab.io import stable_hash, write_json_atomic
from saelab.pipeline.executors import Executor, Job, make_executor
from saelab.pipeline.inputs import DatasetInputs
from saelab.pipeline.logs import StageTimer, setup_logging
from saelab.pipeline.plan import PlannedUnit, plan_units
from saelab.pipeline.regimes import DatasetPlan, Skipped, log_skipped, plan_dataset, plan_ood
from saelab.pipeline.saes import encode, load_saes, train_key, train_saes
from saelab.pipeline.store import ResultStore, package_versions

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$SAELAB_CACHE`` or ``~/.cache/saelab``."""
    env = os.environ.get("SAELAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saelab"


def cache_root_of(cfg: RunConfig) -> Path:
    """The cache folder of a config: ``cache_dir``, else the default."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


@dataclass
class RunOutcome:
    """What a finished run produced."""

    run_dir: Path
    results: pd.DataFrame
    timings: dict[str, float]
    n_units: int
    n_units_done_before: int
    skipped: list[Skipped] = field(default_factory=list)


def expand_dataset_names(names: list[str]) -> list[str]:
    """Replace ``all`` with the 113 bundled binary datasets, keeping order and dropping repeats."""
    from saelab.data import list_bundled

    out: list[str] = []
    for name in names:
        items = [i.name for i in list_bundled()] if name == "all" else [name]
        out.extend(i for i in items if i not in out)
    return out


def prepare_datasets(
    cfg: RunConfig, timer: StageTimer, skipped: list[Skipped]
) -> list[DatasetPlan]:
    """Load every dataset, then draw the splits of every setting (skips go to ``skipped``)."""
    from saelab.data import load_dataset

    with timer("datasets"):
        datasets = [
            load_dataset(n, max_rows=cfg.data.max_rows)
            for n in expand_dataset_names(cfg.data.datasets)
        ]
    seen: dict[str, Any] = {}
    for ds in datasets:
        if ds.name in seen:
            raise ConfigError(
                f"key 'data.datasets': two datasets are named {ds.name!r} ({seen[ds.name]} and "
                f"{ds.path}); result rows are keyed by name, so rename one file"
            )
        seen[ds.name] = ds.path
    with timer("splits"):
        plans = [plan_dataset(cfg, ds, skipped) for ds in datasets]
        plan_ood(cfg, plans, skipped, max_rows=cfg.data.max_rows)
        for p in plans:
            p.finish()
    return plans


def probe_device(cfg: RunConfig) -> str:
    """Where probe solvers run: ``probes.device``, with ``auto`` = cuda when available."""
    device = cfg.probes.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run_pipeline(cfg: RunConfig, run_dir: Path, progress: bool = True) -> RunOutcome:
    """Run (or resume) the whole pipeline for ``cfg`` in ``run_dir``.

    ``run.json`` is rewritten at the start and at the end of every invocation, with its status
    (``running``, ``complete``, ``interrupted`` or ``failed`` with the error) and the history of
    earlier invocations of the same folder.
    """
    run_dir = Path(run_dir)
    setup_logging(run_dir)
    timer = StageTimer()
    started = time.time()
    cfg_hash = stable_hash(cfg.model_dump(mode="json"))
    cache_root = cache_root_of(cfg)
    versions = package_versions()
    log.info("run %s -> %s (config %s, cache %s)", cfg.name, run_dir, cfg_hash, cache_root)
    store = ResultStore(run_dir)
    run_json = run_dir / "run.json"
    meta: dict[str, Any] = {
        "name": cfg.name,
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg_hash,
        "versions": versions,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "cache_dir": str(cache_root),
    }
    history = _previous_invocations(run_json)
    meta["invocations"] = history
    write_json_atomic(run_json, meta)
    try:
        outcome = _run_stages(cfg, run_dir, progress, timer, store, meta, cache_root, versions)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        _finish(
            run_json, meta, history, status, started, timer, error=f"{type(exc).__name__}: {exc}"
        )
        raise
    _finish(run_json, meta, history, "complete", started, timer)
    log.info("wrote %s rows to %s", len(outcome.results), run_dir / "results.parquet")
    return outcome


def _previous_invocations(run_json: Path) -> list[dict[str, Any]]:
    """The invocation history kept in an existing ``run.json`` (empty when absent or unreadable)."""
    try:
        old = json.loads(run_json.read_text("utf-8"))
    except (OSError, ValueError):
        return []
    hist = old.get("invocations") if isinstance(old, dict) else None
    return hist if isinstance(hist, list) else []


def _finish(
    run_json: Path,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    status: str,
    started: float,
    timer: StageTimer,
    error: str | None = None,
) -> None:
    """Record how this invocation ended (status, timings) in ``run.json``, keeping earlier ones."""
    seconds = time.time() - started
    meta.update(
        status=status,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        seconds=seconds,
        stage_seconds=dict(timer.seconds),
    )
    if error:
        meta["error"] = error
    units = meta.get("units", {})
    meta["invocations"] = [
        *history,
        {
            "started": meta["started"],
            "status": status,
            "seconds": seconds,
            "stage_seconds": dict(timer.seconds),
            "units_planned": units.get("planned"),
            "units_done_before": units.get("done_before"),
            "executor": meta.get("executor"),
            **({"error": error} if error else {}),
        },
    ]
    write_json_atomic(run_json, meta)


def _resolve_pooling(cfg: RunConfig, handle: Any) -> str:
    if cfg.pooling != "auto":
        return cfg.pooling
    return "last" if handle.is_decoder else "mean"


@dataclass
class PreparedRun:
    """Everything the later stages need: datasets with their splits, the model, the SAEs.

    Built by :func:`prepare_run`; :func:`plan_run`, :func:`train_run_saes`, :func:`unit_jobs` and
    :func:`execute_units` take it, so each stage can be called on its own (e.g. from a notebook).
    """

    cfg: RunConfig
    plans: list[DatasetPlan]
    handle: Any
    pooling: str
    keep_tokens: bool
    activation_key: dict[str, Any]
    cache: Any
    cache_root: Path
    device: str
    saes: dict[tuple[str, int], Any] = field(default_factory=dict)
    sae_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    train_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    sae_stats: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    timer: StageTimer = field(default_factory=StageTimer)
    progress: bool = True

    def cached(self, texts: list[str]) -> bool:
        """True when the activations of ``texts`` are in the cache (header check only)."""
        cfg = self.cfg
        return self.cache.has(
            self.handle,
            texts,
            cfg.layers,
            self.pooling,
            max_length=cfg.model.max_length,
            keep_tokens=self.keep_tokens,
        )

    def read_activations(self, texts: list[str], with_tokens: bool | None = None) -> dict[int, Any]:
        """Activations of ``texts`` at every layer of the run (disk cache, else one forward pass)."""
        cfg = self.cfg
        with self.timer("activations"):
            return self.cache.get_or_extract(
                self.handle,
                texts,
                cfg.layers,
                self.pooling,
                max_length=cfg.model.max_length,
                keep_tokens=self.keep_tokens if with_tokens is None else with_tokens,
                batch_size=cfg.model.batch_size,
                progress=self.progress,
            )

    def encode(self, sae_id: str, layer: int, la: Any, code_poolings: list[str]) -> dict:
        """CSR codes of ``la`` for each code pooling, with the SAE ``sae_id`` of ``layer``."""
        with self.timer("encode"):
            return encode(self.saes[(sae_id, layer)], la, self.pooling, code_poolings)


def prepare_run(
    cfg: RunConfig, timer: StageTimer | None = None, progress: bool = True
) -> PreparedRun:
    """Datasets and splits, the model, the SAE files, and the keys of the SAEs trained here."""
    from saelab.activations import ActivationCache, load_model

    timer = timer or StageTimer()
    skipped: list[Skipped] = []
    plans = prepare_datasets(cfg, timer, skipped)
    log.info(
        "%d datasets, settings %s: %s",
        len(plans),
        ", ".join(cfg.settings),
        ", ".join(f"{p.dataset.name} ({len(p.splits)} splits)" for p in plans),
    )
    with timer("model"):
        handle = load_model(
            cfg.model.name,
            revision=cfg.model.revision,
            device=cfg.model.device,
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    bad = [layer for layer in cfg.layers if layer >= handle.n_layers]
    if bad:
        raise ConfigError(
            f"key 'layers': {bad} out of range for {cfg.model.name}, which has blocks "
            f"0..{handle.n_layers - 1}"
        )
    pooling = _resolve_pooling(cfg, handle)
    # Token-level activations of every row are needed only when an SAE variant pools per-token
    # codes (mean or max); SAE training reads the training rows' tokens separately.
    code_poolings = {v.resolved_pooling(pooling) for s in cfg.settings for v in cfg.variants_for(s)}
    keep_tokens = bool(cfg.saes) and bool(code_poolings & {"mean", "max"})
    log.info(
        "model %s (%s, %d blocks, d_model %d), pooling %s",
        handle.name,
        handle.model_id,
        handle.n_layers,
        handle.d_model,
        pooling,
    )
    cache_root = cache_root_of(cfg)
    run = PreparedRun(
        cfg=cfg,
        plans=plans,
        handle=handle,
        pooling=pooling,
        keep_tokens=keep_tokens,
        activation_key={
            "model_id": handle.model_id,
            "pooling": pooling,
            "max_length": cfg.model.max_length,
            "dtype": str(handle.dtype),
            "keep_tokens": keep_tokens,
        },
        cache=ActivationCache(cache_root),
        cache_root=cache_root,
        device=probe_device(cfg),
        skipped=skipped,
        timer=timer,
        progress=progress,
    )
    # SAEs: loaded ones are read now; trained ones are keyed now and trained when needed
    load_saes(cfg, handle, run.saes, run.sae_keys, timer)
    run.train_keys = {
        (sc.id, layer): train_key(cfg, sc, handle, layer, pooling, plans, run.activation_key)
        for sc in cfg.saes
        if sc.train is not None
        for layer in cfg.layers
    }
    run.sae_keys.update(run.train_keys)
    return run


def plan_run(run: PreparedRun) -> list[PlannedUnit]:
    """Every probe unit of the run (``plan.plan_units``)."""
    with run.timer("plan"):
        return plan_units(
            run.cfg,
            run.plans,
            model_id=run.handle.model_id,
            pooling=run.pooling,
            activation_key=run.activation_key,
            sae_keys=run.sae_keys,
            device=run.device,
        )


def train_run_saes(run: PreparedRun) -> None:
    """Train (or load from the SAE cache) every SAE of the config that is trained here, on
    token-level activations of the normal split's training texts only."""
    missing = [
        (sc, layer)
        for sc in run.cfg.saes
        if sc.train is not None
        for layer in run.cfg.layers
        if (sc.id, layer) not in run.saes
    ]
    if not missing:
        return

    def train_rows(p: DatasetPlan) -> dict[int, Any]:
        """Token-level activations of the normal split's training rows: a selection of the
        all-row activations when the run keeps tokens (one extraction serves both)."""
        if run.keep_tokens:
            rows = torch.as_tensor(p.positions(p.normal.train))
            return {layer: la.select_rows(rows) for layer, la in all_rows(p).items()}
        return run.read_activations([p.dataset.prompts[i] for i in p.normal.train], True)

    def all_rows(p: DatasetPlan) -> dict[int, Any]:
        return run.read_activations([p.dataset.prompts[i] for i in p.rows])

    train_saes(
        run.cfg,
        missing,
        run.train_keys,
        run.plans,
        train_rows,
        run.cache_root,
        run.saes,
        run.sae_stats,
        run.handle,
        run.timer,
        run.progress,
    )


def extract_activations(run: PreparedRun, units: list[PlannedUnit]) -> None:
    """Fill the activation cache for every dataset (and OOD test set) that has units to run, so
    the probe stage only reads it (a forward pass there would compete with the probe workers)."""
    names = {u.plan.dataset.name for u in units}
    for p in run.plans:
        if p.dataset.name not in names:
            continue
        texts = [p.dataset.prompts[i] for i in p.rows]
        if not run.cached(texts):
            run.read_activations(texts)
        for t in p.ood:
            # a failure is reported by the probe stage, which skips the split with the reason
            if not run.cached(list(t.dataset.prompts)):
                with contextlib.suppress(SaelabError):
                    run.read_activations(list(t.dataset.prompts))


def unit_jobs(run: PreparedRun, units: list[PlannedUnit]) -> Iterator[Job]:
    """(spec, inputs) of every unit, dataset by dataset: a dataset's activations are read and its
    SAEs encoded once, when its first unit is pulled (``inputs.DatasetInputs``)."""
    by_dataset: dict[str, list[PlannedUnit]] = {}
    for u in units:
        by_dataset.setdefault(u.plan.dataset.name, []).append(u)
    for p in run.plans:
        mine = by_dataset.get(p.dataset.name)
        if not mine:
            continue
        inputs = DatasetInputs(p, mine, run.read_activations, run.encode, run.skipped)
        for u in mine:
            yield u.spec, inputs.unit_inputs(u)


def prefetch(jobs: Iterator[Job], ahead: int) -> Iterator[Job]:
    """The jobs, made by a background thread up to ``ahead`` in advance, so the next dataset's
    inputs (activations read, SAEs encoded: torch work that releases the GIL) are prepared while
    the executor fits the current ones. Errors in the thread are raised here."""
    queue: Queue[Any] = Queue(maxsize=ahead)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for job in jobs:
                while not stop.is_set():
                    try:
                        queue.put(job, timeout=0.2)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(done)
        except BaseException as exc:  # handed to the consumer
            queue.put(exc)

    thread = threading.Thread(target=produce, name="saelab-inputs", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


def execute_units(
    jobs: Iterator[Job],
    executor: Executor,
    store: ResultStore,
    run_columns: dict[str, Any],
    total: int,
    progress: bool = True,
) -> None:
    """Run the jobs on the executor and store each unit's rows as soon as it finishes."""
    bar = tqdm(total=total, desc="probe units", unit="unit", disable=not progress)
    try:
        for spec, outcome in executor.map(jobs):
            for row in outcome.rows:
                row.update(run_columns)
            store.put(spec.key, outcome.rows, [s.as_dict() for s in outcome.skipped])
            bar.update(1)
    finally:
        bar.close()


def _run_stages(
    cfg: RunConfig,
    run_dir: Path,
    progress: bool,
    timer: StageTimer,
    store: ResultStore,
    meta: dict[str, Any],
    cache_root: Path,
    versions: dict[str, str],
) -> RunOutcome:
    """Stages 1-5 of the module docstring; ``meta`` collects what ``run.json`` reports."""
    run = prepare_run(cfg, timer, progress)
    units = plan_run(run)
    todo = [u for u in units if not store.has(u.spec.key)]
    done_before = len(units) - len(todo)
    n_splits = sum(len(u.splits) for u in units)
    log.info(
        "%d probe units (%d splits x probes) planned, %d already done in %s",
        len(units),
        n_splits,
        done_before,
        run_dir,
    )
    meta["units"] = {"planned": len(units), "done_before": done_before, "splits": n_splits}
    if todo:
        extract_activations(run, todo)
    if any(u.spec.kind == "sae" for u in todo):
        train_run_saes(run)

    executor = make_executor(
        cfg.executor, cfg.workers, cfg.ray.address, cfg.ray.num_cpus, run.device
    )
    meta["executor"] = {"kind": executor.name, "workers": executor.workers, "device": run.device}
    run_columns = {
        "run": cfg.name,
        "config_hash": meta["config_hash"],
        "saelab_version": __version__,
        "versions": versions,
    }
    try:
        with timer("probes"):
            jobs = prefetch(unit_jobs(run, todo), ahead=max(16, 8 * executor.workers))
            execute_units(jobs, executor, store, run_columns, len(todo), progress)
    finally:
        executor.close()

    results, unit_skips = store.collect([u.spec.key for u in units])
    skipped = run.skipped + [Skipped(**s) for s in unit_skips]
    log_skipped(skipped)
    store.write_tables(results)
    store.write_skipped([s.as_dict() for s in skipped])
    meta.update(
        pooling=run.pooling,
        model_id=run.handle.model_id,
        saes={f"{k[0]}@L{k[1]}": v for k, v in run.sae_keys.items()},
        sae_training=run.sae_stats,
        skipped=[s.as_dict() for s in skipped],
    )
    return RunOutcome(run_dir, results, timer.seconds, len(units), done_before, skipped)
