"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``, one folder per hookpoint.

Layout (``sparsify/sparse_coder.py``, ``SparseCoder.save_to_disk`` / ``load_from_disk``):
``cfg.json`` = ``SparseCoderConfig`` fields (``activation``, ``expansion_factor``,
``normalize_decoder``, ``num_latents``, ``k``, ``multi_topk``, ``skip_connection``, ``transcode``)
plus ``d_in``; ``sae.safetensors`` = ``encoder.weight [F, d_in]``, ``encoder.bias [F]``,
``W_dec [F, d_in]``, ``b_dec [d_in]``, with F = ``num_latents`` or ``d_in * expansion_factor``. A
training run writes one such folder per hookpoint (``layers.3``, ``layers.3.mlp``) under a root.

Encoding (``SparseCoder.encode`` + ``fused_encoder``): ``x - b_dec`` (autoencoders; transcoders
skip it), ``ReLU(x W^T + b)``, top-k per token: SAELens ``topk`` with ``W_enc = encoder.weight^T``,
``W_dec`` as stored, ``apply_b_dec_to_input`` True. The dtype is the first tensor's (as sparsify).
SAELens' ``sparsify_disk_loader`` transposes ``W_dec`` and sets ``apply_b_dec_to_input`` to
``not normalize_decoder``; both disagree with sparsify's code above, which saelab follows.
Transcoders, skip connections, ``groupmax`` and signed activations are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from saelab.errors import SAEFileError
from saelab.sae.base import SAEConfig, check_config
from saelab.sae.formats.base import (
    SAEFiles,
    TensorRef,
    check_tensor_shapes,
    open_ref_folder,
    read_json_object,
    safetensors_header,
)

FORMAT = "sparsify"
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae.safetensors"

_KEYS = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
_SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16"}
# sparsify hookpoint (a module name of the HF model) -> saelab hook name.
_HOOKPOINTS = (
    (re.compile(r"^(?:model\.)?(?:layers|h)\.(\d+)$"), "blocks.{}.hook_resid_post"),
    (re.compile(r"^(?:model\.)?(?:layers|h)\.(\d+)\.mlp$"), "blocks.{}.hook_mlp_out"),
    (
        re.compile(r"^(?:model\.)?(?:layers|h)\.(\d+)\.(?:self_attn|attn)$"),
        "blocks.{}.hook_attn_out",
    ),
)
# SparseCoderConfig defaults (sparsify/config.py).
_DEFAULTS = {"activation": "topk", "expansion_factor": 32, "num_latents": 0, "k": 32}


def is_sparsify_folder(folder: Path) -> bool:
    """True when ``folder`` holds one sparsify SAE (``cfg.json`` + ``sae.safetensors``)."""
    return (folder / CFG_FILENAME).is_file() and (folder / WEIGHTS_FILENAME).is_file()


def hookpoints(root: Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold a sparsify SAE."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and is_sparsify_folder(p))


def open_sparsify(
    folder: str | Path, hookpoint: str | None = None, source: str | None = None
) -> SAEFiles:
    """Open one sparsify SAE without loading it.

    Args:
        folder: a hookpoint folder, or a root holding several (then ``hookpoint`` picks one).
        hookpoint: sub-folder name under a root (e.g. ``layers.3``).
        source: how the user named it, for messages.

    Raises:
        SAEFileError: a root without ``hookpoint`` (listing them), an unknown hookpoint, a bad
            ``cfg.json`` or ``sae.safetensors``.
    """
    root = Path(folder)
    if hookpoint is not None:
        folder = root / hookpoint
        if not is_sparsify_folder(folder):
            raise SAEFileError(
                f"{root}: hookpoint {hookpoint!r} not found (no {CFG_FILENAME} + "
                f"{WEIGHTS_FILENAME} in {folder}); available: {hookpoints(root)}"
            )
    else:
        folder = root
        if not is_sparsify_folder(folder):
            found = hookpoints(root)
            if found:
                raise SAEFileError(
                    f"{root}: holds sparsify SAEs for several hookpoints {found}; pick one with "
                    "'hookpoint' (or give its sub-folder as the path)"
                )
    cfg_path = folder / CFG_FILENAME
    weights_path = folder / WEIGHTS_FILENAME
    raw = _read_cfg(cfg_path)
    if not weights_path.is_file():
        raise SAEFileError(f"{weights_path}: missing; a sparsify SAE folder needs it")
    header = safetensors_header(weights_path)
    for name, st in header.items():
        if not st.floating:
            raise SAEFileError(
                f"{weights_path}: tensor '{name}' has dtype {st.dtype}; expected floating point"
            )
    if "W_skip" in header:
        raise SAEFileError(
            f"{weights_path}: has tensor 'W_skip' (a skip connection); saelab reads plain "
            "sparsify SAEs only"
        )
    missing = [key for key in _KEYS.values() if key not in header]
    unexpected = sorted(set(header) - set(_KEYS.values()))
    if missing or unexpected:
        raise SAEFileError(
            f"{weights_path}: tensors do not match a sparsify SAE: missing {missing}, unexpected "
            f"{unexpected}; expected {list(_KEYS.values())}"
        )
    d_in = raw["d_in"]
    d_sae = raw["num_latents"] or d_in * raw["expansion_factor"]
    first = header[next(iter(header))]
    metadata: dict[str, Any] = {"sparsify_hookpoint": folder.name}
    hook = _hook_name(folder.name)
    if hook is not None:
        metadata["hook_name"] = hook
    root_cfg = folder.parent / "config.json"
    if root_cfg.is_file():
        try:
            model = json.loads(root_cfg.read_text(encoding="utf-8")).get("model")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, OSError):
            model = None
        if isinstance(model, str):
            metadata["model_name"] = model
    cfg = SAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        architecture="topk",
        dtype=_SAFETENSORS_DTYPES.get(first.dtype, "float32"),
        apply_b_dec_to_input=True,
        arch={"k": raw["k"]},
        metadata=metadata,
    )
    cfg = check_config(cfg, str(cfg_path))
    refs = {
        name: TensorRef(weights_path, key, transposed=name == "W_enc")
        for name, key in _KEYS.items()
    }
    stored = {name: header[key].shape for name, key in _KEYS.items()}
    check_tensor_shapes(cfg, refs, stored, str(cfg_path))
    what = f"sparsify SAE (d_sae {cfg.d_sae}, k {raw['k']})"
    files = open_ref_folder(FORMAT, cfg, refs, folder, cfg_path, weights_path, source, what)
    files.extra["hookpoint"] = folder.name
    return files


def _read_cfg(path: Path) -> dict[str, Any]:
    """``cfg.json`` with sparsify's defaults filled in and unsupported options refused."""
    raw = read_json_object(path, f"a sparsify SAE folder needs {CFG_FILENAME}")
    raw = {**_DEFAULTS, **raw}
    for key in ("d_in", "k", "expansion_factor", "num_latents"):
        value = raw.get(key)
        low = 0 if key == "num_latents" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SAEFileError(
                f"{path}: key '{key}' must be an integer >= {low}, got {value!r}"
                + (" (missing)" if key not in raw else "")
            )
    if raw["activation"] != "topk":
        raise SAEFileError(
            f"{path}: key 'activation' has value {raw['activation']!r}; supported: 'topk'"
        )
    for key in ("transcode", "skip_connection", "signed"):
        if raw.get(key):
            raise SAEFileError(
                f"{path}: key '{key}' is true; saelab reads plain sparsify autoencoders only"
            )
    return raw


def _hook_name(hookpoint: str) -> str | None:
    for pattern, template in _HOOKPOINTS:
        match = pattern.match(hookpoint)
        if match:
            return template.format(int(match.group(1)))
    return None
