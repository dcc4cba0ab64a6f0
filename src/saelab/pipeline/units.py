"""Probe units: the smallest pieces of probing work, described by plain data so any executor can run them.

A unit is a pure function of its spec and its input arrays: ``run_unit(spec, inputs) -> rows``.
The spec is JSON-able; the inputs are numpy / scipy arrays, so a unit can be shipped to another process
or machine (Ray, later) as easily as run in place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from saelab.io import json_ready, stable_hash

PROBE_PROTOCOL_VERSION = 2


@dataclass(frozen=True)
class UnitSpec:
    """Everything that decides a unit's rows (its hash is the unit key)."""

    kind: Literal["baseline", "sae"]
    dataset: str
    dataset_hash: str
    family: str
    setting: str
    setting_value: float | None
    split_hash: str
    layer: int
    hook_name: str
    pooling: str
    method: str
    model: str
    model_id: str
    seed: int
    activation_key: dict[str, Any]
    test_source: str | None = None
    sae: str | None = None
    sae_key: str | None = None
    ks: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    version: int = PROBE_PROTOCOL_VERSION

    @property
    def key(self) -> str:
        return stable_hash(asdict(self), length=24)


@dataclass
class UnitInputs:
    """Arrays a unit needs: dense features for baselines, sparse codes for SAE probes."""

    x_train: Any
    y_train: np.ndarray
    x_test: Any
    y_test: np.ndarray


class Executor(Protocol):
    """Runs units; the local one runs them in order in this process."""

    def map(
        self,
        fn: Callable[[UnitSpec, UnitInputs], list[dict[str, Any]]],
        jobs: Iterable[tuple[UnitSpec, UnitInputs]],
    ) -> Iterator[tuple[UnitSpec, list[dict[str, Any]]]]: ...


class LocalExecutor:
    """Run units one after another in this process."""

    def map(self, fn, jobs):  # type: ignore[no-untyped-def]
        for spec, inputs in jobs:
            yield spec, fn(spec, inputs)


def run_unit(spec: UnitSpec, inputs: UnitInputs) -> list[dict[str, Any]]:
    """Fit the unit's probes and return its result rows (without run-level columns).

    Baseline units fit one method of ``saelab.probes.BASELINES`` on dense activations; SAE units
    fit the SAE probe for every k of ``spec.ks`` with the variant in ``spec.options`` (penalty,
    binarize, code pooling, latent ranking).
    """
    from saelab.probes import BASELINES, fit_sae_probes

    start = time.perf_counter()
    opts = spec.options
    if spec.kind == "baseline":
        if spec.method not in BASELINES:
            raise ValueError(f"unknown baseline method {spec.method!r}")
        results = [
            BASELINES[spec.method](
                inputs.x_train, inputs.y_train, inputs.x_test, inputs.y_test, seed=spec.seed
            )
        ]
    else:
        results = fit_sae_probes(
            inputs.x_train,
            inputs.y_train,
            inputs.x_test,
            inputs.y_test,
            ks=list(spec.ks),
            seed=spec.seed,
            normalization=opts.get("latent_ranking", "mean"),
            binarize=bool(opts.get("binarize", False)),
            penalty=opts.get("penalty", "l2"),
            variant=opts.get("variant"),
        )
    unit_seconds = time.perf_counter() - start
    config = asdict(spec)
    rows = []
    for r in results:
        is_sae = spec.kind == "sae"
        variant = r.variant if is_sae else None
        rows.append(
            {
                "dataset": spec.dataset,
                "family": spec.family,
                "setting": spec.setting,
                "setting_value": spec.setting_value,
                "test_source": spec.test_source,
                "layer": spec.layer,
                "hook_name": spec.hook_name,
                "pooling": spec.pooling,
                "method": spec.method,
                "sae": spec.sae,
                "k": r.k,
                "penalty": opts.get("penalty")
                if is_sae
                else ("l2" if r.method == "logreg" else None),
                "binarize": bool(opts.get("binarize", False)) if is_sae else None,
                "code_pooling": opts.get("code_pooling") if is_sae else None,
                "variant": variant,
                "probe": f"sae:{spec.sae}:k{r.k}:{variant}" if is_sae else spec.method,
                "n_train": r.n_train,
                "n_test": r.n_test,
                "test_auc": r.test_auc,
                "test_acc": r.test_acc,
                "test_f1": r.test_f1,
                "val_auc": r.val_auc,
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
    return rows
