"""SAE training: one config and one loop for every trainable architecture.

- :mod:`~saelab.sae.training.config`: :class:`SAETrainConfig` (also a run's ``saes[].train``), the
  learning-rate and sparsity-coefficient schedules.
- :mod:`~saelab.sae.training.loop`: :func:`train_sae` (data split, normalisation, Adam, unit-norm
  decoder, held-out evaluation, metrics, checkpoints and resume) and :func:`save_trained`.
- One module per architecture family's training forward: ``standard``, ``topk`` (TopK, BatchTopK,
  Matryoshka BatchTopK, on the sparse kernels of ``sparse``), ``jumprelu``, ``gated``, ``mp``.
- :mod:`~saelab.sae.training.corpus`: ``saelab sae train`` (texts -> activations -> SAEs).
"""

from saelab.sae.training.config import (
    ARCHITECTURES,
    FAMILY_FIELDS,
    SAETrainConfig,
    coefficient_factor,
    lr_factor,
)
from saelab.sae.training.loop import (
    TRAINER_VERSION,
    SAETrainer,
    TrainResult,
    evaluate,
    geometric_median,
    save_trained,
    split_rows,
    train_sae,
)

__all__ = [
    "ARCHITECTURES",
    "FAMILY_FIELDS",
    "TRAINER_VERSION",
    "SAETrainConfig",
    "SAETrainer",
    "TrainResult",
    "coefficient_factor",
    "evaluate",
    "geometric_median",
    "lr_factor",
    "save_trained",
    "split_rows",
    "train_sae",
]
