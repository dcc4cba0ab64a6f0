"""The run: datasets -> splits -> activations -> SAEs -> probe units -> results, resumable.

Stages, in order:

1. **datasets**: load and validate every dataset of the config (a bad file stops the run before any
   heavy work starts).
2. **splits**: the paper's normal split per dataset (identical for baselines and SAE probes).
3. **plan**: one probe unit per (dataset, setting, layer, method | SAE); units whose result file is
   already in the run folder are done and skipped.
4. **activations**: for datasets with work left, the rows used by any split, from the disk cache or
   one forward pass (all layers at once, stopping after the deepest).
5. **saes**: each SAE is trained (on token-level activations of training texts only, cached by
   everything that affects it) or loaded, once per layer, and encodes every dataset.
6. **probes**: baselines on pooled activations, SAE probes on sparse codes; each unit's rows are written
   as soon as it finishes, so an interrupted run resumes where it stopped.
7. **results**: ``results.parquet``/``results.csv``, ``run.json`` and a printed summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from saelab import __version__
from saelab.config import RunConfig, SAEConfig
from saelab.data import Split
from saelab.errors import ConfigError, ProbeDataError, SaelabError
from saelab.io import hash_file, stable_hash, write_json_atomic
from saelab.pipeline.logs import StageTimer, setup_logging
from saelab.pipeline.regimes import DatasetPlan, Skipped, log_skipped, plan_dataset, plan_ood
from saelab.pipeline.store import ResultStore, package_versions
from saelab.pipeline.units import LocalExecutor, UnitInputs, UnitSpec, run_unit

log = logging.getLogger(__name__)

SAE_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$SAELAB_CACHE`` or ``~/.cache/saelab``."""
    env = os.environ.get("SAELAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saelab"


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


def _prepare(cfg: RunConfig, timer: StageTimer, skipped: list[Skipped]) -> list[DatasetPlan]:
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


def _split_hash(split: Any) -> str:
    """Hash of everything that identifies a split (rows, setting, seed, noisy labels, test source)."""
    return stable_hash(split.key_parts())


def _activation_key(cfg: RunConfig, handle: Any, pooling: str, keep_tokens: bool) -> dict[str, Any]:
    return {
        "model_id": handle.model_id,
        "pooling": pooling,
        "max_length": cfg.model.max_length,
        "dtype": str(handle.dtype),
        "keep_tokens": keep_tokens,
    }


def _resolve_pooling(cfg: RunConfig, handle: Any) -> str:
    if cfg.pooling != "auto":
        return cfg.pooling
    return "last" if handle.is_decoder else "mean"


def _sae_layer(sc: SAEConfig, sae: Any) -> int | None:
    """The layer a loaded SAE reads: from the config, else from its hook name."""
    if sc.layer is not None:
        return sc.layer
    hook = (getattr(sae.cfg, "metadata", {}) or {}).get("hook_name")
    if hook:
        from saelab.activations import parse_hook_name

        try:
            return parse_hook_name(hook)
        except Exception:
            return None
    return None


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
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
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
            cfg, run_dir, progress, timer, store, meta, cache_root, cfg_hash, versions
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
            **({"error": error} if error else {}),
        },
    ]
    write_json_atomic(run_json, meta)


def _run_stages(
    cfg: RunConfig,
    run_dir: Path,
    progress: bool,
    timer: StageTimer,
    store: ResultStore,
    meta: dict[str, Any],
    cache_root: Path,
    cfg_hash: str,
    versions: dict[str, str],
) -> RunOutcome:
    """Stages 1-7 of the module docstring; ``meta`` collects what ``run.json`` reports."""
    from saelab.activations import ActivationCache, hook_name, load_model

    skipped: list[Skipped] = []
    prepared = _prepare(cfg, timer, skipped)
    log.info(
        "%d datasets, settings %s: %s",
        len(prepared),
        ", ".join(cfg.settings),
        ", ".join(f"{p.dataset.name} ({len(p.splits)} splits)" for p in prepared),
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
            f"key 'layers': {bad} out of range for {cfg.model.name}, which has blocks 0..{handle.n_layers - 1}"
        )
    pooling = _resolve_pooling(cfg, handle)
    trained = [s for s in cfg.saes if s.train is not None]
    # Token-level activations of every row are needed only when an SAE variant pools per-token
    # codes (mean or max); SAE training reads the training rows' tokens separately (train_rows).
    code_poolings = {v.resolved_pooling(pooling) for s in cfg.settings for v in cfg.variants_for(s)}
    keep_tokens = bool(cfg.saes) and bool(code_poolings & {"mean", "max"})
    act_key = _activation_key(cfg, handle, pooling, keep_tokens)
    cache = ActivationCache(cache_root)
    log.info(
        "model %s (%s, %d blocks, d_model %d), pooling %s",
        handle.name,
        handle.model_id,
        handle.n_layers,
        handle.d_model,
        pooling,
    )

    def read_or_extract(texts: list[str], with_tokens: bool) -> dict[int, Any]:
        with timer("activations"):
            return cache.get_or_extract(
                handle,
                texts,
                cfg.layers,
                pooling,
                max_length=cfg.model.max_length,
                keep_tokens=with_tokens,
                batch_size=cfg.model.batch_size,
                progress=progress,
            )

    def activations(p: DatasetPlan) -> dict[int, Any]:
        """Activations of every row the dataset's splits use, read once for all settings."""
        return read_or_extract([p.dataset.prompts[i] for i in p.rows], keep_tokens)

    def train_rows(p: DatasetPlan) -> dict[int, Any]:
        """Token-level activations of the normal split's training rows (what SAE training reads)."""
        if keep_tokens:
            rows = torch.as_tensor(p.positions(p.normal.train))
            return {layer: la.select_rows(rows) for layer, la in activations(p).items()}
        return read_or_extract([p.dataset.prompts[i] for i in p.normal.train], True)

    # ---- SAEs: trained ones need training tokens, loaded ones are read once --------------------
    saes: dict[tuple[str, int], Any] = {}
    sae_keys: dict[tuple[str, int], str] = {}
    sae_stats: dict[str, Any] = {}
    _load_saes(cfg, handle, saes, sae_keys, timer)
    train_keys = {
        (sc.id, layer): _train_key(cfg, sc, handle, layer, pooling, prepared, act_key)
        for sc in trained
        for layer in cfg.layers
    }
    sae_keys.update(train_keys)

    # ---- plan units ---------------------------------------------------------------------------
    plan: list[tuple[DatasetPlan, Split, UnitSpec]] = []
    for p in prepared:
        for split in p.splits:
            split_hash = _split_hash(split)
            for layer in cfg.layers_for(split.setting):
                common = {
                    "dataset": p.dataset.name,
                    "dataset_hash": p.dataset.content_hash,
                    "family": p.dataset.family,
                    "setting": split.setting,
                    "setting_value": split.setting_value,
                    "test_source": split.test_source,
                    "split_hash": split_hash,
                    "layer": layer,
                    "hook_name": hook_name(layer),
                    "pooling": pooling,
                    "model": cfg.model.name,
                    "model_id": handle.model_id,
                    "seed": cfg.seed,
                    "activation_key": act_key,
                }
                if split.test_source is not None:
                    common["options"] = {
                        "test_hash": p.ood_test(split.test_source).dataset.content_hash
                    }
                for method in cfg.baselines_for(split.setting):
                    plan.append((p, split, UnitSpec(kind="baseline", method=method, **common)))
                for sc in cfg.saes:
                    key = sae_keys.get((sc.id, layer))
                    if key is None:
                        continue  # a loaded SAE that reads another layer
                    for variant in cfg.variants_for(split.setting):
                        options = {
                            **common.get("options", {}),
                            "latent_ranking": cfg.probes.latent_ranking,
                            "penalty": variant.penalty,
                            "binarize": variant.binarize,
                            "code_pooling": variant.resolved_pooling(pooling),
                            "variant": variant.label(pooling),
                        }
                        spec = UnitSpec(
                            kind="sae",
                            method="sae",
                            sae=sc.id,
                            sae_key=key,
                            ks=tuple(cfg.ks_for(split.setting)),
                            **{**common, "options": options},
                        )
                        plan.append((p, split, spec))
    done_before = sum(store.has(spec.key) for _, _, spec in plan)
    log.info("%d probe units planned, %d already done in %s", len(plan), done_before, run_dir)
    meta["units"] = {"planned": len(plan), "done_before": done_before}

    # ---- train SAEs that are not cached -------------------------------------------------------
    missing_train = [
        (sc, layer) for sc in trained for layer in cfg.layers if (sc.id, layer) not in saes
    ]
    needs_sae = any(spec.kind == "sae" and not store.has(spec.key) for _, _, spec in plan)
    if missing_train and needs_sae:
        _train_saes(
            cfg,
            missing_train,
            train_keys,
            prepared,
            train_rows,
            cache_root,
            saes,
            sae_stats,
            handle,
            timer,
            progress,
        )

    # ---- probes, dataset by dataset: activations read and SAEs encoded once per dataset --------
    executor = LocalExecutor()
    by_dataset: dict[str, list[tuple[Split, UnitSpec]]] = {}
    for p, split, spec in plan:
        by_dataset.setdefault(p.dataset.name, []).append((split, spec))
    bar = tqdm(total=len(plan) - done_before, desc="probe units", unit="unit", disable=not progress)

    def probe_dataset(p: DatasetPlan, todo: list[tuple[Split, UnitSpec]]) -> None:
        """Run the dataset's units: activations read once, each SAE encoded once per pooling."""
        acts = activations(p)
        ood_acts: dict[str, dict[int, Any] | None] = {}
        codes: dict[tuple[str, int, str, str | None], Any] = {}

        def test_acts(split: Split) -> dict[int, Any] | None:
            """Activations of the split's test rows' dataset (the OOD set's for OOD splits)."""
            if split.test_source is None:
                return acts
            name = split.test_source
            if name not in ood_acts:
                ood = p.ood_test(name).dataset
                try:
                    ood_acts[name] = read_or_extract(list(ood.prompts), keep_tokens)
                except SaelabError as exc:
                    skipped.append(Skipped(p.dataset.name, "ood", None, str(exc), test_source=name))
                    log.warning("skipped %s ood %s: %s", p.dataset.name, name, exc)
                    ood_acts[name] = None
            return ood_acts[name]

        def sae_codes(spec: UnitSpec, source: str | None, la: Any) -> Any:
            """CSR codes of every row of ``la``, encoded once per (SAE, layer, pooling, source)."""
            key = (spec.sae, spec.layer, spec.options["code_pooling"], source)
            if key not in codes:
                with timer("encode"):
                    codes[key] = _encode(
                        saes[(spec.sae, spec.layer)], la, pooling, spec.options["code_pooling"]
                    )
            return codes[key]

        def jobs() -> Any:
            for split, spec in todo:
                tacts = test_acts(split)
                if tacts is None:
                    bar.update(1)
                    continue
                tr = p.positions(split.train)
                if split.test_source is None:
                    te = p.positions(split.test)
                    y_test = p.dataset.labels[split.test]
                else:
                    te = split.test
                    y_test = p.ood_test(split.test_source).dataset.labels[split.test]
                y_train = split.y_train(p.dataset.labels)
                if spec.kind == "baseline":
                    x_tr = acts[spec.layer].pooled[torch.as_tensor(tr)].numpy()
                    x_te = tacts[spec.layer].pooled[torch.as_tensor(np.array(te))].numpy()
                else:
                    x_tr = sae_codes(spec, None, acts[spec.layer])[tr]
                    x_te = sae_codes(spec, split.test_source, tacts[spec.layer])[te]
                yield spec, UnitInputs(x_tr, y_train, x_te, y_test)

        with timer("probes"):
            for spec, rows in executor.map(_run_or_skip, jobs()):
                bar.update(1)
                if isinstance(rows, Skipped):
                    skipped.append(rows)
                    log.warning("skipped unit %s: %s", spec.key, rows.reason)
                    continue
                for r in rows:
                    r.update(
                        run=cfg.name,
                        config_hash=cfg_hash,
                        saelab_version=__version__,
                        versions=versions,
                    )
                store.put(spec.key, rows)

    for p in prepared:
        todo = [(sp_, s) for sp_, s in by_dataset.get(p.dataset.name, []) if not store.has(s.key)]
        if todo:
            probe_dataset(p, todo)
    bar.close()

    log_skipped(skipped)
    results = store.collect([spec.key for _, _, spec in plan])
    store.write_tables(results)
    store.write_skipped([s.as_dict() for s in skipped])
    meta.update(
        pooling=pooling,
        model_id=handle.model_id,
        saes={f"{k[0]}@L{k[1]}": v for k, v in sae_keys.items()},
        sae_training=sae_stats,
        skipped=[s.as_dict() for s in skipped],
    )
    return RunOutcome(run_dir, results, timer.seconds, len(plan), done_before, skipped)


def _run_or_skip(spec: UnitSpec, inputs: UnitInputs) -> list[dict[str, Any]] | Skipped:
    """``run_unit``, with bad probe data (e.g. one class in a test set) turned into a skip."""
    try:
        return run_unit(spec, inputs)
    except ProbeDataError as exc:
        return Skipped(
            spec.dataset,
            spec.setting,
            spec.setting_value,
            f"{spec.method}{'' if spec.sae is None else ' ' + spec.sae}: {exc}",
            layer=spec.layer,
            test_source=spec.test_source,
        )


def _encode(sae: Any, la: Any, pooling: str, code_pooling: str) -> Any:
    """Sparse codes [rows, d_sae] of one layer's activations with the variant's code pooling."""
    from saelab.sae import encode_rows

    mode = {"pooled": "code_pooled", "mean": "pool_codes", "max": "max_codes"}[code_pooling]
    sae_device = next(sae.parameters()).device
    return encode_rows(sae, la, pooling=pooling, mode=mode, device=sae_device)


def _load_saes(cfg: RunConfig, handle: Any, saes: dict, sae_keys: dict, timer: StageTimer) -> None:
    from saelab.sae import load_sae

    for sc in cfg.saes:
        if sc.path is None:
            continue
        with timer("saes"):
            sae = load_sae(sc.path, device=str(handle.device))
        layer = _sae_layer(sc, sae)
        if layer is None:
            raise ConfigError(
                f"key 'saes.{sc.id}.layer': the SAE at {sc.path} names no hook; set the layer it reads"
            )
        if layer not in cfg.layers:
            raise ConfigError(
                f"key 'saes.{sc.id}.layer': layer {layer} is not in 'layers' {cfg.layers}"
            )
        if sae.d_in != handle.d_model:
            raise ConfigError(
                f"SAE {sc.id} at {sc.path} has d_in {sae.d_in} but {cfg.model.name} has d_model {handle.d_model}"
            )
        weights = Path(sc.path)
        weights = weights / "sae_weights.safetensors" if weights.is_dir() else weights
        saes[(sc.id, layer)] = sae.eval()
        sae_keys[(sc.id, layer)] = stable_hash({"weights": hash_file(weights)})
        log.info("loaded SAE %s for layer %d (d_sae %d) from %s", sc.id, layer, sae.d_sae, sc.path)


def _train_key(
    cfg: RunConfig,
    sc: SAEConfig,
    handle: Any,
    layer: int,
    pooling: str,
    prepared: list[DatasetPlan],
    act_key: dict,
) -> str:
    """Hash of everything that decides a trained SAE: training data, activations, trainer config."""
    return stable_hash(
        {
            "version": SAE_CACHE_VERSION,
            "train": sc.train.model_dump(mode="json") if sc.train else None,
            "layer": layer,
            "activations": act_key,
            "data": [(p.dataset.content_hash, _split_hash(p.normal)) for p in prepared],
        },
        length=24,
    )


def _train_saes(
    cfg: RunConfig,
    missing: list[tuple[SAEConfig, int]],
    train_keys: dict,
    prepared: list[DatasetPlan],
    train_rows: Any,
    cache_root: Path,
    saes: dict,
    sae_stats: dict,
    handle: Any,
    timer: StageTimer,
    progress: bool,
) -> None:
    """Train (or load from the SAE cache) every trained SAE, on training-split tokens only."""
    from saelab.activations import hook_name
    from saelab.sae import TopKTrainConfig, load_sae, save_sae, train_topk_sae

    todo = []
    for sc, layer in missing:
        folder = cache_root / "saes" / train_keys[(sc.id, layer)]
        if (folder / "cfg.json").is_file():
            try:
                saes[(sc.id, layer)] = load_sae(folder, device=str(handle.device)).eval()
                stats_file = folder / "training.json"
                if stats_file.is_file():
                    sae_stats[f"{sc.id}@L{layer}"] = json.loads(stats_file.read_text("utf-8"))
                log.info("SAE %s layer %d: cached at %s", sc.id, layer, folder)
                continue
            except Exception as exc:
                log.warning("cached SAE %s is unreadable (%s); retraining", folder, exc)
        todo.append((sc, layer, folder))
    if not todo:
        return

    # Training tokens: non-special tokens of the training texts only, a seeded sample per dataset.
    layers = sorted({layer for _, layer, _ in todo})
    quota = {sc.id: math.ceil(sc.train.max_tokens / len(prepared)) for sc, _, _ in todo}
    per_layer: dict[tuple[str, int], list[torch.Tensor]] = {
        (sc.id, layer): [] for sc, layer, _ in todo
    }
    for i, p in enumerate(
        tqdm(prepared, desc="training tokens", unit="dataset", disable=not progress)
    ):
        acts = train_rows(p)
        for layer in layers:
            la = acts[layer]
            keep = (
                ~la.special
                if la.special is not None
                else torch.ones(la.tokens.shape[0], dtype=torch.bool)
            )
            tokens = la.tokens[keep]
            for sc, lyr, _ in todo:
                if lyr != layer:
                    continue
                rng = np.random.default_rng([sc.train.seed, i])
                n = min(quota[sc.id], tokens.shape[0])
                pick = np.sort(rng.choice(tokens.shape[0], size=n, replace=False))
                per_layer[(sc.id, layer)].append(tokens[torch.as_tensor(pick)])
        del acts
    for sc, layer, folder in todo:
        data = torch.cat(per_layer.pop((sc.id, layer)))
        tc = sc.train
        d_sae = tc.expansion_factor * handle.d_model
        train_cfg = TopKTrainConfig(
            d_sae=d_sae, k=tc.k, lr=tc.lr, batch_size=tc.batch_size, epochs=tc.epochs, seed=tc.seed
        )
        log.info(
            "training SAE %s for layer %d: %d tokens, d_sae %d, k %d",
            sc.id,
            layer,
            data.shape[0],
            d_sae,
            tc.k,
        )
        with timer("saes"):
            sae, stats = train_topk_sae(
                data,
                train_cfg,
                device=str(handle.device),
                progress=progress,
                metadata={
                    "hook_name": hook_name(layer),
                    "model_name": cfg.model.name,
                    "saelab_sae_id": sc.id,
                },
            )
            save_sae(sae, folder)
        write_json_atomic(folder / "training.json", stats)
        sae_stats[f"{sc.id}@L{layer}"] = stats
        log.info(
            "SAE %s layer %d: fvu %.4f, l0 %.1f, dead %.1f%% in %.1fs",
            sc.id,
            layer,
            stats.get("fvu", float("nan")),
            stats.get("l0", float("nan")),
            100 * stats.get("dead_fraction", float("nan")),
            stats.get("seconds", float("nan")),
        )
        # Probe with the SAE as stored, so a later run that loads it from the cache computes
        # bit-identical codes (the in-memory copy can differ in the last float bits).
        saes[(sc.id, layer)] = load_sae(folder, device=str(handle.device)).eval()
