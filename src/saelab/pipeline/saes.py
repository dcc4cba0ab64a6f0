"""SAEs of a run: loaded from files or trained on the training texts' tokens (cached), and encoded.

Trained SAEs are keyed by everything that decides them (trainer config, layer, activations,
training texts) and stored in SAELens format under ``<cache>/saes/<key>``; a rerun loads them.
Loaded SAEs are read once and encode every dataset of the run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.activations.cache import touch
from saelab.config import RunConfig, SAEConfig
from saelab.errors import ConfigError, SAEFileError
from saelab.io import stable_hash
from saelab.pipeline.logs import StageTimer
from saelab.pipeline.plan import split_hash
from saelab.pipeline.regimes import DatasetPlan

log = logging.getLogger(__name__)

SAE_CACHE_VERSION = 1


def sae_layer(sc: SAEConfig, sae: Any) -> int | None:
    """The layer a loaded SAE reads: from the config, else from its hook name."""
    if sc.layer is not None:
        return sc.layer
    hook = (getattr(sae.cfg, "metadata", {}) or {}).get("hook_name")
    if hook:
        from saelab.activations import parse_hook

        try:
            return parse_hook(hook)[0]
        except Exception:
            return None
    return None


CODE_POOLING_MODES = {"pooled": "code_pooled", "mean": "pool_codes", "max": "max_codes"}
"""A variant's ``code_pooling`` -> the mode of ``saelab.sae.encode_rows``."""


def encode(
    sae: Any,
    la: Any,
    pooling: str,
    code_poolings: list[str],
    include_special_tokens: bool = False,
    device: Any = None,
) -> dict[str, Any]:
    """Sparse codes [rows, d_sae] of one layer's activations for each code pooling (the per-token
    poolings share one encoding of every token).

    ``sae``: a loaded SAE, a ``StreamedSAE`` or ``SAEFiles`` (``saelab.sae.open_sae_encoder``
    picks one per run, so one load encodes every dataset; a streamed SAE costs one pass over its
    encoder weights per call). ``device`` defaults to the SAE's (CPU for a streamed one). Mean and
    max pooling of codes leave special tokens out unless ``include_special_tokens``.
    """
    from saelab.sae import encode_rows_multi

    modes = [CODE_POOLING_MODES[c] for c in code_poolings]
    if device is None:
        device = sae.device if isinstance(getattr(sae, "device", None), torch.device) else "cpu"
    codes = encode_rows_multi(
        sae,
        la,
        pooling=pooling,
        modes=modes,
        device=device,
        include_special_tokens=include_special_tokens,
    )
    return {c: codes[CODE_POOLING_MODES[c]] for c in code_poolings}


def check_sae_width(files: Any, handle: Any, model_name: str, what: str) -> None:
    """SAEFileError naming the SAE's file when its ``d_in`` is not the model's ``d_model``."""
    if files.cfg.d_in != handle.d_model:
        where = files.files[0] if files.files else files.source
        raise SAEFileError(
            f"{where}: the SAE's d_in is {files.cfg.d_in} but {model_name} has d_model "
            f"{handle.d_model} (SAE {what}); expected an SAE trained on this model"
        )


def load_saes(cfg: RunConfig, handle: Any, saes: dict, sae_keys: dict, timer: StageTimer) -> None:
    """Load every SAE of the config given by ``path`` or ``release`` into ``saes`` / ``sae_keys``
    (by id, layer). The key is the SAE's identity (``SAEFiles.identity``): a hash over its format,
    the converter version and every file that decides its codes (configs and weights)."""
    from saelab.sae import open_sae, open_sae_encoder

    for sc in cfg.saes:
        spec = sc.source_spec()
        if spec is None:
            continue
        with timer("saes"):
            files = open_sae(spec)  # config and tensor shapes checked; weights not read yet
        layer = sae_layer(sc, files)
        if layer is None:
            raise ConfigError(
                f"key 'saes.{sc.id}.layer': the SAE at {files.source} names no hook; set the layer it reads"
            )
        if layer not in cfg.layers:
            raise ConfigError(
                f"key 'saes.{sc.id}.layer': layer {layer} is not in 'layers' {cfg.layers}"
            )
        check_sae_width(files, handle, cfg.model.name, f"{sc.id} at layer {layer}")
        with timer("saes"):
            # in memory when its weights fit the budget, else streamed block by block per dataset
            saes[(sc.id, layer)] = open_sae_encoder(files, device=str(handle.device))
        sae_keys[(sc.id, layer)] = files.identity
        log.info(
            "opened %s SAE %s for layer %d (d_sae %d) from %s",
            files.format,
            sc.id,
            layer,
            files.cfg.d_sae,
            files.source,
        )


def train_key(
    cfg: RunConfig,
    sc: SAEConfig,
    handle: Any,
    layer: int,
    pooling: str,
    prepared: list[DatasetPlan],
    act_key: dict,
) -> str:
    """Hash of everything that decides a trained SAE: training data, activations, the whole
    training config, the trainer's version and torch's."""
    from saelab.sae.training import TRAINER_VERSION

    return stable_hash(
        {
            "version": SAE_CACHE_VERSION,
            "trainer": TRAINER_VERSION,
            "train": sc.train.model_dump(mode="json") if sc.train else None,
            "layer": layer,
            "activations": act_key,
            "data": [(p.dataset.content_hash, split_hash(p.normal)) for p in prepared],
            "torch": torch.__version__,  # training numbers can change with it
        },
        length=24,
    )


def train_saes(
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
    from saelab.sae import load_sae, save_trained, train_sae

    todo = []
    for sc, layer in missing:
        folder = cache_root / "saes" / train_keys[(sc.id, layer)]
        if (folder / "cfg.json").is_file():
            try:
                saes[(sc.id, layer)] = load_sae(folder, device=str(handle.device)).eval()
                touch(folder / "cfg.json")
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
        log.info(
            "training %s SAE %s for layer %d: %d tokens, d_sae %d",
            tc.architecture,
            sc.id,
            layer,
            data.shape[0],
            tc.resolved_d_sae(handle.d_model),
        )
        work = folder.with_name(folder.name + ".work")  # checkpoints: a killed run resumes
        with timer("saes"):
            result = train_sae(
                data,
                tc,
                device=str(handle.device),
                work_dir=work,
                progress=progress,
                metadata={
                    "hook_name": hook_name(layer),
                    "model_name": cfg.model.name,
                    "saelab_sae_id": sc.id,
                },
            )
            save_trained(result, folder, work)
        stats = result.stats
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
