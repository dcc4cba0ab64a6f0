"""One typed result envelope for every SAE evaluation, its JSON schema, and merging envelopes.

Each evaluation of one SAE writes one JSON file, ``<out>/evals/<eval_type>/<sae id>.json``:

- ``format`` / ``schema_version``: what the file is (a foreign JSON lacks them and is refused);
- ``eval_type``: ``core`` | ``sparse_probing`` | ``absorption``;
- ``key``: hash of everything that decides the result (SAE identity, model, hook, the eval's
  config, its inputs, versions); a rerun with the same key skips the eval;
- ``sae``: the SAE's identity (id, architecture, widths, hook, source, identity hash);
- ``config``: the eval's settings; ``metrics``: flat ``{name: number | null}`` (NaN is written as
  null); ``headline``: the name of the eval's headline metric; ``details``: per-item records
  (per dataset, per letter, ...); ``skipped_reason``: why an eval could not apply (then no metrics);
- ``provenance``: saelab and library versions, seed, model id, start / end time, seconds per stage.

The layout follows SAEBench's ``BaseEvalOutput`` (``sae_bench/evals/base_eval_output.py``: eval
config, flat metric categories, per-item details, SAE identity, versions), with saelab's own field
names; ``docs/eval_envelope.schema.json`` is generated from these pydantic models
(:func:`envelope_schema`, kept in sync by a test).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saelab.errors import ResultFileError
from saelab.io import write_json_atomic

FORMAT = "saelab.eval"
SCHEMA_VERSION = 1
EvalType = Literal["core", "sparse_probing", "absorption"]
SAE_COLUMNS = ("sae", "architecture", "d_in", "d_sae", "hook", "source")
"""Columns of the merged table that describe the SAE (the rest are ``<eval>.<metric>``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SAEIdentity(_Model):
    """Which SAE was evaluated."""

    id: str = Field(..., description="the SAE's id in the eval config")
    architecture: str = Field(..., description="SAELens architecture name (topk, jumprelu, ...)")
    d_in: int = Field(..., ge=1)
    d_sae: int = Field(..., ge=1)
    hook: str = Field(..., description="hook point it reads, blocks.L.hook_<kind>")
    source: str = Field(..., description="trained here / folder / release / derived, in words")
    identity: str = Field(..., description="hash of the files (or training config) deciding it")


class Provenance(_Model):
    """Where and how the result was produced."""

    versions: dict[str, str] = Field(..., description="saelab, Python and library versions")
    seed: int
    model: str = Field(..., description="the model's id (name and revision or weights hash)")
    started: str = Field(..., description="UTC time, ISO 8601")
    finished: str = Field(..., description="UTC time, ISO 8601")
    seconds: float = Field(..., ge=0)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class EvalEnvelope(_Model):
    """One evaluation of one SAE."""

    format: Literal["saelab.eval"] = FORMAT
    schema_version: Literal[1] = SCHEMA_VERSION
    eval_type: EvalType
    key: str = Field(..., description="hash of everything that decides this result")
    sae: SAEIdentity
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    headline: str | None = Field(None, description="name of the headline metric")
    details: list[dict[str, Any]] = Field(default_factory=list)
    skipped_reason: str | None = None
    provenance: Provenance


def envelope_schema() -> dict[str, Any]:
    """The JSON schema of :class:`EvalEnvelope` (written to docs/eval_envelope.schema.json)."""
    schema = EvalEnvelope.model_json_schema()
    schema["$id"] = "https://saelab.invalid/schemas/eval_envelope.schema.json"
    schema["title"] = "saelab eval envelope"
    return schema


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Metric values as floats, NaN and infinities as None (JSON has no NaN)."""
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        if value is None or isinstance(value, (list, tuple, dict)):
            continue
        v = float(value)
        out[name] = v if math.isfinite(v) else None
    return out


def write_envelope(path: str | Path, envelope: EvalEnvelope) -> Path:
    """Write ``envelope`` to ``path`` atomically (validated first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = EvalEnvelope.model_validate(envelope.model_dump(mode="json")).model_dump(mode="json")
    write_json_atomic(path, data)
    return path


def read_envelope(path: str | Path) -> EvalEnvelope:
    """Read and validate one envelope.

    Raises:
        ResultFileError: naming the file when it cannot be read, is not JSON, is JSON of another
            kind (no ``format: saelab.eval``), has another schema version, or fails validation
            (the key and what was expected).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ResultFileError(f"{path}: cannot read the eval result ({exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultFileError(
            f"{path}: not valid JSON ({exc}); delete it and rerun the eval to rewrite it"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ResultFileError(
            f"{path}: not a saelab eval result (expected a JSON object with "
            f'"format": "{FORMAT}"; this file may come from another tool)'
        )
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultFileError(
            f"{path}: eval result schema_version {data.get('schema_version')!r}; this saelab "
            f"reads version {SCHEMA_VERSION}"
        )
    try:
        return EvalEnvelope.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ResultFileError(
            f"{path}: key '{where}': {first['msg']} ({len(exc.errors())} problem(s))"
        ) from None


def finished(path: str | Path, key: str) -> EvalEnvelope | None:
    """The envelope at ``path`` when it exists, is valid and has ``key`` (the eval is done);
    else None (missing, corrupt or stale: the eval runs again and rewrites it)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        env = read_envelope(path)
    except ResultFileError:
        return None
    return env if env.key == key else None


def envelope_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.json`` files named by ``paths`` (files, or folders searched recursively), sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if q.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ResultFileError(f"{p}: no such file or folder of eval results")
    return out


def merge_envelopes(paths: Iterable[str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join envelopes into tables.

    Returns:
        ``(wide, details)``: ``wide`` has one row per SAE with :data:`SAE_COLUMNS` and one column
        ``<eval_type>.<metric>`` per metric (plus ``<eval_type>.headline`` naming the headline
        metric and ``<eval_type>.skipped_reason``); ``details`` has one row per detail record with
        ``eval_type`` and ``sae`` beside the record's own fields.

    Raises:
        ResultFileError: no result file under ``paths``.
        ResultFileError: a file is corrupt or foreign (named), or two files hold the same eval of
            the same SAE id with different results (both named).
    """
    paths = list(paths)
    rows: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str], tuple[Path, str]] = {}
    details: list[dict[str, Any]] = []
    for path in envelope_files(paths):
        env = read_envelope(path)
        where = (env.sae.id, env.eval_type)
        if where in seen:
            other, key = seen[where]
            if key != env.key:
                raise ResultFileError(
                    f"{path} and {other} both hold the {env.eval_type} eval of SAE {env.sae.id} "
                    "with different results; keep one"
                )
            continue
        seen[where] = (path, env.key)
        row = rows.setdefault(
            env.sae.id,
            {
                "sae": env.sae.id,
                "architecture": env.sae.architecture,
                "d_in": env.sae.d_in,
                "d_sae": env.sae.d_sae,
                "hook": env.sae.hook,
                "source": env.sae.source,
            },
        )
        for name, value in env.metrics.items():
            row[f"{env.eval_type}.{name}"] = math.nan if value is None else value
        row[f"{env.eval_type}.headline"] = env.headline
        row[f"{env.eval_type}.skipped_reason"] = env.skipped_reason
        for record in env.details:
            details.append({"eval_type": env.eval_type, "sae": env.sae.id, **record})
    if not rows:
        raise ResultFileError(
            f"no eval result files (*.json) in {', '.join(str(p) for p in paths)}"
        )
    return pd.DataFrame(list(rows.values())), pd.DataFrame(details)
