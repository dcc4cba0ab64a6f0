"""SAE architectures (registry), file formats (SAELens, dictionary_learning, sparsify, releases),
TopK training and sparse encoding."""

from saelab.sae.base import (
    SAE,
    SAEConfig,
    build_sae,
    known_architectures,
    register_sae,
    sae_class,
)
from saelab.sae.encode import encode_rows, encode_rows_multi, open_sae_encoder
from saelab.sae.formats import (
    SAEFiles,
    TensorRef,
    detect_format,
    load_sae,
    open_sae,
    read_sae_config,
    read_sparsity,
    save_sae,
)
from saelab.sae.gated import GatedSAE
from saelab.sae.ihtp import IHTPSAE
from saelab.sae.jumprelu import JumpReLUSAE
from saelab.sae.matching_pursuit import MatchingPursuitSAE
from saelab.sae.mp_sae import MPSAE
from saelab.sae.standard import StandardSAE
from saelab.sae.stream import StreamedSAE
from saelab.sae.topk import TopKSAE
from saelab.sae.training import (
    SAETrainConfig,
    TrainResult,
    geometric_median,
    save_trained,
    train_sae,
)

__all__ = [
    "IHTPSAE",
    "MPSAE",
    "SAE",
    "GatedSAE",
    "JumpReLUSAE",
    "MatchingPursuitSAE",
    "SAEConfig",
    "SAEFiles",
    "SAETrainConfig",
    "StandardSAE",
    "StreamedSAE",
    "TensorRef",
    "TopKSAE",
    "TrainResult",
    "build_sae",
    "detect_format",
    "encode_rows",
    "encode_rows_multi",
    "geometric_median",
    "known_architectures",
    "load_sae",
    "open_sae",
    "open_sae_encoder",
    "read_sae_config",
    "read_sparsity",
    "register_sae",
    "sae_class",
    "save_sae",
    "save_trained",
    "train_sae",
]
