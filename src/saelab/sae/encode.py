"""Encode activations into sparse (CSR) SAE codes, in memory-bounded chunks or streamed blocks.

Three ways to compute the codes, one way to pool them:

- an :class:`~saelab.sae.base.SAE` in memory: rows in chunks whose dense code block
  ``[rows, d_sae]`` has at most ``max_batch_elems`` elements (TopK: only its ``k`` values per row);
- a :class:`~saelab.sae.stream.StreamedSAE` (from :class:`~saelab.sae.formats.base.SAEFiles`):
  weights read a block of latents at a time, pre-activations computed per block (at most
  ``min(max_batch_elems, STREAM_CHUNK_ELEMS)`` of them at once); elementwise
  architectures pool each block's columns on their own, TopK keeps a running per-token top-k merged
  across blocks. Cost per call: one pass over the encoder weights (per group of
  ``MAX_STATE_ELEMS // k`` tokens for TopK);
- sequence-level encoders (IHTP) through ``encode_texts`` on whole texts.

Each chunk's nonzero codes (token, latent, value) are pooled per text into COO parts, and one CSR
``[N, d_sae]`` float32 is built at the end; no dense ``[N, d_sae]`` matrix ever exists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError, DatasetError
from saelab.sae.base import SAE
from saelab.sae.formats.base import SAEFiles
from saelab.sae.stream import (
    STREAM_CHUNK_ELEMS,
    StreamedSAE,
    memory_budget,
    stream_kind,
    streaming_refusal,
    weights_nbytes,
)

log = logging.getLogger(__name__)

Pooling = Literal["last", "mean"]
Mode = Literal["pool_codes", "code_pooled", "max_codes"]
MODES: tuple[str, ...] = ("pool_codes", "code_pooled", "max_codes")
#: Bound on the running TopK state (tokens x k) of one streamed pass; more tokens take more passes.
MAX_STATE_ELEMS = 2**25

Encoder = SAE | StreamedSAE


def open_sae_encoder(
    sae: SAE | SAEFiles | StreamedSAE,
    device: str | torch.device = "cpu",
    budget: int | float | str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Encoder:
    """The object that encodes every dataset of a run with one load: the SAE in memory when its
    weights fit ``budget`` (:func:`saelab.sae.stream.memory_budget`: argument, else
    ``$SAELAB_SAE_MEMORY_BUDGET``, else a quarter of RAM), else a :class:`StreamedSAE`.

    An SAE whose architecture or files cannot be streamed (pursuit, sequence-level, ``ae.pt``,
    legacy tensors needing conversion) is loaded whole, with a log line saying why.
    """
    if isinstance(sae, (SAE, StreamedSAE)):
        return sae
    need, limit = weights_nbytes(sae.cfg, dtype), memory_budget(budget)
    if need <= limit:
        return sae.load(device=device, dtype=dtype).eval()
    reason = streaming_refusal(sae)
    if reason is not None:
        log.warning(
            "SAE %s: weights take %.2f GB (budget %.2f GB) but it cannot be streamed (%s); "
            "loading it whole",
            sae.source,
            need / 1e9,
            limit / 1e9,
            reason,
        )
        return sae.load(device=device, dtype=dtype).eval()
    enc = StreamedSAE(sae, dtype=dtype)
    log.info(
        "SAE %s: weights take %.2f GB > budget %.2f GB: streaming blocks of %d latents "
        "(one pass over the encoder weights per dataset)",
        sae.source,
        need / 1e9,
        limit / 1e9,
        enc.block_latents,
    )
    return enc


def _as_encoder(sae: SAE | SAEFiles | StreamedSAE, device: torch.device) -> Encoder:
    """SAEFiles given directly are streamed (loaded whole, with a log line, when they cannot be)."""
    if isinstance(sae, SAE):
        if sae.device != device:
            sae.to(device)
        return sae
    if isinstance(sae, StreamedSAE):
        return sae
    if isinstance(sae, SAEFiles):
        reason = streaming_refusal(sae)
        if reason is None:
            return StreamedSAE(sae)
        log.info("SAE %s: cannot be streamed (%s); encoding it in memory", sae.source, reason)
        return sae.load(device=device).eval()
    raise TypeError(f"expected an SAE, SAEFiles or StreamedSAE, got {type(sae).__name__}")


def encode_rows(
    sae: SAE | SAEFiles | StreamedSAE,
    acts: LayerActivations,
    pooling: Pooling,
    mode: Mode = "pool_codes",
    device: str | torch.device = "cpu",
    max_batch_elems: int = 2**26,
    progress: bool = False,
    include_special_tokens: bool = False,
) -> sp.csr_matrix:
    """One sparse code vector per text: CSR ``[N, d_sae]`` float32 on the CPU.

    - ``pooling="last"``, or ``mode="code_pooled"`` (what sae-probes does: encode the pooled
      activation): ``code_i = encode(acts.pooled[i])``.
    - ``pooling="mean"`` with ``mode="pool_codes"`` (SAEBench's sparse-probing choice: pool the
      per-token codes): ``code_i = (1/|T_i|) sum_{t in T_i} encode(x_t)``.
    - ``mode="max_codes"`` (the paper's multi-token max pooling, spec 4.5; any ``pooling``):
      ``code_ij = max_{t in T_i} encode(x_t)_j``, exact for signed codes (MP-SAE, IHTP): a latent
      stored on only some tokens of a text also takes the implicit 0 of the others.

    ``T_i`` is text ``i``'s non-special tokens (``acts.special``; all its tokens when every one is
    special, or with ``include_special_tokens``): SAE training leaves BOS / CLS / SEP out, and their
    attention-sink codes would otherwise dominate the mean and the max. Special tokens are not
    encoded at all. Sequence-level SAEs (``sequence_level``: IHTP) encode each text's ``T_i``
    together through ``encode_texts``; with ``code_pooled`` each pooled vector is its own text.

    Rows are encoded in chunks of whole texts whose dense code block has at most
    ``max_batch_elems`` elements (at least one text per chunk); only nonzeros are kept.

    Args:
        sae: an :class:`SAE` (moved to ``device`` in place if elsewhere), a :class:`StreamedSAE`,
            or :class:`SAEFiles` (streamed when the architecture allows, else loaded whole).
        acts: activations of one layer; ``tokens`` and ``offsets`` are needed for the per-token
            poolings.
        pooling: how ``acts.pooled`` was pooled (``last`` or ``mean``).
        mode: ``pool_codes``, ``code_pooled`` (the same as ``pool_codes`` for ``last``) or
            ``max_codes``.
        device: where the SAE computes.
        max_batch_elems: bound on the elements of one dense code block.
        progress: show a tqdm bar.
        include_special_tokens: pool special tokens too.
    """
    if pooling not in ("last", "mean"):
        raise ConfigError(f"key 'pooling' has value {pooling!r}; expected 'last' or 'mean'")
    if mode not in MODES:
        raise ConfigError(f"key 'code_pooling' has value {mode!r}; expected one of {list(MODES)}")
    if max_batch_elems < 1:
        raise ConfigError(f"max_batch_elems must be >= 1, got {max_batch_elems}")
    device = torch.device(device)
    enc = _as_encoder(sae, device)
    _check_width(enc, acts)
    if mode == "code_pooled" or (pooling == "last" and mode == "pool_codes"):
        texts = _pooled_texts(acts)
        mean, _ = _encode_texts(enc, texts, True, False, device, max_batch_elems, progress)
        return mean
    texts = _token_texts(acts, mode, include_special_tokens)
    want_mean = mode == "pool_codes"
    mean, maxed = _encode_texts(
        enc, texts, want_mean, not want_mean, device, max_batch_elems, progress
    )
    return mean if want_mean else maxed


def encode_rows_multi(
    sae: SAE | SAEFiles | StreamedSAE,
    acts: LayerActivations,
    pooling: Pooling,
    modes: list[str],
    device: str | torch.device = "cpu",
    max_batch_elems: int = 2**26,
    progress: bool = False,
    include_special_tokens: bool = False,
) -> dict[str, sp.csr_matrix]:
    """:func:`encode_rows` for several ``modes`` at once: ``{mode: CSR [N, d_sae]}``.

    When both per-token poolings (``pool_codes`` and ``max_codes``) are asked for, every token is
    encoded once and both poolings are taken from the same codes (the result equals two separate
    :func:`encode_rows` calls); other modes are encoded on their own.
    """
    device = torch.device(device)
    enc = _as_encoder(sae, device)
    out: dict[str, sp.csr_matrix] = {}
    if {"pool_codes", "max_codes"} <= set(modes) and pooling == "mean":
        _check_width(enc, acts)
        texts = _token_texts(acts, "pool_codes", include_special_tokens)
        mean, maxed = _encode_texts(enc, texts, True, True, device, max_batch_elems, progress)
        out.update(pool_codes=mean, max_codes=maxed)
    for mode in modes:
        if mode not in out:
            out[mode] = encode_rows(
                enc,
                acts,
                pooling,
                mode,  # type: ignore[arg-type]
                device,
                max_batch_elems,
                progress,
                include_special_tokens,
            )
    return out


# ----- inputs -----------------------------------------------------------------------------------
@dataclass
class _Texts:
    """What is pooled: ``x`` ``[T, d_in]``, text i is ``x[offsets[i]:offsets[i+1]]`` (>= 1 row)."""

    x: torch.Tensor
    offsets: torch.Tensor  # [n+1] int64, CPU

    @property
    def n(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets.numpy())


def _check_width(enc: Encoder, acts: LayerActivations) -> None:
    if acts.pooled.shape[-1] != enc.d_in:
        raise ConfigError(
            f"activations have width {acts.pooled.shape[-1]} but the SAE expects d_in={enc.d_in}"
        )


def _pooled_texts(acts: LayerActivations) -> _Texts:
    """Every pooled vector is a one-row text."""
    return _Texts(acts.pooled, torch.arange(acts.n_rows + 1, dtype=torch.long))


def _token_texts(acts: LayerActivations, mode: str, include_special: bool) -> _Texts:
    """The tokens the poolings read: each text's non-special tokens (all of them when every one is
    special, or with ``include_special``), packed; offsets checked."""
    if acts.tokens is None or acts.offsets is None:
        raise ConfigError(
            f"code pooling {mode!r} needs token-level activations (acts.tokens and acts.offsets); "
            "extract them (keep_tokens) or use the code of the pooled activation"
        )
    offsets = acts.offsets.to(torch.long).cpu()
    n = acts.n_rows
    n_tok = int(acts.tokens.shape[0])
    if offsets.shape != (n + 1,) or int(offsets[0]) != 0 or int(offsets[-1]) != n_tok:
        raise DatasetError(
            f"activations: offsets must have shape [{n + 1}], start at 0 and end at the token "
            f"count {n_tok}"
        )
    lengths = offsets[1:] - offsets[:-1]
    if bool((lengths <= 0).any()):
        raise DatasetError(
            f"activations: text row {int((lengths <= 0).nonzero()[0])} has no tokens; "
            "the mean and max of its token codes are undefined"
        )
    special = acts.special
    if include_special or special is None or not bool(special.any()):
        return _Texts(acts.tokens, offsets)
    if special.shape != (n_tok,):
        raise DatasetError(
            f"activations: special has shape {list(special.shape)}; expected [{n_tok}]"
        )
    keep = ~special.cpu().to(torch.bool)
    token_row = torch.repeat_interleave(torch.arange(n), lengths)
    kept = torch.zeros(n, dtype=torch.long).index_add_(0, token_row, keep.long())
    keep |= (kept == 0)[token_row]  # a text of special tokens only keeps them all
    kept = torch.zeros(n, dtype=torch.long).index_add_(0, token_row, keep.long())
    new_offsets = torch.zeros(n + 1, dtype=torch.long)
    new_offsets[1:] = torch.cumsum(kept, 0)
    idx = keep.nonzero().squeeze(1).to(acts.tokens.device)
    return _Texts(acts.tokens.index_select(0, idx), new_offsets)


def _text_chunks(offsets: torch.Tensor, step: int) -> list[tuple[int, int]]:
    """(first, last + 1) text rows of chunks of whole texts with at most ``step`` rows of ``x``
    each (a longer text forms a chunk alone)."""
    off = offsets.numpy()
    n = off.shape[0] - 1
    chunks = []
    r0 = 0
    while r0 < n:
        # the last text r1 - 1 with off[r1] - off[r0] <= step, at least one text
        r1 = int(np.searchsorted(off, off[r0] + step, side="right")) - 1
        r1 = min(max(r1, r0 + 1), n)
        chunks.append((r0, r1))
        r0 = r1
    return chunks


# ----- pooling ----------------------------------------------------------------------------------
class _Pooler:
    """Pools sparse per-row codes into per-text mean / max COO parts, then one CSR each.

    Every call to :meth:`add` must hold, for each (text, latent) it touches, all stored values of
    that pair (chunks of whole texts; a streamed block covers its latents for every text), so the
    max can tell whether some row of the text lacks a stored value (an implicit 0):

        mean_ij = (1/|T_i|) sum_{t in T_i} c_tj
        max_ij  = max(max_{t stored} c_tj, 0 if #{t stored} < |T_i|)
    """

    def __init__(self, texts: _Texts, d_sae: int, want_mean: bool, want_max: bool) -> None:
        self.shape = (texts.n, d_sae)
        self.lengths = texts.lengths
        self.single = bool((self.lengths == 1).all())
        self.row_text = np.repeat(np.arange(texts.n), self.lengths)
        self.inv_len = (1.0 / self.lengths.astype(np.float64)).astype(np.float32)
        self.want_mean, self.want_max = want_mean, want_max
        self.mean: tuple[list, list, list] = ([], [], [])
        self.max: tuple[list, list, list] = ([], [], [])

    def add_dense(self, codes: torch.Tensor, row0: int, col0: int) -> None:
        """Dense codes ``[rows, width]`` of rows ``row0..`` and latents ``col0..``."""
        r, c = codes.nonzero(as_tuple=True)
        vals = codes[r, c].float().cpu().numpy()
        self.add(r.cpu().numpy() + row0, c.cpu().numpy() + col0, vals)

    def add_topk(self, values: torch.Tensor, indices: torch.Tensor, row0: int) -> None:
        """Top-k codes of rows ``row0..``: ``values`` and latent ``indices``, each ``[rows, k]``."""
        rows = torch.arange(row0, row0 + values.shape[0]).repeat_interleave(values.shape[1])
        self.add(
            rows.numpy(),
            indices.reshape(-1).cpu().numpy(),
            values.reshape(-1).float().cpu().numpy(),
        )

    def add(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        """Stored codes: row (of ``texts.x``) ``rows`` [m], latent ``cols`` [m], value ``vals``."""
        keep = vals != 0
        if not keep.all():
            rows, cols, vals = rows[keep], cols[keep], vals[keep]
        text = self.row_text[rows]
        cols = cols.astype(np.int64, copy=False)
        vals = vals.astype(np.float32, copy=False)
        if self.single:  # one row per text: the mean and the max are the code itself
            for parts, want in ((self.mean, self.want_mean), (self.max, self.want_max)):
                if want:
                    parts[0].append(text)
                    parts[1].append(cols)
                    parts[2].append(vals)
            return
        key = text.astype(np.int64) * self.shape[1] + cols
        order = np.argsort(key, kind="stable")
        key, vals = key[order], vals[order]
        if key.size == 0:
            return
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        ukey = key[starts]
        utext, ucol = ukey // self.shape[1], ukey % self.shape[1]
        if self.want_mean:
            total = np.add.reduceat(vals, starts) * self.inv_len[utext]
            self.mean[0].append(utext)
            self.mean[1].append(ucol)
            self.mean[2].append(total)
        if self.want_max:
            top = np.maximum.reduceat(vals, starts)
            count = np.diff(np.append(starts, key.size))
            partial = count < self.lengths[utext]
            top[partial] = np.maximum(top[partial], 0.0)
            self.max[0].append(utext)
            self.max[1].append(ucol)
            self.max[2].append(top)

    def result(self) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        return (
            _to_csr(*self.mean, self.shape) if self.want_mean else None,
            _to_csr(*self.max, self.shape) if self.want_max else None,
        )


def _to_csr(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], shape: tuple[int, int]
) -> sp.csr_matrix:
    """COO pieces -> canonical CSR float32 (duplicates summed, indices sorted, zeros dropped)."""
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    out = sp.coo_matrix((v.astype(np.float32, copy=False), (r, c)), shape=shape).tocsr()
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


# ----- the three ways to compute codes ----------------------------------------------------------
def _encode_texts(
    enc: Encoder,
    texts: _Texts,
    want_mean: bool,
    want_max: bool,
    device: torch.device,
    max_batch_elems: int,
    progress: bool,
) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
    pooler = _Pooler(texts, enc.d_sae, want_mean, want_max)
    if isinstance(enc, StreamedSAE):
        if enc.kind == "topk":
            _streamed_topk(enc, texts, pooler, device, max_batch_elems, progress)
        else:
            _streamed_elementwise(enc, texts, pooler, device, max_batch_elems, progress)
    else:
        _in_memory(enc, texts, pooler, device, max_batch_elems, progress)
    return pooler.result()


@torch.inference_mode()
def _in_memory(
    sae: SAE,
    texts: _Texts,
    pooler: _Pooler,
    device: torch.device,
    max_batch_elems: int,
    progress: bool,
) -> None:
    """Chunks of whole texts through the loaded SAE: TopK keeps its k values per row, a
    sequence-level SAE reads each chunk's texts with ``encode_texts``, others ``encode``."""
    step = max(1, max_batch_elems // sae.d_sae)
    topk = (
        stream_kind(sae.cfg) == "topk"
        and hasattr(sae, "topk_pre")
        and not getattr(sae, "sequence_level", False)
    )
    sequence_level = bool(getattr(sae, "sequence_level", False))
    off = texts.offsets
    bar = tqdm(total=texts.n, desc="encode", unit="text", disable=not progress)
    for r0, r1 in _text_chunks(off, step):
        t0, t1 = int(off[r0]), int(off[r1])
        x = texts.x[t0:t1].to(device)
        if topk:
            values, indices = sae.topk_pre(sae.preprocess(x)[0])  # [t, k] each
            pooler.add_topk(values, indices, t0)
        else:
            if sequence_level:
                codes = sae.encode_texts(x, off[r0 : r1 + 1] - off[r0])
            else:
                codes = sae.encode(x)
            _add_codes(pooler, codes, t0)
        bar.update(r1 - r0)
    bar.close()


def _add_codes(pooler: _Pooler, codes: torch.Tensor, row0: int) -> None:
    """Dense or torch-sparse codes ``[t, d_sae]`` of rows ``row0..`` into ``pooler``."""
    if codes.layout == torch.sparse_csr:
        codes = codes.to_sparse_coo()
    if codes.is_sparse:
        c = codes.coalesce()
        r, col = c.indices().cpu().numpy()
        pooler.add(r + row0, col, c.values().float().cpu().numpy())
    else:
        pooler.add_dense(codes, row0, 0)


def _block_pass(
    enc: StreamedSAE, device: torch.device, max_batch_elems: int, progress: bool
) -> Iterator[tuple[int, SAE, int]]:
    """One pass over the weights (:meth:`StreamedSAE.blocks`) with a progress bar:
    ``(start, module, step)`` per block of latents ``start..stop``, ``step`` the rows per chunk so that a chunk's
    codes ``[step, stop - start]`` hold at most ``min(max_batch_elems, STREAM_CHUNK_ELEMS)``
    elements (at least one row)."""
    blocks = enc.blocks(device)
    bar = tqdm(blocks, total=len(enc.bounds()), desc="encode", unit="block", disable=not progress)
    for start, stop, block in bar:
        step = max(1, min(max_batch_elems, STREAM_CHUNK_ELEMS) // (stop - start))
        yield start, block, step
        del block  # drop this frame's reference before the next block is read


@torch.inference_mode()
def _streamed_elementwise(
    enc: StreamedSAE,
    texts: _Texts,
    pooler: _Pooler,
    device: torch.device,
    max_batch_elems: int,
    progress: bool,
) -> None:
    """One pass over the weights; per block, chunks of whole texts, codes pooled per block."""
    head = enc.head(device)
    off = texts.offsets
    chunks: dict[int, list[tuple[int, int]]] = {}
    for start, block, step in _block_pass(enc, device, max_batch_elems, progress):
        if step not in chunks:
            chunks[step] = _text_chunks(off, step)
        for r0, r1 in chunks[step]:
            t0, t1 = int(off[r0]), int(off[r1])
            sae_in, _ = head.preprocess(texts.x[t0:t1].to(device))
            pooler.add_dense(block.encode_pre(sae_in), t0, start)
        del block


@torch.inference_mode()
def _streamed_topk(
    enc: StreamedSAE,
    texts: _Texts,
    pooler: _Pooler,
    device: torch.device,
    max_batch_elems: int,
    progress: bool,
) -> None:
    """Running per-row top-k merged across blocks (Gao et al. 2024 TopK, exact):

        topk(h[:, :e]) = topk(concat(topk(h[:, :s]), topk(h[:, s:e])))

    since the k largest of a union are among the k largest of each part. Values are the block
    modules' ``topk_pre`` (ReLU of the selected pre-activations): ReLU is monotone, so the positive
    codes are the in-memory SAE's. Ties: when several latents share the k-th largest value,
    dense and streamed encodes may keep different ones of them (``torch.topk`` breaks ties
    arbitrarily). Tokens are taken in groups of whole texts whose state (rows x k) stays within
    ``MAX_STATE_ELEMS``; each group is one pass over the weights.
    """
    head = enc.head(device)
    k = int(enc.cfg.arch["k"])
    off = texts.offsets
    groups = _text_chunks(off, max(1, MAX_STATE_ELEMS // k))
    for g0, g1 in groups:
        t0, t1 = int(off[g0]), int(off[g1])
        n_rows = t1 - t0
        values = torch.full((n_rows, k), float("-inf"), dtype=enc.dtype, device=device)
        indices = torch.zeros((n_rows, k), dtype=torch.long, device=device)
        for start, block, step in _block_pass(enc, device, max_batch_elems, progress):
            for c0 in range(0, n_rows, step):
                c1 = min(c0 + step, n_rows)
                sae_in, _ = head.preprocess(texts.x[t0 + c0 : t0 + c1].to(device))
                v, i = block.topk_pre(sae_in)  # [t, min(k, stop - start)]
                both_v = torch.cat([values[c0:c1], v.to(values.dtype)], dim=1)
                both_i = torch.cat([indices[c0:c1], i + start], dim=1)
                top_v, pos = torch.topk(both_v, k=k, dim=1, sorted=False)
                values[c0:c1] = top_v
                indices[c0:c1] = torch.gather(both_i, 1, pos)
            del block
        pooler.add_topk(values, indices, t0)
        del values, indices
