"""saelab: measure whether sparse autoencoders are useful.

Data flows one way: datasets -> activations -> SAE codes -> probes -> results -> report.
"""

__version__ = "0.1.0"
