"""Training forward of JumpReLU SAEs: straight-through threshold gradients and an L0 penalty.

Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders" (arXiv 2407.14435), eqs. 2, 9-12; SAELens ``jumprelu_sae.py`` (``JumpReLU``,
``Step``); dictionary_learning ``trainers/jumprelu.py``:

    h = (x - b_dec) W_enc + b_enc,     f = h * H(h - theta)
    loss = mse + lambda(t) * mean_t sum_i H(h_ti - theta_i)                 (step L0)
        or mse + lambda(t) * (L0_batch / target_l0 - 1)^2                   (target_l0 set)

Pseudo-derivatives with the rectangle kernel ``K(u) = 1[|u| < 1/2]`` and bandwidth ``eps``:
``d f / d theta = -(theta / eps) K((h - theta) / eps)``, ``d H / d theta = -(1 / eps) K(...)``;
``d f / d h = H(h - theta)``, and no gradient of ``H`` reaches ``h`` (DeepMind's choice). The
threshold is a plain parameter projected to ``>= 0`` after each step (SAELens 6.54; the paper
trains ``log theta``). Decoder rows unit-norm by projected gradient (dictionary_learning).
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.sae.training.base import Family, StepContext, TrainStep, metrics_of, reconstruction


class JumpReLUWithL0(torch.autograd.Function):
    """``(f, l0)``: ``f = h * H(h - theta)`` ``[B, F]`` and ``l0 = sum_i H(h - theta)`` ``[B]``,
    with the straight-through gradients of the module docstring.

    Shapes: h ``[B, F]``, theta ``[F]``.
    """

    @staticmethod
    def forward(ctx, h, theta, bandwidth: float):  # type: ignore[override]
        on = h > theta
        ctx.save_for_backward(h, theta, on)
        ctx.bandwidth = bandwidth
        return h * on, on.sum(dim=1).to(h.dtype)

    @staticmethod
    def backward(ctx, grad_f, grad_l0):  # type: ignore[override]
        h, theta, on = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((h - theta).abs() < eps / 2).to(h.dtype)  # K((h - theta) / eps)
        g = grad_f * theta
        if grad_l0 is not None:
            g = g + grad_l0.unsqueeze(1)
        grad_theta = -(window * g).sum(dim=0) / eps
        return grad_f * on, grad_theta, None


class JumpReLUFamily(Family):
    """JumpReLU (module docstring)."""

    architecture = "jumprelu"
    saved_as = "jumprelu"

    def init_params(self, w0: torch.Tensor, b_dec0: torch.Tensor) -> dict[str, torch.Tensor]:
        p = super().init_params(w0, b_dec0)
        p["threshold"] = torch.full_like(p["b_enc"], float(self.cfg.threshold_init))
        return p

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        h = torch.addmm(p["b_enc"], x - p["b_dec"], p["W_enc_T"].T)
        f, l0_rows = JumpReLUWithL0.apply(h, p["threshold"], float(self.cfg.bandwidth))
        x_hat = f @ p["W_dec"] + p["b_dec"]
        mse, fvu = reconstruction(x, x_hat)
        coef = float(self.cfg.l0_coefficient) * ctx.sparsity_factor
        l0 = l0_rows.mean()
        if self.cfg.target_l0 is not None:
            sparsity = coef * (l0 / float(self.cfg.target_l0) - 1).pow(2)
        else:
            sparsity = coef * l0
        terms = {"mse": mse, "l0": sparsity}
        active = f.detach() > 0
        return TrainStep(
            mse + sparsity, terms, metrics_of(mse, fvu, active.sum(), x.shape[0]), active.any(0)
        )

    @torch.no_grad()
    def after_step(self, p: dict[str, torch.Tensor]) -> None:
        p["threshold"].clamp_(min=0.0)

    def inference_arch(self) -> dict[str, Any]:
        return {}
