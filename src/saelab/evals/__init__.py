"""SAE evaluations on held-out activations (``core``: reconstruction and sparsity metrics)."""

from saelab.evals.core import CoreAccumulator, core_metrics

__all__ = ["CoreAccumulator", "core_metrics"]
