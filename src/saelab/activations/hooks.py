"""Find a model's transformer blocks and capture the residual stream after them with forward hooks.

Hook names follow TransformerLens (sae_tools_reference.md §3.1, SAELens ``metadata.hook_name``):
the residual stream after block ``L`` is ``blocks.{L}.hook_resid_post``. For a ``transformers``
model it is the output of the ``L``-th module of the block list (the first element when a block
returns a tuple), i.e. ``hidden_states[L + 1]`` of ``output_hidden_states=True`` for every block but
the last (whose ``hidden_states`` entry may have the final norm applied; the hook point does not).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from saelab.errors import ConfigError, ModelError

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def hook_name(layer: int) -> str:
    """TransformerLens name of the residual stream after block ``layer``."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ConfigError(f"layer must be a non-negative int, got {layer!r}")
    return f"blocks.{layer}.hook_resid_post"


def parse_hook_name(name: str | int) -> int:
    """Layer index of ``blocks.{L}.hook_resid_post``, or of a bare non-negative int (string)."""
    if isinstance(name, int) and not isinstance(name, bool):
        if name < 0:
            raise ConfigError(f"hook layer must be >= 0, got {name}")
        return name
    if isinstance(name, str):
        text = name.strip()
        if text.isdigit():
            return int(text)
        match = _HOOK_RE.match(text)
        if match:
            return int(match.group(1))
    raise ConfigError(
        f"cannot read a layer from hook name {name!r}: expected 'blocks.<L>.hook_resid_post' "
        "or a non-negative integer"
    )


def text_config(model: nn.Module) -> Any:
    """The model's text config (``config.get_text_config()`` for multimodal wrappers)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ModelError(
            f"{type(model).__name__} has no .config; saelab needs a transformers model"
        )
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def n_layers_from_config(model: nn.Module) -> int:
    """Number of transformer blocks declared in the model's (text) config."""
    config = text_config(model)
    for key in _LAYER_COUNT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ModelError(
        f"config of {type(model).__name__} declares no layer count "
        f"(looked for {', '.join(_LAYER_COUNT_KEYS)})"
    )


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks.

    Found from the model itself, not a table of names: the ``nn.ModuleList`` whose length equals
    the config's layer count and whose entries all hold parameters; if several qualify (e.g. a
    vision tower of the same depth), the one holding the most parameters.
    """
    n_layers = n_layers_from_config(model)
    best: nn.ModuleList | None = None
    best_params = -1
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) != n_layers:
            continue
        counts = [sum(p.numel() for p in block.parameters()) for block in module]
        if min(counts) == 0:
            continue
        if sum(counts) > best_params:
            best, best_params = module, sum(counts)
    if best is None:
        raise ModelError(
            f"no transformer block list found in {type(model).__name__}: no nn.ModuleList of "
            f"{n_layers} blocks (the config's layer count)"
        )
    return best


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block to end the forward pass early."""


def block_output(output: object) -> torch.Tensor:
    """The hidden state a block returns: the tensor itself or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(
        f"a transformer block returned {type(output).__name__}; expected a tensor or a tuple "
        "whose first element is the hidden state"
    )


@contextlib.contextmanager
def capture_resid_post(
    blocks: nn.ModuleList, layers: Sequence[int], stop_early: bool = True
) -> Iterator[dict[int, torch.Tensor]]:
    """Hook ``blocks[L]`` for each ``L`` in ``layers``; yield the dict they fill with ``[B, S, d]``.

    With ``stop_early`` the hook of the deepest layer raises a private exception once it has stored
    its output, so no later block runs; call the model through :func:`run_until_captured`.
    Hooks are removed on exit, also on error.
    """
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int) -> Callable[[nn.Module, object, object], None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            captured[layer] = block_output(output)
            if stop_early and layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in sorted(set(layers)):
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def run_until_captured(model: nn.Module, **inputs: object) -> None:
    """Call ``model(**inputs)``; the early-stop signal of :func:`capture_resid_post` ends it."""
    with contextlib.suppress(_StopForward):
        model(**inputs)
