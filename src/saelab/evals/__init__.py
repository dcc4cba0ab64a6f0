"""The SAE evaluation suite (``saelab eval``): core metrics and splicing fidelity, sparse probing,
absorption, architecture comparison, the result envelope, the stages, plots and the report."""

from saelab.evals.architectures import compare_architectures, holm_adjust
from saelab.evals.core import CoreAccumulator, core_metrics
from saelab.evals.envelope import EvalEnvelope, envelope_schema, merge_envelopes, read_envelope
from saelab.evals.runner import STAGES, run_eval

__all__ = [
    "STAGES",
    "CoreAccumulator",
    "EvalEnvelope",
    "compare_architectures",
    "core_metrics",
    "envelope_schema",
    "holm_adjust",
    "merge_envelopes",
    "read_envelope",
    "run_eval",
]
