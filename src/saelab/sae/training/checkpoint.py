"""Training checkpoints: one safetensors file holding every tensor and a JSON document of scalars.

Tensors: parameters (``param.<name>``), Adam's moments and step counts
(``adam.<name>.exp_avg``, ``adam.<name>.exp_avg_sq``, ``adam.<name>.step``), the tokens-since-fired
counters (``since_fired``) and a family's training-only state (``buffer.<name>``). Scalars (step,
config, data fingerprint, running sums) are JSON in the file's metadata under ``saelab``, so the
two can never disagree; the file is replaced atomically. No pickle anywhere. The data order and
every random draw are functions of ``(seed, step)``, so no random-generator state is needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from saelab.errors import ConfigError
from saelab.io import atomic_path

CHECKPOINT_FILENAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "saelab-sae-training-checkpoint"
CHECKPOINT_VERSION = 1


def write_checkpoint(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    fmt: str = CHECKPOINT_FORMAT,
    version: int = CHECKPOINT_VERSION,
) -> None:
    """Write ``tensors`` and the JSON ``meta`` (with ``format`` / ``version``) to ``path``
    atomically."""
    doc = {"format": fmt, "version": version, **meta}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={"saelab": json.dumps(doc)})


def read_checkpoint(
    path: Path,
    fmt: str = CHECKPOINT_FORMAT,
    version: int = CHECKPOINT_VERSION,
    what: str = "training checkpoint",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint written with ``fmt`` / ``version``; ConfigError naming
    the file when it is unreadable or of another format or version."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("saelab")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path}: unreadable {what} ({exc}); delete it") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ConfigError(f"{path}: not a saelab {what}; delete it or move it away")
    if meta.get("version") != version:
        raise ConfigError(
            f"{path}: {what} version {meta.get('version')!r}, expected {version}; "
            "delete it to start over"
        )
    return tensors, meta


def adam_state_tensors(
    opt: torch.optim.Optimizer, names: dict[int, str]
) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state flattened to ``adam.<name>.<key>`` tensors."""
    out: dict[str, torch.Tensor] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                out[f"adam.{names[id(p)]}.{key}"] = torch.as_tensor(value)
    return out


def load_adam_state(
    opt: torch.optim.Optimizer, params: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]
) -> None:
    """Restore the state written by :func:`adam_state_tensors` (same dtypes and devices as
    ``torch.optim.Adam`` creates them: the step count stays on the CPU unless Adam is fused)."""
    fused = bool(opt.defaults.get("fused"))
    for name, p in params.items():
        prefix = f"adam.{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            continue
        restored: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            device = p.device if (key != "step" or fused) else torch.device("cpu")
            restored[key] = value.to(device).clone()
        opt.state[p] = restored
