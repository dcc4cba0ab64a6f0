"""Run configuration: YAML validated by pydantic models; unknown keys and bad values name the key."""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from saelab.errors import ConfigError

PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The language model whose residual stream is read."""

    name: str = Field(
        "all-MiniLM-L6-v2", description="hub name or local folder of a transformers model"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(
        None,
        ge=2,
        description="tokens kept per text (left truncation); default min(1024, model limit)",
    )
    trust_remote_code: bool = False


class DataConfig(_Section):
    """Which datasets, how many rows, and the split options."""

    datasets: list[str] = Field(
        default_factory=lambda: ["5_hist_fig_ismale", "92_glue_sst2"],
        min_length=1,
        description="bundled names (e.g. 92_glue_sst2), 'all' for the 113, or paths to CSV/Parquet files",
    )
    max_rows: int = Field(5000, ge=10, description="first rows read from each file (paper: 5000)")
    max_train: int = Field(
        1024, ge=2, description="training rows cap of the normal setting (paper: 1024)"
    )
    max_test: int | None = Field(None, ge=1, description="cap on test rows, for quick runs")


class SAETrainConfig(_Section):
    """A TopK SAE trained in the run on token-level activations of the training texts only."""

    architecture: Literal["topk"] = "topk"
    expansion_factor: int = Field(8, ge=1)
    k: int = Field(32, ge=1)
    lr: float | None = Field(None, gt=0)
    batch_size: int = Field(4096, ge=16)
    epochs: float = Field(4.0, gt=0)
    max_tokens: int = Field(
        400_000, ge=1000, description="cap on training tokens per layer, sampled across datasets"
    )
    seed: int = 0


class SAEConfig(_Section):
    """One SAE: trained here (``train``) or loaded from a SAELens-format folder (``path``)."""

    id: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    train: SAETrainConfig | None = None
    path: str | None = None
    layer: int | None = Field(None, description="layer a loaded SAE reads (default: its hook_name)")

    @model_validator(mode="after")
    def _one_source(self) -> SAEConfig:
        if (self.train is None) == (self.path is None):
            raise ValueError("give exactly one of 'train' (train an SAE here) or 'path' (load one)")
        return self


class ProbeConfig(_Section):
    """Probe settings shared by the baselines and the SAE probes."""

    baselines: list[Literal["logreg"]] = Field(default_factory=lambda: ["logreg"])
    ks: list[int] = Field(default_factory=lambda: list(PAPER_KS), min_length=1)
    latent_ranking: Literal["mean", "none"] = Field(
        "mean", description="'mean': normalised mean difference (paper, current); 'none': raw"
    )
    code_pooling: Literal["pool_codes", "code_pooled"] = Field(
        "pool_codes",
        description="for mean pooling: mean of per-token codes (SAEBench) or code of the mean (sae-probes)",
    )

    @field_validator("ks")
    @classmethod
    def _positive_sorted(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError("every k must be >= 1")
        return sorted(set(ks))


class RunConfig(_Section):
    """A whole run: model, layers, datasets, SAEs, probes."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 42
    cache_dir: str | None = Field(
        None, description="activation and SAE cache (default: $SAELAB_CACHE or ~/.cache/saelab)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    layers: list[int] = Field(default_factory=lambda: [3], min_length=1)
    pooling: Literal["auto", "last", "mean"] = Field(
        "auto", description="auto: last token for decoders (paper), mean for encoders"
    )
    settings: list[Literal["normal"]] = Field(default_factory=lambda: ["normal"])
    data: DataConfig = Field(default_factory=DataConfig)
    saes: list[SAEConfig] = Field(
        default_factory=lambda: [SAEConfig(id="topk", train=SAETrainConfig())]
    )
    probes: ProbeConfig = Field(default_factory=ProbeConfig)

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[int]) -> list[int]:
        if any(layer < 0 for layer in layers):
            raise ValueError("layers are block indices >= 0 (blocks.L.hook_resid_post)")
        return sorted(set(layers))

    @model_validator(mode="after")
    def _unique_sae_ids(self) -> RunConfig:
        ids = [s.id for s in self.saes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"SAE ids must be unique; repeated: {dup}")
        return self


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def parse_set_option(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML, so ``[1, 2]``, ``true`` and ``3`` keep their types)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key=value`` overrides to a raw config mapping (before validation).

    Keys are dotted paths; a number indexes a list (``saes.0.train.k=16``).
    """
    for item in overrides:
        parts, value = parse_set_option(item)
        dotted = ".".join(parts)
        node: Any = data
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(
                        f"--set {dotted}: '{p}' is not an index of the {len(node)}-item list "
                        f"'{'.'.join(parts[:depth])}'"
                    )
                if last:
                    node[int(p)] = value
                else:
                    node = node[int(p)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: '{'.'.join(parts[:depth])}' is not a section")
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
    return data


def quickstart_yaml() -> str:
    """Text of the built-in quickstart config (shipped inside the package)."""
    return (importlib.resources.files("saelab") / "resources" / "quickstart.yaml").read_text(
        "utf-8"
    )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a YAML config; ``None`` means the built-in quickstart."""
    if path is None:
        source, text = "<built-in quickstart>", quickstart_yaml()
    else:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {p}: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {source} must be a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
