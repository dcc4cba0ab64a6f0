"""``saelab eval CONFIG``: the evaluation suite as stages, each a small function of the config and
the output folder, so DVC (``examples/sae_bench``) can run them one at a time.

Stages and what they write under ``out``:

- ``setup``: trains the config's ``train`` SAEs (on the normal-split *training* rows of the
  ``train`` datasets and its files) into ``saes/<id>/`` (SAELens format), checks the loaded ones
  (folder, release) and the derived ones (IHTP) against the model and hook, and writes the manifest
  ``saes.json`` (id, how to open it, identity hash, architecture, widths, hook);
- ``core``: ``evals/core/<id>.json``: reconstruction / sparsity metrics on held-out tokens (the
  normal-split *test* rows of the ``heldout`` datasets, and its files) and splicing fidelity;
- ``sparse_probing``: ``evals/sparse_probing/<id>.json``: SAEBench's k-sparse probes and the paper's
  k sweep through the probe engine (its run folder ``sparse_probing_run/``);
- ``absorption``: ``evals/absorption/<id>.json``: first-letter absorption (or why it was skipped);
- ``compare``: ``comparison.csv``: pairwise architecture comparison of the sparse-probing AUCs;
- ``merge``: ``merged.csv`` (one row per SAE, ``<eval>.<metric>`` columns) and ``details.parquet``;
- ``visualize``: ``report/report.html`` with L0-vs-metric plots and Pareto fronts.

Every eval of every SAE has a key (the SAE's identity, model, hook, the eval's config and inputs,
library versions); an envelope already written with the same key is kept, so a rerun does only
what changed and an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from saelab.config import EVALS, EvalConfig, RunConfig, SAEConfig, SAETrainRunConfig
from saelab.errors import ConfigError
from saelab.evals.envelope import (
    EvalEnvelope,
    Provenance,
    SAEIdentity,
    clean_metrics,
    finished,
    merge_envelopes,
    utc_now,
    write_envelope,
)
from saelab.io import atomic_path, hash_texts, stable_hash, write_json_atomic
from saelab.pipeline.logs import StageTimer, setup_logging
from saelab.pipeline.store import package_versions

log = logging.getLogger(__name__)

STAGES = ("setup", "core", "sparse_probing", "absorption", "compare", "merge", "visualize")
"""Stages of ``saelab eval`` in order; ``all`` runs setup, the config's evals, and the rest."""
EVAL_VERSION = 1
"""Version of how the evals compute their numbers (part of every eval key)."""
IHTP_VERSION = 1
MANIFEST = "saes.json"


@dataclass
class EvalSAE:
    """One SAE of the manifest: how to open it and who it is."""

    id: str
    kind: str  # trained | path | release | ihtp
    spec: dict[str, Any]  # open_sae spec, or {"dictionary": id, "k": k} for ihtp
    identity: str
    architecture: str
    d_in: int
    d_sae: int
    hook: str
    source: str
    config_hash: str  # of the SAE's config entry, to tell a stale manifest

    def identity_model(self) -> SAEIdentity:
        return SAEIdentity(
            id=self.id,
            architecture=self.architecture,
            d_in=self.d_in,
            d_sae=self.d_sae,
            hook=self.hook,
            source=self.source,
            identity=self.identity,
        )


@dataclass
class EvalRun:
    """The config, the output folder, and what the stages share (model, SAEs, timer)."""

    cfg: EvalConfig
    out: Path
    progress: bool = True
    timer: StageTimer = field(default_factory=StageTimer)
    _saes: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def hook(self) -> str:
        from saelab.activations import hook_name, parse_hook

        return hook_name(*parse_hook(self.cfg.hook))

    @cached_property
    def handle(self) -> Any:
        from saelab.activations import load_model

        m = self.cfg.model
        if not self.progress:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # its "Loading weights" bar
        with self.timer("model"):
            handle = load_model(
                m.name,
                revision=m.revision,
                device=m.device,
                dtype=m.dtype,
                trust_remote_code=m.trust_remote_code,
                lm_head=True,  # splicing scores next-token loss where the checkpoint has a head
            )
        handle.check_hook(self.hook)
        return handle

    @cached_property
    def cache_root(self) -> Path:
        from saelab.pipeline.run import default_cache_dir

        return Path(self.cfg.cache_dir).expanduser() if self.cfg.cache_dir else default_cache_dir()

    @cached_property
    def manifest(self) -> list[EvalSAE]:
        path = self.out / MANIFEST
        if not path.is_file():
            raise ConfigError(
                f"{path} is missing: run the setup stage first (saelab eval CONFIG --stage setup)"
            )
        try:
            header = json.loads(path.read_text("utf-8"))
            entries = [EvalSAE(**e) for e in header["saes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a saelab SAE manifest ({exc}); rerun setup") from None
        want = [s.id for s in self.cfg.saes]
        have = [e.id for e in entries]
        if have != want:
            raise ConfigError(
                f"{path} lists SAEs {have} but the config has {want}: rerun the setup stage"
            )
        if header.get("model") != self.cfg.model.name or header.get("hook") != self.hook:
            raise ConfigError(
                f"{path} was set up for model {header.get('model')!r} at {header.get('hook')!r}; "
                f"the config has {self.cfg.model.name!r} at {self.hook!r}: rerun the setup stage"
            )
        stale = [
            e.id
            for e, sc in zip(entries, self.cfg.saes, strict=True)
            if e.config_hash != _sae_hash(sc)
        ]
        if stale:
            raise ConfigError(
                f"{path}: the config of SAE(s) {stale} changed since setup: rerun the setup stage"
            )
        return entries

    def entry(self, sae_id: str) -> EvalSAE:
        return next(e for e in self.manifest if e.id == sae_id)

    def sae(self, sae_id: str) -> Any:
        """The SAE ``sae_id`` in memory (loaded once per process)."""
        if sae_id not in self._saes:
            from saelab.sae import IHTPSAE, load_sae

            e = self.entry(sae_id)
            device = str(self.handle.device)
            with self.timer("saes"):
                if e.kind == "ihtp":
                    base = self.sae(e.spec["dictionary"])
                    sae = IHTPSAE.from_dictionary(base, int(e.spec["k"]))
                else:
                    sae = load_sae(self.open_spec(e.kind, e.spec), device=device)
            self._saes[sae_id] = sae.eval()
        return self._saes[sae_id]

    def open_spec(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The ``open_sae`` spec of a manifest entry: a trained SAE's folder is stored relative to
        the output folder and resolved here."""
        if kind == "trained":
            return {**spec, "path": str((self.out / spec["path"]).resolve())}
        return spec

    def versions(self) -> dict[str, str]:
        return package_versions()

    def provenance(self, started: float, started_iso: str, timings: dict[str, float]) -> Provenance:
        return Provenance(
            versions=self.versions(),
            seed=self.cfg.seed,
            model=self.handle.model_id,
            started=started_iso,
            finished=utc_now(),
            seconds=round(time.perf_counter() - started, 3),
            timings={k: round(v, 3) for k, v in timings.items()},
        )

    def eval_path(self, eval_type: str, sae_id: str) -> Path:
        return self.out / "evals" / eval_type / f"{sae_id}.json"

    def eval_key(self, eval_type: str, sae_id: str, inputs: Any) -> str:
        """Hash of everything that decides one eval of one SAE."""
        e = self.entry(sae_id)
        section = getattr(self.cfg, eval_type)
        return stable_hash(
            {
                "eval": eval_type,
                "version": EVAL_VERSION,
                "sae": e.identity,
                "model": self.handle.model_id,
                "model_cfg": self.cfg.model.model_dump(mode="json"),
                "hook": self.hook,
                "seed": self.cfg.seed,
                "config": section.model_dump(mode="json"),
                "inputs": inputs,
                "versions": self.versions(),
            }
        )

    def write(
        self,
        eval_type: str,
        sae_id: str,
        key: str,
        metrics: dict[str, Any],
        details: list[dict[str, Any]],
        started: float,
        started_iso: str,
        *,
        headline: str | None = None,
        skipped_reason: str | None = None,
        timings: dict[str, float] | None = None,
        config: dict[str, Any] | None = None,
    ) -> EvalEnvelope:
        env = EvalEnvelope(
            eval_type=eval_type,  # type: ignore[arg-type]
            key=key,
            sae=self.entry(sae_id).identity_model(),
            config=config or getattr(self.cfg, eval_type).model_dump(mode="json"),
            metrics=clean_metrics(metrics),
            headline=headline,
            details=details,
            skipped_reason=skipped_reason,
            provenance=self.provenance(started, started_iso, timings or {}),
        )
        write_envelope(self.eval_path(eval_type, sae_id), env)
        return env


# ----- setup --------------------------------------------------------------------------------------
def _sae_hash(sc: SAEConfig) -> str:
    return stable_hash(sc.model_dump(mode="json"))


def setup_stage(run: EvalRun) -> list[EvalSAE]:
    """Train the ``train`` SAEs, check the others, write the manifest ``saes.json``."""
    from saelab.activations import parse_hook
    from saelab.pipeline.run import sae_source
    from saelab.pipeline.saes import check_sae_width
    from saelab.sae import open_sae
    from saelab.sae.training.corpus import train_saes_on_corpus

    cfg = run.cfg
    handle = run.handle
    layer, kind = parse_hook(run.hook)
    trained = {s.id: s.train for s in cfg.saes if s.train is not None}
    if trained:
        corpus = SAETrainRunConfig(
            model=cfg.model,
            hook=run.hook,
            datasets=cfg.train.datasets,
            files=cfg.train.files,
            max_rows=cfg.train.max_rows,
            max_tokens=cfg.train.max_tokens,
            seed=cfg.seed,
            rows="train",
            split_seed=cfg.seed,
            saes=trained,
        )
        with run.timer("train"):
            train_saes_on_corpus(corpus, run.out / "saes", progress=run.progress)
    entries: list[EvalSAE] = []
    by_id: dict[str, EvalSAE] = {}
    for sc in cfg.saes:
        if sc.ihtp is not None:
            continue
        if sc.train is not None:
            # relative to the output folder, so a copied or checked-out folder still opens it
            spec: dict[str, Any] = {"path": f"saes/{sc.id}"}
            kind_of = "trained"
        else:
            spec = sc.source_spec() or {}
            kind_of = "release" if sc.release is not None else "path"
        files = open_sae(run.open_spec(kind_of, spec))
        named = (getattr(files.cfg, "metadata", {}) or {}).get("hook_name")
        if named and sc.train is None:
            try:
                got = parse_hook(named)
            except ConfigError:
                got = None
            if got is not None and got != (layer, kind) and sc.layer is None:
                raise ConfigError(
                    f"key 'saes.{sc.id}': the SAE at {files.source} reads {named}, but the eval's "
                    f"'hook' is {run.hook}; evaluate it with hook: {named}"
                )
        if (sc.layer is not None and sc.layer != layer) or (
            sc.hook_kind is not None and sc.hook_kind != kind
        ):
            raise ConfigError(
                f"key 'saes.{sc.id}': layer {sc.layer} / hook_kind {sc.hook_kind} differ from the "
                f"eval's 'hook' {run.hook}; every SAE of an eval reads that one hook"
            )
        check_sae_width(files, handle, cfg.model.name, sc.id)
        e = EvalSAE(
            id=sc.id,
            kind=kind_of,
            spec=spec,
            identity=files.identity,
            # a trained SAE is named by how it was trained (batchtopk, matryoshka_batchtopk), not by
            # the inference architecture it is saved as (jumprelu)
            architecture=sc.train.architecture
            if sc.train is not None
            else str(files.cfg.architecture),
            d_in=int(files.cfg.d_in),
            d_sae=int(files.cfg.d_sae),
            hook=run.hook,
            source=sae_source(sc),
            config_hash=_sae_hash(sc),
        )
        by_id[sc.id] = e
    for sc in cfg.saes:
        if sc.ihtp is None:
            continue
        base = by_id[sc.ihtp.dictionary]
        if not 1 <= sc.ihtp.k <= base.d_sae:
            raise ConfigError(
                f"key 'saes.{sc.id}.ihtp.k' has value {sc.ihtp.k}; expected 1 ... {base.d_sae} "
                f"(the width of {sc.ihtp.dictionary})"
            )
        by_id[sc.id] = EvalSAE(
            id=sc.id,
            kind="ihtp",
            spec={"dictionary": sc.ihtp.dictionary, "k": sc.ihtp.k},
            identity=stable_hash(["ihtp", IHTP_VERSION, base.identity, sc.ihtp.k], length=24),
            architecture="ihtp",
            d_in=base.d_in,
            d_sae=base.d_sae,
            hook=run.hook,
            source=sae_source(sc),
            config_hash=_sae_hash(sc),
        )
    entries = [by_id[sc.id] for sc in cfg.saes]
    write_json_atomic(
        run.out / MANIFEST,
        {"model": cfg.model.name, "hook": run.hook, "saes": [e.__dict__ for e in entries]},
    )
    run.__dict__.pop("manifest", None)
    for e in entries:
        log.info("SAE %s: %s, %d latents, %s (%s)", e.id, e.architecture, e.d_sae, e.hook, e.source)
    return entries


# ----- held-out texts and tokens ------------------------------------------------------------------
def training_texts(cfg: EvalConfig) -> list[str]:
    """The texts the config's ``train`` SAEs learn from: the normal-split training rows (seed
    ``cfg.seed``) of ``train.datasets`` and the texts of ``train.files``."""
    from saelab.sae.training.corpus import gather_texts

    src = cfg.train
    return gather_texts(
        _expand(src.datasets),
        [(f.path, f.column) for f in src.files],
        src.max_rows,
        rows="train",
        split_seed=cfg.seed,
    )


def heldout_texts(cfg: EvalConfig, tokenizer: Any, max_length: int) -> list[str]:
    """Held-out texts: the normal-split test rows of ``heldout.datasets`` (interleaved, one text
    of each dataset in turn, so every dataset is sampled) then the files' texts, each text once and
    none that is also a training text of the config (the bundled datasets repeat some texts across
    rows, and a file may be listed on both sides), cut after the first text that brings the
    non-special token count to ``heldout.max_tokens``."""
    from itertools import zip_longest

    from saelab.data import load_dataset
    from saelab.sae.training.corpus import dataset_texts, gather_texts

    src = cfg.heldout
    per_dataset = [
        dataset_texts(load_dataset(name, max_rows=src.max_rows), "test", seed=cfg.seed)
        for name in dict.fromkeys(_expand(src.datasets))
    ]
    candidates = [t for group in zip_longest(*per_dataset) for t in group if t is not None]
    candidates += gather_texts([], [(f.path, f.column) for f in src.files])
    seen = set(training_texts(cfg)) if any(s.train is not None for s in cfg.saes) else set()
    texts = []
    for t in candidates:
        if t not in seen:
            seen.add(t)
            texts.append(t)
    if not texts:
        raise ConfigError(
            "key 'heldout': every held-out text is also a training text (key 'train'); give "
            "other datasets or files"
        )
    if src.max_tokens is None:
        return texts
    have = 0
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i in range(0, len(texts), 512):
        chunk = texts[i : i + 512]
        ids = tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
        for j, row in enumerate(ids):
            have += sum(1 for t in row if t not in special)
            if have >= src.max_tokens:
                return texts[: i + j + 1]
    return texts


def _expand(names: Sequence[str]) -> list[str]:
    from saelab.pipeline.run import expand_dataset_names

    return expand_dataset_names(list(names))


@dataclass
class HeldOut:
    texts: list[str]
    tokens: Any  # [T, d] non-special token activations
    offsets: Any  # [n_texts + 1]
    key: str


def heldout_tokens(run: EvalRun) -> HeldOut:
    """Activations of the held-out texts at the hook (disk cache), special tokens left out."""
    from saelab.activations import ActivationCache, key_of
    from saelab.activations.extract import resolve_max_length
    from saelab.pipeline.run import held_out_tokens

    cfg = run.cfg
    handle = run.handle
    max_length = resolve_max_length(handle, cfg.model.max_length)
    texts = heldout_texts(cfg, handle.tokenizer, max_length)
    with run.timer("activations"):
        acts = ActivationCache(run.cache_root).get_or_extract(
            handle,
            texts,
            [run.hook],
            "mean",
            max_length=cfg.model.max_length,
            keep_tokens=True,
            batch_size=cfg.model.batch_size,
            progress=run.progress,
        )
    la = acts[key_of(run.hook)]
    cap = cfg.heldout.max_tokens or int(la.tokens.shape[0])
    tokens, offsets = held_out_tokens(la, include_special=False, max_tokens=cap)
    return HeldOut(texts=texts, tokens=tokens, offsets=offsets, key=hash_texts(texts))


# ----- core ---------------------------------------------------------------------------------------
#: SAE weights (bytes) spliced in one group: the clean and zero passes are shared within a group.
SPLICE_GROUP_BYTES = 2 << 30


def core_stage(run: EvalRun) -> list[EvalEnvelope]:
    """Core metrics (``saelab.evals.core``) and splicing fidelity (``saelab.evals.splice``) of every
    SAE on the held-out tokens; the SAEs still to do are spliced together, in groups of up to
    :data:`SPLICE_GROUP_BYTES` of weights, so the clean and zero-ablated passes run once a group."""
    heldout = heldout_tokens(run)
    done: dict[str, EvalEnvelope] = {}
    todo: list[tuple[EvalSAE, str]] = []
    for e in run.manifest:
        key = run.eval_key("core", e.id, heldout.key)
        prior = finished(run.eval_path("core", e.id), key)
        if prior is not None:
            log.info("core eval of %s: done before", e.id)
            done[e.id] = prior
        else:
            todo.append((e, key))
    group: list[tuple[EvalSAE, str]] = []
    size = 0
    for e, key in todo:
        weights = 2 * e.d_in * e.d_sae * 4
        if group and size + weights > SPLICE_GROUP_BYTES:
            done.update(_core_group(run, heldout, group))
            group, size = [], 0
        group.append((e, key))
        size += weights
    if group:
        done.update(_core_group(run, heldout, group))
    return [done[e.id] for e in run.manifest]


def _core_group(
    run: EvalRun, heldout: HeldOut, group: list[tuple[EvalSAE, str]]
) -> dict[str, EvalEnvelope]:
    """Core metrics of each SAE of ``group``, then one shared splice of them all; one envelope each."""
    from saelab.evals.core import DENSITY_BINS, core_metrics

    cfg = run.cfg
    started = {e.id: (time.perf_counter(), utc_now()) for e, _ in group}
    timers = {e.id: StageTimer() for e, _ in group}
    metrics: dict[str, dict[str, Any]] = {}
    for e, _ in group:
        with timers[e.id]("metrics"), run.timer("core"):
            metrics[e.id] = core_metrics(
                run.sae(e.id),
                heldout.tokens,
                batch_size=cfg.core.batch_size,
                dense_threshold=cfg.core.dense_threshold,
                offsets=heldout.offsets,
            )
    if cfg.core.splice:
        from saelab.evals.splice import splice_fidelity_many

        t0 = time.perf_counter()
        with run.timer("splice"):
            spliced = splice_fidelity_many(
                run.handle,
                {e.id: run.sae(e.id) for e, _ in group},
                run.hook,
                heldout.texts[: cfg.core.splice_max_texts],
                batch_size=cfg.model.batch_size,
                max_length=cfg.model.max_length,
                progress=run.progress,
            )
        seconds = time.perf_counter() - t0
        for e, _ in group:
            # the splice's counts (n_tokens, n_texts, ...) are of its own texts: keep them apart
            metrics[e.id].update(
                {f"splice_{k}" if k.startswith("n_") else k: v for k, v in spliced[e.id].items()}
            )
            timers[e.id].seconds[f"splice (shared by {len(group)} SAEs)"] = seconds
    out: dict[str, EvalEnvelope] = {}
    for e, key in group:
        m = metrics[e.id]
        hist = m.pop("density_histogram")
        details = [
            {"log10_density_low": float(lo), "log10_density_high": float(hi), "latents": int(n)}
            for lo, hi, n in zip(DENSITY_BINS[:-1], DENSITY_BINS[1:], hist, strict=True)
        ]
        headline = next(
            h for h in ("ce_loss_score", "pooled_cossim_score", "explained_variance") if h in m
        )
        out[e.id] = run.write(
            "core", e.id, key, m, details, *started[e.id],
            headline=headline, timings=timers[e.id].seconds,
        )  # fmt: skip
        log.info(
            "core eval of %s: explained variance %.4f, L0 %.1f%s",
            e.id,
            m["explained_variance"],
            m["l0"],
            "".join(
                f", {h} {m[h]:.4f}"
                for h in ("ce_loss_score", "kl_div_score", "pooled_cossim_score")
                if h in m
            ),
        )
    return out


# ----- sparse probing -----------------------------------------------------------------------------
def probe_run_config(run: EvalRun) -> RunConfig:
    """The probe-engine run of the sparse-probing eval: the config's model and hook, the sparse
    probing datasets in the normal setting, the SAEs opened from the manifest, no baselines (the
    SAEBench ``llm`` baselines are computed by the eval), the paper's ks."""
    from saelab.activations import parse_hook

    cfg = run.cfg
    sp = cfg.sparse_probing
    layer, kind = parse_hook(run.hook)
    saes: list[dict[str, Any]] = []
    for e in run.manifest:
        entry: dict[str, Any] = {"id": e.id}
        if e.kind == "ihtp":
            entry["ihtp"] = {"dictionary": e.spec["dictionary"], "k": e.spec["k"]}
        else:
            spec = run.open_spec(e.kind, e.spec)
            entry.update({k: v for k, v in spec.items() if v is not None})
            entry["layer"] = layer
            entry["hook_kind"] = kind
        saes.append(entry)
    return RunConfig.model_validate(
        {
            "name": f"{cfg.name}-sparse-probing",
            "seed": cfg.seed,
            "cache_dir": cfg.cache_dir,
            "model": cfg.model.model_dump(mode="json"),
            "layers": [layer],
            "settings": ["normal"],
            "data": {
                "datasets": list(sp.datasets),
                "max_rows": sp.max_rows,
                "max_train": sp.max_train,
                "max_test": sp.max_test,
            },
            "saes": saes,
            "probes": {"baselines": [], "ks": list(sp.paper_ks)},
            "executor": cfg.executor,
            "workers": cfg.workers,
        }
    )


def sparse_probing_stage(run: EvalRun) -> list[EvalEnvelope]:
    """SAEBench's sparse probing and the paper's k sweep of every SAE (``saelab.evals.sparse_probing``)."""
    from saelab.evals.sparse_probing import sparse_probing_eval

    cfg = run.cfg
    run_cfg = probe_run_config(run)
    # where and how the probe engine runs does not change its numbers (same seed, same results),
    # and an SAE's numbers depend on its own identity (in the eval key), not on the other SAEs
    inputs = stable_hash(
        run_cfg.model_dump(
            mode="json", exclude={"name", "cache_dir", "executor", "workers", "ray", "saes"}
        )
    )
    keys = {e.id: run.eval_key("sparse_probing", e.id, inputs) for e in run.manifest}
    prior = {
        e.id: finished(run.eval_path("sparse_probing", e.id), keys[e.id]) for e in run.manifest
    }
    if all(p is not None for p in prior.values()):
        log.info("sparse probing: every SAE done before")
        return [p for p in prior.values() if p is not None]
    started, started_iso = time.perf_counter(), utc_now()
    with run.timer("sparse_probing"):
        try:
            results = sparse_probing_eval(
                run_cfg,
                run.out / "sparse_probing_run",
                ks=cfg.sparse_probing.ks,
                progress=run.progress,
            )
        finally:  # the probe run logs into its own folder; the eval's log continues here
            setup_logging(run.out)
    done = []
    for e in run.manifest:
        if prior[e.id] is not None:
            done.append(prior[e.id])
            continue
        r = results[e.id]
        env = run.write(
            "sparse_probing", e.id, keys[e.id], r.metrics, r.details, started, started_iso,
            headline=r.headline, timings=r.timings,
        )  # fmt: skip
        log.info("sparse probing of %s: %s %.4f", e.id, r.headline, r.metrics.get(r.headline))
        done.append(env)
    return done


# ----- absorption ---------------------------------------------------------------------------------
def absorption_stage(run: EvalRun) -> list[EvalEnvelope]:
    """First-letter absorption of every SAE (``saelab.evals.absorption``)."""
    from saelab.evals.absorption import absorption_eval

    cfg = run.cfg
    done = []
    for e in run.manifest:
        key = run.eval_key("absorption", e.id, None)
        path = run.eval_path("absorption", e.id)
        prior = finished(path, key)
        if prior is not None:
            done.append(prior)
            continue
        started, started_iso = time.perf_counter(), utc_now()
        with run.timer("absorption"):
            r = absorption_eval(
                run.handle,
                run.sae(e.id),
                run.hook,
                seed=cfg.absorption.seed,
                min_gt_probe_f1=cfg.absorption.min_probe_f1,
                max_words_per_letter=cfg.absorption.max_words_per_letter,
                icl_examples=cfg.absorption.icl_examples,
            )
        env = run.write(
            "absorption", e.id, key, r.metrics, r.details, started, started_iso,
            headline="mean_absorption_fraction_score" if not r.skipped_reason else None,
            skipped_reason=r.skipped_reason,
            timings=r.timings,
            config={**cfg.absorption.model_dump(mode="json"), **r.config},
        )  # fmt: skip
        if r.skipped_reason:
            log.warning("absorption of %s skipped: %s", e.id, r.skipped_reason)
        done.append(env)
    return done


# ----- compare, merge, visualize ------------------------------------------------------------------
def paper_aucs(details: pd.DataFrame) -> pd.DataFrame:
    """The paper-sweep rows of the sparse-probing details: ``sae``, ``dataset``, ``k``, ``test_auc``."""
    if details.empty or "protocol" not in details:
        return pd.DataFrame(columns=["sae", "dataset", "k", "test_auc"])
    rows = details[(details["eval_type"] == "sparse_probing") & (details["protocol"] == "paper")]
    return rows[["sae", "dataset", "k", "test_auc"]].reset_index(drop=True)


def compare_stage(run: EvalRun) -> pd.DataFrame:
    """Pairwise comparison of the SAEs' sparse-probing AUCs over datasets, per k (``comparison.csv``)."""
    from saelab.evals.architectures import compare_architectures

    files = current_envelopes(run, ["sparse_probing"])
    if not files:
        raise ConfigError(
            f"no sparse-probing results of this config's SAEs in {run.out / 'evals'}: run the "
            "sparse_probing stage first"
        )
    _, details = merge_envelopes(files)
    aucs = paper_aucs(details)
    ks = run.cfg.comparison.ks
    if ks:
        aucs = aucs[aucs["k"].isin(ks)]
    table = compare_architectures(
        aucs, n_boot=run.cfg.comparison.n_boot, seed=run.cfg.seed, alpha=run.cfg.comparison.alpha
    )
    with atomic_path(run.out / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def current_envelopes(run: EvalRun, eval_types: Sequence[str] = EVALS) -> list[Path]:
    """The envelopes under ``evals/`` of the manifest's SAEs (same identity), for ``eval_types``:
    results of SAEs since removed from the config, or of an SAE of the same id that changed, are
    left out (with a log line)."""
    from saelab.evals.envelope import read_envelope

    out = []
    for eval_type in eval_types:
        for e in run.manifest:
            path = run.eval_path(eval_type, e.id)
            if not path.is_file():
                continue
            if read_envelope(path).sae.identity != e.identity:
                log.warning(
                    "%s is of an earlier SAE %s: left out (rerun %s)", path, e.id, eval_type
                )
                continue
            out.append(path)
    folder = run.out / "evals"
    others = {p for p in folder.rglob("*.json")} - set(out) if folder.is_dir() else set()
    if others:
        log.info("%d result file(s) of SAEs not in the config left out of the tables", len(others))
    return out


def merge_stage(run: EvalRun) -> pd.DataFrame:
    """``merged.csv`` and ``details.parquet`` from the envelopes of the config's SAEs."""
    files = current_envelopes(run)
    if not files:
        raise ConfigError(
            f"no eval results of this config's SAEs in {run.out / 'evals'}: run an eval first"
        )
    return write_merged(files, run.out / "merged.csv")


def write_merged(paths: Sequence[Path], out_csv: Path) -> pd.DataFrame:
    """Merge the envelopes under ``paths`` into ``out_csv`` (wide; CSV, or Parquet by suffix) and
    ``details.parquet`` beside it."""
    wide, details = merge_envelopes(paths)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_csv) as tmp:
        if out_csv.suffix == ".parquet":
            wide.to_parquet(tmp, index=False)
        else:
            wide.to_csv(tmp, index=False)
    with atomic_path(out_csv.with_name("details.parquet")) as tmp:
        details.astype({c: str for c in details.columns if details[c].dtype == object}).to_parquet(
            tmp, index=False
        )
    return wide


def visualize_stage(run: EvalRun) -> Path:
    """``report/report.html``: the SAE table, L0-vs-metric plots with Pareto fronts, the comparison."""
    from saelab.evals.report import render_eval_report

    merged_csv = run.out / "merged.csv"
    merged = pd.read_csv(merged_csv) if merged_csv.is_file() else merge_stage(run)
    comp_csv = run.out / "comparison.csv"
    comparison = pd.read_csv(comp_csv) if comp_csv.is_file() else None
    meta = {
        "name": run.cfg.name,
        "model": run.cfg.model.name,
        "hook": run.hook,
        "versions": package_versions(),
        "when": utc_now(),
    }
    return render_eval_report(run.out / "report", merged, comparison, meta)


_STAGE_FUNCS = {
    "setup": setup_stage,
    "core": core_stage,
    "sparse_probing": sparse_probing_stage,
    "absorption": absorption_stage,
    "compare": compare_stage,
    "merge": merge_stage,
    "visualize": visualize_stage,
}


def stages_of(cfg: EvalConfig, asked: Sequence[str] | None) -> list[str]:
    """The stages to run: those asked (in pipeline order), or ``all``: setup, the config's evals,
    compare (when sparse probing runs and there are two SAEs or more), merge, visualize."""
    if asked and "all" not in asked:
        bad = [s for s in asked if s not in STAGES]
        if bad:
            raise ConfigError(f"--stage {bad[0]!r}: expected one of {', '.join(STAGES)} or all")
        return [s for s in STAGES if s in asked]
    out = ["setup", *[e for e in EVALS if e in cfg.evals]]
    if "sparse_probing" in cfg.evals and len(cfg.saes) > 1:
        out.append("compare")
    return [*out, "merge", "visualize"]


def run_eval(
    cfg: EvalConfig, out: Path, stages: Sequence[str] | None = None, progress: bool = True
) -> EvalRun:
    """Run (or resume) the stages of ``saelab eval`` for ``cfg`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out)
    todo = stages_of(cfg, stages)
    run = EvalRun(cfg=cfg, out=out, progress=progress)
    for stage in todo:
        t0 = time.perf_counter()
        log.info("stage %s", stage)
        _STAGE_FUNCS[stage](run)
        log.info("stage %s done in %.1fs", stage, time.perf_counter() - t0)
    return run
