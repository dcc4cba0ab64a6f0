"""Core SAE metrics on held-out token activations: reconstruction and sparsity, accumulated in one
streaming pass so any number of tokens fits in memory.

Definitions (``x`` a token activation ``[d]``, ``x^`` the SAE's reconstruction in the input's
units, ``f`` its code ``[d_sae]``, ``E`` the mean over the evaluated tokens):

- ``mse`` = E ||x - x^||^2 (sum over dimensions, mean over tokens; SAELens after PR #711;
  SAEBench 0.6 divides each token's error by the tokens of its batch, which saelab does not).
- ``explained_variance`` = 1 - E||x - x^||^2 / (E||x||^2 - ||E x||^2): the share of the variance
  *about the mean* that the SAE reconstructs (SAELens ``ExplainedVarianceCalculator``, 6.45+;
  SAEBench 0.6 subtracts (mean_d E[x_d^2])^2 instead of ||E x||^2, i.e. variance about zero).
- ``explained_variance_legacy`` = E_t [1 - ||x_t - x^_t||^2 / ||x_t - mean_B(x)||^2], a mean of
  per-token ratios with the mean of each batch B of ``batch_size`` tokens (SAEBench's legacy
  number, the one its paper reports; it depends on the batch size).
- ``fvu`` = 1 - explained_variance (Gao et al. 2024, §2.1).
- ``l0`` = E #{i : f_i != 0}; ``l1`` = E sum_i |f_i| (absolute values, as SAELens; SAEBench sums
  the raw values, equal for non-negative codes).
- ``cossim`` = E cos(x, x^); ``l2_ratio`` = E ||x^|| / ||x|| (tokens with ||x|| < 1e-4 count ||x||
  as 1, as SAEBench).
- ``relative_reconstruction_bias`` = E||x^||^2 / E[x . x^] (Rajamanoharan et al. 2024, Gated SAEs,
  eq. 10; < 1 means shrinkage) as a ratio of means over all tokens (SAEBench: per batch, then
  averaged).
- ``dead_fraction`` = share of latents that never fire on these tokens; ``dense_fraction`` = share
  firing on more than ``dense_threshold`` (default 10%) of the tokens; ``density`` [d_sae] = firing
  frequency of every latent, and a histogram of log10(density + 1e-10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from saelab.sae.base import SAE

#: Tokens whose norm is below this count as norm 1 in ``l2_ratio`` (SAEBench core).
_TINY_NORM = 1e-4
#: log10 bin edges of the density histogram: 10^-10 (dead) ... 10^0.
DENSITY_BINS = np.linspace(-10.0, 0.0, 41)


@dataclass
class CoreAccumulator:
    """Running sums (float64) of the core metrics over batches of tokens; see the module docstring.

    ``update`` takes one batch ``x [n, d]``, ``x_hat [n, d]``, ``f [n, d_sae]``; ``result`` gives the
    metrics. Sums are exact up to float64 rounding, so the result does not depend on how the tokens
    were batched (except ``explained_variance_legacy``, which is defined per batch).
    """

    d_sae: int
    dense_threshold: float = 0.1
    n: int = 0
    sum_x: torch.Tensor | None = None
    sum_sq_x: float = 0.0
    sum_sq_err: float = 0.0
    sum_l0: float = 0.0
    sum_l1: float = 0.0
    sum_cos: float = 0.0
    sum_l2_ratio: float = 0.0
    sum_sq_hat: float = 0.0
    sum_dot: float = 0.0
    sum_ev_legacy: float = 0.0
    fired: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.d_sae, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        """Add one batch: ``x``, ``x_hat`` ``[n, d]``, ``f`` ``[n, d_sae]`` (dense or sparse COO/CSR)."""
        x, x_hat = x.double().cpu(), x_hat.double().cpu()
        n = int(x.shape[0])
        if n == 0:
            return
        err = (x - x_hat).pow(2).sum(dim=1)
        norm_x = x.norm(dim=1)
        norm_hat = x_hat.norm(dim=1)
        dot = (x * x_hat).sum(dim=1)
        self.n += n
        self.sum_x = x.sum(dim=0) if self.sum_x is None else self.sum_x + x.sum(dim=0)
        self.sum_sq_x += float(x.pow(2).sum())
        self.sum_sq_err += float(err.sum())
        self.sum_sq_hat += float(norm_hat.pow(2).sum())
        self.sum_dot += float(dot.sum())
        self.sum_cos += float((dot / (norm_x * norm_hat).clamp_min(1e-30)).sum())
        safe = torch.where(norm_x < _TINY_NORM, torch.ones_like(norm_x), norm_x)
        self.sum_l2_ratio += float((norm_hat / safe).sum())
        dev = (x - x.mean(dim=0)).pow(2).sum(dim=1)
        self.sum_ev_legacy += float((1 - err / dev.clamp_min(1e-30)).sum())
        if f.is_sparse or f.layout == torch.sparse_csr:
            f = f.to_sparse_coo().coalesce()
            idx, vals = f.indices()[1], f.values().double().cpu()
            active = vals != 0
            self.sum_l0 += float(active.sum())
            self.sum_l1 += float(vals.abs().sum())
            self.fired += torch.bincount(idx.cpu()[active], minlength=self.d_sae).double()
        else:
            active = f != 0
            self.sum_l0 += float(active.sum())
            self.sum_l1 += float(f.double().abs().sum())
            self.fired += active.sum(dim=0).double().cpu()

    def result(self) -> dict[str, float | list[float]]:
        """The metrics of the module docstring, over every token added."""
        n = self.n
        if n == 0:
            raise ValueError("no tokens were evaluated")
        mean_x = self.sum_x / n
        variance = self.sum_sq_x / n - float(mean_x.pow(2).sum())
        mse = self.sum_sq_err / n
        ev = 1 - mse / variance if variance > 0 else math.nan
        density = self.fired / n
        log_density = np.clip(np.log10(density.numpy() + 1e-10), DENSITY_BINS[0], DENSITY_BINS[-1])
        hist, _ = np.histogram(log_density, bins=DENSITY_BINS)
        return {
            "n_tokens": n,
            "mse": mse,
            "explained_variance": ev,
            "fvu": 1 - ev,
            "explained_variance_legacy": self.sum_ev_legacy / n,
            "l0": self.sum_l0 / n,
            "l1": self.sum_l1 / n,
            "cossim": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            "relative_reconstruction_bias": (
                self.sum_sq_hat / self.sum_dot if self.sum_dot != 0 else math.nan
            ),
            "dead_fraction": float((density == 0).double().mean()),
            "dense_fraction": float((density > self.dense_threshold).double().mean()),
            "density_histogram": hist.tolist(),
        }


@torch.no_grad()
def core_metrics(
    sae: SAE,
    tokens: torch.Tensor,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    offsets: torch.Tensor | None = None,
) -> dict[str, float | list[float]]:
    """Core reconstruction and sparsity metrics of ``sae`` on ``tokens`` ``[T, d_in]`` (held out:
    never trained on; special tokens already removed), in batches of ``batch_size`` tokens.

    The reconstruction is ``decode(encode(x))`` in the input's units (the normalisation state of
    ``encode_with_state`` is undone), as the SAE would be spliced into the model. A sequence-level
    SAE (IHTP: a token's code depends on its text) needs the text boundaries ``offsets``
    ``[n_texts + 1]``; its batches are whole texts of about ``batch_size`` tokens.
    """
    from saelab.sae.quality import text_chunks

    acc = CoreAccumulator(sae.d_sae, dense_threshold=dense_threshold)
    rows = max(1, min(batch_size, (1 << 24) // max(1, sae.d_sae)))
    if getattr(sae, "sequence_level", False):
        if offsets is None:
            raise ValueError("a sequence-level SAE needs the text offsets of the tokens")
        for start, stop in text_chunks(offsets, batch_size):
            x = tokens[start:stop].to(sae.device, sae.dtype)
            _, state = sae.preprocess(x)
            local = offsets[(offsets >= start) & (offsets <= stop)] - start
            f = sae.encode_texts(x, local)
            acc.update(x, sae.decode(f, state), f.to_sparse())
        return acc.result()
    # the legacy explained variance is defined per batch: keep batches of batch_size tokens and
    # split only the encoding when the dense code block would be too large
    for start in range(0, tokens.shape[0], batch_size):
        x = tokens[start : start + batch_size].to(sae.device, sae.dtype)
        parts_hat, parts_f = [], []
        for s in range(0, x.shape[0], rows):
            f, state = sae.encode_with_state(x[s : s + rows])
            parts_hat.append(sae.decode(f, state))
            parts_f.append(f.to_sparse())
        acc.update(x, torch.cat(parts_hat), torch.cat(parts_f))
    return acc.result()
