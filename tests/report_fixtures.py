"""A synthetic results table in the schema of docs/RESULTS.md, for report and statistics tests.

Scores are drawn from a seeded generator with a per-dataset difficulty, so tables have realistic
structure (SAE probes a little below logreg on average, better with larger k, worse with scarcer or
noisier data) without running any model. Ties in ``val_auc`` are planted on purpose (rounded to
2 decimals at tiny training sizes, and exact 1.0 on the easiest dataset).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from saelab.names import BASELINES
from saelab.pipeline.store import normalise_rows

_BASELINE_SHIFT = {"logreg": 0.0, "pca": -0.015, "knn": -0.05, "xgboost": -0.01, "mlp": -0.005}
DATASETS = ("5_hist_fig_ismale", "66_living-room", "87_glue_cola", "105_click_bait")
SETTING_VALUES: dict[str, list[float | None]] = {
    "normal": [None],
    "scarcity": [2.0, 4.0, 10.0, 53.0, 1024.0],
    "imbalance": [0.05, 0.5, 0.95],
    "label_noise": [0.0, 0.25, 0.5],
    "ood": [None],
}


def _difficulty(setting: str, value: float | None) -> float:
    if setting == "scarcity":
        return float(np.clip(0.25 - 0.035 * np.log2(value), 0.0, 0.25))
    if setting == "imbalance":
        return 0.1 * abs(value - 0.5)
    if setting == "label_noise":
        return 0.7 * value**2 * 2
    if setting == "ood":
        return 0.08
    return 0.0


def synthetic_results(
    seed: int = 0,
    datasets: tuple[str, ...] = DATASETS,
    layers: tuple[int, ...] = (2, 4),
    settings: tuple[str, ...] = tuple(SETTING_VALUES),
    ks: tuple[int, ...] = (1, 16, 128),
    saes: tuple[str, ...] = ("topk",),
    variants: tuple[str, ...] = ("l1", "l2"),
) -> pd.DataFrame:
    """Rows for every (dataset, setting, value, layer) x (5 baselines + SAE probes per sae, k, variant)."""
    rng = np.random.default_rng(seed)
    rows = []
    for di, ds in enumerate(datasets):
        base = 0.97 - 0.05 * di
        for setting in settings:
            values = SETTING_VALUES[setting]
            if setting == "ood" and di % 2 == 1:
                continue  # only some datasets have an OOD set
            for value in values:
                for layer in layers:
                    level = base - _difficulty(setting, value) + 0.01 * (layer == max(layers))
                    n_train = int(value) if setting == "scarcity" else 1024
                    probes = [(m, None, None, "l2") for m in BASELINES]
                    if setting in ("label_noise", "ood"):
                        probes = [("logreg", None, None, "l2")]
                    probes += [("sae", s, k, v) for s in saes for k in ks for v in variants]
                    for method, sae, k, variant in probes:
                        if method == "sae":
                            shift = -0.02 - 0.1 / (1 + k) - (0.005 if variant == "l2" else 0.0)
                        else:
                            shift = _BASELINE_SHIFT[method]
                        auc = float(np.clip(level + shift + rng.normal(0, 0.01), 0.3, 1.0))
                        val = float(np.clip(auc + rng.normal(0, 0.02), 0.3, 1.0))
                        if di == 0:
                            val = 1.0  # the easiest dataset: every probe validates perfectly
                        elif n_train <= 10:
                            val = round(val, 1)
                        label = method if method != "sae" else f"sae:{sae}:k{k}:{variant}"
                        rows.append(
                            {
                                "run": "synthetic",
                                "dataset": ds,
                                "family": "synthetic",
                                "setting": setting,
                                "setting_value": value,
                                "test_source": f"{ds}_OOD" if setting == "ood" else None,
                                "layer": layer,
                                "hook_name": f"blocks.{layer}.hook_resid_post",
                                "pooling": "mean",
                                "method": method,
                                "sae": sae,
                                "k": k,
                                "penalty": variant if method == "sae" else "l2",
                                "binarize": False if method == "sae" else None,
                                "code_pooling": "mean" if method == "sae" else None,
                                "variant": variant if method == "sae" else None,
                                "probe": label,
                                "n_train": n_train,
                                "n_test": 300 if setting == "ood" else 900,
                                "test_auc": auc,
                                "test_acc": auc - 0.05,
                                "test_f1": auc - 0.06,
                                "val_auc": val,
                                "C": 1.0,
                                "hyperparams": json.dumps({"C": 1.0}),
                                "latents": json.dumps(list(range(k))) if k else None,
                                "seed": 42,
                                "seconds": 0.01,
                                "unit_seconds": 0.05,
                                "model": "synthetic",
                                "model_id": "synthetic",
                                "unit_key": f"u{len(rows)}",
                                "config_hash": "c0",
                                "saelab_version": "0",
                                "versions": json.dumps({}),
                            }
                        )
    return normalise_rows(rows)
