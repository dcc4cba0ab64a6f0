"""Disk cache of extracted activations: one verified safetensors file per (texts, model, hook).

Layout: ``root/activations/<model slug>/<key>.safetensors`` where ``key = stable_hash`` of every
input that decides the file's content (format version, model id, layer, hook name (so its kind:
resid_post, attn_out, mlp_out), pooling, whether mean pooling keeps special tokens, resolved
max_length, truncation side, keep_tokens, compute dtype, hash of the texts, torch and transformers
versions). A file's modification time is set when it is read, so it says when it was last used
(``saelab cache``). The header metadata
holds those key parts as JSON and a digest of the tensor bytes; a file that fails any check is
logged, recomputed and rewritten (docs/DESIGN.md, "Conventions").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from saelab.activations.extract import (
    Pooling,
    TruncationSide,
    extract,
    resolve_hooks,
    resolve_max_length,
)
from saelab.activations.hooks import HookKey, hook_key, hook_name
from saelab.activations.model import ModelHandle
from saelab.activations.types import LayerActivations
from saelab.errors import ConfigError
from saelab.io import atomic_path, hash_bytes, hash_texts, stable_hash

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: hook kinds; mean pooling leaves out special tokens by default
_META_KEY = "saelab.key_parts"
_META_DIGEST = "saelab.digest"
_TOKEN_FIELDS = ("tokens", "offsets", "special")


@dataclass
class CacheStats:
    """Counters over the cache's lifetime: layers read back, layers computed, bad files replaced."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    forward_passes: int = 0


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """``hash_bytes`` over each tensor's name, dtype, shape and the digest of its raw bytes."""
    lines = []
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy() if t.numel() else b""
        lines.append(f"{name}:{t.dtype}:{list(t.shape)}:{hash_bytes(raw)}")
    return hash_bytes("\n".join(lines).encode("utf-8"))


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def touch(path: Path) -> None:
    """Mark a cache file as used now (its modification time is the cache's "last used")."""
    with contextlib.suppress(OSError):  # a read-only cache still works
        os.utime(path)


def model_slug(model_id: str) -> str:
    """Folder-safe name of a model: the part of ``model_id`` before ``@``, ``/`` -> ``__``."""
    name = model_id.split("@", 1)[0].replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "model"


class ActivationCache:
    """Activations on disk under ``root/activations``, computed only for layers not stored yet."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.stats = CacheStats()

    def key_parts(
        self,
        handle: ModelHandle,
        texts_hash: str,
        n_texts: int,
        layer: int | str,
        pooling: Pooling,
        max_length: int,
        truncation_side: TruncationSide,
        keep_tokens: bool,
        include_special_tokens: bool = False,
    ) -> dict[str, Any]:
        """Everything that decides one hook's file (``max_length`` already resolved); ``layer``
        is a layer (residual stream) or a hook name."""
        index, kind = handle.check_hook(layer)
        return {
            "format": CACHE_FORMAT_VERSION,
            "model_id": handle.model_id,
            "layer": index,
            "hook": hook_name(index, kind),
            "pooling": pooling,
            "special_tokens": "include" if include_special_tokens else "exclude",
            "max_length": max_length,
            "truncation_side": truncation_side,
            "keep_tokens": bool(keep_tokens),
            "dtype": str(handle.dtype).removeprefix("torch."),
            "texts": texts_hash,
            "n_texts": n_texts,
            # the forward pass's numbers can change with these libraries
            "torch": torch.__version__,
            "transformers": _transformers_version(),
        }

    def path_for(self, handle: ModelHandle, parts: dict[str, Any]) -> Path:
        """File of one hook: ``root/activations/<model slug>/<stable_hash(parts)>.safetensors``."""
        folder = self.root / "activations" / model_slug(handle.model_id)
        return folder / f"{stable_hash(parts, length=24)}.safetensors"

    def _hook_files(
        self,
        handle: ModelHandle,
        texts: list[str],
        layers: Sequence[int | str],
        pooling: Pooling,
        max_length: int | None,
        keep_tokens: bool,
        truncation_side: TruncationSide,
        include_special_tokens: bool,
    ) -> list[tuple[HookKey, tuple[int, str], str, Path, dict[str, Any]]]:
        """Per hook of ``layers``: its key, (layer, kind), hook name, cache file and key parts."""
        limit = resolve_max_length(handle, max_length)
        texts_hash = hash_texts(texts)
        out = []
        for layer, kind in resolve_hooks(handle, layers):
            name = hook_name(layer, kind)
            parts = self.key_parts(
                handle,
                texts_hash,
                len(texts),
                name,
                pooling,
                limit,
                truncation_side,
                keep_tokens,
                include_special_tokens,
            )
            out.append(
                (hook_key(layer, kind), (layer, kind), name, self.path_for(handle, parts), parts)
            )
        return out

    def has(
        self,
        handle: ModelHandle,
        texts: Sequence[str],
        layers: Sequence[int | str],
        pooling: Pooling,
        max_length: int | None = None,
        keep_tokens: bool = False,
        truncation_side: TruncationSide = "left",
        include_special_tokens: bool = False,
    ) -> bool:
        """True when every hook's file is stored with matching key parts (the header only is
        read; the tensors and their digest are checked when :meth:`get_or_extract` reads them)."""
        files = self._hook_files(
            handle,
            list(texts),
            layers,
            pooling,
            max_length,
            keep_tokens,
            truncation_side,
            include_special_tokens,
        )
        for _, _, _, path, parts in files:
            try:
                with safe_open(str(path), framework="pt", device="cpu") as fh:
                    stored = json.loads((fh.metadata() or {}).get(_META_KEY, "null"))
            except Exception:
                return False
            if stored != json.loads(json.dumps(parts)):
                return False
        return True

    def get_or_extract(
        self,
        handle: ModelHandle,
        texts: Sequence[str],
        layers: Sequence[int | str],
        pooling: Pooling,
        max_length: int | None = None,
        keep_tokens: bool = False,
        truncation_side: TruncationSide = "left",
        batch_size: int = 32,
        progress: bool = True,
        include_special_tokens: bool = False,
    ) -> dict[HookKey, LayerActivations]:
        """Activations of ``texts`` at ``layers`` (layers or hook names, see :func:`extract`),
        read from disk when stored, keyed by ``hook_key``.

        Missing or bad hooks are computed in one forward pass up to the deepest of them and
        written atomically.
        """
        if pooling not in ("last", "mean"):
            raise ConfigError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        texts = list(texts)
        limit = resolve_max_length(handle, max_length)
        files = self._hook_files(
            handle,
            texts,
            layers,
            pooling,
            max_length,
            keep_tokens,
            truncation_side,
            include_special_tokens,
        )
        wanted = [key for key, _, _, _, _ in files]
        found: dict[HookKey, LayerActivations] = {}
        todo: dict[HookKey, tuple[str, Path, dict[str, Any]]] = {}
        for key, _, name, path, parts in files:
            acts = self._read(path, parts, len(texts), handle.d_model, keep_tokens)
            if acts is None:
                todo[key] = (name, path, parts)
            else:
                found[key] = acts
        self.stats.hits += len(found)
        self.stats.misses += len(todo)
        if todo:
            log.info(
                "activation cache: %s of %s computed, %s read back",
                [name for name, _, _ in todo.values()],
                handle.name,
                list(found),
            )
            self.stats.forward_passes += 1
            computed = extract(
                handle,
                texts,
                list(todo),  # hook keys: layers for the residual stream, else hook names
                pooling,
                max_length=limit,
                batch_size=batch_size,
                keep_tokens=keep_tokens,
                truncation_side=truncation_side,
                progress=progress,
                include_special_tokens=include_special_tokens,
            )
            for key, (_, path, parts) in todo.items():
                self._write(path, parts, computed[key])
                found[key] = computed[key]
        return {key: found[key] for key in wanted}

    @staticmethod
    def _write(path: Path, parts: dict[str, Any], acts: LayerActivations) -> None:
        tensors = {"pooled": acts.pooled.contiguous()}
        if acts.tokens is not None:
            tensors.update(
                tokens=acts.tokens.contiguous(),
                offsets=acts.offsets.contiguous(),
                special=acts.special.contiguous(),
            )
        metadata = {
            _META_KEY: json.dumps(parts, sort_keys=True),
            _META_DIGEST: tensors_digest(tensors),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    def _read(
        self,
        path: Path,
        parts: dict[str, Any],
        n_rows: int,
        d_model: int,
        keep_tokens: bool,
    ) -> LayerActivations | None:
        """The stored activations, or None when absent or bad (bad files are logged)."""
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                metadata = fh.metadata() or {}
                tensors = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # any failure to parse means the file cannot be trusted
            return self._corrupt(path, f"unreadable: {exc}")
        try:
            stored_parts = json.loads(metadata.get(_META_KEY, "null"))
        except json.JSONDecodeError as exc:
            return self._corrupt(path, f"key parts in the header are not JSON: {exc}")
        if stored_parts != json.loads(json.dumps(parts)):
            return self._corrupt(path, f"header key parts {stored_parts} differ from {parts}")
        problem = _shape_problem(tensors, n_rows, d_model, keep_tokens)
        if problem:
            return self._corrupt(path, problem)
        if metadata.get(_META_DIGEST) != tensors_digest(tensors):
            return self._corrupt(path, "tensor digest does not match the header")
        touch(path)
        if keep_tokens:
            return LayerActivations(
                pooled=tensors["pooled"],
                tokens=tensors["tokens"],
                offsets=tensors["offsets"],
                special=tensors["special"],
            )
        return LayerActivations(pooled=tensors["pooled"])

    def _corrupt(self, path: Path, reason: str) -> None:
        log.warning("activation cache file %s is bad (%s); recomputing it", path, reason)
        self.stats.corrupt += 1
        return None


def _shape_problem(
    tensors: dict[str, torch.Tensor], n_rows: int, d_model: int, keep_tokens: bool
) -> str | None:
    """What is wrong with the stored tensors' names, dtypes and shapes, or None."""
    expected = {"pooled", *_TOKEN_FIELDS} if keep_tokens else {"pooled"}
    if set(tensors) != expected:
        return f"tensors {sorted(tensors)}, expected {sorted(expected)}"
    pooled = tensors["pooled"]
    if pooled.dtype != torch.float32 or tuple(pooled.shape) != (n_rows, d_model):
        return (
            f"pooled is {pooled.dtype} {tuple(pooled.shape)}, expected float32 {(n_rows, d_model)}"
        )
    if not keep_tokens:
        return None
    tokens, offsets, special = tensors["tokens"], tensors["offsets"], tensors["special"]
    if offsets.dtype != torch.int64 or tuple(offsets.shape) != (n_rows + 1,):
        return f"offsets is {offsets.dtype} {tuple(offsets.shape)}, expected int64 ({n_rows + 1},)"
    n_tokens = int(offsets[-1])
    if int(offsets[0]) != 0 or bool((offsets[1:] < offsets[:-1]).any()):
        return "offsets do not start at 0 and increase"
    if tokens.dtype != torch.float32 or tuple(tokens.shape) != (n_tokens, d_model):
        expected_shape = (n_tokens, d_model)
        return f"tokens is {tokens.dtype} {tuple(tokens.shape)}, expected float32 {expected_shape}"
    if special.dtype != torch.bool or tuple(special.shape) != (n_tokens,):
        return f"special is {special.dtype} {tuple(special.shape)}, expected bool ({n_tokens},)"
    return None
