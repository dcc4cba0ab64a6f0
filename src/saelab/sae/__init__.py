"""SAE architectures (registry), the SAELens on-disk format, TopK training and sparse encoding."""

from saelab.sae.base import (
    SAE,
    SAEConfig,
    build_sae,
    known_architectures,
    register_sae,
    sae_class,
)
from saelab.sae.encode import encode_rows, encode_rows_multi
from saelab.sae.gated import GatedSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.saelens_format import load_sae, read_sae_config, save_sae
from saelab.sae.standard import StandardSAE
from saelab.sae.topk import TopKSAE
from saelab.sae.train import TopKTrainConfig, geometric_median, train_topk_sae

__all__ = [
    "SAE",
    "GatedSAE",
    "JumpReLUSAE",
    "SAEConfig",
    "StandardSAE",
    "TopKSAE",
    "TopKTrainConfig",
    "build_sae",
    "encode_rows",
    "encode_rows_multi",
    "geometric_median",
    "known_architectures",
    "load_sae",
    "read_sae_config",
    "register_sae",
    "sae_class",
    "save_sae",
    "train_topk_sae",
]
