"""Plan: the probe units of a run, as plain data that any executor can run and any run can resume.

A unit is one (dataset, setting, layer, probe) with **every split of that setting** (one for
normal; 20 training sizes for scarcity, 19 fractions for imbalance, 11 flip ratios for label noise,
one per OOD test set), so the engine fits all of them in batched solves. The probe is a baseline
(``saelab.names.BASELINES``) or an SAE with one variant (penalty, binarize, code pooling) and all
its ks. The unit's key hashes its :class:`UnitSpec`: the splits' rows and labels, the dataset and
OOD test-set contents, the activations, the SAE, the variant, and the probe method's fingerprint
(the protocol's constants, the C grid, solver tolerances, the library versions that change a fit),
so a resumed run folder never mixes rows computed under different rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from saelab.config import RunConfig
from saelab.data import Split
from saelab.io import stable_hash
from saelab.names import SAE_METHOD
from saelab.pipeline.regimes import DatasetPlan
from saelab.probes.protocol import protocol_fingerprint

UNIT_FORMAT_VERSION = 3
"""Changes whenever the rows a unit writes change shape or meaning."""


@dataclass(frozen=True)
class SplitRef:
    """What identifies one split of a unit: its value, its test source and the hash of its rows."""

    setting_value: float | None
    test_source: str | None
    split_hash: str
    test_hash: str | None = None  # content hash of the OOD test set


@dataclass(frozen=True)
class UnitSpec:
    """Everything that decides a unit's rows (its hash is the unit key)."""

    kind: Literal["baseline", "sae"]
    dataset: str
    dataset_hash: str
    family: str
    setting: str
    layer: int
    hook_name: str
    pooling: str
    method: str
    model: str
    model_id: str
    seed: int
    activation_key: dict[str, Any]
    splits: tuple[SplitRef, ...]
    engine: dict[str, Any]
    sae: str | None = None
    sae_key: str | None = None
    ks: tuple[int, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    version: int = UNIT_FORMAT_VERSION

    @property
    def key(self) -> str:
        return stable_hash(asdict(self), length=24)

    def describe(self) -> str:
        """Short label for logs: ``sst2 scarcity L4 sae:topk l1``."""
        probe = (
            self.method
            if self.kind == "baseline"
            else f"sae:{self.sae} {self.options.get('variant')}"
        )
        return f"{self.dataset} {self.setting} L{self.layer} {probe}"


@dataclass
class PlannedUnit:
    """A unit with the dataset plan and the splits its inputs are built from."""

    plan: DatasetPlan
    splits: list[Split]
    spec: UnitSpec


def split_hash(split: Split) -> str:
    """Hash of everything that identifies a split (rows, setting, seed, noisy labels, test source)."""
    return stable_hash(split.key_parts())


def method_fingerprint(
    kind: str, method: str, options: dict[str, Any], seed: int, device: str
) -> dict[str, Any]:
    """The protocol's constants and the probe method's (grid, tolerances, library versions), and
    the device the solvers run on (a GPU's rounding differs from a CPU's)."""
    from saelab.probes.baselines import baseline_method
    from saelab.probes.linear import LogisticMethod

    if kind == "baseline":
        probe = baseline_method(method, seed=seed, device=device)
    else:
        probe = LogisticMethod(penalty=options.get("penalty", "l1"), name=SAE_METHOD)
    return {"protocol": protocol_fingerprint(), "method": probe.fingerprint(), "device": device}


def plan_units(
    cfg: RunConfig,
    prepared: list[DatasetPlan],
    *,
    model_id: str,
    pooling: str,
    activation_key: dict[str, Any],
    sae_keys: dict[tuple[str, int], str],
    device: str = "cpu",
) -> list[PlannedUnit]:
    """Every probe unit of the run, dataset by dataset, in a stable order.

    ``sae_keys[(sae id, layer)]`` is the identity of each SAE at each layer it reads; an SAE
    without an entry for a layer (a loaded SAE of another layer) gets no units there.
    """
    from saelab.activations import hook_name

    fingerprints: dict[str, dict[str, Any]] = {}

    def engine(kind: str, method: str, options: dict[str, Any]) -> dict[str, Any]:
        cache_key = stable_hash([kind, method, options.get("penalty")])
        if cache_key not in fingerprints:
            fingerprints[cache_key] = method_fingerprint(kind, method, options, cfg.seed, device)
        return fingerprints[cache_key]

    out: list[PlannedUnit] = []
    for p in prepared:
        for setting in cfg.settings:
            splits = [s for s in p.splits if s.setting == setting]
            if not splits:
                continue
            refs = tuple(
                SplitRef(
                    setting_value=s.setting_value,
                    test_source=s.test_source,
                    split_hash=split_hash(s),
                    test_hash=None
                    if s.test_source is None
                    else p.ood_test(s.test_source).dataset.content_hash,
                )
                for s in splits
            )
            for layer in cfg.layers_for(setting):
                common: dict[str, Any] = {
                    "dataset": p.dataset.name,
                    "dataset_hash": p.dataset.content_hash,
                    "family": p.dataset.family,
                    "setting": setting,
                    "layer": layer,
                    "hook_name": hook_name(layer),
                    "pooling": pooling,
                    "model": cfg.model.name,
                    "model_id": model_id,
                    "seed": cfg.seed,
                    "activation_key": activation_key,
                    "splits": refs,
                }
                for method in cfg.baselines_for(setting):
                    spec = UnitSpec(
                        kind="baseline",
                        method=method,
                        engine=engine("baseline", method, {}),
                        **common,
                    )
                    out.append(PlannedUnit(p, splits, spec))
                for sc in cfg.saes:
                    key = sae_keys.get((sc.id, layer))
                    if key is None:
                        continue  # a loaded SAE that reads another layer
                    for variant in cfg.variants_for(setting):
                        options = {
                            "latent_ranking": cfg.probes.latent_ranking,
                            "penalty": variant.penalty,
                            "binarize": variant.binarize,
                            "code_pooling": variant.resolved_pooling(pooling),
                            "variant": variant.label(pooling),
                        }
                        spec = UnitSpec(
                            kind="sae",
                            method=SAE_METHOD,
                            engine=engine("sae", SAE_METHOD, options),
                            sae=sc.id,
                            sae_key=key,
                            ks=tuple(cfg.ks_for(setting)),
                            options=options,
                            **common,
                        )
                        out.append(PlannedUnit(p, splits, spec))
    return out
