"""Containers for activations extracted at one hook point (layer and kind) of a model."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerActivations:
    """Activations of one hook point (e.g. ``blocks.3.hook_mlp_out``) for N texts.

    Attributes:
        pooled: ``[N, d_model]`` float32, one vector per text: ``last`` (the last real token) or
            ``mean`` pooling (of the non-special tokens unless special tokens were included; all
            tokens of a text made only of special tokens).
        tokens: ``[T, d_model]`` float32, every real (non-padding) token of every text, texts
            concatenated in input order; ``None`` unless token-level activations were requested.
        offsets: ``[N + 1]`` int64; the tokens of text ``i`` are ``tokens[offsets[i]:offsets[i+1]]``.
        special: ``[T]`` bool; True where the token is a special token (BOS, CLS, SEP, ...).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    special: torch.Tensor | None = None

    @property
    def n_rows(self) -> int:
        return int(self.pooled.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.pooled.shape[1])

    @property
    def has_tokens(self) -> bool:
        return self.tokens is not None

    def select_rows(self, rows: torch.Tensor | list[int]) -> LayerActivations:
        """Activations of a subset of texts, in the order given (token arrays re-packed)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        pooled = self.pooled[idx]
        if self.tokens is None or self.offsets is None:
            return LayerActivations(pooled=pooled)
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts
        offsets = torch.zeros(len(idx) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(lengths, 0)
        # Token j of the selected rows comes from starts[row] + (j - offsets[row]).
        gather = torch.arange(int(offsets[-1])) + torch.repeat_interleave(
            starts - offsets[:-1], lengths
        )
        special = self.special[gather] if self.special is not None else None
        return LayerActivations(
            pooled=pooled, tokens=self.tokens[gather], offsets=offsets, special=special
        )
