"""Quivers, regime statistics, the paper reference table and ``saelab compare`` (no model work)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from report_fixtures import synthetic_results
from saelab.cli import main
from saelab.errors import SaelabError
from saelab.pipeline.store import normalise_rows
from saelab.report import (
    BASELINE_ORDER,
    compare_with_reference,
    compute_quivers,
    load_reference,
    paired_bootstrap_ci,
    probe_labels,
    regime_curves,
    sae_chosen_share,
    summary_table,
    write_summary,
)
from saelab.report.quiver import QUIVER_COLUMNS


def _row(dataset, method, val, test, *, setting="normal", value=None, source=None, layer=1, **kw):
    return {
        "dataset": dataset,
        "family": "f",
        "setting": setting,
        "setting_value": value,
        "test_source": source,
        "layer": layer,
        "method": method,
        "val_auc": val,
        "test_auc": test,
        "test_acc": test - 0.1,
        "test_f1": test - 0.2,
        "n_train": 100,
        "n_test": 50,
        **kw,
    }


def _sae(dataset, sae, k, variant, val, test, **kw):
    return _row(dataset, "sae", val, test, sae=sae, k=k, variant=variant, **kw)


def _pick(quivers, dataset, method, **keys):
    rows = quivers[quivers["dataset"].eq(dataset) & quivers["method"].eq(method)]
    for col, value in keys.items():
        rows = rows[rows[col].eq(value)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# ----------------------------------------------------------------------------------- labels


def test_probe_labels_fill_old_tables():
    frame = pd.DataFrame(
        [
            {"method": "logreg", "sae": None, "k": None, "variant": None, "penalty": "l2"},
            {"method": "sae", "sae": "s", "k": 16, "variant": None, "penalty": None},
            {"method": "sae", "sae": "s", "k": 16, "variant": None, "penalty": "l1"},
            {"method": "sae", "sae": "s", "k": 128, "variant": "l1+bin", "penalty": "l1"},
        ]
    )
    assert probe_labels(frame).tolist() == [
        "logreg",
        "sae:s:k16:l2",
        "sae:s:k16:l1",
        "sae:s:k128:l1+bin",
    ]
    frame["probe"] = [None, "custom", None, None]
    assert probe_labels(frame).tolist()[:2] == ["logreg", "custom"]
    assert probe_labels(frame.drop(columns=["variant", "penalty", "probe"]))[1] == "sae:s:k16:l2"


# ----------------------------------------------------------------------------------- quivers


def _quiver_frame():
    rows = [
        # a: plain pick; the SAE validates best
        _row("a", "logreg", 0.90, 0.80),
        _row("a", "pca", 0.95, 0.70),
        _sae("a", "s2", 16, "l1", 0.97, 0.85),
        _sae("a", "s2", 1, "l1", 0.99, 0.99),  # k = 1 is not a quiver candidate by default
        # b: everything ties at 0.9 (knn and one SAE only below 1e-12)
        _row("b", "knn", 0.9 + 1e-14, 0.61),
        _row("b", "logreg", 0.9, 0.62),
        _sae("b", "s2", 128, "l1", 0.9, 0.71),
        _sae("b", "s1", 16, "l1", 0.9, 0.72),
        _sae("b", "s2", 16, "l2", 0.9, 0.73),
        _sae("b", "s2", 16, "l1", 0.9 + 1e-13, 0.74),
        # c: NaN validation AUC is not a candidate
        _row("c", "logreg", np.nan, 0.99),
        _row("c", "mlp", 0.6, 0.5),
        _sae("c", "s1", 16, "l1", np.nan, 0.98),
        # d: no baseline rows
        _sae("d", "s1", 16, "l1", 0.7, 0.66),
        _sae("d", "s1", 128, "l1", 0.8, 0.67),
        # a again at other keys: scarcity n = 4 and an OOD test source form their own points
        _row("a", "logreg", 0.5, 0.55, setting="scarcity", value=4.0),
        _row("a", "logreg", 0.5, 0.56, setting="ood", source="a_OOD"),
    ]
    return normalise_rows(rows)


def test_quiver_picks_ties_nan_and_missing_baselines():
    results = _quiver_frame()
    q = compute_quivers(results)
    assert list(q.columns) == list(QUIVER_COLUMNS)
    a_base = _pick(q, "a", "best_baseline", setting="normal")
    a_sae = _pick(q, "a", "best_with_sae", setting="normal")
    assert (a_base.chosen_probe, a_base.test_auc, a_base.n_candidates) == ("pca", 0.70, 2)
    assert (a_sae.chosen_probe, a_sae.chosen_sae, a_sae.chosen_k) == ("sae:s2:k16:l1", "s2", 16)
    assert (a_sae.test_auc, a_sae.n_candidates, a_sae.n_tied) == (0.85, 3, 1)
    # ties go to baselines in BASELINE_ORDER (logreg before knn), an SAE only if strictly better
    b_base = _pick(q, "b", "best_baseline")
    b_sae = _pick(q, "b", "best_with_sae")
    assert (b_base.chosen_probe, b_base.n_tied) == ("logreg", 2)
    assert (b_sae.chosen_probe, b_sae.test_auc, b_sae.n_tied, b_sae.n_candidates) == (
        "logreg",
        0.62,
        6,
        6,
    )
    assert pd.isna(b_sae.chosen_sae) and pd.isna(b_sae.chosen_k)
    # NaN validation rows are ignored
    c_base = _pick(q, "c", "best_baseline")
    assert (c_base.chosen_probe, c_base.test_auc, c_base.n_candidates) == ("mlp", 0.5, 1)
    assert _pick(q, "c", "best_with_sae").chosen_probe == "mlp"
    # no baselines: no best_baseline row
    assert q[q.dataset.eq("d")].method.tolist() == ["best_with_sae"]
    assert _pick(q, "d", "best_with_sae").chosen_probe == "sae:s1:k128:l1"
    # null keys group: normal (no value, no source), scarcity 4 and OOD are separate points
    a_points = q[q.dataset.eq("a") & q.method.eq("best_baseline")]
    assert sorted(a_points.test_auc.round(2)) == [0.55, 0.56, 0.70]
    assert len(q) == 2 * 3 + 1 + 2 * 2  # a, b, c; d; a at scarcity 4 and OOD


def test_quiver_sae_first_ties_and_all_ks():
    results = _quiver_frame()
    q = compute_quivers(results, ties="sae_first")
    # SAE order: id by first appearance (s2 before s1), then k, then variant
    b_sae = _pick(q, "b", "best_with_sae")
    assert (b_sae.chosen_probe, b_sae.test_auc, b_sae.ties) == ("sae:s2:k16:l1", 0.74, "sae_first")
    assert _pick(q, "b", "best_baseline").chosen_probe == "logreg"  # no SAE among baselines
    # sae_ks=None: every k joins, so the k = 1 probe with val 0.99 wins at a
    q_all = compute_quivers(results, sae_ks=None)
    assert _pick(q_all, "a", "best_with_sae", setting="normal").chosen_probe == "sae:s2:k1:l1"
    assert _pick(q_all, "a", "best_with_sae", setting="normal").n_candidates == 4
    q_128 = compute_quivers(results, sae_ks=[128])
    assert _pick(q_128, "a", "best_with_sae", setting="normal").chosen_probe == "pca"


def test_quivers_on_synthetic_table_tie_sensitivity():
    results = synthetic_results()
    base_first = compute_quivers(results)
    sae_first = compute_quivers(results, ties="sae_first")
    easy = base_first[base_first.dataset.eq("5_hist_fig_ismale")]  # every val_auc is 1.0
    assert (easy.chosen_method == "logreg").all() and (easy.n_tied == easy.n_candidates).all()
    easy_sae = sae_first[
        sae_first.dataset.eq("5_hist_fig_ismale") & sae_first.method.eq("best_with_sae")
    ]
    assert easy_sae.chosen_probe.eq("sae:topk:k16:l1").all()
    assert sae_chosen_share(sae_first) > sae_chosen_share(base_first)
    # one pair of rows per point with baselines; the k = 1 probes never join
    assert (
        len(base_first)
        == 2
        * results.groupby(["dataset", "setting", "setting_value", "layer"], dropna=False).ngroups
    )
    assert not base_first.chosen_k.eq(1).any()


# ----------------------------------------------------------------------------------- stats


def _paired_frame(logreg, sae, datasets=None):
    datasets = datasets or [f"d{i}" for i in range(len(logreg))]
    rows = []
    for ds, lr, s in zip(datasets, logreg, sae, strict=True):
        rows.append(_row(ds, "logreg", 0.9, lr))
        rows.append(_sae(ds, "s", 16, "l1", 0.8, s))
    return normalise_rows(rows)


def test_win_rate_counts_ties_half_and_mean_difference():
    results = _paired_frame([0.8, 0.8, 0.8, 0.8], [0.9, 0.8, 0.7, 0.85])
    table = summary_table(results, n_boot=200)
    sae = table[table.probe.eq("sae:s:k16:l1")].iloc[0]
    assert sae.win_rate_vs_logreg == pytest.approx(2.5 / 4)
    assert sae.mean_diff_vs_logreg == pytest.approx(0.0125)
    assert sae.n_pairs_vs_logreg == 4 and sae.n_points == 4 and sae.n_datasets == 4
    assert sae.mean_test_auc == pytest.approx(0.8125)
    assert sae.mean_test_acc == pytest.approx(0.7125)
    # logreg validates better everywhere, so best_baseline = best_with_sae = logreg
    assert sae.mean_diff_vs_best_baseline == pytest.approx(0.0125)
    logreg = table[table.probe.eq("logreg")].iloc[0]
    assert pd.isna(logreg.win_rate_vs_logreg) and logreg.win_rate_vs_best_baseline == 0.5
    assert table[table.probe.eq("best_with_sae")].iloc[0].sae_chosen_share == 0.0


def test_cluster_bootstrap_two_datasets_spans_both_means():
    # 2 datasets: a resample is all-d0 or all-d1 with probability 1/4 each, so the 95% interval
    # is exactly [mean d0, mean d1]; a point-level bootstrap would give a much narrower one.
    diff = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    low, high = paired_bootstrap_ci(diff, ["d0"] * 3 + ["d1"] * 3, n_boot=4000, seed=1)
    assert (low, high) == (0.0, 1.0)
    assert paired_bootstrap_ci([0.3, 0.3], ["x", "x"]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert np.isnan(paired_bootstrap_ci([], [])[0])


def _simulated(n_datasets, rng, true=0.02):
    """Paired differences, 5 points per dataset, with a shared per-dataset effect."""
    cluster = np.repeat(np.arange(n_datasets), 5)
    effect = rng.normal(0, 0.02, n_datasets)[cluster]
    return true + effect + rng.normal(0, 0.01, cluster.size), cluster


def test_cluster_bootstrap_covers_truth_shrinks_and_is_seeded():
    rng = np.random.default_rng(7)
    # calibration: over 200 simulated studies of 20 datasets, the 95% interval holds the true
    # mean difference about 95% of the time (percentile intervals run a little short at D = 20)
    hits = []
    for _ in range(200):
        diff, cluster = _simulated(20, rng)
        low, high = paired_bootstrap_ci(diff, cluster, n_boot=400, seed=0)
        hits.append(low < 0.02 < high)
    assert 0.87 <= np.mean(hits) <= 0.99
    # a point-level interval on the same data would be far too short: check the width is at
    # least the dataset-level standard error (sd of the effects 0.02 / sqrt(20) ~ 0.0045)
    diff_small, cl_small = _simulated(10, rng)
    diff_big, cl_big = _simulated(200, rng)
    small = paired_bootstrap_ci(diff_small, cl_small, n_boot=2000, seed=0)
    big = paired_bootstrap_ci(diff_big, cl_big, n_boot=2000, seed=0)
    assert big[0] < 0.02 < big[1]
    assert small[1] - small[0] > 2 * 1.96 * 0.02 / np.sqrt(10) * 0.7
    assert (big[1] - big[0]) < 0.4 * (small[1] - small[0])  # ~ 1/sqrt(20) as wide
    assert paired_bootstrap_ci(diff_small, cl_small, seed=0) == small
    assert paired_bootstrap_ci(diff_small, cl_small, seed=1) != small


def test_summary_ci_is_the_cluster_bootstrap_of_the_paired_differences():
    rng = np.random.default_rng(3)
    logreg = rng.uniform(0.7, 0.9, 12)
    sae = logreg + rng.normal(-0.01, 0.02, 12)
    results = _paired_frame(list(logreg), list(sae))
    table = summary_table(results, n_boot=500, seed=5)
    row = table[table.probe.eq("sae:s:k16:l1")].iloc[0]
    expected = paired_bootstrap_ci(sae - logreg, [f"d{i}" for i in range(12)], n_boot=500, seed=5)
    assert (row.ci_low_vs_logreg, row.ci_high_vs_logreg) == pytest.approx(expected)
    assert row.ci_low_vs_logreg < row.mean_diff_vs_logreg < row.ci_high_vs_logreg
    again = summary_table(results, n_boot=500, seed=5)
    pd.testing.assert_frame_equal(table, again)


def test_summary_order_counts_and_quiver_share():
    results = synthetic_results(saes=("zeta", "alpha"), ks=(16, 128))
    table = summary_table(results, n_boot=100)
    assert list(dict.fromkeys(table.setting)) == [
        "normal",
        "scarcity",
        "imbalance",
        "label_noise",
        "ood",
    ]
    normal2 = table[table.setting.eq("normal") & table.layer.eq(2)]
    assert normal2.probe.tolist() == [
        *BASELINE_ORDER,
        "best_baseline",
        "best_with_sae",
        "sae:zeta:k16:l1",
        "sae:zeta:k16:l2",
        "sae:zeta:k128:l1",
        "sae:zeta:k128:l2",
        "sae:alpha:k16:l1",
        "sae:alpha:k16:l2",
        "sae:alpha:k128:l1",
        "sae:alpha:k128:l2",
    ]
    scarcity = table[table.setting.eq("scarcity") & table.probe.eq("logreg") & table.layer.eq(4)]
    direct = results[
        results.setting.eq("scarcity") & results.method.eq("logreg") & results.layer.eq(4)
    ]
    assert scarcity.n_points.item() == 20 and scarcity.n_datasets.item() == 4
    assert scarcity.mean_test_auc.item() == pytest.approx(direct.test_auc.mean())
    quivers = compute_quivers(results)
    share = table[table.probe.eq("best_with_sae") & table.setting.eq("imbalance")]
    q = quivers[quivers.setting.eq("imbalance")]
    assert share.sae_chosen_share.mean() == pytest.approx(sae_chosen_share(q))
    # columns vs the reference itself are empty
    assert table[table.probe.eq("best_baseline")].win_rate_vs_best_baseline.isna().all()


def test_regime_curves_per_value():
    results = synthetic_results()
    curves = regime_curves(results)
    lr = curves[curves.setting.eq("scarcity") & curves.probe.eq("logreg") & curves.layer.eq(2)]
    assert lr.setting_value.tolist() == [2.0, 4.0, 10.0, 53.0, 1024.0]
    direct = results[
        results.setting.eq("scarcity")
        & results.method.eq("logreg")
        & results.layer.eq(2)
        & results.setting_value.eq(53.0)
    ]
    assert lr[lr.setting_value.eq(53.0)].mean_test_auc.item() == pytest.approx(
        direct.test_auc.mean()
    )
    assert lr.n_datasets.eq(4).all()
    normal = curves[curves.setting.eq("normal")]
    assert normal.setting_value.isna().all() and "best_with_sae" in set(normal.probe)


def test_write_summary_uses_run_quiver_ks_and_names_bad_files(tmp_path):
    results = synthetic_results()
    results.to_parquet(tmp_path / "results.parquet", index=False)
    (tmp_path / "run.json").write_text(json.dumps({"config": {"probes": {"quiver_ks": [128]}}}))
    paths = write_summary(tmp_path, n_boot=50)
    assert set(paths) == {"quivers", "quivers_csv", "summary"}
    quivers = pd.read_parquet(paths["quivers"])
    assert set(quivers.chosen_k.dropna()) <= {128}
    assert len(pd.read_csv(paths["quivers_csv"])) == len(quivers)
    summary = pd.read_csv(paths["summary"])
    assert {"win_rate_vs_logreg", "ci_low_vs_best_baseline"} <= set(summary.columns)
    assert not list(tmp_path.glob("*.tmp"))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SaelabError, match=r"results\.parquet"):
        write_summary(empty)
    (empty / "results.parquet").write_bytes(b"not parquet")
    with pytest.raises(SaelabError, match="cannot read"):
        write_summary(empty)


# ----------------------------------------------------------------------------------- compare


def test_reference_csv_holds_the_paper_numbers():
    ref = load_reference()

    def value(**keys):
        rows = ref
        for col, v in keys.items():
            rows = rows[rows[col].eq(v)] if not pd.isna(v) else rows[rows[col].isna()]
        assert len(rows) == 1, (keys, rows)
        return rows.iloc[0]

    g9 = {"model": "gemma-2-9b", "layer": "20"}
    assert (
        value(**g9, setting="normal", setting_value=np.nan, probe="logreg").mean_test_auc == 0.9414
    )
    assert (
        value(**g9, setting="normal", probe="best_with_sae", ties="baseline_first").mean_test_auc
        == 0.9366
    )
    assert (
        value(**g9, setting="normal", probe="best_with_sae", ties="sae_first").mean_test_auc
        == 0.9362
    )
    k128 = value(**g9, setting="normal", probe="sae_k128", sae="gemma-scope 16k L0 408")
    assert (k128.mean_test_auc, k128.win_rate_vs_logreg) == (0.9210, 0.088)
    assert value(**g9, setting="ood", probe="logreg").mean_test_auc == 0.8265
    assert value(**g9, setting="ood", probe="sae_k128").mean_test_auc == 0.7231
    scarce = ref[ref.setting.eq("scarcity") & ref.setting_value.eq(1024.0) & ref.probe.eq("logreg")]
    assert (scarce.mean_test_auc.item(), scarce.n_points.item()) == (0.943, 102)
    noise = ref[ref.setting.eq("label_noise") & ref.setting_value.notna() & ref.probe.eq("logreg")]
    assert len(noise) == 11 and noise.setting_value.max() == 0.5
    assert value(model="llama-3.1-8b", layer="16", probe="sae_k256").mean_test_auc == 0.9172
    assert set(ref.model) == {"gemma-2-9b", "gemma-2-2b", "llama-3.1-8b"}


def _compare_run(layer=20):
    rows = []
    for ds, lr, s1, s2 in (("d0", 0.90, 0.85, 0.60), ("d1", 0.80, 0.82, 0.61)):
        rows.append(_row(ds, "logreg", 0.9, lr, layer=layer, model="google/gemma-2-9b"))
        # variant l1 appears first, so it is the SAE's primary variant
        rows.append(_sae(ds, "mine", 16, "l1", 0.8, s1, layer=layer, model="google/gemma-2-9b"))
        rows.append(_sae(ds, "mine", 16, "l2", 0.8, s2, layer=layer, model="google/gemma-2-9b"))
        rows.append(
            _row(
                ds,
                "logreg",
                0.9,
                0.7,
                setting="scarcity",
                value=2.0,
                layer=layer,
                model="google/gemma-2-9b",
            )
        )
    return normalise_rows(rows)


def _one(table, **keys):
    rows = table
    for col, v in keys.items():
        rows = rows[rows[col].isna()] if v is None else rows[rows[col].eq(v)]
    assert len(rows) == 1, (keys, rows)
    return rows.iloc[0]


def test_compare_values_and_missing_entries():
    table = compare_with_reference(_compare_run())
    assert set(table.model) == {"gemma-2-9b"} and set(table.layer) == {"20"}
    lr = _one(table, setting="normal", setting_value=None, probe="logreg")
    assert (lr.run_auc, lr.ref_auc, lr.run_n_points) == (pytest.approx(0.85), 0.9414, 2)
    assert lr["auc_diff"] == pytest.approx(0.85 - 0.9414) and lr.status == "ok"
    k16 = _one(table, setting="normal", probe="sae_k16", sae="gemma-scope 16k L0 408")
    assert (k16.run_probe, k16.run_auc) == ("sae:mine:k16:l1", pytest.approx(0.835))
    assert k16.run_win_rate_vs_logreg == 0.5
    other_sae = _one(table, setting="normal", probe="sae_k16", sae="gemma-scope 131k L0 276")
    pca = _one(table, setting="normal", probe="pca")
    for missing in (
        other_sae,
        pca,
        _one(table, setting="normal", probe="sae_k128", sae="gemma-scope 16k L0 408"),
    ):
        assert missing.status == "missing in run" and np.isnan(missing.run_auc)
    quiver = _one(table, setting="normal", probe="best_with_sae")
    assert quiver.ties == "baseline_first" and quiver.run_auc == pytest.approx(0.85)
    assert _one(table, setting="scarcity", setting_value=2.0, probe="logreg").run_auc == 0.7
    assert _one(table, setting="scarcity", setting_value=10.0, probe="logreg").status != "ok"
    assert table[table.setting.eq("label_noise")].status.eq("missing in run").all()
    assert "notebook" not in set(table.ties.dropna())


def test_compare_maps_unknown_layers_and_picks_model():
    table = compare_with_reference(_compare_run(layer=3))
    assert set(table.layer) == {"20"} and set(table.run_layer) == {3}
    llama = compare_with_reference(_compare_run(layer=3), model="LLAMA-3.1-8B")
    assert set(llama.model) == {"llama-3.1-8b"} and set(llama.layer) == {"16"}
    assert _one(llama, probe="logreg").ref_auc == 0.9403
    with pytest.raises(SaelabError, match="not in the reference"):
        compare_with_reference(_compare_run(), model="gpt-2")


def test_bad_reference_names_column_and_file(tmp_path):
    ref = load_reference()
    bad = tmp_path / "ref.csv"
    ref.drop(columns=["probe"]).to_csv(bad, index=False)
    with pytest.raises(SaelabError, match=r"ref\.csv.*'probe'"):
        compare_with_reference(_compare_run(), reference=bad)
    ref.assign(mean_test_auc="high").to_csv(bad, index=False)
    with pytest.raises(SaelabError, match="mean_test_auc"):
        load_reference(bad)


def test_cli_compare_exit_codes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _compare_run().to_parquet(run / "results.parquet", index=False)
    out = tmp_path / "cmp.csv"
    assert main(["compare", str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "0.9414" in printed and "—" in printed  # a missing run value is a dash, not 0
    written = pd.read_csv(out)
    assert len(written) == len(compare_with_reference(run))

    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich may wrap the long path
    assert str(tmp_path / "nowhere" / "results.parquet") in err and "Traceback" not in err
    bad = tmp_path / "bad.csv"
    bad.write_text("model,layer\nx,1\n")
    assert main(["compare", str(run), "--reference", str(bad)]) == 2
    err = "".join(capsys.readouterr().err.split())
    assert str(bad) in err and "'setting'" in err
    assert main(["compare", str(run), "--model", "nope"]) == 2
