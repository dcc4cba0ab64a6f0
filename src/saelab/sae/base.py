"""SAE config, base module and the architecture registry.

Semantics follow SAELens 6.x inference SAEs (``sae_lens/saes/sae.py``), so that a folder written by
SAELens loads here and one written here loads in SAELens with identical outputs:

    x' = norm_in(x) - b_dec * [apply_b_dec_to_input]          x: [..., d_in]
    f  = activation(x' W_enc + b_enc)                         f: [..., d_sae]  (per architecture)
    x^ = norm_out(f W_dec + b_dec)                            x^: [..., d_in]

``norm_in`` / ``norm_out`` implement SAELens' run-time ``normalize_activations`` modes that need no
stored statistics: ``none``, ``layer_norm`` and ``constant_norm_rescale``.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from saelab.errors import SAEFileError

log = logging.getLogger(__name__)

#: The SAELens release whose v6 on-disk format this module writes (``metadata.sae_lens_version``).
#: SAELens treats a config without a version >= 6.0 as pre-6.0 and re-converts it, so one is always
#: written.
SAELENS_FORMAT_VERSION = "6.54.12"

#: ``dtype`` strings accepted in ``cfg.json`` (SAELens ``constants.DTYPE_MAP``), canonical form.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

#: ``normalize_activations`` values applied at inference time without stored statistics.
SUPPORTED_NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")
#: ``reshape_activations`` values; ``hook_z`` SAEs take the flattened ``[..., n_heads * d_head]``.
SUPPORTED_RESHAPES = ("none", "hook_z")

#: Top-level keys of a v6 ``cfg.json`` shared by every architecture (``sae_lens.saes.sae.SAEConfig``).
CORE_KEYS = (
    "d_in",
    "d_sae",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "architecture",
    "metadata",
)

# Pre-6.0 SAELens key names and their v6 names (``handle_pre_6_0_config``).
_PRE6_RENAMES = {
    "hook_point": "hook_name",
    "hook_point_head_index": "hook_head_index",
    "hook_point_layer": "hook_layer",
    "activation_fn_str": "activation_fn",
}

_LAYER_NORM_EPS = 1e-5  # SAELens run_time_activation_ln_in


class ArchField(NamedTuple):
    """One architecture-specific config field: accepted Python type and default (``REQUIRED``)."""

    kind: type
    default: Any


REQUIRED = object()


def canonical_dtype(value: Any, source: str = "SAE config", key: str = "dtype") -> str:
    """``"torch.float32"`` / ``torch.float32`` / ``"float32"`` -> ``"float32"``; else SAEFileError."""
    if isinstance(value, torch.dtype):
        for name, dt in DTYPES.items():
            if dt == value:
                return name
    elif isinstance(value, str):
        name = value.removeprefix("torch.")
        if name in DTYPES:
            return name
    raise SAEFileError(
        f"{source}: key '{key}' has value {value!r}; expected one of {sorted(DTYPES)}"
    )


@dataclass
class SAEConfig:
    """Inference config of one SAE, mirroring the SAELens v6 ``cfg.json``.

    Attributes:
        d_in: width of the activations the SAE reads.
        d_sae: number of latents.
        architecture: registry name (``standard``, ``topk``, ``jumprelu``, ``gated``, ...).
        dtype: parameter dtype name (``float32``, ``float64``, ``float16``, ``bfloat16``).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding.
        normalize_activations: ``none``, ``layer_norm`` or ``constant_norm_rescale``.
        reshape_activations: ``none`` or ``hook_z`` (kept for round trips; inputs are flat here).
        arch: architecture fields stored at the top level of ``cfg.json`` (e.g. ``k``,
            ``rescale_acts_by_decoder_norm`` for ``topk``).
        metadata: the nested ``metadata`` dict (``hook_name``, ``model_name``, ...), kept verbatim.
    """

    d_in: int
    d_sae: int
    architecture: str
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    arch: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_saelens_dict(self) -> dict[str, Any]:
        """The v6 ``cfg.json`` dict: flat core + architecture keys and a nested ``metadata``."""
        metadata = copy.deepcopy(self.metadata)
        if _major_version(metadata.get("sae_lens_version")) < 6:
            if metadata.get("sae_lens_version") is not None:
                metadata["converted_from_sae_lens_version"] = metadata["sae_lens_version"]
            metadata["sae_lens_version"] = SAELENS_FORMAT_VERSION
        return {
            "d_in": int(self.d_in),
            "d_sae": int(self.d_sae),
            "dtype": self.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": bool(self.apply_b_dec_to_input),
            "normalize_activations": self.normalize_activations,
            "reshape_activations": self.reshape_activations,
            "architecture": self.architecture,
            **copy.deepcopy(self.arch),
            "metadata": metadata,
        }

    @classmethod
    def from_saelens_dict(cls, d: Any, source: str = "cfg.json") -> SAEConfig:
        """Parse a SAELens ``cfg.json`` dict (v6, or pre-6.0 converted as SAELens does).

        Unknown top-level keys (training-only fields that SAELens' ``save_model`` writes, such as
        ``l1_coefficient``) are moved into ``metadata``. Bad or unsupported values raise
        :class:`SAEFileError` naming ``source`` and the key.
        """
        if not isinstance(d, dict):
            raise SAEFileError(f"{source}: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        metadata = d.pop("metadata", None)
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise SAEFileError(
                f"{source}: key 'metadata' must be an object, got {type(metadata).__name__}"
            )
        metadata = copy.deepcopy(metadata)
        version = d.get("sae_lens_version", metadata.get("sae_lens_version"))
        if _major_version(version) < 6:
            d = _convert_pre6(d, source)
        for key in ("d_in", "d_sae", "architecture"):
            if key not in d:
                raise SAEFileError(f"{source}: missing key '{key}'")
        architecture = d.pop("architecture")
        if not isinstance(architecture, str):
            raise SAEFileError(
                f"{source}: key 'architecture' must be a string, got {architecture!r}"
            )
        try:
            sae_cls = sae_class(architecture)
        except SAEFileError as exc:
            raise SAEFileError(f"{source}: key 'architecture': {exc}") from None
        core: dict[str, Any] = {}
        for key in CORE_KEYS:
            if key in d and key not in ("architecture", "metadata", "device"):
                core[key] = d.pop(key)
        d.pop("device", None)
        arch = {name: d.pop(name) for name in list(d) if name in sae_cls.arch_fields}
        for name, value in d.items():  # training-only or legacy keys: keep them as metadata
            metadata.setdefault(name, value)
        cfg = cls(architecture=architecture, arch=arch, metadata=metadata, **core)
        return check_config(cfg, source)


def _major_version(version: Any) -> int:
    """Major version number of a SAELens version string; 0 when absent or unparseable."""
    if not isinstance(version, str):
        return 0
    head = version.strip().lstrip("v").split(".")[0]
    return int(head) if head.isdigit() else 0


def _convert_pre6(d: dict[str, Any], source: str) -> dict[str, Any]:
    """Pre-6.0 flat config -> v6 layout, as SAELens ``handle_pre_6_0_config`` does.

    Renames ``hook_point`` -> ``hook_name`` (and friends), maps ``activation_fn(_str)="topk"`` with
    ``activation_fn_kwargs={"k": ...}`` to ``architecture="topk"``, boolean
    ``normalize_activations`` to ``none`` / ``expected_average_only_in``. Other keys stay for
    ``from_saelens_dict`` to sort into core, architecture and metadata.
    """
    out = {_PRE6_RENAMES.get(k, k): v for k, v in d.items()}
    out.setdefault("architecture", "standard")
    act = out.pop("activation_fn", None)
    kwargs = out.pop("activation_fn_kwargs", None) or {}
    if not isinstance(kwargs, dict):
        raise SAEFileError(
            f"{source}: key 'activation_fn_kwargs' must be an object, got {kwargs!r}"
        )
    if act == "topk":
        if "k" not in kwargs:
            raise SAEFileError(
                f"{source}: key 'activation_fn_kwargs' needs 'k' for activation_fn 'topk'"
            )
        if out["architecture"] not in ("standard", "topk"):
            raise SAEFileError(
                f"{source}: key 'activation_fn' is 'topk' but architecture is "
                f"{out['architecture']!r}"
            )
        out["architecture"] = "topk"
        out["k"] = kwargs["k"]
    elif act not in (None, "relu"):
        raise SAEFileError(
            f"{source}: key 'activation_fn' has value {act!r}; supported: 'relu', 'topk'"
        )
    elif kwargs:
        out["activation_fn_kwargs"] = kwargs  # kept as metadata
    norm = out.get("normalize_activations")
    if isinstance(norm, bool):
        out["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        out["normalize_activations"] = "none"
    return out


def check_config(cfg: SAEConfig, source: str = "SAE config") -> SAEConfig:
    """Validate ``cfg`` against its architecture; return a copy with arch defaults filled in.

    Raises:
        SAEFileError: naming ``source``, the key and what was expected.
    """
    sae_cls = sae_class(cfg.architecture)
    for key in ("d_in", "d_sae"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SAEFileError(f"{source}: key '{key}' must be a positive integer, got {value!r}")
    dtype = canonical_dtype(cfg.dtype, source)
    if not isinstance(cfg.apply_b_dec_to_input, bool):
        raise SAEFileError(
            f"{source}: key 'apply_b_dec_to_input' must be true or false, "
            f"got {cfg.apply_b_dec_to_input!r}"
        )
    if cfg.normalize_activations not in SUPPORTED_NORMALIZATIONS:
        hint = ""
        if cfg.normalize_activations == "expected_average_only_in":
            hint = (
                " (its norm scaling factor is not stored in the SAE folder; fold it into the "
                "weights, e.g. W_enc*s, W_dec/s, b_dec/s, and set 'none')"
            )
        raise SAEFileError(
            f"{source}: key 'normalize_activations' has value {cfg.normalize_activations!r}; "
            f"supported at inference: {list(SUPPORTED_NORMALIZATIONS)}{hint}"
        )
    if cfg.reshape_activations not in SUPPORTED_RESHAPES:
        raise SAEFileError(
            f"{source}: key 'reshape_activations' has value {cfg.reshape_activations!r}; "
            f"supported: {list(SUPPORTED_RESHAPES)}"
        )
    if not isinstance(cfg.metadata, dict):
        raise SAEFileError(f"{source}: key 'metadata' must be a dict")
    arch = dict(cfg.arch)
    unknown = sorted(set(arch) - set(sae_cls.arch_fields))
    if unknown:
        raise SAEFileError(
            f"{source}: unknown key(s) {unknown} for architecture {cfg.architecture!r}; "
            f"expected {sorted(sae_cls.arch_fields)}"
        )
    for name, spec in sae_cls.arch_fields.items():
        if name not in arch:
            if spec.default is REQUIRED:
                raise SAEFileError(
                    f"{source}: missing key '{name}' (required by architecture "
                    f"{cfg.architecture!r})"
                )
            arch[name] = copy.deepcopy(spec.default)
        value = arch[name]
        ok = isinstance(value, spec.kind) and not (spec.kind is int and isinstance(value, bool))
        if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise SAEFileError(
                f"{source}: key '{name}' must be {spec.kind.__name__}, got {value!r}"
            )
    out = SAEConfig(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        architecture=cfg.architecture,
        dtype=dtype,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        normalize_activations=cfg.normalize_activations,
        reshape_activations=cfg.reshape_activations,
        arch=arch,
        metadata=copy.deepcopy(cfg.metadata),
    )
    sae_cls.check_arch(out, source)
    return out


NormState = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None


class SAE(nn.Module):
    """Base class of inference SAEs (SAELens v6 semantics, see module docstring).

    Subclasses set ``arch_fields`` and implement :meth:`encode_pre` (codes from the pre-processed
    input ``x'``); they may override :meth:`param_shapes` and :meth:`decode_raw`. Parameters are
    named exactly as in SAELens' ``sae_weights.safetensors``.

    Parameters (default layout):
        W_enc ``[d_in, d_sae]``, b_enc ``[d_sae]``, W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``.
    """

    architecture: ClassVar[str] = ""
    arch_fields: ClassVar[dict[str, ArchField]] = {}
    #: True when a token's code depends on the other tokens of its text (use :meth:`encode_texts`).
    sequence_level: ClassVar[bool] = False
    #: True when codes can be negative (pursuit encoders); False for ReLU-style codes.
    signed_codes: ClassVar[bool] = False

    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter

    def __init__(
        self, cfg: SAEConfig, device: str | torch.device | None = None, seed: int = 0
    ) -> None:
        """Build an SAE with random weights from ``seed`` (no weights allocated on ``meta``).

        Random init: decoder rows uniform on the unit sphere, ``W_enc = W_dec^T``, zero biases and
        zero extra parameters (as SAELens, up to its Kaiming scale).
        """
        super().__init__()
        if cfg.architecture != self.architecture:
            raise SAEFileError(
                f"{type(self).__name__} is architecture {self.architecture!r}, "
                f"config says {cfg.architecture!r}"
            )
        self._cfg = check_config(cfg)
        dtype = DTYPES[self._cfg.dtype]
        for name, shape in self.param_shapes(self._cfg).items():
            data = torch.zeros(shape, dtype=dtype, device=device)
            setattr(self, name, nn.Parameter(data))
        if self.W_dec.device.type != "meta":
            self.reset_parameters(seed)

    # ----- description -------------------------------------------------------------------------
    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the tensors in ``sae_weights.safetensors`` for ``cfg``."""
        return {
            "W_enc": (cfg.d_in, cfg.d_sae),
            "b_enc": (cfg.d_sae,),
            "W_dec": (cfg.d_sae, cfg.d_in),
            "b_dec": (cfg.d_in,),
        }

    @classmethod
    def check_arch(cls, cfg: SAEConfig, source: str) -> None:
        """Extra value checks on architecture fields; raise SAEFileError naming ``source``."""

    @classmethod
    def convert_state_dict(cls, state: dict[str, torch.Tensor], source: str) -> None:
        """Rename or convert legacy tensors in place before validation (e.g. ``log_threshold``)."""

    @property
    def cfg(self) -> SAEConfig:
        return self._cfg

    @property
    def d_in(self) -> int:
        return self._cfg.d_in

    @property
    def d_sae(self) -> int:
        return self._cfg.d_sae

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    def extra_repr(self) -> str:
        return (
            f"architecture={self.architecture!r}, d_in={self.d_in}, d_sae={self.d_sae}, "
            f"arch={self._cfg.arch}"
        )

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Random init from ``seed``: unit-norm random decoder rows, ``W_enc = W_dec^T``, zeros."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        w = torch.randn(self.d_sae, self.d_in, generator=gen, dtype=torch.float32)
        w /= w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        for name, p in self.named_parameters():
            if name == "W_dec":
                p.copy_(w)
            elif name == "W_enc":
                p.copy_(w.T)
            else:
                p.zero_()

    # ----- forward ------------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """``x' = norm_in(x) - b_dec * [apply_b_dec_to_input]``; also returns the norm state.

        ``layer_norm`` (SAELens ``run_time_activation_ln_in``): ``(x - mean) / (std + 1e-5)`` with
        the unbiased std over the last dim; ``constant_norm_rescale``: ``x * sqrt(d_in) / ||x||``.

        Args:
            x: ``[..., d_in]``.
        """
        x = x.to(self.dtype)
        state: NormState = None
        mode = self._cfg.normalize_activations
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            x = x / (std + _LAYER_NORM_EPS)
            state = (mu, std)
        elif mode == "constant_norm_rescale":
            coeff = math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True)
            x = x * coeff
            state = coeff
        if self._cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x, state

    def postprocess(self, x_hat: torch.Tensor, state: NormState) -> torch.Tensor:
        """Undo ``norm_in`` on a reconstruction (``norm_out``); identity when ``state`` is None."""
        mode = self._cfg.normalize_activations
        if state is None or mode == "none":
            return x_hat
        if mode == "layer_norm":
            mu, std = state  # type: ignore[misc]
            return x_hat * std + mu
        return x_hat / state  # constant_norm_rescale

    def encode_pre(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., d_sae]`` from the pre-processed input ``x'`` ``[..., d_in]``."""
        raise NotImplementedError

    def decode_raw(self, f: torch.Tensor) -> torch.Tensor:
        """``f W_dec + b_dec`` before ``norm_out``. f: ``[..., d_sae]`` -> ``[..., d_in]``."""
        return f @ self.W_dec + self.b_dec

    def encode_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """Codes ``[..., d_sae]`` and the normalisation state that :meth:`decode` needs."""
        sae_in, state = self.preprocess(x)
        return self.encode_pre(sae_in), state

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse codes. x: ``[..., d_in]`` -> ``[..., d_sae]`` (dense tensor, mostly zeros)."""
        return self.encode_with_state(x)[0]

    def encode_texts(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Codes of the tokens of several texts; text i is ``x[offsets[i]:offsets[i+1]]``.

        Same as :meth:`encode` unless ``sequence_level`` (the codes of a token may depend on the
        other tokens of its text, as in IHTP). x: ``[T, d_in]``, offsets: ``[n+1]`` int64 ->
        ``[T, d_sae]``.
        """
        return self.encode(x)

    def decode(self, f: torch.Tensor, norm_state: NormState = None) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` from codes ``[..., d_sae]``.

        With ``layer_norm`` / ``constant_norm_rescale`` the output is in the normalised space unless
        ``norm_state`` (from :meth:`encode_with_state`) is given; :meth:`forward` passes it.
        """
        return self.postprocess(self.decode_raw(f), norm_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``x^`` ``[..., d_in]`` of ``x`` ``[..., d_in]``."""
        f, state = self.encode_with_state(x)
        return self.decode(f, state)


class TiedSAE(SAE):
    """Base of SAEs whose encoder reads the decoder itself (pursuit encoders: matching pursuit,
    MP-SAE, IHTP); not registered.

    Parameters: W_dec ``[d_sae, d_in]``, b_dec ``[d_in]``; ``W_enc`` is the read-only view
    ``W_dec^T`` ``[d_in, d_sae]``. Decoding (SAELens ``MatchingPursuitSAE.decode``):

        x^ = norm_out(f W_dec + b_dec * [apply_b_dec_to_input])

    ``b_dec`` enters the reconstruction only when it was subtracted from the input, since the tied
    encoder never sees it otherwise.
    """

    @classmethod
    def param_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        return {"W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}

    @property
    def W_enc(self) -> torch.Tensor:  # type: ignore[override]
        """The tied encoder ``W_dec^T`` ``[d_in, d_sae]`` (a view; not a stored tensor)."""
        return self.W_dec.T

    def decode_raw(self, f: torch.Tensor) -> torch.Tensor:
        """``f W_dec + b_dec * [apply_b_dec_to_input]``. f: ``[..., d_sae]`` -> ``[..., d_in]``."""
        out = f @ self.W_dec
        if self.cfg.apply_b_dec_to_input:
            out = out + self.b_dec
        return out


def check_k_range(cfg: SAEConfig, source: str) -> None:
    """Raise SAEFileError unless the architecture field ``k`` is in ``1..d_sae``."""
    k = cfg.arch["k"]
    if not 1 <= k <= cfg.d_sae:
        raise SAEFileError(f"{source}: key 'k' must be in 1..d_sae={cfg.d_sae}, got {k}")


# ----- registry ---------------------------------------------------------------------------------
_REGISTRY: dict[str, type[SAE]] = {}

T = TypeVar("T", bound=type[SAE])


def register_sae(architecture: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`SAE` subclass under its SAELens ``architecture`` name."""

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, SAE)):
            raise TypeError(f"register_sae({architecture!r}) needs an SAE subclass, got {cls!r}")
        if architecture in _REGISTRY and _REGISTRY[architecture] is not cls:
            raise ValueError(
                f"SAE architecture {architecture!r} is already registered to "
                f"{_REGISTRY[architecture].__name__}"
            )
        cls.architecture = architecture
        _REGISTRY[architecture] = cls
        return cls

    return deco


def known_architectures() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def sae_class(architecture: str) -> type[SAE]:
    """The class registered under ``architecture``; SAEFileError listing the known names."""
    try:
        return _REGISTRY[architecture]
    except (KeyError, TypeError):
        raise SAEFileError(
            f"unknown SAE architecture {architecture!r}; known: {known_architectures()}"
        ) from None


def build_sae(cfg: SAEConfig, device: str | torch.device | None = None, seed: int = 0) -> SAE:
    """Instantiate the registered class for ``cfg.architecture`` (random weights from ``seed``)."""
    return sae_class(cfg.architecture)(cfg, device=device, seed=seed)
