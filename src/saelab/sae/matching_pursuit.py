"""Matching-pursuit SAE (SAELens ``matching_pursuit`` architecture): tied, greedy, non-negative."""

from __future__ import annotations

from typing import ClassVar

import torch

from saelab.errors import SAEFileError
from saelab.sae.base import ArchField, SAEConfig, TiedSAE, register_sae


@register_sae("matching_pursuit")
class MatchingPursuitSAE(TiedSAE):
    """Tied SAE whose encoder is a non-negative greedy matching pursuit on the decoder rows.

    Source: Costa et al. 2025, "From Flat to Hierarchical: Extracting Sparse Representations with
    Matching Pursuit" (arXiv 2506.03093); SAELens 6.54 ``saes/matching_pursuit_sae.py``
    (``MatchingPursuitSAE``, ``_encode_matching_pursuit``), whose files this class reads and writes
    with identical codes. With ``d_j`` the rows of ``W_dec``:

        r = x'                                   (x' = norm_in(x) - b_dec * [apply_b_dec_to_input])
        repeat up to max_iterations (None: d_in) times, per row while not stopped:
            j = argmax_i ReLU(r . d_i);  v = ReLU(r . d_j)
            f_j += v;  r -= v d_j
            stop if supp(f) did not change (stop_on_duplicate_support)
                 or ||r|| < residual_threshold (when residual_threshold > 0)
        x^ = norm_out(f W_dec + b_dec * [apply_b_dec_to_input])

    ``b_dec`` enters the reconstruction only when it was subtracted from the input (SAELens'
    ``decode``), since the tied encoder never sees it otherwise. Codes are non-negative. The index
    search runs without gradient; the selected values keep theirs (w.r.t. ``W_dec``, ``b_dec``),
    as in SAELens, so the encoder can be trained through.

    Parameters: W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``; ``W_enc`` is the read-only view
    ``W_dec^T`` ``[d_in, d_sae]``. Architecture fields (SAELens ``MatchingPursuitSAEConfig``):
    ``residual_threshold`` (1e-2), ``max_iterations`` (None), ``stop_on_duplicate_support`` (True).
    """

    arch_fields: ClassVar[dict[str, ArchField]] = {
        "residual_threshold": ArchField(float, 1e-2),
        "max_iterations": ArchField(object, None),  # int >= 1 or None (checked in check_arch)
        "stop_on_duplicate_support": ArchField(bool, True),
    }

    @classmethod
    def check_arch(cls, cfg: SAEConfig, source: str) -> None:
        steps = cfg.arch["max_iterations"]
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise SAEFileError(
                f"{source}: key 'max_iterations' must be a positive integer or null, got {steps!r}"
            )

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> non-negative codes ``[..., d_sae]``."""
        arch = self.cfg.arch
        steps = arch["max_iterations"] if arch["max_iterations"] is not None else self.d_in
        codes = matching_pursuit(
            sae_in.reshape(-1, self.d_in),
            self.W_dec,
            max_iterations=int(steps),
            residual_threshold=float(arch["residual_threshold"]),
            stop_on_duplicate_support=bool(arch["stop_on_duplicate_support"]),
        )
        return codes.reshape(*sae_in.shape[:-1], self.d_sae)


def matching_pursuit(
    x: torch.Tensor,
    W_dec: torch.Tensor,
    max_iterations: int,
    residual_threshold: float,
    stop_on_duplicate_support: bool,
) -> torch.Tensor:
    """Non-negative greedy matching pursuit with per-row early stop (see :class:`MatchingPursuitSAE`).

    Rows that have stopped are dropped from later iterations (their codes and residuals no longer
    change, exactly as when SAELens masks them), so adaptive stopping also saves compute. A row
    stops on a duplicate support when its step re-selects an atom already in its support or adds
    ``ReLU(.) = 0``; that step's value is still added (SAELens checks the support after adding).

    Args:
        x: centred inputs ``[B, d_in]``.
        W_dec: dictionary ``[d_sae, d_in]``.

    Returns:
        Codes ``[B, d_sae]`` (differentiable w.r.t. ``x`` and ``W_dec`` through the selected values).
    """
    n = x.shape[0]
    codes = torch.zeros(n, W_dec.shape[0], dtype=x.dtype, device=x.device)
    rows = torch.arange(n, device=x.device)  # rows still running
    residual = x
    use_threshold = residual_threshold > 0
    for _ in range(max_iterations):
        if rows.numel() == 0:
            break
        with torch.no_grad():
            idx = torch.relu(residual @ W_dec.T).argmax(dim=-1)  # [b]
            was_in_support = codes[rows, idx] != 0
        atoms = W_dec[idx]  # [b, d_in]
        values = torch.relu((residual * atoms).sum(dim=-1))  # [b]
        codes.index_put_((rows, idx), values, accumulate=True)
        residual = residual - values.unsqueeze(-1) * atoms
        if not (stop_on_duplicate_support or use_threshold):
            continue
        with torch.no_grad():
            done = torch.zeros_like(was_in_support)
            if stop_on_duplicate_support:
                done |= was_in_support | (values == 0)
            if use_threshold:
                done |= residual.norm(dim=-1) < residual_threshold
            keep = ~done
        if not bool(keep.all()):
            rows, residual = rows[keep], residual[keep]
    return codes
