"""SAELens on-disk format (v6): read, open and write SAE folders.

A folder holds ``cfg.json`` (``SAEConfig.to_saelens_dict``), ``sae_weights.safetensors`` (the
module's state dict, SAELens tensor names and shapes; see ``sae_lens/constants.py`` and
``SAE.save_model`` / ``SAE.load_from_disk`` in ``sae_lens/saes/sae.py``) and optionally
``sparsity.safetensors``: one tensor ``sparsity`` ``[d_sae]`` = ``log10(firing frequency + 1e-10)``
(``_log_feature_sparsity`` in ``sae_lens/training/sae_trainer.py``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from saelab.errors import SAEFileError
from saelab.sae.base import DTYPES, SAE, SAEConfig, canonical_dtype, sae_class
from saelab.sae.formats.base import (
    SAEFiles,
    TensorRef,
    build_sae_from_state,
    check_tensor_shapes,
    read_json_object,
    read_tensor,
    sae_identity,
    safetensors_header,
)

log = logging.getLogger(__name__)

FORMAT = "saelens"
CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
#: SAELens' epsilon in ``log10(freq + eps)`` of ``sparsity.safetensors``.
SPARSITY_EPS = 1e-10

# Legacy tensor holding per-latent decoder scales (pre-6.0 ``finetuning_scaling_factor``).
_LEGACY_SCALE_NAMES = ("scaling_factor", "finetuning_scaling_factor")
# Legacy tensors converted by an architecture's ``convert_state_dict`` (name -> converted name).
_LEGACY_RENAMES = {"log_threshold": "threshold"}
# Parameters multiplied when a norm scaling factor s is folded in (SAELens
# ``SAE.fold_activation_norm_scaling_factor``: W_enc * s, W_dec / s, b_dec / s).
_NORM_FOLD_POWERS = {"W_enc": 1, "W_dec": -1, "b_dec": -1}


def save_sae(sae: SAE, path: str | os.PathLike[str], sparsity: torch.Tensor | None = None) -> Path:
    """Write ``sae`` to the folder ``path`` in SAELens v6 format, atomically.

    Every file is written into a temporary folder beside ``path``, then renamed into place; an
    existing SAE folder at ``path`` is replaced only after the new one is complete. A non-empty
    folder without ``cfg.json`` is never replaced.

    Args:
        sae: the SAE to write.
        path: the folder.
        sparsity: optional firing frequency of each latent ``[d_sae]`` (fraction of tokens, in
            [0, 1]); written as SAELens' ``sparsity.safetensors``: ``log10(freq + 1e-10)``.

    Returns:
        The folder path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SAEFileError(f"{path}: exists and is not a folder; expected an SAE folder path")
    if path.is_dir() and any(path.iterdir()) and not (path / CFG_FILENAME).is_file():
        raise SAEFileError(
            f"{path}: non-empty folder without {CFG_FILENAME}; refusing to replace it with an SAE"
        )
    log_sparsity = None if sparsity is None else _log_sparsity(sparsity, sae.d_sae)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.to_saelens_dict()
    cfg["dtype"] = canonical_dtype(sae.dtype)
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        names = [WEIGHTS_FILENAME, CFG_FILENAME]
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        (tmp / CFG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if log_sparsity is not None:
            save_file({"sparsity": log_sparsity}, str(tmp / SPARSITY_FILENAME))
            names.append(SPARSITY_FILENAME)
        for name in names:
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved %s SAE (d_in %d, d_sae %d) to %s", sae.architecture, sae.d_in, sae.d_sae, path)
    return path


def _log_sparsity(freq: torch.Tensor, d_sae: int) -> torch.Tensor:
    """``log10(freq + 1e-10)`` of a firing-frequency vector ``[d_sae]`` (float32, CPU)."""
    freq = torch.as_tensor(freq).detach().to("cpu", torch.float64)
    if tuple(freq.shape) != (d_sae,):
        raise ValueError(
            f"sparsity: expected a firing frequency of shape [{d_sae}], got {list(freq.shape)}"
        )
    if not bool(torch.all((freq >= 0) & (freq <= 1))):
        raise ValueError("sparsity: firing frequencies must lie in [0, 1]")
    return torch.log10(freq + SPARSITY_EPS).to(torch.float32).contiguous()


def read_sparsity(path: str | os.PathLike[str]) -> torch.Tensor | None:
    """``log10(firing frequency + 1e-10)`` ``[d_sae]`` from a folder's ``sparsity.safetensors``,
    or None when the folder has none."""
    file = _resolve_folder(path) / SPARSITY_FILENAME
    if not file.is_file():
        return None
    header = safetensors_header(file)
    if "sparsity" not in header:
        raise SAEFileError(f"{file}: missing tensor 'sparsity'; found {sorted(header)}")
    return read_tensor(TensorRef(file, "sparsity"))


def _resolve_folder(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_file():
        if p.name in (WEIGHTS_FILENAME, CFG_FILENAME, SPARSITY_FILENAME):
            return p.parent
        raise SAEFileError(
            f"{p}: is a file; expected an SAE folder or its {WEIGHTS_FILENAME} / {CFG_FILENAME}"
        )
    if not p.exists():
        raise SAEFileError(f"{p}: SAE folder not found")
    return p


def _read_raw_config(cfg_path: Path) -> dict[str, Any]:
    return read_json_object(cfg_path, f"an SAELens SAE folder needs {CFG_FILENAME}")


def read_sae_config(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> SAEConfig:
    """Parse and validate ``cfg.json`` of the SAE folder (or file inside it) at ``path``.

    ``overrides`` replace top-level keys before validation (as SAELens' ``cfg_overrides``).
    """
    cfg_path = _resolve_folder(path) / CFG_FILENAME
    raw = _read_raw_config(cfg_path)
    if overrides:
        raw.update(copy.deepcopy(overrides))
    return SAEConfig.from_saelens_dict(raw, source=str(cfg_path))


def open_saelens(
    path: str | os.PathLike[str],
    cfg_overrides: dict[str, Any] | None = None,
    norm_scaling_factor: float | None = None,
    source: str | None = None,
    options: dict[str, Any] | None = None,
) -> SAEFiles:
    """Open an SAELens folder: config parsed, tensor names and shapes checked, nothing loaded.

    Legacy tensors are converted as SAELens does: ``log_threshold`` -> ``threshold = exp(.)``; a
    ``scaling_factor`` of all ones is dropped, any other is folded into ``W_dec`` rows (pre-6.0
    ``decode`` computed ``(f * scaling_factor) W_dec``). Such files are materialised whole
    (``tensors`` is empty).

    Args:
        path: the folder, or its ``cfg.json`` / ``sae_weights.safetensors``.
        cfg_overrides: top-level ``cfg.json`` keys to replace (a release's ``config_overrides``).
        norm_scaling_factor: for ``normalize_activations: expected_average_only_in`` configs, the
            factor s to fold in (SAELens ``fold_activation_norm_scaling_factor``: ``W_enc * s``,
            ``W_dec / s``, ``b_dec / s``, then ``normalize_activations: none``).
        source: how the user named it (default: the folder).
        options: extra identity parts (a release's coordinates).
    """
    folder = _resolve_folder(path)
    cfg_path = folder / CFG_FILENAME
    weights_path = folder / WEIGHTS_FILENAME
    raw = _read_raw_config(cfg_path)
    if cfg_overrides:
        raw.update(copy.deepcopy(cfg_overrides))
    scale = None
    if norm_scaling_factor is not None and raw.get("normalize_activations") in (
        "expected_average_only_in",
        True,
    ):
        scale = float(norm_scaling_factor)
        raw["normalize_activations"] = "none"
    cfg = SAEConfig.from_saelens_dict(raw, source=str(cfg_path))
    if not weights_path.is_file():
        raise SAEFileError(
            f"{weights_path}: missing; an SAELens SAE folder needs {WEIGHTS_FILENAME}"
        )
    header = safetensors_header(weights_path)
    for name, st in header.items():
        if not st.floating:
            raise SAEFileError(
                f"{weights_path}: tensor '{name}' has dtype {st.dtype}; expected floating point"
            )
    legacy = False
    refs: dict[str, TensorRef] = {}
    stored: dict[str, tuple[int, ...]] = {}
    for name, st in header.items():
        if name in _LEGACY_SCALE_NAMES:
            if st.shape != (cfg.d_sae,):
                raise SAEFileError(
                    f"{weights_path}: tensor '{name}' has shape {list(st.shape)}; expected "
                    f"[{cfg.d_sae}] (d_sae, from {cfg_path})"
                )
            if not bool(torch.all(read_tensor(TensorRef(weights_path, name)) == 1)):
                legacy = True
            continue
        target = _LEGACY_RENAMES.get(name, name)
        if target != name:
            legacy = True
            if target in header:
                raise SAEFileError(
                    f"{weights_path}: has both '{target}' and '{name}'; expected one of them"
                )
        power = _NORM_FOLD_POWERS.get(target, 0) if scale is not None else 0
        refs[target] = TensorRef(weights_path, name, scale=scale**power if power else 1.0)
        stored[target] = st.shape
    check_tensor_shapes(cfg, refs, stored, str(cfg_path))
    options = {**(options or {}), "overrides": cfg_overrides or {}, "norm_scale": scale}

    def loader(device: str | torch.device = "cpu", dtype: Any = None) -> SAE:
        return _load_folder(folder, cfg, header, scale, device, dtype)

    files = SAEFiles(
        cfg=cfg,
        tensors={} if legacy else refs,
        files=[cfg_path, weights_path],
        format=FORMAT,
        source=source or str(folder),
        identity=sae_identity(FORMAT, [cfg_path, weights_path], folder, options),
        loader=loader,
    )
    if (folder / SPARSITY_FILENAME).is_file():
        files.extra["sparsity"] = folder / SPARSITY_FILENAME
    return files


def _load_folder(
    folder: Path,
    cfg: SAEConfig,
    header: dict[str, Any],
    scale: float | None,
    device: str | torch.device,
    dtype: Any,
) -> SAE:
    """Read every tensor, convert legacy ones, fold the norm scale, build the SAE."""
    cfg = copy.deepcopy(cfg)
    if dtype is not None:
        cfg.dtype = canonical_dtype(dtype, source="load_sae(dtype=...)")
    torch_dtype = DTYPES[cfg.dtype]
    weights_path = folder / WEIGHTS_FILENAME
    state = {
        name: read_tensor(TensorRef(weights_path, name), device, torch_dtype) for name in header
    }
    sae_class(cfg.architecture).convert_state_dict(state, str(weights_path))
    _fold_legacy_scale(state, weights_path)
    if scale is not None:
        for name, power in _NORM_FOLD_POWERS.items():
            state[name] = state[name] * scale**power
    sae = build_sae_from_state(cfg, state, device, dict.fromkeys(state, weights_path))
    log.info(
        "loaded %s SAE (d_in %d, d_sae %d) from %s", cfg.architecture, cfg.d_in, cfg.d_sae, folder
    )
    return sae


def _fold_legacy_scale(state: dict[str, torch.Tensor], weights_path: Path) -> None:
    for name in _LEGACY_SCALE_NAMES:
        if name not in state:
            continue
        scale = state.pop(name)
        if torch.all(scale == 1):
            continue
        log.info("%s: folding legacy '%s' into W_dec rows", weights_path, name)
        state["W_dec"] = state["W_dec"] * scale.unsqueeze(1)
