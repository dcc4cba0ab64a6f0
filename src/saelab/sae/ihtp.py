"""IHTP: instance hard-thresholding pursuit on a trained dictionary (saelab's ``ihtp``)."""

from __future__ import annotations

import copy
import itertools
from typing import ClassVar

import torch
from torch import nn

from saelab.sae.base import (
    REQUIRED,
    SAE,
    ArchField,
    SAEConfig,
    TiedSAE,
    canonical_dtype,
    check_k_range,
    register_sae,
)

#: Relative singular-value cut-off of the least-squares solve is ``RCOND_EPS * max(d_in, |S|)``:
#: the tolerance of ``numpy.linalg.matrix_rank`` (``S.max() * max(M, N) * eps``) at float32
#: precision, the precision SAE weights are stored in; directions below it count as rank deficient.
RCOND_EPS = float(torch.finfo(torch.float32).eps)
#: Elements of one dense block (correlations ``[rows, d_sae]``, batched systems ``[rows, d_in, k]``).
CHUNK_ELEMS = 1 << 24


@register_sae("ihtp")
class IHTPSAE(TiedSAE):
    """Per-token top-k support by decoder correlation, union over the text, one joint LS refit.

    Source: lambdaofgod/sae_research ``sae_research/instance_sae.py``
    (``InstanceHardThresholdingPursuitSAE``) with ``modules.py`` (``InstanceHardThresholding``,
    ``SparseLeastSquares``): one step of hard-thresholding pursuit (Foucart 2011, "Hard Thresholding
    Pursuit", SIAM J. Numer. Anal. 49(6)) from ``z = 0``, with the support shared by the tokens of
    one text (the "instance"). With ``d_i`` the rows of ``W_dec`` and ``X'`` the ``L`` pre-processed
    tokens of a text (``x' = norm_in(x) - b_dec * [apply_b_dec_to_input]``):

        S_t = top-k_i |x'_t . d_i| / ||d_i||        (per token)
        S   = union_t S_t                            (k <= |S| <= min(k L, d_sae))
        C   = argmin_C ||X' - C W_dec[S]||_F^2       (C: [L, |S|], minimum-norm solution)
        f_t = scatter(S, C_t);   x^ = norm_out(f W_dec + b_dec * [apply_b_dec_to_input])

    Selection by absolute correlation, as the source: the refit gives signed coefficients, and an
    atom anti-aligned with ``x'`` explains as much of it as an aligned one. Correlations are divided
    by the decoder norms, so an atom's chance does not depend on its scale (for unit-norm
    dictionaries this is the source's ``|x' . d_i|``). Every token of a text gets a (generically
    nonzero, signed) code on all of ``S``, so its L0 is ``|S|``.

    Rank deficiency (``|S| > d_in``, duplicate or collinear atoms) is solved safely: float64 SVD
    least squares with the relative cut-off ``RCOND_EPS * max(d_in, |S|)``, i.e. the
    minimum-norm solution ``pinv(W_dec[S]^T) x'`` (LAPACK ``gelsd`` on the CPU; ``pinv`` elsewhere,
    where torch offers only the full-rank ``gels``). Inference only: encodes run without gradient.

    :meth:`encode` treats every row as its own one-token text (per-vector top-k + refit);
    :meth:`encode_texts` shares supports within texts (``sequence_level``).

    Parameters: W_dec ``[d_sae, d_in]``, b_dec ``[d_in]`` (``W_enc`` is the view ``W_dec^T``).
    Architecture field: ``k`` (required, 1..d_sae). Build one from any trained SAE with
    :meth:`from_dictionary`.
    """

    sequence_level: ClassVar[bool] = True
    signed_codes: ClassVar[bool] = True
    arch_fields: ClassVar[dict[str, ArchField]] = {"k": ArchField(int, REQUIRED)}

    @classmethod
    def check_arch(cls, cfg: SAEConfig, source: str) -> None:
        check_k_range(cfg, source)

    @classmethod
    def from_dictionary(cls, sae: SAE, k: int) -> IHTPSAE:
        """IHTP encoder on the decoder of ``sae`` (any architecture with ``W_dec`` / ``b_dec``).

        ``W_dec`` and ``b_dec`` are shared with ``sae`` (same storage, no copy: a 1M-wide
        dictionary is not duplicated; detached, without gradient). ``normalize_activations``,
        ``reshape_activations``, dtype and metadata are copied (``metadata["ihtp_dictionary"]``
        records the source architecture). ``apply_b_dec_to_input`` is set so that the IHTP
        decoder is the source's decoder: ``True`` for untied SAEs, whose decode always adds
        ``b_dec`` (their flag concerns the encoder input only, which IHTP does not use), and
        copied from tied pursuit SAEs, whose decode adds ``b_dec`` only when it was subtracted.

        Raises:
            SAEFileError: if ``k`` is not in ``1..d_sae``.
        """
        tied = isinstance(sae, TiedSAE)
        metadata = copy.deepcopy(sae.cfg.metadata)
        metadata["ihtp_dictionary"] = sae.architecture
        cfg = SAEConfig(
            d_in=sae.d_in,
            d_sae=sae.d_sae,
            architecture="ihtp",
            dtype=canonical_dtype(sae.dtype),
            apply_b_dec_to_input=bool(sae.cfg.apply_b_dec_to_input) if tied else True,
            normalize_activations=sae.cfg.normalize_activations,
            reshape_activations=sae.cfg.reshape_activations,
            arch={"k": k},
            metadata=metadata,
        )
        out = cls(cfg, device="meta")
        out.W_dec = nn.Parameter(sae.W_dec.detach(), requires_grad=False)
        out.b_dec = nn.Parameter(sae.b_dec.detach(), requires_grad=False)
        return out

    @property
    def k(self) -> int:
        return int(self.cfg.arch["k"])

    # ----- encoding -----------------------------------------------------------------------------
    @torch.no_grad()
    def top_k_support(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Per-row top-k latents by ``|x' . d_i| / ||d_i||``: ``[N, d_in]`` -> ``[N, k]`` int64.

        Correlations are computed ``CHUNK_ELEMS // d_sae`` rows at a time, so ``[N, d_sae]`` is
        never held at once.
        """
        w = self.W_dec
        inv_norm = w.norm(dim=-1).clamp_min(torch.finfo(w.dtype).tiny).reciprocal()
        out = torch.empty(sae_in.shape[0], self.k, dtype=torch.long, device=sae_in.device)
        step = max(1, CHUNK_ELEMS // self.d_sae)
        for start in range(0, sae_in.shape[0], step):
            scores = (sae_in[start : start + step] @ w.T).abs_().mul_(inv_norm)
            out[start : start + step] = scores.topk(self.k, dim=-1, sorted=False).indices
        return out

    @torch.no_grad()
    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Each row its own text: top-k support, then its LS fit. ``[..., d_in]`` -> ``[..., d_sae]``.

        The ``k``-atom systems of many rows are solved in one batched call (``CHUNK_ELEMS`` bounds
        the float64 ``[rows, d_in, k]`` block).
        """
        flat = sae_in.reshape(-1, self.d_in)
        idx = self.top_k_support(flat)  # [N, k]
        codes = torch.zeros(flat.shape[0], self.d_sae, dtype=sae_in.dtype, device=sae_in.device)
        step = max(1, CHUNK_ELEMS // (self.d_in * self.k))
        for start in range(0, flat.shape[0], step):
            sel = idx[start : start + step]
            systems = self.W_dec[sel].transpose(1, 2)  # [b, d_in, k]
            targets = flat[start : start + step].unsqueeze(-1)  # [b, d_in, 1]
            coef = min_norm_lstsq(systems, targets).squeeze(-1)  # [b, k]
            codes[start : start + step].scatter_(1, sel, coef.to(codes.dtype))
        return codes.reshape(*sae_in.shape[:-1], self.d_sae)

    @torch.no_grad()
    def encode_texts(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Codes with one support per text; text i is ``x[offsets[i]:offsets[i+1]]``.

        Args:
            x: tokens ``[T, d_in]``.
            offsets: ``[n+1]`` int64, ``0 = offsets[0] <= ... <= offsets[n] = T``.

        Returns:
            ``[T, d_sae]`` signed codes (token t's code is nonzero only on its text's union).
        """
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"encode_texts needs x of shape [T, {self.d_in}], got {list(x.shape)}")
        bounds = _check_offsets(offsets, x.shape[0])
        sae_in, _ = self.preprocess(x)
        idx = self.top_k_support(sae_in)  # [T, k]
        codes = torch.zeros(x.shape[0], self.d_sae, dtype=sae_in.dtype, device=sae_in.device)
        for t0, t1 in itertools.pairwise(bounds):
            if t1 == t0:
                continue
            support = torch.unique(idx[t0:t1])  # sorted union, [|S|]
            coef = min_norm_lstsq(self.W_dec[support].T, sae_in[t0:t1].T)  # [|S|, L]
            codes[t0:t1, support] = coef.T.to(codes.dtype)
        return codes


def min_norm_lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares ``argmin_c ||a c - b||`` in float64, safe when rank deficient.

    Singular values below ``RCOND_EPS * max(m, n) * s_max`` are treated as zero (the solution is
    ``pinv(a) b`` with that cut-off). CPU: LAPACK ``gelsd`` (``torch.linalg.lstsq``); other devices:
    ``torch.linalg.pinv`` (SVD), since torch's only GPU driver, ``gels``, assumes full rank.

    Args:
        a: ``[..., m, n]``.
        b: ``[..., m, p]``.

    Returns:
        ``[..., n, p]`` float64.
    """
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    rcond = RCOND_EPS * max(a.shape[-2], a.shape[-1])
    if a64.device.type == "cpu":
        return torch.linalg.lstsq(a64, b64, rcond=rcond, driver="gelsd").solution
    return torch.linalg.pinv(a64, rtol=rcond) @ b64


def _check_offsets(offsets: torch.Tensor, n_tokens: int) -> list[int]:
    """Validate text offsets ``[n+1]`` against ``n_tokens``; return them as Python ints."""
    if offsets.ndim != 1 or offsets.numel() < 1 or offsets.is_floating_point():
        raise ValueError(
            f"offsets must be a 1-D integer tensor [n+1], got {offsets.dtype} {list(offsets.shape)}"
        )
    bounds = [int(v) for v in offsets.tolist()]
    if bounds[0] != 0 or bounds[-1] != n_tokens:
        raise ValueError(
            f"offsets must start at 0 and end at the token count {n_tokens}, got "
            f"{bounds[0]}..{bounds[-1]}"
        )
    if any(b < a for a, b in itertools.pairwise(bounds)):
        raise ValueError("offsets must be non-decreasing")
    return bounds
