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
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Full, Queue
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from saelab import __version__
from saelab.activations.cache import tensors_digest
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


def run_pipeline(
    cfg: RunConfig, run_dir: Path, progress: bool = True, prepared: PreparedRun | None = None
) -> RunOutcome:
    """Run (or resume) the whole pipeline for ``cfg`` in ``run_dir``.

    ``prepared``: a :func:`prepare_run` of the same ``cfg`` to use instead of preparing one (a
    caller that reads the same activations or codes afterwards, e.g. with ``code_memo`` set).

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
        outcome = _run_stages(
            cfg, run_dir, progress, timer, store, meta, cache_root, versions, prepared
        )
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


#: Bytes of CSR codes :attr:`PreparedRun.code_memo` keeps at most.
CODE_MEMO_BYTES = 2 << 30


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
    sae_hooks: dict[tuple[str, int], str] = field(default_factory=dict)
    train_keys: dict[tuple[str, int], str] = field(default_factory=dict)
    sae_stats: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    timer: StageTimer = field(default_factory=StageTimer)
    progress: bool = True
    code_memo: dict[tuple[Any, ...], Any] | None = None
    """When a dict, :meth:`encode` keeps the code matrices it computes there (keyed by SAE, layer,
    code pooling and a digest of the activations), up to :data:`CODE_MEMO_BYTES`, and serves
    repeated requests from it; codes beyond the budget are computed again when asked again."""

    @property
    def include_special_tokens(self) -> bool:
        """Whether mean pooling (of activations and of SAE codes) averages special tokens too."""
        return self.cfg.pooling_special_tokens == "include"

    @property
    def hooks(self) -> list[int | str]:
        """Hook points read for every text: the residual stream after each layer of the run (the
        baselines, keyed by layer) and the hook each SAE reads (keyed by hook name when it is an
        attention or MLP output)."""
        from saelab.activations import key_of

        extra = {key_of(h) for h in self.sae_hooks.values()} - set(self.cfg.layers)
        return [*self.cfg.layers, *sorted(extra, key=str)]

    def sae(self, sae_id: str, layer: int) -> Any:
        """The SAE ``sae_id`` at ``layer``; an IHTP entry is built on first use from the
        dictionary of the SAE it names (trained or loaded by then)."""
        key = (sae_id, layer)
        if key not in self.saes:
            sc = next(s for s in self.cfg.saes if s.id == sae_id)
            if sc.ihtp is None:
                raise KeyError(f"SAE {sae_id} of layer {layer} is not loaded or trained")
            from saelab.sae import IHTPSAE

            dictionary = self.sae(sc.ihtp.dictionary, layer)
            if not hasattr(dictionary, "W_dec"):
                raise ConfigError(
                    f"key 'saes.{sae_id}.ihtp': the dictionary {sc.ihtp.dictionary} is streamed "
                    "from disk (its weights exceed the memory budget), and IHTP needs it in "
                    "memory; raise SAELAB_SAE_MEMORY_BUDGET (e.g. 16GB) to load it whole"
                )
            if not 1 <= sc.ihtp.k <= dictionary.cfg.d_sae:
                raise ConfigError(
                    f"key 'saes.{sae_id}.ihtp.k' has value {sc.ihtp.k}; expected 1 ... "
                    f"{dictionary.cfg.d_sae} (the width of {sc.ihtp.dictionary})"
                )
            self.saes[key] = IHTPSAE.from_dictionary(dictionary, sc.ihtp.k).eval()
        return self.saes[key]

    def cached(self, texts: list[str]) -> bool:
        """True when the activations of ``texts`` are in the cache (header check only)."""
        cfg = self.cfg
        return self.cache.has(
            self.handle,
            texts,
            self.hooks,
            self.pooling,
            max_length=cfg.model.max_length,
            keep_tokens=self.keep_tokens,
            include_special_tokens=self.include_special_tokens,
        )

    def read_activations(
        self, texts: list[str], with_tokens: bool | None = None
    ) -> dict[int | str, Any]:
        """Activations of ``texts`` at every hook of the run (disk cache, else one forward pass),
        keyed by ``saelab.activations.hook_key``."""
        cfg = self.cfg
        with self.timer("activations"):
            return self.cache.get_or_extract(
                self.handle,
                texts,
                self.hooks,
                self.pooling,
                max_length=cfg.model.max_length,
                keep_tokens=self.keep_tokens if with_tokens is None else with_tokens,
                batch_size=cfg.model.batch_size,
                progress=self.progress,
                include_special_tokens=self.include_special_tokens,
            )

    def encode(self, sae_id: str, layer: int, la: Any, code_poolings: list[str]) -> dict:
        """CSR codes of ``la`` for each code pooling, with the SAE ``sae_id`` of ``layer``."""
        memo = self.code_memo
        if memo is not None:
            digest = tensors_digest(
                {k: v for k in ("pooled", "offsets") if (v := getattr(la, k)) is not None}
            )
            keys = {c: (sae_id, layer, c, digest) for c in code_poolings}
            if all(k in memo for k in keys.values()):
                return {c: memo[k] for c, k in keys.items()}
        with self.timer("encode"):
            codes = encode(
                self.sae(sae_id, layer),
                la,
                self.pooling,
                code_poolings,
                include_special_tokens=self.include_special_tokens,
            )
        if memo is not None:
            for c in code_poolings:
                size = sum(getattr(codes[c], a).nbytes for a in ("data", "indices", "indptr"))
                used = memo.get("bytes", 0)
                if used + size <= CODE_MEMO_BYTES:
                    memo[keys[c]] = codes[c]
                    memo["bytes"] = used + size
        return codes


def sae_hook_names(cfg: RunConfig, saes: dict[tuple[str, int], Any]) -> dict[tuple[str, int], str]:
    """The hook (``blocks.L.hook_<kind>``) each loaded SAE reads at its layer: the config's
    ``hook_kind``, else the kind its ``hook_name`` names, else the residual stream.

    An SAE whose ``hook_name`` is not one saelab extracts (e.g. ``blocks.L.attn.hook_z``) is a
    ConfigError unless ``hook_kind`` says what to read. SAEs trained in the run read the
    residual stream (they get no entry; ``hook_kind`` other than ``resid_post`` is refused).
    """
    from saelab.activations import hook_name, parse_hook

    by_id = {sc.id: sc for sc in cfg.saes}
    for sc in cfg.saes:
        if sc.train is not None and sc.hook_kind not in (None, "resid_post"):
            raise ConfigError(
                f"key 'saes.{sc.id}.hook_kind': an SAE trained in a run reads the residual stream "
                f"(resid_post), got {sc.hook_kind!r}"
            )
    out: dict[tuple[str, int], str] = {}
    for (sae_id, layer), sae in saes.items():
        kind = by_id[sae_id].hook_kind
        named = (getattr(getattr(sae, "cfg", None), "metadata", None) or {}).get("hook_name")
        if kind is None and named:
            try:
                kind = parse_hook(named)[1]
            except ConfigError:
                raise ConfigError(
                    f"SAE {sae_id} reads hook {named!r}, which saelab does not extract (it reads "
                    "blocks.L.hook_resid_post, blocks.L.hook_attn_out and blocks.L.hook_mlp_out); "
                    f"set 'saes.{sae_id}.hook_kind' if the SAE was trained on one of these"
                ) from None
        out[(sae_id, layer)] = hook_name(layer, kind or "resid_post")
    return out


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
            "special_tokens": cfg.pooling_special_tokens,
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
    run.sae_hooks = sae_hook_names(cfg, run.saes)
    run.train_keys = {
        (sc.id, layer): train_key(cfg, sc, handle, layer, pooling, plans, run.activation_key)
        for sc in cfg.saes
        if sc.train is not None
        for layer in cfg.layers
    }
    run.sae_keys.update(run.train_keys)
    run.sae_keys.update(derived_sae_keys(cfg, run.sae_keys))
    for sc in cfg.saes:
        if sc.ihtp is not None:
            for (sae_id, layer), hook in list(run.sae_hooks.items()):
                if sae_id == sc.ihtp.dictionary:
                    run.sae_hooks[(sc.id, layer)] = hook
    return run


#: Version of how an IHTP encoder is derived from a dictionary (part of its SAE key).
IHTP_DERIVATION_VERSION = 1


def derived_sae_keys(
    cfg: RunConfig, sae_keys: dict[tuple[str, int], str]
) -> dict[tuple[str, int], str]:
    """Keys of the SAEs derived from another SAE of the run (``ihtp``): the dictionary's key, the
    pursuit and its ``k``, at every layer the dictionary has."""
    out: dict[tuple[str, int], str] = {}
    for sc in cfg.saes:
        if sc.ihtp is None:
            continue
        for (sae_id, layer), key in sae_keys.items():
            if sae_id == sc.ihtp.dictionary:
                out[(sc.id, layer)] = stable_hash(
                    {"ihtp": IHTP_DERIVATION_VERSION, "dictionary": key, "k": sc.ihtp.k}
                )
    return out


def plan_run(run: PreparedRun) -> list[PlannedUnit]:
    """Every probe unit of the run (``plan.plan_units``); an SAE unit names the hook its SAE
    reads (``run.sae_hooks``; the residual stream by default), which is part of its key."""
    with run.timer("plan"):
        units = plan_units(
            run.cfg,
            run.plans,
            model_id=run.handle.model_id,
            pooling=run.pooling,
            activation_key=run.activation_key,
            sae_keys=run.sae_keys,
            device=run.device,
        )
    for u in units:
        hook = run.sae_hooks.get((str(u.spec.sae), u.spec.layer)) if u.spec.kind == "sae" else None
        if hook is not None and hook != u.spec.hook_name:
            u.spec = replace(u.spec, hook_name=hook)
    return units


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


#: Held-out tokens of the SAE table: texts per dataset and tokens in all (normal-split test texts).
SAE_TABLE_TEXTS_PER_DATASET = 32
SAE_TABLE_MAX_TOKENS = 16384
SAE_TABLE_VERSION = 1


def measure_saes(run: PreparedRun, out_csv: Path) -> list[dict[str, Any]]:
    """One row per SAE and layer: id, source, architecture, width, hook, and its FVU, L0 and dead
    fraction on the same held-out tokens (``saelab.sae.quality``), written to ``out_csv``.

    The tokens are those of the first ``SAE_TABLE_TEXTS_PER_DATASET`` normal-split test texts of
    each dataset (capped at ``SAE_TABLE_MAX_TOKENS``), non-special unless the run keeps special
    tokens. Rows are kept in the run folder by SAE key and reused by a rerun.
    """
    import pandas as pd

    from saelab.activations import key_of
    from saelab.sae.quality import reconstruction_quality

    previous: dict[str, dict[str, Any]] = {}
    if out_csv.is_file():
        try:
            for row in pd.read_csv(out_csv).to_dict("records"):
                previous[str(row.get("table_key"))] = row
        except (OSError, ValueError):
            previous = {}
    wanted = [
        (sc, layer)
        for sc in run.cfg.saes
        for layer in run.cfg.layers
        if (sc.id, layer) in run.sae_keys
    ]
    sample_hash = stable_hash(
        [
            SAE_TABLE_VERSION,
            run.activation_key,
            [
                (p.dataset.content_hash, p.normal.test[:SAE_TABLE_TEXTS_PER_DATASET])
                for p in run.plans
            ],
        ]
    )
    keys = {
        (sc.id, layer): stable_hash(
            [run.sae_keys[(sc.id, layer)], layer, run.sae_hooks.get((sc.id, layer)), sample_hash]
        )
        for sc, layer in wanted
    }
    if all(k in previous for k in keys.values()):
        return [previous[keys[(sc.id, layer)]] for sc, layer in wanted]
    if any(sc.train is not None and (sc.id, layer) not in run.saes for sc, layer in wanted):
        train_run_saes(run)

    texts = [
        p.dataset.prompts[i] for p in run.plans for i in p.normal.test[:SAE_TABLE_TEXTS_PER_DATASET]
    ]
    with run.timer("sae table"):
        acts = run.read_activations(texts, with_tokens=True)
        rows = []
        for sc, layer in wanted:
            key = keys[(sc.id, layer)]
            if key in previous:
                rows.append(previous[key])
                continue
            sae = run.sae(sc.id, layer)
            hook = run.sae_hooks.get((sc.id, layer))
            la = acts[key_of(hook) if hook else layer]
            tokens, offsets = held_out_tokens(la, run.include_special_tokens)
            row = {
                "table_key": key,
                "sae": sc.id,
                "layer": layer,
                "hook": hook or f"blocks.{layer}.hook_resid_post",
                "source": sae_source(sc),
                "architecture": sae.cfg.architecture,
                "d_sae": int(sae.cfg.d_sae),
            }
            if hasattr(sae, "encode_pre"):
                row.update(reconstruction_quality(sae, tokens, offsets))
            else:  # a streamed SAE: its weights are never held whole, so no reconstruction here
                row.update(
                    fvu=float("nan"),
                    l0=float("nan"),
                    dead_fraction=float("nan"),
                    n_tokens=int(tokens.shape[0]),
                )
            rows.append(row)
            log.info(
                "SAE %s layer %d (%s, %d latents): fvu %.4f, l0 %.1f, dead %.1f%% on %d held-out tokens",
                sc.id,
                layer,
                row["architecture"],
                row["d_sae"],
                row["fvu"],
                row["l0"],
                100 * row["dead_fraction"],
                row["n_tokens"],
            )
    pd.DataFrame(rows).to_csv(out_csv.with_suffix(".csv.tmp"), index=False)
    out_csv.with_suffix(".csv.tmp").replace(out_csv)
    return rows


def held_out_tokens(
    la: Any, include_special: bool, max_tokens: int = SAE_TABLE_MAX_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens ``[T, d]`` of ``la`` (special ones dropped unless ``include_special``) and their
    text offsets ``[n_texts + 1]``, capped at ``max_tokens`` whole texts (at least one text)."""
    keep = torch.ones(la.tokens.shape[0], dtype=torch.bool)
    if la.special is not None and not include_special:
        keep = ~la.special
    lengths = []
    for i in range(len(la.offsets) - 1):
        lengths.append(int(keep[la.offsets[i] : la.offsets[i + 1]].sum()))
    tokens = la.tokens[keep]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    n_texts = int(torch.searchsorted(offsets, max_tokens, right=True)) - 1
    n_texts = max(1, n_texts)
    return tokens[: int(offsets[n_texts])], offsets[: n_texts + 1]


def sae_source(sc: Any) -> str:
    """Where an SAE of the config comes from, in a few words."""
    if sc.train is not None:
        return f"trained here ({sc.train.architecture})"
    if sc.ihtp is not None:
        return f"ihtp k={sc.ihtp.k} on {sc.ihtp.dictionary}"
    if sc.release is not None:
        return f"release {sc.release} / {sc.sae_id}"
    return f"folder {sc.path}"


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
    prepared: PreparedRun | None = None,
) -> RunOutcome:
    """Stages 1-5 of the module docstring; ``meta`` collects what ``run.json`` reports."""
    if prepared is not None:
        prepared.timer = timer
    run = prepared or prepare_run(cfg, timer, progress)
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
        "pooling_special_tokens": cfg.pooling_special_tokens,
    }
    try:
        with timer("probes"):
            jobs = prefetch(unit_jobs(run, todo), ahead=max(16, 8 * executor.workers))
            execute_units(jobs, executor, store, run_columns, len(todo), progress)
    finally:
        executor.close()

    sae_table = measure_saes(run, run_dir / "saes.csv") if cfg.saes else []

    results, unit_skips = store.collect([u.spec.key for u in units])
    skipped = run.skipped + [Skipped(**s) for s in unit_skips]
    log_skipped(skipped)
    store.write_tables(results)
    store.write_skipped([s.as_dict() for s in skipped])
    meta.update(
        pooling=run.pooling,
        model_id=run.handle.model_id,
        saes={f"{k[0]}@L{k[1]}": v for k, v in run.sae_keys.items()},
        sae_hooks={f"{k[0]}@L{k[1]}": v for k, v in run.sae_hooks.items()},
        sae_training=run.sae_stats,
        sae_table=sae_table,
        skipped=[s.as_dict() for s in skipped],
    )
    return RunOutcome(run_dir, results, timer.seconds, len(units), done_before, skipped)
