"""What every architecture family's training forward speaks: parameters in, named loss terms out.

A family owns its parameters' layout and initialisation, its training forward (returning each loss
term by name, as SAELens ``TrainStepOutput``), any training-only state (BatchTopK's running
threshold), and how it becomes an inference SAE of the registry (training-only machinery folded
away). The loop in ``loop.py`` is the same for all of them.

Training layout of the linear families: ``W_enc_T`` ``[d_sae, d_in]`` (rows = encoder directions,
``W_enc`` transposed so the sparse kernels read rows), ``b_enc`` ``[d_sae]``, ``W_dec``
``[d_sae, d_in]``, ``b_dec`` ``[d_in]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch

from saelab.errors import ConfigError
from saelab.sae.base import SAE, SAEConfig, sae_class
from saelab.sae.training.config import SAETrainConfig

#: Inference tensors measured in units of the input: divided by the normalisation scale ``s`` when
#: it is folded (``x -> s x`` scales every pre-activation, bias and threshold by ``s``).
INPUT_UNIT_TENSORS = ("b_enc", "b_dec", "threshold", "b_gate", "b_mag")


class StepContext(NamedTuple):
    """What a training forward needs besides the batch.

    Attributes:
        step: 0-based optimiser step.
        sparsity_factor: warm-up multiplier of the sparsity coefficient (0 -> 1).
        dead: ``[d_sae]`` bool, latents that have not fired for the dead window.
    """

    step: int
    sparsity_factor: float
    dead: torch.Tensor


@dataclass
class TrainStep:
    """One training forward: the loss, its named terms and batch metrics.

    Attributes:
        loss: scalar to differentiate; equals ``sum(terms.values())``.
        terms: each weighted loss term by name (``fvu``, ``mse``, ``auxk``, ``l1``, ``l0``,
            ``aux_gate``, ``fvu_w<width>``).
        metrics: detached batch scalars ``mse`` (mean over tokens of ``||x - x^||^2``), ``fvu``
            (``sum ||x - x^||^2 / sum ||x - mean(x)||^2``) and ``l0`` (mean nonzero codes).
        fired: ``[d_sae]`` bool, latents with a nonzero code in the batch.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor]
    fired: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


def reconstruction(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mse, fvu)`` of a batch, both differentiable.

    ``mse = mean_t sum_d (x - x^)^2`` (SAELens / dictionary_learning training loss);
    ``fvu = sum (x - x^)^2 / sum (x - mean_batch(x))^2`` (Gao et al. 2024 §2.1 normalised MSE).
    x, x_hat: ``[B, d_in]``.
    """
    sq = (x - x_hat).pow(2).sum()
    mse = sq / x.shape[0]
    fvu = sq / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
    return mse, fvu


def metrics_of(mse: torch.Tensor, fvu: torch.Tensor, nnz: torch.Tensor | int, n: int) -> dict:
    return {"mse": mse.detach(), "fvu": fvu.detach(), "l0": torch.as_tensor(nnz) / n}


def random_unit_rows(d_sae: int, d_in: int, gen: torch.Generator) -> torch.Tensor:
    """``[d_sae, d_in]`` rows uniform on the unit sphere (normalised Gaussians)."""
    w = torch.randn(d_sae, d_in, generator=gen)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Family:
    """Training forward of one architecture family (see the module docstring).

    Class attributes:
        architecture: the training architecture name (``SAETrainConfig.architecture``).
        saved_as: the registry architecture it is saved as (BatchTopK -> ``jumprelu``).
        unit_norm_decoder: keep decoder rows at unit norm by projected gradient.
    """

    architecture: ClassVar[str] = ""
    saved_as: ClassVar[str] = ""
    unit_norm_decoder: ClassVar[bool] = True

    def __init__(self, cfg: SAETrainConfig, d_in: int, d_sae: int) -> None:
        self.cfg, self.d_in, self.d_sae = cfg, d_in, d_sae

    # ----- parameters --------------------------------------------------------------------------
    def init_params(self, w0: torch.Tensor, b_dec0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Initial parameters from unit decoder rows ``w0`` ``[d_sae, d_in]`` and ``b_dec0``.

        Default (Gao et al. 2024 §A.1): ``W_dec = w0``, ``W_enc = W_dec^T``, ``b_enc = 0``,
        ``b_dec`` = the geometric median of the data (dictionary_learning ``top_k.py``).
        """
        return {
            "W_enc_T": w0.clone(),
            "b_enc": torch.zeros(self.d_sae, dtype=w0.dtype, device=w0.device),
            "W_dec": w0.clone(),
            "b_dec": b_dec0.clone(),
        }

    def buffers(self) -> dict[str, torch.Tensor]:
        """Training-only state that is not a parameter (saved in checkpoints)."""
        return {}

    def load_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`buffers` from a checkpoint."""

    # ----- training ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        """Loss terms of the batch ``x`` ``[B, d_in]`` (already normalised)."""
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        """Family statistics for the final stats (e.g. BatchTopK's running threshold)."""
        return {}

    @torch.no_grad()
    def after_step(self, p: dict[str, torch.Tensor]) -> None:
        """Projections after the optimiser step (the loop renormalises the decoder itself)."""

    # ----- inference -----------------------------------------------------------------------------
    def inference_arch(self) -> dict[str, Any]:
        """Architecture fields of the saved config (e.g. ``k``)."""
        return {}

    def inference_tensors(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The saved tensors in SAELens names and orientation (before folding the input scale)."""
        out = {k: v.detach() for k, v in p.items() if k != "W_enc_T"}
        if "W_enc_T" in p:
            out["W_enc"] = p["W_enc_T"].detach().T
        return out

    def inference_sae(
        self,
        p: dict[str, torch.Tensor],
        scale: float = 1.0,
        metadata: dict[str, Any] | None = None,
    ) -> SAE:
        """The inference SAE reading raw inputs ``x`` when training read ``scale * x``.

        Folding (dictionary_learning ``scale_biases``): every tensor in input units
        (:data:`INPUT_UNIT_TENSORS`) is divided by ``scale``; weights are unchanged, so codes come
        out in raw units, ``f_raw = f_scaled / scale``.
        """
        tensors = self.inference_tensors(p)
        state = {
            name: (t / scale if name in INPUT_UNIT_TENSORS and scale != 1.0 else t)
            .detach()
            .contiguous()
            .clone()
            for name, t in tensors.items()
        }
        cfg = SAEConfig(
            d_in=self.d_in,
            d_sae=self.d_sae,
            architecture=self.saved_as,
            arch=self.inference_arch(),
            metadata=dict(metadata or {}),
        )
        sae = sae_class(self.saved_as)(cfg, device="meta")
        expected = set(sae.state_dict())
        if set(state) != expected:
            raise ConfigError(
                f"{self.architecture} training state {sorted(state)} does not match the "
                f"{self.saved_as} SAE's tensors {sorted(expected)}"
            )
        sae.load_state_dict(state, assign=True)
        return sae.requires_grad_(False)

    def check(self) -> None:
        """Family checks against the resolved ``d_in`` / ``d_sae``; ConfigError naming the key."""
        k = self.cfg.k
        if k is not None and k > self.d_sae:
            raise ConfigError(f"SAE training config: key 'k' ({k}) must be <= d_sae ({self.d_sae})")
