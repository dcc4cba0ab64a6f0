"""Run configuration: YAML validated by pydantic models; unknown keys and bad values name the key."""

from __future__ import annotations

import importlib.resources
import itertools
import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from saelab.errors import ConfigError
from saelab.names import BASELINES, SETTINGS
from saelab.sae.training.config import SAETrainConfig

PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_M = TypeVar("_M", bound=BaseModel)


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


class IHTPConfig(_Section):
    """Instance hard-thresholding pursuit on the dictionary of another SAE of the run."""

    dictionary: str = Field(
        ..., description="id of the SAE (trained or loaded in this run) whose W_dec / b_dec it uses"
    )
    k: int = Field(..., ge=1, description="latents kept per token before the union over the text")


class SAEConfig(_Section):
    """One SAE: trained here (``train``), loaded from a folder (``path``: SAELens,
    dictionary_learning or sparsify, detected) or a SAELens release (``release`` + ``sae_id``)."""

    id: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    train: SAETrainConfig | None = None
    path: str | None = Field(
        None,
        description="SAE folder in any supported format (SAELens, dictionary_learning, sparsify)",
    )
    format: Literal["saelens", "dictionary_learning", "sparsify"] | None = Field(
        None, description="force the format of 'path' (default: detected from its files)"
    )
    hookpoint: str | None = Field(
        None, description="sparsify: the hookpoint sub-folder of a root that holds several"
    )
    release: str | None = Field(
        None, description="SAELens release name (or hub repo id), with 'sae_id'; needs sae-lens"
    )
    sae_id: str | None = Field(None, description="the SAE's id within 'release'")
    ihtp: IHTPConfig | None = Field(
        None, description="encode with IHTP on the dictionary of another SAE of the run"
    )
    layer: int | None = Field(None, description="layer a loaded SAE reads (default: its hook_name)")
    hook_kind: Literal["resid_post", "attn_out", "mlp_out"] | None = Field(
        None,
        description=(
            "what a loaded SAE reads at its layer: the residual stream after the block, or the "
            "attention / MLP output (blocks.L.hook_<kind>); default: from its hook_name, else "
            "resid_post"
        ),
    )

    @model_validator(mode="after")
    def _one_source(self) -> SAEConfig:
        sources = [s for s in ("train", "path", "release", "ihtp") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of 'train' (train an SAE here), 'path' (load a folder), "
                "'release' (with 'sae_id': a SAELens release) or 'ihtp' (pursuit on the "
                "dictionary of another SAE of the run)"
            )
        if (self.release is None) != (self.sae_id is None):
            raise ValueError("'release' and 'sae_id' go together: give both or neither")
        if self.path is None and (self.format is not None or self.hookpoint is not None):
            raise ValueError("'format' and 'hookpoint' apply to 'path' only")
        return self

    def source_spec(self) -> dict[str, Any] | None:
        """What ``saelab.sae.open_sae`` takes for a loaded SAE; None for a trained one."""
        if self.release is not None:
            return {"release": self.release, "sae_id": self.sae_id}
        if self.path is not None:
            return {"path": self.path, "format": self.format, "hookpoint": self.hookpoint}
        return None


SettingName = Literal[SETTINGS]  # type: ignore[valid-type]
BaselineName = Literal[BASELINES]  # type: ignore[valid-type]


class SAEVariant(_Section):
    """How an SAE probe is fitted: penalty, binarized codes, and how per-token codes are pooled."""

    penalty: Literal["l1", "l2"] = Field(
        "l1", description="logistic-regression penalty (paper: l1, solved by saga there)"
    )
    binarize: bool = Field(False, description="use the indicator code != 0 instead of the code")
    code_pooling: Literal["auto", "pooled", "mean", "max"] = Field(
        "auto",
        description=(
            "'pooled': code of the pooled activation (sae-probes); 'mean' / 'max': mean / max of "
            "per-token codes (token-level runs); 'auto': 'mean' when activations are mean-pooled, "
            "'pooled' for last-token runs"
        ),
    )

    def resolved_pooling(self, pooling: str) -> str:
        """The code pooling actually used for activation pooling ``pooling`` (last | mean)."""
        if self.code_pooling != "auto":
            return self.code_pooling
        return "mean" if pooling == "mean" else "pooled"

    def label(self, pooling: str) -> str:
        """Short variant label: ``l1``, ``l2+bin``, ``l1+max`` (the auto code pooling is implied)."""
        parts = [self.penalty] + (["bin"] if self.binarize else [])
        cp = self.resolved_pooling(pooling)
        if cp != SAEVariant().resolved_pooling(pooling):
            parts.append(cp)
        return "+".join(parts)


class ProbeConfig(_Section):
    """Probe settings shared by the baselines and the SAE probes."""

    baselines: list[BaselineName] = Field(
        default_factory=lambda: ["logreg"],
        description="baselines on raw activations: logreg, pca, knn, xgboost, mlp (paper: all five)",
    )
    ks: list[int] = Field(
        default_factory=lambda: list(PAPER_KS),
        min_length=1,
        description="numbers of SAE latents in the normal setting (paper: 1 ... 512)",
    )
    regime_ks: list[int] = Field(
        default_factory=lambda: [16, 128],
        min_length=1,
        description="numbers of SAE latents in the other settings (paper: 16 and 128)",
    )
    quiver_ks: list[int] = Field(
        default_factory=lambda: [16, 128],
        min_length=1,
        description="SAE probes that join best_with_sae (paper: k = 16 and 128)",
    )
    sae_variants: list[SAEVariant] = Field(
        default_factory=lambda: [SAEVariant()],
        min_length=1,
        description="SAE probe variants; the first is the primary one the hard regimes use",
    )
    latent_ranking: Literal["mean", "none"] = Field(
        "mean", description="'mean': normalised mean difference (paper, current); 'none': raw"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where probe solvers run: auto = cuda when available, else cpu"
    )

    @field_validator("ks", "regime_ks", "quiver_ks")
    @classmethod
    def _positive_sorted(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError("every k must be >= 1")
        return sorted(set(ks))

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))

    @field_validator("sae_variants")
    @classmethod
    def _unique_variants(cls, variants: list[SAEVariant]) -> list[SAEVariant]:
        seen = [v.model_dump() for v in variants]
        dup = [v for i, v in enumerate(seen) if v in seen[:i]]
        if dup:
            raise ValueError(f"repeated SAE variant {dup[0]}")
        return variants


class RegimeConfig(_Section):
    """Options of one setting; every key left out takes the paper's value."""

    values: list[float] | None = Field(
        None,
        description=(
            "scarcity: training sizes; imbalance: positive fractions; label_noise: flip ratios "
            "(default: the paper's 20 / 19 / 11 values)"
        ),
    )
    baselines: list[BaselineName] | None = Field(
        None, description="baselines run in this setting (default: probes.baselines)"
    )
    sae_variants: Literal["all", "primary"] | None = Field(
        None,
        description="SAE variants run in this setting (default: all in normal, primary elsewhere)",
    )
    layers: list[int] | None = Field(
        None, description="layers probed in this setting (default: every layer of the run)"
    )


class OODPair(_Section):
    """An out-of-distribution test set paired with a dataset of the run."""

    dataset: str = Field(..., description="name of a dataset of data.datasets (trained on)")
    ood: str = Field(..., description="bundled OOD name (e.g. 87_glue_cola_OOD) or a file path")
    class_map: dict[str, str] | None = Field(
        None, description="OOD class value -> ID class value, when the files' values differ"
    )


class OODConfig(RegimeConfig):
    """The OOD setting: which pairs (default: the bundled OOD sets of the run's datasets)."""

    pairs: list[OODPair] | None = None


class RegimesConfig(_Section):
    """Per-setting options (``settings`` says which settings run)."""

    normal: RegimeConfig = Field(default_factory=RegimeConfig)
    scarcity: RegimeConfig = Field(default_factory=RegimeConfig)
    imbalance: RegimeConfig = Field(default_factory=RegimeConfig)
    label_noise: RegimeConfig = Field(default_factory=RegimeConfig)
    ood: OODConfig = Field(default_factory=OODConfig)

    @model_validator(mode="after")
    def _no_values_for_fixed(self) -> RegimesConfig:
        for name in ("normal", "ood"):
            if getattr(self, name).values is not None:
                raise ValueError(f"'{name}' takes no 'values' (it has a single split per dataset)")
        return self


class RayConfig(_Section):
    """Where the ``ray`` executor runs its tasks."""

    address: str | None = Field(
        None,
        description="a running Ray cluster ('auto', 'ray://head:10001'); null starts a local Ray",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all)")


class _WithSAEs(_Section):
    """A config with a ``saes`` list: sweep entries expanded, ids unique, IHTP dictionaries known."""

    saes: list[SAEConfig]

    @model_validator(mode="before")
    @classmethod
    def _expand_sweeps(cls, data: Any) -> Any:
        """Replace each ``saes`` entry that has a ``sweep`` by one entry per point of it."""
        if isinstance(data, dict) and isinstance(data.get("saes"), list):
            data = {**data, "saes": expand_sae_sweeps(data["saes"])}
        return data

    @model_validator(mode="after")
    def _unique_sae_ids(self) -> _WithSAEs:
        ids = [s.id for s in self.saes]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"SAE ids must be unique; repeated: {dup}")
        by_id = {s.id: s for s in self.saes}
        for s in self.saes:
            if s.ihtp is None:
                continue
            base = by_id.get(s.ihtp.dictionary)
            if base is None or base.ihtp is not None:
                raise ValueError(
                    f"SAE {s.id}: 'ihtp.dictionary' is {s.ihtp.dictionary!r}; expected the id of "
                    f"a trained or loaded SAE of this config, one of "
                    f"{sorted(i for i, b in by_id.items() if b.ihtp is None)}"
                )
        return self


class RunConfig(_WithSAEs):
    """A whole run: model, layers, datasets, SAEs, probes, and who runs the probe units."""

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
    pooling_special_tokens: Literal["exclude", "include"] = Field(
        "exclude",
        description=(
            "mean pooling of activations and of SAE codes: 'exclude' leaves out special tokens "
            "(CLS, SEP, BOS, pad), as SAE training does; 'include' averages them too (a text made "
            "only of special tokens always keeps them)"
        ),
    )
    settings: list[SettingName] = Field(
        default_factory=lambda: ["normal"],
        min_length=1,
        description="normal, scarcity, imbalance, label_noise, ood (the paper's five)",
    )
    regimes: RegimesConfig = Field(default_factory=RegimesConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    saes: list[SAEConfig] = Field(
        default_factory=lambda: [SAEConfig(id="topk", train=SAETrainConfig())]
    )
    probes: ProbeConfig = Field(default_factory=ProbeConfig)
    executor: Literal["local", "serial", "ray"] = Field(
        "local",
        description=(
            "local: a process pool over the cores; serial: in this process; ray: Ray tasks "
            "(pip install 'saelab[ray]')"
        ),
    )
    workers: int | None = Field(
        None, ge=1, description="processes of the local executor (default: the machine's cores)"
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[int]) -> list[int]:
        if any(layer < 0 for layer in layers):
            raise ValueError("layers are block indices >= 0 (blocks.L.hook_resid_post)")
        return sorted(set(layers))

    @field_validator("settings")
    @classmethod
    def _settings_order(cls, settings: list[str]) -> list[str]:
        return [s for s in SETTINGS if s in settings]

    @model_validator(mode="after")
    def _regime_layers(self) -> RunConfig:
        for name in SETTINGS:
            layers = getattr(self.regimes, name).layers
            extra = sorted(set(layers or []) - set(self.layers))
            if extra:
                raise PydanticCustomError(
                    "regime_layers",
                    "key 'regimes.{name}.layers': {extra} not among the run's layers {layers}",
                    {"name": name, "extra": str(extra), "layers": str(self.layers)},
                )
        return self

    def baselines_for(self, setting: str) -> list[str]:
        """Baselines run in ``setting``."""
        own = getattr(self.regimes, setting).baselines
        return list(own) if own is not None else list(self.probes.baselines)

    def layers_for(self, setting: str) -> list[int]:
        """Layers probed in ``setting``."""
        own = getattr(self.regimes, setting).layers
        return sorted(set(own)) if own is not None else list(self.layers)

    def ks_for(self, setting: str) -> list[int]:
        """SAE probe ks of ``setting``: ``probes.ks`` in normal, ``probes.regime_ks`` elsewhere."""
        return list(self.probes.ks if setting == "normal" else self.probes.regime_ks)

    def variants_for(self, setting: str) -> list[SAEVariant]:
        """SAE probe variants of ``setting`` (all in normal, the primary one elsewhere, by default)."""
        which = getattr(self.regimes, setting).sae_variants
        which = which or ("all" if setting == "normal" else "primary")
        return list(self.probes.sae_variants) if which == "all" else [self.probes.sae_variants[0]]


def expand_sae_sweeps(entries: list[Any]) -> list[Any]:
    """``saes`` entries with a ``sweep`` -> one trained SAE per point (others unchanged).

    ``sweep`` is either a mapping ``{field: [values]}`` of training fields, expanded to their
    Cartesian product in key order, or a list of mappings, one point each (for fields that apply
    to one architecture only, such as ``k`` or ``l1_coefficient``). Every point starts from the
    entry's ``train`` section; its id is ``<id>-<value>-<value>...`` (values in key order).

    >>> expand_sae_sweeps([{"id": "s", "train": {"k": 8}, "sweep": {"architecture": ["topk", "batchtopk"]}}])
    [{'id': 's-topk', 'train': {'k': 8, 'architecture': 'topk'}}, {'id': 's-batchtopk', 'train': {'k': 8, 'architecture': 'batchtopk'}}]
    """
    out: list[Any] = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and "sweep" in entry):
            out.append(entry)
            continue
        sweep = entry["sweep"]
        where = f"saes.{i}.sweep"
        if isinstance(sweep, dict):
            for key, values in sweep.items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(
                        f"key '{where}.{key}' has value {values!r}; expected a non-empty list"
                    )
            points = [
                dict(zip(sweep, combo, strict=True)) for combo in itertools.product(*sweep.values())
            ]
        elif isinstance(sweep, list) and sweep and all(isinstance(p, dict) for p in sweep):
            points = sweep
        else:
            raise ConfigError(
                f"key '{where}' has value {sweep!r}; expected a mapping of training fields to "
                "lists of values, or a non-empty list of mappings"
            )
        bad = [k for p in points for k in p if not isinstance(k, str)]
        if bad:
            raise ConfigError(
                f"key '{where}' has field name {bad[0]!r}; expected training field names"
            )
        base = {k: v for k, v in entry.items() if k != "sweep"}
        if not isinstance(base.get("train"), dict):
            raise ConfigError(f"key '{where}': a sweep needs a 'train' section on its SAE entry")
        for point in points:
            suffix = "-".join(_sweep_label(v) for v in point.values())
            out.append(
                {**base, "id": f"{base.get('id')}-{suffix}", "train": {**base["train"], **point}}
            )
    return out


def _sweep_label(value: Any) -> str:
    """A sweep value as an id fragment (``0.001`` -> ``0.001``, ``topk`` -> ``topk``)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "x"


def _format_error(err: ValidationError, source: str) -> str:
    """One line per problem: the key and the offending value, never the whole config."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif not key or isinstance(e.get("input"), dict):
            lines.append(
                e["msg"].removeprefix("Value error, ") + ("" if not key else f" (at '{key}')")
            )
        else:
            value = repr(e.get("input"))
            value = value if len(value) <= 200 else value[:200] + "..."
            lines.append(f"key '{key}': {e['msg']} (got {value})")
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def _fit_regime_layers(data: dict[str, Any], overrides: list[str]) -> None:
    """After ``--set layers=...``, regime layer lists that no longer fit follow the new layers.

    A regime's list keeps the layers still in the run; when none is left it is dropped (the
    regime then probes every layer of the run). Each change is logged. Without a ``layers``
    override, a regime list outside the run's layers stays an error.
    """
    if not any(parse_set_option(o)[0] == ["layers"] for o in overrides):
        return
    layers = data.get("layers")
    regimes = data.get("regimes")
    if not isinstance(layers, list) or not isinstance(regimes, dict):
        return
    try:
        run_layers = {int(x) for x in layers}
    except (TypeError, ValueError):
        return  # validation reports the bad value
    for name, section in regimes.items():
        if not isinstance(section, dict) or not isinstance(section.get("layers"), list):
            continue
        own = section["layers"]
        kept = [x for x in own if x in run_layers]
        if kept == own:
            continue
        if kept:
            section["layers"] = kept
        else:
            del section["layers"]
        logging.getLogger("saelab").info(
            "--set layers=%s: regimes.%s.layers %s -> %s",
            sorted(run_layers),
            name,
            own,
            kept or f"every run layer {sorted(run_layers)}",
        )


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
    _fit_regime_layers(data, overrides or [])
    return validate_config(data, source)


def validate_config(data: dict[str, Any], source: str) -> RunConfig:
    """A ``RunConfig`` from a raw mapping; errors name the key, the value and ``source``."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None


# ----- saelab sae train: SAEs trained on a text corpus, outside a probing run --------------------
class TextFileConfig(_Section):
    """A text file: ``.txt`` (one text per line) or one column of a ``.csv`` / ``.parquet`` file."""

    path: str
    column: str | None = Field(None, description="CSV / Parquet column (default 'prompt')")


_SAEId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]+$")]


class SAETrainRunConfig(_Section):
    """``saelab sae train CONFIG``: one model, one hook, a text corpus, and the SAEs to train."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    hook: str | int = Field(
        "blocks.3.hook_resid_post",
        description="blocks.L.hook_resid_post | hook_mlp_out | hook_attn_out, or a layer number",
    )
    datasets: list[str] = Field(
        default_factory=list, description="bundled dataset names whose texts are used, or 'all'"
    )
    files: list[TextFileConfig] = Field(default_factory=list, description="text files")
    max_rows: int = Field(5000, ge=1, description="rows read from each bundled dataset")
    max_tokens: int | None = Field(
        None, ge=1000, description="activation tokens collected (default: the SAEs' largest)"
    )
    seed: int = Field(0, description="order in which texts are read")
    rows: Literal["all", "train"] = Field(
        "all",
        description=(
            "rows of the bundled datasets used: all, or only their normal-split training rows "
            "(split with 'split_seed'), so their test rows stay held out for evaluation"
        ),
    )
    split_seed: int = Field(42, description="seed of the normal split when rows is 'train'")
    saes: dict[_SAEId, SAETrainConfig] = Field(
        ..., min_length=1, description="SAE id -> its training config"
    )

    @model_validator(mode="after")
    def _check(self) -> SAETrainRunConfig:
        if not self.datasets and not self.files:
            raise ValueError("give texts: 'datasets' (bundled names or 'all') and/or 'files'")
        from saelab.activations import parse_hook

        try:
            parse_hook(self.hook)
        except ConfigError as exc:
            raise ValueError(f"key 'hook': {exc}") from None
        return self


def load_sae_train_config(
    path: str | Path, overrides: list[str] | None = None
) -> SAETrainRunConfig:
    """Read and validate the YAML config of ``saelab sae train``; errors name the key."""
    return _load_yaml_model(SAETrainRunConfig, path, overrides)


def _load_yaml_model(model: type[_M], path: str | Path, overrides: list[str] | None) -> _M:
    """``model`` validated from the YAML mapping in ``path`` with ``--set`` overrides applied;
    errors name the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text("utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must be a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, str(p))) from None


# ----- saelab eval: the SAE evaluation suite ---------------------------------------------------
EvalName = Literal["core", "sparse_probing", "absorption"]
EVALS: tuple[str, ...] = ("core", "sparse_probing", "absorption")
"""The evaluations of ``saelab eval``, in the order they run."""

QUICKSTART_DATASETS = (
    "5_hist_fig_ismale",
    "21_headline_istrump",
    "52_virtue_is",
    "54_cs_tf",
    "66_living-room",
    "87_glue_cola",
    "105_click_bait",
    "114_nyc_borough_Manhattan",
)


class TextSourceConfig(_Section):
    """Texts: the normal-split rows of bundled datasets (by name, or ``all``) and text files."""

    datasets: list[str] = Field(
        default_factory=lambda: list(QUICKSTART_DATASETS),
        description="bundled dataset names (or 'all'); training uses their normal-split training "
        "rows, evaluation their test rows",
    )
    files: list[TextFileConfig] = Field(default_factory=list, description="text files")
    max_rows: int = Field(5000, ge=10, description="rows read from each bundled dataset")
    max_tokens: int | None = Field(None, ge=100, description="cap on non-special tokens")


class CoreEvalConfig(_Section):
    """``core``: reconstruction / sparsity metrics and splicing fidelity on held-out tokens."""

    batch_size: int = Field(4096, ge=16, description="tokens per batch (legacy EV is per batch)")
    dense_threshold: float = Field(0.1, gt=0, le=1, description="firing rate of a dense latent")
    splice: bool = Field(True, description="splice the reconstruction into the forward pass")
    splice_max_texts: int = Field(
        1000, ge=1, description="held-out texts run with the splice (3 forward passes each)"
    )


class SparseProbingEvalConfig(_Section):
    """``sparse_probing``: SAEBench's k-sparse probes and the paper's k sweep (probe engine)."""

    datasets: list[str] = Field(
        default_factory=lambda: list(QUICKSTART_DATASETS),
        description="bundled dataset names (or 'all' for the 113) or CSV / Parquet files",
    )
    ks: list[int] = Field(
        default_factory=lambda: [1, 2, 5], description="SAEBench top-k by mean difference"
    )
    paper_ks: list[int] = Field(
        default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128],
        description="the paper's k sweep, through the probe engine (L1 probes on top-k latents)",
    )
    max_rows: int = Field(5000, ge=10, description="rows read from each dataset")
    max_train: int = Field(1024, ge=4, description="normal-split training rows (paper: 1024)")
    max_test: int | None = Field(
        1000, ge=1, description="cap on test rows (SAEBench: 1000 per task); null for all"
    )

    @field_validator("ks", "paper_ks")
    @classmethod
    def _ks(cls, ks: list[int]) -> list[int]:
        if not ks or any(k < 1 for k in ks):
            raise ValueError("expected a non-empty list of ks >= 1")
        return sorted(set(ks))


class AbsorptionEvalConfig(_Section):
    """``absorption``: SAEBench's first-letter absorption (whole-word tokens only)."""

    seed: int = Field(42, description="seed of the word split")
    min_probe_f1: float = Field(
        0.6,
        gt=0,
        le=1,
        description="a letter counts when the model's own first-letter probe reaches this test F1 "
        "(SAEBench: 0.6); with fewer than 20 such letters the eval is skipped, with the reason",
    )
    max_words_per_letter: int = Field(250, ge=20, description="words drawn per first letter")
    icl_examples: int | None = Field(
        None, ge=0, description="in-context examples per prompt (default: 10 decoders, 0 encoders)"
    )


class ComparisonConfig(_Section):
    """Architecture comparison over the sparse-probing datasets (the paper's section 6)."""

    ks: list[int] | None = Field(None, description="ks compared (default: every paper k)")
    n_boot: int = Field(2000, ge=100, description="paired bootstrap draws")
    alpha: float = Field(0.05, gt=0, lt=1, description="level after the Holm correction")


class EvalConfig(_WithSAEs):
    """``saelab eval CONFIG``: one model, one hook, a list of SAEs (trained here, loaded, derived,
    or a training sweep), and the evaluations to run on each."""

    name: str = Field("sae_eval", pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 42
    cache_dir: str | None = Field(None, description="cache folder (default: $SAELAB_CACHE)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    hook: str | int = Field(
        "blocks.4.hook_resid_post",
        description="blocks.L.hook_resid_post | hook_mlp_out | hook_attn_out, or a layer number",
    )
    saes: list[SAEConfig] = Field(..., min_length=1, description="the SAEs to evaluate")
    train: TextSourceConfig = Field(
        default_factory=lambda: TextSourceConfig(max_tokens=200_000),
        description="texts the SAEs with 'train' learn from (bundled datasets: training rows)",
    )
    heldout: TextSourceConfig = Field(
        default_factory=lambda: TextSourceConfig(max_tokens=100_000),
        description="held-out texts of the core eval (bundled datasets: test rows)",
    )
    evals: list[EvalName] = Field(
        default_factory=lambda: list(EVALS), min_length=1, description="evaluations to run"
    )
    core: CoreEvalConfig = Field(default_factory=CoreEvalConfig)
    sparse_probing: SparseProbingEvalConfig = Field(default_factory=SparseProbingEvalConfig)
    absorption: AbsorptionEvalConfig = Field(default_factory=AbsorptionEvalConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    executor: Literal["local", "serial", "ray"] = Field(
        "local", description="where the probe engine runs its units"
    )
    workers: int | None = Field(None, ge=1, description="processes of the local executor")

    @field_validator("evals")
    @classmethod
    def _evals_order(cls, evals: list[str]) -> list[str]:
        return [e for e in EVALS if e in evals]

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        from saelab.activations import parse_hook

        try:
            parse_hook(self.hook)
        except ConfigError as exc:
            raise ValueError(f"key 'hook': {exc}") from None
        if not self.heldout.datasets and not self.heldout.files:
            raise ValueError("key 'heldout': give 'datasets' and/or 'files'")
        if any(s.train is not None for s in self.saes) and not (
            self.train.datasets or self.train.files
        ):
            raise ValueError("key 'train': SAEs with 'train' need texts ('datasets' / 'files')")
        return self


def load_eval_config(path: str | Path, overrides: list[str] | None = None) -> EvalConfig:
    """Read and validate the YAML config of ``saelab eval``; errors name the file and key."""
    return _load_yaml_model(EvalConfig, path, overrides)


# ----- saelab ception: cycles of classifier fine-tuning with an auxiliary loss from SAE codes ----
CeptionStrategy = Literal["per_class", "per_example", "random", "none"]


class CeptionDataConfig(_Section):
    """The classification dataset and its train / validation / test split."""

    dataset: str = Field(
        "92_glue_sst2",
        description="bundled name or path to a CSV/Parquet file (prompt, target; 2+ classes)",
    )
    max_rows: int = Field(5000, ge=10, description="first rows read from the file")
    train_rows: int = Field(1024, ge=8, description="training rows (classifier, SAE, targets)")
    val_rows: int = Field(256, ge=2, description="validation rows (checkpoint selection only)")
    test_rows: int | None = Field(
        1000, ge=2, description="test rows (every metric); null: all rows left"
    )
    split_seed: int = Field(
        0, ge=0, le=2**32 - 1, description="seed of the stratified split (the same for all seeds)"
    )


class ClassifierConfig(_Section):
    """The classifier: a head on the pooled output of one block, and how it is fine-tuned."""

    layer: int | None = Field(
        None, ge=0, description="block whose output the head reads (default: the last block)"
    )
    pooling: Literal["auto", "last", "mean"] = Field(
        "auto",
        description="auto: the last real token for decoders, the mean over real tokens for "
        "encoders",
    )
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate of the model's blocks")
    head_lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decay (not on biases and norms)")
    warmup_fraction: float = Field(
        0.1, ge=0, lt=1, description="linear warm-up share of the steps, then linear decay to 0"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="gradient-norm clip; null: none")
    batch_size: int = Field(32, ge=1, description="examples per optimiser step")
    grad_accumulation: int = Field(
        1, ge=1, description="micro-batches each optimiser step is split into"
    )
    epochs: int = Field(3, ge=1, description="epochs of the cycle-0 fine-tuning")
    cycle_epochs: int = Field(2, ge=1, description="epochs of each later cycle's retraining")
    train_blocks: int | None = Field(
        2,
        ge=1,
        description="train only the last N blocks up to 'layer' (and the head); null: the whole "
        "model up to 'layer', embeddings included",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute block activations in the backward pass (less memory)"
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the head")
    max_length: int = Field(128, ge=2, description="tokens kept per text (left truncation)")

    @model_validator(mode="after")
    def _accumulation(self) -> ClassifierConfig:
        if self.batch_size % self.grad_accumulation:
            raise ValueError(
                f"key 'grad_accumulation' ({self.grad_accumulation}) must divide 'batch_size' "
                f"({self.batch_size})"
            )
        return self


class CycleConfig(_Section):
    """The SAE-ception cycles: strategies, sharpening, auxiliary loss, repetitions."""

    cycles: int = Field(3, ge=1, description="retraining cycles after cycle 0")
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="one chain per seed"
    )
    strategies: list[CeptionStrategy] = Field(
        default_factory=lambda: ["per_class", "per_example", "random", "none"],
        min_length=1,
        description="per_class, per_example (SAE targets), random, none (controls)",
    )
    sharpen_k: int = Field(10, ge=1, description="latents kept per class / per example")
    lambda_aux: float = Field(0.1, ge=0, description="weight of L_aux = 1 - cos(h - b_dec, t)")
    token_level: bool = Field(
        False,
        description="train each SAE on token activations of the training texts too "
        "(the pooled representations are always included)",
    )
    max_tokens: int = Field(50_000, ge=100, description="cap on token activations added")

    @field_validator("seeds", "strategies")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"entries must be unique, got {values}")
        return values


class CeptionMetricsConfig(_Section):
    """Options of the per-cycle metrics."""

    silhouette_sample: int = Field(5000, ge=10, description="rows the silhouette is computed on")
    probe_max_iter: int = Field(1000, ge=10, description="logistic-regression iterations")
    perplexity_rows: int = Field(
        500, ge=1, description="test texts scored for perplexity (models with an LM head)"
    )


CEPTION_SAE_DEFAULTS: dict[str, Any] = {
    "architecture": "topk",
    "expansion_factor": 4,
    "k": 32,
    "batch_size": 128,
    "epochs": 30.0,
}
"""The SAE trained each cycle unless the config says otherwise: sized for ~1000 pooled rows (a
section that sets some keys keeps these for the others)."""
_TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")


def _ception_sae(section: Any) -> Any:
    """The ``sae`` section with :data:`CEPTION_SAE_DEFAULTS` for every key it leaves out (``k``
    only for the TopK family, ``expansion_factor`` only without ``d_sae``, ``epochs`` only
    without ``steps``)."""
    if section is None:
        section = {}
    if not isinstance(section, dict):
        return section
    out = dict(section)
    arch = out.setdefault("architecture", CEPTION_SAE_DEFAULTS["architecture"])
    out.setdefault("batch_size", CEPTION_SAE_DEFAULTS["batch_size"])
    if out.get("steps") is None:
        out.setdefault("epochs", CEPTION_SAE_DEFAULTS["epochs"])
    if out.get("d_sae") is None:
        out.setdefault("expansion_factor", CEPTION_SAE_DEFAULTS["expansion_factor"])
    if arch in _TOPK_FAMILY:
        out.setdefault("k", CEPTION_SAE_DEFAULTS["k"])
    return out


class CeptionConfig(_Section):
    """``saelab ception [CONFIG]``: SAE-ception on one model and one classification dataset."""

    name: str = Field("ception", pattern=r"^[A-Za-z0-9_.\-]+$")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: CeptionDataConfig = Field(default_factory=CeptionDataConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    sae: SAETrainConfig = Field(
        default_factory=lambda: SAETrainConfig(**_ception_sae(None)),
        description="the SAE trained each cycle (any trainable architecture; keys left out take "
        "CEPTION_SAE_DEFAULTS)",
    )
    cycle: CycleConfig = Field(default_factory=CycleConfig)
    metrics: CeptionMetricsConfig = Field(default_factory=CeptionMetricsConfig)

    @model_validator(mode="before")
    @classmethod
    def _sae_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and "sae" in data:
            data = {**data, "sae": _ception_sae(data["sae"])}
        return data

    @model_validator(mode="after")
    def _check(self) -> CeptionConfig:
        k = self.sae.k
        if self.sae.seed < 0:
            raise ValueError(f"key 'sae.seed' must be >= 0, got {self.sae.seed}")
        if self.model.dtype == "float16":
            raise ValueError(
                "key 'model.dtype': float16 is not supported for fine-tuning (no loss scaling); "
                "use bfloat16 (autocast over float32 weights) or float32"
            )
        if self.model.max_length is not None:
            raise ValueError(
                "key 'model.max_length' is not used by saelab ception; set "
                "'classifier.max_length' (tokens kept per text)"
            )
        if self.sae.architecture in _TOPK_FAMILY and k and self.cycle.sharpen_k > k:
            raise ValueError(
                f"key 'cycle.sharpen_k' ({self.cycle.sharpen_k}) must be <= the SAE's k "
                f"({k}): a sharpened code keeps at most the latents the SAE fires"
            )
        return self


def load_ception_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> CeptionConfig:
    """The ``saelab ception`` config: defaults (MiniLM on SST-2) when ``path`` is None, else the
    YAML file; ``--set`` overrides applied; errors name the file and the key."""
    if path is not None:
        return _load_yaml_model(CeptionConfig, path, overrides)
    data = apply_overrides({}, overrides or [])
    try:
        return CeptionConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, "the ception defaults with --set overrides")) from None
