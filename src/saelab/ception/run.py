"""``saelab ception``: SAE-ception cycles, checkpointed per cycle, resumable, measured each cycle.

For every seed: **cycle 0** fine-tunes the classifier with cross-entropy only; then for every
strategy, **cycle c >= 1** takes the model of cycle c-1 and the SAE trained on it, builds the
targets of the training examples (:mod:`saelab.ception.sharpen`), retrains with
``L = CE + lambda * L_aux`` (``lambda = 0`` for the ``none`` control) for the same number of steps,
trains a new SAE on the new model's representations and measures everything
(:func:`measure_cycle`). Cycle 0 is shared by the strategies of a seed.

Each cycle is a folder ``seed<s>/cycle0`` or ``seed<s>/<strategy>/cycle<c>`` holding the trainable
tensors of the classifier (``classifier.safetensors``), the SAE (SAELens format, ``sae/``) and
``cycle.json`` (metrics, timings, the key), written last. The key covers everything that decides
the cycle: the model's identity, the dataset's content and split, every config section that
matters, the library versions, the seed, the strategy, the cycle and the parent cycle's key. A
rerun keeps every cycle whose files verify against its key and resumes after the last one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from saelab.activations.extract import resolve_max_length, special_token_ids, tokenize
from saelab.activations.model import ModelHandle, load_model
from saelab.ception.classifier import (
    Classifier,
    EncodedSplit,
    TrainableState,
    encode_split,
    fine_tune,
    lm_perplexity,
    predict,
    trainable_names,
)
from saelab.ception.metrics import (
    classification_metrics,
    clustering_metrics,
    monosemanticity,
    probe_accuracy,
    sae_quality,
)
from saelab.ception.sharpen import build_targets, decode_codes, sae_codes
from saelab.config import CeptionConfig
from saelab.data import Dataset, load_dataset, stratified_split
from saelab.errors import ConfigError, SAEFileError
from saelab.io import hash_bytes, stable_hash, write_json_atomic, write_text_atomic
from saelab.pipeline.logs import setup_logging
from saelab.pipeline.store import package_versions
from saelab.sae.base import SAE
from saelab.sae.formats import load_sae, save_sae
from saelab.sae.training import train_sae
from saelab.sae.training.checkpoint import read_checkpoint, write_checkpoint

log = logging.getLogger(__name__)

CYCLE_FORMAT = "saelab-ception-cycle"
CYCLE_VERSION = 1
CLASSIFIER_FILE = "classifier.safetensors"
CYCLE_FILE = "cycle.json"
SAE_DIR = "sae"
TIMING_COLUMNS = (
    "seconds_finetune",
    "seconds_sharpen",
    "seconds_activations",
    "seconds_sae",
    "seconds_metrics",
    "seconds_total",
)


@dataclass
class CeptionData:
    """The dataset, its three splits (tokenised) and the number of classes."""

    dataset: Dataset
    train: EncodedSplit
    val: EncodedSplit
    test: EncodedSplit
    n_classes: int


@dataclass
class CycleRecord:
    """A finished cycle: its folder, key and ``cycle.json`` document."""

    folder: Path
    key: str
    doc: dict[str, Any]


@dataclass
class CeptionRun:
    """What :func:`run_ception` returns: the output folder, the cycle table and the records."""

    out: Path
    cycles: pd.DataFrame
    records: list[CycleRecord] = field(default_factory=list)
    seconds: float = 0.0


# ----- data ---------------------------------------------------------------------------------------
def prepare_data(cfg: CeptionConfig, handle: ModelHandle) -> CeptionData:
    """Load the dataset (two or more classes), split it (stratified, ``split_seed``), tokenise."""
    d = cfg.data
    dataset = load_dataset(d.dataset, d.max_rows, multiclass=True)
    train, val, test = stratified_split(
        dataset.labels, [d.train_rows, d.val_rows, d.test_rows], d.split_seed, str(dataset.path)
    )
    limit = resolve_max_length(handle, cfg.classifier.max_length)
    labels = torch.from_numpy(np.array(dataset.labels, dtype=np.int64))

    def encode(rows: np.ndarray) -> EncodedSplit:
        texts = [dataset.prompts[i] for i in rows.tolist()]
        tok = tokenize(handle.tokenizer, texts, limit, "left")
        return EncodedSplit(tokens=tok, labels=labels[torch.from_numpy(rows)], rows=rows)

    n_classes = int(dataset.n_classes)
    log.info(
        "%s: %d classes, %d train / %d validation / %d test rows",
        dataset.name, n_classes, len(train), len(val), len(test),
    )  # fmt: skip
    return CeptionData(dataset, encode(train), encode(val), encode(test), n_classes)


def autocast_dtype(cfg: CeptionConfig, device: torch.device) -> torch.dtype | None:
    """Weights stay float32 (AdamW updates below bfloat16's resolution would be lost); forward
    passes run under bfloat16 autocast when ``model.dtype`` is bfloat16, or ``auto`` on a GPU
    that supports it; else in float32."""
    if cfg.model.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.model.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def derive_seed(seed: int, cycle: int, purpose: str, *extra: int) -> int:
    """The 32-bit seed of one random stream (``purpose``: head, finetune, targets, tokens, sae,
    metrics) of one cycle of one seed's chain: numpy ``SeedSequence((seed, cycle, tag, *extra))``
    with ``tag`` the first 4 bytes of SHA-256 of ``purpose``. Different (seed, cycle, purpose)
    give unrelated streams (SeedSequence hashes its entropy; ``seed * 1000 + cycle`` would make
    seed 0's cycle 1 replay seed 1's cycle 0); the strategies of a seed share them, so they stay
    paired."""
    tag = int.from_bytes(hashlib.sha256(purpose.encode("utf-8")).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, cycle, tag, *extra]).generate_state(1)[0])


# ----- keys and files -----------------------------------------------------------------------------
def base_key(
    cfg: CeptionConfig, handle: ModelHandle, data: CeptionData, layer: int, pooling: str
) -> str:
    """Hash of everything every cycle depends on (module docstring); seeds, strategies and the
    number of cycles are left out, so adding any of them keeps the finished cycles."""
    cycle = cfg.cycle.model_dump(mode="json")
    for key in ("seeds", "strategies", "cycles"):
        cycle.pop(key)
    versions = package_versions()
    versions.pop("python", None)
    return stable_hash(
        {
            "format": CYCLE_FORMAT,
            "version": CYCLE_VERSION,
            "model": handle.model_id,
            "autocast": str(autocast_dtype(cfg, handle.device)),
            "device": handle.device.type,
            "dataset": data.dataset.content_hash,
            "rows": [data.train.rows.tolist(), data.val.rows.tolist(), data.test.rows.tolist()],
            "data": cfg.data.model_dump(mode="json"),
            "classifier": cfg.classifier.model_dump(mode="json"),
            "layer": layer,
            "pooling": pooling,
            "sae": cfg.sae.model_dump(mode="json"),
            "cycle": cycle,
            "metrics": cfg.metrics.model_dump(mode="json"),
            "batch_size": cfg.model.batch_size,
            "versions": versions,
        }
    )


def cycle_key(base: str, seed: int, strategy: str | None, cycle: int, parent: str | None) -> str:
    """Key of one cycle: the run's base key, seed, strategy, cycle number and parent's key."""
    return stable_hash(
        {"base": base, "seed": seed, "strategy": strategy, "cycle": cycle, "parent": parent}
    )


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    parts = [
        [name, str(t.dtype), list(t.shape), hash_bytes(t.contiguous().view(torch.uint8).numpy())]
        for name, t in sorted(tensors.items())
    ]
    return stable_hash(parts)


def write_classifier(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """The trainable tensors with their cycle key and content digest, atomically."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {"key": key, "digest": _tensor_digest(flat)}
    write_checkpoint(path, flat, meta, CYCLE_FORMAT, CYCLE_VERSION)


def read_classifier(path: Path, key: str) -> dict[str, torch.Tensor]:
    """Tensors of a classifier checkpoint, verified against ``key`` and its digest; ConfigError
    naming the file and what is wrong otherwise."""
    tensors, meta = read_checkpoint(path, CYCLE_FORMAT, CYCLE_VERSION, "ception checkpoint")
    if meta.get("key") != key:
        raise ConfigError(f"{path}: checkpoint of another config (key {meta.get('key')!r})")
    if meta.get("digest") != _tensor_digest(tensors):
        raise ConfigError(f"{path}: tensor contents do not match the stored digest")
    return tensors


def read_record(folder: Path, key: str) -> CycleRecord | None:
    """The finished cycle in ``folder`` if its ``cycle.json``, checkpoint and SAE verify against
    ``key``; None (with a log line saying why) otherwise."""
    path = folder / CYCLE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s is unreadable (%s): the cycle is recomputed", path, exc)
        return None
    if not isinstance(doc, dict) or doc.get("format") != CYCLE_FORMAT:
        log.warning("%s is not a ception cycle record: the cycle is recomputed", path)
        return None
    if doc.get("key") != key:
        log.info("%s was made with another config or parent: the cycle is recomputed", folder)
        return None
    try:
        read_classifier(folder / CLASSIFIER_FILE, key)
    except ConfigError as exc:
        log.warning("%s: the cycle is recomputed", exc)
        return None
    try:
        load_sae(folder / SAE_DIR)
    except SAEFileError as exc:
        log.warning("%s: the cycle is recomputed", exc)
        return None
    return CycleRecord(folder, key, doc)


# ----- one cycle ----------------------------------------------------------------------------------
@dataclass
class Measured:
    """The SAE trained on a cycle's model, the training representations (for the next cycle's
    targets) and the cycle's metrics and timings."""

    sae: SAE
    sae_stats: dict[str, Any]
    h_train: torch.Tensor
    metrics: dict[str, float]
    seconds: dict[str, float]


def measure_cycle(
    clf: Classifier, data: CeptionData, cfg: CeptionConfig, seed: int, cycle: int, progress: bool
) -> Measured:
    """Train the cycle's SAE on the classifier's representations of the training rows (plus
    token rows with ``cycle.token_level``) and compute every metric on the test rows."""
    handle = clf.handle
    bs = cfg.model.batch_size
    t0 = time.perf_counter()
    special = special_token_ids(handle.tokenizer)
    h_train, tok_train = encode_split(
        clf, data.train, bs, token_rows=cfg.cycle.token_level, special=special
    )
    h_test, _ = encode_split(clf, data.test, bs)
    t_acts = time.perf_counter() - t0

    t1 = time.perf_counter()
    acts = h_train
    if tok_train is not None and tok_train.shape[0]:
        gen = torch.Generator().manual_seed(derive_seed(seed, cycle, "tokens"))
        keep = torch.randperm(tok_train.shape[0], generator=gen)[: cfg.cycle.max_tokens]
        acts = torch.cat([h_train, tok_train[keep.sort().values]])
    sae_seed = derive_seed(seed, cycle, "sae", cfg.sae.seed)
    sae_cfg = cfg.sae.model_copy(update={"seed": sae_seed})
    result = train_sae(
        acts,
        sae_cfg,
        device=handle.device,
        progress=progress,
        metadata={"model_name": handle.name, "hook_name": f"blocks.{clf.layer}.pooled"},
    )
    sae = result.sae.eval()
    t_sae = time.perf_counter() - t1

    t2 = time.perf_counter()
    y_train = data.train.labels.numpy()
    y_test = data.test.labels.numpy()
    metric_seed = derive_seed(seed, cycle, "metrics")
    metrics: dict[str, float] = {}
    metrics.update(classification_metrics(y_test, predict(clf, h_test).numpy()))
    codes_train = sae_codes(sae, h_train)
    codes_test = sae_codes(sae, h_test)
    recon = decode_codes(sae, codes_test)
    x_te, c_te, c_tr = h_test.numpy(), codes_test.numpy(), codes_train.numpy()
    metrics.update(sae_quality(x_te, recon.numpy(), c_te))
    iters = cfg.metrics.probe_max_iter
    metrics["probe_acc_acts"] = probe_accuracy(
        h_train.numpy(), y_train, x_te, y_test, seed=metric_seed, max_iter=iters
    )
    metrics["probe_acc_codes"] = probe_accuracy(
        c_tr, y_train, c_te, y_test, seed=metric_seed, max_iter=iters
    )
    metrics.update(monosemanticity(c_te, y_test, "codes"))
    metrics.update(monosemanticity(x_te, y_test, "acts"))
    sample = cfg.metrics.silhouette_sample
    metrics.update(
        clustering_metrics(c_te, y_test, "codes", seed=metric_seed, silhouette_sample=sample)
    )
    metrics.update(
        clustering_metrics(x_te, y_test, "acts", seed=metric_seed, silhouette_sample=sample)
    )
    metrics["perplexity"] = lm_perplexity(clf, data.test, cfg.metrics.perplexity_rows, bs)
    t_metrics = time.perf_counter() - t2
    seconds = {"seconds_activations": t_acts, "seconds_sae": t_sae, "seconds_metrics": t_metrics}
    stats = {k: v for k, v in result.stats.items() if k not in ("losses",)}
    return Measured(sae, stats, h_train, {k: float(v) for k, v in metrics.items()}, seconds)


def _save_cycle(
    folder: Path,
    key: str,
    state: TrainableState,
    measured: Measured,
    doc: dict[str, Any],
) -> CycleRecord:
    """Write checkpoint, SAE and (last) ``cycle.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CYCLE_FILE).unlink(missing_ok=True)
    write_classifier(folder / CLASSIFIER_FILE, state.snapshot(), key)
    save_sae(measured.sae, folder / SAE_DIR)
    write_json_atomic(folder / SAE_DIR / "training.json", measured.sae_stats)
    full = {"format": CYCLE_FORMAT, "version": CYCLE_VERSION, "key": key, **doc}
    write_json_atomic(folder / CYCLE_FILE, full)
    return CycleRecord(folder, key, full)


# ----- the run ------------------------------------------------------------------------------------
class _Chain:
    """Which cycle's weights and SAE are loaded into the shared classifier (loads lazily)."""

    def __init__(self, clf: Classifier, state: TrainableState) -> None:
        self.clf, self.state = clf, state
        self.loaded: str | None = None
        self.sae: SAE | None = None
        self.sae_key: str | None = None
        self.h_train: torch.Tensor | None = None

    def adopt(self, record: CycleRecord, measured: Measured | None = None) -> None:
        """The classifier now holds ``record``'s weights (just trained, or loaded)."""
        self.loaded = record.key
        if measured is not None:
            self.sae, self.sae_key, self.h_train = measured.sae, record.key, measured.h_train

    def ensure(self, record: CycleRecord, device: torch.device) -> None:
        """Load ``record``'s classifier tensors and SAE when they are not the current ones."""
        if self.loaded != record.key:
            tensors = read_classifier(record.folder / CLASSIFIER_FILE, record.key)
            self.state.load(tensors, str(record.folder / CLASSIFIER_FILE))
            self.loaded = record.key
            self.h_train = None
        if self.sae_key != record.key:
            try:
                self.sae = load_sae(record.folder / SAE_DIR, device=device).eval()
            except SAEFileError as exc:
                raise ConfigError(f"{record.folder / SAE_DIR}: {exc}") from None
            self.sae_key = record.key
            self.h_train = None


def _row(record: CycleRecord, strategy: str, common: dict[str, Any]) -> dict[str, Any]:
    doc = record.doc
    row = {"seed": doc["seed"], "strategy": strategy, "cycle": doc["cycle"]}
    row.update(doc["metrics"])
    row.update(doc["seconds"])
    row.update({k: doc["fine_tune"].get(k) for k in ("val_accuracy", "best_epoch")})
    row.update(
        {
            "ce_loss": doc["fine_tune"].get("ce_loss"),
            "aux_loss": doc["fine_tune"].get("aux_loss"),
            "aux_valid_fraction": doc.get("aux_valid_fraction"),
            "lambda_aux": doc.get("lambda_aux"),
            "key": record.key,
        }
    )
    row.update(common)
    return row


def run_ception(
    cfg: CeptionConfig,
    out: str | Path,
    progress: bool = True,
    on_cycle: Callable[[CycleRecord], None] | None = None,
) -> CeptionRun:
    """Run (or resume) every cycle of every seed and strategy; write the tables and the report.

    ``on_cycle`` is called after each cycle is computed (not for kept ones); an exception it
    raises stops the run with the finished cycles saved (used by the tests to interrupt).
    """
    from saelab.ception.report import render_ception_report, write_tables

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    write_text_atomic(out / "config.yaml", config_text)
    handle = load_model(
        cfg.model.name,
        revision=cfg.model.revision,
        device=cfg.model.device,
        dtype="float32",
        trust_remote_code=cfg.model.trust_remote_code,
        lm_head=True,
    )
    data = prepare_data(cfg, handle)
    layer = handle.n_layers - 1 if cfg.classifier.layer is None else cfg.classifier.layer
    layer = handle.check_layer(layer)
    pooling = cfg.classifier.pooling
    if pooling == "auto":
        pooling = "last" if handle.is_decoder else "mean"
    clf = Classifier(
        handle, data.n_classes, layer, pooling, cfg.classifier.dropout, seed=0,
        autocast=autocast_dtype(cfg, handle.device),
    )  # fmt: skip
    state = TrainableState(clf, trainable_names(clf, cfg.classifier.train_blocks))
    pristine = state.snapshot()
    base = base_key(cfg, handle, data, layer, pooling)
    versions = package_versions()
    common = {
        "model_id": handle.model_id,
        "dataset": data.dataset.name,
        "layer": layer,
        "pooling": pooling,
        "n_train": len(data.train),
        "n_test": len(data.test),
        "config_hash": base,
        **{f"version_{k}": v for k, v in versions.items()},
    }
    n_trainable = sum(int(state.params[n].numel()) for n in state.names)
    log.info(
        "classifier: %s block %d (%s pooling), %d trainable tensors (%d parameters)",
        handle.name, layer, pooling, len(state.names), n_trainable,
    )  # fmt: skip
    chain = _Chain(clf, state)
    records: list[CycleRecord] = []
    rows: list[dict[str, Any]] = []
    strategies = list(cfg.cycle.strategies)
    total = len(cfg.cycle.seeds) * (1 + len(strategies) * cfg.cycle.cycles)
    bar = tqdm(total=total, desc="ception cycles", unit="cycle", disable=None if progress else True)

    for seed in cfg.cycle.seeds:
        key0 = cycle_key(base, seed, None, 0, None)
        folder0 = out / f"seed{seed}" / "cycle0"
        rec0 = read_record(folder0, key0)
        if rec0 is None:
            t0 = time.perf_counter()
            state.load(pristine, "the pretrained model")
            clf.reset_head(derive_seed(seed, 0, "head"))
            ft = fine_tune(
                clf, state, data.train, data.val, cfg.classifier, cfg.classifier.epochs,
                seed=derive_seed(seed, 0, "finetune"), eval_batch_size=cfg.model.batch_size,
                progress=progress, desc=f"seed {seed} cycle 0",
            )  # fmt: skip
            measured = measure_cycle(clf, data, cfg, seed, 0, progress)
            seconds = {"seconds_finetune": ft.seconds, "seconds_sharpen": 0.0, **measured.seconds}
            seconds["seconds_total"] = time.perf_counter() - t0
            rec0 = _save_cycle(
                folder0,
                key0,
                state,
                measured,
                {
                    "seed": seed, "strategy": None, "cycle": 0, "parent": None,
                    "metrics": measured.metrics, "seconds": seconds,
                    "fine_tune": _ft_doc(ft), "lambda_aux": 0.0, "aux_valid_fraction": None,
                    "sae": measured.sae_stats,
                },
            )  # fmt: skip
            chain.adopt(rec0, measured)
            _log_cycle(rec0)
            if on_cycle is not None:
                on_cycle(rec0)
        records.append(rec0)
        bar.update(1)
        for strategy in strategies:
            rows.append(_row(rec0, strategy, common))
            prev = rec0
            for c in range(1, cfg.cycle.cycles + 1):
                key = cycle_key(base, seed, strategy, c, prev.key)
                folder = out / f"seed{seed}" / strategy / f"cycle{c}"
                rec = read_record(folder, key)
                if rec is None:
                    rec = _run_cycle(cfg, data, chain, prev, folder, key, seed, strategy, c,
                                     progress)  # fmt: skip
                    _log_cycle(rec)
                    if on_cycle is not None:
                        on_cycle(rec)
                records.append(rec)
                rows.append(_row(rec, strategy, common))
                prev = rec
                bar.update(1)
    bar.close()
    cycles = pd.DataFrame(rows)
    write_tables(cycles, out)
    meta = {
        "config": config_text,
        "model": handle.model_id,
        "dataset": f"{data.dataset.name} ({data.dataset.path})",
        "layer": layer,
        "pooling": pooling,
        "trainable_parameters": n_trainable,
        "versions": versions,
        "seconds": time.perf_counter() - start,
    }
    render_ception_report(out, cycles, meta)
    seconds = time.perf_counter() - start
    write_json_atomic(out / "run.json", {**meta, "status": "complete", "seconds": seconds})
    return CeptionRun(out, cycles, records, seconds)


def _ft_doc(ft: Any) -> dict[str, Any]:
    return {
        "val_accuracy": ft.val_accuracy[ft.best_epoch],
        "val_accuracy_per_epoch": ft.val_accuracy,
        "best_epoch": ft.best_epoch,
        "ce_loss": ft.ce_loss,
        "aux_loss": ft.aux_loss,
        "steps": ft.steps,
        "history": ft.history,
    }


def _log_cycle(rec: CycleRecord) -> None:
    m, s = rec.doc["metrics"], rec.doc["seconds"]
    log.info(
        "seed %s %s cycle %s: accuracy %.4f, ARI(codes) %.3f, U(codes) %.4f, EV %.3f (%.0fs)",
        rec.doc["seed"], rec.doc["strategy"] or "-", rec.doc["cycle"], m["accuracy"],
        m["ari_codes"], m["u_codes_alive"], m["sae_explained_variance"], s["seconds_total"],
    )  # fmt: skip


def _run_cycle(
    cfg: CeptionConfig,
    data: CeptionData,
    chain: _Chain,
    prev: CycleRecord,
    folder: Path,
    key: str,
    seed: int,
    strategy: str,
    c: int,
    progress: bool,
) -> CycleRecord:
    """Targets from the previous cycle's SAE and model, retraining, a new SAE, metrics."""
    t0 = time.perf_counter()
    clf = chain.clf
    chain.ensure(prev, clf.handle.device)
    assert chain.sae is not None
    t1 = time.perf_counter()
    h_train = chain.h_train
    if h_train is None and strategy in ("per_class", "per_example"):
        h_train, _ = encode_split(clf, data.train, cfg.model.batch_size)
    target_seed = derive_seed(seed, c, "targets")
    targets = build_targets(
        strategy,
        chain.sae,
        h_train if h_train is not None else torch.zeros(len(data.train), clf.handle.d_model),
        data.train.labels,
        cfg.cycle.sharpen_k,
        seed=target_seed,
    )
    t_sharpen = time.perf_counter() - t1
    lam = 0.0 if strategy == "none" else cfg.cycle.lambda_aux
    valid = float(targets.valid.double().mean()) if targets is not None else None
    ft = fine_tune(
        clf, chain.state, data.train, data.val, cfg.classifier, cfg.classifier.cycle_epochs,
        seed=derive_seed(seed, c, "finetune"), targets=targets, lambda_aux=lam,
        eval_batch_size=cfg.model.batch_size, progress=progress,
        desc=f"seed {seed} {strategy} cycle {c}",
    )  # fmt: skip
    measured = measure_cycle(clf, data, cfg, seed, c, progress)
    seconds = {"seconds_finetune": ft.seconds, "seconds_sharpen": t_sharpen, **measured.seconds}
    seconds["seconds_total"] = time.perf_counter() - t0
    rec = _save_cycle(
        folder,
        key,
        chain.state,
        measured,
        {
            "seed": seed, "strategy": strategy, "cycle": c, "parent": prev.key,
            "metrics": measured.metrics, "seconds": seconds, "fine_tune": _ft_doc(ft),
            "lambda_aux": lam, "aux_valid_fraction": valid, "sae": measured.sae_stats,
        },
    )  # fmt: skip
    chain.adopt(rec, measured)
    return rec
