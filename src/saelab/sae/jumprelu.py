"""JumpReLU SAE (SAELens ``jumprelu`` architecture; also what BatchTopK/Matryoshka save as)."""

from __future__ import annotations

import torch

from saelab.errors import SAEFileError
from saelab.sae.base import SAE, SAEConfig, register_sae


@register_sae("jumprelu")
class JumpReLUSAE(SAE):
    """``h = x' W_enc + b_enc``, ``f = ReLU(h) * 1[h > threshold]``.

    Source: Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
    JumpReLU Sparse Autoencoders" (arXiv 2407.14435), eq. 2; SAELens ``saes/jumprelu_sae.py``.

    Parameters: the standard four plus ``threshold`` ``[d_sae]``.
    """

    threshold: torch.nn.Parameter

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {**super().param_shapes(cfg), "threshold": (cfg.d_sae,)}

    @classmethod
    def convert_state_dict(cls, state: dict[str, torch.Tensor], source: str) -> None:
        """Older checkpoints store ``log_threshold``; ``threshold = exp(log_threshold)``
        (SAELens ``JumpReLUTrainingSAE.process_state_dict_for_loading``)."""
        if "log_threshold" in state:
            if "threshold" in state:
                raise SAEFileError(
                    f"{source}: has both 'threshold' and 'log_threshold'; expected one of them"
                )
            state["threshold"] = torch.exp(state.pop("log_threshold")).contiguous()

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> ``[..., d_sae]``."""
        h = sae_in @ self.W_enc + self.b_enc
        return torch.relu(h) * (h > self.threshold).to(h.dtype)
