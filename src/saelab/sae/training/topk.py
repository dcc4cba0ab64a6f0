"""Training forwards of the TopK family: TopK, BatchTopK, Matryoshka BatchTopK (sparse kernels).

- **TopK** (Gao et al. 2024, arXiv 2406.04093, §2 and §A): ``h = (x - b_dec) W_enc + b_enc``,
  codes ``ReLU`` of each token's ``k`` largest ``h`` (top-k first, then ReLU, as Gao's code and
  SAELens). Loss: ``fvu`` (Gao's normalised MSE) + ``auxk``.
- **BatchTopK** (Bussmann et al. 2024, arXiv 2412.06410; SAELens ``batchtopk_sae.py``): the
  ``k * B`` largest ``ReLU(h)`` over the whole batch. A running threshold
  ``theta <- (1 - r) theta + r * min(selected value)`` (rate ``r = 0.01``, SAELens
  ``topk_threshold_lr``; started at the first batch's value) is saved as a ``jumprelu`` SAE with
  ``threshold = theta`` for every latent (SAELens ``process_state_dict_for_saving_inference``).
- **Matryoshka BatchTopK** (Bussmann et al. 2025, arXiv 2503.17547; SAELens
  ``matryoshka_batchtopk_sae.py``, dictionary_learning ``matryoshka_batch_top_k.py``): BatchTopK
  codes; loss = mean over the nested prefixes ``w`` of ``fvu(x, b_dec + f[:, :w] W_dec[:w])``
  (dictionary_learning's uniform group weights; the last prefix is the whole SAE) + ``auxk``.
  Saved as ``jumprelu`` like BatchTopK.
- **AuxK** (Gao §A.2): the ``k_aux`` largest pre-activations among dead latents (not fired for the
  dead window) reconstruct the detached residual ``e = x - x^`` without bias:
  ``auxk = coef * sum ||e - e^||^2 / sum ||e - mean(e)||^2``; ``k_aux`` defaults to ``d_in / 2``
  (Gao, sparsify, SAELens), capped by the number of dead latents.

Decoder rows stay unit-norm (projected gradient in the loop; dictionary_learning, sparsify).
"""

from __future__ import annotations

from typing import Any

import torch

from saelab.errors import ConfigError
from saelab.sae.training.base import (
    Family,
    StepContext,
    TrainStep,
    metrics_of,
    reconstruction,
)
from saelab.sae.training.sparse import (
    BatchTopKSelector,
    Selection,
    sparse_codes,
    sparse_decode,
)

THRESHOLD_EMA_RATE = 0.01  # SAELens BatchTopKTrainingSAEConfig.topk_threshold_lr
#: AuxK runs dense products on the dead latents while there are at most this many times k_aux of
#: them, the sparse kernels beyond (measured crossover on the CPU, d_in 384, k_aux 192).
DENSE_AUX_FACTOR = 4


class TopKFamily(Family):
    """TopK: ``k`` latents per token (module docstring)."""

    architecture = "topk"
    saved_as = "topk"

    def __init__(self, cfg: Any, d_in: int, d_sae: int) -> None:
        super().__init__(cfg, d_in, d_sae)
        self.k = int(cfg.k)
        self.k_aux = min(cfg.k_aux if cfg.k_aux is not None else max(1, d_in // 2), d_sae)
        self.dense_aux_factor = DENSE_AUX_FACTOR

    def select(self, h: torch.Tensor) -> Selection:
        """The selected (token, latent) pairs of the detached pre-activations ``h`` ``[B, F]``."""
        return Selection.per_row(h.topk(self.k, dim=1, sorted=False).indices, self.d_sae)

    def encode_decode(
        self, x: torch.Tensor, p: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Selection, torch.Tensor]:
        """``(sae_in, h, codes [nnz], selection, x^ without b_dec)``."""
        sae_in = x - p["b_dec"]
        with torch.no_grad():
            h = torch.addmm(p["b_enc"], sae_in, p["W_enc_T"].T)  # [B, F], the only dense product
        sel = self.select(h)
        vals = sparse_codes(sae_in, p["W_enc_T"], p["b_enc"], h, sel)
        return sae_in, h, vals, sel, sparse_decode(vals, p["W_dec"], sel)

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        sae_in, h, vals, sel, y = self.encode_decode(x, p)
        x_hat = y + p["b_dec"]
        mse, fvu = reconstruction(x, x_hat)
        terms = {"fvu": fvu}
        self.add_auxk(terms, x, x_hat, sae_in, h, p, ctx.dead)
        return self.finish(terms, mse, fvu, vals, sel, x.shape[0])

    def finish(
        self,
        terms: dict[str, torch.Tensor],
        mse: torch.Tensor,
        fvu: torch.Tensor,
        vals: torch.Tensor,
        sel: Selection,
        n: int,
    ) -> TrainStep:
        active = vals.detach() > 0
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=vals.device)
        fired[sel.cols[active]] = True
        loss = sum(terms.values())
        return TrainStep(loss, terms, metrics_of(mse, fvu, active.sum(), n), fired)  # type: ignore[arg-type]

    def add_auxk(
        self,
        terms: dict[str, torch.Tensor],
        x: torch.Tensor,
        x_hat: torch.Tensor,
        sae_in: torch.Tensor,
        h: torch.Tensor,
        p: dict[str, torch.Tensor],
        dead: torch.Tensor,
    ) -> None:
        """Add ``terms["auxk"]`` (module docstring) when AuxK is on and some latent is dead."""
        coef = float(self.cfg.auxk_coefficient or 0.0)
        if coef <= 0:
            return
        dead_idx = dead.nonzero().squeeze(1)
        n_dead = int(dead_idx.shape[0])
        if n_dead == 0:
            return
        if n_dead <= self.dense_aux_factor * self.k_aux:
            # few dead latents: dense products on the dead subset only (faster than the sparse
            # kernels over n * k_aux entries), the same loss and gradients
            w_enc, w_dec = p["W_enc_T"][dead_idx], p["W_dec"][dead_idx]  # [n_dead, d_in]
            h_dead = torch.addmm(p["b_enc"][dead_idx], sae_in, w_enc.T)  # [B, n_dead]
            codes = torch.relu(h_dead)
            if n_dead > self.k_aux:
                with torch.no_grad():
                    top = h_dead.topk(self.k_aux, dim=1, sorted=False).indices
                    keep = torch.zeros_like(h_dead).scatter_(1, top, 1.0)
                codes = codes * keep
            e_hat = codes @ w_dec
        else:
            with torch.no_grad():
                top = h[:, dead_idx].topk(self.k_aux, dim=1, sorted=False).indices
            aux_sel = Selection.per_row(dead_idx[top].contiguous(), self.d_sae)
            aux_vals = sparse_codes(sae_in, p["W_enc_T"], p["b_enc"], h, aux_sel)
            e_hat = sparse_decode(aux_vals, p["W_dec"], aux_sel)
        e = (x - x_hat).detach()
        aux = (e - e_hat).pow(2).sum() / (e - e.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        terms["auxk"] = coef * aux

    def inference_arch(self) -> dict[str, Any]:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}


class BatchTopKFamily(TopKFamily):
    """BatchTopK: ``k * B`` latents over the batch, saved as JumpReLU (module docstring)."""

    architecture = "batchtopk"
    saved_as = "jumprelu"

    def __init__(self, cfg: Any, d_in: int, d_sae: int) -> None:
        super().__init__(cfg, d_in, d_sae)
        self.selector = BatchTopKSelector()
        self.threshold = torch.full((), float("nan"), dtype=torch.float64)

    def select(self, h: torch.Tensor) -> Selection:
        flat = self.selector(h, self.k * h.shape[0])
        return Selection.from_flat(flat, h.shape[0], self.d_sae)

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        out = super().forward(x, p, ctx)
        self.update_threshold(out.extra.get("min_value"))
        return out

    def finish(self, terms, mse, fvu, vals, sel, n) -> TrainStep:  # type: ignore[override]
        out = super().finish(terms, mse, fvu, vals, sel, n)
        pos = vals.detach()
        pos = pos[pos > 0]
        out.extra["min_value"] = float(pos.min()) if pos.numel() else None
        return out

    @torch.no_grad()
    def update_threshold(self, min_value: float | None) -> None:
        """``theta <- (1 - r) theta + r * min_value`` (the first value starts it)."""
        if min_value is None:
            return
        if torch.isnan(self.threshold):
            self.threshold.fill_(min_value)
        else:
            self.threshold.mul_(1 - THRESHOLD_EMA_RATE).add_(THRESHOLD_EMA_RATE * min_value)

    def buffers(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold.clone()}

    def stats(self) -> dict[str, Any]:
        """``threshold_normalised``: the running threshold in training (normalised) units."""
        return {"threshold_normalised": float(self.threshold)}

    def load_buffers(self, buffers: dict[str, torch.Tensor]) -> None:
        self.threshold = buffers["threshold"].to(torch.float64).clone()

    def inference_arch(self) -> dict[str, Any]:
        return {}

    def inference_tensors(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().inference_tensors(p)
        theta = 0.0 if torch.isnan(self.threshold) else float(self.threshold)
        out["threshold"] = torch.full_like(p["b_enc"].detach(), theta)
        return out


class MatryoshkaFamily(BatchTopKFamily):
    """Matryoshka BatchTopK: nested prefix losses (module docstring)."""

    architecture = "matryoshka_batchtopk"

    def __init__(self, cfg: Any, d_in: int, d_sae: int) -> None:
        super().__init__(cfg, d_in, d_sae)
        if cfg.widths is not None:
            self.widths = list(cfg.widths)
        else:  # default prefixes d_sae/16, d_sae/4, d_sae
            self.widths = [*sorted({w for w in (d_sae // 16, d_sae // 4) if 0 < w < d_sae}), d_sae]

    def check(self) -> None:
        super().check()
        if self.widths[-1] != self.d_sae:
            raise ConfigError(
                f"SAE training config: key 'widths' must end at d_sae={self.d_sae}, "
                f"got {self.widths}"
            )

    def forward(self, x: torch.Tensor, p: dict[str, torch.Tensor], ctx: StepContext) -> TrainStep:
        sae_in = x - p["b_dec"]
        with torch.no_grad():
            h = torch.addmm(p["b_enc"], sae_in, p["W_enc_T"].T)
        sel = self.select(h)
        vals = sparse_codes(sae_in, p["W_enc_T"], p["b_enc"], h, sel)
        bounds = torch.tensor(self.widths, device=x.device)
        group = torch.bucketize(sel.cols, bounds, right=True)  # entry's prefix band
        x_hat = p["b_dec"].expand_as(x)
        terms: dict[str, torch.Tensor] = {}
        weight = 1.0 / len(self.widths)
        for g, width in enumerate(self.widths):
            keep = group == g
            x_hat = x_hat + sparse_decode(vals[keep], p["W_dec"], sel.subset(keep))
            mse, fvu = reconstruction(x, x_hat)
            terms[f"fvu_w{width}"] = weight * fvu
        self.add_auxk(terms, x, x_hat, sae_in, h, p, ctx.dead)
        out = self.finish(terms, mse, fvu, vals, sel, x.shape[0])
        self.update_threshold(out.extra.get("min_value"))
        return out
