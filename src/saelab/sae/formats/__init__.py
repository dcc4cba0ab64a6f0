"""SAE file formats: detect a folder's format and open it as :class:`SAEFiles` without loading it.

Formats (one module each): ``saelens`` (``cfg.json`` + ``sae_weights.safetensors``),
``dictionary_learning`` (``ae.pt`` + ``config.json``), ``sparsify`` (``cfg.json`` +
``sae.safetensors``, one folder per hookpoint) and ``release`` (``{release, sae_id}`` through
sae_lens and the Hugging Face cache). :func:`open_sae` is the one entry point;
``open_sae(spec).load(device)`` gives the inference :class:`~saelab.sae.base.SAE`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from saelab.errors import ConfigError, SAEFileError
from saelab.sae.base import SAE
from saelab.sae.formats import dictionary_learning, saelens, sparsify
from saelab.sae.formats.base import (
    CONVERTER_VERSION,
    SAEFiles,
    TensorRef,
    load_refs,
    read_tensor,
    read_torch_state,
    sae_identity,
)
from saelab.sae.formats.release import open_release, resolve_release
from saelab.sae.formats.saelens import read_sae_config, read_sparsity, save_sae

#: Folder formats that :func:`detect_format` recognises (``release`` is named by a mapping).
FOLDER_FORMATS = ("saelens", "dictionary_learning", "sparsify")
FORMATS = (*FOLDER_FORMATS, "release")

_FILE_FORMATS = {
    saelens.WEIGHTS_FILENAME: "saelens",
    saelens.SPARSITY_FILENAME: "saelens",
    dictionary_learning.WEIGHTS_FILENAME: "dictionary_learning",
    dictionary_learning.CONFIG_FILENAME: "dictionary_learning",
    sparsify.WEIGHTS_FILENAME: "sparsify",
}
_EXPECTED = (
    "SAELens (cfg.json + sae_weights.safetensors), dictionary_learning (ae.pt + config.json), "
    "sparsify (cfg.json + sae.safetensors, or one sub-folder per hookpoint)"
)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of the SAE folder (or a file inside it) at ``path``: one of
    :data:`FOLDER_FORMATS`.

    Decided by the weights file present (``sae_weights.safetensors`` -> saelens, ``ae.pt`` ->
    dictionary_learning, ``sae.safetensors`` or hookpoint sub-folders -> sparsify); a folder with
    only a config is classified by that config, so the reader can name the missing file.

    Raises:
        SAEFileError: nothing recognisable (listing what each format needs).
    """
    p = Path(path)
    if not p.exists():
        raise SAEFileError(f"{p}: SAE folder not found")
    if p.is_file():
        if p.name in _FILE_FORMATS:
            return _FILE_FORMATS[p.name]
        if p.name != saelens.CFG_FILENAME:
            raise SAEFileError(
                f"{p}: is a file; expected an SAE folder or a file inside one: {_EXPECTED}"
            )
        p = p.parent
    names = {c.name for c in p.iterdir()}
    if saelens.WEIGHTS_FILENAME in names:
        return "saelens"
    if dictionary_learning.WEIGHTS_FILENAME in names:
        return "dictionary_learning"
    if sparsify.WEIGHTS_FILENAME in names or sparsify.hookpoints(p):
        return "sparsify"
    if saelens.CFG_FILENAME in names:
        return _format_of_cfg(p / saelens.CFG_FILENAME)
    if dictionary_learning.CONFIG_FILENAME in names:
        return "dictionary_learning"
    trainers = sorted(
        c.name
        for c in p.iterdir()
        if c.is_dir() and (c / dictionary_learning.WEIGHTS_FILENAME).is_file()
    )
    if trainers:
        raise SAEFileError(
            f"{p}: holds dictionary_learning trainers {trainers}; give one of them as the path"
        )
    raise SAEFileError(f"{p}: no SAE files found; expected one of: {_EXPECTED}")


def _format_of_cfg(cfg_path: Path) -> str:
    """saelens or sparsify for a folder holding only ``cfg.json``, from its keys."""
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "saelens"  # its reader reports the bad file
    sparsify_keys = isinstance(raw, dict) and {"num_latents", "expansion_factor"} & set(raw)
    if sparsify_keys and "architecture" not in raw and "d_sae" not in raw:
        return "sparsify"
    return "saelens"


def open_sae(
    spec: str | os.PathLike[str] | Mapping[str, Any],
    *,
    format: str | None = None,
    hookpoint: str | None = None,
) -> SAEFiles:
    """Open an SAE named by a folder path or a mapping, without loading its weights.

    Args:
        spec: a folder (or a file inside it); ``{"path": ..., "format": ..., "hookpoint": ...}``;
            or ``{"release": ..., "sae_id": ...}`` (a SAELens release, needs sae_lens).
        format: force a folder format (one of :data:`FOLDER_FORMATS`) instead of detecting it.
        hookpoint: the sub-folder of a sparsify root holding several hookpoints.

    Raises:
        ConfigError: a malformed spec (unknown key, release without sae_id, unknown format).
        SAEFileError: naming the file and the tensor or key that is wrong.
    """
    if isinstance(spec, Mapping):
        spec = dict(spec)
        unknown = sorted(set(spec) - {"path", "format", "hookpoint", "release", "sae_id"})
        if unknown:
            raise ConfigError(
                f"SAE spec: unknown key(s) {unknown}; expected 'path' (with optional 'format', "
                "'hookpoint') or 'release' + 'sae_id'"
            )
        if spec.get("release") is not None or spec.get("sae_id") is not None:
            if spec.get("path") is not None or spec.get("format") or spec.get("hookpoint"):
                raise ConfigError(
                    "SAE spec: give either 'path' (with 'format', 'hookpoint') or 'release' + "
                    "'sae_id', not both"
                )
            release, sae_id = spec.get("release"), spec.get("sae_id")
            if not isinstance(release, str) or not isinstance(sae_id, str):
                raise ConfigError(
                    f"SAE spec: 'release' and 'sae_id' must both be strings, got "
                    f"{release!r} and {sae_id!r}"
                )
            return open_release(release, sae_id)
        if spec.get("path") is None:
            raise ConfigError("SAE spec: missing key 'path' (or 'release' + 'sae_id')")
        format = spec.get("format") or format
        hookpoint = spec.get("hookpoint") or hookpoint
        spec = spec["path"]
    path = Path(spec)  # type: ignore[arg-type]
    if format is None:
        format = detect_format(path)
    elif format not in FOLDER_FORMATS:
        raise ConfigError(
            f"SAE format {format!r} is unknown; expected one of {list(FOLDER_FORMATS)}"
        )
    if not path.exists():
        raise SAEFileError(f"{path}: SAE folder not found")
    if hookpoint is not None and format != "sparsify":
        raise ConfigError(f"'hookpoint' applies to sparsify folders; {path} is {format}")
    if format == "saelens":
        return saelens.open_saelens(path)
    folder = path.parent if path.is_file() else path
    if format == "dictionary_learning":
        return dictionary_learning.open_dictionary_learning(folder)
    return sparsify.open_sparsify(folder, hookpoint=hookpoint)


def load_sae(
    path: str | os.PathLike[str] | Mapping[str, Any],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> SAE:
    """Load the SAE at ``path`` (any format, detected; or a spec mapping as :func:`open_sae`).

    Validates the config and the tensors (names, shapes, finiteness) before building the module;
    the module is built on the ``meta`` device and the tensors assigned, so weights are allocated
    once.

    Raises:
        SAEFileError: naming the file and key and what was expected.
    """
    return open_sae(path).load(device=device, dtype=dtype)


__all__ = [
    "CONVERTER_VERSION",
    "FOLDER_FORMATS",
    "FORMATS",
    "SAEFiles",
    "TensorRef",
    "detect_format",
    "load_refs",
    "load_sae",
    "open_release",
    "open_sae",
    "read_sae_config",
    "read_sparsity",
    "read_tensor",
    "read_torch_state",
    "resolve_release",
    "sae_identity",
    "save_sae",
]
