"""Standard ReLU SAE (SAELens ``standard`` architecture)."""

from __future__ import annotations

import torch

from saelab.sae.base import SAE, register_sae


@register_sae("standard")
class StandardSAE(SAE):
    """``f = ReLU(x' W_enc + b_enc)`` (Bricken et al. 2023, "Towards Monosemanticity";
    SAELens ``saes/standard_sae.py``).

    Parameters: W_enc ``[d_in, d_sae]``, b_enc ``[d_sae]``, W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``.
    """

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> ``[..., d_sae]``."""
        return torch.relu(sae_in @ self.W_enc + self.b_enc)
