"""Gated SAE (SAELens ``gated`` architecture)."""

from __future__ import annotations

import torch

from saelab.sae.base import SAE, SAEConfig, register_sae


@register_sae("gated")
class GatedSAE(SAE):
    """Gated encoder with weight sharing between the gate and magnitude paths.

    Source: Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
    Autoencoders" (arXiv 2404.16014), eq. 6 and §3.2; SAELens ``saes/gated_sae.py``:

        h = x' W_enc
        gate = 1[h + b_gate > 0]
        magnitude = ReLU(h * exp(r_mag) + b_mag)   (= x' (W_enc * exp(r_mag)) + b_mag)
        f = gate * magnitude

    Parameters: W_enc ``[d_in, d_sae]``, b_gate, b_mag, r_mag ``[d_sae]``, W_dec ``[d_sae, d_in]``,
    b_dec ``[d_in]`` (no ``b_enc``). ``x' W_enc`` is computed once, so no scaled copy of ``W_enc``
    is allocated (the result equals SAELens' up to float rounding).
    """

    b_gate: torch.nn.Parameter
    b_mag: torch.nn.Parameter
    r_mag: torch.nn.Parameter

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_gate": (cfg.d_sae,),
            "b_mag": (cfg.d_sae,),
            "r_mag": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> ``[..., d_sae]``."""
        h = sae_in @ self.W_enc
        gate = (h + self.b_gate > 0).to(h.dtype)
        magnitude = torch.relu(h * torch.exp(self.r_mag) + self.b_mag)
        return gate * magnitude
