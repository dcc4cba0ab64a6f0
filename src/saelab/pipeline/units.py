"""Execute: run one probe unit from its spec and its input arrays, anywhere.

``run_unit(spec, inputs) -> rows`` is a pure function of a JSON-able :class:`UnitSpec` and numpy /
scipy arrays (:class:`UnitInputs`), so the serial executor, the process pool and Ray tasks all run
the same function and produce the same rows. It runs single-threaded (torch, BLAS, XGBoost), so
its numbers do not depend on the executor or on how many cores the machine has.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from saelab.errors import ProbeDataError
from saelab.io import json_ready
from saelab.pipeline.plan import UnitSpec
from saelab.pipeline.regimes import Skipped


@dataclass
class SplitInputs:
    """One split of a unit: positions of its rows in the unit's feature arrays, and labels.

    ``train`` [n] indexes ``UnitInputs.x``; ``test`` [m] indexes ``UnitInputs.x`` when
    ``test_source`` is None, else ``UnitInputs.x_test[test_source]`` (an OOD test set).
    ``y_train`` carries the split's (possibly noisy) training labels, ``y_test`` the clean ones.
    """

    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray
    test_source: str | None = None
    unavailable: str | None = None  # why the split's inputs could not be made


@dataclass
class UnitInputs:
    """Arrays a unit needs: pooled activations [rows, d] (baselines) or CSR codes [rows, d_sae]
    (SAE probes) of the dataset rows its splits use, and the same for OOD test sets."""

    x: Any
    splits: list[SplitInputs]
    x_test: dict[str, Any] = field(default_factory=dict)

    def arrays(self, split: SplitInputs) -> tuple[Any, np.ndarray, Any, np.ndarray]:
        """(X_train, y_train, X_test, y_test) of one split."""
        test = self.x if split.test_source is None else self.x_test[split.test_source]
        return self.x[split.train], split.y_train, test[split.test], split.y_test


@dataclass
class UnitOutcome:
    """Rows of a finished unit (without run-level columns) and the splits it had to skip."""

    rows: list[dict[str, Any]]
    skipped: list[Skipped]


def _split_problem(split: SplitInputs) -> str | None:
    """Why a split cannot be probed (no inputs, a class missing from its rows), or None."""
    if split.unavailable:
        return split.unavailable
    for name, y in (("training", split.y_train), ("test", split.y_test)):
        values = np.unique(np.asarray(y))
        if values.size < 2:
            return f"its {name} rows have only class {values.tolist()}"
    return None


def run_unit(spec: UnitSpec, inputs: UnitInputs) -> UnitOutcome:
    """Fit the unit's probes on every split and return its result rows (without run columns).

    Baseline units run the protocol of ``saelab.probes.BASELINES[spec.method]`` on pooled
    activations; SAE units rank latents per split and fit the SAE probe for every k of
    ``spec.ks`` with the variant in ``spec.options`` (penalty, binarize, latent ranking). A split
    whose training or test rows lack a class is skipped (with its reason); the others run.
    """
    from saelab.probes.baselines import baseline_method
    from saelab.probes.protocol import Problem, run_protocol, single_threaded
    from saelab.probes.sae_probes import CodeSplit, fit_sae_probes_many

    if len(inputs.splits) != len(spec.splits):
        raise ProbeDataError(
            f"unit {spec.describe()}: {len(inputs.splits)} split inputs for {len(spec.splits)} splits"
        )
    skipped = []
    keep = []
    for ref, split in zip(spec.splits, inputs.splits, strict=True):
        reason = _split_problem(split)
        if reason is None:
            keep.append((ref, split))
        else:
            skipped.append(_skip(spec, ref.setting_value, ref.test_source, reason))
    if not keep:
        return UnitOutcome([], skipped)
    refs = [ref for ref, _ in keep]
    splits = [split for _, split in keep]
    device = spec.engine.get("device", "cpu")
    start = time.perf_counter()
    with single_threaded():
        if spec.kind == "baseline":
            method = baseline_method(spec.method, seed=spec.seed, device=device)
            problems = [Problem(*inputs.arrays(s)) for s in splits]
            per_split = [[r] for r in run_protocol(method, problems, spec.seed)]
        else:
            opts = spec.options
            per_split = fit_sae_probes_many(
                [CodeSplit(*inputs.arrays(s)) for s in splits],
                ks=list(spec.ks),
                seed=spec.seed,
                normalization=opts.get("latent_ranking", "mean"),
                binarize=bool(opts.get("binarize", False)),
                penalty=opts.get("penalty", "l1"),
                variant=opts.get("variant"),
                device=device,
            )
    unit_seconds = time.perf_counter() - start
    config = asdict(spec)
    is_sae = spec.kind == "sae"
    opts = spec.options
    rows = []
    for ref, results in zip(refs, per_split, strict=True):
        for r in results:
            rows.append(
                {
                    "dataset": spec.dataset,
                    "family": spec.family,
                    "setting": spec.setting,
                    "setting_value": ref.setting_value,
                    "test_source": ref.test_source,
                    "layer": spec.layer,
                    "hook_name": spec.hook_name,
                    "pooling": spec.pooling,
                    "method": spec.method,
                    "sae": spec.sae,
                    "k": r.k,
                    "penalty": opts.get("penalty")
                    if is_sae
                    else ("l2" if spec.method == "logreg" else None),
                    "binarize": bool(opts.get("binarize", False)) if is_sae else None,
                    "code_pooling": opts.get("code_pooling") if is_sae else None,
                    "variant": r.variant if is_sae else None,
                    "probe": f"sae:{spec.sae}:k{r.k}:{r.variant}" if is_sae else spec.method,
                    "n_train": r.n_train,
                    "n_test": r.n_test,
                    "test_auc": r.test_auc,
                    "test_acc": r.test_acc,
                    "test_f1": r.test_f1,
                    "val_auc": r.val_auc,
                    "converged": r.converged,
                    "C": r.hyperparams.get("C"),
                    "hyperparams": {k: json_ready(v) for k, v in r.hyperparams.items()},
                    "latents": r.latents,
                    "seed": spec.seed,
                    "seconds": r.seconds,
                    "unit_seconds": unit_seconds,
                    "model": spec.model,
                    "model_id": spec.model_id,
                    "unit_key": spec.key,
                    "unit_config": config,
                }
            )
    return UnitOutcome(rows, skipped)


def _skip(spec: UnitSpec, value: float | None, source: str | None, reason: str) -> Skipped:
    probe = spec.method if spec.sae is None else f"{spec.method} {spec.sae}"
    return Skipped(spec.dataset, spec.setting, value, f"{probe}: {reason}", spec.layer, source)


def run_unit_or_skip(spec: UnitSpec, inputs: UnitInputs) -> UnitOutcome:
    """``run_unit``, with bad probe data in the whole unit turned into one skip per split."""
    try:
        return run_unit(spec, inputs)
    except ProbeDataError as exc:
        return UnitOutcome(
            [], [_skip(spec, r.setting_value, r.test_source, str(exc)) for r in spec.splits]
        )
