"""Training forward of standard ReLU SAEs with the decoder-norm-weighted L1 penalty.

Anthropic, "Circuits Updates - April 2024" (the "April update"); SAELens ``standard_sae.py``
(``StandardTrainingSAE.calculate_aux_loss``); dictionary_learning ``StandardTrainerAprilUpdate``:

    f = ReLU((x - b_dec) W_enc + b_enc),  x^ = f W_dec + b_dec
    loss = mean_t ||x - x^||^2 + lambda(t) * mean_t sum_i f_ti ||W_dec,i||

Decoder norms are free (no unit-norm projection); weighting the penalty by them makes the loss
invariant to trading a code's scale against its decoder row's norm. Decoder rows start at norm 0.1
(SAELens ``decoder_init_norm``, the April update's heuristic), ``W_enc = W_dec^T``.
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.sae.training.base import Family, StepContext, TrainStep, metrics_of, reconstruction

DECODER_INIT_NORM = 0.1


class StandardFamily(Family):
    """Standard ReLU + decoder-norm-weighted L1 (module docstring)."""

    architecture = "standard"
    saved_as = "standard"
    unit_norm_decoder = False

    def init_params(self, w0: torch.Tensor, b_dec0: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().init_params(w0 * DECODER_INIT_NORM, b_dec0)

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        f = torch.relu(torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc_T"].T))
        x_hat = f @ p["W_dec"] + p["b_dec"]
        mse, fvu = reconstruction(x, x_hat)
        coef = float(self.cfg.l1_coefficient) * ctx.sparsity_factor
        l1 = coef * (f @ p["W_dec"].norm(dim=1)).mean()
        active = f.detach() > 0
        return TrainStep(
            mse + l1,
            {"mse": mse, "l1": l1},
            metrics_of(mse, fvu, active.sum(), x.shape[0]),
            active.any(0),
        )

    def inference_arch(self) -> dict[str, Any]:
        return {}
