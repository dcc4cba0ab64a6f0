"""saelab: measure whether sparse autoencoders are useful.

Data flows one way: datasets -> activations -> SAE codes -> probes -> results -> report.
"""

import os as _os

# Reproducible MKL kernels (Intel MKL "conditional numerical reproducibility"): without this, MKL
# may pick kernels by memory alignment, so the same matmul (SAE encoding) can differ in the last
# bits from one call to the next, and probes fitted on the codes can differ. Takes effect when
# saelab is imported before torch (the CLI always is); set MKL_CBWR yourself to override.
_os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

__all__ = ["__version__", "load_config", "read_results", "run"]


def __getattr__(name: str):  # lazy: ``import saelab`` stays light (no torch import)
    if name in ("load_config", "read_results", "run"):
        from saelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'saelab' has no attribute {name!r}")
