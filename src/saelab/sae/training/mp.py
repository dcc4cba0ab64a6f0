"""Training forward of matching-pursuit SAEs through their own differentiable ``encode``.

MP-SAE (Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse Representations with
Matching Pursuit", arXiv 2506.03093): the encoder is ``k`` greedy pursuit steps on the residual
with the decoder as dictionary (tied weights), so the only parameters are ``W_dec`` and ``b_dec``
and the loss is the reconstruction alone, ``mse = mean_t ||x - x^||^2``; the dictionary is
trained end to end through the selected coefficients (Costa et al.; overcomplete ``MpSAE``).
Codes are signed, so "fired" means nonzero. Decoder rows (the atoms) are kept unit-norm by
projected gradient, which pursuit assumes.

The inference class is the registry's ``mp_sae`` (``saelab.sae.mp_sae``); this family builds it
and trains its parameters in place.
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.errors import ConfigError
from saelab.sae.base import SAE, SAEConfig, known_architectures, sae_class
from saelab.sae.training.base import Family, StepContext, TrainStep, metrics_of, reconstruction

MP_ARCHITECTURE = "mp_sae"


class MPFamily(Family):
    """Matching pursuit trained through the inference module's ``encode`` (module docstring)."""

    architecture = "mp_sae"
    saved_as = MP_ARCHITECTURE

    def __init__(self, cfg: Any, d_in: int, d_sae: int) -> None:
        super().__init__(cfg, d_in, d_sae)
        if MP_ARCHITECTURE not in known_architectures():
            raise ConfigError(
                f"SAE training config: architecture '{MP_ARCHITECTURE}' needs the registered "
                f"inference class (saelab.sae.mp_sae); known: {known_architectures()}"
            )
        self.module: SAE | None = None

    def init_params(self, w0: torch.Tensor, b_dec0: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = SAEConfig(
            d_in=self.d_in,
            d_sae=self.d_sae,
            architecture=MP_ARCHITECTURE,
            arch=self.inference_arch(),
        )
        module = sae_class(MP_ARCHITECTURE)(cfg, device=w0.device)
        with torch.no_grad():
            module.W_dec.copy_(w0)
            module.b_dec.copy_(b_dec0)
        self.module = module
        return dict(module.named_parameters())

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        module = self.module
        assert module is not None
        f = module.encode(x)
        x_hat = module.decode(f)
        mse, fvu = reconstruction(x, x_hat)
        active = f.detach() != 0
        return TrainStep(
            mse, {"mse": mse}, metrics_of(mse, fvu, active.sum(), x.shape[0]), active.any(0)
        )

    def inference_arch(self) -> dict[str, Any]:
        return {"k": int(self.cfg.k)}

    def inference_tensors(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: t.detach() for name, t in p.items()}
