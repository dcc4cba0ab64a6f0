"""Activations of any ``transformers`` model: residual stream after chosen blocks, cached."""

from saelab.activations.cache import ActivationCache, CacheStats
from saelab.activations.extract import extract, pool_last, pool_mean, resolve_max_length
from saelab.activations.hooks import find_blocks, hook_name, parse_hook_name
from saelab.activations.model import DEFAULT_MODEL, ModelHandle, load_model
from saelab.activations.types import LayerActivations

__all__ = [
    "DEFAULT_MODEL",
    "ActivationCache",
    "CacheStats",
    "LayerActivations",
    "ModelHandle",
    "extract",
    "find_blocks",
    "hook_name",
    "load_model",
    "parse_hook_name",
    "pool_last",
    "pool_mean",
    "resolve_max_length",
]
