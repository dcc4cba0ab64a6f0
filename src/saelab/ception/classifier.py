"""The classifier SAE-ception fine-tunes: any ``transformers`` model with a linear head on the
pooled output of one block, its fine-tuning loop, and batched inference.

- **Representation** ``h``: the residual stream after block ``layer`` (``blocks.L.hook_resid_post``,
  the forward pass stops there), pooled at the last real token for decoders (what
  ``GPT2ForSequenceClassification`` reads; the SAE-ception v2 code read position -1, a pad token
  under right padding) or as the mean over real tokens for encoders (sentence-transformers' mean
  pooling). The head reads ``h`` through dropout; the SAE is trained on the same ``h``, and
  ``L_aux`` pulls the same ``h``.
- **Fine-tuning**: AdamW (no decay on biases and norm weights: parameters with one dimension),
  linear warm-up then linear decay to 0, gradient clipping, gradient accumulation, optional
  gradient checkpointing, only the last ``train_blocks`` blocks up to ``layer`` (and the head)
  trained; the epoch with the best validation accuracy is kept (first maximum), nothing else
  is looked at. ``L = CE + lambda * L_aux`` with ``L_aux = mean_i (1 - cos(h_i - o, t_i))`` over
  the batch's examples that have a target (SAE-ception, Bishka et al. 2025; target and offset
  ``o`` from :mod:`saelab.ception.sharpen`), targets looked up by dataset index so a reshuffle
  never pairs an example with another's target.
- Randomness: the head's initialisation, the batch order and dropout all come from the seed
  (dropout through a forked global generator, restored afterwards).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from saelab.activations.extract import (
    Tokenized,
    forward_kwargs,
    pad_rows,
    plan_batches,
    pool_last,
    pool_mean,
)
from saelab.activations.hooks import capture_hooks, find_blocks, run_until_captured
from saelab.activations.model import ModelHandle
from saelab.errors import ConfigError, ModelError
from saelab.sae.training.config import lr_factor

log = logging.getLogger(__name__)

HEAD_PREFIX = "head."


@dataclass
class EncodedSplit:
    """Tokenised texts of one split and their labels.

    Attributes:
        tokens: the texts' token ids (:class:`saelab.activations.extract.Tokenized`).
        labels: ``[N]`` int64 class of each text.
        rows: ``[N]`` the rows of the dataset the texts came from.
    """

    tokens: Tokenized
    labels: torch.Tensor
    rows: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class AuxTargets:
    """Targets of the auxiliary loss, one per training example (by index into the split).

    Attributes:
        vectors: ``[N, d]`` target directions ``t_i``.
        valid: ``[N]`` bool; examples without a target (an empty sharpened code) are left out of
            ``L_aux``.
        offset: ``[d]`` subtracted from ``h`` before the cosine (the SAE's decoder bias).
    """

    vectors: torch.Tensor
    valid: torch.Tensor
    offset: torch.Tensor


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` did: per-epoch validation accuracy, the kept epoch, mean losses of
    the kept epoch, optimiser steps and seconds."""

    val_accuracy: list[float]
    best_epoch: int
    ce_loss: float
    aux_loss: float
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


class Classifier(nn.Module):
    """A model's pooled block-``layer`` output -> dropout -> linear head over ``n_classes``."""

    def __init__(
        self,
        handle: ModelHandle,
        n_classes: int,
        layer: int,
        pooling: str,
        dropout: float,
        seed: int,
        autocast: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.autocast = autocast
        if pooling not in ("last", "mean"):
            raise ConfigError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.handle = handle
        self.backbone = handle.model
        self.blocks = find_blocks(handle.model)
        self.layer = handle.check_layer(layer)
        self.pooling = pooling
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(handle.d_model, n_classes).to(handle.device)
        self.reset_head(seed)
        self._kwargs = forward_kwargs(handle.model)

    def reset_head(self, seed: int) -> None:
        """Initialise the head as ``nn.Linear`` does (uniform +-1/sqrt(d)), from ``seed``."""
        gen = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / math.sqrt(self.head.in_features)
        with torch.no_grad():
            w = torch.rand(self.head.weight.shape, generator=gen) * 2 * bound - bound
            b = torch.rand(self.head.bias.shape, generator=gen) * 2 * bound - bound
            self.head.weight.copy_(w)
            self.head.bias.copy_(b)

    def represent(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled output of block ``layer``: ``[B, S]`` ids and bool mask -> ``[B, d]`` float32."""
        hidden = self.hidden(input_ids, mask)
        pool = pool_last if self.pooling == "last" else pool_mean
        return pool(hidden, mask.to(hidden.device)).float()

    def hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Residual stream after block ``layer``, ``[B, S, d]`` (the forward stops there)."""
        device = self.handle.device
        with self.autocast_context(), capture_hooks(self.blocks, [self.layer]) as got:
            run_until_captured(
                self.backbone,
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device, torch.long),
                **self._kwargs,
            )
        if self.layer not in got:
            raise ModelError(f"block {self.layer} of {self.handle.name} did not run")
        return got[self.layer]

    def autocast_context(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in the configured dtype over float32 weights (or nothing)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.handle.device.type, dtype=self.autocast)

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, C], h [B, d])``."""
        h = self.represent(input_ids, mask)
        return self.head(self.drop(h)), h


# ----- which parameters train ---------------------------------------------------------------------
def upstream_parameters(clf: Classifier) -> list[str]:
    """Names of the backbone parameters that ``h`` depends on (embeddings and blocks up to
    ``layer``), found by one backward pass of a two-token input, so no per-architecture list of
    embedding modules is needed."""
    params = dict(clf.backbone.named_parameters())
    previous = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        tok = clf.handle.tokenizer
        ids = [i for i in (tok.bos_token_id, tok.cls_token_id, tok.eos_token_id) if i is not None]
        ids = [*ids, 0, 1][:2]
        input_ids = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        with torch.enable_grad():
            clf.represent(input_ids, mask).sum().backward()
        names = [n for n, p in params.items() if p.grad is not None]
    finally:
        for n, p in params.items():
            p.grad = None
            p.requires_grad_(previous[n])
    return names


def trainable_names(clf: Classifier, train_blocks: int | None) -> list[str]:
    """Backbone parameters fine-tuning changes: those of the last ``train_blocks`` blocks up to
    ``layer``; with None every parameter ``h`` depends on (embeddings included)."""
    upstream = upstream_parameters(clf)
    if train_blocks is None:
        return upstream
    first = max(0, clf.layer - train_blocks + 1)
    block_ids = {
        id(p) for block in list(clf.blocks)[first : clf.layer + 1] for p in block.parameters()
    }
    params = dict(clf.backbone.named_parameters())
    return [n for n in upstream if id(params[n]) in block_ids]


class TrainableState:
    """The tensors fine-tuning changes (named backbone parameters and the head), to snapshot,
    restore and save without touching the frozen rest of the model."""

    def __init__(self, clf: Classifier, names: list[str]) -> None:
        self.clf = clf
        params = dict(clf.backbone.named_parameters())
        self.params: dict[str, nn.Parameter] = {n: params[n] for n in names}
        for n, p in clf.head.named_parameters():
            self.params[HEAD_PREFIX + n] = p
        self.names = list(self.params)
        for p in clf.backbone.parameters():
            p.requires_grad_(False)
        for p in self.params.values():
            p.requires_grad_(True)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of every trainable tensor."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}

    def load(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy ``tensors`` into the parameters; names and shapes must match exactly."""
        missing = sorted(set(self.params) - set(tensors))
        extra = sorted(set(tensors) - set(self.params))
        if missing or extra:
            raise ConfigError(
                f"{source}: classifier tensors do not match the config (missing {missing[:5]}, "
                f"unexpected {extra[:5]})"
            )
        with torch.no_grad():
            for n, p in self.params.items():
                t = tensors[n]
                if tuple(t.shape) != tuple(p.shape):
                    raise ConfigError(
                        f"{source}: tensor {n} has shape {tuple(t.shape)}, expected "
                        f"{tuple(p.shape)}"
                    )
                p.copy_(t.to(p.device, p.dtype))


# ----- batches ------------------------------------------------------------------------------------
def _pad_id(handle: ModelHandle) -> int:
    pad = handle.tokenizer.pad_token_id
    return 0 if pad is None else int(pad)


def batch_inputs(
    handle: ModelHandle, split: EncodedSplit, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, mask)`` of ``rows`` of ``split``."""
    ids, mask, _ = pad_rows(split.tokens, rows, _pad_id(handle))
    return ids, mask


@torch.no_grad()
def encode_split(
    clf: Classifier,
    split: EncodedSplit,
    batch_size: int,
    token_rows: bool = False,
    special: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``h`` of every text ``[N, d]`` (eval mode, length-sorted batches, input order restored),
    and with ``token_rows`` the block output at every real non-special token ``[T, d]``
    (``special``: ids of special tokens)."""
    was_training = clf.training
    clf.eval()
    try:
        tok = split.tokens
        n, d = len(split), clf.handle.d_model
        pooled = torch.empty(n, d, dtype=torch.float32)
        tokens: list[torch.Tensor] = []
        order = torch.argsort(tok.lengths, descending=True, stable=True)
        for start, end in plan_batches(tok.lengths[order], batch_size):
            rows = order[start:end]
            ids, mask = batch_inputs(clf.handle, split, rows)
            hidden = clf.hidden(ids, mask)
            pool = pool_last if clf.pooling == "last" else pool_mean
            pooled[rows] = pool(hidden, mask.to(hidden.device)).float().cpu()
            if token_rows:
                keep = mask if special is None else mask & ~torch.isin(ids, special)
                tokens.append(hidden[keep.to(hidden.device)].float().cpu())
        return pooled, (torch.cat(tokens) if token_rows else None)
    finally:
        clf.train(was_training)


@torch.no_grad()
def predict(clf: Classifier, h: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``[N]`` from representations ``h`` (head without dropout)."""
    logits = clf.head(h.to(clf.head.weight.device, clf.head.weight.dtype))
    return logits.argmax(dim=1).cpu()


def accuracy(clf: Classifier, split: EncodedSplit, batch_size: int) -> float:
    """Share of ``split`` the classifier labels correctly."""
    h, _ = encode_split(clf, split, batch_size)
    return float((predict(clf, h) == split.labels).double().mean())


# ----- fine-tuning --------------------------------------------------------------------------------
def _param_groups(
    state: TrainableState, lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, Any]]:
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in state.params.items():
        key = (name.startswith(HEAD_PREFIX), p.ndim >= 2)
        groups.setdefault(key, []).append(p)
    return [
        {
            "params": ps,
            "lr": head_lr if is_head else lr,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (is_head, decays), ps in sorted(groups.items())
    ]


@contextlib.contextmanager
def _checkpointing(clf: Classifier, enabled: bool):
    """HF gradient checkpointing on the backbone for the duration of training."""
    if not enabled:
        yield
        return
    model = clf.backbone
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"{clf.handle.name} does not support gradient checkpointing; set "
            "classifier.gradient_checkpointing: false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    try:
        yield
    finally:
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()


def fine_tune(
    clf: Classifier,
    state: TrainableState,
    train: EncodedSplit,
    val: EncodedSplit,
    cfg: Any,
    epochs: int,
    seed: int,
    targets: AuxTargets | None = None,
    lambda_aux: float = 0.0,
    eval_batch_size: int = 64,
    progress: bool = True,
    desc: str = "fine-tune",
) -> FineTuneResult:
    """Fine-tune ``clf`` (its ``state`` tensors) for ``epochs`` epochs; keep the best validation
    epoch (module docstring). ``cfg`` is a :class:`saelab.config.ClassifierConfig`."""
    t0 = time.perf_counter()
    n = len(train)
    if targets is not None and tuple(targets.vectors.shape) != (n, clf.handle.d_model):
        raise ConfigError(
            f"aux targets have shape {tuple(targets.vectors.shape)}, expected "
            f"({n}, {clf.handle.d_model})"
        )
    use_aux = targets is not None and lambda_aux > 0
    batch, micro = cfg.batch_size, cfg.batch_size // cfg.grad_accumulation
    per_epoch = math.ceil(n / batch)
    total = per_epoch * epochs
    warmup = round(cfg.warmup_fraction * total)
    opt = torch.optim.AdamW(
        _param_groups(state, cfg.lr, cfg.head_lr, cfg.weight_decay), betas=(0.9, 0.999), eps=1e-8
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, total - warmup)
    )
    gen = torch.Generator().manual_seed(int(seed))
    device = clf.handle.device
    labels = train.labels.to(device)
    if use_aux:
        assert targets is not None
        t_vec = targets.vectors.to(device, torch.float32)
        t_valid = targets.valid.to(device)
        offset = targets.offset.to(device, torch.float32)
    params = list(state.params.values())
    val_acc: list[float] = []
    history: list[dict[str, float]] = []
    best, best_state, best_epoch = -1.0, state.snapshot(), -1
    step = 0
    bar = tqdm(total=total, desc=desc, unit="step", disable=None if progress else True, leave=False)
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), _checkpointing(clf, cfg.gradient_checkpointing):
        torch.manual_seed(int(seed))
        for epoch in range(epochs):
            clf.train()
            order = torch.randperm(n, generator=gen)
            ce_sum = aux_sum = 0.0
            aux_n = 0
            for start in range(0, n, batch):
                rows = order[start : start + batch]
                opt.zero_grad(set_to_none=True)
                n_valid = int(t_valid[rows.to(device)].sum()) if use_aux else 0
                for m in range(0, len(rows), micro):
                    part = rows[m : m + micro]
                    ids, mask = batch_inputs(clf.handle, train, part)
                    logits, h = clf(ids, mask)
                    part_dev = part.to(device)
                    ce = F.cross_entropy(logits.float(), labels[part_dev], reduction="sum")
                    loss = ce / len(rows)
                    ce_sum += float(ce.detach())
                    if use_aux and n_valid:
                        ok = t_valid[part_dev]
                        if bool(ok.any()):
                            cos = F.cosine_similarity(
                                h[ok] - offset, t_vec[part_dev][ok], dim=1, eps=1e-8
                            )
                            aux = (1.0 - cos).sum()
                            loss = loss + lambda_aux * aux / n_valid
                            aux_sum += float(aux.detach())
                            aux_n += int(ok.sum())
                    loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
            acc = accuracy(clf, val, eval_batch_size)
            val_acc.append(acc)
            history.append(
                {
                    "epoch": epoch,
                    "val_accuracy": acc,
                    "ce_loss": ce_sum / n,
                    "aux_loss": aux_sum / aux_n if aux_n else float("nan"),
                }
            )
            if acc > best:
                best, best_state, best_epoch = acc, state.snapshot(), epoch
    bar.close()
    state.load(best_state, "best epoch")
    clf.eval()
    kept = history[best_epoch]
    log.info(
        "%s: val accuracy %s, kept epoch %d (%.1fs)",
        desc, ", ".join(f"{a:.4f}" for a in val_acc), best_epoch, time.perf_counter() - t0,
    )  # fmt: skip
    return FineTuneResult(
        val_accuracy=val_acc,
        best_epoch=best_epoch,
        ce_loss=kept["ce_loss"],
        aux_loss=kept["aux_loss"],
        steps=step,
        seconds=time.perf_counter() - t0,
        history=copy.deepcopy(history),
    )


@torch.no_grad()
def lm_perplexity(clf: Classifier, split: EncodedSplit, max_rows: int, batch_size: int) -> float:
    """Perplexity of the fine-tuned model's own LM head on the first ``max_rows`` texts of
    ``split``: ``exp(sum NLL / predicted tokens)`` with logits at position ``t`` scored against
    the token at ``t + 1`` (:func:`saelab.ception.metrics.shifted_nll`); NaN (not applicable)
    when the checkpoint has no causal-LM head (encoders, base-model checkpoints)."""
    from saelab.ception.metrics import perplexity_from, shifted_nll

    handle = clf.handle
    if not handle.has_lm_head:
        return float("nan")
    was_training = clf.training
    clf.eval()
    try:
        n = min(max_rows, len(split))
        order = torch.argsort(split.tokens.lengths[:n], descending=True, stable=True)
        nll, count = 0.0, 0
        for start, end in plan_batches(split.tokens.lengths[order], batch_size):
            ids, mask = batch_inputs(handle, split, order[start:end])
            with clf.autocast_context():
                logits = handle.model(
                    input_ids=ids.to(handle.device),
                    attention_mask=mask.to(handle.device, torch.long),
                    **clf._kwargs,
                ).logits
            s, k = shifted_nll(logits.float().cpu(), ids, mask.long())
            nll, count = nll + s, count + k
        return perplexity_from(nll, count)
    finally:
        clf.train(was_training)
