"""The splits of every setting for one dataset, and the record of what could not be done.

For each dataset of a run this builds the splits of the configured settings (spec §2: normal,
scarcity, imbalance, label noise, OOD) with the paper's draws from :mod:`saelab.data.splits`, and
the union of the rows they use, so activations and SAE codes are computed **once per dataset** and
every split indexes into them (the paper re-reads activations and re-encodes the SAE for every
training size and fraction, spec §7.1).

Whatever cannot be done is not an error: a training size the dataset cannot supply, a setting the
dataset is too small for, an OOD file that is missing or unreadable, becomes a :class:`Skipped`
entry with its reason, logged as a warning and listed in ``run.json`` / ``skipped.csv`` and the
report, and the run goes on.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from saelab.config import RunConfig
from saelab.data import (
    IMBALANCE_FRACTIONS,
    LABEL_NOISE_RATIOS,
    OOD_PAIRS,
    SCARCITY_SIZES,
    Dataset,
    Split,
    imbalance_splits,
    label_noise_splits,
    load_dataset,
    match_ood_classes,
    normal_split,
    ood_split,
    scarcity_splits,
)
from saelab.data.splits import OOD_MAX_ROWS, OOD_TRAIN
from saelab.errors import ConfigError, SaelabError

log = logging.getLogger(__name__)


@dataclass
class Skipped:
    """One (dataset, setting, value[, layer]) the run could not do, and why."""

    dataset: str
    setting: str
    setting_value: float | None
    reason: str
    layer: int | None = None
    test_source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OODTest:
    """An OOD test set paired with a dataset: the OOD data and the split (train: ID rows)."""

    dataset: Dataset
    split: Split


@dataclass
class DatasetPlan:
    """A dataset with the splits of every setting and the rows their activations come from.

    ``rows`` is the sorted union of the dataset rows that any split (or SAE training) uses;
    activations and codes are computed for these rows once, and ``positions(idx)`` maps dataset
    row indices to positions in them.
    """

    dataset: Dataset
    normal: Split  # SAE training reads the normal split's training texts
    splits: list[Split] = field(default_factory=list)
    ood: list[OODTest] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def finish(self) -> None:
        """Compute ``rows`` from the splits."""
        parts = [self.normal.train] + [s.train for s in self.splits]
        parts += [s.test for s in self.splits if s.test_source is None]
        parts += [t.split.train for t in self.ood]
        self.rows = np.unique(np.concatenate(parts)).astype(np.int64)
        self._pos = np.full(len(self.dataset.labels), -1, dtype=np.int64)
        self._pos[self.rows] = np.arange(len(self.rows))

    def positions(self, idx: np.ndarray) -> np.ndarray:
        """Positions in ``rows`` of dataset row indices ``idx``."""
        pos = self._pos[np.asarray(idx, dtype=np.int64)]
        assert (pos >= 0).all(), "a split uses a row outside the planned rows"
        return pos

    def ood_test(self, name: str) -> OODTest:
        for t in self.ood:
            if t.dataset.name == name:
                return t
        raise KeyError(name)


def regime_values(cfg: RunConfig, setting: str) -> list[float]:
    """The setting's values: the config's, or the paper's (spec §2)."""
    own = getattr(cfg.regimes, setting).values
    if own is not None:
        return list(own)
    return list(
        {"scarcity": SCARCITY_SIZES, "imbalance": IMBALANCE_FRACTIONS}.get(
            setting, LABEL_NOISE_RATIOS
        )
    )


def plan_dataset(cfg: RunConfig, ds: Dataset, skipped: list[Skipped]) -> DatasetPlan:
    """The splits of every configured setting for ``ds``; what cannot be drawn goes to ``skipped``."""
    kw: dict[str, Any] = {"seed": cfg.seed, "dataset_name": ds.name}
    normal = normal_split(ds.labels, max_train=cfg.data.max_train, max_test=cfg.data.max_test, **kw)
    plan = DatasetPlan(dataset=ds, normal=normal)
    for setting in cfg.settings:
        if setting == "normal":
            plan.splits.append(normal)
        elif setting == "ood":
            continue  # pairs are resolved by plan_ood over all datasets
        else:
            values = regime_values(cfg, setting)
            try:
                if setting == "scarcity":
                    sizes = [int(v) for v in values]
                    if any(int(v) != v for v in values):
                        raise ConfigError(
                            f"key 'regimes.scarcity.values': training sizes must be whole "
                            f"numbers, got {values}"
                        )
                    got = scarcity_splits(ds.labels, sizes=sizes, max_test=cfg.data.max_test, **kw)
                elif setting == "imbalance":
                    got = imbalance_splits(
                        ds.labels,
                        fractions=values,
                        max_test=cfg.data.max_test,
                        max_train=cfg.data.max_train,
                        **kw,
                    )
                else:
                    got = label_noise_splits(
                        ds.labels,
                        ratios=values,
                        max_test=cfg.data.max_test,
                        max_train=cfg.data.max_train,
                        **kw,
                    )
            except ConfigError:
                raise
            except SaelabError as exc:
                skipped.append(Skipped(ds.name, setting, None, str(exc)))
                continue
            drawn = {float(s.setting_value) for s in got if s.setting_value is not None}
            n_pos = int(ds.labels.sum())
            for v in values:
                if float(v) not in drawn:
                    skipped.append(
                        Skipped(
                            ds.name,
                            setting,
                            float(v),
                            f"{ds.n_rows} rows ({n_pos} of class 1, {ds.n_rows - n_pos} of "
                            f"class 0) cannot supply {int(v)} training rows and a test set of "
                            "at least 99 (the paper skips n > N - 100)",
                        )
                    )
            plan.splits.extend(got)
    return plan


def ood_pairs(cfg: RunConfig, names: list[str]) -> list[tuple[str, str, dict[str, str] | None]]:
    """(dataset name, OOD name or path, class map) of the OOD setting.

    The config's ``regimes.ood.pairs``, else the bundled OOD set of every run dataset that has one.
    """
    pairs = cfg.regimes.ood.pairs
    if pairs is not None:
        unknown = [p.dataset for p in pairs if p.dataset not in names]
        if unknown:
            raise ConfigError(
                f"key 'regimes.ood.pairs': dataset(s) {unknown} are not datasets of this run "
                f"({', '.join(names)}); an OOD pair trains on one of data.datasets"
            )
        return [(p.dataset, p.ood, p.class_map) for p in pairs]
    bundled = dict(OOD_PAIRS)
    return [(n, bundled[n], None) for n in names if n in bundled]


def plan_ood(
    cfg: RunConfig, plans: list[DatasetPlan], skipped: list[Skipped], max_rows: int
) -> None:
    """Load the OOD test sets and add their splits to the plans; unreadable ones are skipped."""
    if "ood" not in cfg.settings:
        return
    by_name = {p.dataset.name: p for p in plans}
    pairs = ood_pairs(cfg, list(by_name))
    paired = {d for d, _, _ in pairs}
    for name in by_name:
        if name not in paired and cfg.regimes.ood.pairs is None:
            skipped.append(
                Skipped(
                    name,
                    "ood",
                    None,
                    "no OOD set: the bundled ones belong to "
                    + ", ".join(n for n, _ in OOD_PAIRS)
                    + " (pair other files under regimes.ood.pairs)",
                )
            )
    for name, ood_spec, class_map in pairs:
        plan = by_name[name]
        # The paper trains on 1024 balanced rows of the first 1500 (spec 2); smaller data and a
        # lower data.max_train take the largest balanced draw that fits, as the normal split does.
        head = plan.dataset.labels[:OOD_MAX_ROWS]
        n_pos = int(head.sum())
        largest = 2 * min(n_pos, len(head) - n_pos) + (1 if n_pos > len(head) - n_pos else 0)
        n_train = min(OOD_TRAIN, cfg.data.max_train, largest)
        try:
            ood = load_dataset(ood_spec, max_rows=max_rows)
            ood = match_ood_classes(plan.dataset, ood, class_map)
            split = ood_split(
                plan.dataset.labels,
                ood.labels,
                seed=cfg.seed,
                n_train=n_train,
                dataset_name=name,
                ood_name=ood.name,
            )
        except SaelabError as exc:
            skipped.append(Skipped(name, "ood", None, str(exc), test_source=str(ood_spec)))
            continue
        if ood.name == name or any(t.dataset.name == ood.name for t in plan.ood):
            skipped.append(
                Skipped(
                    name,
                    "ood",
                    None,
                    f"OOD set {ood_spec} has the name {ood.name!r} of another test set of this "
                    "dataset; rename the file",
                    test_source=str(ood_spec),
                )
            )
            continue
        plan.ood.append(OODTest(dataset=ood, split=split))
        plan.splits.append(split)


def log_skipped(skipped: list[Skipped]) -> None:
    """One warning per skipped item (the full list is in run.json and skipped.csv)."""
    for s in skipped:
        value = "" if s.setting_value is None else f" {s.setting_value:g}"
        layer = "" if s.layer is None else f" layer {s.layer}"
        log.warning("skipped %s %s%s%s: %s", s.dataset, s.setting, value, layer, s.reason)
