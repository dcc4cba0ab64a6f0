"""Encode activations into sparse SAE codes for probing, in memory-bounded chunks."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, DatasetError
from saelab.sae.base import SAE

log = logging.getLogger(__name__)

Pooling = Literal["last", "mean"]
Mode = Literal["pool_codes", "code_pooled", "max_codes"]
MODES: tuple[str, ...] = ("pool_codes", "code_pooled", "max_codes")


def encode_rows(
    sae: SAE,
    acts: LayerActivations,
    pooling: Pooling,
    mode: Mode = "pool_codes",
    device: str | torch.device = "cpu",
    max_batch_elems: int = 2**26,
    progress: bool = False,
) -> sp.csr_matrix:
    """One sparse code vector per text: CSR ``[N, d_sae]`` float32 on the CPU.

    - ``pooling="last"``, or ``mode="code_pooled"`` (what sae-probes does: encode the pooled
      activation): ``code_i = encode(acts.pooled[i])``.
    - ``pooling="mean"`` with ``mode="pool_codes"`` (SAEBench's sparse-probing choice: pool the
      per-token codes): ``code_i = (1/|T_i|) sum_{t in T_i} encode(x_t)`` over the tokens of text
      ``i``, ``acts.tokens[acts.offsets[i]:acts.offsets[i+1]]``.
    - ``mode="max_codes"`` (the paper's multi-token max pooling, spec 4.5; any ``pooling``):
      ``code_ij = max_{t in T_i'} encode(x_t)_j`` over the text's non-special tokens ``T_i'``
      (all its tokens when every one is special). The paper drops BOS before pooling: BOS / CLS
      positions are attention sinks whose large codes would otherwise dominate the max. SAE codes
      are non-negative (ReLU, TopK, JumpReLU, gated), so the max starts from 0.

    Rows are encoded in chunks whose dense code block ``[rows, d_sae]`` has at most
    ``max_batch_elems`` elements (at least one row per chunk), so a 1M-wide SAE stays bounded: peak
    extra memory is a few such blocks. Only the nonzeros of each chunk are kept.

    Args:
        sae: any :class:`SAE`; moved to ``device`` in place (``nn.Module.to``) if elsewhere.
        acts: activations of one layer; ``tokens`` and ``offsets`` are needed for mean pool_codes.
        pooling: how ``acts.pooled`` was pooled (``last`` or ``mean``).
        mode: ``pool_codes`` or ``code_pooled`` (ignored for ``last``: both are the same).
        device: where the SAE runs.
        max_batch_elems: bound on the elements of one dense code block.
        progress: show a tqdm bar.
    """
    if pooling not in ("last", "mean"):
        raise ConfigError(f"key 'pooling' has value {pooling!r}; expected 'last' or 'mean'")
    if mode not in MODES:
        raise ConfigError(f"key 'code_pooling' has value {mode!r}; expected one of {list(MODES)}")
    if max_batch_elems < 1:
        raise ConfigError(f"max_batch_elems must be >= 1, got {max_batch_elems}")
    device = torch.device(device)
    if sae.device != device:
        sae.to(device)
    if acts.pooled.shape[-1] != sae.d_in:
        raise ConfigError(
            f"activations have width {acts.pooled.shape[-1]} but the SAE expects d_in={sae.d_in}"
        )
    if mode == "code_pooled" or (pooling == "last" and mode == "pool_codes"):
        return _encode_pooled(sae, acts.pooled, device, max_batch_elems, progress)
    if acts.tokens is None or acts.offsets is None:
        raise ConfigError(
            f"code pooling {mode!r} needs token-level activations (acts.tokens and acts.offsets); "
            "extract them (keep_tokens) or use the code of the pooled activation"
        )
    mean, maxed = _encode_token_poolings(
        sae,
        acts,
        device,
        max_batch_elems,
        progress,
        want_mean=mode == "pool_codes",
        want_max=mode == "max_codes",
    )
    return mean if mode == "pool_codes" else maxed


def encode_rows_multi(
    sae: SAE,
    acts: LayerActivations,
    pooling: Pooling,
    modes: list[str],
    device: str | torch.device = "cpu",
    max_batch_elems: int = 2**26,
    progress: bool = False,
) -> dict[str, sp.csr_matrix]:
    """:func:`encode_rows` for several ``modes`` at once: ``{mode: CSR [N, d_sae]}``.

    When both per-token poolings (``pool_codes`` and ``max_codes``) are asked for, every token is
    encoded once and both poolings are taken from the same codes (the result equals two separate
    :func:`encode_rows` calls); other modes are encoded on their own.
    """
    out: dict[str, sp.csr_matrix] = {}
    shared = {"pool_codes", "max_codes"} <= set(modes) and pooling == "mean"
    if shared:
        if acts.tokens is None or acts.offsets is None:
            raise ConfigError(
                "code poolings 'pool_codes' and 'max_codes' need token-level activations"
            )
        device = torch.device(device)
        if sae.device != device:
            sae.to(device)
        mean, maxed = _encode_token_poolings(sae, acts, device, max_batch_elems, progress)
        out.update(pool_codes=mean, max_codes=maxed)
    for mode in modes:
        if mode not in out:
            out[mode] = encode_rows(
                sae,
                acts,
                pooling,
                mode,
                device,
                max_batch_elems,
                progress,  # type: ignore[arg-type]
            )
    return out


def _rows_per_chunk(d_sae: int, max_batch_elems: int) -> int:
    return max(1, max_batch_elems // d_sae)


def _to_csr(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], shape: tuple[int, int]
) -> sp.csr_matrix:
    """COO pieces -> canonical CSR float32 (duplicates summed, indices sorted)."""
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    out = sp.coo_matrix((v.astype(np.float32, copy=False), (r, c)), shape=shape).tocsr()
    out.sum_duplicates()
    out.sort_indices()
    return out


@torch.inference_mode()
def _encode_pooled(
    sae: SAE, pooled: torch.Tensor, device: torch.device, max_batch_elems: int, progress: bool
) -> sp.csr_matrix:
    """CSR of ``encode(pooled)``; pooled ``[N, d_in]``."""
    n = int(pooled.shape[0])
    step = _rows_per_chunk(sae.d_sae, max_batch_elems)
    rows, cols, vals = [], [], []
    for start in tqdm(range(0, n, step), desc="encode", unit="chunk", disable=not progress):
        codes = sae.encode(pooled[start : start + step].to(device)).float()
        r, c = codes.nonzero(as_tuple=True)
        vals.append(codes[r, c].cpu().numpy())
        rows.append((r + start).cpu().numpy())
        cols.append(c.cpu().numpy())
        del codes
    return _to_csr(rows, cols, vals, (n, sae.d_sae))


def _max_keep_mask(acts: LayerActivations, n: int, lengths: torch.Tensor) -> torch.Tensor:
    """Tokens the max pooling reads: the non-special ones (all of a text's when every one is)."""
    keep = torch.ones(acts.tokens.shape[0], dtype=torch.bool)
    if acts.special is not None and acts.special.shape[0] == keep.shape[0]:
        keep = ~acts.special.cpu()
        token_row = torch.repeat_interleave(torch.arange(n), lengths)
        kept_per_row = torch.zeros(n, dtype=torch.long).index_add_(0, token_row, keep.long())
        keep |= (kept_per_row == 0)[token_row]  # a text of special tokens only keeps them all
    return keep


def _text_chunks(offsets: torch.Tensor, n: int, step: int) -> list[tuple[int, int]]:
    """(first, last + 1) text rows of chunks of whole texts with at most ``step`` tokens each
    (a longer text forms a chunk alone)."""
    chunks = []
    r0 = 0
    while r0 < n:
        r1 = r0 + 1
        while r1 < n and int(offsets[r1 + 1] - offsets[r0]) <= step:
            r1 += 1
        chunks.append((r0, r1))
        r0 = r1
    return chunks


def _block_to_coo(block: torch.Tensor, r0: int, parts: tuple[list, list, list]) -> None:
    r, c = block.nonzero(as_tuple=True)
    parts[2].append(block[r, c].cpu().numpy())
    parts[0].append((r + r0).cpu().numpy())
    parts[1].append(c.cpu().numpy())


@torch.inference_mode()
def _encode_token_poolings(
    sae: SAE,
    acts: LayerActivations,
    device: torch.device,
    max_batch_elems: int,
    progress: bool,
    want_mean: bool = True,
    want_max: bool = True,
) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
    """(mean of all token codes, max of non-special token codes) per text; one encode per token.

    Chunks hold whole texts (a text longer than a chunk is encoded alone), so each text's mean and
    max are taken inside one chunk. The max skips special tokens (the paper drops BOS before
    pooling: BOS / CLS positions are attention sinks whose large codes would dominate the max);
    a text of special tokens only keeps them all. The max starts from 0 (codes of ReLU, TopK,
    JumpReLU and gated SAEs are non-negative).
    """
    assert acts.tokens is not None and acts.offsets is not None
    offsets = acts.offsets.to(torch.long).cpu()
    n = acts.n_rows
    lengths = offsets[1:] - offsets[:-1]
    if (
        offsets.shape != (n + 1,)
        or int(offsets[0]) != 0
        or int(offsets[-1]) != acts.tokens.shape[0]
    ):
        raise DatasetError(
            f"activations: offsets must have shape [{n + 1}], start at 0 and end at the token "
            f"count {acts.tokens.shape[0]}"
        )
    if bool((lengths <= 0).any()):
        raise DatasetError(
            f"activations: text row {int((lengths <= 0).nonzero()[0])} has no tokens; "
            "the mean and max of its token codes are undefined"
        )
    keep = _max_keep_mask(acts, n, lengths)
    inv_len = (1.0 / lengths.to(torch.float64)).to(torch.float32)
    step = _rows_per_chunk(sae.d_sae, max_batch_elems)
    mean_parts: tuple[list, list, list] = ([], [], [])
    max_parts: tuple[list, list, list] = ([], [], [])
    bar = tqdm(total=n, desc="encode", unit="text", disable=not progress)
    for r0, r1 in _text_chunks(offsets, n, step):
        t0, t1 = int(offsets[r0]), int(offsets[r1])
        tr = (torch.repeat_interleave(torch.arange(r0, r1), lengths[r0:r1]) - r0).to(device)
        codes = sae.encode(acts.tokens[t0:t1].to(device)).float()  # [t, d_sae]
        block = torch.zeros(r1 - r0, sae.d_sae, dtype=torch.float32, device=codes.device)
        if want_mean:
            block.index_add_(0, tr, codes)
            block *= inv_len[r0:r1].to(block.device).unsqueeze(1)
            _block_to_coo(block, r0, mean_parts)
        if want_max:
            mask = keep[t0:t1].to(device)
            block.zero_()
            idx = tr[mask].unsqueeze(1).expand(-1, codes.shape[1])
            block.scatter_reduce_(0, idx, codes[mask], reduce="amax", include_self=True)
            _block_to_coo(block, r0, max_parts)
        del codes, block
        bar.update(r1 - r0)
    bar.close()
    shape = (n, sae.d_sae)
    return (
        _to_csr(*mean_parts, shape) if want_mean else None,
        _to_csr(*max_parts, shape) if want_max else None,
    )
