"""Downstream fidelity of an SAE: splice its reconstruction into the model's forward pass.

Each batch of texts runs three times: clean, with the hook value replaced by the SAE's
reconstruction ``x^ = sae.decode(*sae.encode_with_state(x))`` (in the input's units), and with it
zero-ablated (``x^ = 0``), through :func:`saelab.activations.hooks.replace_hook`, which replaces
exactly the value :func:`~saelab.activations.hooks.capture_hooks` captures (the activation the SAE
was trained on; for ``attn_out`` / ``mlp_out`` of Gemma-2 the output of its post-norm).

Positions. Texts are tokenised with the tokenizer's default special tokens, truncated on the right
to ``max_length`` (default ``min(1024, model limit)``) and padded on the right, one batch of
similar lengths at a time. The *spliced* positions are the real (unpadded) tokens that are not
special tokens (:func:`saelab.activations.extract.special_token_ids`: BOS, EOS, CLS, SEP, PAD, ...),
or every real token with ``include_special_tokens``. The SAE and the zero ablation replace the
value at exactly the spliced positions; every other position keeps its clean value.

Causal LMs (``handle.has_lm_head``; load with ``load_model(..., lm_head=True)``), with
``p^m_t = softmax(logits_t)`` of run ``m`` in {clean, sae, zero} and ``x_t`` the token at ``t``::

    CE_m = mean_{t in C} -log p^m_t(x_{t+1})
    KL_m = mean_{t in S} sum_v p^clean_t(v) (log p^clean_t(v) - log p^m_t(v))
    ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean)
    kl_div_score  = (KL_zero - KL_sae) / KL_zero

``S`` is the set of spliced positions of all texts, ``C`` those of them whose next token belongs to
the same text (``t < len - 1``; the target may itself be special, e.g. a final EOS). The means run
over all tokens of all texts first; the ratios are taken last. Keys (SAELens names):
``ce_loss_without_sae`` (CE_clean), ``ce_loss_with_sae``, ``ce_loss_with_ablation``,
``ce_loss_score``, ``kl_div_with_sae``, ``kl_div_with_ablation``, ``kl_div_score``, and the counts
``n_tokens`` (|S|), ``n_ce_tokens`` (|C|), ``n_texts`` (texts with a spliced position).

Beside the peers: SAELens ``sae_lens/evals.py`` (``get_recons_loss``,
``get_downstream_reconstruction_metrics``) and SAEBench ``sae_bench/evals/core/main.py`` (same
names) take TransformerLens' per-token loss ``[B, S-1]`` (term ``t`` predicts ``x_{t+1}``) and the
KL ``[B, S]``, drop the terms whose *input* token ``x_t`` is an ignored token (SAELens
``get_special_token_ids``; SAEBench pad, eos, bos), concatenate all batches, average, then form the
same two ratios: the same ``C`` and ``S`` as here, on their unpadded context windows. They differ in
what is replaced: SAELens splices the SAE at the non-ignored positions only (as saelab), SAEBench by
default (``exclude_special_tokens_from_reconstruction=False``) at every position, BOS included; both
zero-ablate *every* position, BOS included. saelab ablates the positions the SAE replaces, so the
score compares the SAE with removing the same information; zeroing the BOS residual as well raises
CE_zero (attention sinks) and with it the peers' scores. SAEBench's KL takes ``log(softmax)``;
saelab and SAELens use ``log_softmax``.

Encoders without an LM head (MiniLM, BERT; any handle without ``has_lm_head``): the pooled output
embedding ``e = sum_t m_t h_t / sum_t m_t`` of the last hidden state ``h`` over the attention mask
``m`` (special tokens included), as sentence-transformers pools all-MiniLM-L6-v2 (its final L2
normalisation leaves cosines unchanged)::

    pooled_cossim_sae  = mean_i cos(e_i^clean, e_i^sae)
    pooled_cossim_zero = mean_i cos(e_i^clean, e_i^zero)
    pooled_cossim_score = (pooled_cossim_sae - pooled_cossim_zero) / (1 - pooled_cossim_zero)

over the texts ``i`` with at least one spliced position (``n_texts``; ``n_tokens`` = |S|).
A metric whose mean has no term or whose ratio has a zero denominator is left out of the result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saelab.activations.extract import (
    forward_kwargs,
    plan_batches,
    pool_mean,
    resolve_max_length,
    special_token_ids,
    tokenize,
)
from saelab.activations.hooks import HookReplacement, find_blocks, replace_hook
from saelab.activations.model import ModelHandle
from saelab.errors import ConfigError, ModelError
from saelab.sae.base import SAE

log = logging.getLogger(__name__)

#: Entries of the dense ``[rows, d_sae]`` code block computed at a time (64 MB in float32).
_BLOCK_ELEMENTS = 1 << 24


@torch.no_grad()
def reconstruct(sae: SAE, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction in the input's units, ``decode(f, norm_state)`` with ``f, state``
    from ``encode_with_state`` (``encode_texts`` for sequence-level SAEs).

    Args:
        x: ``[T, d_in]`` tokens of several texts, text ``i`` being ``x[offsets[i]:offsets[i+1]]``.
        offsets: ``[n + 1]`` int64 text boundaries.

    Returns:
        ``[T, d_in]`` on ``x``'s device, in the SAE's dtype; codes are computed in blocks of
        whole texts of about ``2**24 / d_sae`` tokens.
    """
    device = x.device
    x = x.to(sae.device, sae.dtype)
    out = torch.empty_like(x)
    rows = max(1, _BLOCK_ELEMENTS // sae.d_sae)
    sequence_level = getattr(sae, "sequence_level", False)
    bounds = [int(b) for b in offsets]
    start = 0
    while start < x.shape[0]:
        stop = min(start + rows, x.shape[0])
        if sequence_level:  # end the block on a text boundary
            stop = next((b for b in bounds if b >= stop), x.shape[0])
        chunk = x[start:stop]
        if sequence_level:
            local = torch.tensor([b - start for b in bounds if start <= b <= stop])
            _, state = sae.preprocess(chunk)
            f = sae.encode_texts(chunk, local)
        else:
            f, state = sae.encode_with_state(chunk)
        out[start:stop] = sae.decode(f, state)
        start = stop
    return out.to(device)


def _check_args(handle: ModelHandle, sae: SAE, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if sae.d_in != handle.d_model:
        raise ConfigError(
            f"the SAE reads d_in = {sae.d_in} but {handle.name} has d_model {handle.d_model}"
        )


def _ratio(num: float, den: float) -> float | None:
    return num / den if den != 0 and math.isfinite(num / den) else None


@torch.no_grad()
def splice_fidelity(
    handle: ModelHandle,
    sae: SAE,
    hook: int | str,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    include_special_tokens: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Downstream fidelity of ``sae`` spliced in at ``hook`` over ``texts`` (module docstring).

    CE and KL scores for a handle with an LM head, pooled-embedding cosine scores otherwise; the
    counts ``n_tokens`` and ``n_texts`` always. Metrics that cannot be computed are absent.
    """
    return splice_fidelity_many(
        handle,
        {"sae": sae},
        hook,
        texts,
        batch_size=batch_size,
        max_length=max_length,
        include_special_tokens=include_special_tokens,
        progress=progress,
    )["sae"]


@torch.no_grad()
def splice_fidelity_many(
    handle: ModelHandle,
    saes: Mapping[str, SAE],
    hook: int | str,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    include_special_tokens: bool = False,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """:func:`splice_fidelity` of several SAEs at the same hook, keyed like ``saes``: the clean
    and the zero-ablated passes do not depend on the SAE, so each batch runs them once and then
    one pass per SAE (``2 + len(saes)`` forward passes instead of ``3 * len(saes)``)."""
    for sae in saes.values():
        _check_args(handle, sae, batch_size)
    layer, kind = handle.check_hook(hook)
    name = handle.hook_name(layer, kind)
    for sae in saes.values():
        hooked = sae.cfg.metadata.get("hook_name")
        if isinstance(hooked, str) and hooked != name:
            log.warning("SAE metadata names hook %s; splicing it in at %s", hooked, name)
    n = len(texts)
    counts: dict[str, float] = {"n_tokens": 0, "n_texts": 0}
    if handle.has_lm_head:
        counts["n_ce_tokens"] = 0
    if n == 0 or not saes:
        return {sid: dict(counts) for sid in saes}

    tok = tokenize(handle.tokenizer, texts, resolve_max_length(handle, max_length), "right")
    special = torch.isin(tok.ids, special_token_ids(handle.tokenizer))
    order = torch.argsort(tok.lengths, descending=True, stable=True)
    batches = plan_batches(tok.lengths[order], batch_size)
    pad_id = handle.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    total = int(tok.offsets[-1])
    model, device = handle.model, handle.device
    kwargs = forward_kwargs(model)
    runs = {"zero": torch.zeros_like}
    sums = {
        sid: dict.fromkeys(
            ("clean", "sae", "zero", "kl_sae", "kl_zero", "cos_sae", "cos_zero"), 0.0
        )
        for sid in saes
    }
    offsets = torch.zeros(1, dtype=torch.long)

    def sae_fn(sae: SAE) -> object:
        return lambda rows: reconstruct(sae, rows, offsets)

    def run(rep: HookReplacement, fn: object, inputs: dict[str, torch.Tensor]) -> object:
        rep.fn = fn  # type: ignore[assignment]
        before = rep.passes
        out = model(**inputs, **kwargs)
        if rep.passes == before:
            raise ModelError(f"{name} of {handle.name} did not run in the forward pass")
        return out

    started = time.perf_counter()
    bar = tqdm(total=len(batches), desc=f"splice {name}", unit="batch", disable=not progress)
    with replace_hook(find_blocks(model), name) as rep:
        for start, end in batches:
            rows = order[start:end]
            lens = tok.lengths[rows]
            positions = torch.arange(int(lens.max()))
            real = positions.unsqueeze(0) < lens.unsqueeze(1)
            src = (tok.offsets[rows].unsqueeze(1) + positions).clamp_(max=total - 1)
            input_ids = torch.where(real, tok.ids[src], pad_id)
            keep = real if include_special_tokens else real & ~special[src]
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), keep.sum(1).cumsum(0)])
            rep.positions = keep.to(device)
            inputs = {"input_ids": input_ids.to(device), "attention_mask": real.to(device).long()}
            texts_in = keep.any(dim=1)
            counts["n_tokens"] += int(keep.sum())
            counts["n_texts"] += int(texts_in.sum())
            clean = run(rep, None, inputs)
            passes = [("zero", None, runs["zero"])] + [
                ("sae", sid, sae_fn(sae)) for sid, sae in saes.items()
            ]
            if handle.has_lm_head:
                has_next = positions.unsqueeze(0) + 1 < lens.unsqueeze(1)
                ce_rows = (keep & has_next)[keep].to(device)  # [n] among the spliced positions
                targets = input_ids.roll(-1, dims=1).to(device)[rep.positions][ce_rows]
                counts["n_ce_tokens"] += int(ce_rows.sum())
                lp_clean = F.log_softmax(clean.logits[rep.positions].float(), dim=-1)
                ce_clean = _ce_sum(lp_clean[ce_rows], targets)
                for run_name, sid, fn in passes:
                    logits = run(rep, fn, inputs).logits[rep.positions]
                    lp = F.log_softmax(logits.float(), dim=-1)
                    ce = _ce_sum(lp[ce_rows], targets)
                    kl = float(F.kl_div(lp, lp_clean, reduction="sum", log_target=True))
                    for target in saes if sid is None else [sid]:
                        sums[target][run_name] += ce
                        sums[target][f"kl_{run_name}"] += kl
                for sid in saes:
                    sums[sid]["clean"] += ce_clean
            else:
                mask, texts_in = inputs["attention_mask"], texts_in.to(device)
                e_clean = pool_mean(_last_hidden(clean), mask).double()[texts_in]
                for run_name, sid, fn in passes:
                    e = pool_mean(_last_hidden(run(rep, fn, inputs)), mask).double()[texts_in]
                    cos = float(F.cosine_similarity(e_clean, e, dim=-1).sum())
                    for target in saes if sid is None else [sid]:
                        sums[target][f"cos_{run_name}"] += cos
            bar.update(1)
    bar.close()
    log.info(
        "spliced %d SAE(s) at %s of %s: %d tokens of %d texts in %.1f s",
        len(saes),
        name,
        handle.name,
        counts["n_tokens"],
        n,
        time.perf_counter() - started,
    )
    metrics = _lm_metrics if handle.has_lm_head else _pooled
    return {sid: counts | metrics(sums[sid], counts) for sid in saes}


def _ce_sum(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    """``sum_t -log p_t(target_t)``: log_probs ``[n, V]``, targets ``[n]``."""
    return -float(log_probs.gather(1, targets.unsqueeze(1)).double().sum())


def _last_hidden(output: object) -> torch.Tensor:
    """``last_hidden_state`` ``[B, S, d]`` of a base model's output."""
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None and isinstance(output, (tuple, list)):
        hidden = output[0]
    if not isinstance(hidden, torch.Tensor):
        raise ModelError(f"the model returned {type(output).__name__} without a last hidden state")
    return hidden


def _lm_metrics(sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
    """CE and KL means and scores (module docstring) from the running sums."""
    out: dict[str, float] = {}
    if counts["n_ce_tokens"]:
        ce = {k: sums[k] / counts["n_ce_tokens"] for k in ("clean", "sae", "zero")}
        out |= {
            "ce_loss_without_sae": ce["clean"],
            "ce_loss_with_sae": ce["sae"],
            "ce_loss_with_ablation": ce["zero"],
        }
        score = _ratio(ce["zero"] - ce["sae"], ce["zero"] - ce["clean"])
        if score is not None:
            out["ce_loss_score"] = score
    if counts["n_tokens"]:
        kl_sae = sums["kl_sae"] / counts["n_tokens"]
        kl_zero = sums["kl_zero"] / counts["n_tokens"]
        out |= {"kl_div_with_sae": kl_sae, "kl_div_with_ablation": kl_zero}
        score = _ratio(kl_zero - kl_sae, kl_zero)
        if score is not None:
            out["kl_div_score"] = score
    return out


def _pooled(sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
    """Pooled-embedding cosine means and score (module docstring) from the running sums."""
    if not counts["n_texts"]:
        return {}
    cos_sae = sums["cos_sae"] / counts["n_texts"]
    cos_zero = sums["cos_zero"] / counts["n_texts"]
    out = {"pooled_cossim_sae": cos_sae, "pooled_cossim_zero": cos_zero}
    score = _ratio(cos_sae - cos_zero, 1.0 - cos_zero)
    if score is not None:
        out["pooled_cossim_score"] = score
    return out
