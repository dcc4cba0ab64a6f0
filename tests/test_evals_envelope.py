"""The eval result envelope: round trip, schema file in sync, corrupt / foreign files, merging."""

import json
from pathlib import Path

import pandas as pd
import pytest

from saelab.cli import main
from saelab.errors import ResultFileError
from saelab.evals.envelope import (
    EvalEnvelope,
    Provenance,
    SAEIdentity,
    clean_metrics,
    envelope_schema,
    finished,
    merge_envelopes,
    read_envelope,
    write_envelope,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "eval_envelope.schema.json"


def envelope(sae: str, eval_type: str = "core", key: str = "k1", **metrics) -> EvalEnvelope:
    return EvalEnvelope(
        eval_type=eval_type,
        key=key,
        sae=SAEIdentity(
            id=sae,
            architecture="topk",
            d_in=8,
            d_sae=32,
            hook="blocks.1.hook_resid_post",
            source="trained here (topk)",
            identity="abc",
        ),
        config={"batch_size": 16},
        metrics=clean_metrics(metrics),
        headline=next(iter(metrics), None),
        details=[{"dataset": "d1", "k": 1, "test_auc": 0.75}],
        provenance=Provenance(
            versions={"saelab": "0.1.0"},
            seed=42,
            model="tiny",
            started="2026-12-01T00:00:00Z",
            finished="2026-12-01T00:00:01Z",
            seconds=1.0,
        ),
    )


def test_round_trip_and_nan_as_null(tmp_path):
    env = envelope("a", l0=12.5, explained_variance=float("nan"))
    path = write_envelope(tmp_path / "a.json", env)
    raw = json.loads(path.read_text())
    assert raw["metrics"] == {"l0": 12.5, "explained_variance": None}
    assert raw["format"] == "saelab.eval" and raw["schema_version"] == 1
    back = read_envelope(path)
    assert back == EvalEnvelope.model_validate(raw)
    assert back.details[0]["test_auc"] == 0.75


def test_schema_file_is_generated_from_the_models():
    assert json.loads(DOCS.read_text()) == envelope_schema(), (
        "docs/eval_envelope.schema.json is stale: saelab eval-schema --out docs/eval_envelope.schema.json"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"metrics": {', "not valid JSON"),
        ('{"eval_type_id": "core", "eval_result_metrics": {}}', "not a saelab eval result"),
        ("[1, 2]", "not a saelab eval result"),
        ('{"format": "saelab.eval", "schema_version": 99}', "schema_version 99"),
    ],
)
def test_corrupt_or_foreign_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ResultFileError, match=message) as err:
        read_envelope(path)
    assert str(path) in str(err.value)


def test_invalid_field_names_the_key(tmp_path):
    raw = envelope("a", l0=1.0).model_dump(mode="json")
    raw["sae"]["d_sae"] = "wide"
    path = tmp_path / "a.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ResultFileError, match=r"key 'sae.d_sae'"):
        read_envelope(path)


def test_finished_needs_the_same_key(tmp_path):
    path = write_envelope(tmp_path / "a.json", envelope("a", key="k1", l0=1.0))
    assert finished(path, "k1") is not None
    assert finished(path, "k2") is None  # stale: rerun
    assert finished(tmp_path / "missing.json", "k1") is None
    path.write_text("{")  # corrupt: rerun rewrites it
    assert finished(path, "k1") is None


def test_merge_wide_and_details(tmp_path):
    write_envelope(tmp_path / "core" / "a.json", envelope("a", l0=10.0, explained_variance=0.9))
    write_envelope(tmp_path / "core" / "b.json", envelope("b", l0=20.0, explained_variance=0.95))
    write_envelope(
        tmp_path / "sparse_probing" / "a.json",
        envelope("a", "sparse_probing", sae_top_1_test_accuracy=0.7),
    )
    wide, details = merge_envelopes([tmp_path])
    wide = wide.set_index("sae")
    assert wide.loc["a", "core.l0"] == 10.0 and wide.loc["b", "core.explained_variance"] == 0.95
    assert wide.loc["a", "sparse_probing.sae_top_1_test_accuracy"] == 0.7
    assert pd.isna(wide.loc["b", "sparse_probing.sae_top_1_test_accuracy"])
    assert wide.loc["a", "core.headline"] == "l0"
    assert len(details) == 3 and set(details["eval_type"]) == {"core", "sparse_probing"}


def test_merge_refuses_conflicting_duplicates(tmp_path):
    write_envelope(tmp_path / "x" / "a.json", envelope("a", key="k1", l0=1.0))
    write_envelope(tmp_path / "y" / "a.json", envelope("a", key="k2", l0=2.0))
    with pytest.raises(ResultFileError, match="both hold the core eval of SAE a"):
        merge_envelopes([tmp_path])


def test_cli_merge_writes_table_and_exits_2_on_a_corrupt_file(tmp_path, capsys):
    write_envelope(tmp_path / "evals" / "a.json", envelope("a", l0=3.0))
    out = tmp_path / "merged.csv"
    assert main(["merge", str(tmp_path / "evals"), "--out", str(out)]) == 0
    assert pd.read_csv(out)["core.l0"].tolist() == [3.0]
    assert (tmp_path / "details.parquet").is_file()
    (tmp_path / "evals" / "b.json").write_text("not json")
    assert main(["merge", str(tmp_path / "evals"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "b.json" in err and "Traceback" not in err
    assert pd.read_csv(out)["core.l0"].tolist() == [3.0]  # finished work untouched
