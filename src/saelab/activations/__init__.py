"""Activations of any ``transformers`` model at TransformerLens hook points, pooled and cached."""

from saelab.activations.cache import ActivationCache, CacheStats
from saelab.activations.extract import (
    extract,
    mean_mask,
    pool_last,
    pool_mean,
    resolve_max_length,
)
from saelab.activations.hooks import (
    HOOK_KINDS,
    HookKey,
    HookKind,
    find_blocks,
    find_sublayer,
    hook_key,
    hook_name,
    key_of,
    parse_hook,
    parse_hook_name,
)
from saelab.activations.model import DEFAULT_MODEL, ModelHandle, load_model
from saelab.activations.types import LayerActivations

__all__ = [
    "DEFAULT_MODEL",
    "HOOK_KINDS",
    "ActivationCache",
    "CacheStats",
    "HookKey",
    "HookKind",
    "LayerActivations",
    "ModelHandle",
    "extract",
    "find_blocks",
    "find_sublayer",
    "hook_key",
    "hook_name",
    "key_of",
    "load_model",
    "mean_mask",
    "parse_hook",
    "parse_hook_name",
    "pool_last",
    "pool_mean",
    "resolve_max_length",
]
