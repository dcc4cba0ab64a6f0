"""MP-SAE: a fixed number of signed matching-pursuit steps on a tied dictionary, trainable."""

from __future__ import annotations

from typing import ClassVar

import torch

from saelab.errors import SAEFileError
from saelab.sae.base import REQUIRED, ArchField, SAEConfig, TiedSAE, register_sae


@register_sae("mp_sae")
class MPSAE(TiedSAE):
    """Tied SAE whose encoder runs exactly ``k`` signed matching-pursuit steps (codes are signed).

    Source: Mallat & Zhang 1993, "Matching pursuits with time-frequency dictionaries" (IEEE TSP
    41(12)); as an SAE encoder: Costa et al. 2025 (arXiv 2506.03093), overcomplete
    ``sae/mp_sae.py`` (``MpSAE``, ``k`` steps, no ReLU, no early stop) and lambdaofgod/sae_research
    ``instance_sae.py`` (``MPSAE``, selection by ``|r . d_i|``). With ``d_i`` the rows of ``W_dec``:

        r = x'                                   (x' = norm_in(x) - b_dec * [apply_b_dec_to_input])
        repeat k times:
            j = argmax_i |r . d_i| / ||d_i||       (index search without gradient)
            v = (r . d_j) / ||d_j||^2              (signed; with gradient)
            f_j += v;  r -= v d_j                  (an atom may be picked again: values add up)
        x^ = norm_out(f W_dec + b_dec * [apply_b_dec_to_input])

    Decoder norms: the peers assume unit-norm rows, where ``v = r . d_j`` and selection is by
    ``|r . d_i|``. Here each step is the exact projection of ``r`` on the selected atom, so for
    unit-norm rows the code is the peers' code, and for any other norms the step still removes
    ``(r . d_j)^2 / ||d_j||^2`` from ``||r||^2`` (``||r||`` never grows and ``r`` ends orthogonal
    to the last atom), and codes and reconstruction are invariant to rescaling an atom (its code
    scales inversely). The peers' update ``v = r . d_j`` on a non-unit atom over- or under-shoots
    and can make ``||r||`` grow, so training would have to keep the decoder on the unit sphere;
    with the division it need not, though a unit-norm decoder remains the usual choice. A zero
    atom has correlation 0 and, if ever selected, gets code 0.

    The index search is the only step without gradient, so ``encode`` is differentiable w.r.t.
    ``W_dec`` and ``b_dec`` (and the input); only ``[B, d_in]`` tensors are kept per step for
    backward, never the ``[B, d_sae]`` correlations. L0 <= k.

    Parameters: W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``; ``W_enc`` is the read-only view
    ``W_dec^T``. Architecture field: ``k``, the number of pursuit steps (required, >= 1).
    Saved in the SAELens folder layout under the saelab-only architecture name ``mp_sae``.
    """

    signed_codes: ClassVar[bool] = True
    arch_fields: ClassVar[dict[str, ArchField]] = {"k": ArchField(int, REQUIRED)}

    @classmethod
    def check_arch(cls, cfg: SAEConfig, source: str) -> None:
        if cfg.arch["k"] < 1:
            raise SAEFileError(
                f"{source}: key 'k' (matching-pursuit steps) must be >= 1, got {cfg.arch['k']}"
            )

    @property
    def k(self) -> int:
        return int(self.cfg.arch["k"])

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> signed codes ``[..., d_sae]`` with at most k nonzeros per row."""
        codes = signed_matching_pursuit(sae_in.reshape(-1, self.d_in), self.W_dec, self.k)
        return codes.reshape(*sae_in.shape[:-1], self.d_sae)


def signed_matching_pursuit(x: torch.Tensor, W_dec: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` signed matching-pursuit steps of ``x`` on the rows of ``W_dec`` (see :class:`MPSAE`).

    Args:
        x: centred inputs ``[B, d_in]``.
        W_dec: dictionary ``[d_sae, d_in]``, any row norms.
        steps: number of greedy steps.

    Returns:
        Signed codes ``[B, d_sae]``, differentiable w.r.t. ``x`` and ``W_dec`` through the values.
    """
    codes = torch.zeros(x.shape[0], W_dec.shape[0], dtype=x.dtype, device=x.device)
    tiny = torch.finfo(W_dec.dtype).tiny
    with torch.no_grad():
        inv_norm = W_dec.norm(dim=-1).clamp_min(tiny).reciprocal()  # [d_sae]
    residual = x
    for _ in range(steps):
        with torch.no_grad():
            idx = ((residual @ W_dec.T).abs_() * inv_norm).argmax(dim=-1, keepdim=True)  # [B, 1]
        atoms = W_dec[idx.squeeze(-1)]  # [B, d_in]
        values = (residual * atoms).sum(dim=-1, keepdim=True) / (atoms * atoms).sum(
            dim=-1, keepdim=True
        ).clamp_min(tiny)  # [B, 1]
        codes.scatter_add_(1, idx, values.to(codes.dtype))
        residual = residual - values * atoms
    return codes
