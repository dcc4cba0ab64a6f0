"""Training forward of Gated SAEs.

Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders"
(arXiv 2404.16014), eqs. 6-8; dictionary_learning ``trainers/gdm.py``:

    x' = x - b_dec,  pi_gate = x' W_enc + b_gate,  pi_mag = x' (W_enc * exp(r_mag)) + b_mag
    f = 1[pi_gate > 0] * ReLU(pi_mag),  x^ = f W_dec + b_dec
    loss = ||x - x^||^2 + lambda(t) * ||ReLU(pi_gate)||_1
           + ||x - (ReLU(pi_gate) W_dec' + b_dec')||^2     (W_dec', b_dec': detached copies)

The auxiliary reconstruction goes through a frozen decoder, as the paper and dictionary_learning do
(SAELens lets its gradient reach the decoder; its issue #543). Decoder rows are kept unit-norm by
projected gradient (the paper's constraint), so the L1 needs no decoder-norm weighting.
``x' W_enc`` is computed once for both paths.
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.sae.training.base import Family, StepContext, TrainStep, metrics_of, reconstruction


class GatedFamily(Family):
    """Gated (module docstring)."""

    architecture = "gated"
    saved_as = "gated"

    def init_params(self, w0: torch.Tensor, b_dec0: torch.Tensor) -> dict[str, torch.Tensor]:
        zeros = torch.zeros(self.d_sae, dtype=w0.dtype, device=w0.device)
        return {
            "W_enc_T": w0.clone(),
            "b_gate": zeros.clone(),
            "b_mag": zeros.clone(),
            "r_mag": zeros.clone(),
            "W_dec": w0.clone(),
            "b_dec": b_dec0.clone(),
        }

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        hx = (x - p["b_dec"]) @ p["W_enc_T"].T  # [B, F]
        pi_gate = hx + p["b_gate"]
        gate_act = torch.relu(pi_gate)
        mag = torch.relu(hx * torch.exp(p["r_mag"]) + p["b_mag"])
        f = (pi_gate > 0).to(x.dtype) * mag
        x_hat = f @ p["W_dec"] + p["b_dec"]
        mse, fvu = reconstruction(x, x_hat)
        coef = float(self.cfg.l1_coefficient) * ctx.sparsity_factor
        l1 = coef * gate_act.sum(dim=1).mean()
        x_gate = gate_act @ p["W_dec"].detach() + p["b_dec"].detach()
        aux = (x - x_gate).pow(2).sum(dim=1).mean()
        terms = {"mse": mse, "l1": l1, "aux_gate": aux}
        active = f.detach() > 0
        return TrainStep(
            mse + l1 + aux, terms, metrics_of(mse, fvu, active.sum(), x.shape[0]), active.any(0)
        )

    def inference_arch(self) -> dict[str, Any]:
        return {}
