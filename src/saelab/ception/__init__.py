"""SAE-ception (``saelab ception``): cycles of classifier fine-tuning with an auxiliary loss that
pulls the classifier's pooled representation toward decoded, sharpened SAE codes (Bishka et al.,
"SAE-ception: Iteratively Using Sparse Autoencoders as a Training Signal", NeurIPS 2025 Mech
Interp Workshop), measured per cycle against two controls. See ``docs/DESIGN.md``."""

from saelab.ception.classifier import AuxTargets, Classifier, EncodedSplit, fine_tune
from saelab.ception.names import CONTROLS, METRIC_NAMES, METRICS, STRATEGIES
from saelab.ception.report import (
    accuracy_check,
    check_against_controls,
    render_ception_report,
    summarize,
)
from saelab.ception.run import CeptionRun, measure_cycle, run_ception
from saelab.ception.sharpen import build_targets, sharpen_codes

__all__ = [
    "CONTROLS",
    "METRICS",
    "METRIC_NAMES",
    "STRATEGIES",
    "AuxTargets",
    "CeptionRun",
    "Classifier",
    "EncodedSplit",
    "accuracy_check",
    "build_targets",
    "check_against_controls",
    "fine_tune",
    "measure_cycle",
    "render_ception_report",
    "run_ception",
    "sharpen_codes",
    "summarize",
]
