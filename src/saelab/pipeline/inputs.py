"""Inputs: the arrays of each probe unit, computed once per dataset and shared by its units.

For one dataset, :class:`DatasetInputs` reads the activations of every row any split uses (from the
disk cache, or one forward pass for all layers), reads the OOD test sets' activations, and encodes
each SAE once per (layer, code pooling, source) into CSR codes. Every unit of the dataset then gets
the same feature matrices plus the positions of its splits' rows in them, so the peer's re-reading
and re-encoding per training size or fraction never happens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from saelab.activations.hooks import key_of
from saelab.errors import SaelabError
from saelab.pipeline.plan import PlannedUnit
from saelab.pipeline.regimes import DatasetPlan, Skipped
from saelab.pipeline.units import SplitInputs, UnitInputs

log = logging.getLogger(__name__)

# texts -> {hook key: LayerActivations} (``saelab.activations.hook_key``: the layer for the
# residual stream, the hook name for an attention or MLP output)
ReadActivations = Callable[[list[str]], dict[int | str, Any]]
# (sae id, layer, LayerActivations, code poolings) -> {code pooling: CSR codes [rows, d_sae]}
Encode = Callable[[str, int, Any, list[str]], dict[str, Any]]


class DatasetInputs:
    """Features of one dataset for all of its units, computed on first use and then shared."""

    def __init__(
        self,
        plan: DatasetPlan,
        units: list[PlannedUnit],
        read_activations: ReadActivations,
        encode: Encode,
        skipped: list[Skipped],
    ) -> None:
        self.plan = plan
        # every code pooling each (SAE, layer, source) needs, so one encoding serves them all
        self._poolings: dict[tuple[str, int, str | None], list[str]] = {}
        for u in units:
            if u.spec.kind != "sae":
                continue
            for source in {None, *(s.test_source for s in u.splits)}:
                want = self._poolings.setdefault((str(u.spec.sae), u.spec.layer, source), [])
                if u.spec.options["code_pooling"] not in want:
                    want.append(u.spec.options["code_pooling"])
        self._read = read_activations
        self._encode = encode
        self._skipped = skipped
        self._acts: dict[int, Any] | None = None
        self._ood: dict[str, dict[int, Any] | None] = {}
        self._features: dict[tuple[Any, ...], Any] = {}

    def activations(self) -> dict[int | str, Any]:
        """Activations of the rows every split uses (``plan.rows``), per hook key."""
        if self._acts is None:
            self._acts = self._read([self.plan.dataset.prompts[i] for i in self.plan.rows])
        return self._acts

    def ood_activations(self, name: str) -> dict[int | str, Any] | None:
        """Activations of OOD test set ``name`` (all its rows); None when they cannot be made."""
        if name not in self._ood:
            ood = self.plan.ood_test(name).dataset
            try:
                self._ood[name] = self._read(list(ood.prompts))
            except SaelabError as exc:
                self._skipped.append(
                    Skipped(self.plan.dataset.name, "ood", None, str(exc), test_source=name)
                )
                log.warning("skipped %s ood %s: %s", self.plan.dataset.name, name, exc)
                self._ood[name] = None
        return self._ood[name]

    def features(self, unit: PlannedUnit, source: str | None = None) -> Any:
        """The unit's feature matrix for the dataset (``source`` None) or an OOD test set.

        Baselines: pooled activations [rows, d] float32; SAE units: CSR codes [rows, d_sae] of
        the unit's SAE with its code pooling. Both read the unit's hook (``spec.hook_name``: the
        residual stream, or the attention / MLP output an SAE reads). None when the OOD
        activations are unavailable.
        """
        spec = unit.spec
        code_pooling = spec.options.get("code_pooling") if spec.kind == "sae" else None
        key = (spec.layer, spec.sae, code_pooling, source)
        if key not in self._features:
            acts = self.activations() if source is None else self.ood_activations(source)
            if acts is None:
                return None
            la = acts[key_of(spec.hook_name)]
            if spec.kind == "baseline":
                self._features[key] = la.pooled.numpy()
            else:
                want = self._poolings[(str(spec.sae), spec.layer, source)]
                for pooling, codes in self._encode(str(spec.sae), spec.layer, la, want).items():
                    self._features[(spec.layer, spec.sae, pooling, source)] = codes
        return self._features[key]

    def unit_inputs(self, unit: PlannedUnit) -> UnitInputs:
        """The unit's arrays: shared features plus each split's row positions and labels."""
        p = self.plan
        x = self.features(unit)
        splits = []
        x_test: dict[str, Any] = {}
        for split in unit.splits:
            source = split.test_source
            if source is None:
                test = p.positions(split.test)
                y_test = p.dataset.labels[split.test]
            else:
                features = self.features(unit, source)
                if features is None:
                    splits.append(
                        SplitInputs(
                            train=np.zeros(0, np.int64),
                            y_train=np.zeros(0, np.int64),
                            test=np.zeros(0, np.int64),
                            y_test=np.zeros(0, np.int64),
                            test_source=source,
                            unavailable=f"the activations of OOD set {source} could not be made",
                        )
                    )
                    continue
                x_test[source] = features
                test = np.asarray(split.test, dtype=np.int64)
                y_test = p.ood_test(source).dataset.labels[split.test]
            splits.append(
                SplitInputs(
                    train=p.positions(split.train),
                    y_train=split.y_train(p.dataset.labels),
                    test=test,
                    y_test=np.asarray(y_test, dtype=np.int64),
                    test_source=source,
                )
            )
        return UnitInputs(x=x, splits=splits, x_test=x_test)
