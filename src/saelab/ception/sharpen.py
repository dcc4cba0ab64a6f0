"""Sharpening: the auxiliary-loss targets of one SAE-ception cycle.

From the codes ``f_i = SAE.encode(h_i)`` of the training examples (SAE-ception, Bishka et al.
2025; strategies as in the authors' v2 code, ``sharpening/*.py``, with absolute counts ``K``):

- ``per_class``: ``S_c`` = the ``K`` latents with the largest class-mean code
  ``m_c = mean_{i: y_i = c} f_i``; example ``i`` keeps ``f_i`` on ``S_{y_i}`` only (labels are used
  to build training targets and nowhere else);
- ``per_example``: example ``i`` keeps its own ``K`` largest codes (by magnitude, so signed codes
  work too);
- ``random`` (control): ``t_i`` is a unit Gaussian direction per example, the SAE ignored;
- ``none`` (control): no target (``lambda = 0``, plain continued fine-tuning).

The target is the decoded sharpened code without the decoder bias,
``t_i = W_dec^T (f_i * 1[S]) = decode(f_i * 1[S]) - decode(0)``, compared with ``h_i - b_dec``
(``b_dec = decode(0)``): a nearly empty code would otherwise give a target equal to ``b_dec`` for
every example (a flaw of the v2 code). An example whose sharpened code is all zero has no target
and is left out of ``L_aux``.
"""

from __future__ import annotations

import torch

from saelab.ception.classifier import AuxTargets
from saelab.ception.names import STRATEGIES
from saelab.errors import ConfigError
from saelab.sae.base import SAE

_CHUNK = 4096


@torch.no_grad()
def sae_codes(sae: SAE, h: torch.Tensor) -> torch.Tensor:
    """Dense codes ``[N, d_sae]`` float32 on CPU of representations ``h`` ``[N, d_in]``."""
    out = torch.empty(h.shape[0], sae.d_sae, dtype=torch.float32)
    for s in range(0, h.shape[0], _CHUNK):
        out[s : s + _CHUNK] = sae.encode(h[s : s + _CHUNK].to(sae.device)).float().cpu()
    return out


@torch.no_grad()
def decode_codes(sae: SAE, codes: torch.Tensor) -> torch.Tensor:
    """Reconstructions ``[N, d_in]`` float32 on CPU of dense codes."""
    out = torch.empty(codes.shape[0], sae.d_in, dtype=torch.float32)
    for s in range(0, codes.shape[0], _CHUNK):
        chunk = codes[s : s + _CHUNK].to(sae.device, sae.dtype)
        out[s : s + _CHUNK] = sae.decode(chunk).float().cpu()
    return out


def class_supports(codes: torch.Tensor, labels: torch.Tensor, k: int) -> dict[int, torch.Tensor]:
    """``S_c``: the ``k`` latents with the largest mean code over the examples of class ``c``
    (per_class sharpening), for every class present in ``labels``."""
    k = min(k, codes.shape[1])
    return {
        int(c): torch.topk(codes[labels == c].mean(dim=0), k).indices
        for c in torch.unique(labels).tolist()
    }


def sharpen_codes(codes: torch.Tensor, labels: torch.Tensor, strategy: str, k: int) -> torch.Tensor:
    """Sharpened codes ``[N, d_sae]`` for ``per_class`` or ``per_example`` (module docstring)."""
    if k < 1:
        raise ConfigError(f"sharpen_k must be >= 1, got {k}")
    mask = torch.zeros_like(codes, dtype=torch.bool)
    if strategy == "per_class":
        for c, support in class_supports(codes, labels, k).items():
            rows = torch.nonzero(labels == c).flatten()
            mask[rows.unsqueeze(1), support.unsqueeze(0)] = True
    elif strategy == "per_example":
        top = torch.topk(codes.abs(), min(k, codes.shape[1]), dim=1).indices
        mask.scatter_(1, top, True)
    else:
        raise ConfigError(f"sharpen_codes: strategy {strategy!r} is not per_class / per_example")
    return torch.where(mask, codes, torch.zeros((), dtype=codes.dtype))


@torch.no_grad()
def build_targets(
    strategy: str,
    sae: SAE,
    h: torch.Tensor,
    labels: torch.Tensor,
    k: int,
    seed: int,
) -> AuxTargets | None:
    """The auxiliary targets of the training examples ``h`` ``[N, d]`` (module docstring);
    None for ``none``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown sharpening strategy {strategy!r}; expected {STRATEGIES}")
    if strategy == "none":
        return None
    zero = torch.zeros(1, sae.d_sae, dtype=sae.dtype, device=sae.device)
    offset = sae.decode(zero)[0].float().cpu()
    n, d = int(h.shape[0]), int(h.shape[1])
    if strategy == "random":
        gen = torch.Generator().manual_seed(int(seed))
        t = torch.randn(n, d, generator=gen)
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return AuxTargets(vectors=t, valid=torch.ones(n, dtype=torch.bool), offset=offset)
    sharp = sharpen_codes(sae_codes(sae, h), labels, strategy, k)
    t = decode_codes(sae, sharp) - offset
    valid = (sharp != 0).any(dim=1) & (t.norm(dim=1) > 0)
    return AuxTargets(vectors=t, valid=valid, offset=offset)
