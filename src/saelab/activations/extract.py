"""Activations of many texts at hook points: tokenise once, sorted batches, early stop, pooling.

How the paper extracts (sae_probes_spec.md §1.5): prompts used as-is with the tokenizer's default
special tokens, truncated on the left to keep the final ``max_seq_len=1024`` tokens, padded on the
right, and read at ``blocks.{L}.hook_resid_post`` at the last real token; the forward pass stops
after the deepest hooked block. saelab does the same, and also:

- reads any hook point of ``saelab.activations.hooks`` (residual stream, attention output, MLP
  output) in the same forward pass;
- sorts texts by token length so that batches carry little padding (the paper's unsorted batches
  pay for padding, §1.5 "Volume"), then restores the input order;
- pads on the right whatever the tokenizer's ``padding_side``, so every text keeps the positions it
  has when run alone; pooling reads the attention mask, so it is right for either padding side;
- passes the attention mask (the paper passes ``input_ids`` only, harmless for causal models with
  right padding but wrong for bidirectional encoders);
- mean pooling leaves out special tokens (BOS, CLS, SEP, EOS, PAD, ...) unless asked to keep
  them, as SAE training leaves them out, so the baselines and the SAE probes average the same
  tokens; a text made only of special tokens keeps them all (its mean is never empty).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from saelab.activations.hooks import (
    HookKey,
    HookKind,
    capture_hooks,
    find_blocks,
    hook_key,
    hook_name,
    run_until_captured,
)
from saelab.activations.model import ModelHandle
from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, DatasetError, ModelError

log = logging.getLogger(__name__)

Pooling = Literal["last", "mean"]
TruncationSide = Literal["left", "right"]
MAX_LENGTH_CAP = 1024  # the paper's max_seq_len (sae_probes_spec.md §1.5)
_TOKENIZER_NO_LIMIT = 1_000_000  # transformers uses ~1e30 for "no model_max_length"


def resolve_max_length(handle: ModelHandle, max_length: int | None) -> int:
    """Token limit per text: ``max_length`` if given, else ``min(1024, model limit)``.

    The model limit is the config's positions (``max_position_embeddings``/``n_positions``) and the
    tokenizer's ``model_max_length`` when set. An explicit value above it is a ModelError.
    """
    limits = [handle.max_positions]
    tok_limit = getattr(handle.tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < _TOKENIZER_NO_LIMIT:
        limits.append(tok_limit)
    known = [x for x in limits if x is not None and x > 0]
    model_limit = min(known) if known else None
    if max_length is None:
        return min([MAX_LENGTH_CAP, *known])
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"max_length must be a positive int, got {max_length!r}")
    if model_limit is not None and max_length > model_limit:
        raise ModelError(
            f"max_length {max_length} exceeds what {handle.name} accepts ({model_limit} tokens)"
        )
    return max_length


def pool_last(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last real token: ``[B, S, d]``, mask ``[B, S]`` -> ``[B, d]``.

    The last real position is the largest index with ``mask == 1``, so left and right padding
    both work (sae_probes_spec.md §1.5: position ``len - 1`` of the unpadded text).
    """
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (mask.to(torch.long) * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pool_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked tokens in float32, ``sum_t m_t h_t / sum_t m_t``: ``[B, S, d]`` ->
    ``[B, d]`` (a row with no masked token gives 0).

    With the attention mask this is sentence-transformers' mean pooling (special tokens
    included); :func:`extract` passes the mask of the tokens to average (:func:`mean_mask`).
    """
    weights = mask.to(torch.float32)
    summed = torch.bmm(weights.unsqueeze(1), hidden.to(torch.float32)).squeeze(1)
    return summed / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


_POOLERS = {"last": pool_last, "mean": pool_mean}


def mean_mask(
    mask: torch.Tensor, special: torch.Tensor, include_special_tokens: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens mean pooling averages, and which rows fell back to all of their tokens.

    ``mask`` ``[B, S]`` bool (real tokens), ``special`` ``[B, S]`` bool (special tokens). Without
    ``include_special_tokens`` the kept tokens are ``mask & ~special``; a row whose real tokens are
    all special keeps them all (``fallback[i]`` True), so its mean is never empty.
    Returns ``(keep [B, S] bool, fallback [B] bool)``.
    """
    if include_special_tokens:
        return mask, torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    keep = mask & ~special
    fallback = ~keep.any(dim=1)
    keep = torch.where(fallback.unsqueeze(1), mask, keep)
    return keep, fallback


@dataclass
class Tokenized:
    """Token ids of N texts, concatenated in input order.

    Attributes:
        ids: ``[T]`` int64, the tokens of text ``i`` are ``ids[offsets[i]:offsets[i+1]]``.
        lengths: ``[N]`` int64 tokens per text (after truncation, special tokens included).
        offsets: ``[N + 1]`` int64, exclusive prefix sums of ``lengths``.
    """

    ids: torch.Tensor
    lengths: torch.Tensor
    offsets: torch.Tensor


def tokenize(
    tokenizer: object, texts: Sequence[str], max_length: int, truncation_side: TruncationSide
) -> Tokenized:
    """Tokenise all texts in one call (default special tokens, truncated on ``truncation_side``)."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DatasetError(f"text row {i} is {type(text).__name__}, expected str")
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = truncation_side
    try:
        encoded = tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
    finally:
        tokenizer.truncation_side = previous
    lengths = torch.from_numpy(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
    total = int(lengths.sum())
    ids = torch.from_numpy(
        np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=total)
    )
    offsets = torch.zeros(len(encoded) + 1, dtype=torch.long)
    torch.cumsum(lengths, 0, out=offsets[1:])
    empty = torch.nonzero(lengths == 0).flatten().tolist()
    if empty:
        raise DatasetError(
            f"{len(empty)} text(s) have no tokens (rows {empty[:10]}); every text needs at least "
            "one token"
        )
    return Tokenized(ids=ids, lengths=lengths, offsets=offsets)


def plan_batches(sorted_lengths: torch.Tensor, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` slices of the length-sorted rows, ``batch_size`` rows each."""
    n = int(sorted_lengths.shape[0])
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def pad_rows(
    tok: Tokenized, rows: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` ``[B, S]`` of the texts ``rows`` (``S`` = their longest), the
    real-token mask ``[B, S]`` bool, and each position's index into ``tok.ids`` ``[B, S]``
    (clamped at padding)."""
    lens = tok.lengths[rows]
    positions = torch.arange(int(lens.max()))
    mask = positions.unsqueeze(0) < lens.unsqueeze(1)
    src = (tok.offsets[rows].unsqueeze(1) + positions.unsqueeze(0)).clamp_(
        max=int(tok.offsets[-1]) - 1
    )
    return torch.where(mask, tok.ids[src], pad_id), mask, src


def special_token_ids(tokenizer: object) -> torch.Tensor:
    """Ids of the tokenizer's special tokens (BOS, EOS, CLS, SEP, PAD, MASK, added specials).

    The unknown-word token is left out: it stands for real text, not structure.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    return torch.tensor(sorted(ids - {unk}), dtype=torch.long)


def forward_kwargs(model: torch.nn.Module) -> dict[str, object]:
    """``use_cache=False`` when the model's forward takes it: no KV cache is built."""
    params = inspect.signature(model.forward).parameters
    kwargs: dict[str, object] = {}
    if "use_cache" in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs["use_cache"] = False
    return kwargs


def resolve_hooks(handle: ModelHandle, layers: Sequence[int | str]) -> list[tuple[int, HookKind]]:
    """The distinct ``(layer, kind)`` of layers / hook names, in range, in forward order (by
    layer; in a block attn_out, mlp_out, then resid_post)."""
    order = ("attn_out", "mlp_out", "resid_post")
    return sorted({handle.check_hook(h) for h in layers}, key=lambda p: (p[0], order.index(p[1])))


def extract(
    handle: ModelHandle,
    texts: Sequence[str],
    layers: Sequence[int | str],
    pooling: Pooling,
    max_length: int | None = None,
    batch_size: int = 32,
    keep_tokens: bool = False,
    truncation_side: TruncationSide = "left",
    progress: bool = True,
    include_special_tokens: bool = False,
) -> dict[HookKey, LayerActivations]:
    """Activations at each hook point of ``layers`` for every text, pooled per text.

    ``layers`` holds layers (the residual stream after that block) and hook names of any kind
    (``blocks.L.hook_mlp_out``, ``blocks.L.hook_attn_out``; see ``saelab.activations.hooks``).
    Returns ``{hook_key: LayerActivations}`` (the layer for the residual stream, the hook name
    otherwise) in input order, float32 on CPU: ``pooled [N, d_model]``; with ``keep_tokens`` also
    ``tokens [T, d_model]`` (every real token), ``offsets [N + 1]`` and ``special [T]`` (True for
    the tokenizer's special tokens: BOS, CLS, SEP, EOS, ...). ``pooling="last"`` reads the last
    real token (special or not, as the paper); ``"mean"`` averages the non-special tokens, or every
    token with ``include_special_tokens`` (see :func:`mean_mask`). The forward pass stops after the
    deepest requested block (sae_probes_spec.md §1.5).
    """
    if pooling not in _POOLERS:
        raise ConfigError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    if truncation_side not in ("left", "right"):
        raise ConfigError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    points = resolve_hooks(handle, layers)
    if not points:
        raise ConfigError("no layers requested")
    wanted = [hook_key(layer, kind) for layer, kind in points]
    limit = resolve_max_length(handle, max_length)
    n, d = len(texts), handle.d_model
    if n == 0:
        empty = LayerActivations(pooled=torch.zeros(0, d))
        if keep_tokens:
            empty = LayerActivations(
                pooled=empty.pooled,
                tokens=torch.zeros(0, d),
                offsets=torch.zeros(1, dtype=torch.long),
                special=torch.zeros(0, dtype=torch.bool),
            )
        return {key: empty for key in wanted}

    tok = tokenize(handle.tokenizer, texts, limit, truncation_side)
    special = torch.isin(tok.ids, special_token_ids(handle.tokenizer))
    order = torch.argsort(tok.lengths, descending=True, stable=True)
    batches = plan_batches(tok.lengths[order], batch_size)
    pad_id = handle.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    total_tokens = int(tok.offsets[-1])
    pooled = {key: torch.empty(n, d, dtype=torch.float32) for key in wanted}
    tokens = (
        {key: torch.empty(total_tokens, d, dtype=torch.float32) for key in wanted}
        if keep_tokens
        else {}
    )
    pool = _POOLERS[pooling]
    model, device = handle.model, handle.device
    kwargs = forward_kwargs(model)
    blocks = find_blocks(model)
    names = [hook_name(layer, kind) for layer, kind in points]
    fallback_rows: list[torch.Tensor] = []

    started = time.perf_counter()
    done_tokens = 0
    bar = tqdm(
        total=len(batches), desc=f"extract {handle.name}", unit="batch", disable=not progress
    )
    with torch.inference_mode(), capture_hooks(blocks, names) as captured:
        for start, end in batches:
            rows = order[start:end]
            lens = tok.lengths[rows]
            width = int(lens.max())
            input_ids, mask, src = pad_rows(tok, rows, pad_id)
            mask_dev = mask.to(device)
            pool_mask = mask_dev
            if pooling == "mean":
                keep, fallback = mean_mask(mask, special[src] & mask, include_special_tokens)
                pool_mask = keep.to(device)
                if fallback.any():
                    fallback_rows.append(rows[fallback])
            captured.clear()
            run_until_captured(
                model,
                input_ids=input_ids.to(device),
                attention_mask=mask_dev.to(torch.long),
                **kwargs,
            )
            missing = [name for name, key in zip(names, wanted, strict=True) if key not in captured]
            if missing:
                raise ModelError(
                    f"hooks {missing} of {handle.name} did not run in the forward pass"
                )
            if keep_tokens:
                batch_starts = torch.cumsum(lens, 0) - lens
                dest = torch.arange(int(lens.sum())) + torch.repeat_interleave(
                    tok.offsets[rows] - batch_starts, lens
                )
            for key, name in zip(wanted, names, strict=True):
                hidden = captured[key]
                if tuple(hidden.shape) != (len(rows), width, d):
                    raise ModelError(
                        f"{name} of {handle.name} has shape {tuple(hidden.shape)}, expected "
                        f"[batch, tokens, d_model] = {(len(rows), width, d)}"
                    )
                pooled[key][rows] = pool(hidden, pool_mask).to("cpu", torch.float32)
                if keep_tokens:
                    tokens[key][dest] = hidden[mask_dev].to("cpu", torch.float32)
            done_tokens += int(lens.sum())
            bar.update(1)
            bar.set_postfix(
                tok_s=f"{done_tokens / (time.perf_counter() - started):.0f}", refresh=False
            )
    bar.close()
    seconds = time.perf_counter() - started
    log.info(
        "extracted %d texts (%d tokens) at %s of %s in %.1f s (%.0f tokens/s)",
        n,
        total_tokens,
        names,
        handle.name,
        seconds,
        total_tokens / max(seconds, 1e-9),
    )
    if fallback_rows:
        rows_all = torch.cat(fallback_rows).sort().values.tolist()
        log.debug(
            "%d text(s) are made only of special tokens (rows %s%s): their mean pooling keeps them",
            len(rows_all),
            rows_all[:10],
            " ..." if len(rows_all) > 10 else "",
        )

    if not keep_tokens:
        return {key: LayerActivations(pooled=pooled[key]) for key in wanted}
    return {
        key: LayerActivations(
            pooled=pooled[key], tokens=tokens[key], offsets=tok.offsets.clone(), special=special
        )
        for key in wanted
    }
