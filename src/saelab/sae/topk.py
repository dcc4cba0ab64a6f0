"""TopK SAE (SAELens ``topk`` architecture)."""

from __future__ import annotations

from typing import ClassVar

import torch

from saelab.sae.base import REQUIRED, SAE, ArchField, SAEConfig, check_k_range, register_sae


@register_sae("topk")
class TopKSAE(SAE):
    """Keep the k largest pre-activations, then ReLU.

    Source: Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (arXiv 2406.04093), eq. 3
    (``z = ReLU(TopK(W_enc (x - b_pre)))`` as in their code); SAELens ``saes/topk_sae.py``:

        h = x' W_enc + b_enc                     (times ||W_dec[i]|| if rescale_acts_by_decoder_norm)
        f = scatter(idx, ReLU(v)),  (v, idx) = topk(h, k)
        x^ = (f / ||W_dec[i]|| if rescaled) W_dec + b_dec

    Architecture fields: ``k`` (required), ``rescale_acts_by_decoder_norm`` (default False).
    """

    arch_fields: ClassVar[dict[str, ArchField]] = {
        "k": ArchField(int, REQUIRED),
        "rescale_acts_by_decoder_norm": ArchField(bool, False),
    }

    @classmethod
    def check_arch(cls, cfg: SAEConfig, source: str) -> None:
        check_k_range(cfg, source)

    @property
    def k(self) -> int:
        return int(self.cfg.arch["k"])

    def topk_pre(self, sae_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected values (after ReLU) and latent indices, each ``[..., k]``."""
        h = sae_in @ self.W_enc + self.b_enc
        if self.cfg.arch["rescale_acts_by_decoder_norm"]:
            h = h * self.W_dec.norm(dim=-1)
        values, indices = torch.topk(h, k=self.k, dim=-1, sorted=False)
        return torch.relu(values), indices

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> ``[..., d_sae]`` with at most k nonzeros per row."""
        values, indices = self.topk_pre(sae_in)
        shape = (*sae_in.shape[:-1], self.d_sae)
        out = torch.zeros(shape, dtype=values.dtype, device=values.device)
        return out.scatter_(-1, indices, values)

    def decode_raw(self, f: torch.Tensor) -> torch.Tensor:
        """``[..., d_sae]`` -> ``[..., d_in]``."""
        if self.cfg.arch["rescale_acts_by_decoder_norm"]:
            f = f * (1 / self.W_dec.norm(dim=-1))
        return f @ self.W_dec + self.b_dec
