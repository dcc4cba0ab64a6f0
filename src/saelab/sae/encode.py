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
    if mode == "max_codes":
        return _encode_max_of_codes(sae, acts, device, max_batch_elems, progress)
    return _encode_mean_of_codes(sae, acts, device, max_batch_elems, progress)


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


@torch.inference_mode()
def _encode_max_of_codes(
    sae: SAE, acts: LayerActivations, device: torch.device, max_batch_elems: int, progress: bool
) -> sp.csr_matrix:
    """CSR of the per-text max of per-token codes over non-special tokens (see ``encode_rows``).

    Chunks hold whole texts (a text longer than a chunk is encoded alone), so each text's max is
    taken inside one chunk.
    """
    assert acts.tokens is not None and acts.offsets is not None
    offsets = acts.offsets.to(torch.long).cpu()
    n = acts.n_rows
    lengths = offsets[1:] - offsets[:-1]
    if offsets.shape != (n + 1,) or int(offsets[-1]) != acts.tokens.shape[0]:
        raise DatasetError(
            f"activations: offsets must have shape [{n + 1}] and end at the token count "
            f"{acts.tokens.shape[0]}"
        )
    if bool((lengths <= 0).any()):
        raise DatasetError(
            f"activations: text row {int((lengths <= 0).nonzero()[0])} has no tokens; "
            "the max of its token codes is undefined"
        )
    keep = torch.ones(acts.tokens.shape[0], dtype=torch.bool)
    if acts.special is not None and acts.special.shape[0] == keep.shape[0]:
        keep = ~acts.special.cpu()
        token_row = torch.repeat_interleave(torch.arange(n), lengths)
        kept_per_row = torch.zeros(n, dtype=torch.long).index_add_(0, token_row, keep.long())
        keep |= (kept_per_row == 0)[token_row]  # a text of special tokens only keeps them all
    step = _rows_per_chunk(sae.d_sae, max_batch_elems)
    rows, cols, vals = [], [], []
    r0 = 0
    bar = tqdm(total=n, desc="encode", unit="text", disable=not progress)
    while r0 < n:
        r1 = r0 + 1  # whole texts whose tokens fit in one chunk (at least one text)
        while r1 < n and int(offsets[r1 + 1] - offsets[r0]) <= step:
            r1 += 1
        t0, t1 = int(offsets[r0]), int(offsets[r1])
        mask = keep[t0:t1]
        tokens = acts.tokens[t0:t1][mask]
        tr = torch.repeat_interleave(torch.arange(r0, r1), lengths[r0:r1])[mask] - r0
        codes = sae.encode(tokens.to(device)).float()  # [t, d_sae]
        block = torch.zeros(r1 - r0, sae.d_sae, dtype=torch.float32, device=codes.device)
        idx = tr.to(codes.device).unsqueeze(1).expand_as(codes)
        block.scatter_reduce_(0, idx, codes, reduce="amax", include_self=True)
        del codes
        r, c = block.nonzero(as_tuple=True)
        vals.append(block[r, c].cpu().numpy())
        rows.append((r + r0).cpu().numpy())
        cols.append(c.cpu().numpy())
        del block
        bar.update(r1 - r0)
        r0 = r1
    bar.close()
    return _to_csr(rows, cols, vals, (n, sae.d_sae))


@torch.inference_mode()
def _encode_mean_of_codes(
    sae: SAE, acts: LayerActivations, device: torch.device, max_batch_elems: int, progress: bool
) -> sp.csr_matrix:
    """CSR of the per-text mean of per-token codes (segment mean over ``acts.offsets``).

    Token chunks may split a text; each chunk adds ``(1/|T_i|) * sum`` of its part of text ``i``
    and partial rows are summed when the CSR is assembled.
    """
    assert acts.tokens is not None and acts.offsets is not None
    offsets = acts.offsets.to(torch.long).cpu()
    n = acts.n_rows
    if offsets.shape != (n + 1,) or int(offsets[0]) != 0:
        raise DatasetError(
            f"activations: offsets must have shape [{n + 1}] and start at 0, got "
            f"{list(offsets.shape)} starting at {int(offsets[0]) if len(offsets) else None}"
        )
    lengths = offsets[1:] - offsets[:-1]
    if int(offsets[-1]) != acts.tokens.shape[0] or bool((lengths < 0).any()):
        raise DatasetError(
            f"activations: offsets must be non-decreasing and end at the token count "
            f"{acts.tokens.shape[0]}, got last offset {int(offsets[-1])}"
        )
    empty = (lengths == 0).nonzero().flatten()
    if len(empty):
        raise DatasetError(
            f"activations: text row {int(empty[0])} has no tokens ({len(empty)} such rows); "
            "the mean of its token codes is undefined"
        )
    n_tokens = int(offsets[-1])
    token_row = torch.repeat_interleave(torch.arange(n), lengths)  # [T]
    inv_len = (1.0 / lengths.to(torch.float64)).to(torch.float32)  # [N]
    step = _rows_per_chunk(sae.d_sae, max_batch_elems)
    rows, cols, vals = [], [], []
    for start in tqdm(range(0, n_tokens, step), desc="encode", unit="chunk", disable=not progress):
        stop = min(start + step, n_tokens)
        codes = sae.encode(acts.tokens[start:stop].to(device)).float()  # [t, d_sae]
        tr = token_row[start:stop]
        r0, r1 = int(tr[0]), int(tr[-1]) + 1
        block = torch.zeros(r1 - r0, sae.d_sae, dtype=torch.float32, device=codes.device)
        block.index_add_(0, (tr - r0).to(codes.device), codes)
        del codes
        block *= inv_len[r0:r1].to(block.device).unsqueeze(1)
        r, c = block.nonzero(as_tuple=True)
        vals.append(block[r, c].cpu().numpy())
        rows.append((r + r0).cpu().numpy())
        cols.append(c.cpu().numpy())
        del block
    return _to_csr(rows, cols, vals, (n, sae.d_sae))
