"""The one training config of every trainable SAE architecture (also ``saes[].train`` of a run).

Common fields apply to every architecture; each family field applies to the architectures listed
in :data:`FAMILY_FIELDS`, and giving it for another architecture is an error naming the key. Family
fields left out take the family's default (:data:`FAMILY_DEFAULTS`), so ``model_dump()`` shows
the values used and ``None`` for the fields that do not apply.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from saelab.errors import ConfigError

ARCHITECTURES = (
    "standard",
    "topk",
    "batchtopk",
    "jumprelu",
    "gated",
    "matryoshka_batchtopk",
    "mp_sae",
)
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")

#: Family field -> the architectures it applies to.
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "k": (*TOPK_FAMILY, "mp_sae"),
    "auxk_coefficient": TOPK_FAMILY,
    "k_aux": TOPK_FAMILY,
    "widths": ("matryoshka_batchtopk",),
    "l1_coefficient": ("standard", "gated"),
    "l1_warmup_steps": ("standard", "gated"),
    "l0_coefficient": ("jumprelu",),
    "l0_warmup_steps": ("jumprelu",),
    "bandwidth": ("jumprelu",),
    "threshold_init": ("jumprelu",),
    "target_l0": ("jumprelu",),
}

#: Defaults of family fields, per architecture where they differ. Fields not listed here default
#: to None and are resolved at training time (they depend on d_in, d_sae or the number of steps).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    # Gao et al. 2024 (arXiv 2406.04093) §A.2: AuxK weight 1/32.
    "k": dict.fromkeys(FAMILY_FIELDS["k"], 32),
    "auxk_coefficient": dict.fromkeys(TOPK_FAMILY, 1 / 32),
    # standard: Anthropic "Circuits Updates - April 2024" (lambda ~5, inputs scaled so that
    # E||x|| = sqrt(d_in), loss sum_d (x - x^)^2 + lambda sum_i f_i ||W_dec,i||). gated: same scale
    # (its L1 acts on ReLU(pi_gate) with unit-norm decoder rows). Starting points: tune per model.
    "l1_coefficient": {"standard": 5.0, "gated": 5.0},
    # SAELens 6.54 JumpReLUTrainingSAEConfig: L0 weight 1, bandwidth 0.05, initial threshold 0.01
    # (dictionary_learning trainers/jumprelu.py uses 0.001 for both, on the same E||x||^2 = d_in
    # scale, with ~1e5 steps; with few thousand steps its threshold barely moves).
    "l0_coefficient": {"jumprelu": 1.0},
    "bandwidth": {"jumprelu": 0.05},
    "threshold_init": {"jumprelu": 0.01},
}

#: Learning rate by architecture when ``lr`` is None: ``None`` means Gao et al.'s scaling
#: ``2e-4 / sqrt(d_sae / 2^14)`` (dictionary_learning TopKTrainer / BatchTopK / Matryoshka).
DEFAULT_LR: dict[str, float | None] = {
    "topk": None,
    "batchtopk": None,
    "matryoshka_batchtopk": None,
    "mp_sae": None,
    "standard": 5e-5,  # Anthropic April 2024 update
    "gated": 5e-5,  # dictionary_learning trainers/gdm.py
    "jumprelu": 7e-5,  # dictionary_learning trainers/jumprelu.py
}


class SAETrainConfig(BaseModel):
    """How to train one SAE: architecture, width, optimiser, schedule, evaluation, checkpoints."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    architecture: Literal[ARCHITECTURES] = Field(  # type: ignore[valid-type]
        "topk",
        description=(
            "standard, topk, batchtopk, jumprelu, gated, matryoshka_batchtopk, mp_sae "
            "(batchtopk and matryoshka_batchtopk are saved as jumprelu)"
        ),
    )
    expansion_factor: int | None = Field(
        None, ge=1, description="d_sae = expansion_factor * d_in (default 8 unless d_sae is given)"
    )
    d_sae: int | None = Field(None, ge=1, description="number of latents (instead of expansion)")
    lr: float | None = Field(
        None,
        gt=0,
        description="Adam learning rate; default per architecture (topk family: 2e-4/sqrt(d_sae/2^14))",
    )
    batch_size: int = Field(4096, ge=16, description="tokens per step")
    epochs: float = Field(4.0, gt=0, description="passes over the training tokens")
    steps: int | None = Field(None, ge=1, description="optimiser steps (instead of epochs)")
    max_tokens: int = Field(
        400_000, ge=1000, description="cap on activation tokens (training + held-out), sampled"
    )
    lr_warmup_steps: int | None = Field(
        None, ge=0, description="linear LR warm-up from 0 (default 2% of the steps)"
    )
    lr_decay_steps: int | None = Field(
        None, ge=0, description="linear LR decay to 0 over the last steps (default 20%)"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="gradient-norm clip; null: none")
    normalize_input: bool = Field(
        True, description="train on s*x with E||s x||^2 = d_in, fold s into the saved weights"
    )
    dead_window_tokens: int | None = Field(
        None,
        ge=1,
        description="a latent is dead after this many tokens without firing "
        "(default min(10M, training tokens))",
    )
    heldout_fraction: float = Field(
        0.05, ge=0, lt=0.5, description="fraction of tokens held out for evaluation, never trained"
    )
    eval_tokens: int = Field(16384, ge=1, description="cap on held-out tokens")
    eval_every: int | None = Field(
        None, ge=1, description="held-out evaluation every N steps (default: 10 per run)"
    )
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        description="checkpoint every N steps (default: 10 per run) when training into a folder",
    )
    seed: int = 0
    # ----- family fields (FAMILY_FIELDS says which architectures take each) -----------------------
    k: int | None = Field(
        None, ge=1, description="active latents per token (topk family; mp_sae: pursuit steps)"
    )
    auxk_coefficient: float | None = Field(None, ge=0, description="AuxK weight (Gao: 1/32)")
    k_aux: int | None = Field(None, ge=1, description="latents AuxK uses (default d_in/2)")
    widths: list[int] | None = Field(
        None,
        description="matryoshka prefixes, strictly increasing, ending at d_sae "
        "(default d_sae/16, d_sae/4, d_sae)",
    )
    l1_coefficient: float | None = Field(None, ge=0, description="L1 weight (standard, gated)")
    l1_warmup_steps: int | None = Field(
        None, ge=0, description="linear L1 warm-up from 0 (default 5% of the steps)"
    )
    l0_coefficient: float | None = Field(None, ge=0, description="jumprelu L0 weight")
    l0_warmup_steps: int | None = Field(
        None, ge=0, description="linear L0 warm-up from 0 (default 5% of the steps)"
    )
    bandwidth: float | None = Field(None, gt=0, description="jumprelu STE kernel width")
    threshold_init: float | None = Field(None, ge=0, description="jumprelu initial threshold")
    target_l0: float | None = Field(
        None,
        gt=0,
        description="jumprelu: penalise (L0/target - 1)^2 instead of L0 (dictionary_learning)",
    )

    def __init__(self, **data: Any) -> None:
        """Validate; a bad key or value raises :class:`TrainConfigError` naming it (also inside a
        run config, whose error then says where: ``(at 'saes.0.train')``)."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TrainConfigError(format_errors(exc, "SAE training config")) from None

    @model_validator(mode="before")
    @classmethod
    def _family_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        arch = data.get("architecture", "topk")
        if arch not in ARCHITECTURES:
            return data  # the Literal check names it
        for key, archs in FAMILY_FIELDS.items():
            if data.get(key) is not None and arch not in archs:
                raise PydanticCustomError(
                    "family_field",
                    "key '{key}' does not apply to architecture '{arch}' (it is a setting of: "
                    "{archs})",
                    {"key": key, "arch": arch, "archs": ", ".join(archs)},
                )
        for key, defaults in FAMILY_DEFAULTS.items():
            if data.get(key) is None and arch in defaults:
                data[key] = defaults[arch]
        if data.get("d_sae") is not None and data.get("expansion_factor") is not None:
            raise PydanticCustomError(
                "d_sae_and_expansion",
                "give one of key 'd_sae' and key 'expansion_factor', not both",
            )
        if data.get("d_sae") is None and data.get("expansion_factor") is None:
            data["expansion_factor"] = 8
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SAETrainConfig:
        if self.widths is not None:
            w = self.widths
            if not w or any(a >= b for a, b in itertools.pairwise(w)) or w[0] < 1:
                raise PydanticCustomError(
                    "widths",
                    "key 'widths' must be strictly increasing positive integers, got {w}",
                    {"w": str(w)},
                )
            if self.d_sae is not None and w[-1] != self.d_sae:
                raise PydanticCustomError(
                    "widths",
                    "key 'widths' must end at d_sae={d}, got {w}",
                    {"d": self.d_sae, "w": str(w)},
                )
        if self.k is not None and self.d_sae is not None and self.k > self.d_sae:
            raise PydanticCustomError(
                "k", "key 'k' ({k}) must be <= d_sae ({d})", {"k": self.k, "d": self.d_sae}
            )
        if self.steps is not None:
            for key in ("lr_warmup_steps", "lr_decay_steps"):
                if (getattr(self, key) or 0) > self.steps:
                    raise PydanticCustomError(
                        "schedule",
                        "key '{key}' ({v}) must be <= steps ({s})",
                        {"key": key, "v": getattr(self, key), "s": self.steps},
                    )
        return self

    # ----- values resolved against the data --------------------------------------------------------
    def resolved_d_sae(self, d_in: int) -> int:
        """``d_sae``, or ``expansion_factor * d_in``."""
        return self.d_sae if self.d_sae is not None else (self.expansion_factor or 8) * d_in

    def resolved_lr(self, d_sae: int) -> float:
        """``lr``, else the architecture's default; topk family: ``2e-4 / sqrt(d_sae / 2^14)``
        (dictionary_learning ``TopKTrainer``, fitted to Gao et al. 2024's scaling)."""
        if self.lr is not None:
            return self.lr
        base = DEFAULT_LR[self.architecture]
        return base if base is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def resolved_steps(self, n_train: int) -> int:
        """``steps``, else ``ceil(epochs * n_train / batch)`` with the batch capped at ``n_train``."""
        if self.steps is not None:
            return self.steps
        batch = min(self.batch_size, n_train)
        return max(1, math.ceil(self.epochs * n_train / batch))

    def schedule(self, total: int) -> dict[str, int]:
        """Warm-up / decay lengths in steps for a run of ``total`` steps (defaults filled in)."""

        def pick(value: int | None, frac: float) -> int:
            return min(total, value if value is not None else int(frac * total))

        warmup = pick(self.lr_warmup_steps, 0.02)
        decay = min(pick(self.lr_decay_steps, 0.2), total - warmup)
        sparsity = (
            self.l1_warmup_steps if self.l1_warmup_steps is not None else self.l0_warmup_steps
        )
        return {
            "lr_warmup_steps": warmup,
            "lr_decay_steps": decay,
            "sparsity_warmup_steps": pick(sparsity, 0.05),
            "eval_every": self.eval_every or max(1, total // 10),
            "checkpoint_every": self.checkpoint_every or max(1, total // 10),
        }


def lr_factor(step: int, total: int, warmup: int, decay: int) -> float:
    """LR multiplier at 0-based ``step``: linear warm-up ``(step + 1) / warmup`` over the first
    ``warmup`` steps, 1, then linear decay ``(total - step) / decay`` over the last ``decay`` steps
    (reaching ``1 / decay`` at the last step; dictionary_learning ``get_lr_schedule`` shape)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if decay and step >= total - decay:
        return max(0.0, (total - step) / decay)
    return 1.0


def coefficient_factor(step: int, warmup: int) -> float:
    """Sparsity-coefficient multiplier at 0-based ``step``: ``min(1, step / warmup)`` (0 at the
    first step; dictionary_learning ``get_sparsity_warmup_fn``, SAELens ``CoefficientScheduler``)."""
    return min(1.0, step / warmup) if warmup else 1.0


class TrainConfigError(ConfigError, ValueError):
    """A bad training-config key or value; also a ``ValueError``, so that pydantic reports it at
    its place inside an enclosing config."""


def format_errors(err: ValidationError, source: str) -> str:
    """The problems of ``err``, each naming its key, on one line (as ``saelab.config`` does)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        elif not key:
            lines.append(msg)
        else:
            lines.append(f"key '{key}': {msg} (got {e.get('input')!r:.200})")
    return f"{source}: " + "; ".join(lines)


def as_train_config(cfg: SAETrainConfig | dict[str, Any] | None) -> SAETrainConfig:
    """A :class:`SAETrainConfig` from itself, a mapping (validated) or None (defaults)."""
    if cfg is None:
        return SAETrainConfig()
    if isinstance(cfg, SAETrainConfig):
        return cfg
    if isinstance(cfg, dict):
        return SAETrainConfig(**cfg)
    raise ConfigError(f"SAE training config: expected a mapping, got {type(cfg).__name__}")
