"""How well an SAE reconstructs a set of token activations: FVU, L0 and the share of silent latents.

The figures of the run's SAE table (one row per SAE and layer), measured on the same held-out
tokens for every SAE of a run, whatever its architecture or origin, so they compare:

    fvu  = sum_t ||x_t - x^_t||^2 / sum_t ||x_t - mean_t(x)||^2      (Gao et al. 2024, §2.1)
    l0   = mean over tokens of #{i : f_i(x_t) != 0}
    dead = share of latents with f_i(x_t) = 0 on every token (a lower bound on the never-firing
           share: a latent silent on these tokens may fire elsewhere)

``x^`` is the SAE's own reconstruction, in the input's units (``decode`` with the normalisation
state of ``encode_with_state``); sequence-level SAEs (IHTP) are encoded text by text.
"""

from __future__ import annotations

import torch

from saelab.sae.base import SAE

#: Entries of the dense ``[rows, d_sae]`` code block computed at a time (about 32 MB in float32).
_BLOCK_ELEMENTS = 1 << 23


@torch.no_grad()
def reconstruction_quality(
    sae: SAE, tokens: torch.Tensor, offsets: torch.Tensor | None = None
) -> dict[str, float]:
    """FVU, L0 and dead fraction of ``sae`` on ``tokens`` (module docstring for the formulas).

    Args:
        sae: any inference SAE.
        tokens: ``[T, d_in]`` token activations.
        offsets: ``[n + 1]`` text boundaries of ``tokens`` (needed by sequence-level SAEs; without
            it every token is its own text).

    Returns:
        ``{"fvu", "l0", "dead_fraction", "n_tokens"}``.
    """
    n = int(tokens.shape[0])
    if n == 0:
        return {
            "fvu": float("nan"),
            "l0": float("nan"),
            "dead_fraction": float("nan"),
            "n_tokens": 0,
        }
    if offsets is None:
        offsets = torch.arange(n + 1)
    mean = tokens.double().mean(dim=0)
    sq_err = sq_dev = 0.0
    nonzero = 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    rows = max(1, _BLOCK_ELEMENTS // sae.d_sae)
    sequence_level = getattr(sae, "sequence_level", False)
    for start, stop in text_chunks(offsets, rows):
        x = tokens[start:stop].to(sae.device, sae.dtype)
        sae_in, state = sae.preprocess(x)
        if sequence_level:
            local = offsets[(offsets >= start) & (offsets <= stop)] - start
            f = sae.encode_texts(x, local)
        else:
            f = sae.encode_pre(sae_in)
        x_hat = sae.decode(f, state)
        xd = x.double()
        sq_err += float((xd - x_hat.double()).pow(2).sum())
        sq_dev += float((xd - mean.to(xd.device)).pow(2).sum())
        active = f != 0
        nonzero += int(active.sum())
        fired |= active.any(dim=0).cpu()
    return {
        "fvu": sq_err / sq_dev if sq_dev > 0 else float("nan"),
        "l0": nonzero / n,
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": n,
    }


def text_chunks(offsets: torch.Tensor, rows: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, stop)`` of whole texts, each at most ``rows`` tokens (a longer text
    forms a range alone): the text groups of ``saelab.sae.encode`` in token positions."""
    from saelab.sae.encode import _text_chunks

    bounds = [int(o) for o in offsets]
    return [(bounds[r0], bounds[r1]) for r0, r1 in _text_chunks(offsets.cpu(), rows)]
