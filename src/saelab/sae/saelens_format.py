"""Read and write SAEs in the SAELens on-disk format (v6).

A folder holds ``cfg.json`` (``SAEConfig.to_saelens_dict``) and ``sae_weights.safetensors`` (the
module's state dict, SAELens tensor names and shapes; see ``sae_lens/constants.py`` and
``SAE.save_model`` / ``SAE.load_from_disk`` in ``sae_lens/saes/sae.py``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelab.errors import SAEFileError
from saelab.sae.base import DTYPES, SAE, SAEConfig, canonical_dtype, sae_class

log = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"

# Legacy tensor holding per-latent decoder scales (pre-6.0 ``finetuning_scaling_factor``).
_LEGACY_SCALE_NAMES = ("scaling_factor", "finetuning_scaling_factor")
_FINITE_CHECK_CHUNK = 1 << 24  # elements per isfinite pass, so the bool mask stays small


def save_sae(sae: SAE, path: str | os.PathLike[str]) -> Path:
    """Write ``sae`` to the folder ``path`` in SAELens v6 format, atomically.

    Both files are written into a temporary folder beside ``path``, then renamed into place; an
    existing SAE folder at ``path`` is replaced only after the new one is complete. A non-empty
    folder without ``cfg.json`` is never replaced.

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
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.to_saelens_dict()
    cfg["dtype"] = canonical_dtype(sae.dtype)
    tensors = {name: p.detach().contiguous().cpu() for name, p in sae.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        (tmp / CFG_FILENAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        for name in (WEIGHTS_FILENAME, CFG_FILENAME):
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


def _resolve_folder(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_file():
        if p.name in (WEIGHTS_FILENAME, CFG_FILENAME):
            return p.parent
        raise SAEFileError(
            f"{p}: is a file; expected an SAE folder or its {WEIGHTS_FILENAME} / {CFG_FILENAME}"
        )
    if not p.exists():
        raise SAEFileError(f"{p}: SAE folder not found")
    return p


def read_sae_config(path: str | os.PathLike[str]) -> SAEConfig:
    """Parse and validate ``cfg.json`` of the SAE folder (or file inside it) at ``path``."""
    folder = _resolve_folder(path)
    cfg_path = folder / CFG_FILENAME
    if not cfg_path.is_file():
        raise SAEFileError(f"{cfg_path}: missing; an SAELens SAE folder needs {CFG_FILENAME}")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFileError(f"{cfg_path}: not valid JSON ({exc})") from None
    return SAEConfig.from_saelens_dict(raw, source=str(cfg_path))


def load_sae(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load any SAELens-format SAE folder (or its ``sae_weights.safetensors``) from disk.

    Validates the config (keys, values, architecture) and the weights (names, shapes, finiteness)
    before building the module; the module is built on the ``meta`` device and the loaded tensors
    are assigned (``load_state_dict(assign=True)``), so weights are allocated once.
    Legacy tensors are converted as SAELens does: ``log_threshold`` -> ``threshold``; a
    ``scaling_factor`` of all ones is dropped, any other is folded into ``W_dec`` rows
    (pre-6.0 ``decode`` computed ``(f * scaling_factor) W_dec``).

    Args:
        path: SAE folder, or the ``sae_weights.safetensors`` / ``cfg.json`` file in it.
        device: where the weights go.
        dtype: override the config's dtype (name or ``torch.dtype``).

    Raises:
        SAEFileError: naming the file and key and what was expected.
    """
    folder = _resolve_folder(path)
    cfg = read_sae_config(folder)
    cfg_path = folder / CFG_FILENAME
    if dtype is not None:
        cfg.dtype = canonical_dtype(dtype, source="load_sae(dtype=...)")
    torch_dtype = DTYPES[cfg.dtype]
    cls = sae_class(cfg.architecture)
    weights_path = folder / WEIGHTS_FILENAME
    state = _read_weights(weights_path, torch_dtype, device)
    cls.convert_state_dict(state, str(weights_path))
    _fold_legacy_scale(state, weights_path)
    expected = cls.param_shapes(cfg)
    missing = [k for k in expected if k not in state]
    extra = sorted(k for k in state if k not in expected)
    if missing or extra:
        raise SAEFileError(
            f"{weights_path}: tensors do not match architecture {cfg.architecture!r} "
            f"(from {cfg_path}): missing {missing}, unexpected {extra}; expected {list(expected)}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise SAEFileError(
                f"{weights_path}: tensor '{name}' has shape {list(state[name].shape)}; expected "
                f"{list(shape)} for d_in={cfg.d_in}, d_sae={cfg.d_sae} (from {cfg_path})"
            )
        _check_finite(state[name], name, weights_path)
    sae = cls(cfg, device="meta")
    sae.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    sae = sae.to(device=device)
    log.info(
        "loaded %s SAE (d_in %d, d_sae %d) from %s", cfg.architecture, cfg.d_in, cfg.d_sae, folder
    )
    return sae


def _read_weights(
    weights_path: Path, dtype: torch.dtype, device: str | torch.device
) -> dict[str, torch.Tensor]:
    if not weights_path.is_file():
        raise SAEFileError(
            f"{weights_path}: missing; an SAELens SAE folder needs {WEIGHTS_FILENAME}"
        )
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights_path), framework="pt", device=str(device)) as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                t = fh.get_tensor(name)
                if not t.is_floating_point():
                    raise SAEFileError(
                        f"{weights_path}: tensor '{name}' has dtype {t.dtype}; expected floating point"
                    )
                state[name] = t.to(dtype=dtype)
                del t
    except SafetensorError as exc:
        raise SAEFileError(f"{weights_path}: not a readable safetensors file ({exc})") from None
    except OSError as exc:
        raise SAEFileError(f"{weights_path}: cannot read ({exc})") from None
    return state


def _fold_legacy_scale(state: dict[str, torch.Tensor], weights_path: Path) -> None:
    for name in _LEGACY_SCALE_NAMES:
        if name not in state:
            continue
        scale = state.pop(name)
        if torch.all(scale == 1):
            continue
        if "W_dec" not in state or scale.shape != state["W_dec"].shape[:1]:
            raise SAEFileError(
                f"{weights_path}: tensor '{name}' has shape {list(scale.shape)}; expected [d_sae] "
                "matching W_dec"
            )
        log.info("%s: folding legacy '%s' into W_dec rows", weights_path, name)
        state["W_dec"] = state["W_dec"] * scale.unsqueeze(1)


def _check_finite(t: torch.Tensor, name: str, weights_path: Path) -> None:
    """Raise SAEFileError if ``t`` has NaN/inf; scans in chunks so the mask stays small."""
    flat = t.reshape(-1)
    n_bad, first = 0, -1
    for start in range(0, flat.numel(), _FINITE_CHECK_CHUNK):
        bad = ~torch.isfinite(flat[start : start + _FINITE_CHECK_CHUNK])
        count = int(bad.sum())
        if count and first < 0:
            first = start + int(bad.nonzero()[0, 0])
        n_bad += count
    if n_bad:
        raise SAEFileError(
            f"{weights_path}: tensor '{name}' has {n_bad} non-finite value(s) (first at flat "
            f"index {first}); expected finite weights"
        )
